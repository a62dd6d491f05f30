//! The fake engine through the whole suite, and through the parts of the lifecycle and the scheduler real
//! engines rarely hit on demand: parallel starts, a failure that skips its dependents (reported once), a provider
//! panic, several processes in order, reload and restart, a job that runs once, a forced replacement, and a
//! reference to another instance that is known only after apply and stays redacted, and a port kip chose taken
//! during a start.

use kip_conformance::fake::{Fake, FakeFixture, LISTEN_PORT, schema};
use kip_conformance::{Harness, Setup, run};
use kip_core::address::Address;
use kip_core::apply::{ApplyError, InstanceError};
use kip_core::engine::Engines;
use kip_core::plan::Action;
use kip_core::supervise::MemorySupervisors;

fn setup() -> (Setup, Fake, MemorySupervisors) {
    let fake = Fake::default();
    let mut engines = Engines::new();
    engines.register(fake.clone());
    let supervisors = MemorySupervisors::new();
    let setup = Setup::memory(engines, supervisors.clone()).with_schema(schema());
    (setup, fake, supervisors)
}

fn fake(name: &str) -> Address {
    Address::instance("fake", name, None)
}

#[test]
fn the_fake_engine_conforms() {
    let (setup, _, _) = setup();
    run(&FakeFixture, &setup);
}

#[test]
fn independent_instances_start_in_parallel_and_dependents_after() {
    let (setup, fake_engine, _) = setup();
    let harness = Harness::new(
        &setup,
        r#"
fake "a" { delay_ms = 300 }
fake "b" { delay_ms = 300 }
fake "c" { depends_on = [fake.a, fake.b] }
"#,
    );
    harness.apply_clean("apply");
    let journal = &fake_engine.journal;
    let started = |name: &str| {
        journal
            .when(&fake(name).to_string(), "provision started")
            .unwrap()
    };
    let done = |name: &str| {
        journal
            .when(&fake(name).to_string(), "provisioned")
            .unwrap()
    };
    assert!(
        started("b") < done("a") && started("a") < done("b"),
        "a and b overlap: {:#?}",
        journal.events()
    );
    assert!(started("c") > done("a") && started("c") > done("b"));
}

/// An engine without an after-start step has its instances initialized with their first provisioning, saved
/// before they start: nothing runs and nothing is written between their start and ready, so such an instance's
/// first apply writes the state once less than one whose engine has the step.
#[test]
fn an_instance_without_an_after_start_step_is_initialized_with_its_provisioning() {
    let first_apply = |config: &str| {
        let (setup, fake_engine, _) = setup();
        let harness = Harness::new(&setup, config);
        harness.apply_clean("apply");
        let state = harness.state();
        let steps = fake_engine.journal.count("after start");
        (
            state.serial,
            state.instances[&fake("main")].lifecycle.clone(),
            steps,
        )
    };
    let (with_serial, with, with_steps) = first_apply("fake \"main\" {}\n");
    let (without_serial, without, without_steps) =
        first_apply("fake \"main\" { after_start = false }\n");
    assert!(
        with.initialized && without.initialized,
        "{with:?} {without:?}"
    );
    assert_eq!((with_steps, without_steps), (1, 0));
    assert_eq!(
        without_serial + 1,
        with_serial,
        "the write after ready is gone"
    );
}

/// What an engine reads ahead for a plan reaches its refresh, and is read when the plan begins: a change made
/// behind kip's back after the apply is drift the plan shows. An instance that does not run is planned from the
/// state, and what was read ahead for it is dropped.
#[test]
fn a_plan_hands_what_the_engine_read_ahead_to_its_refresh() {
    let (setup, fake_engine, supervisors) = setup();
    let harness = Harness::new(
        &setup,
        "fake \"main\" {\n  item \"a\" { value = \"1\" }\n}\n",
    );
    harness.apply_clean("apply");
    let path =
        kip_conformance::fake::store_path(&harness.state().instances[&fake("main")].data_dir);
    let mut store = kip_conformance::fake::read_store(&path).unwrap();
    store["items"]["a"]["value"] = serde_json::json!("changed behind kip's back");
    kip_conformance::fake::write_store(&path, &store).unwrap();
    let plan = harness.plan().unwrap();
    let drift = plan.change(&fake("main").named_child("item", "a")).unwrap();
    assert_eq!(drift.action, kip_core::plan::Action::Update, "{drift:?}");
    let events: Vec<&str> = fake_engine
        .journal
        .events()
        .into_iter()
        .filter(|event| event.address == fake("main").to_string())
        .map(|event| event.what)
        .collect();
    let at = |what: &str| events.iter().rposition(|event| *event == what);
    let (Some(read), Some(took), Some(refreshed)) = (
        at("read ahead"),
        at("refresh took the read-ahead"),
        at("refreshed"),
    ) else {
        panic!("read ahead, taken and refreshed: {events:?}");
    };
    assert!(read < took && took < refreshed, "{events:?}");
    // Stopped: nothing is refreshed, and the plan is the state's.
    supervisors.shutdown();
    let before = fake_engine.journal.events().len();
    let plan = harness.plan().unwrap();
    assert!(
        plan.change(&fake("main").named_child("item", "a"))
            .is_none_or(|change| change.action == kip_core::plan::Action::Noop),
        "{plan:?}"
    );
    let refreshed = fake_engine.journal.events()[before..]
        .iter()
        .any(|event| event.what.starts_with("refresh"));
    assert!(!refreshed, "a stopped instance is not refreshed");
}

/// A refresh waits for its own instance's read-ahead, never for another's: here the other instance is down and
/// its read-ahead is slow, and the plan ends before that read does.
#[test]
fn a_refresh_does_not_wait_for_another_instances_read_ahead() {
    let (setup, fake_engine, supervisors) = setup();
    let harness = Harness::new(
        &setup,
        "fake \"up\" {}\nfake \"down\" { delay_ms = 1500 }\n",
    );
    harness.apply_clean("apply");
    for status in harness.running(&fake("down")) {
        supervisors.kill(&status.name);
    }
    // The apply's own check plans too: only what this plan did counts.
    let before = fake_engine.journal.events().len();
    harness.plan().unwrap();
    let events = fake_engine.journal.events().split_off(before);
    let seen = |address: &str, what: &str| {
        events
            .iter()
            .any(|event| event.address == fake(address).to_string() && event.what == what)
    };
    assert!(
        seen("up", "refresh took the read-ahead"),
        "the running instance's refresh took its read-ahead: {events:#?}"
    );
    assert!(
        !seen("down", "read ahead"),
        "the plan ended before the other instance's read-ahead did: {events:#?}"
    );
}

/// `kip apply` reads ahead before the state lock is its own: what was read is used only for the state it started
/// from. A state written since (another apply held the lock) and a project without a state both refuse it.
#[test]
fn a_read_ahead_serves_only_the_state_it_started_from() {
    let (setup, _, _) = setup();
    let harness = Harness::new(&setup, "fake \"up\" {}\n");
    let none_yet = kip_core::planner::prefetch(harness.project(), &setup.engines)
        .expect("the read-ahead thread starts");
    assert!(
        !none_yet.started_from(&harness.state()),
        "there was no state to start from"
    );
    harness.apply_clean("apply");
    let prefetched = kip_core::planner::prefetch(harness.project(), &setup.engines)
        .expect("the read-ahead thread starts");
    let mut state = harness.state();
    assert!(prefetched.started_from(&state), "the same state");
    assert!(
        prefetched.started_from(&state),
        "asked again, the same answer"
    );
    state.checkpoint(&harness.project().kip_dir).unwrap();
    assert!(
        !prefetched.started_from(&harness.state()),
        "the state was written since"
    );
    let mut other = harness.state();
    other.lineage = "another state".into();
    other.serial -= 1;
    assert!(
        !prefetched.started_from(&other),
        "the same serial of another lineage"
    );
}

#[test]
fn independent_instances_refresh_concurrently_and_dependents_after() {
    let (setup, fake_engine, _) = setup();
    let harness = Harness::new(
        &setup,
        r#"
fake "a" { delay_ms = 200 }
fake "b" { delay_ms = 200 }
fake "c" {
  delay_ms = 200
  item "link" { value = fake.a.url }
}
"#,
    );
    // The apply's own plan has nothing to refresh (nothing exists yet); the clean plan after it refreshes all three.
    harness.apply_clean("apply");
    let journal = &fake_engine.journal;
    let at = |name: &str, what: &str| {
        journal
            .when(&fake(name).to_string(), what)
            .unwrap_or_else(|| panic!("{name}: no {what}: {:#?}", journal.events()))
    };
    assert!(
        at("b", "refresh started") < at("a", "refreshed")
            && at("a", "refresh started") < at("b", "refreshed"),
        "a and b are refreshed at the same time: {:#?}",
        journal.events()
    );
    assert!(
        at("c", "refresh started") > at("a", "refreshed"),
        "c reads a, so it is planned once a is: {:#?}",
        journal.events()
    );
}

#[test]
fn a_failure_skips_its_dependents_once_and_the_rest_comes_up() {
    let (setup, _, supervisors) = setup();
    let harness = Harness::new(
        &setup,
        r#"
fake "bad" { fail = true }
fake "after" { depends_on = [fake.bad] }
fake "later" { depends_on = [fake.after] }
fake "good" {}
"#,
    );
    let Err(ApplyError::Failed { failures, skipped }) = harness.apply() else {
        panic!("the apply should fail");
    };
    assert_eq!(failures.len(), 1, "reported once: {failures:?}");
    assert_eq!(failures[0].address, fake("bad"));
    assert!(matches!(failures[0].error, InstanceError::Supervisor(_)));
    assert_eq!(skipped, [fake("after"), fake("later")]);
    let spawned = supervisors.spawned();
    assert!(spawned.contains(&"fake.good".to_owned()), "{spawned:?}");
    assert!(
        !spawned
            .iter()
            .any(|name| name == "fake.after" || name == "fake.later")
    );
    assert!(harness.state().instances.contains_key(&fake("good")));
    assert!(!harness.state().instances.contains_key(&fake("after")));
}

#[test]
fn a_provider_panic_fails_its_instance_and_skips_its_dependents() {
    let (setup, _, _) = setup();
    let harness = Harness::new(
        &setup,
        r#"
fake "boom" { panic = "provision" }
fake "child" { depends_on = [fake.boom] }
fake "fine" {}
"#,
    );
    let Err(ApplyError::Failed { failures, skipped }) = harness.apply() else {
        panic!("the apply should fail");
    };
    assert_eq!(failures.len(), 1);
    match &failures[0].error {
        InstanceError::Panicked { engine, message } => {
            assert_eq!(engine, "fake");
            assert!(message.contains("panics in provision"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(skipped, [fake("child")]);
    assert!(harness.state().instances.contains_key(&fake("fine")));
}

#[test]
fn processes_start_in_order_and_changes_reload_or_restart() {
    let (setup, _, supervisors) = setup();
    let harness = Harness::new(&setup, "fake \"multi\" {\n  processes = 3\n}\n");
    harness.apply_clean("apply");
    assert_eq!(
        supervisors.spawned(),
        ["fake.multi/p0", "fake.multi/p1", "fake.multi/p2"]
    );
    harness.write_config("fake \"multi\" {\n  processes = 3\n  setting = \"b\"\n}\n");
    harness.apply_clean("reload");
    assert_eq!(
        supervisors.reloads(),
        ["fake.multi/p0", "fake.multi/p1", "fake.multi/p2"]
    );
    assert_eq!(supervisors.spawned().len(), 3, "a reload spawns nothing");
    harness.write_config(
        "fake \"multi\" {\n  processes = 3\n  setting = \"b\"\n  restart_setting = \"b\"\n}\n",
    );
    harness.apply_clean("restart");
    assert_eq!(
        supervisors.spawned().len(),
        6,
        "a restart spawns each process again"
    );
}

#[test]
fn a_job_runs_once_until_its_configuration_changes_and_a_failed_one_skips_its_dependents() {
    let (setup, _, supervisors) = setup();
    let harness = Harness::new(&setup, "fake \"job\" {\n  job = true\n}\n");
    harness.apply_clean("apply");
    assert_eq!(supervisors.spawned(), ["fake.job"]);
    harness.apply_clean("again");
    harness.down().unwrap();
    harness.up().unwrap();
    assert_eq!(
        supervisors.spawned(),
        ["fake.job"],
        "a job that succeeded is not run again"
    );
    harness.write_config("fake \"job\" {\n  job = true\n  setting = \"b\"\n}\n");
    harness.apply_clean("changed");
    assert_eq!(
        supervisors.spawned(),
        ["fake.job", "fake.job"],
        "a changed job runs again"
    );

    harness.write_config(
        "fake \"job\" {\n  job = true\n  exit_code = 3\n}\nfake \"web\" {\n  depends_on = [fake.job]\n}\n",
    );
    let Err(ApplyError::Failed { failures, skipped }) = harness.apply() else {
        panic!("a failed job fails the apply");
    };
    assert!(
        matches!(&failures[0].error, InstanceError::JobFailed { exit, .. } if exit.contains("code 3")),
        "{failures:?}"
    );
    assert_eq!(skipped, [fake("web")]);
}

#[test]
fn a_forced_replacement_plans_minus_plus_and_starts_afresh() {
    let (setup, fake_engine, _) = setup();
    let config = |flavour: &str| {
        format!(
            "fake \"main\" {{\n  flavour = \"{flavour}\"\n  item \"a\" {{ value = \"1\" }}\n}}\n"
        )
    };
    let harness = Harness::new(&setup, &config("plain"));
    harness.apply_clean("apply");
    harness.write_config(&config("spicy"));
    let plan = harness.plan().unwrap();
    let change = plan.change(&fake("main")).unwrap();
    assert_eq!(change.action, Action::Replace);
    assert_eq!(change.replace_because, ["flavour"]);
    let item = plan.change(&fake("main").named_child("item", "a")).unwrap();
    assert_eq!(
        item.action,
        Action::Create,
        "the new instance gets its objects again"
    );
    harness.apply_clean("replace");
    assert_eq!(fake_engine.journal.count("provisioned"), 2);
}

#[test]
fn a_reference_is_known_after_apply_and_stays_redacted() {
    let (setup, _, _) = setup();
    let harness = Harness::new(
        &setup,
        r#"
fake "db" {}
fake "app" {
  item "link" { value = fake.db.url }
}
"#,
    );
    let plan = harness.plan().unwrap();
    let link = plan
        .change(&fake("app").named_child("item", "link"))
        .unwrap();
    assert!(link.after_unknown.contains("value"), "{link:?}");
    assert!(
        link.sensitive.contains("value"),
        "a value made from a secret is secret"
    );
    harness.apply_clean("apply");
    let db_url = harness.exports(&fake("db")).unwrap()["url"].clone();
    let store = kip_conformance::fake::read_store(&kip_conformance::fake::store_path(
        &harness.state().instances[&fake("app")].data_dir,
    ))
    .unwrap();
    assert_eq!(store["items"]["link"]["value"], db_url);
    // Known now, and equal: no change, and the plan holds no password.
    let plan = harness.plan().unwrap();
    assert!(!plan.has_changes());
    let password = harness.exports(&fake("db")).unwrap()["password"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!serde_json::to_string(&plan).unwrap().contains(&password));
}

/// A port kip chose, taken by another program between kip's check and the engine's bind (another kip choosing
/// the same moment): the failed start gives it up for a new free one, saved in the state, and starts again; the
/// other program keeps its port.
#[test]
fn a_chosen_port_taken_during_the_start_is_given_up_for_a_new_one() {
    let (setup, _, supervisors) = setup();
    let harness = Harness::new(&setup, "fake \"main\" {\n  listens = true\n}\n");
    supervisors.take_port_at_next_start();
    harness
        .apply()
        .expect("the second start, on a new port, succeeds");
    let taken = supervisors.taken_ports();
    assert_eq!(taken.len(), 1, "{taken:?}");
    let kept = harness.state().instances[&fake("main")].ports[LISTEN_PORT];
    assert_ne!(kept, taken[0]);
    let spawned = supervisors.spawned();
    assert_eq!(spawned, ["fake.main", "fake.main"], "{spawned:?}");
    let running = harness.running(&fake("main"));
    assert_eq!(running.len(), 1);
    assert!(std::net::TcpStream::connect(("127.0.0.1", taken[0])).is_ok());
    // Nothing to change afterwards.
    let plan = harness.plan().unwrap();
    assert!(
        plan.changes
            .iter()
            .all(|change| change.action == Action::Noop),
        "{plan:?}"
    );
}

/// A kept port the engine cannot use though nothing listens on it (another account's file named after it, as
/// SeaweedFS names its gRPC sockets in /tmp), found while the instance was down: `kip up` gives it up for a new one,
/// saved in the state, which is never an unusable one, and spawns nothing on the old one.
#[test]
fn a_kept_port_the_engine_cannot_use_is_given_up_for_a_new_one() {
    let (setup, engine, supervisors) = setup();
    let harness = Harness::new(&setup, "fake \"main\" {\n  listens = true\n}\n");
    harness.apply_clean("apply");
    let first = harness.state().instances[&fake("main")].ports[LISTEN_PORT];
    harness.down().unwrap();
    engine.make_port_unusable(first);
    harness.up().expect("the start on a new port succeeds");
    let second = harness.state().instances[&fake("main")].ports[LISTEN_PORT];
    assert_ne!(second, first);
    assert_eq!(harness.running(&fake("main")).len(), 1);
    let spawned = supervisors.spawned();
    assert_eq!(spawned, ["fake.main", "fake.main"], "{spawned:?}");
    let plan = harness.plan().unwrap();
    assert!(!plan.has_changes(), "{plan:?}");
}

/// The same, with the port taken between provisioning and the start (the check before the start finds it), not
/// during the bind.
#[test]
fn a_port_taken_before_each_start_moves_three_times_then_fails_once_and_the_next_apply_starts() {
    let (setup, engine, supervisors) = setup();
    let harness = Harness::new(&setup, "fake \"main\" {\n  listens = true\n}\n");
    engine.take_chosen_port_after_next_provisions(4);
    let Err(ApplyError::Failed { failures, .. }) = harness.apply() else {
        panic!("kip gives up after three new ports");
    };
    assert_eq!(failures.len(), 1, "reported once: {failures:?}");
    let taken = engine.squatted_ports();
    assert_eq!(
        taken.len(),
        4,
        "the first port and three new ones: {taken:?}"
    );
    let unique: std::collections::BTreeSet<u16> = taken.iter().copied().collect();
    assert_eq!(unique.len(), 4, "each try chose a new port: {taken:?}");
    let shown = format!("{:?}", failures[0].error);
    assert!(
        shown.contains(&format!("port: {}", taken[3])),
        "the error names the last port: {shown}"
    );
    assert!(
        supervisors.spawned().is_empty(),
        "nothing was spawned on a taken port: {:?}",
        supervisors.spawned()
    );
    harness.apply().expect("the next apply starts the instance");
    let kept = harness.state().instances[&fake("main")].ports[LISTEN_PORT];
    assert!(!taken.contains(&kept), "{kept} is not one of {taken:?}");
    assert_eq!(harness.running(&fake("main")).len(), 1);
}

#[test]
fn a_program_that_takes_every_port_kip_chooses_fails_the_apply_after_three_tries_and_the_next_one_starts()
 {
    let (setup, _, supervisors) = setup();
    let harness = Harness::new(&setup, "fake \"main\" {\n  listens = true\n}\n");
    // The first start and its three retries each find their new port taken just before the bind.
    supervisors.take_port_at_next_starts(4);
    let Err(ApplyError::Failed { failures, .. }) = harness.apply() else {
        panic!("kip gives up after three new ports");
    };
    assert_eq!(failures.len(), 1, "reported once: {failures:?}");
    let taken = supervisors.taken_ports();
    assert_eq!(taken.len(), 4, "one port per try: {taken:?}");
    let unique: std::collections::BTreeSet<u16> = taken.iter().copied().collect();
    assert_eq!(unique.len(), 4, "each try chose a new port: {taken:?}");
    let shown = format!("{:?}", failures[0].error);
    assert!(
        shown.contains(&format!("port {} was taken", taken[3])),
        "the error names the last port and why: {shown}"
    );
    assert!(harness.running(&fake("main")).is_empty(), "nothing runs");
    // The other program is gone from the next start on: the next apply starts it, on a port of its own.
    harness.apply().expect("the next apply starts the instance");
    let kept = harness.state().instances[&fake("main")].ports[LISTEN_PORT];
    assert!(!taken.contains(&kept), "{kept} is not one of {taken:?}");
    assert_eq!(harness.running(&fake("main")).len(), 1);
}
