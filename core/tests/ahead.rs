//! Which new instances an approved apply starts while its plan still refreshes the running ones: only those a plan
//! needs nothing refreshed for and whose walk nothing else waits on, and none while anything applied is protected.

#[path = "support/check.rs"]
mod check;

use kip_core::address::Address;
use kip_core::apply::ahead_of_refresh;
use kip_core::config::Checked;
use kip_core::state::State;

fn check(text: &str) -> Checked {
    let checked = check::check(text);
    assert!(
        !checked.diagnostics.has_errors(),
        "{:?}",
        checked.diagnostics.iter().next()
    );
    checked
}

/// A state that holds `postgres.main` (protected when `protected`, on itself or on a role of it).
fn state_with_main(protected: Option<&str>) -> State {
    let instance_protected = protected == Some("instance");
    let role_protected = protected == Some("role");
    let json = serde_json::json!({
        "format_version": kip_core::state::STATE_FORMAT,
        "serial": 3,
        "lineage": "test",
        "instances": {
            "postgres.main": {
                "engine": "postgres",
                "dir": "/x", "data_dir": "/x/data", "run_dir": "/x/run", "log_dir": "/x/log",
                "prevent_destroy": instance_protected,
                "objects": {
                    "postgres.main.role.app": {
                        "kind": "role",
                        "attributes": {},
                        "prevent_destroy": role_protected,
                    }
                }
            }
        }
    });
    serde_json::from_value(json).expect("a state")
}

fn ahead(text: &str, state: &State) -> Vec<String> {
    let checked = check(text);
    let config = checked.config.as_ref().expect("a config");
    let graph = checked.graph.as_ref().expect("a graph");
    ahead_of_refresh(config, graph, state)
        .iter()
        .map(Address::to_string)
        .collect()
}

const STACK: &str = r#"
postgres "main" {
  version = "16"
  role "app" { login = true }
}

postgres "added" {
  version = "16"
}

valkey "cache" {
  version = "9"
}

postgres "orders" {
  version = "16"
}

process "web" {
  command = ["sleep", "60"]
  env     = { DATABASE_URL = postgres.main.url }
}

process "migrate" {
  command = ["true"]
  restart = "no"
  env     = { DATABASE_URL = postgres.orders.url }
}
"#;

#[test]
fn new_instances_that_stand_alone_go_ahead_and_no_other() {
    // `web` reads the running `main`; `orders` is waited on by `migrate`, which reads it: none of the three goes.
    assert_eq!(
        ahead(STACK, &state_with_main(None)),
        ["postgres.added", "valkey.cache"]
    );
}

#[test]
fn nothing_goes_ahead_without_a_running_instance_or_with_a_protected_one() {
    let empty = State::default();
    assert!(ahead(STACK, &empty).is_empty(), "nothing to overlap");
    assert!(ahead(STACK, &state_with_main(Some("instance"))).is_empty());
    assert!(ahead(STACK, &state_with_main(Some("role"))).is_empty());
}
