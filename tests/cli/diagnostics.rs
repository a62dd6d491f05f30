//! `kip lint` on bad input: every kind of problem gets a diagnostic with its file:line:col, the source line, a
//! caret, a constant summary and a detail that says what to do, and exit code 1. One snapshot per case.

use crate::support::Project;

/// Runs `kip lint` on `source` and snapshots everything it printed.
fn check(name: &str, source: &str) {
    let project = Project::with_config(source);
    let run = project.kip(&["lint"]);
    assert_eq!(run.code, 1, "{name}: lint must fail\n{}", run.snapshot());
    assert!(
        run.stderr.contains("kip.hcl:"),
        "{name}: every diagnostic names its file and line\n{}",
        run.stderr
    );
    insta::assert_snapshot!(name, run.snapshot());
}

#[test]
fn malformed_hcl() {
    check(
        "malformed_hcl",
        "postgres \"main\" {\n  version = \"16\"\n  settings = {\n}\n",
    );
}

#[test]
fn unknown_block_type_with_suggestion() {
    check(
        "unknown_block_type",
        "postgress \"main\" {\n  version = \"16\"\n}\n",
    );
}

#[test]
fn unknown_nested_block_and_argument() {
    check(
        "unknown_argument",
        r#"valkey "cache" {
  version   = "9"
  maxmemroy = "64mb"
}

postgres "main" {
  version = "16"
  rol "app" {}
}
"#,
    );
}

#[test]
fn wrong_types() {
    check(
        "wrong_types",
        r#"postgres "main" {
  version = "16"
  role "app" {
    login = "yes"
  }
  database "shop" {
    extensions = "pgcrypto"
  }
}
"#,
    );
}

#[test]
fn missing_required_arguments() {
    check(
        "missing_required",
        r#"postgres "main" {
  settings = { work_mem = "8MB" }
}

process "web" {
  env = { A = "b" }
}
"#,
    );
}

#[test]
fn duplicate_instances_and_objects() {
    check(
        "duplicates",
        r#"postgres "main" {
  version = "16"
  role "app" {}
  role "app" {}
}

postgres "main" {
  version = "17"
}
"#,
    );
}

#[test]
fn references_to_nothing() {
    check(
        "undeclared_references",
        r#"variable "port" {
  type    = number
  default = 8080
}

postgres "main" {
  version = "16"
  database "shop" {}
}

process "web" {
  command = ["./web", "--port", var.prot]
  env = {
    DATABASE_URL = postgres.main.database.shp.url
    OTHER_URL    = postgres.mian.url
    BAD_ATTR     = postgres.main.uri
    LOCAL        = local.nothing
    ENGINE       = postgre.main.url
  }
}
"#,
    );
}

#[test]
fn version_outside_the_registry() {
    check(
        "unsupported_version",
        "postgres \"main\" {\n  version = \"19\"\n}\n\nvalkey \"cache\" {\n  version = 7\n}\n",
    );
}

#[test]
fn version_gated_argument() {
    check(
        "version_gate",
        "postgres \"main\" {\n  version   = \"16\"\n  io_method = \"worker\"\n}\n\npostgres \"next\" {\n  version   = 18\n  io_method = \"worker\"\n}\n",
    );
}

#[test]
fn dependency_cycle_names_every_node() {
    check(
        "cycle",
        r#"process "a" {
  command    = ["./a"]
  depends_on = [process.b]
}

process "b" {
  command = ["./b"]
  env     = { C_URL = process.c.url }
}

process "c" {
  command    = ["./c"]
  port       = 9000
  depends_on = [process.a]
}
"#,
    );
}

#[test]
fn every_problem_in_one_pass_across_files() {
    let project =
        Project::with_config("postgres \"main\" {\n  version = \"19\"\n  bogus   = 1\n}\n");
    project.write(
        "cache.kip.hcl",
        "valkey \"cache\" {\n  version   = \"9\"\n  maxmemory = true\n}\n",
    );
    let run = project.kip(&["lint"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("kip.hcl:2:13"), "{}", run.stderr);
    assert!(run.stderr.contains("kip.hcl:3:3"), "{}", run.stderr);
    assert!(run.stderr.contains("cache.kip.hcl:3:15"), "{}", run.stderr);
    assert!(run.stderr.contains("3 errors found."), "{}", run.stderr);
}

#[test]
fn variables_count_and_for_each() {
    check(
        "meta_arguments",
        r#"variable "replicas" {
  type = number
}

variable "names" {
  type    = list(string)
  default = ["a", "b"]
}

postgres "main" {
  version  = "16"
  count    = var.replicas
  for_each = var.names
}

valkey "cache" {
  version = "9"
  count   = "many"
}

process "web" {
  command = ["./web", count.index]
}
"#,
    );
}

#[test]
fn json_diagnostics_for_editors() {
    let project = Project::with_config(
        "valkey \"cache\" {\n  version   = \"9\"\n  maxmemroy = \"64mb\"\n}\n",
    );
    let run = project.kip(&["lint", "--json"]);
    assert_eq!(run.code, 1);
    let json: serde_json::Value =
        serde_json::from_str(&run.stdout).expect("lint --json prints JSON");
    assert_eq!(json["valid"], false);
    assert_eq!(json["error_count"], 1);
    let diagnostic = json["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["severity"] == "error")
        .unwrap();
    assert_eq!(diagnostic["summary"], "Unsupported argument");
    assert_eq!(diagnostic["range"]["filename"], "kip.hcl");
    assert_eq!(diagnostic["range"]["start"]["line"], 3);
    assert_eq!(diagnostic["range"]["start"]["column"], 3);
    assert!(
        diagnostic["detail"].as_str().unwrap().contains("maxmemory"),
        "{diagnostic}"
    );
}

#[test]
fn a_valid_config_lints_clean() {
    let project = Project::with_config(
        r#"variable "pg" {
  type    = string
  default = "16"
}

locals {
  db = "shop"
}

postgres "main" {
  version  = var.pg
  settings = { work_mem = "8MB", max_connections = 50 }
  role "app" { login = true }
  database "shop" {
    owner      = "app"
    extensions = ["pgcrypto"]
  }
  grant {
    role       = "app"
    database   = local.db
    privileges = ["ALL"]
  }
}

valkey "cache" {
  version   = 9
  maxmemory = "64mb"
}

process "web" {
  command = ["./bin/web"]
  env     = { DATABASE_URL = postgres.main.database.shop.url, REDIS_URL = valkey.cache.url }
}

output "database_url" {
  value = postgres.main.database.shop.url
}
"#,
    );
    let run = project.kip(&["lint"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(
        run.stdout
            .contains("The configuration is valid: 3 instances"),
        "{}",
        run.stdout
    );
    // Valid, and said plainly: no warning (this kip runs every engine the config uses).
    assert!(
        !run.stderr.contains("warning: Engine not supported yet"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("error"), "{}", run.stderr);
}

#[test]
fn variable_precedence_flag_then_environment_then_default() {
    let project = Project::with_config(
        "variable \"pg\" {\n  default = \"16\"\n}\n\npostgres \"main\" {\n  version = var.pg\n}\n",
    );
    // The default (16) is supported; the environment's 19 is not; the flag's 17 wins over both.
    assert_eq!(project.kip(&["lint"]).code, 0);
    let mut command = project.command(&["lint"]);
    command.env("KIP_VAR_pg", "19");
    let run = project.run_with(command);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("postgres 19 is not supported"),
        "{}",
        run.stderr
    );
    let mut command = project.command(&["lint", "--var", "pg=17"]);
    command.env("KIP_VAR_pg", "19");
    assert_eq!(project.run_with(command).code, 0);
    let run = project.kip(&["lint", "--var", "pgg=17"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("Did you mean \"pg\"?"),
        "{}",
        run.stderr
    );
}

#[test]
fn no_config_is_a_clear_error() {
    let project = Project::new();
    let run = project.kip(&["lint"]);
    assert_eq!(run.code, 1);
    insta::assert_snapshot!("no_config", run.snapshot());
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    let project = Project::with_config("postgress \"main\" {}\n");
    let plain = project.kip(&["lint"]);
    assert!(!plain.stderr.contains('\x1b'), "piped output has no colour");
    let mut command = project.command(&["lint", "--color", "always"]);
    command.env_remove("NO_COLOR");
    assert!(
        project.run_with(command).stderr.contains("\x1b["),
        "--color always colours"
    );
}

#[test]
fn values_the_engines_would_refuse() {
    let long = "r".repeat(64);
    check(
        "values_the_engines_would_refuse",
        &format!(
            r#"postgres "zero" {{
  version = "16"
  port    = 0
}}

postgres "big" {{
  version = "16"
  port    = 70000
}}

postgres "half" {{
  version = "16"
  port    = 5432.5
  role "{long}" {{}}
  role "nul\u0000byte" {{}}
}}

postgres "bad name" {{
  version = "16"
}}

process "web" {{
  command      = ["./web"]
  stop_command = ["./web", "stop"]
}}
"#
        ),
    );
}
