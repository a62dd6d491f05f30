//! The signed registry through the CLI: show, sign, verify, update, and every refusal (unsigned, unknown key,
//! tampered, expired, older than trusted, malformed signature), each with its own message.

use crate::support::{Project, release_key};

fn document(serial: u64, expires: &str, postgres: &str) -> String {
    format!(
        r#"{{
  "format": 1,
  "serial": {serial},
  "issued": "2024-01-01T00:00:00Z",
  "expires": "{expires}",
  "engines": {{
    "postgres": {{ "majors": [{postgres}] }},
    "valkey": {{ "majors": [8, 9] }}
  }}
}}
"#
    )
}

/// Writes `name` with `contents` and signs it with the release key (kept in ../shared, never in the repo).
fn signed(project: &Project, name: &str, contents: &str) {
    project.write(name, contents);
    let key = release_key();
    let run = project.kip(&["registry", "sign", "--key", key.to_str().unwrap(), name]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
}

fn refusal(project: &Project, args: &[&str], snapshot: &str) {
    let run = project.kip(args);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    insta::assert_snapshot!(snapshot, run.snapshot());
}

#[test]
fn show_the_embedded_registry() {
    let project = Project::new();
    let run = project.kip(&["registry", "show"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    insta::assert_snapshot!("registry_show", run.stdout);
}

#[test]
fn a_signed_newer_registry_verifies_installs_and_gates_lint() {
    let project = Project::with_config("postgres \"main\" {\n  version = \"17\"\n}\n");
    assert_eq!(project.kip(&["lint"]).code, 0);
    signed(
        &project,
        "registry.json",
        &document(7, "2030-01-01T00:00:00Z", "16"),
    );
    let run = project.kip(&["registry", "verify", "registry.json"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(run.stdout.contains("valid, serial 7"));
    let run = project.kip(&["registry", "update", "registry.json"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let show = project.kip(&["registry", "show"]);
    assert!(show.stdout.contains("serial:  7"), "{}", show.stdout);
    // The installed registry supports only postgres 16 now.
    let lint = project.kip(&["lint"]);
    assert_eq!(lint.code, 1, "{}", lint.snapshot());
    assert!(
        lint.stderr.contains("supports postgres 16."),
        "{}",
        lint.stderr
    );

    // An older registry than the one now trusted is refused, even though it is validly signed.
    signed(
        &project,
        "older.json",
        &document(5, "2030-01-01T00:00:00Z", "14, 15, 16, 17, 18"),
    );
    refusal(
        &project,
        &["registry", "update", "older.json"],
        "registry_rollback",
    );
}

#[test]
fn lower_serial_than_the_embedded_registry_is_refused() {
    let project = Project::new();
    signed(
        &project,
        "zero.json",
        &document(0, "2030-01-01T00:00:00Z", "16"),
    );
    let run = project.kip(&["registry", "verify", "zero.json"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.to_lowercase().contains("serial"),
        "{}",
        run.stderr
    );
}

#[test]
fn unsigned_registry_is_refused() {
    let project = Project::new();
    project.write("registry.json", document(9, "2030-01-01T00:00:00Z", "16"));
    refusal(
        &project,
        &["registry", "verify", "registry.json"],
        "registry_unsigned",
    );
    refusal(
        &project,
        &["registry", "update", "registry.json"],
        "registry_unsigned_update",
    );
}

#[test]
fn registry_signed_by_an_unknown_key_is_refused() {
    let project = Project::new();
    let run = project.kip(&["registry", "keygen", "--out", "other.pem"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let private = std::fs::metadata(project.path().join("other.pem")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&private.permissions()) & 0o777,
        0o600
    );
    assert!(
        project
            .read("other.pub.pem")
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    project.write("registry.json", document(9, "2030-01-01T00:00:00Z", "16"));
    assert_eq!(
        project
            .kip(&["registry", "sign", "--key", "other.pem", "registry.json"])
            .code,
        0
    );
    let run = project.kip(&["registry", "verify", "registry.json"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("unknown key"), "{}", run.stderr);
    let filtered = regex_free_key_id(&run.snapshot());
    insta::assert_snapshot!("registry_unknown_key", filtered);
}

/// Key ids of freshly generated keys differ per run; hide them in snapshots.
fn regex_free_key_id(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            let hex = word.trim_matches(|c: char| !c.is_ascii_hexdigit());
            if hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
                word.replace(hex, "[KEY_ID]")
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn tampered_registry_is_refused() {
    let project = Project::new();
    signed(
        &project,
        "registry.json",
        &document(9, "2030-01-01T00:00:00Z", "16"),
    );
    project.write(
        "registry.json",
        document(9, "2030-01-01T00:00:00Z", "16, 19"),
    );
    refusal(
        &project,
        &["registry", "verify", "registry.json"],
        "registry_tampered",
    );
}

#[test]
fn expired_registry_is_refused() {
    let project = Project::new();
    signed(
        &project,
        "registry.json",
        &document(9, "2025-01-01T00:00:00Z", "16"),
    );
    refusal(
        &project,
        &["registry", "verify", "registry.json"],
        "registry_expired",
    );
}

#[test]
fn malformed_signature_is_refused() {
    let project = Project::new();
    project.write("registry.json", document(9, "2030-01-01T00:00:00Z", "16"));
    project.write("registry.json.sig", "not a signature");
    refusal(
        &project,
        &["registry", "verify", "registry.json"],
        "registry_malformed_signature",
    );
}

#[test]
fn sign_refuses_a_malformed_document() {
    let project = Project::new();
    project.write("registry.json", "{\n  \"format\": 1,\n  \"serial\": \n}\n");
    let key = release_key();
    let run = project.kip(&[
        "registry",
        "sign",
        "--key",
        key.to_str().unwrap(),
        "registry.json",
    ]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("line 4"),
        "the error names the position\n{}",
        run.stderr
    );
    assert!(!project.path().join("registry.json.sig").exists());
}

#[test]
fn a_broken_installed_registry_is_reported_not_ignored() {
    let project = Project::with_config("postgres \"main\" {\n  version = \"16\"\n}\n");
    std::fs::create_dir_all(project.home.path().join("registry")).unwrap();
    std::fs::write(project.home.path().join("registry/registry.json"), "{}").unwrap();
    std::fs::write(project.home.path().join("registry/registry.json.sig"), "{}").unwrap();
    let run = project.kip(&["lint"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(run.stderr.contains("registry.json"), "{}", run.stderr);
}
