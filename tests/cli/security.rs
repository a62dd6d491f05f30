//! What another local user, or a secret in the caller's environment, can get at: tests that play the attacker.

use crate::apply::Stack;

/// The environment of a live process, from /proc (the tests run as root, so any process's).
fn environment_of(pid: u32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    bytes
        .split(|byte| *byte == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| String::from_utf8_lossy(entry).into_owned())
        .collect()
}

fn pid_of(stack: &Stack, name: &str) -> u32 {
    let ps = stack.ok(&["ps", "--json"]);
    let processes: serde_json::Value = serde_json::from_str(&ps.stdout).unwrap();
    processes
        .as_array()
        .unwrap()
        .iter()
        .find(|process| process["name"] == name)
        .and_then(|process| process["pid"].as_u64())
        .unwrap_or_else(|| panic!("{name} is not running: {}", ps.stdout)) as u32
}

#[test]
fn a_secret_in_the_callers_environment_never_reaches_an_engine() {
    let stack = Stack::new(
        r#"postgres "main" {
  version = "16"
}

process "app" {
  command = ["sleep", "300"]
  env     = { FROM_CONFIG = "yes" }
}
"#,
    );
    let mut apply = stack.command(&["apply", "--auto-approve"]);
    apply.env("CLOUD_SECRET_TOKEN", "s3cr3t-t0k3n");
    let run = stack.project.run_with(apply);
    assert_eq!(run.code, 0, "{}", run.snapshot());

    let postgres = environment_of(pid_of(&stack, "postgres.main"));
    assert!(!postgres.is_empty(), "the server's environment is readable");
    assert!(
        !postgres.iter().any(|entry| entry.contains("s3cr3t-t0k3n")),
        "the server got the caller's secret: {postgres:?}"
    );
    let supervisor_pid: u32 = stack
        .project
        .read(".kip/supervisor.pid")
        .trim()
        .parse()
        .unwrap();
    let supervisor = environment_of(supervisor_pid);
    assert!(
        !supervisor
            .iter()
            .any(|entry| entry.contains("s3cr3t-t0k3n")),
        "the supervisor kept the caller's secret: {supervisor:?}"
    );
    // A process block is the user's own program: kip's environment plus `env`, as documented.
    let app = environment_of(pid_of(&stack, "process.app"));
    assert!(
        app.contains(&"CLOUD_SECRET_TOKEN=s3cr3t-t0k3n".to_owned()),
        "{app:?}"
    );
    assert!(app.contains(&"FROM_CONFIG=yes".to_owned()), "{app:?}");
}
