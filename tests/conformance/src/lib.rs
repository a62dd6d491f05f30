//! The provider conformance suite: the definition of "an engine works".
//!
//! A provider author implements the [`Engine`](kip_core::engine::Engine) contract, writes a [`Fixture`] (a
//! configuration of one instance with a few objects, and how the engine's own client writes data, reads it back
//! and makes drift), and calls [`run`] from a test. One call runs every required behaviour against the real
//! engine, through the same plan, apply and lifecycle code the `kip` binary uses, asserting an empty plan after
//! every apply, as Terraform's provider acceptance tests do:
//!
//! 1. the schema is valid, its JSON and Markdown docs generate, and every argument of every block reaches the
//!    provider's typed view (nothing documented is silently dropped);
//! 2. lint rejects a version outside the registry (versioned engines);
//! 3. apply brings the engine up, the declared objects exist as declared (the engine's own client checks), and
//!    the next plan is empty;
//! 4. a real client writes and reads data through the exports (`kip url`);
//! 5. drift made with the engine's own client is planned exactly (those attributes of those objects, nothing
//!    else) and apply repairs it;
//! 6. an object removed from the configuration is pruned;
//! 7. data survives `kip down` + `kip up`, and a SIGKILL of the engine's processes;
//! 8. destroy leaves no process, socket, port, file its processes leave outside its directories (`leaves`) or state
//!    entry.
//!
//! ```no_run
//! # use kip_conformance::{Setup, run};
//! # fn fixture() -> Box<dyn kip_conformance::Fixture> { unimplemented!() }
//! #[test]
//! fn postgres_16_conforms() {
//!     let setup = Setup::daemon(kip_providers::engines()).with_mirror("http://127.0.0.1:8080");
//!     run(fixture().as_ref(), &setup);
//! }
//! ```
//!
//! [`fake`] is an in-memory engine that passes the suite too, and exercises the scheduler (parallel starts, a
//! failure skipping its dependents once, a panic reported as a failure).

// The suite reports through panics with messages, as tests do; its helpers run errors up to there.
#![allow(clippy::result_large_err)]

pub mod fake;
mod harness;

pub use harness::{Harness, Processes, Setup};

use std::collections::BTreeSet;

use kip_core::address::Address;
use kip_core::engine::Exports;
use kip_core::plan::Action;

/// What the suite needs to know about one engine.
pub trait Fixture: Sync {
    /// The engine's block type ("postgres").
    fn engine(&self) -> &'static str;
    /// The version to run (`"16"`), or `None` for an unversioned engine.
    fn version(&self) -> Option<String>;
    /// A configuration of one instance, `<engine>.main`, with a few objects.
    fn config(&self) -> String;
    /// The same configuration without one of its objects, and that object's address.
    fn pruned(&self) -> (String, Address);
    /// Checks, with the engine's own client, that the declared objects exist as declared.
    fn check_objects(&self, exports: &Exports) -> Result<(), String>;
    /// Writes some data with the engine's own client, through the instance's exports (its `url`).
    fn write_data(&self, exports: &Exports) -> Result<(), String>;
    /// Whether the data written by [`Fixture::write_data`] is there.
    fn read_data(&self, exports: &Exports) -> Result<bool, String>;
    /// Changes declared objects behind kip's back with the engine's own client; returns the (object, attribute)
    /// pairs the next plan must show as changed — exactly those.
    fn drift(&self, exports: &Exports) -> Result<Vec<(Address, String)>, String>;
}

/// The schema's own checks: its JSON and Markdown docs generate, and every argument of every block, set, reaches
/// the provider's typed view of that block ([`Engine::check_view`](kip_core::engine::Engine::check_view)).
pub fn check_schema(engine: &dyn kip_core::engine::Engine) -> Result<(), String> {
    let schema = engine.schema();
    let json = kip_schemas::to_json(std::slice::from_ref(schema));
    if json["engines"][0]["name"] != schema.name {
        return Err("the JSON export does not name the engine".into());
    }
    if kip_schemas::to_markdown(schema).is_empty() {
        return Err("the Markdown docs are empty".into());
    }
    harness::every_argument_reaches_the_provider(engine)
}

fn fail(step: &str, why: impl std::fmt::Display) -> ! {
    panic!("conformance step `{step}` failed: {why}")
}

/// Runs every required behaviour; panics with the step and the reason on the first failure. Destroys
/// everything it made, also when a step fails.
pub fn run(fixture: &dyn Fixture, setup: &Setup) {
    let engine = setup
        .engines
        .get(fixture.engine())
        .unwrap_or_else(|| {
            fail(
                "setup",
                format!("no engine {} is registered", fixture.engine()),
            )
        })
        .clone();
    let harness = Harness::new(setup, &fixture.config());
    let main = Address::instance(fixture.engine(), "main", None);

    // 1. The schema and the provider's typed view of every argument.
    check_schema(engine.as_ref()).unwrap_or_else(|error| fail("schema", error));

    // 2. Lint refuses a version the registry does not list.
    if fixture.version().is_some() {
        let step = "lint rejects an unsupported version";
        let config = fixture.config().replacen(
            &format!("\"{}\"", fixture.version().unwrap_or_default()),
            "\"1\"",
            1,
        );
        let diagnostics = harness.lint(&config);
        if !diagnostics
            .iter()
            .any(|d| d == "Unsupported engine version")
        {
            fail(step, format!("lint said {diagnostics:?}"));
        }
    }

    // 3. Apply, objects as declared, an empty plan.
    let step = "apply";
    harness.apply_clean(step);
    let exports = harness.exports(&main).unwrap_or_else(|e| fail(step, e));
    fixture
        .check_objects(&exports)
        .unwrap_or_else(|e| fail("declared objects", e));

    // 4. A real client writes and reads.
    let step = "data through the exports";
    fixture
        .write_data(&exports)
        .unwrap_or_else(|e| fail(step, e));
    if !fixture
        .read_data(&exports)
        .unwrap_or_else(|e| fail(step, e))
    {
        fail(step, "the data written is not read back");
    }

    // 5. Drift, planned exactly, repaired.
    let step = "drift";
    let expected: BTreeSet<(Address, String)> = fixture
        .drift(&exports)
        .unwrap_or_else(|e| fail(step, e))
        .into_iter()
        .collect();
    let plan = harness.plan().unwrap_or_else(|e| fail(step, e));
    let planned: BTreeSet<(Address, String)> = plan
        .changes
        .iter()
        .filter(|change| change.action != Action::Noop)
        .flat_map(|change| {
            change
                .changed_attributes()
                .into_iter()
                .map(|attribute| (change.address.clone(), attribute))
        })
        .collect();
    if planned != expected {
        fail(
            step,
            format!("expected the plan to change {expected:?}, it changes {planned:?}"),
        );
    }
    harness.apply_clean(step);
    fixture
        .check_objects(&harness.exports(&main).unwrap_or_else(|e| fail(step, e)))
        .unwrap_or_else(|e| fail(step, format!("not repaired: {e}")));

    // 6. Prune.
    let step = "prune";
    let (pruned_config, removed) = fixture.pruned();
    harness.write_config(&pruned_config);
    let plan = harness.plan().unwrap_or_else(|e| fail(step, e));
    let deletions: Vec<&Address> = plan
        .changes
        .iter()
        .filter(|change| change.action == Action::Delete)
        .map(|change| &change.address)
        .collect();
    if deletions != [&removed] {
        fail(
            step,
            format!("expected the plan to delete {removed} only, it deletes {deletions:?}"),
        );
    }
    harness.apply_clean(step);
    if harness
        .plan()
        .unwrap_or_else(|e| fail(step, e))
        .has_changes()
    {
        fail(step, "the pruned object came back");
    }

    // 7. Data survives down + up, and a SIGKILL.
    let step = "down and up";
    harness.down().unwrap_or_else(|e| fail(step, e));
    if !harness.running(&main).is_empty() {
        fail(step, "processes still run after down");
    }
    harness.up().unwrap_or_else(|e| fail(step, e));
    let exports = harness.exports(&main).unwrap_or_else(|e| fail(step, e));
    if !fixture
        .read_data(&exports)
        .unwrap_or_else(|e| fail(step, e))
    {
        fail(step, "the data is gone after down and up");
    }
    let step = "SIGKILL";
    let killed = harness.kill(&main).unwrap_or_else(|e| fail(step, e));
    if killed == 0 {
        fail(step, "no process to kill");
    }
    harness.apply_clean(step);
    let exports = harness.exports(&main).unwrap_or_else(|e| fail(step, e));
    if !fixture
        .read_data(&exports)
        .unwrap_or_else(|e| fail(step, e))
    {
        fail(step, "the data is gone after a SIGKILL");
    }

    // 8. Destroy leaves nothing.
    let step = "destroy";
    let leftovers = harness
        .destroy_everything()
        .unwrap_or_else(|e| fail(step, e));
    if !leftovers.is_empty() {
        fail(step, format!("left behind: {}", leftovers.join("; ")));
    }
}
