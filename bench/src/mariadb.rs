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

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::apply::{header, ms, row, test_mirror};
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
    let median = |times: &[Duration]| {
        let mut sorted = times.to_vec();
        sorted.sort();
        sorted[sorted.len() / 2]
    };
    println!(
        "  kip's median: {} (target: 400 ms from the template); ratio to the bare start: {:.2}×",
        ms(median(&kip)),
        median(&kip).as_secs_f64() / median(&bare).as_secs_f64()
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
    let socket = dir.join("mariadb.sock");
    let started = Instant::now();
    let mut child = Command::new(toolchain.join("bin/mariadbd"))
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
    let connector =
        kip_providers::mariadb::client::Connector::new(&socket, vec![password.to_owned()]);
    let elapsed = loop {
        if runtime.block_on(connector.working_password()).is_ok() {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "mariadbd did not take a login on {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_micros(500));
    };
    let _ = child.kill();
    let _ = child.wait();
    elapsed
}
