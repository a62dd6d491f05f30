//! S3 (issue 11): `kip apply` of a fresh S3 store to ready, against the bare `weed mini` started by the benchmark
//! with the same flags until a signed write succeeds. The target is "as fast as its own boot allows": the report
//! says what bounds it.
//!
//! Both sides run the same build (the toolchain kip unpacked into the shared cache) with the same command line
//! (kip's own, from `kip_providers::s3::config`: every port assigned, loopback only, the same identity and
//! security files).
//! kip's side is the real release binary in a new project per run, from spawn to exit. The bare side is spawn to
//! the same signed write kip's ready step makes (a bucket created, an object put and read back, both deleted),
//! polled every 5 ms; it also records when the S3 port first accepts a connection and when a bucket can first be
//! created, and reads how long `weed mini` says each of its components took to get ready: where the boot goes.
//! A third side is the bare `weed mini` without mutual TLS (the same `security.toml` up to its TLS sections: JWT
//! keys only), to show what closing the listeners other than the S3 API's costs. kip against the bare `weed mini`
//! with kip's files goes to the table of kip against each engine's own start ([`crate::floor`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kip_core::address::Address;
use kip_core::engine::{InstanceCtx, Secrets};
use kip_providers::s3::args::InstanceArgs;
use kip_providers::s3::client::S3Client;
use kip_providers::s3::config;
use kip_providers::s3::tls::TlsFiles;

use crate::apply::{header, ms, row, test_mirror};
use crate::kip::{Harness, Project, field, open_dir};

const CONFIG: &str = r#"s3 "store" {
  version = "4"
}
"#;

/// Runs the case; `runs` overrides the default of 11.
pub fn run(runs: Option<usize>) {
    let runs = runs.unwrap_or(11);
    let harness = Harness::new(&test_mirror());
    println!(
        "\ns3: the real kip ({}) in temp projects under {}",
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
    let weed = weed_binary(&harness.cache.join("store"));
    drop(warm);

    let mut kip = Vec::new();
    let mut before_start = Vec::new();
    let mut start_to_ready = Vec::new();
    let mut supervisor_probe = Vec::new();
    let mut after_ready = Vec::new();
    let scratch = harness.root.join("bare");
    let mut bare = Vec::new();
    let mut port_open = Vec::new();
    let mut bucket_created = Vec::new();
    let mut components: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut plain = Vec::new();
    let mut plain_bucket_created = Vec::new();
    // kip and bare runs alternate, so both see the machine alike; one store at a time (a store left running would
    // share the two cores with the next one).
    for index in 0..runs {
        let project: Project<'_> = harness.project(CONFIG).with_log("info");
        let run = project.expect(0, &["apply", "--auto-approve"]);
        kip.push(run.elapsed);
        before_start.push(run.between(None, Some("s3.store: starting")));
        start_to_ready.push(run.between(Some("s3.store: starting"), Some("s3.store: ready")));
        after_ready.push(run.between(Some("s3.store: ready"), None));
        // The supervisor inherits KIP_LOG and says how long weed took from spawn to its S3 port accepting.
        if let Some(ready) = project
            .supervisor_log()
            .lines()
            .rev()
            .filter_map(|line| field(line, "ready after "))
            .find_map(|number| number.parse::<u64>().ok())
        {
            supervisor_probe.push(Duration::from_millis(ready));
        }
        drop(project);

        let dir = scratch.join(format!("{index}-plain"));
        open_dir(&dir);
        let timings = bare_start(&weed, &dir, false);
        plain.push(timings.write);
        plain_bucket_created.push(timings.bucket);

        let dir = scratch.join(index.to_string());
        open_dir(&dir);
        let timings = bare_start(&weed, &dir, true);
        bare.push(timings.write);
        port_open.push(timings.port_open);
        bucket_created.push(timings.bucket);
        for (component, took) in timings.components {
            components.entry(component).or_default().push(took);
        }
    }

    header(&format!(
        "a fresh S3 store (SeaweedFS 4, weed mini) to a signed write: kip apply vs the bare weed ({runs} runs each)"
    ));
    row("kip apply --auto-approve, spawn to exit (ready)", &kip);
    row(
        "  process start, config check, plan, supervisor, resolve, provision",
        &before_start,
    );
    row(
        "  weed mini boot, S3 port probe, signed write (ready step)",
        &start_to_ready,
    );
    row(
        "    spawn to the S3 port accepting (the supervisor's count)",
        &supervisor_probe,
    );
    row("  state write, exit", &after_ready);
    row(
        "bare weed mini, spawn to a signed write (same probe)",
        &bare,
    );
    row("  spawn to the S3 port accepting connections", &port_open);
    row(
        "  spawn to the first CreateBucket that succeeds",
        &bucket_created,
    );
    for (component, times) in &components {
        row(
            &format!("  weed's own count: {component} ready after"),
            times,
        );
    }
    row(
        "bare weed mini without mutual TLS (JWT keys only), to a signed write",
        &plain,
    );
    row(
        "  spawn to the first CreateBucket that succeeds",
        &plain_bucket_created,
    );
    let median = |times: &[Duration]| {
        let mut sorted = times.to_vec();
        sorted.sort();
        sorted[sorted.len() / 2]
    };
    println!(
        "  ratio of the medians: {:.2}× (target: as fast as its own boot allows)",
        median(&kip).as_secs_f64() / median(&bare).as_secs_f64()
    );
    crate::floor::against_floor(
        "SeaweedFS (S3)",
        &kip,
        &bare,
        "as fast as its own boot allows",
    );
    crate::floor::no_init_step(
        "SeaweedFS (weed mini)",
        "it creates its master, volume and filer stores on first start; kip writes only its identity and security files",
    );
    println!(
        "  mutual TLS on the listeners other than the S3 API's: {:+.0} ms on the bare boot's median",
        (median(&bare).as_secs_f64() - median(&plain).as_secs_f64()) * 1000.0
    );
}

/// The `weed` kip unpacked into the store.
fn weed_binary(store: &Path) -> PathBuf {
    std::fs::read_dir(store)
        .expect("the toolchain store")
        .flatten()
        .map(|entry| entry.path().join("bin/weed"))
        .find(|path| path.is_file())
        .expect("a weed in the store")
}

/// What one bare start took.
struct BareTimings {
    port_open: Duration,
    bucket: Duration,
    write: Duration,
    /// `weed mini`'s own "<Component> ready <seconds>s" lines.
    components: Vec<(String, Duration)>,
}

/// The instance context kip's provider builds its command line from, for a store in `dir`.
fn bare_ctx(dir: &Path) -> (InstanceCtx, InstanceArgs) {
    let args = InstanceArgs {
        version: None,
        major: None,
        run_as: None,
        port: None,
        access_key: Some("bench".to_owned()),
        secret_key: Some("bench-secret".to_owned()),
        region: "us-east-1".to_owned(),
    };
    let mut ctx = InstanceCtx {
        address: Address::instance("s3", "bench", None),
        attributes: Default::default(),
        objects: Default::default(),
        toolchain: None,
        data_dir: dir.join("data"),
        run_dir: dir.join("run"),
        log_dir: dir.to_path_buf(),
        project_dir: dir.to_path_buf(),
        templates: dir.to_path_buf(),
        run_as: None,
        secrets: Secrets::default(),
        ports: Default::default(),
        initialized: false,
        provision_unfinished: false,
        session: Default::default(),
    };
    config::assign_ports(&mut ctx, &args).expect("free loopback ports");
    (ctx, args)
}

/// Starts `weed mini` in `dir` with kip's command line and times it to a signed write; stops it. `tls`: kip's
/// `security.toml` as it is (with a new CA and certificate, made before the clock starts), else only its JWT keys.
fn bare_start(weed: &Path, dir: &Path, tls: bool) -> BareTimings {
    let (ctx, args) = bare_ctx(dir);
    for sub in [&ctx.data_dir, &ctx.run_dir] {
        open_dir(sub);
    }
    let files = TlsFiles::in_dir(&ctx.data_dir);
    let mut security = config::security("bench", &files);
    if tls {
        files.ensure(None).expect("the instance's certificates");
    } else if let Some(at) = security.find("\n[grpc]") {
        security.truncate(at + 1);
    }
    for (name, contents) in [
        (
            config::IDENTITY_FILE,
            config::identity("bench", "bench-secret"),
        ),
        (config::SECURITY_FILE, security),
    ] {
        std::fs::write(ctx.data_dir.join(name), contents).expect("weed's configuration");
    }
    let port = config::s3_port(&ctx, &args).expect("an S3 port");
    let line = config::command_line(&ctx, &args).expect("kip's command line");
    let log = dir.join("weed.log");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let client = S3Client::new(
        &format!("http://127.0.0.1:{port}"),
        "us-east-1",
        "bench",
        "bench-secret",
    )
    .expect("an S3 client");

    let started = Instant::now();
    let mut child = Command::new(weed)
        .args(&line)
        .current_dir(&ctx.data_dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &ctx.data_dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("the log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("weed starts");
    let deadline = Duration::from_secs(60);
    let poll = Duration::from_millis(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < deadline,
            "weed never listened on {port}"
        );
        std::thread::sleep(poll);
    }
    let port_open = started.elapsed();
    while runtime
        .block_on(client.create_bucket("bench-probe", false))
        .is_err()
    {
        assert!(started.elapsed() < deadline, "no bucket could be created");
        std::thread::sleep(poll);
    }
    let bucket = started.elapsed();
    while runtime
        .block_on(client.put_object("bench-probe", "probe", "kip"))
        .is_err()
    {
        assert!(started.elapsed() < deadline, "no object could be written");
        std::thread::sleep(poll);
    }
    while runtime
        .block_on(client.get_object("bench-probe", "probe"))
        .map_or(true, |body| body != "kip")
    {
        assert!(
            started.elapsed() < deadline,
            "the object could not be read back"
        );
        std::thread::sleep(poll);
    }
    let write = async {
        client.delete_object("bench-probe", "probe").await?;
        client.delete_bucket("bench-probe").await
    };
    runtime.block_on(write).expect("the probe's clean-up");
    let write = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    for socket in config::grpc_sockets(&ctx.ports) {
        let _ = std::fs::remove_file(socket);
    }
    let components = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(component_ready)
        .collect();
    BareTimings {
        port_open,
        bucket,
        write,
        components,
    }
}

/// `  Master       ready     0.2s` → ("Master", 200 ms).
fn component_ready(line: &str) -> Option<(String, Duration)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [component, "ready", seconds] => {
            let seconds: f64 = seconds.strip_suffix('s')?.parse().ok()?;
            Some(((*component).to_owned(), Duration::from_secs_f64(seconds)))
        }
        _ => None,
    }
}
