//! Every engine against its own floor and its cold path (kip issue 12): one table, "kip against each engine's own
//! start", to which each engine's benchmark adds its rows, and PostgreSQL's bare starts, which no other benchmark
//! has.
//!
//! The floor is the engine's own server started by hand on a data directory prepared before the clock starts,
//! timed from spawn to the first thing a client can do with it (a query, a login, a `PING`). The cold path is what
//! a developer does by hand without a template: the engine's init tool, then the start, then a first query. kip's
//! side is always the real release binary, timed from spawn to exit, so that these rows do not depend on how kip
//! provisions an instance inside.
//!
//! PostgreSQL refuses to run as root, so its bare starts run as the account kip itself picked for the project's
//! instance (read from the project's state after an apply; none when kip runs engines as the benchmark's own
//! user); nothing new is created.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kip_core::engine::RunAs;

use crate::kip::open_dir;
use crate::report::{Ratio, Stats, compare, note};

/// The comparison table every engine's rows go to.
pub const TABLE: &str = "kip against each engine's own start";

/// The other side of a floor row.
pub const FLOOR: &str = "bare start on a prepared data dir";

/// The median of some runs.
pub fn median(times: &[Duration]) -> Duration {
    Stats::of(times).median
}

/// "<engine>: fresh instance, kip apply to ready and converged" against the engine's own start.
pub fn against_floor(engine: &str, kip: &[Duration], floor: &[Duration], target: &str) {
    against_floor_as(
        &format!("{engine}: fresh instance, kip apply to ready and converged"),
        kip,
        floor,
        target,
    );
}

/// A floor row with its own wording of what kip did.
pub fn against_floor_as(measure: &str, kip: &[Duration], floor: &[Duration], target: &str) {
    compare(
        TABLE,
        measure,
        median(kip),
        (FLOOR, median(floor)),
        Ratio::OfFloor,
        target,
    );
}

/// kip's `measure` against the engine's cold path by hand (`cold_label`: "bare cold path: initdb + start").
pub fn against_cold_path(measure: &str, kip: &[Duration], cold_label: &str, cold: &[Duration]) {
    compare(
        TABLE,
        measure,
        median(kip),
        (cold_label, median(cold)),
        Ratio::Times,
        "reported",
    );
}

/// The note for an engine that has nothing to initialise: its cold path is its start.
pub fn no_init_step(engine: &str, what_it_needs: &str) {
    note(&format!(
        "{engine} has no init step ({what_it_needs}): its cold path is its floor, so it has no cold-path row"
    ));
}

/// Flushes what the previous step left to write back (a destroyed instance's deleted data dir, a copy), untimed,
/// so that each side of a comparison starts with no writeback of the other's pending.
pub fn settle() {
    let _ = Command::new("sync")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits (untimed, up to 30 s) until no `kip prepare-spare` or `kip prepare-account` runs, then [`settle`]s: the
/// spare a provisioning asks for is copied in the background right after the apply (and, as root, the next new
/// project's account made: a `useradd` that fsyncs the account files a dozen times), and a step timed during that
/// work measures the machine's two cores and disk shared with it, not kip. The steps of the Terraform comparison
/// start from a quiet machine on both sides.
pub fn quiet() {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while preparing() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    settle();
}

/// Whether a `kip prepare-spare` or `kip prepare-account` process runs (its command line, from /proc).
fn preparing() -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| {
            cmdline
                .split(|byte| *byte == 0)
                .any(|arg| arg == b"prepare-spare" || arg == b"prepare-account")
        })
    })
}

/// A bare server the benchmark started: stopped with `signal` (then killed if it lingers) when dropped, so that
/// a failed assertion leaves no server behind.
pub struct BareServer {
    child: Child,
    signal: &'static str,
}

impl BareServer {
    pub fn new(child: Child, signal: &'static str) -> BareServer {
        BareServer { child, signal }
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        // kip-bench has no signal crate of its own: the system's `kill` sends anything but SIGKILL.
        let signalled = Command::new("kill")
            .args(["-s", self.signal, &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if signalled {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The PostgreSQL toolchain kip unpacked into `store` (the one with `bin/initdb`).
pub fn postgres_toolchain(store: &Path) -> PathBuf {
    std::fs::read_dir(store)
        .expect("the toolchain store")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.join("bin/initdb").is_file() && path.join("bin/postgres").is_file())
        .expect("a PostgreSQL toolchain in the store")
}

/// How a PostgreSQL floor run went: the copy made before the clock started, and spawn to a first query.
pub struct PostgresFloor {
    pub copy: Duration,
    pub start: Duration,
}

/// PostgreSQL's floor: a copy of kip's `template` in `dir` (made, owned by `run_as`, and given kip's default
/// `pg_hba.conf`, and flushed, before the clock starts), then `postgres -D <copy> -k <dir>/run -c listen_addresses=''` as
/// `run_as`, timed from spawn until `SELECT 1` answers as the superuser with the template's bootstrap password
/// (what kip's own ready step logs in with). The server gets an immediate shutdown and the copy is removed.
pub fn postgres_floor(
    runtime: &tokio::runtime::Runtime,
    toolchain: &Path,
    template: &Path,
    dir: &Path,
    run_as: Option<&RunAs>,
) -> PostgresFloor {
    open_dir(dir);
    let data = dir.join("data");
    let started = Instant::now();
    let skipped = |name: &std::ffi::OsStr| {
        name == kip_providers::template::BOOTSTRAP_FILE
            || name == "postmaster.pid"
            || name == "postmaster.opts"
    };
    kip_providers::template::copy_tree(
        template,
        &data,
        run_as.map(|run_as| (run_as.uid, run_as.gid)),
        &skipped,
    )
    .expect("a copy of the template");
    set_mode(&data, 0o700);
    kip_providers::postgres::write_hba(
        &data,
        kip_providers::postgres::AuthMethod::ScramSha256,
        run_as,
    )
    .expect("kip's pg_hba.conf");
    let copy = started.elapsed();
    settle();
    let password =
        kip_providers::postgres::bootstrap_password(template).expect("the bootstrap password");
    let start = start_to_query(
        runtime,
        toolchain,
        &data,
        dir,
        run_as,
        &password,
        Instant::now(),
    );
    let _ = std::fs::remove_dir_all(dir);
    PostgresFloor { copy, start }
}

/// PostgreSQL's cold path by hand, all timed: `initdb` into a fresh `<dir>/data` as `run_as` (kip's template
/// flags: superuser `postgres`, UTF8, locale C, `--no-sync`; password authentication with a password file made
/// before the clock starts), then the same start and first query as the floor.
pub fn postgres_cold_path(
    runtime: &tokio::runtime::Runtime,
    toolchain: &Path,
    dir: &Path,
    run_as: Option<&RunAs>,
) -> Duration {
    open_dir(dir);
    let data = dir.join("data");
    let password = "bench-cold-path-password";
    let password_file = dir.join("password");
    std::fs::write(&password_file, password).expect("the password file");
    chown(&password_file, run_as);
    // initdb creates the data dir itself; its parent must be the account's to write in.
    chown(dir, run_as);
    let started = Instant::now();
    let mut initdb = Command::new(toolchain.join("bin/initdb"));
    as_account(&mut initdb, run_as);
    let output = initdb
        .arg("-D")
        .arg(&data)
        .args([
            "--username=postgres",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ])
        .arg(format!("--pwfile={}", password_file.display()))
        .current_dir(dir)
        .env_clear()
        .envs(kip_providers::postgres::spawn::engine_environment())
        .stdin(Stdio::null())
        .output()
        .expect("initdb runs");
    assert!(
        output.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let elapsed = start_to_query(runtime, toolchain, &data, dir, run_as, password, started);
    let _ = std::fs::remove_dir_all(dir);
    elapsed
}

/// Starts `postgres` on `data` with its socket in `<dir>/run` as `run_as`, and returns the time from `started`
/// until `SELECT 1` answers over the socket (polled every 0.5 ms). The server is stopped before it returns.
fn start_to_query(
    runtime: &tokio::runtime::Runtime,
    toolchain: &Path,
    data: &Path,
    dir: &Path,
    run_as: Option<&RunAs>,
    password: &str,
    started: Instant,
) -> Duration {
    let socket_dir = dir.join("run");
    if !socket_dir.is_dir() {
        open_dir(&socket_dir);
        chown(&socket_dir, run_as);
    }
    let mut postgres = Command::new(toolchain.join("bin/postgres"));
    as_account(&mut postgres, run_as);
    let child = postgres
        .arg("-D")
        .arg(data)
        .arg("-k")
        .arg(&socket_dir)
        .args(["-c", "listen_addresses="])
        .current_dir(data)
        .env_clear()
        .envs(kip_providers::postgres::spawn::engine_environment())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres starts");
    // SIGQUIT: PostgreSQL's immediate shutdown (the copy is thrown away, nothing needs a checkpoint).
    let _server = BareServer::new(child, "QUIT");
    let mut connector = kip_providers::postgres::Connector::new(&socket_dir, None);
    connector.password = Some(kip_providers::postgres::Password::new(password));
    // The benchmark polls itself, more often than the connector's own retries would.
    connector.startup_timeout = Duration::ZERO;
    loop {
        let answered = runtime.block_on(async {
            match connector.connect("postgres").await {
                Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
                Err(_) => false,
            }
        });
        if answered {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "postgres did not answer on {}",
            socket_dir.display()
        );
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|error| panic!("cannot chmod {}: {error}", path.display()));
}

/// Gives `path` to `run_as`, when kip runs engines as another account.
fn chown(path: &Path, run_as: Option<&RunAs>) {
    if let Some(run_as) = run_as {
        std::os::unix::fs::chown(path, Some(run_as.uid), Some(run_as.gid))
            .unwrap_or_else(|error| panic!("cannot chown {}: {error}", path.display()));
    }
}

/// Runs `command` as `run_as`, when kip runs engines as another account.
fn as_account(command: &mut Command, run_as: Option<&RunAs>) {
    if let Some(run_as) = run_as {
        command.uid(run_as.uid).gid(run_as.gid);
    }
}
