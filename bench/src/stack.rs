//! The example stacks in one `kip apply --auto-approve` each, with the real release `kip` in fresh projects and the
//! shared cache warm (toolchains and templates), alternating the default walk (independent instances in parallel)
//! with `--parallelism 1` (the same steps one at a time):
//!
//! - the quickstart (examples/quickstart: PostgreSQL, Valkey, a migration job and a web server that uses both;
//!   issue 10: "the four-block stack's apply time, and how much the parallel walk saves");
//! - all six engines (examples/all-engines: PostgreSQL, Valkey, MariaDB, NATS, S3 and an app that uses all five;
//!   issue 11: "the six-engine stack's apply time").

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use crate::kip::Harness;

/// An example stack: its directory under examples/, its files besides kip.hcl (executable or not), and the
/// variable that takes the port of its web process.
struct Example {
    dir: &'static str,
    title: &'static str,
    files: &'static [(&'static str, bool)],
    port_variable: &'static str,
}

const QUICKSTART: Example = Example {
    dir: "quickstart",
    title: "the quickstart stack (postgres, valkey, a migration job, a web server)",
    files: &[("web.py", false), ("migrate.sh", true)],
    port_variable: "web_port",
};

const ALL_ENGINES: Example = Example {
    dir: "all-engines",
    title: "all six engines (postgres, valkey, mariadb, nats, s3, an app using all five)",
    files: &[("app.py", false)],
    port_variable: "app_port",
};

fn example(dir: &str, name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(dir)
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// One apply of the stack in a new project, destroyed afterwards (outside the timing).
fn apply_once(harness: &Harness, stack: &Example, parallelism: Option<&str>) -> Duration {
    applied(harness, stack, parallelism).1
}

/// The stack applied in a new project (destroyed when dropped), and how long the apply took.
fn applied<'h>(
    harness: &'h Harness,
    stack: &Example,
    parallelism: Option<&str>,
) -> (crate::kip::Project<'h>, Duration) {
    let project = harness.project(&example(stack.dir, "kip.hcl"));
    for (name, executable) in stack.files {
        let path = project.dir.join(name);
        std::fs::write(&path, example(stack.dir, name)).expect("example file written");
        if *executable {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
    let var = format!("{}={}", stack.port_variable, free_port());
    let mut args = vec!["apply", "--auto-approve", "--var", &var];
    if let Some(parallelism) = parallelism {
        args.extend(["--parallelism", parallelism]);
    }
    let elapsed = project.expect(0, &args).elapsed;
    (project, elapsed)
}

pub fn run(harness: &Harness, runs: usize) {
    for stack in [&QUICKSTART, &ALL_ENGINES] {
        run_stack(harness, stack, runs);
    }
    supervisor_memory(harness);
}

/// The supervisor's resident memory once it has idled with all six engines up (issue 12: ≤ 10 MB), from
/// `/proc/PID/status`: VmRSS, and its parts RssAnon (its own heap and stacks) and RssFile (pages of its binary
/// and libraries, shared through the page cache).
fn supervisor_memory(harness: &Harness) {
    const IDLE: Duration = Duration::from_secs(10);
    let (project, _) = applied(harness, &ALL_ENGINES, None);
    std::thread::sleep(IDLE);
    let pid = std::fs::read_to_string(project.dir.join(".kip/supervisor.pid"))
        .expect("the supervisor's pid file");
    let pid = pid.trim();
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the supervisor runs");
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let program = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|path| path.display().to_string())
        .unwrap_or_default();
    let mib = |kib: u64| kib as f64 / 1024.0;
    crate::report::note(&format!(
        "supervisor idle RSS with six engines ({}, after {} s idle): {:.1} MiB (RssAnon {:.1} MiB, RssFile {:.1} MiB); target ≤ 10 MB",
        program,
        IDLE.as_secs(),
        mib(field("VmRSS:")),
        mib(field("RssAnon:")),
        mib(field("RssFile:"))
    ));
}

fn run_stack(harness: &Harness, stack: &Example, runs: usize) {
    crate::apply::header(&format!("{} in one apply ({runs} runs each)", stack.title));
    // The first apply fills the cache (toolchains, templates); it is not counted.
    let first = apply_once(harness, stack, None);
    println!(
        "  (first apply, downloading the toolchains and building the template: {} ms)",
        first.as_millis()
    );
    let mut parallel = Vec::new();
    let mut serial = Vec::new();
    for _ in 0..runs {
        parallel.push(apply_once(harness, stack, None));
        serial.push(apply_once(harness, stack, Some("1")));
    }
    crate::apply::row(
        "kip apply --auto-approve (independent instances in parallel)",
        &parallel,
    );
    crate::apply::row(
        "kip apply --auto-approve --parallelism 1 (one at a time)",
        &serial,
    );
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let saved = median(&mut serial).as_secs_f64() - median(&mut parallel).as_secs_f64();
    println!(
        "  the parallel walk saves {:.0} ms (difference of the medians)",
        saved * 1e3
    );
}
