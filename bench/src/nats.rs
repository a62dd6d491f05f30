//! NATS (issue 11): `kip apply` of a fresh NATS instance (JetStream on) to ready, against the bare `nats-server`
//! started by the benchmark with the same kind of configuration until a client connects with the token and
//! JetStream answers. The target is 1.2× of the bare start.
//!
//! Both sides run the same build (the toolchain kip unpacked into the shared cache) with the same configuration
//! text: the bare side's file is rendered by the provider's own renderer (loopback port, token, JetStream store
//! in a fresh directory). kip's side is the real release binary in a new project per run, from spawn to exit:
//! config check, plan, supervisor, provisioning (a port allocated, the token generated, the config written), the
//! server's start, the TCP probe, the ready step (a client with the token, `$JS.API.INFO`), the state write. The
//! bare side is spawn to the first successful client connection and JetStream answer, polled every 0.5 ms; the
//! server is stopped after each run. The ratio goes to the table of kip against each engine's own start
//! ([`crate::floor`]).
//!
//! A second case adds the instance to a project that already runs one of the same engine, as a developer does
//! after the first apply: the project's account, kip.lock and supervisor exist, so it times what kip adds to each
//! instance rather than what a new project costs once (on root, creating the project's account).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kip_providers::nats::args::{InstanceArgs, Size};
use kip_providers::nats::client::serves;
use kip_providers::nats::config::{Rendered, render};

use crate::apply::test_mirror;
use crate::kip::{Harness, open_dir};
use crate::valkey::KipApplies;

const CONFIG: &str = r#"nats "bus" {
  version = "2"
}
"#;

/// The instance a running project keeps while [`KipApplies::measure_added`] adds and removes another.
const KEEP: &str = r#"nats "keep" {
  version = "2"
}
"#;

/// Runs the case; `runs` overrides the default of 21.
pub fn run(runs: Option<usize>) {
    let runs = runs.unwrap_or(21);
    let harness = Harness::new(&test_mirror());
    KipApplies::warm(&harness, "nats", CONFIG);
    let server = nats_server(&harness.cache.join("store"));
    let scratch = harness.root.join("bare");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut index = 0;
    let mut bare = || {
        index += 1;
        let dir = scratch.join(index.to_string());
        open_dir(&dir);
        bare_start(&runtime, &server, &dir)
    };
    let kip = KipApplies::measure(&harness, CONFIG, "nats.bus", runs, &mut bare);
    kip.report(
        &format!("a fresh NATS 2 with JetStream to ready: kip apply vs the bare nats-server ({runs} runs each)"),
        "nats-server start, TCP probe, client with the token, JetStream answer",
        "bare nats-server -c, spawn to a client and a JetStream answer",
    );
    crate::floor::against_floor("NATS", kip.total(), kip.bare(), "≤ 1.2× (issue 11)");
    let added = KipApplies::measure_added(&harness, KEEP, CONFIG, "nats.bus", runs, &mut bare);
    added.report(
        &format!(
            "a NATS 2 added to a project that runs one already: kip apply vs the bare nats-server ({runs} runs each)"
        ),
        "nats-server start, TCP probe, client with the token, JetStream answer",
        "bare nats-server -c, spawn to a client and a JetStream answer",
    );
    crate::floor::against_floor_as(
        "NATS: an instance added to a running project, kip apply to ready",
        added.total(),
        added.bare(),
        "≤ 1.2× (issue 11)",
    );
    crate::floor::no_init_step(
        "NATS",
        "it starts from its configuration file; JetStream creates its store directory on first start",
    );
}

/// The `nats-server` kip unpacked into the store.
fn nats_server(store: &Path) -> PathBuf {
    std::fs::read_dir(store)
        .expect("the toolchain store")
        .flatten()
        .map(|entry| entry.path().join("bin/nats-server"))
        .find(|path| path.is_file())
        .expect("a nats-server in the store")
}

/// Starts `server` with kip's kind of configuration in `dir` and times it to a client with the token and a
/// JetStream answer; stops it.
fn bare_start(runtime: &tokio::runtime::Runtime, server: &Path, dir: &Path) -> Duration {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let token = "bench-token-0123456789abcdef";
    let args = InstanceArgs {
        version: Some("2".into()),
        major: Some(2),
        run_as: None,
        port: None,
        http_port: None,
        jetstream: true,
        max_payload: Size::Text("1mb".into()),
        max_connections: None,
        max_memory_store: None,
        max_file_store: None,
        token: None,
        settings: None,
    };
    let config = render(&Rendered {
        args: &args,
        port,
        token,
        store_dir: &dir.join("jetstream"),
    })
    .expect("the config renders");
    let file = dir.join("nats.conf");
    std::fs::write(&file, config).expect("the config is written");
    let started = Instant::now();
    let child = Command::new(server)
        .arg("-c")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts");
    // Stopped when this returns, or when an assertion below fails.
    let _server = crate::floor::BareServer::new(child, "KILL");
    loop {
        if runtime.block_on(serves(port, token)) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nats-server did not answer on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
}
