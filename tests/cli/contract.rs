//! The engine contract end to end, with real PostgreSQL from the test mirror, each test playing a fault or an
//! attacker: a supervisor SIGKILLed while engines run and in the middle of an apply, labels full of dots, quotes,
//! unicode and shell metacharacters, a forced replacement, a saved plan applied as saved, and every argument of the
//! postgres schema checked with SQL on the server it reached.
//!
//! Processes are checked from `/proc`, not only from what kip says: a postmaster is a process whose argv is
//! `…/postgres -D DATA_DIR`. A [`Contract`] destroys the project when dropped, then stops any postgres or
//! supervisor of this project that kip left behind (so a bug that orphans a process does not outlive its test).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::apply::Stack;
use crate::support::{Run, alive, all_pids, cmdline, free_port, sigkill, signal, wait_gone};

/// A [`Stack`] whose drop also stops what kip itself failed to stop.
struct Contract {
    stack: Stack,
}

impl std::ops::Deref for Contract {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl Drop for Contract {
    fn drop(&mut self) {
        let _ = self.stack.kip(&["destroy", "--auto-approve"]);
        stop_leftovers(self.stack.project.path());
    }
}

impl Contract {
    fn new(config: &str) -> Contract {
        Contract {
            stack: Stack::new(config),
        }
    }

    fn root(&self) -> &Path {
        self.stack.project.path()
    }

    /// The state file, parsed.
    fn state(&self) -> serde_json::Value {
        serde_json::from_str(&self.stack.project.read(".kip/state.json")).unwrap()
    }

    /// The data directory the state records for `instance`.
    fn data_dir(&self, instance: &str) -> PathBuf {
        let state = self.state();
        let dir = state["instances"][instance]["data_dir"]
            .as_str()
            .unwrap_or_else(|| panic!("{instance} has a data_dir in the state\n{state:#}"));
        PathBuf::from(dir)
    }

    /// `kip ps --json`.
    fn ps(&self) -> Vec<serde_json::Value> {
        let run = self.stack.ok(&["ps", "--json"]);
        serde_json::from_str::<serde_json::Value>(&run.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// The pid `kip ps` shows for `instance`, with its state ready.
    fn ready_pid(&self, instance: &str) -> u32 {
        let processes = self.ps();
        let process = processes
            .iter()
            .find(|p| p["instance"] == instance)
            .unwrap_or_else(|| panic!("kip ps lists {instance}\n{processes:#?}"));
        assert_eq!(process["state"]["kind"], "ready", "{process:#}");
        process["pid"].as_u64().unwrap() as u32
    }

    /// The running supervisor's pid, from `.kip/supervisor.pid`, once the file names a live process.
    fn supervisor_pid(&self) -> u32 {
        let path = self.root().join(".kip/supervisor.pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Ok(pid) = text.trim().parse::<u32>()
                && alive(pid)
                && cmdline(pid).iter().any(|arg| arg == "supervisor")
            {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no live supervisor is named by {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILLs the project's supervisor and waits until it is gone.
    fn kill_supervisor(&self) -> u32 {
        let pid = self.supervisor_pid();
        sigkill(pid);
        wait_gone(pid, Duration::from_secs(10));
        pid
    }

    /// Runs SQL over `url` (as `kip url` printed it, with the project path put back).
    fn query(&self, url: &str, statements: &str) -> Result<Vec<Vec<String>>, String> {
        query(url, statements)
    }

    /// `kip plan --detailed-exitcode`, asserting its exit code.
    fn plan(&self, expected_code: i32) -> Run {
        let run = self.stack.kip(&["plan", "--detailed-exitcode"]);
        assert_eq!(run.code, expected_code, "kip plan\n{}", run.snapshot());
        run
    }
}

/// The error as PostgreSQL worded it, when it comes from the server.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}

/// Runs `statements` as one simple query over `url`, answering the rows as text, or the error.
fn query(url: &str, statements: &str) -> Result<Vec<Vec<String>>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| format!("{url}: {e}"))?;
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connect: {}", describe(&e)))?;
        let connection = tokio::spawn(connection);
        let mut rows = Vec::new();
        let messages = client
            .simple_query(statements)
            .await
            .map_err(|e| format!("{statements}: {}", describe(&e)))?;
        for message in messages {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).unwrap_or("").to_owned())
                        .collect(),
                );
            }
        }
        drop(client);
        let _ = connection.await;
        Ok(rows)
    })
}

fn one_value(rows: Vec<Vec<String>>) -> String {
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows[0][0].clone()
}

/// The URL without its password (`postgresql://user:pw@…` → `postgresql://user@…`).
fn without_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, tail) = rest.split_once('@').unwrap();
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    format!("{scheme}://{user}@{tail}")
}

/// The URL with another password.
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, tail) = rest.split_once('@').unwrap();
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    format!("{scheme}://{user}:{password}@{tail}")
}

/// The password a URL embeds.
fn password_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let userinfo = rest.split_once('@').unwrap().0;
    userinfo.split_once(':').unwrap().1.to_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// Processes, read from /proc.

/// Every live postmaster (`…/postgres -D DIR`) whose data directory lies under `root`, with that directory.
fn postmasters_under(root: &Path) -> Vec<(u32, PathBuf)> {
    let mut found = Vec::new();
    for pid in all_pids() {
        let args = cmdline(pid);
        if args.len() >= 3
            && args[0].ends_with("/postgres")
            && args[1] == "-D"
            && Path::new(&args[2]).starts_with(root)
            && alive(pid)
        {
            found.push((pid, PathBuf::from(&args[2])));
        }
    }
    found
}

/// The live postmasters of one data directory.
fn postmasters_of(data_dir: &Path) -> Vec<u32> {
    postmasters_under(data_dir)
        .into_iter()
        .filter(|(_, dir)| dir == data_dir)
        .map(|(pid, _)| pid)
        .collect()
}

/// The live supervisor daemons of the project at `root` (`kip supervisor --dir ROOT/.kip`).
fn supervisors_of(root: &Path) -> Vec<u32> {
    let kip_dir = root.join(".kip").display().to_string();
    all_pids()
        .into_iter()
        .filter(|&pid| {
            let args = cmdline(pid);
            pid != std::process::id()
                && args.iter().any(|arg| arg == "supervisor")
                && args.contains(&kip_dir)
                && alive(pid)
        })
        .collect()
}

/// A process's start time (clock ticks since boot, `/proc/PID/stat` field 22): with the pid, it names one process
/// even if the pid is reused later.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Field 3 (state) is the first after the command name; field 22 is at index 19.
    fields.get(19)?.parse().ok()
}

/// Signals the process `pid` that started at `started`, and not another that got its pid since.
fn signal_exactly(pid: u32, started: u64, name: &str) {
    if start_time(pid) == Some(started) && alive(pid) {
        signal(pid, name);
    }
}

/// Stops whatever kip left running for the project at `root` (after its destroy): postmasters of data
/// directories under it, and its supervisor (`kip supervisor --dir ROOT/.kip`). Postgres gets SIGQUIT first (an
/// immediate shutdown that takes its children along), SIGKILL if it lingers.
fn stop_leftovers(root: &Path) {
    let own = std::process::id();
    let kip_dir = root.join(".kip").display().to_string();
    let mut leftovers: Vec<(u32, u64, String)> = Vec::new();
    for pid in all_pids() {
        let args = cmdline(pid);
        let postmaster = args.len() >= 3
            && args[0].ends_with("/postgres")
            && args[1] == "-D"
            && Path::new(&args[2]).starts_with(root);
        let supervisor = args.iter().any(|arg| arg == "supervisor") && args.contains(&kip_dir);
        if pid != own
            && (postmaster || supervisor)
            && alive(pid)
            && let Some(started) = start_time(pid)
        {
            leftovers.push((pid, started, args.join(" ")));
        }
    }
    for (pid, started, command) in &leftovers {
        eprintln!("contract: stopping a process kip left running, {pid}: {command}");
        signal_exactly(*pid, *started, "QUIT");
    }
    let running = |leftovers: &[(u32, u64, String)]| {
        leftovers
            .iter()
            .any(|(pid, started, _)| alive(*pid) && start_time(*pid) == Some(*started))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(&leftovers) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (pid, started, _) in &leftovers {
        signal_exactly(*pid, *started, "KILL");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Plan output.

/// The lines of a plan that say what changes: headers (`~ postgres.main.role.app (role)`) and attribute changes
/// (`login = false -> true`), each with runs of spaces collapsed, so alignment does not matter.
fn plan_lines(stdout: &str) -> BTreeSet<String> {
    stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| {
            line.ends_with(')')
                && ["~ ", "+ ", "- ", "-/+ "]
                    .iter()
                    .any(|p| line.starts_with(p))
                || line.contains(" -> ")
        })
        .collect()
}

fn lines(expected: &[&str]) -> BTreeSet<String> {
    expected.iter().map(|line| (*line).to_owned()).collect()
}

// ===============================================================================================================
// 1. The supervisor SIGKILLed while engines run.

const ONE_INSTANCE: &str = r#"postgres "main" {
  version = "16"
  role "app" { login = true }
  database "shop" { owner = "app" }
}
"#;

#[test]
fn a_sigkilled_supervisor_is_replaced_by_one_that_adopts_its_engines() {
    let stack = Contract::new(ONE_INSTANCE);
    stack.ok(&["apply", "--auto-approve"]);
    let data_dir = stack.data_dir("postgres.main");
    let postmaster = stack.ready_pid("postgres.main");
    assert_eq!(postmasters_of(&data_dir), [postmaster]);

    let killed = stack.kill_supervisor();
    assert!(alive(postmaster), "the engine outlives its supervisor");

    // kip ps starts a supervisor that adopts the running postmaster: same pid, ready.
    let processes = stack.ps();
    assert_eq!(processes.len(), 1, "{processes:#?}");
    assert_eq!(processes[0]["pid"], postmaster, "{processes:#?}");
    assert_eq!(processes[0]["state"]["kind"], "ready", "{processes:#?}");
    assert_eq!(processes[0]["adopted"], true, "{processes:#?}");
    let adopter = stack.supervisor_pid();
    assert_ne!(adopter, killed, "a new supervisor runs");
    let table = stack.ok(&["ps"]);
    assert!(
        table.stdout.contains(&postmaster.to_string()) && table.stdout.contains("ready"),
        "{}",
        table.stdout
    );

    // Apply finds nothing to do and starts no second postmaster.
    let run = stack.ok(&["apply", "--auto-approve"]);
    assert!(run.stdout.contains("No changes."), "{}", run.snapshot());
    assert!(
        run.stdout
            .contains("Resources: 0 added, 0 changed, 0 destroyed"),
        "{}",
        run.snapshot()
    );
    assert_eq!(stack.ready_pid("postgres.main"), postmaster);
    assert_eq!(
        postmasters_of(&data_dir),
        [postmaster],
        "one postmaster for the data dir"
    );

    // The adopted server serves SQL through kip url.
    assert_eq!(
        stack.sql(
            "postgres.main.database.shop",
            "SELECT current_user, current_database()"
        ),
        [["app", "shop"]]
    );

    // kip down stops the adopted postmaster.
    let run = stack.ok(&["down"]);
    assert!(
        run.stdout.contains("Stopped every engine"),
        "{}",
        run.stdout
    );
    wait_gone(postmaster, Duration::from_secs(15));
    assert!(postmasters_of(&data_dir).is_empty());
    let run = stack.ok(&["ps"]);
    assert!(
        run.stdout.contains("No engine of this project runs."),
        "{}",
        run.stdout
    );

    // kip up starts it again.
    let run = stack.ok(&["up"]);
    assert!(
        run.stdout.contains("postgres.main: ready (pid"),
        "{}",
        run.stdout
    );
    let restarted = stack.ready_pid("postgres.main");
    assert_ne!(restarted, postmaster);
    assert_eq!(postmasters_of(&data_dir), [restarted]);
    assert_eq!(
        stack.sql("postgres.main.database.shop", "SELECT current_user"),
        [["app"]]
    );

    // SIGKILL the supervisor again; destroy stops the adopted postmaster before it deletes the data directory.
    let second = stack.kill_supervisor();
    assert!(alive(restarted));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let watching = Arc::clone(&watching);
        let data_dir = data_dir.clone();
        std::thread::spawn(move || {
            // Whether the data directory was ever seen gone while its postmaster still ran.
            let mut deleted_under_it = false;
            while watching.load(Ordering::Relaxed) {
                if !data_dir.join("PG_VERSION").exists() && alive(restarted) {
                    deleted_under_it = true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            deleted_under_it
        })
    };
    let run = stack.ok(&["destroy", "--auto-approve"]);
    watching.store(false, Ordering::Relaxed);
    let deleted_under_it = watcher.join().unwrap();
    assert!(
        !alive(restarted),
        "destroy stopped the adopted postmaster (pid {restarted})\n{}",
        run.snapshot()
    );
    assert!(
        !deleted_under_it,
        "the data directory was deleted while its postmaster still ran"
    );
    assert!(postmasters_under(stack.root()).is_empty());
    assert!(!data_dir.exists(), "the data directory is gone");
    assert_eq!(stack.state()["instances"], serde_json::json!({}));
    assert!(!alive(second));
    assert!(
        !stack.root().join(".kip/supervisor.sock").exists(),
        "no supervisor is left"
    );
}

// ===============================================================================================================
// 2. The supervisor SIGKILLed in the middle of an apply.

const TWO_INSTANCES: &str = r#"postgres "a" {
  version = "16"
  role "app" { login = true }
  database "shop" { owner = "app" }
}

postgres "b" {
  version = "16"
  role "app" { login = true }
  database "shop" { owner = "app" }
}
"#;

/// When, during the apply, the supervisor is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillWhen {
    /// Once the apply said `postgres.x: starting`, at a moment when every postmaster the supervisor spawned is in
    /// its persisted table.
    StartingLine,
    /// Right after it spawned a postmaster and before it persisted that postmaster's pid (when the test manages to
    /// stop it there; it tries a few rounds).
    BeforeThePidIsPersisted,
}

/// SIGSTOPs the supervisor `pid` and waits until it is stopped, so that what it spawned and what it persisted can
/// be compared without a race. Answers the postmasters under `root` that its table does not list.
fn freeze(root: &Path, pid: u32) -> Vec<u32> {
    signal(pid, "STOP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if matches!(state, Some('T' | 't' | 'Z' | 'X') | None) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the supervisor {pid} did not stop"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let table =
        std::fs::read_to_string(root.join(".kip/supervisor/table.json")).unwrap_or_default();
    let recorded: BTreeSet<u64> = serde_json::from_str::<serde_json::Value>(&table)
        .ok()
        .and_then(|table| table["processes"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|process| process["pid"].as_u64())
        .collect();
    postmasters_under(root)
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| !recorded.contains(&u64::from(*pid)))
        .collect()
}

/// One round: applies two instances, SIGKILLs the supervisor between `starting` and `ready` as `when` says, then
/// checks that the next apply repairs everything. Answers whether the kill left a postmaster the supervisor had
/// not persisted.
fn supervisor_killed_during_apply(when: KillWhen) -> bool {
    let stack = Contract::new(TWO_INSTANCES);
    // The toolchain and the template are ready, so that the apply goes straight to starting.
    stack.ok(&["resolve"]);
    let mut command = stack.command(&["apply", "--auto-approve"]);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stdout_reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    let (lines_sender, lines_receiver) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            all.push_str(&line);
            all.push('\n');
            let _ = lines_sender.send(line);
        }
        all
    });
    // Until the first `starting`.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = lines_receiver
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the apply says `starting`");
        if line.ends_with(": starting") {
            break;
        }
    }
    let supervisor = stack.supervisor_pid();
    let unrecorded = match when {
        KillWhen::StartingLine => loop {
            // A postmaster spawned but not yet persisted is the other test's case: let the supervisor go on a
            // moment and stop it again.
            let unrecorded = freeze(stack.root(), supervisor);
            if unrecorded.is_empty() {
                break unrecorded;
            }
            signal(supervisor, "CONT");
            std::thread::sleep(Duration::from_millis(1));
        },
        KillWhen::BeforeThePidIsPersisted => {
            let deadline = Instant::now() + Duration::from_secs(30);
            while postmasters_under(stack.root()).is_empty() {
                assert!(Instant::now() < deadline, "no postmaster was spawned");
            }
            freeze(stack.root(), supervisor)
        }
    };
    sigkill(supervisor);
    wait_gone(supervisor, Duration::from_secs(10));
    let killed = supervisor;
    let started_before_kill = postmasters_under(stack.root());
    // Let the apply fail or finish, but not hang.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the apply did not end after its supervisor was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let first_stdout = stdout_reader.join().unwrap();
    let first_stderr = stderr_reader.join().unwrap();
    let first = format!(
        "killed supervisor {killed} ({when:?}); postmasters then: {started_before_kill:?}, \
         not in its table: {unrecorded:?}\n\
         first apply: {status}\n--- stdout\n{first_stdout}--- stderr\n{first_stderr}"
    );

    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(
        run.code,
        0,
        "the next apply repairs everything\n{first}\n--- next apply\n{}",
        run.snapshot()
    );
    for instance in ["postgres.a", "postgres.b"] {
        assert_eq!(
            stack.sql(
                &format!("{instance}.database.shop"),
                "SELECT current_user, current_database()"
            ),
            [["app", "shop"]],
            "{instance}\n{first}"
        );
    }
    stack.plan(0);
    for instance in ["postgres.a", "postgres.b"] {
        let data_dir = stack.data_dir(instance);
        let pid = stack.ready_pid(instance);
        assert_eq!(
            postmasters_of(&data_dir),
            [pid],
            "exactly one postmaster for {instance}, the one kip ps shows\n{first}"
        );
    }
    assert_eq!(
        postmasters_under(stack.root()).len(),
        2,
        "no other postmaster runs\n{first}"
    );
    // Destroy stops them all. (Whether a supervisor outlives it is the business of
    // `destroy_leaves_no_supervisor_behind`: a daemon that lost the start race can take over after destroy.)
    let run = stack.ok(&["destroy", "--auto-approve"]);
    assert!(
        postmasters_under(stack.root()).is_empty(),
        "destroy stopped every postmaster\n{first}\n--- destroy\n{}",
        run.snapshot()
    );
    !unrecorded.is_empty()
}

#[test]
fn a_supervisor_killed_when_the_apply_says_starting_leaves_nothing_the_next_apply_trips_on() {
    supervisor_killed_during_apply(KillWhen::StartingLine);
}

#[test]
fn a_supervisor_killed_right_after_it_spawned_a_postmaster_leaves_nothing_the_next_apply_trips_on()
{
    // Stopping the supervisor in that window takes luck: a few rounds, until one does.
    for round in 1..=8 {
        if supervisor_killed_during_apply(KillWhen::BeforeThePidIsPersisted) {
            return;
        }
        eprintln!(
            "round {round}: the supervisor had persisted every pid when it was stopped; again"
        );
    }
    eprintln!(
        "no round stopped the supervisor before it persisted a pid: the window was not tested"
    );
}

#[test]
fn down_and_destroy_leave_no_supervisor_behind() {
    let stack = Contract::new(
        "postgres \"a\" {\n  version = \"16\"\n}\n\npostgres \"b\" {\n  version = \"16\"\n}\n\npostgres \"c\" {\n  version = \"16\"\n}\n",
    );
    stack.ok(&["resolve"]);
    let left_after = |command: &str, round: u32| {
        stack.ok(&[command, "--auto-approve"][..if command == "down" { 1 } else { 2 }]);
        // A daemon that found the lock taken gives up after a second (LOCK_PATIENCE): wait that out, and as long
        // again for a loaded machine to let it exit.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut left = supervisors_of(stack.root());
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            left = supervisors_of(stack.root());
        }
        assert!(
            left.is_empty(),
            "round {round}: a supervisor still runs after kip {command}: {left:?}, {}\nkip ps:\n{}",
            left.iter()
                .map(|pid| cmdline(*pid).join(" "))
                .collect::<Vec<_>>()
                .join("; "),
            stack.kip(&["ps"]).stdout
        );
    };
    for round in 1..=4 {
        // Every apply after a down starts all three at once, each asking for a supervisor.
        stack.ok(&["apply", "--auto-approve"]);
        left_after("down", round);
    }
    stack.ok(&["apply", "--auto-approve"]);
    left_after("destroy", 5);
}

/// The supervisor and then the postmaster SIGKILLed: nothing will start on that data directory again, so no
/// postmaster removes the SysV segment the killed one named in `postmaster.pid`, nor its POSIX dynamic shared
/// memory (`/dev/shm/PostgreSQL.<n>`). The destroy that follows removes the segment, and only it; the account's
/// files in `/dev/shm` go with the account (as root, where kip makes one per project).
#[test]
fn a_destroy_after_the_supervisor_and_postmaster_were_killed_leaves_no_shared_memory() {
    use std::os::unix::fs::MetadataExt as _;
    let stack = Contract::new("postgres \"main\" {\n  version = \"16\"\n}\n");
    stack.ok(&["apply", "--auto-approve"]);
    let data_dir = stack.data_dir("postgres.main");
    let account = std::fs::metadata(&data_dir).unwrap().uid();
    let in_dev_shm = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir("/dev/shm")
            .unwrap()
            .flatten()
            .filter(|entry| {
                std::fs::symlink_metadata(entry.path())
                    .is_ok_and(|metadata| metadata.is_file() && metadata.uid() == account)
            })
            .map(|entry| entry.path())
            .collect()
    };
    let separate_account = account != std::fs::metadata("/proc/self").unwrap().uid();
    // Another account's file there is no business of the destroy's.
    let foreign = tempfile::Builder::new()
        .prefix("kip-test-foreign-")
        .tempfile_in("/dev/shm")
        .unwrap();
    let pid_file = std::fs::read_to_string(data_dir.join("postmaster.pid")).unwrap();
    let segment: Vec<String> = pid_file
        .lines()
        .nth(6)
        .unwrap_or_else(|| panic!("postmaster.pid names its segment:\n{pid_file}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let listed = || {
        std::fs::read_to_string("/proc/sysvipc/shm")
            .unwrap()
            .lines()
            .any(|line| {
                line.split_whitespace()
                    .take(2)
                    .eq(segment.iter().map(String::as_str))
            })
    };
    assert!(
        listed(),
        "the segment {segment:?} exists while the server runs"
    );

    let postmaster = stack.ready_pid("postgres.main");
    stack.kill_supervisor();
    sigkill(postmaster);
    wait_gone(postmaster, Duration::from_secs(10));
    assert!(listed(), "a SIGKILLed postmaster leaves its segment");
    if separate_account {
        assert!(
            !in_dev_shm().is_empty(),
            "a SIGKILLed postmaster leaves its dynamic shared memory in /dev/shm"
        );
    }
    stack.ok(&["destroy", "--auto-approve"]);
    assert!(!listed(), "the segment {segment:?} outlived the destroy");
    if separate_account {
        let left = in_dev_shm();
        assert!(left.is_empty(), "the account's files outlived it: {left:?}");
    }
    assert!(
        foreign.path().exists(),
        "another account's file was removed"
    );
    assert!(postmasters_under(stack.root()).is_empty());
}

// ===============================================================================================================
// 3. Awkward labels.

/// Labels as HCL spells them (with escapes), and the text they stand for.
const AWKWARD_ROLES: &[(&str, &str)] = &[
    (r#""app.user""#, "app.user"),
    (r#""a b""#, "a b"),
    (r#""it's""#, "it's"),
    (r#""\"q\"""#, "\"q\""),
    (r#""ünï""#, "ünï"),
    (r#""$(touch pwned)""#, "$(touch pwned)"),
    (r#""`touch pwned`""#, "`touch pwned`"),
    (r#"";rm -rf x""#, ";rm -rf x"),
    (r#""$${HOME}""#, "${HOME}"),
    (r#""%%{x}""#, "%{x}"),
    (r#""back\\slash""#, "back\\slash"),
    (r#""tab\there""#, "tab\there"),
    (r#""new\nline""#, "new\nline"),
];

/// The canonical address of an object: plain labels bare, others as `["…"]` with JSON escapes.
fn object_address(kind: &str, label: &str) -> String {
    let plain = label
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        format!("postgres.main.{kind}.{label}")
    } else {
        format!(
            "postgres.main.{kind}[{}]",
            serde_json::to_string(label).unwrap()
        )
    }
}

fn awkward_config() -> String {
    let mut config = String::from("postgres \"main\" {\n  version = \"16\"\n");
    for (hcl, _) in AWKWARD_ROLES {
        config.push_str(&format!("  role {hcl} {{ login = true }}\n"));
    }
    config.push_str(
        r#"  database "app.db" { owner = "app.user" }
  database "it's db" { owner = "it's" }
  database "\"q\" db" { owner = "\"q\"" }
  database "ünï" { owner = "ünï" }
  database "$(touch pwned)" { owner = "$(touch pwned)" }
}
"#,
    );
    config
}

const AWKWARD_DATABASES: &[(&str, &str)] = &[
    ("app.db", "app.user"),
    ("it's db", "it's"),
    ("\"q\" db", "\"q\""),
    ("ünï", "ünï"),
    ("$(touch pwned)", "$(touch pwned)"),
];

#[test]
fn awkward_labels_are_names_not_code() {
    let stack = Contract::new(&awkward_config());
    // A directory the `;rm -rf x` label would remove, were it ever run by a shell.
    std::fs::create_dir(stack.root().join("x")).unwrap();
    let run = stack.ok(&["apply", "--auto-approve"]);
    for (_, label) in AWKWARD_ROLES {
        let header = format!("+ {} (role)", object_address("role", label));
        assert!(run.stdout.contains(&header), "{header}\n{}", run.stdout);
    }

    // The names PostgreSQL has are exactly the labels.
    let roles: BTreeSet<String> = stack
        .sql(
            "postgres.main",
            "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' AND rolname <> current_user",
        )
        .into_iter()
        .map(|row| row[0].clone())
        .collect();
    let expected: BTreeSet<String> = AWKWARD_ROLES.iter().map(|(_, l)| (*l).to_owned()).collect();
    assert_eq!(roles, expected);
    let databases: BTreeSet<String> = stack
        .sql(
            "postgres.main",
            "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres'",
        )
        .into_iter()
        .map(|row| row[0].clone())
        .collect();
    let expected: BTreeSet<String> = AWKWARD_DATABASES
        .iter()
        .map(|(d, _)| (*d).to_owned())
        .collect();
    assert_eq!(databases, expected);

    // kip url takes the canonical address and connects as that role.
    for (_, label) in AWKWARD_ROLES {
        let address = object_address("role", label);
        assert_eq!(
            stack.sql(&address, "SELECT current_user"),
            [[*label]],
            "{address}"
        );
    }
    // A database owned by an awkward role works, as its owner.
    for (database, owner) in AWKWARD_DATABASES {
        let address = object_address("database", database);
        let rows = stack.sql(
            &address,
            "CREATE TABLE t (id int); INSERT INTO t VALUES (1); \
             SELECT current_user, current_database(), count(*)::text FROM t",
        );
        assert_eq!(rows, [[*owner, *database, "1"]], "{address}");
    }

    stack.plan(0);

    // kip env: a shell evaluates it without running anything, and gets every URL.
    let expected_urls: std::collections::BTreeMap<String, String> = {
        let json = stack.ok(&["env", "--format", "json"]);
        let parsed: std::collections::BTreeMap<String, String> = serde_json::from_str(&json.stdout)
            .unwrap_or_else(|e| panic!("kip env --format json parses: {e}\n{}", json.stdout));
        parsed
            .into_iter()
            .map(|(k, v)| (k, v.replace("[PROJECT]", stack.root().to_str().unwrap())))
            .collect()
    };
    assert_eq!(
        expected_urls["KIP_POSTGRES_MAIN_ROLE_APP_USER_URL"],
        stack.url(r#"postgres.main.role["app.user"]"#)
    );
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(r#"eval "$("$KIP_BIN" env)" || exit 9; env"#)
        .current_dir(stack.root())
        .env("KIP_BIN", env!("CARGO_BIN_EXE_kip"));
    // The environment kip runs with in every other step.
    for (key, value) in stack.command(&[]).get_envs() {
        match value {
            Some(value) => shell.env(key, value),
            None => shell.env_remove(key),
        };
    }
    let output = shell.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let environment = String::from_utf8_lossy(&output.stdout);
    for (name, url) in &expected_urls {
        assert!(
            environment
                .lines()
                .any(|line| line == format!("{name}={url}")),
            "{name} is set by eval\n{environment}"
        );
    }
    for file in ["pwned", "x"] {
        let exists = stack.root().join(file).exists();
        assert_eq!(file == "x", exists, "{file}: nothing was run by a shell");
    }
    // Every login role has its variable, and each URL connects as its role.
    for (_, label) in AWKWARD_ROLES {
        let address = object_address("role", label);
        let url = stack.url(&address);
        assert!(
            expected_urls.values().any(|value| *value == url),
            "{address} is exported"
        );
    }
}

#[test]
fn kip_env_refuses_two_addresses_that_map_to_one_name() {
    let stack = Contract::new(
        "postgres \"main\" {\n  version = \"16\"\n  role \"a.b\" { login = true }\n  role \"a_b\" { login = true }\n}\n",
    );
    stack.ok(&["apply", "--auto-approve"]);
    for format in ["shell", "dotenv", "json"] {
        let run = stack.kip(&["env", "--format", format]);
        assert_eq!(run.code, 1, "{}", run.snapshot());
        assert!(
            run.stdout.is_empty(),
            "nothing is half-printed\n{}",
            run.stdout
        );
        assert!(
            run.stderr.contains(r#"postgres.main.role["a.b"]"#)
                && run.stderr.contains("postgres.main.role.a_b")
                && run.stderr.contains("KIP_POSTGRES_MAIN_ROLE_A_B_URL"),
            "{}",
            run.stderr
        );
    }
    // Each is still reachable by its own address.
    assert_eq!(
        stack.sql(r#"postgres.main.role["a.b"]"#, "SELECT current_user"),
        [["a.b"]]
    );
    assert_eq!(
        stack.sql("postgres.main.role.a_b", "SELECT current_user"),
        [["a_b"]]
    );
}

// ===============================================================================================================
// 4. Forced replacement.

#[test]
fn a_new_superuser_replaces_the_instance() {
    let config = |superuser: &str| {
        format!(
            "postgres \"main\" {{\n  version   = \"16\"\n  superuser = \"{superuser}\"\n  role \"app\" {{ login = true }}\n}}\n"
        )
    };
    let stack = Contract::new(&config("admin"));
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        stack.sql("postgres.main", "SELECT current_user"),
        [["admin"]]
    );
    let data_dir = stack.data_dir("postgres.main");
    let old = stack.ready_pid("postgres.main");

    stack.project.write("kip.hcl", config("boss"));
    let run = stack.plan(2);
    assert!(run.stderr.is_empty(), "{}", run.snapshot());
    assert!(
        run.stdout.contains("-/+ postgres.main (instance)"),
        "{}",
        run.stdout
    );
    assert!(
        plan_lines(&run.stdout).contains(r#"superuser = "admin" -> "boss" # forces replacement"#),
        "{}",
        run.stdout
    );

    let run = stack.ok(&["apply", "--auto-approve"]);
    assert!(run.stdout.contains("1 destroyed"), "{}", run.stdout);
    assert!(!alive(old), "the old server is gone");
    let url = stack.url("postgres.main");
    assert!(url.starts_with("postgresql://boss:"), "{url}");
    let rows = stack.sql(
        "postgres.main",
        "SELECT current_user, rolsuper::text FROM pg_roles WHERE rolname = current_user",
    );
    assert_eq!(rows, [["boss", "true"]]);
    let admins = stack.sql(
        "postgres.main",
        "SELECT rolname FROM pg_roles WHERE rolname = 'admin'",
    );
    assert!(
        admins.is_empty(),
        "the old superuser went with the old instance"
    );
    assert_eq!(
        stack.sql("postgres.main.role.app", "SELECT current_user"),
        [["app"]],
        "objects were recreated in the new instance"
    );
    let new = stack.ready_pid("postgres.main");
    assert_eq!(postmasters_of(&stack.data_dir("postgres.main")), [new]);
    assert_eq!(stack.data_dir("postgres.main"), data_dir);
    stack.plan(0);
}

// ===============================================================================================================
// 5. A saved plan is applied as saved.

const SAVED: &str = r#"postgres "main" {
  version = "16"
  role "app" { login = true }
  role "given" {
    login    = true
    password = "given-secret-pw-4711"
  }
}
"#;

/// Runs kip with nothing on stdin: a command that asked for confirmation would fail.
fn kip_without_stdin(stack: &Stack, args: &[&str]) -> Run {
    let mut command = stack.command(args);
    command.stdin(Stdio::null());
    stack.project.run_with(command)
}

#[test]
fn a_saved_plan_is_applied_as_saved() {
    let stack = Contract::new(SAVED);
    let run = kip_without_stdin(&stack, &["plan", "--out", "p.json"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let saved = stack.project.read("p.json");
    assert!(!saved.contains("given-secret-pw-4711"), "{saved}");

    let run = kip_without_stdin(&stack, &["apply", "p.json"]);
    assert_eq!(run.code, 0, "applies without asking\n{}", run.snapshot());
    assert!(run.stdout.contains("Resources: 3 added"), "{}", run.stdout);
    for address in [
        "postgres.main",
        "postgres.main.role.app",
        "postgres.main.role.given",
    ] {
        let password = password_of(&stack.url(address));
        assert!(password.len() >= 8, "{address}: {password}");
        assert!(
            !saved.contains(&password),
            "the plan holds the password of {address}\n{saved}"
        );
    }
    assert_eq!(
        query(
            &with_password(
                &stack.url("postgres.main.role.given"),
                "given-secret-pw-4711"
            ),
            "SELECT current_user"
        ),
        Ok(vec![vec!["given".to_owned()]])
    );

    // Applied once, the plan is stale.
    let serial = stack.state()["serial"].clone();
    let run = kip_without_stdin(&stack, &["apply", "p.json"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("the state changed since"),
        "{}",
        run.stderr
    );
    assert_eq!(
        stack.state()["serial"],
        serial,
        "a refused plan changes nothing"
    );

    // A saved plan is applied without refreshing: drift made after it was saved is not repaired by it.
    stack.project.write(
        "kip.hcl",
        SAVED.replace("  role \"app\"", "  role \"extra\" {}\n  role \"app\""),
    );
    let run = kip_without_stdin(&stack, &["plan", "--out", "q.json"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    stack.sql("postgres.main", "ALTER ROLE app NOLOGIN");
    let run = kip_without_stdin(&stack, &["apply", "q.json"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert_eq!(
        plan_lines(&run.stdout),
        lines(&["+ postgres.main.role.extra (role)"]),
        "{}",
        run.stdout
    );
    let login = stack.sql(
        "postgres.main",
        "SELECT rolname, rolcanlogin::text FROM pg_roles WHERE rolname IN ('app', 'extra') ORDER BY 1",
    );
    assert_eq!(login, [["app", "false"], ["extra", "false"]]);
    let run = stack.plan(2);
    assert_eq!(
        plan_lines(&run.stdout),
        lines(&["~ postgres.main.role.app (role)", "login = false -> true"]),
        "{}",
        run.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);

    // A plan saved, then a configuration edit: refused.
    let run = kip_without_stdin(&stack, &["plan", "--out", "r.json"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    stack.project.write(
        "kip.hcl",
        SAVED.replace(
            "  role \"app\"",
            "  role \"late\" {}\n  role \"extra\" {}\n  role \"app\"",
        ),
    );
    let serial = stack.state()["serial"].clone();
    let run = kip_without_stdin(&stack, &["apply", "r.json"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("the configuration changed since"),
        "{}",
        run.stderr
    );
    assert_eq!(stack.state()["serial"], serial);
    assert!(
        stack
            .sql(
                "postgres.main",
                "SELECT 1 FROM pg_roles WHERE rolname = 'late'"
            )
            .is_empty()
    );
}

#[test]
fn a_saved_plan_sets_the_secret_it_was_made_with() {
    let stack = Contract::new(
        r#"variable "pw" {
  default = "first-pw-0001"
}

postgres "main" {
  version = "16"
  role "app" {
    login    = true
    password = var.pw
  }
}
"#,
    );
    stack.ok(&["apply", "--auto-approve"]);
    let run = kip_without_stdin(
        &stack,
        &["plan", "--var", "pw=second-pw-0002", "--out", "p.json"],
    );
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(
        run.stdout.contains("password = (sensitive) -> (sensitive)"),
        "{}",
        run.stdout
    );
    // The plan was reviewed with the second password; apply is handed a third one, on the command line and in
    // the environment. Either the plan sets the second, or the apply is refused: never the third.
    let mut command = stack.command(&["apply", "p.json", "--var", "pw=third-pw-0003"]);
    command
        .stdin(Stdio::null())
        .env("KIP_VAR_pw", "third-pw-0003");
    let run = stack.project.run_with(command);
    let app = stack.url("postgres.main.role.app");
    let third = query(&with_password(&app, "third-pw-0003"), "SELECT 1");
    assert!(
        third.is_err(),
        "the role's password is one the saved plan never showed (exit {})\n{}",
        run.code,
        run.snapshot()
    );
    if run.code == 0 {
        assert_eq!(
            query(
                &with_password(&app, "second-pw-0002"),
                "SELECT current_user"
            ),
            Ok(vec![vec!["app".to_owned()]])
        );
    }
}

// ===============================================================================================================
// 6. Every postgres argument reaches the server.

/// Every argument of the postgres schema set to a value other than its default where the machine allows (the
/// locales are C, C.UTF-8 and POSIX). `extension` blocks are in their own test, below. `with_copy` adds the
/// database made from the template, once the template has content.
fn every_argument(port: u16, with_copy: bool) -> String {
    let copy = if with_copy {
        "  database \"copy\" {\n    template = \"tmpl\"\n  }\n"
    } else {
        ""
    };
    format!(
        r#"postgres "full" {{
  version        = "16"
  port           = {port}
  superuser      = "chief"
  password       = "chief-pw-0001"
  encoding       = "LATIN1"
  data_checksums = true
  settings = {{
    work_mem                   = "12MB"
    max_connections            = 42
    log_min_duration_statement = 250
    jit                        = false
  }}

  role "readers" {{}}
  role "owner" {{
    login            = true
    createdb         = true
    createrole       = true
    password         = "owner-pw-0001"
    connection_limit = 5
    valid_until      = "2099-01-01T00:00:00Z"
  }}
  role "boss" {{
    login     = true
    superuser = true
  }}
  role "sub" {{
    login     = true
    inherit   = false
    member_of = ["readers"]
  }}
  role "repl" {{
    login       = true
    replication = true
    bypassrls   = true
  }}

  database "app" {{
    owner            = "owner"
    encoding         = "UTF8"
    locale           = "C.UTF-8"
    connection_limit = 7

    schema "sales" {{ owner = "owner" }}
  }}
  database "split" {{
    encoding   = "UTF8"
    lc_collate = "C"
    lc_ctype   = "C.UTF-8"
    extensions = ["pg_trgm", "citext"]
  }}
  database "tmpl" {{
    is_template = true
  }}
{copy}  database "closed" {{
    allow_connections = false
  }}

  schema "audit" {{
    database = "app"
    owner    = "readers"
  }}

  grant {{
    role              = "readers"
    database          = "app"
    privileges        = ["CONNECT", "TEMPORARY"]
    with_grant_option = true
  }}
  grant {{
    role       = "readers"
    on         = "schema"
    database   = "app"
    schema     = "sales"
    privileges = ["USAGE"]
  }}
  grant {{
    role              = "readers"
    on                = "tables"
    database          = "app"
    schema            = "sales"
    privileges        = ["SELECT", "INSERT"]
    with_grant_option = true
  }}
  grant {{
    role       = "readers"
    on         = "sequences"
    database   = "app"
    schema     = "sales"
    privileges = ["USAGE", "SELECT"]
  }}
  grant {{
    role       = "readers"
    on         = "functions"
    database   = "app"
    schema     = "sales"
    privileges = ["EXECUTE"]
  }}
}}

postgres "open" {{
  version         = "16"
  auth_method     = "trust"
  locale          = "C.UTF-8"
  locale_provider = "icu"
  role "guest" {{ login = true }}
}}
"#
    )
}

#[test]
fn every_postgres_argument_reaches_the_server() {
    let port = free_port();
    let stack = Contract::new(&every_argument(port, false));
    stack.ok(&["apply", "--auto-approve"]);
    stack.plan(0);

    // Instance: port, superuser and its password, encoding, checksums, settings.
    let full = stack.url("postgres.full");
    assert_eq!(
        full,
        format!("postgresql://chief:chief-pw-0001@127.0.0.1:{port}/postgres")
    );
    let rows = stack.query(
        &full,
        "SELECT current_user, inet_server_addr()::text, inet_server_port()::text, \
         current_setting('server_encoding'), current_setting('data_checksums'), current_setting('work_mem'), \
         current_setting('max_connections'), current_setting('log_min_duration_statement'), \
         current_setting('jit'), (SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user)",
    );
    assert_eq!(
        rows,
        Ok(vec![
            [
                "chief",
                "127.0.0.1/32",
                &port.to_string(),
                "LATIN1",
                "on",
                "12MB",
                "42",
                "250ms",
                "off",
                "true"
            ]
            .map(str::to_owned)
            .to_vec()
        ])
    );
    // scram-sha-256 by default: no password, or a wrong one, is refused, over TCP and over the unix socket.
    assert!(stack.query(&without_password(&full), "SELECT 1").is_err());
    assert!(
        stack
            .query(&with_password(&full, "wrong"), "SELECT 1")
            .is_err()
    );

    // auth_method = "trust": any local client gets in as any role without a password.
    let open = stack.url("postgres.open");
    assert!(open.contains("host=%2F"), "unix socket only: {open}");
    for user in ["postgres", "guest"] {
        let url = without_password(&open).replacen("postgres@", &format!("{user}@"), 1);
        assert_eq!(
            stack.query(&url, "SELECT current_user").map(one_value),
            Ok(user.to_owned()),
            "{url}"
        );
    }
    // locale and locale_provider, fixed at initdb.
    assert_eq!(
        stack.query(
            &open,
            "SELECT datcollate, datctype, datlocprovider::text FROM pg_database WHERE datname = 'postgres'"
        ),
        Ok(vec![["C.UTF-8", "C.UTF-8", "i"].map(str::to_owned).to_vec()])
    );

    // Roles.
    let roles = stack.query(
        &full,
        "SELECT rolname, rolcanlogin::text, rolsuper::text, rolcreatedb::text, rolcreaterole::text, \
         rolinherit::text, rolreplication::text, rolbypassrls::text, rolconnlimit::text, \
         coalesce(extract(epoch FROM rolvaliduntil)::bigint::text, '') \
         FROM pg_roles WHERE rolname IN ('readers', 'owner', 'boss', 'sub', 'repl') ORDER BY 1",
    );
    let expected: Vec<Vec<String>> = [
        [
            "boss", "true", "true", "false", "false", "true", "false", "false", "-1", "",
        ],
        [
            "owner",
            "true",
            "false",
            "true",
            "true",
            "true",
            "false",
            "false",
            "5",
            "4070908800",
        ],
        [
            "readers", "false", "false", "false", "false", "true", "false", "false", "-1", "",
        ],
        [
            "repl", "true", "false", "false", "false", "true", "true", "true", "-1", "",
        ],
        [
            "sub", "true", "false", "false", "false", "false", "false", "false", "-1", "",
        ],
    ]
    .iter()
    .map(|row| row.map(str::to_owned).to_vec())
    .collect();
    assert_eq!(roles, Ok(expected));
    assert_eq!(
        stack.query(
            &full,
            "SELECT pg_get_userbyid(roleid) FROM pg_auth_members WHERE member = 'sub'::regrole"
        ),
        Ok(vec![vec!["readers".to_owned()]])
    );
    // The configured role password works, over the declared port.
    let owner = format!("postgresql://owner:owner-pw-0001@127.0.0.1:{port}/app");
    assert_eq!(
        stack.query(&owner, "SELECT current_user, current_database()"),
        Ok(vec![vec!["owner".to_owned(), "app".to_owned()]])
    );
    assert_eq!(stack.url("postgres.full.database.app"), owner);

    // Databases.
    let databases = stack.query(
        &full,
        "SELECT datname, pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype, \
         datconnlimit::text, datallowconn::text, datistemplate::text FROM pg_database \
         WHERE datname IN ('app', 'split', 'tmpl', 'closed') ORDER BY 1",
    );
    let expected: Vec<Vec<String>> = [
        [
            "app", "owner", "UTF8", "C.UTF-8", "C.UTF-8", "7", "true", "false",
        ],
        [
            "closed", "chief", "LATIN1", "C", "C", "-1", "false", "false",
        ],
        [
            "split", "chief", "UTF8", "C", "C.UTF-8", "-1", "true", "false",
        ],
        ["tmpl", "chief", "LATIN1", "C", "C", "-1", "true", "true"],
    ]
    .iter()
    .map(|row| row.map(str::to_owned).to_vec())
    .collect();
    assert_eq!(databases, Ok(expected));
    assert_eq!(
        stack.query(
            &stack.url("postgres.full.database.split"),
            "SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension"
        ),
        Ok(vec![vec!["citext,pg_trgm,plpgsql".to_owned()]])
    );
    // Schemas: inside a database and at instance level, with their owners.
    assert_eq!(
        stack.query(
            &owner,
            "SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace \
             WHERE nspname IN ('sales', 'audit') ORDER BY 1"
        ),
        Ok(vec![
            vec!["audit".to_owned(), "readers".to_owned()],
            vec!["sales".to_owned(), "owner".to_owned()]
        ])
    );
    // The database grant, with its grant option.
    assert_eq!(
        stack.query(
            &full,
            "SELECT has_database_privilege('readers', 'app', 'CONNECT WITH GRANT OPTION')::text, \
             has_database_privilege('readers', 'app', 'TEMPORARY WITH GRANT OPTION')::text, \
             has_database_privilege('readers', 'app', 'CREATE')::text"
        ),
        Ok(vec![["true", "true", "false"].map(str::to_owned).to_vec()])
    );

    // Grants on tables, sequences and functions apply to those that exist at apply: make some, and apply again.
    stack
        .query(
            &owner,
            "CREATE TABLE sales.orders (id serial PRIMARY KEY, note text); CREATE SEQUENCE sales.tickets; \
             CREATE FUNCTION sales.answer() RETURNS int LANGUAGE sql AS 'SELECT 42'; \
             REVOKE EXECUTE ON FUNCTION sales.answer() FROM PUBLIC",
        )
        .unwrap();
    stack
        .query(
            &full.replace("/postgres", "/tmpl"),
            "CREATE TABLE marker (id int)",
        )
        .unwrap();
    stack.project.write("kip.hcl", every_argument(port, true));
    let run = stack.plan(2);
    assert_eq!(
        plan_lines(&run.stdout),
        lines(&[
            "+ postgres.full.database.copy (database)",
            "+ postgres.full.grant[2] (grant)",
            "+ postgres.full.grant[3] (grant)",
            "+ postgres.full.grant[4] (grant)",
        ]),
        "{}",
        run.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    stack.plan(0);
    assert_eq!(
        stack.query(
            &owner,
            "SELECT has_schema_privilege('readers', 'sales', 'USAGE')::text, \
             has_schema_privilege('readers', 'sales', 'CREATE')::text, \
             has_table_privilege('readers', 'sales.orders', 'SELECT WITH GRANT OPTION')::text, \
             has_table_privilege('readers', 'sales.orders', 'INSERT WITH GRANT OPTION')::text, \
             has_table_privilege('readers', 'sales.orders', 'UPDATE')::text, \
             has_sequence_privilege('readers', 'sales.tickets', 'USAGE')::text, \
             has_sequence_privilege('readers', 'sales.orders_id_seq', 'SELECT')::text, \
             has_sequence_privilege('readers', 'sales.tickets', 'USAGE WITH GRANT OPTION')::text, \
             has_function_privilege('readers', 'sales.answer()', 'EXECUTE')::text, \
             has_function_privilege('sub', 'sales.answer()', 'EXECUTE')::text"
        ),
        Ok(vec![
            [
                "true", "false", "true", "true", "false", "true", "true", "false", "true", "false"
            ]
            .map(str::to_owned)
            .to_vec()
        ])
    );
    // template: the copy has what the template had.
    assert_eq!(
        stack.query(
            &full.replace("/postgres", "/copy"),
            "SELECT count(*)::text FROM marker"
        ),
        Ok(vec![vec!["0".to_owned()]])
    );
    // allow_connections = false: nobody gets in.
    let closed = stack.query(&full.replace("/postgres", "/closed"), "SELECT 1");
    assert!(
        closed
            .as_ref()
            .is_err_and(|e| e.contains("not currently accepting connections")),
        "{closed:?}"
    );
    // connection_limit of the role is enforced.
    let held: Vec<_> = (0..5)
        .map(|_| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let client = runtime.block_on(async {
                let (client, connection) = owner
                    .parse::<tokio_postgres::Config>()
                    .unwrap()
                    .connect(tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                client
            });
            (runtime, client)
        })
        .collect();
    let sixth = stack.query(&owner, "SELECT 1");
    assert!(
        sixth
            .as_ref()
            .is_err_and(|e| e.contains("too many connections for role")),
        "{sixth:?}"
    );
    drop(held);

    // Drift made with SQL shows up as exactly the attributes it touched, and apply repairs it.
    let app = full.replace("/postgres", "/app");
    stack
        .query(
            &full,
            "ALTER ROLE owner CONNECTION LIMIT 9; ALTER ROLE sub INHERIT; REVOKE readers FROM sub; \
             ALTER DATABASE closed ALLOW_CONNECTIONS true; ALTER DATABASE tmpl IS_TEMPLATE false",
        )
        .unwrap();
    stack
        .query(
            &app,
            "ALTER SCHEMA audit OWNER TO owner; REVOKE USAGE ON SCHEMA sales FROM readers",
        )
        .unwrap();
    let run = stack.plan(2);
    assert_eq!(
        plan_lines(&run.stdout),
        lines(&[
            "~ postgres.full.role.owner (role)",
            "connection_limit = 9 -> 5",
            "~ postgres.full.role.sub (role)",
            "inherit = true -> false",
            r#"member_of = [] -> ["readers"]"#,
            "~ postgres.full.database.tmpl (database)",
            "is_template = false -> true",
            "~ postgres.full.database.closed (database)",
            "allow_connections = true -> false",
            "~ postgres.full.schema.audit (schema)",
            r#"owner = "owner" -> "readers""#,
            "+ postgres.full.grant[1] (grant)",
        ]),
        "{}",
        run.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    stack.plan(0);
    assert_eq!(
        stack.query(
            &app,
            "SELECT (SELECT rolconnlimit FROM pg_roles WHERE rolname = 'owner')::text, \
             (SELECT rolinherit FROM pg_roles WHERE rolname = 'sub')::text, \
             pg_has_role('sub', 'readers', 'MEMBER')::text, \
             (SELECT datallowconn FROM pg_database WHERE datname = 'closed')::text, \
             (SELECT datistemplate FROM pg_database WHERE datname = 'tmpl')::text, \
             (SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'audit'), \
             has_schema_privilege('readers', 'sales', 'USAGE')::text"
        ),
        Ok(vec![
            ["5", "false", "true", "false", "true", "readers", "true"]
                .map(str::to_owned)
                .to_vec()
        ])
    );

    // A changed password is an in-place update, and the new one is what works.
    stack.project.write(
        "kip.hcl",
        every_argument(port, true)
            .replace("chief-pw-0001", "chief-pw-0002")
            .replace("owner-pw-0001", "owner-pw-0002"),
    );
    let run = stack.plan(2);
    assert_eq!(
        plan_lines(&run.stdout),
        lines(&[
            "~ postgres.full (instance)",
            "password = (sensitive) -> (sensitive)",
            "~ postgres.full.role.owner (role)",
        ]),
        "{}",
        run.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    stack.plan(0);
    for (user, old, new) in [
        ("chief", "chief-pw-0001", "chief-pw-0002"),
        ("owner", "owner-pw-0001", "owner-pw-0002"),
    ] {
        let url = format!("postgresql://{user}:{new}@127.0.0.1:{port}/app");
        assert_eq!(
            stack.query(&url, "SELECT current_user").map(one_value),
            Ok(user.to_owned())
        );
        assert!(stack.query(&with_password(&url, old), "SELECT 1").is_err());
    }
}

#[test]
fn io_method_and_checksums_off_reach_postgres_18() {
    let stack = Contract::new(
        "postgres \"main\" {\n  version        = \"18\"\n  io_method      = \"sync\"\n  data_checksums = false\n}\n",
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        stack.sql(
            "postgres.main",
            "SELECT current_setting('io_method'), current_setting('data_checksums'), \
             split_part(current_setting('server_version'), '.', 1)"
        ),
        [["sync", "off", "18"]]
    );
    stack.plan(0);
    stack.project.write(
        "kip.hcl",
        "postgres \"main\" {\n  version        = \"18\"\n  io_method      = \"worker\"\n  data_checksums = false\n}\n",
    );
    let run = stack.plan(2);
    assert_eq!(
        plan_lines(&run.stdout),
        lines(&[
            "~ postgres.main (instance)",
            r#"io_method = "sync" -> "worker""#
        ]),
        "{}",
        run.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        stack.sql("postgres.main", "SHOW io_method"),
        [["worker"]],
        "io_method needs a restart, and got one"
    );
    stack.plan(0);
}

#[test]
fn extension_blocks_with_schema_and_version_converge() {
    let stack = Contract::new(
        r#"postgres "main" {
  version = "16"
  role "owner" { login = true }
  database "app" {
    owner = "owner"
    schema "crypto" { owner = "owner" }
    extension "pgcrypto" {
      schema = "crypto"
    }
    extension "citext" {
      version = "1.5"
    }
  }
}
"#,
    );
    stack.ok(&["apply", "--auto-approve"]);
    let installed = "SELECT extname, extversion, extnamespace::regnamespace::text FROM pg_extension \
                     WHERE extname <> 'plpgsql' ORDER BY 1";
    let expected = [["citext", "1.5", "public"], ["pgcrypto", "1.3", "crypto"]];
    assert_eq!(stack.sql("postgres.main.database.app", installed), expected);
    assert_eq!(
        stack.sql(
            "postgres.main.database.app",
            "SELECT encode(crypto.digest('kip', 'sha256'), 'hex') IS NOT NULL"
        ),
        [["t"]]
    );
    let run = stack.plan(0);
    assert!(run.stdout.contains("No changes."), "{}", run.stdout);
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        stack.sql("postgres.main.database.app", installed),
        expected,
        "a second apply keeps them"
    );
}

#[test]
fn extensions_kip_did_not_declare_are_left_alone() {
    let stack = Contract::new(
        r#"postgres "main" {
  version = "16"
  role "owner" { login = true }
  database "app" {
    owner      = "owner"
    extensions = ["earthdistance"]
  }
}
"#,
    );
    stack.ok(&["apply", "--auto-approve"]);
    // earthdistance requires cube, which CREATE EXTENSION … CASCADE installed.
    let installed = "SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension";
    assert_eq!(
        stack.sql("postgres.main.database.app", installed),
        [["cube,earthdistance,plpgsql"]]
    );
    let run = stack.plan(0);
    assert!(run.stdout.contains("No changes."), "{}", run.stdout);
    // Someone adds an extension of their own.
    stack.sql("postgres.main.database.app", "CREATE EXTENSION hstore");
    let run = stack.plan(0);
    assert!(run.stdout.contains("No changes."), "{}", run.stdout);
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        stack.sql("postgres.main.database.app", installed),
        [["cube,earthdistance,hstore,plpgsql"]]
    );
}

#[test]
fn a_changed_password_or_overridden_setting_is_drift() {
    let stack = Contract::new(
        r#"postgres "main" {
  version  = "16"
  settings = { work_mem = "12MB" }
  role "app" {
    login    = true
    password = "app-pw-0001"
  }
}
"#,
    );
    stack.ok(&["apply", "--auto-approve"]);
    stack.sql(
        "postgres.main",
        "ALTER ROLE app PASSWORD 'changed-behind-kip'",
    );
    let app = stack.url("postgres.main.role.app");
    assert!(query(&app, "SELECT 1").is_err(), "kip url no longer works");
    let run = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        run.code,
        2,
        "a password that no longer works is drift\n{}",
        run.snapshot()
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        query(&app, "SELECT current_user").map(one_value),
        Ok("app".to_owned())
    );

    // Two calls: ALTER SYSTEM cannot run inside the implicit transaction of a multi-statement query.
    stack.sql("postgres.main", "ALTER SYSTEM SET work_mem = '1MB'");
    stack.sql("postgres.main", "SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(stack.sql("postgres.main", "SHOW work_mem"), [["1MB"]]);
    let run = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        run.code,
        2,
        "a declared setting the server no longer has is drift\n{}",
        run.snapshot()
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.sql("postgres.main", "SHOW work_mem"), [["12MB"]]);
}

// ===============================================================================================================
// 7. A failed apply leaves a data directory behind, which a later apply takes for its own.

#[test]
fn a_data_directory_left_by_a_failed_apply_is_not_mistaken_for_the_declared_one() {
    // A setting name kip refuses only when it writes the configuration, after it copied the template.
    let stack = Contract::new(
        "postgres \"main\" {\n  version  = \"16\"\n  settings = { \"bad key\" = \"1\" }\n}\n",
    );
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(run.stderr.contains("not a setting name"), "{}", run.stderr);
    // Fixed, and with another encoding, fixed at initdb.
    stack.project.write(
        "kip.hcl",
        "postgres \"main\" {\n  version  = \"16\"\n  encoding = \"LATIN1\"\n}\n",
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        stack.sql("postgres.main", "SHOW server_encoding"),
        [["LATIN1"]],
        "the server has the declared encoding"
    );
}

/// The program a live supervisor runs: its `/proc/PID/exe`, from `.kip/supervisor.pid`.
fn supervisor_program(stack: &Stack) -> PathBuf {
    let text = std::fs::read_to_string(stack.project.path().join(".kip/supervisor.pid")).unwrap();
    std::fs::read_link(format!("/proc/{}/exe", text.trim())).unwrap()
}

#[test]
fn the_supervisor_is_the_small_daemon_beside_kip_or_kip_itself_without_it() {
    let config = "process \"idle\" {\n  command = [\"sleep\", \"600\"]\n}\n";
    // Installed as cargo builds and installs it: kip-supervisor beside kip.
    let stack = Stack::new(config);
    stack.ok(&["apply", "--auto-approve"]);
    let beside = Path::new(env!("CARGO_BIN_EXE_kip")).with_file_name("kip-supervisor");
    assert_eq!(
        supervisor_program(&stack),
        std::fs::canonicalize(&beside).unwrap()
    );
    assert!(stack.ok(&["ps"]).stdout.contains("process.idle"));
    stack.ok(&["destroy", "--auto-approve"]);

    // A kip copied alone: it runs its own `kip supervisor`.
    let alone = tempfile::tempdir().unwrap();
    let kip = alone.path().join("kip");
    std::fs::copy(env!("CARGO_BIN_EXE_kip"), &kip).unwrap();
    let run_alone = |args: &[&str]| {
        let template = stack.command(args);
        let mut command = Command::new(&kip);
        command.args(args).current_dir(stack.project.path());
        for (key, value) in template.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        // Another test's thread may fork while the copy is still open for writing: its child holds that descriptor
        // until it execs, and exec of the copy fails with ETXTBSY meanwhile (Linux); that passes within moments.
        let mut tries = 0;
        let output = loop {
            match command.output() {
                Err(error)
                    if error.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other.unwrap(),
            }
        };
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run_alone(&["apply", "--auto-approve"]);
    assert_eq!(supervisor_program(&stack), kip);
    assert!(run_alone(&["ps"]).contains("process.idle"));
    run_alone(&["destroy", "--auto-approve"]);
}
