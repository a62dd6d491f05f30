//! `kip schema`: the engines' schemas as JSON and Markdown, from the same source the checker uses.

use crate::support::Project;

#[test]
fn schema_json_describes_every_engine() {
    let project = Project::new();
    let run = project.kip(&["schema", "--json"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let names: Vec<&str> = json["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["postgres", "valkey", "mariadb", "nats", "s3", "process"]
    );
}

#[test]
fn schema_markdown_matches_the_committed_docs() {
    let project = Project::new();
    let run = project.kip(&["schema", "postgres", "--markdown"]);
    assert_eq!(run.code, 0);
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/schemas/postgres.md"
    ))
    .unwrap();
    assert_eq!(run.stdout, committed);
    assert!(run.stdout.contains("io_method"));
    assert!(run.stdout.contains("since 18"));
}

#[test]
fn unknown_engine_suggests_a_name() {
    let project = Project::new();
    let run = project.kip(&["schema", "postgre"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("did you mean \"postgres\"?"),
        "{}",
        run.stderr
    );
}
