//! `kip fmt`: rewrites files in the canonical layout; `--check` names the files that would change and exits 1.

use crate::support::Project;

const MESSY: &str = "postgres   \"main\"   {\n    version=\"16\"\n  # the app's role\n  role \"app\" {\n login = true\n  }\n\n\n\n  settings = {\n    work_mem = \"8MB\"\n    max_connections = 50\n  }\n}\n";

#[test]
fn check_names_unformatted_files_and_changes_nothing() {
    let project = Project::with_config(MESSY);
    project.write(
        "cache.kip.hcl",
        "valkey \"cache\" {\n  version = \"9\"\n}\n",
    );
    let run = project.kip(&["fmt", "--check"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert_eq!(run.stdout, "kip.hcl\n");
    assert_eq!(project.read("kip.hcl"), MESSY);
}

#[test]
fn fmt_rewrites_and_is_idempotent() {
    let project = Project::with_config(MESSY);
    let run = project.kip(&["fmt"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert_eq!(run.stdout, "kip.hcl\n");
    let formatted = project.read("kip.hcl");
    insta::assert_snapshot!("fmt_formatted", formatted);
    assert!(formatted.contains("# the app's role"), "comments survive");
    let again = project.kip(&["fmt", "--check"]);
    assert_eq!(again.code, 0, "{}", again.snapshot());
    assert_eq!(project.kip(&["lint"]).code, 0);
}

#[test]
fn fmt_diff_shows_the_change() {
    let project = Project::with_config("postgres \"main\" {\nversion = \"16\"\n}\n");
    let run = project.kip(&["fmt", "--check", "--diff"]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("-version = \"16\""), "{}", run.stdout);
    assert!(run.stdout.contains("+  version = \"16\""), "{}", run.stdout);
}

#[test]
fn fmt_leaves_a_broken_file_alone() {
    let project = Project::with_config("postgres \"main\" {\n");
    let run = project.kip(&["fmt"]);
    assert_eq!(run.code, 1);
    assert_eq!(project.read("kip.hcl"), "postgres \"main\" {\n");
    assert!(run.stderr.contains("kip.hcl"), "{}", run.stderr);
}
