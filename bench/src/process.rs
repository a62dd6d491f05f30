//! A `process` block from start to ready (issue 10: "a process's start to ready within 10 ms of the bare command
//! plus its own probe"), measured with the real release `kip` binary.
//!
//! The program is a TCP listener on a free loopback port, in two kinds: a small Python script (a program as users
//! write them, whose own start varies by tens of milliseconds from run to run), and this benchmark's own binary as
//! `kip-bench listen PORT` (a native listener that is up within a millisecond or two, so that the difference below is
//! kip's and not the interpreter's spread). Two numbers per run:
//!
//! - **kip**: `kip apply --auto-approve` of a project holding only that `process`, with `ready { tcp = … }` checked
//!   every 10 ms, from the `process.svc: starting` step line to the `process.svc: ready` line on stderr: the start
//!   request to the supervisor, the spawn, the probe, and the reply.
//! - **bare**: the same command spawned by the benchmark itself, probed the same way (a TCP connect every 10 ms),
//!   from spawn to the first accepted connection.
//!
//! The difference of the medians is kip's overhead on a process's start, which the target bounds at 10 ms.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::kip::Harness;

/// The probe interval, for kip and for the bare run alike.
const INTERVAL: Duration = Duration::from_millis(10);

const LISTENER: &str = "import socket, sys\n\
s = socket.socket()\n\
s.bind(('127.0.0.1', int(sys.argv[1])))\n\
s.listen()\n\
while True:\n    s.accept()[0].close()\n";

/// The Python interpreter itself, not a launcher script in front of it (pyenv's shims take ~200 ms), so that
/// both sides time the program rather than the launcher.
fn python() -> String {
    let output = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    String::from_utf8(output.stdout)
        .expect("a UTF-8 path")
        .trim()
        .to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The command of a listener on `port`.
fn listener(kind: Listener, port: u16) -> Vec<String> {
    match kind {
        Listener::Python(python) => vec![
            python.to_owned(),
            "-c".to_owned(),
            LISTENER.to_owned(),
            port.to_string(),
        ],
        Listener::Native(bench) => vec![bench.to_owned(), "listen".to_owned(), port.to_string()],
    }
}

/// Which listener a case runs.
#[derive(Clone, Copy)]
enum Listener<'a> {
    Python(&'a str),
    Native(&'a str),
}

/// `kip-bench listen PORT`: accepts connections on the loopback `port` until killed.
pub fn listen(port: &str) {
    let port: u16 = port.parse().expect("listen PORT");
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    for stream in listener.incoming() {
        drop(stream);
    }
}

/// Spawns the listener on `port` and connects every [`INTERVAL`] until it accepts: spawn to accepted.
fn bare_start(kind: Listener, port: u16) -> Duration {
    let command = listener(kind, port);
    let started = Instant::now();
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the listener starts");
    let deadline = started + Duration::from_secs(20);
    let ready = loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the bare listener never accepted"
        );
        std::thread::sleep(INTERVAL);
    };
    let _ = child.kill();
    let _ = child.wait();
    ready
}

/// The project: an `anchor` process that keeps the project's supervisor running (as on a developer's machine, where
/// it runs from the first apply on), plus the measured `svc` listening on `port` when there is one.
fn config(kind: Listener, port: Option<u16>) -> String {
    let mut config = "process \"anchor\" {\n  command = [\"sleep\", \"3600\"]\n}\n".to_owned();
    if let Some(port) = port {
        let command: Vec<String> = listener(kind, port)
            .iter()
            .map(|arg| format!("{arg:?}"))
            .collect();
        config.push_str(&format!(
            r#"
process "svc" {{
  command = [{command}]
  ready {{
    tcp      = "127.0.0.1:{port}"
    interval = "10ms"
  }}
}}
"#,
            command = command.join(", "),
        ));
    }
    config
}

/// The supervisor's own measure of the last start of `svc` (spawn to probe passed), from its log at `KIP_LOG=info`:
/// `ready after N ms name=process.svc`.
fn supervisor_ready_after(log: &str) -> Option<Duration> {
    log.lines()
        .rev()
        .filter(|line| line.contains("name=process.svc"))
        .find_map(|line| {
            let after = line.split("ready after ").nth(1)?;
            let millis: u64 = after.split_whitespace().next()?.parse().ok()?;
            Some(Duration::from_millis(millis))
        })
}

/// Runs each case `runs` times (default 21), alternating kip and bare runs so both see the machine alike. One project
/// per case: each run adds `svc` (on a new port) to it and removes it again.
pub fn run(harness: &Harness, runs: usize) {
    let python = python();
    let bench = std::env::current_exe().expect("the benchmark's own path");
    let bench = bench.to_str().expect("a UTF-8 path");
    for (title, kind) in [
        ("a Python TCP listener", Listener::Python(&python)),
        (
            "a native TCP listener (`kip-bench listen`)",
            Listener::Native(bench),
        ),
    ] {
        case(harness, runs, title, kind);
    }
}

fn case(harness: &Harness, runs: usize, title: &str, kind: Listener) {
    crate::apply::header(&format!(
        "process start to ready: {title} probed every 10 ms ({runs} runs each)"
    ));
    let project = harness.project(&config(kind, None)).with_log("info");
    project.expect(0, &["apply", "--auto-approve"]);
    // A first start warms the page cache for the program.
    bare_start(kind, free_port());
    let mut kip_times = Vec::new();
    let mut supervisor_times = Vec::new();
    let mut bare_times = Vec::new();
    for _ in 0..runs {
        bare_times.push(bare_start(kind, free_port()));
        project.write_config(&config(kind, Some(free_port())));
        let run = project.expect(0, &["apply", "--auto-approve"]);
        kip_times.push(run.between(Some("process.svc: starting"), Some("process.svc: ready")));
        if let Some(after) = supervisor_ready_after(&project.supervisor_log()) {
            supervisor_times.push(after);
        }
        project.write_config(&config(kind, None));
        project.expect(0, &["apply", "--auto-approve"]);
    }
    crate::apply::row("kip apply: `process.svc: starting` to `ready`", &kip_times);
    if !supervisor_times.is_empty() {
        crate::apply::row(
            "  of which the supervisor: spawn to probe passed (its log, whole ms)",
            &supervisor_times,
        );
    }
    crate::apply::row("bare: spawn to the first accepted connection", &bare_times);
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let overhead = median(&mut kip_times).as_secs_f64() - median(&mut bare_times).as_secs_f64();
    println!(
        "  kip's overhead (difference of the medians): {:.1} ms (target: at most 10 ms)",
        overhead * 1e3
    );
}
