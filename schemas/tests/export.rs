//! The JSON and Markdown surfaces: their documented shape and the details users look for in them.

use kip_schemas::{JSON_FORMAT, engine, engines, markdown_index, to_json, to_markdown};
use serde_json::json;

#[test]
fn json_document_shape() {
    let document = to_json(engines());
    assert_eq!(document["format"], json!(JSON_FORMAT));
    assert_eq!(JSON_FORMAT, 1);
    let names: Vec<&str> = document["engines"]
        .as_array()
        .expect("engines")
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["postgres", "valkey", "mariadb", "nats", "s3", "process"]
    );

    let postgres = &document["engines"][0];
    assert_eq!(postgres["majors"], json!([14, 15, 16, 17, 18]));
    assert_eq!(postgres["versioned"], json!(true));
    assert_eq!(postgres["instance"]["labels"], json!(["name"]));
    let argument = |name: &str| {
        postgres["instance"]["arguments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        argument("io_method"),
        json!({
            "name": "io_method",
            "doc": argument("io_method")["doc"],
            "type": "one of \"sync\", \"worker\", \"io_uring\"",
            "required": false,
            "default": null,
            "sensitive": false,
            "since": "18",
            "forces_replacement": false,
            "not_yet": null,
        })
    );
    assert_eq!(argument("version")["type"], json!("scalar"));
    assert_eq!(argument("version")["required"], json!(true));
    assert_eq!(argument("superuser")["default"], json!("postgres"));
    assert_eq!(argument("password")["sensitive"], json!(true));
    assert_eq!(argument("settings")["type"], json!("map(scalar)"));

    let process = &document["engines"][5];
    assert_eq!(process["versioned"], json!(false));
    let ready = process["instance"]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "ready")
        .unwrap();
    assert_eq!(
        ready["exactly_one_of"],
        json!([["http", "tcp", "exec", "log_line", "socket"]])
    );
    assert_eq!(ready["object"], json!(false));

    // Deterministic: the same document twice, byte for byte.
    assert_eq!(
        serde_json::to_string(&document).unwrap(),
        serde_json::to_string(&to_json(engines())).unwrap()
    );
}

#[test]
fn markdown_page_has_tables_badges_and_nested_blocks() {
    let page = to_markdown(engine("postgres").expect("postgres"));
    assert!(page.starts_with("# `postgres`\n"), "{page}");
    assert!(page.contains("**Supported major versions:** 14, 15, 16, 17, 18."));
    assert!(page.contains("| Argument | Type | Required / default | Description |"));
    assert!(page.contains("| `version` | `scalar` | **required** |"));
    assert!(page.contains("| `superuser` | `string` | default `\"postgres\"` | `forces replacement` Name of the bootstrap"));
    assert!(page.contains("| `io_method` | `one of \"sync\", \"worker\", \"io_uring\"` | optional | `since 18` How the server"));
    assert!(
        page.contains(
            "| `password` | `string` | optional | `sensitive` Password of the superuser."
        )
    );
    assert!(page.contains("Exports, referenced as `postgres.<name>.<attribute>`:"));
    assert!(page.contains("## `postgres \"<name>\"` › `role \"<name>\"`"));
    assert!(
        page.contains("## `postgres \"<name>\"` › `database \"<name>\"` › `schema \"<name>\"`")
    );
    assert!(page.contains("Exports, referenced as `postgres.<name>.database.<name>.<attribute>`:"));
    assert!(page.contains("## `postgres \"<name>\"` › `grant`"));
    // Sections come in depth-first order: database, then its schema, before the instance-level schema.
    let database = page
        .find("› `database \"<name>\"`\n")
        .expect("database section");
    let nested_schema = page
        .find("› `database \"<name>\"` › `schema")
        .expect("nested schema");
    let grant = page.find("› `grant`\n").expect("grant section");
    assert!(database < nested_schema && nested_schema < grant);

    let process = to_markdown(engine("process").expect("process"));
    assert!(process.contains("**Not versioned:**"));
    assert!(
        process.contains("Exactly one of `http`, `tcp`, `exec`, `log_line`, `socket` must be set.")
    );
    assert!(process.contains("## `process \"<name>\"` › `wait_for \"<address>\"`"));
    assert!(process.contains(
        "| `restart` | `one of \"no\", \"on_failure\", \"always\"` | default `\"on_failure\"` |"
    ));
}

#[test]
fn markdown_index_links_every_engine() {
    let index = markdown_index(engines());
    for engine in engines() {
        assert!(
            index.contains(&format!("| [`{0}`]({0}.md) |", engine.name)),
            "{}",
            engine.name
        );
    }
    assert!(index.contains(
        "| [`postgres`](postgres.md) | 14, 15, 16, 17, 18 | PostgreSQL, the relational database"
    ));
    assert!(index.contains("| [`process`](process.md) | not versioned |"));
}
