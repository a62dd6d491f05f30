//! `kip graph`: nodes for instances and their objects, edges from nesting, references and depends_on, expanded
//! by count and for_each.

use crate::support::Project;

const CONFIG: &str = r#"variable "regions" {
  type    = list(string)
  default = ["eu", "us"]
}

postgres "main" {
  version = "16"
  role "app" { login = true }
  database "shop" { owner = "app" }
}

valkey "cache" {
  for_each = var.regions
  version  = "9"
  user "worker" {}
}

nats "bus" {
  count   = 2
  version = "2"
}

process "web" {
  command    = ["./web"]
  env        = { DATABASE_URL = postgres.main.database.shop.url, CACHE = valkey.cache["eu"].url }
  depends_on = [nats.bus[1]]
}
"#;

#[test]
fn text_graph_lists_nodes_in_dependency_order() {
    let project = Project::with_config(CONFIG);
    let run = project.kip(&["graph"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    insta::assert_snapshot!("graph_text", run.stdout);
    let web = run
        .stdout
        .lines()
        .position(|line| line.starts_with("process.web"))
        .unwrap();
    let shop = run
        .stdout
        .lines()
        .position(|line| line.starts_with("postgres.main.database.shop"))
        .unwrap();
    assert!(shop < web, "a dependency comes before what depends on it");
}

#[test]
fn dot_graph() {
    let project = Project::with_config(CONFIG);
    let run = project.kip(&["graph", "--format", "dot"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(run.stdout.starts_with("digraph kip {"));
    assert!(
        run.stdout
            .contains("\"postgres.main.database.shop\" -> \"process.web\" [style = dashed];")
    );
    assert!(
        run.stdout
            .contains("\"nats.bus[1]\" -> \"process.web\" [style = dotted];")
    );
    assert!(
        run.stdout
            .contains("\"valkey.cache[\\\"eu\\\"]\" -> \"process.web\""),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout
            .contains("\"valkey.cache[\\\"us\\\"]\" -> \"process.web\""),
        "{}",
        run.stdout
    );
}

#[test]
fn graph_refuses_an_invalid_config() {
    let project = Project::with_config(
        "process \"a\" {\n  command = [\"a\"]\n  depends_on = [process.a]\n}\n",
    );
    let run = project.kip(&["graph"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("process.a -> process.a"),
        "{}",
        run.stderr
    );
}
