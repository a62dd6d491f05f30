//! MariaDB (issue 11): `kip apply` of a fresh MariaDB instance, its template already built, to ready, against the
//! bare `mariadbd` started by the benchmark on a copy of the same template until a client logs in. The target is
//! 400 ms from the template.
//!
//! Both sides run the same build (the toolchain kip unpacked into the shared cache) on the same kind of data
//! directory (kip's template: 8 MiB redo log, `root` with a password) with the same kind of configuration (unix
//! socket only). kip's side is the real release binary in a new project per run, from spawn to exit: config
//! check, plan, supervisor, copying the template, the server's start, the real login of the ready step, root's
//! own password set, the state write. The bare side is spawn to the first successful login over the socket with
//! `mysql_async` (kip's own connector, polled every 0.5 ms); its copy of the template is made before the clock
//! starts and timed apart. The server is stopped after each run.
//!
//! For the table of kip against each engine's own start ([`crate::floor`]), the cold path too: kip's apply with an
//! empty templates dir against `mariadb-install-db`, `mariadbd` and a login by hand.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::apply::{header, ms, row, test_mirror};
use crate::floor;
use crate::kip::{Harness, Project, open_dir};

const CONFIG: &str = r#"mariadb "main" {
  version = "10.11"
}
"#;

/// Runs the case; `runs` overrides the default of 11.
pub fn run(runs: Option<usize>) {
    let runs = runs.unwrap_or(11);
    let harness = Harness::new(&test_mirror());
    println!(
        "\nmariadb: the real kip ({}) in temp projects under {}",
        harness.kip.display(),
        harness.root.display()
    );
    // The first apply downloads and unpacks the toolchain and builds the template.
    let warm = harness.project(CONFIG);
    let first = warm.expect(0, &["apply", "--auto-approve"]);
    println!(
        "  (first apply, downloading the toolchain and building the template: {})",
        ms(first.elapsed)
    );
    drop(warm);
    let toolchain = toolchain(&harness.cache.join("store"));
    let template = template(&harness.cache.join("templates"));

    let mut kip = Vec::new();
    let mut before_start = Vec::new();
    let mut start_to_ready = Vec::new();
    let mut after_ready = Vec::new();
    let mut projects: Vec<Project<'_>> = Vec::new();
    for _ in 0..runs {
        let project = harness.project(CONFIG);
        let run = project.expect(0, &["apply", "--auto-approve"]);
        kip.push(run.elapsed);
        before_start.push(run.between(None, Some("mariadb.main: starting")));
        start_to_ready
            .push(run.between(Some("mariadb.main: starting"), Some("mariadb.main: ready")));
        after_ready.push(run.between(Some("mariadb.main: ready"), None));
        projects.push(project);
    }
    drop(projects);

    let scratch = harness.root.join("bare");
    let password =
        kip_providers::template::bootstrap_password(&template).expect("the bootstrap password");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut copies = Vec::new();
    let mut bare = Vec::new();
    for index in 0..runs {
        let dir = scratch.join(index.to_string());
        open_dir(&dir);
        let data = dir.join("data");
        let started = Instant::now();
        kip_providers::template::copy_tree(&template, &data, None, &|name| {
            name == kip_providers::template::BOOTSTRAP_FILE
        })
        .expect("a copy of the template");
        copies.push(started.elapsed());
        bare.push(bare_start(&runtime, &toolchain, &data, &dir, &password));
    }

    header(&format!(
        "a fresh MariaDB 10.11 to ready, from its template: kip apply vs the bare mariadbd ({runs} runs each)"
    ));
    row("kip apply --auto-approve, spawn to exit (ready)", &kip);
    row(
        "  process start, config check, plan, supervisor, resolve, copy of the template",
        &before_start,
    );
    row(
        "  mariadbd start, socket probe, real login",
        &start_to_ready,
    );
    row("  root's own password, state write, exit", &after_ready);
    row("bare: copy of the template (not in its start)", &copies);
    row("bare mariadbd on a unix socket, spawn to a login", &bare);
    println!(
        "  kip's median: {} (target: 400 ms from the template); ratio to the bare start: {:.2}×",
        ms(floor::median(&kip)),
        floor::median(&kip).as_secs_f64() / floor::median(&bare).as_secs_f64()
    );
    floor::against_floor(
        "MariaDB",
        &kip,
        &bare,
        "≤ 400 ms from its template (issue 11)",
    );

    cold_paths(&harness, &runtime, &toolchain, runs.min(5), &kip);
}

/// The cold path, `runs` times each, alternating: kip's (`kip apply` with an empty templates dir, so kip runs
/// `mariadb-install-db` and closes the template before the copy and the start) and the bare one by hand
/// (`mariadb-install-db` with kip's flags into a fresh data dir, then `mariadbd`, then root's login, which has no
/// password yet), each timed whole. `kip` is kip's apply from its template, for the table.
fn cold_paths(
    harness: &Harness,
    runtime: &tokio::runtime::Runtime,
    toolchain: &Path,
    runs: usize,
    kip: &[Duration],
) {
    let scratch = harness.root.join("cold");
    let mut kip_cold = Vec::new();
    let mut install = Vec::new();
    let mut bare_cold = Vec::new();
    for index in 0..runs {
        // A fresh cache whose store is the shared one (the toolchain stays cached): the templates dir is empty.
        let cache = harness.root.join(format!("cache-cold-{index}"));
        open_dir(&cache);
        std::os::unix::fs::symlink(harness.cache.join("store"), cache.join("store"))
            .expect("link the shared store");
        floor::settle();
        let project = harness.project(CONFIG).with_cache(cache.clone());
        kip_cold.push(project.expect(0, &["apply", "--auto-approve"]).elapsed);
        drop(project);
        let _ = std::fs::remove_dir_all(&cache);

        let dir = scratch.join(index.to_string());
        open_dir(&dir);
        let data = dir.join("data");
        floor::settle();
        let started = Instant::now();
        let output = Command::new(toolchain.join("bin/mariadb-install-db"))
            .arg("--no-defaults")
            .arg(format!("--basedir={}", toolchain.display()))
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-log-file-size=8M",
                "--user=root",
            ])
            .current_dir(toolchain)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .output()
            .expect("mariadb-install-db runs");
        assert!(
            output.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        install.push(started.elapsed());
        bare_cold.push(bare_start_from(
            runtime, toolchain, &data, &dir, "", started,
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
    header(&format!(
        "MariaDB 10.11's cold path: kip apply with an empty templates dir vs mariadb-install-db + mariadbd by hand ({runs} runs each)"
    ));
    row(
        "kip apply --auto-approve, empty templates dir (install-db, close, copy, start)",
        &kip_cold,
    );
    row(
        "bare mariadb-install-db + mariadbd, spawn to root's login",
        &bare_cold,
    );
    row("  of which mariadb-install-db", &install);
    let cold_label = "bare cold path: mariadb-install-db + start";
    floor::against_cold_path(
        "MariaDB: fresh instance, kip apply to ready and converged",
        kip,
        cold_label,
        &bare_cold,
    );
    floor::against_cold_path(
        "MariaDB: kip's cold path (empty templates dir: mariadb-install-db), kip apply to ready",
        &kip_cold,
        cold_label,
        &bare_cold,
    );
}

/// The MariaDB toolchain kip unpacked into the store.
fn toolchain(store: &Path) -> PathBuf {
    std::fs::read_dir(store)
        .expect("the toolchain store")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.join("bin/mariadbd").is_file())
        .expect("a mariadbd in the store")
}

/// The template kip built.
fn template(templates: &Path) -> PathBuf {
    std::fs::read_dir(templates)
        .expect("the templates")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("mariadb-"))
        })
        .expect("a MariaDB template")
}

/// Starts `mariadbd` on `data` with a unix socket in `dir` and times it to the first login; stops it.
fn bare_start(
    runtime: &tokio::runtime::Runtime,
    toolchain: &Path,
    data: &Path,
    dir: &Path,
    password: &str,
) -> Duration {
    bare_start_from(runtime, toolchain, data, dir, password, Instant::now())
}

/// [`bare_start`], timed from `started` (before an install, for the cold path) to the first login.
fn bare_start_from(
    runtime: &tokio::runtime::Runtime,
    toolchain: &Path,
    data: &Path,
    dir: &Path,
    password: &str,
    started: Instant,
) -> Duration {
    let socket = dir.join("mariadb.sock");
    let child = Command::new(toolchain.join("bin/mariadbd"))
        .arg("--no-defaults")
        .arg(format!("--basedir={}", toolchain.display()))
        .arg(format!("--datadir={}", data.display()))
        .arg(format!(
            "--lc-messages-dir={}",
            toolchain.join("share/mysql").display()
        ))
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--pid-file={}", dir.join("mariadb.pid").display()))
        .args([
            "--skip-networking",
            "--innodb-log-file-size=8M",
            "--user=root",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mariadbd starts");
    // Killed as before (the copy is thrown away); the guard also stops it when an assertion fails.
    let _server = floor::BareServer::new(child, "KILL");
    let connector =
        kip_providers::mariadb::client::Connector::new(&socket, vec![password.to_owned()]);
    loop {
        if runtime.block_on(connector.working_password()).is_ok() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "mariadbd did not take a login on {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_micros(500));
    }
}
