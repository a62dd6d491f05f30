//! The quickstart stack (examples/quickstart: PostgreSQL, Valkey, a migration job and a web server that uses both)
//! in one `kip apply --auto-approve` (issue 10: "the four-block stack's apply time, and how much the parallel walk
//! saves over running the same steps one after another"), with the real release `kip` in fresh projects and the
//! shared cache warm (toolchains and the PostgreSQL template), alternating the default walk (independent instances
//! in parallel) with `--parallelism 1` (the same steps one at a time).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use crate::kip::Harness;

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/quickstart")
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
fn apply_once(harness: &Harness, parallelism: Option<&str>) -> Duration {
    let project = harness.project(&example("kip.hcl"));
    std::fs::write(project.dir.join("web.py"), example("web.py")).expect("web.py written");
    let migrate = project.dir.join("migrate.sh");
    std::fs::write(&migrate, example("migrate.sh")).expect("migrate.sh written");
    std::fs::set_permissions(&migrate, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let var = format!("web_port={}", free_port());
    let mut args = vec!["apply", "--auto-approve", "--var", &var];
    if let Some(parallelism) = parallelism {
        args.extend(["--parallelism", parallelism]);
    }
    project.expect(0, &args).elapsed
}

pub fn run(harness: &Harness, runs: usize) {
    crate::apply::header(&format!(
        "the quickstart stack (postgres, valkey, a migration job, a web server) in one apply ({runs} runs each)"
    ));
    // The first apply fills the cache (toolchains, template); it is not counted.
    let first = apply_once(harness, None);
    println!(
        "  (first apply, downloading the toolchains and building the template: {} ms)",
        first.as_millis()
    );
    let mut parallel = Vec::new();
    let mut serial = Vec::new();
    for _ in 0..runs {
        parallel.push(apply_once(harness, None));
        serial.push(apply_once(harness, Some("1")));
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
