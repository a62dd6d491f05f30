//! `kip init`: a starter kip.hcl that lints clean, never overwritten without --force.

use crate::support::Project;

#[test]
fn init_writes_a_starter_that_lints_and_is_formatted() {
    let project = Project::new();
    let run = project.kip(&["init"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(project.read("kip.hcl").contains("postgres \"main\""));
    let lint = project.kip(&["lint"]);
    assert_eq!(lint.code, 0, "{}", lint.snapshot());
    let fmt = project.kip(&["fmt", "--check"]);
    assert_eq!(
        fmt.code,
        0,
        "the starter is already formatted\n{}",
        fmt.snapshot()
    );
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let project = Project::with_config("# mine\n");
    let run = project.kip(&["init"]);
    assert_eq!(run.code, 1);
    insta::assert_snapshot!("init_refuses", run.snapshot());
    assert_eq!(
        project.read("kip.hcl"),
        "# mine\n",
        "the existing file is untouched"
    );
    assert_eq!(project.kip(&["init", "--force"]).code, 0);
    assert!(project.read("kip.hcl").contains("postgres \"main\""));
}

#[test]
fn version_and_completions() {
    let project = Project::new();
    let run = project.kip(&["--version"]);
    assert_eq!(run.code, 0);
    assert_eq!(run.stdout, format!("kip {}\n", env!("CARGO_PKG_VERSION")));
    let run = project.kip(&["completions", "bash"]);
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.contains("lint"),
        "completions cover the subcommands"
    );
}
