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
//! server is stopped after each run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kip_providers::nats::args::{InstanceArgs, Size};
use kip_providers::nats::client::serves;
use kip_providers::nats::config::{Rendered, render};

use crate::apply::{header, ms, row, test_mirror};
use crate::kip::{Harness, Project, open_dir};

const CONFIG: &str = r#"nats "bus" {
  version = "2"
}
"#;

/// Runs the case; `runs` overrides the default of 21.
pub fn run(runs: Option<usize>) {
    let runs = runs.unwrap_or(21);
    let harness = Harness::new(&test_mirror());
    println!(
        "\nnats: the real kip ({}) in temp projects under {}",
        harness.kip.display(),
        harness.root.display()
    );
    // The first apply downloads and unpacks the toolchain into the shared cache.
    let warm = harness.project(CONFIG);
    let first = warm.expect(0, &["apply", "--auto-approve"]);
    println!(
        "  (first apply, downloading and unpacking the toolchain: {})",
        ms(first.elapsed)
    );
    let server = nats_server(&harness.cache.join("store"));
    drop(warm);

    let mut kip = Vec::new();
    let mut before_start = Vec::new();
    let mut start_to_ready = Vec::new();
    let mut after_ready = Vec::new();
    let mut projects: Vec<Project<'_>> = Vec::new();
    for _ in 0..runs {
        let project = harness.project(CONFIG);
        let run = project.expect(0, &["apply", "--auto-approve"]);
        kip.push(run.elapsed);
        before_start.push(run.between(None, Some("nats.bus: starting")));
        start_to_ready.push(run.between(Some("nats.bus: starting"), Some("nats.bus: ready")));
        after_ready.push(run.between(Some("nats.bus: ready"), None));
        projects.push(project);
    }
    drop(projects);

    let scratch = harness.root.join("bare");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut bare = Vec::new();
    for index in 0..runs {
        let dir = scratch.join(index.to_string());
        open_dir(&dir);
        bare.push(bare_start(&runtime, &server, &dir));
    }

    header(&format!(
        "a fresh NATS 2 with JetStream to ready: kip apply vs the bare nats-server ({runs} runs each)"
    ));
    row("kip apply --auto-approve, spawn to exit (ready)", &kip);
    row(
        "  process start, config check, plan, supervisor, resolve, provision",
        &before_start,
    );
    row(
        "  nats-server start, TCP probe, client with the token, JetStream answer",
        &start_to_ready,
    );
    row("  state write, exit", &after_ready);
    row(
        "bare nats-server -c, spawn to a client and a JetStream answer",
        &bare,
    );
    let median = |times: &[Duration]| {
        let mut sorted = times.to_vec();
        sorted.sort();
        sorted[sorted.len() / 2]
    };
    println!(
        "  ratio of the medians: {:.2}× (target: 1.2×)",
        median(&kip).as_secs_f64() / median(&bare).as_secs_f64()
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
    let mut child = Command::new(server)
        .arg("-c")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts");
    let elapsed = loop {
        if runtime.block_on(serves(port, token)) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nats-server did not answer on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_micros(500));
    };
    let _ = child.kill();
    let _ = child.wait();
    elapsed
}
