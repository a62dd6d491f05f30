//! Tests for `kip_core::supervisor` against real processes: shell scripts, a Python HTTP server, and Valkey from the
//! test mirror, each test in its own temp dir with its own supervisor.
//!
//! Most tests run the daemon in a thread of the test process ([`TestDaemon`]), which makes every supervised
//! process a child of the test process: checking `/proc/PID` after a stop proves it was reaped, not left a zombie.
//! Tests that need a daemon in a process of its own (to SIGKILL it, or to race two of them) start it detached
//! through [`Client::start_daemon`], with this test binary as the daemon program (see [`supervisor_daemon_entry`]).
//! Every guard shuts its supervisor down on drop, so a failing test leaves no process behind.
//!
//! The tests of a supervisor that survives its own crash play the fault: they SIGKILL a detached daemon while its
//! processes run (or while a start waits for a probe), and let the next daemon (detached, or in a thread) adopt
//! them. Such processes are orphans: PID 1 inherits them and may never reap them, so those tests count a zombie as
//! stopped ([`assert_stopped`]), and a [`Groups`] guard SIGKILLs the groups they started when the test ends.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kip_core::engine::{Probe, ProbeKind, RestartPolicy, RunAs, SpawnSpec, StopCommand, StopSpec};
use kip_core::supervisor::{
    Client, DEFAULT_MAX_RESTARTS, DaemonOptions, ProcessState, ProcessStatus, RequestError,
    SupervisorError, WaitUntil, pid_file_path, run_daemon, run_daemon_with, socket_path,
};
use rustix::process::{Pid, Signal};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

/// A supervisor running in a thread of the test process, in its own temp dir; shut down when dropped.
struct TestDaemon {
    dir: tempfile::TempDir,
    kip_dir: PathBuf,
    thread: Option<std::thread::JoinHandle<Result<(), SupervisorError>>>,
}

impl TestDaemon {
    fn start() -> TestDaemon {
        TestDaemon::start_in(tempfile::tempdir().unwrap())
    }

    fn start_in(dir: tempfile::TempDir) -> TestDaemon {
        let kip_dir = dir.path().join(".kip");
        let thread = {
            let kip_dir = kip_dir.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(run_daemon_with(
                    &kip_dir,
                    DaemonOptions {
                        handle_signals: false,
                    },
                ))
            })
        };
        let daemon = TestDaemon {
            dir,
            kip_dir,
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answers_a_ping(&daemon.kip_dir) {
            if daemon.thread.as_ref().unwrap().is_finished() {
                let mut daemon = daemon;
                let result = daemon.thread.take().unwrap().join().unwrap();
                panic!("the supervisor ended before it listened: {result:?}");
            }
            assert!(
                Instant::now() < deadline,
                "the supervisor did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        daemon
    }

    async fn client(&self) -> Client {
        Client::connect(&self.kip_dir)
            .await
            .unwrap()
            .expect("a supervisor runs")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `sh -c SCRIPT` process with a short probe interval and a 5 s probe budget.
    fn script(&self, name: &str, script: &str, probe: ProbeKind) -> SpawnSpec {
        script_spec(self.dir.path(), name, script, probe)
    }

    /// Waits for the daemon thread to end, after a shutdown.
    fn join(&mut self) -> Result<(), SupervisorError> {
        let thread = self.thread.take().expect("joined once");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !thread.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the supervisor thread did not end within 10 s of its shutdown"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        thread.join().unwrap()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        // A plain blocking shutdown request: this may run while a test's runtime unwinds.
        if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket_path(&self.kip_dir))
        {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
            if stream.write_all(b"{\"v\":2,\"op\":\"shutdown\"}\n").is_ok() {
                let _ = BufReader::new(stream).read_line(&mut String::new());
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

/// A `sh -c SCRIPT` process run in `dir` (the project dir: its log goes to `.kip/logs/NAME.log`), with a short
/// probe interval and a 5 s probe budget.
fn script_spec(dir: &Path, name: &str, script: &str, probe: ProbeKind) -> SpawnSpec {
    SpawnSpec {
        name: name.to_owned(),
        program: "/bin/sh".into(),
        args: vec!["-c".to_owned(), script.to_owned()],
        env: BTreeMap::new(),
        cwd: dir.to_owned(),
        run_as: None,
        probe: Probe {
            kind: probe,
            initial_delay: Duration::ZERO,
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
            retries: None,
        },
        restart: RestartPolicy::No,
        max_restarts: None,
        restart_delay_ms: None,
        stop: StopSpec {
            command: None,
            signals: vec![("SIGTERM".to_owned(), 2_000)],
            discard: None,
        },
        log: dir.join(".kip/logs").join(format!("{name}.log")),
        after: Vec::new(),
        reload: None,
        job: false,
        leaves: Vec::new(),
        instance: "test.main".to_owned(),
    }
}

/// Whether a supervisor answers on the socket of `kip_dir` (a blocking check, for use outside a runtime).
fn answers_a_ping(kip_dir: &Path) -> bool {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket_path(kip_dir)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut answer = String::new();
    stream.write_all(b"{\"v\":2,\"op\":\"ping\"}\n").is_ok()
        && BufReader::new(stream).read_line(&mut answer).is_ok()
        && answer.contains("\"ok\":true")
}

/// Asserts that a process is gone: not running and not a zombie (which would still have a `/proc` entry).
fn assert_gone(pid: u32) {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let deadline = Instant::now() + Duration::from_secs(2);
    while proc.exists() {
        if Instant::now() >= deadline {
            let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
            panic!("process {pid} is still there: {stat}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a live process (not a zombie) is in the process group `group`. Members other than the leader are
/// reparented to PID 1 when the leader dies, and in a container PID 1 may not reap them: zombies do not count.
fn group_exists(group: u32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        let Some(end) = stat.rfind(')') else {
            return false;
        };
        let fields: Vec<&str> = stat[end + 1..].split_whitespace().collect();
        fields.len() > 2 && fields[2] == group.to_string() && !matches!(fields[0], "Z" | "X")
    })
}

/// A loopback port nobody listens on right now.
/// A free loopback port no other test of this binary was given. The kernel offers a released port again, and
/// the tests here run at once: two of them handed the same port fail with "address in use".
fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    kip_core::engine::free_port(|port| !GIVEN.lock().unwrap().insert(port)).unwrap()
}

/// The Python interpreter itself (not a version manager's shim script in front of it).
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let output = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is installed");
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn probe_error(error: SupervisorError) -> RequestError {
    match error {
        SupervisorError::Request(error) => *error,
        other => panic!("expected an error from the supervisor, got {other:?}"),
    }
}

/// Asks for the status until `done` holds for the process `name`, for at most `within`.
async fn wait_for(
    client: &mut Client,
    name: &str,
    within: Duration,
    done: impl Fn(&ProcessStatus) -> bool,
) -> ProcessStatus {
    let deadline = Instant::now() + within;
    loop {
        let status = client
            .status()
            .await
            .unwrap()
            .into_iter()
            .find(|status| status.name == name);
        if let Some(status) = &status
            && done(status)
        {
            return status.clone();
        }
        assert!(
            Instant::now() < deadline,
            "`{name}` did not get there within {within:?}; last status: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn log_line_probe_gates_the_start_and_stop_reaps_the_whole_group() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let spec = daemon.script(
        "web",
        "sleep 0.3; echo 'ready now'; sleep 1000",
        ProbeKind::LogLine {
            pattern: "^ready now$".to_owned(),
        },
    );

    let clock = Instant::now();
    let status = client.start(spec.clone()).await.unwrap();
    let took = clock.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "answered before the line was printed: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "the probe took {took:?}");
    assert_eq!(status.state, ProcessState::Ready);
    assert_eq!(status.name, "web");
    assert_eq!(status.restarts, 0);
    assert_eq!(status.log, spec.log);
    assert_eq!(status.probe, spec.probe.kind);
    let started_at = status.started_at.unwrap();
    assert!(
        unix_millis() - started_at < 5_000,
        "started_at {started_at} is not recent"
    );
    let pid = status.pid.unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    // The same spec again is a no-op.
    let again = client.start(spec.clone()).await.unwrap();
    assert_eq!(again.pid, Some(pid));
    assert_eq!(client.status().await.unwrap(), vec![again]);

    client.stop("web").await.unwrap();
    assert_gone(pid);
    // The script's `sleep 1000` was in the group: it went too.
    assert!(!group_exists(pid), "process group {pid} survived the stop");
    assert_eq!(client.status().await.unwrap(), vec![]);

    // A new run is not ready on the previous run's line: the probe reads only what this run wrote.
    let clock = Instant::now();
    let status = client.start(spec.clone()).await.unwrap();
    assert!(
        clock.elapsed() >= Duration::from_millis(300),
        "ready on an old line after {:?}",
        clock.elapsed()
    );
    let second_pid = status.pid.unwrap();

    // Another spec under the same name replaces the running process.
    let mut changed = spec.clone();
    changed.args[1] = "echo 'ready now'; sleep 1000".to_owned();
    let replaced = client.start(changed).await.unwrap();
    assert_ne!(replaced.pid, Some(second_pid));
    assert_gone(second_pid);
    client.stop("web").await.unwrap();
    assert_gone(replaced.pid.unwrap());

    let log = std::fs::read_to_string(&spec.log).unwrap();
    assert_eq!(log.matches("ready now").count(), 3, "{log}");
}

/// The newest Valkey archive in the test mirror, unpacked into `into`; returns `valkey-server`.
fn unpack_valkey(into: &Path) -> PathBuf {
    let mirror = std::env::var_os("KIP_TEST_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/kip/test-mirror")
        });
    let mut archives: Vec<PathBuf> = std::fs::read_dir(mirror.join("valkey"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|version| {
            std::fs::read_dir(version.path().join("x86_64-unknown-linux-gnu"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.to_string_lossy().ends_with(".tar.gz"))
        .collect();
    archives.sort();
    let archive = archives.pop().unwrap_or_else(|| {
        panic!(
            "no Valkey archive under {}/valkey: build the test mirror with scripts/test-mirror.sh",
            mirror.display()
        )
    });
    std::fs::create_dir_all(into).unwrap();
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success(), "cannot unpack {}", archive.display());
    into.join("bin/valkey-server")
}

#[tokio::test]
async fn socket_probe_waits_for_valkey_to_listen() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let server = unpack_valkey(&daemon.path("valkey"));
    let socket = daemon.path("valkey.sock");
    let mut spec = daemon.script(
        "valkey.cache",
        "",
        ProbeKind::Socket {
            path: socket.clone(),
        },
    );
    spec.program = server;
    spec.args = [
        "--port",
        "0",
        "--unixsocket",
        &socket.to_string_lossy(),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(str::to_owned)
    .to_vec();

    let clock = Instant::now();
    let status = client.start(spec).await.unwrap();
    let took = clock.elapsed();
    assert_eq!(status.state, ProcessState::Ready);
    let mut connection = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    connection.write_all(b"PING\r\n").unwrap();
    let mut answer = [0; 7];
    connection.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"+PONG\r\n");
    drop(connection);

    let pid = status.pid.unwrap();
    let clock = Instant::now();
    client.stop("valkey.cache").await.unwrap();
    eprintln!(
        "valkey: start to ready {took:?}, stop {:?}",
        clock.elapsed()
    );
    assert_gone(pid);
}

#[tokio::test]
async fn tcp_and_http_probes_wait_for_a_python_http_server() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let server = |name: &str, port: u16, probe: ProbeKind| {
        let mut spec = daemon.script(name, "", probe);
        spec.program = python().to_owned();
        spec.args = vec![
            "-m".to_owned(),
            "http.server".to_owned(),
            port.to_string(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
            "--directory".to_owned(),
            daemon.dir.path().to_string_lossy().into_owned(),
        ];
        spec
    };

    let port = free_port();
    let tcp = client
        .start(server(
            "tcp",
            port,
            ProbeKind::Tcp {
                host: "127.0.0.1".to_owned(),
                port,
            },
        ))
        .await
        .unwrap();
    assert_eq!(tcp.state, ProcessState::Ready);
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("ready means listening");

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let http = client
        .start(server("http", port, ProbeKind::Http { url }))
        .await
        .unwrap();
    assert_eq!(http.state, ProcessState::Ready);

    // A server that answers, but not 2xx, is not ready.
    let port = free_port();
    let mut missing = server(
        "missing",
        port,
        ProbeKind::Http {
            url: format!("http://127.0.0.1:{port}/nothing-here"),
        },
    );
    missing.probe.timeout = Duration::from_millis(1_500);
    let error = probe_error(client.start(missing).await.unwrap_err());
    let RequestError::NotReady { probe, reason, .. } = &error else {
        panic!("{error:?}")
    };
    assert!(probe.starts_with("http ("), "{probe}");
    assert!(reason.contains("404"), "{reason}");

    for status in [tcp, http] {
        client.stop(&status.name).await.unwrap();
        assert_gone(status.pid.unwrap());
    }
}

#[tokio::test]
async fn exec_probe_runs_its_command_until_it_succeeds() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let socket = daemon.path("listener.sock");
    let mut spec = daemon.script(
        "listener",
        "",
        ProbeKind::Exec {
            command: vec![
                "test".to_owned(),
                "-S".to_owned(),
                socket.to_string_lossy().into_owned(),
            ],
        },
    );
    spec.program = python().to_owned();
    spec.args = vec![
        "-c".to_owned(),
        "import socket, sys, time\n\
         time.sleep(0.2)\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.bind(sys.argv[1])\n\
         s.listen()\n\
         time.sleep(1000)\n"
            .to_owned(),
        socket.to_string_lossy().into_owned(),
    ];
    let clock = Instant::now();
    let status = client.start(spec).await.unwrap();
    assert!(clock.elapsed() >= Duration::from_millis(200));
    assert_eq!(status.state, ProcessState::Ready);
    assert!(std::fs::symlink_metadata(&socket).is_ok());
    client.stop("listener").await.unwrap();
    assert_gone(status.pid.unwrap());
}

#[tokio::test]
async fn run_as_runs_the_process_and_its_exec_probe_as_that_account() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: only root can start processes as another account");
        return;
    }
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    // The probe passes only when it runs as the account too.
    let probe = ["sh", "-c", "test \"$(id -u)\" = 65534"]
        .map(str::to_owned)
        .to_vec();
    let mut spec = daemon.script(
        "unprivileged",
        "echo \"uid $(id -u) gid $(id -g)\"; exec sleep 1000",
        ProbeKind::Exec { command: probe },
    );
    // The test's temp dir is private to root; the log is opened by the supervisor, so it may stay there.
    spec.cwd = "/".into();
    spec.run_as = Some(RunAs {
        user: "nobody".to_owned(),
        uid: 65534,
        gid: 65534,
    });
    let status = client.start(spec.clone()).await.unwrap();
    let pid = status.pid.unwrap();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        proc_status.contains("\nUid:\t65534\t65534\t65534\t65534\n"),
        "{proc_status}"
    );
    // The probe can pass before the shell got to its echo: wait for the line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !std::fs::read_to_string(&spec.log)
        .unwrap()
        .contains("uid 65534 gid 65534")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the process logged its uid and gid"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    client.stop("unprivileged").await.unwrap();
    assert_gone(pid);
}

#[tokio::test]
async fn a_probe_that_never_passes_fails_the_start_with_the_log_tail_and_stops_the_process() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let port = free_port();
    let mut spec = daemon.script(
        "db",
        "echo \"pid $$\"; for i in $(seq 1 30); do echo \"noise $i\"; done; \
         echo 'FATAL: invalid value for parameter \"work_mem\"' >&2; sleep 1000",
        ProbeKind::Tcp {
            host: "127.0.0.1".to_owned(),
            port,
        },
    );
    spec.probe.interval = Duration::from_millis(50);
    spec.probe.timeout = Duration::from_millis(700);

    let clock = Instant::now();
    let error = client.start(spec.clone()).await.unwrap_err();
    let took = clock.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "failed after {took:?}, before the timeout"
    );
    assert!(
        took < Duration::from_millis(700 + 1_500),
        "failed after {took:?}"
    );
    let rendered = error.to_string();
    let hint = error.hint().unwrap();
    let error = probe_error(error);
    let RequestError::NotReady {
        name,
        probe,
        reason,
        waited_ms,
        log,
        tail,
    } = &error
    else {
        panic!("{error:?}")
    };
    assert_eq!(name, "db");
    assert_eq!(probe, &format!("tcp (127.0.0.1:{port})"));
    assert!(reason.contains("cannot connect"), "{reason}");
    assert!(*waited_ms >= 700);
    assert_eq!(log, &spec.log);
    assert_eq!(tail.len(), 20, "{tail:?}");
    assert_eq!(
        tail.last().unwrap(),
        "FATAL: invalid value for parameter \"work_mem\""
    );
    assert_eq!(tail[0], "noise 12");
    assert!(
        rendered.contains("`db` did not become ready: its tcp"),
        "{rendered}"
    );
    assert!(rendered.contains("| FATAL: invalid value"), "{rendered}");
    assert!(
        hint.contains(&spec.log.to_string_lossy().into_owned()),
        "{hint}"
    );

    // The process was stopped: its pid is the first line of the log.
    let whole = std::fs::read_to_string(&spec.log).unwrap();
    let pid: u32 = whole
        .lines()
        .find_map(|line| line.strip_prefix("pid "))
        .unwrap()
        .parse()
        .unwrap();
    assert_gone(pid);
    assert!(!group_exists(pid));
    let status = client.status().await.unwrap();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].pid, None);
    assert!(
        matches!(&status[0].state, ProcessState::Failed { reason } if reason.contains("did not become ready"))
    );

    // A process that dies before it is ready fails at once, with its last words.
    let spec = daemon.script(
        "crasher",
        "echo 'bind: address already in use' >&2; exit 3",
        ProbeKind::LogLine {
            pattern: "never".to_owned(),
        },
    );
    let clock = Instant::now();
    let error = probe_error(client.start(spec).await.unwrap_err());
    assert!(
        clock.elapsed() < Duration::from_secs(1),
        "took {:?}",
        clock.elapsed()
    );
    let RequestError::ExitedBeforeReady { exit, tail, .. } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(exit, "exited with code 3");
    assert_eq!(tail, &["bind: address already in use"]);
}

#[tokio::test]
async fn a_crash_is_restarted_with_on_failure_and_left_alone_with_no() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let crashing = |name: &str, exit: i32, restart: RestartPolicy, max_restarts: Option<u32>| {
        let mut spec = daemon.script(
            name,
            &format!("echo up; sleep 0.3; exit {exit}"),
            ProbeKind::LogLine {
                pattern: "^up$".to_owned(),
            },
        );
        spec.restart = restart;
        spec.max_restarts = max_restarts;
        spec
    };

    let first = client
        .start(crashing("on-failure", 1, RestartPolicy::OnFailure, None))
        .await
        .unwrap();
    let first_pid = first.pid.unwrap();
    client
        .start(crashing("no", 1, RestartPolicy::No, None))
        .await
        .unwrap();
    client
        .start(crashing("clean-exit", 0, RestartPolicy::OnFailure, None))
        .await
        .unwrap();
    client
        .start(crashing("limited", 1, RestartPolicy::Always, Some(1)))
        .await
        .unwrap();

    // Runs of 0.3 s with backoffs of 0.2 s then 0.4 s: the second restart is ready after about 1.4 s.
    let clock = Instant::now();
    let restarted = wait_for(
        &mut client,
        "on-failure",
        Duration::from_secs(5),
        |status| status.restarts >= 2 && status.state == ProcessState::Ready,
    )
    .await;
    eprintln!(
        "on-failure: two restarts and ready again after {:?}",
        clock.elapsed()
    );
    assert_ne!(restarted.pid, Some(first_pid));
    assert_gone(first_pid);

    let exited = wait_for(&mut client, "no", Duration::from_secs(3), |status| {
        !status.state.is_live()
    })
    .await;
    assert_eq!(
        exited.state,
        ProcessState::Exited {
            code: Some(1),
            signal: None
        }
    );
    assert_eq!((exited.pid, exited.restarts), (None, 0));

    let clean = wait_for(
        &mut client,
        "clean-exit",
        Duration::from_secs(3),
        |status| !status.state.is_live(),
    )
    .await;
    assert_eq!(
        clean.state,
        ProcessState::Exited {
            code: Some(0),
            signal: None
        }
    );
    assert_eq!(clean.restarts, 0);

    let limited = wait_for(&mut client, "limited", Duration::from_secs(5), |status| {
        !status.state.is_live()
    })
    .await;
    assert_eq!(limited.restarts, 1);
    assert!(
        matches!(&limited.state, ProcessState::Failed { reason } if reason.contains("max_restarts")),
        "{limited:?}"
    );

    let log = std::fs::read_to_string(daemon.kip_dir.join("logs/on-failure.log")).unwrap();
    assert!(
        log.contains("[kip supervisor] on-failure: exited with code 1; restarting in 200 ms"),
        "{log}"
    );
    assert!(log.contains("restarting in 400 ms"), "{log}");
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_each_signal_times_out() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;

    let mut stubborn = daemon.script(
        "stubborn",
        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
        ProbeKind::LogLine {
            pattern: "ready".to_owned(),
        },
    );
    stubborn.stop = StopSpec {
        command: None,
        signals: vec![("SIGTERM".to_owned(), 500)],
        discard: None,
    };
    let pid = client.start(stubborn).await.unwrap().pid.unwrap();
    let clock = Instant::now();
    client.stop("stubborn").await.unwrap();
    let took = clock.elapsed();
    eprintln!("ignoring SIGTERM: stopped after {took:?} (SIGTERM wait 500 ms)");
    assert!(
        took >= Duration::from_millis(500),
        "stopped after {took:?}, before SIGTERM's wait ran out"
    );
    assert!(
        took < Duration::from_millis(500 + 1_000),
        "stopped after {took:?}"
    );
    assert_gone(pid);
    assert!(!group_exists(pid));

    // The next signal in the sequence works: stopped by SIGTERM, long before its wait and SIGKILL.
    let mut ignores_int = daemon.script(
        "ignores-int",
        "trap '' INT; echo ready; while :; do sleep 0.05; done",
        ProbeKind::LogLine {
            pattern: "ready".to_owned(),
        },
    );
    ignores_int.stop = StopSpec {
        command: None,
        signals: vec![("SIGINT".to_owned(), 300), ("SIGTERM".to_owned(), 5_000)],
        discard: None,
    };
    let pid = client.start(ignores_int).await.unwrap().pid.unwrap();
    let clock = Instant::now();
    client.stop("ignores-int").await.unwrap();
    let took = clock.elapsed();
    eprintln!("ignoring SIGINT: stopped by SIGTERM after {took:?} (SIGINT wait 300 ms)");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(300 + 1_000),
        "{took:?}"
    );
    assert_gone(pid);

    let error = probe_error(client.stop("ignores-int").await.unwrap_err());
    assert_eq!(
        error,
        RequestError::UnknownProcess {
            name: "ignores-int".to_owned()
        }
    );
}

/// A stop whose data goes right after (kip destroy) uses the spec's discard signal, skipping the stop command and
/// the ordinary signals; an ordinary stop of the same spec never sends it. Each trap writes which signal came. (The
/// discard signal here is SIGUSR1, not PostgreSQL's SIGQUIT: the shell's `sleep` would dump core on SIGQUIT, which
/// a machine that pipes core dumps to a helper makes slow.)
#[tokio::test]
async fn a_discard_stop_sends_the_discard_signal_and_skips_the_stop_command() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let spec = |name: &str| {
        let said = daemon.path(&format!("{name}.said"));
        let mut spec = daemon.script(
            name,
            &format!(
                "trap 'echo term >> {said}; exit 0' TERM; trap 'echo usr1 >> {said}; exit 0' USR1; \
                 echo ready; while :; do sleep 0.05; done",
                said = said.display()
            ),
            log_line("^ready$"),
        );
        spec.stop = StopSpec {
            command: Some(StopCommand {
                command: vec![
                    "/bin/sh".to_owned(),
                    "-c".to_owned(),
                    format!("echo command >> {}", said.display()),
                ],
                wait_ms: 200,
            }),
            signals: vec![("SIGTERM".to_owned(), 5_000)],
            discard: Some(("SIGUSR1".to_owned(), 5_000)),
        };
        (spec, said)
    };

    let (discarded, said) = spec("discarded");
    let pid = client.start(discarded).await.unwrap().pid.unwrap();
    client.discard("discarded").await.unwrap();
    assert_gone(pid);
    assert!(!group_exists(pid));
    assert_eq!(std::fs::read_to_string(&said).unwrap(), "usr1\n");

    let (stopped, said) = spec("stopped");
    let pid = client.start(stopped).await.unwrap().pid.unwrap();
    client.stop("stopped").await.unwrap();
    assert_gone(pid);
    assert_eq!(std::fs::read_to_string(&said).unwrap(), "command\nterm\n");

    // A spec without a discard step is stopped as usual by a discard request.
    let (mut plain, said) = spec("plain");
    plain.stop.discard = None;
    let pid = client.start(plain).await.unwrap().pid.unwrap();
    client.discard("plain").await.unwrap();
    assert_gone(pid);
    assert_eq!(std::fs::read_to_string(&said).unwrap(), "command\nterm\n");
}

/// Files a process leaves outside its directories (`leaves`: SeaweedFS's sockets in /tmp) are removed before each
/// spawn (a stale one would be in the way), after a stop, and after a discard, which runs no stop command; a file
/// of another account at such a path is left alone.
#[tokio::test]
async fn files_a_process_leaves_are_removed_before_a_spawn_and_after_a_stop_or_a_discard() {
    use std::os::unix::fs::MetadataExt as _;
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let outside = tempfile::tempdir().unwrap();
    let left = outside.path().join("left.sock");
    let spec = |name: &str| {
        let mut spec = daemon.script(
            name,
            &format!(
                "if [ -e '{left}' ]; then echo 'a stale file is in the way'; exit 1; fi\n\
                 touch '{left}'; echo ready; while :; do sleep 0.05; done",
                left = left.display()
            ),
            log_line("^ready$"),
        );
        spec.stop.discard = Some(("SIGKILL".to_owned(), 0));
        spec.leaves = vec![left.clone()];
        spec
    };

    // A file of an earlier run is gone before the spawn; the process's own is gone after the stop.
    std::fs::write(&left, "stale").unwrap();
    client.start(spec("stopped")).await.unwrap();
    assert!(left.exists());
    client.stop("stopped").await.unwrap();
    assert!(!left.exists(), "left behind after a stop");

    // A discard (SIGKILL: the process cleans up nothing) removes it too.
    let pid = client.start(spec("discarded")).await.unwrap().pid.unwrap();
    client.discard("discarded").await.unwrap();
    assert_gone(pid);
    assert!(!left.exists(), "left behind after a discard");

    // Another account's file at that path stays (and this process then cannot start: its own rule).
    if rustix::process::geteuid().is_root() {
        std::fs::write(&left, "theirs").unwrap();
        std::os::unix::fs::chown(&left, Some(65534), Some(65534)).unwrap();
        let error = client.start(spec("blocked")).await.unwrap_err();
        assert!(error.to_string().contains("exited"), "{error}");
        assert_eq!(std::fs::metadata(&left).unwrap().uid(), 65534);
        let _ = client.stop("blocked").await;
        assert_eq!(std::fs::read_to_string(&left).unwrap(), "theirs");
    }

    // A relative path is refused before anything runs.
    let mut relative = spec("relative");
    relative.leaves = vec![PathBuf::from("left.sock")];
    let error = client.start(relative).await.unwrap_err();
    assert!(
        error.to_string().contains("not an absolute path"),
        "{error}"
    );
}

#[tokio::test]
async fn shutdown_stops_everything_newest_first_and_removes_the_socket() {
    let mut daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    assert_eq!(client.daemon().pid, std::process::id());
    let order = daemon.path("order");
    let mut pids = Vec::new();
    for name in ["first", "second"] {
        let script = format!(
            "trap 'echo {name} >> {order}; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
            order = order.display()
        );
        let spec = daemon.script(
            name,
            &script,
            ProbeKind::LogLine {
                pattern: "ready".to_owned(),
            },
        );
        pids.push(client.start(spec).await.unwrap().pid.unwrap());
    }
    let pid_file = pid_file_path(&daemon.kip_dir);
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        std::process::id().to_string()
    );

    let clock = Instant::now();
    client.shutdown().await.unwrap();
    eprintln!("shutdown of two processes: {:?}", clock.elapsed());
    for pid in pids {
        assert_gone(pid);
    }
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "second\nfirst\n");
    assert!(!socket_path(&daemon.kip_dir).exists());
    assert!(!pid_file.exists());
    assert!(Client::connect(&daemon.kip_dir).await.unwrap().is_none());
    daemon.join().unwrap();
}

/// Sends a raw line on a connection and returns the parsed answer; `None` when the daemon closed the connection.
async fn exchange(
    stream: &mut tokio::io::BufReader<tokio::net::UnixStream>,
    line: &[u8],
) -> Option<Value> {
    stream.get_mut().write_all(line).await.unwrap();
    let mut answer = String::new();
    if stream.read_line(&mut answer).await.unwrap() == 0 {
        return None;
    }
    Some(serde_json::from_str(&answer).unwrap())
}

#[tokio::test]
async fn malformed_requests_get_error_answers_and_the_daemon_keeps_serving() {
    let daemon = TestDaemon::start();
    let socket = socket_path(&daemon.kip_dir);
    let mut stream =
        tokio::io::BufReader::new(tokio::net::UnixStream::connect(&socket).await.unwrap());

    let bad_regex = serde_json::to_value(daemon.script(
        "bad",
        "true",
        ProbeKind::LogLine {
            pattern: "(".to_owned(),
        },
    ))
    .unwrap();
    let start_bad_regex = format!("{}\n", json!({"v": 2, "op": "start", "spec": bad_regex}));
    let cases: [(&[u8], &str); 7] = [
        (b"this is not json\n", "bad_request"),
        (b"[1, 2]\n", "bad_request"),
        (b"{\"op\":\"status\"}\n", "bad_request"),
        (b"{\"v\":1,\"op\":\"status\"}\n", "unsupported_version"),
        (b"{\"v\":2,\"op\":\"launch\"}\n", "bad_request"),
        (
            b"{\"v\":2,\"op\":\"start\",\"spec\":{\"name\":\"x\"}}\n",
            "bad_request",
        ),
        (start_bad_regex.as_bytes(), "invalid_spec"),
    ];
    for (line, kind) in cases {
        let answer = exchange(&mut stream, line).await.expect("an answer");
        assert_eq!(answer["v"], 2, "{answer}");
        assert_eq!(answer["ok"], false, "{answer}");
        assert_eq!(
            answer["error"]["kind"],
            kind,
            "{} -> {answer}",
            String::from_utf8_lossy(line)
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|message| !message.is_empty()),
            "{answer}"
        );
    }
    // The same connection still works.
    let answer = exchange(&mut stream, b"{\"v\":2,\"op\":\"status\"}\n")
        .await
        .unwrap();
    assert_eq!(answer, json!({"v": 2, "ok": true, "result": []}));

    // A line over the limit is refused, and the next request on the connection is served.
    let mut huge = vec![b'x'; 3 << 20];
    huge.push(b'\n');
    let answer = exchange(&mut stream, &huge).await.unwrap();
    assert_eq!(answer["error"]["kind"], "bad_request");
    let answer = exchange(&mut stream, b"{\"v\":2,\"op\":\"status\"}\n").await;
    assert_eq!(answer.unwrap()["ok"], true);

    let mut client = daemon.client().await;
    assert_eq!(client.status().await.unwrap(), vec![]);
    let info = client.ping().await.unwrap();
    assert_eq!((info.pid, info.protocol), (std::process::id(), 2));
}

#[tokio::test]
async fn a_second_supervisor_is_refused_and_a_stale_socket_is_replaced() {
    let daemon = TestDaemon::start();
    let error = run_daemon_with(
        &daemon.kip_dir,
        DaemonOptions {
            handle_signals: false,
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, SupervisorError::AlreadyRunning { pid: Some(pid), .. } if *pid == std::process::id()),
        "{error:?}"
    );
    assert!(error.hint().is_some());
    // The refused one did not touch the running one's files.
    let mut client = daemon.client().await;
    client.ping().await.unwrap();
    assert!(pid_file_path(&daemon.kip_dir).exists());

    // A socket file that nobody listens on (a supervisor that was killed) is replaced.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".kip")).unwrap();
    drop(std::os::unix::net::UnixListener::bind(socket_path(&dir.path().join(".kip"))).unwrap());
    assert!(
        Client::connect(&dir.path().join(".kip"))
            .await
            .unwrap()
            .is_none()
    );
    let stale = TestDaemon::start_in(dir);
    stale.client().await.ping().await.unwrap();
}

#[tokio::test]
async fn after_waits_for_its_dependencies_and_starts_run_in_parallel() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let mut follower = daemon.script(
        "follower",
        "echo ready; sleep 1000",
        ProbeKind::LogLine {
            pattern: "ready".into(),
        },
    );
    follower.after = vec!["leader".to_owned()];
    let error = probe_error(client.start(follower.clone()).await.unwrap_err());
    assert!(
        matches!(&error, RequestError::DependencyNotReady { dependency, .. } if dependency == "leader")
    );

    // Two slow starts on two connections run at the same time; the follower waits for its leader.
    let leader = daemon.script(
        "leader",
        "sleep 1; echo ready; sleep 1000",
        ProbeKind::LogLine {
            pattern: "ready".into(),
        },
    );
    let other = daemon.script(
        "other",
        "sleep 1; echo ready; sleep 1000",
        ProbeKind::LogLine {
            pattern: "ready".into(),
        },
    );
    let mut second = daemon.client().await;
    let mut third = daemon.client().await;
    let clock = Instant::now();
    let (leader, other, follower) =
        tokio::join!(client.start(leader), second.start(other), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            third.start(follower).await
        });
    let took = clock.elapsed();
    assert_eq!(leader.unwrap().state, ProcessState::Ready);
    assert_eq!(other.unwrap().state, ProcessState::Ready);
    assert_eq!(follower.unwrap().state, ProcessState::Ready);
    // One after the other, the two would take 2 s at least: well under that rules it out, with room for a loaded
    // machine's spawns and probes.
    assert!(
        took < Duration::from_millis(1700),
        "two 1 s starts in parallel took {took:?}"
    );
}

/// Not a test of its own: the daemon program of `start_daemon_runs_a_detached_supervisor`, which runs this test
/// binary with the filter `supervisor_daemon_entry` and an argument `kip-supervisor-dir=DIR`. Without that argument
/// (a normal test run) it does nothing.
#[test]
fn supervisor_daemon_entry() {
    let Some(kip_dir) =
        std::env::args().find_map(|arg| arg.strip_prefix("kip-supervisor-dir=").map(PathBuf::from))
    else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run_daemon(&kip_dir)).unwrap();
}

/// Shuts a detached supervisor down when dropped: by request, else with SIGTERM (it stops its processes on that).
struct DetachedGuard {
    kip_dir: PathBuf,
    pid: Option<u32>,
}

impl Drop for DetachedGuard {
    fn drop(&mut self) {
        if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket_path(&self.kip_dir))
        {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            if stream.write_all(b"{\"v\":2,\"op\":\"shutdown\"}\n").is_ok()
                && BufReader::new(stream)
                    .read_line(&mut String::new())
                    .is_ok_and(|read| read > 0)
            {
                return;
            }
        }
        if let Some(pid) = self.pid.and_then(|pid| Pid::from_raw(pid as i32)) {
            let _ = rustix::process::kill_process(pid, Signal::TERM);
        }
    }
}

#[tokio::test]
async fn start_daemon_runs_a_detached_supervisor() {
    let dir = tempfile::tempdir().unwrap();
    let kip_dir = dir.path().join(".kip");
    assert!(Client::connect(&kip_dir).await.unwrap().is_none());
    let exe = std::env::current_exe().unwrap();
    let dir_argument = format!("kip-supervisor-dir={}", kip_dir.display());
    let mut guard = DetachedGuard {
        kip_dir: kip_dir.clone(),
        pid: None,
    };

    let clock = Instant::now();
    let mut client = Client::start_daemon(
        &kip_dir,
        &exe,
        &[
            "supervisor_daemon_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            &dir_argument,
        ],
    )
    .await
    .unwrap();
    eprintln!("start_daemon: answering after {:?}", clock.elapsed());
    let pid = client.daemon().pid;
    guard.pid = Some(pid);
    assert_ne!(pid, std::process::id());
    assert_eq!(
        std::fs::read_to_string(pid_file_path(&kip_dir))
            .unwrap()
            .trim(),
        pid.to_string()
    );
    // Its own process group: a Ctrl-C for the terminal's foreground group does not reach it.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let process_group: u32 = after_name.split(' ').nth(2).unwrap().parse().unwrap();
    assert_eq!(process_group, pid);

    let spec = SpawnSpec {
        name: "sleeper".to_owned(),
        program: "/bin/sh".into(),
        args: vec!["-c".to_owned(), "echo ready; exec sleep 1000".to_owned()],
        env: BTreeMap::new(),
        cwd: dir.path().to_owned(),
        run_as: None,
        probe: Probe {
            kind: ProbeKind::LogLine {
                pattern: "ready".to_owned(),
            },
            initial_delay: Duration::ZERO,
            interval: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
            retries: None,
        },
        restart: RestartPolicy::OnFailure,
        max_restarts: None,
        restart_delay_ms: None,
        stop: StopSpec::default(),
        log: kip_dir.join("logs/sleeper.log"),
        after: Vec::new(),
        reload: None,
        job: false,
        leaves: Vec::new(),
        instance: String::new(),
    };
    let sleeper = client.start(spec).await.unwrap().pid.unwrap();
    // A second start_daemon finds the running one rather than starting another.
    let second = Client::connect_or_start(&kip_dir, &exe, &["--this-would-fail"])
        .await
        .unwrap();
    assert_eq!(second.daemon().pid, pid);

    // SIGTERM (a user's `kill`) stops it as a shutdown request does (which the in-thread tests cover).
    drop((client, second));
    rustix::process::kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::TERM).unwrap();
    // The sleeper was the daemon's child, so the daemon reaped it; the daemon itself is this process's child,
    // reaped by tokio once it exits.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{sleeper}")).exists()
        || Path::new(&format!("/proc/{pid}")).exists()
    {
        assert!(
            Instant::now() < deadline,
            "the supervisor {pid} or its process {sleeper} is still there"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!socket_path(&kip_dir).exists());
    assert!(!pid_file_path(&kip_dir).exists());
    assert!(Client::connect(&kip_dir).await.unwrap().is_none());
    let log = std::fs::read_to_string(kip_dir.join("logs/supervisor.log")).unwrap();
    assert!(log.contains("supervisor_daemon_entry"), "{log}");
}

#[tokio::test]
async fn start_daemon_quotes_the_log_of_a_supervisor_that_dies() {
    let dir = tempfile::tempdir().unwrap();
    let kip_dir = dir.path().join(".kip");
    let clock = Instant::now();
    let error = Client::start_daemon(
        &kip_dir,
        Path::new("/bin/sh"),
        &[
            "-c",
            "echo 'error: cannot create .kip/supervisor.sock: permission denied' >&2; exit 7",
        ],
    )
    .await
    .unwrap_err();
    assert!(
        clock.elapsed() < Duration::from_secs(2),
        "took {:?}",
        clock.elapsed()
    );
    let SupervisorError::DaemonDidNotStart { exit, tail, .. } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(exit.as_deref(), Some("exited with code 7"));
    assert_eq!(
        tail,
        &["error: cannot create .kip/supervisor.sock: permission denied"]
    );
    assert!(
        error.to_string().contains("| error: cannot create"),
        "{error}"
    );
}

// A supervisor that survives its own crash: adoption, the persisted table, and the checks that keep a name from
// ever running twice.

/// The start time of `pid` in clock ticks since boot (`/proc/PID/stat` field 22), if it exists.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether `pid` exists and is not a zombie.
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat[stat.rfind(')')? + 1..].split_whitespace().next()?;
            Some(!matches!(state, "Z" | "X"))
        })
        .unwrap_or(false)
}

/// Asserts that `pid` stops running within 5 s. A process whose supervisor was killed is reparented to PID 1,
/// which in a container may never reap it: its zombie counts as stopped.
fn assert_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_running(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} still runs: {}",
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " ")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How many running processes have `marker` in their command line.
fn count_running_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
                && is_running(*pid)
        })
        .count()
}

/// The process groups a test's supervisors started, killed (SIGKILL) when the test ends, passed or failed:
/// processes whose supervisor a test killed belong to nobody. A group is killed only while its leader runs with
/// the start time it had, so a pid the kernel reused in the meantime is left alone.
#[derive(Default)]
struct Groups(Vec<(u32, u64)>);

impl Groups {
    fn add(&mut self, pid: u32) -> u32 {
        if let Some(started) = start_time(pid) {
            self.0.push((pid, started));
        }
        pid
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        for &(pid, started) in &self.0 {
            if start_time(pid) == Some(started)
                && let Some(group) = Pid::from_raw(pid as i32)
            {
                let _ = rustix::process::kill_process_group(group, Signal::KILL);
            }
        }
    }
}

/// A child of the test process that is killed and reaped when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The arguments that make this test binary a supervisor for `kip_dir` (see [`supervisor_daemon_entry`]).
fn daemon_args(kip_dir: &Path) -> Vec<String> {
    vec![
        "supervisor_daemon_entry".to_owned(),
        "--exact".to_owned(),
        "--nocapture".to_owned(),
        "--test-threads=1".to_owned(),
        format!("kip-supervisor-dir={}", kip_dir.display()),
    ]
}

/// Starts a detached supervisor (this test binary) for `kip_dir`; the guard shuts it down when dropped.
async fn start_detached(kip_dir: &Path) -> (Client, DetachedGuard) {
    let args = daemon_args(kip_dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = Client::start_daemon(kip_dir, &std::env::current_exe().unwrap(), &args)
        .await
        .unwrap();
    let guard = DetachedGuard {
        kip_dir: kip_dir.to_owned(),
        pid: Some(client.daemon().pid),
    };
    (client, guard)
}

/// [`Client::connect_or_adopt`] with this test binary as the supervisor program.
async fn connect_or_adopt(kip_dir: &Path) -> Option<Client> {
    let args = daemon_args(kip_dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Client::connect_or_adopt(kip_dir, &std::env::current_exe().unwrap(), &args)
        .await
        .unwrap()
}

/// SIGKILLs a detached supervisor and waits until it is dead; its guard has nothing left to stop.
///
/// Dead means its socket refuses connections: the main thread of a killed process can be a zombie while its other
/// threads still exit, with the files they share (the listening socket, the lock) still open.
fn kill_supervisor(guard: &mut DetachedGuard) {
    let pid = guard.pid.take().expect("a supervisor to kill");
    rustix::process::kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL).unwrap();
    assert_stopped(pid);
    let socket = socket_path(&guard.kip_dir);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the killed supervisor's socket still accepts"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The processes the persisted table lists: name, pid and start time.
fn table_processes(kip_dir: &Path) -> Vec<(String, Option<u64>, Option<u64>)> {
    let table: Value =
        serde_json::from_slice(&std::fs::read(kip_dir.join("supervisor/table.json")).unwrap())
            .unwrap();
    table["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|process| {
            (
                process["name"].as_str().unwrap().to_owned(),
                process["pid"].as_u64(),
                process["start_time"].as_u64(),
            )
        })
        .collect()
}

fn log_line(pattern: &str) -> ProbeKind {
    ProbeKind::LogLine {
        pattern: pattern.to_owned(),
    }
}

#[tokio::test]
async fn a_killed_supervisors_processes_are_adopted_and_never_run_twice() {
    let mut groups = Groups::default();
    let dir = tempfile::tempdir().unwrap();
    let kip_dir = dir.path().join(".kip");
    let marker = format!(
        "kip-marker-{}",
        dir.path().file_name().unwrap().to_string_lossy()
    );
    let (mut first, mut first_guard) = start_detached(&kip_dir).await;
    // A shell with a child in its group, to see that a stop reaches the whole group of an adopted process.
    let web = script_spec(
        dir.path(),
        "web",
        &format!(": {marker}-web; sleep 1000 & echo $! > web.child; echo ready; wait"),
        log_line("^ready$"),
    );
    let other = script_spec(
        dir.path(),
        "other",
        &format!(": {marker}-other; echo ready; while :; do sleep 0.05; done"),
        log_line("^ready$"),
    );
    let started = first.start(web.clone()).await.unwrap();
    let web_pid = groups.add(started.pid.unwrap());
    assert!(!started.adopted);
    assert_eq!(started.start_time, start_time(web_pid));
    assert_eq!(started.instance, "test.main");
    let other_pid = groups.add(first.start(other.clone()).await.unwrap().pid.unwrap());
    let child: u32 = std::fs::read_to_string(dir.path().join("web.child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // The supervisor is killed: its processes run on, unsupervised, and the table it left names them.
    let first_pid = first.daemon().pid;
    drop(first);
    kill_supervisor(&mut first_guard);
    assert!(is_running(web_pid) && is_running(child) && is_running(other_pid));
    assert_eq!(
        table_processes(&kip_dir),
        [
            (
                "web".to_owned(),
                Some(u64::from(web_pid)),
                start_time(web_pid)
            ),
            (
                "other".to_owned(),
                Some(u64::from(other_pid)),
                start_time(other_pid)
            ),
        ]
    );
    assert!(Client::connect(&kip_dir).await.unwrap().is_none());

    // A command that finds no supervisor, but live processes in the table, starts one, which adopts them.
    let mut client = connect_or_adopt(&kip_dir)
        .await
        .expect("a supervisor that adopted the processes");
    let mut second_guard = DetachedGuard {
        kip_dir: kip_dir.clone(),
        pid: Some(client.daemon().pid),
    };
    assert_ne!(client.daemon().pid, first_pid);
    let status = client.status().await.unwrap();
    let seen: Vec<_> = status
        .iter()
        .map(|status| {
            (
                status.name.as_str(),
                status.pid,
                status.start_time,
                status.adopted,
                &status.state,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "web",
                Some(web_pid),
                start_time(web_pid),
                true,
                &ProcessState::Ready
            ),
            (
                "other",
                Some(other_pid),
                start_time(other_pid),
                true,
                &ProcessState::Ready
            ),
        ]
    );

    // Starting the same spec again spawns nothing: one process with that command line runs, the adopted one.
    let again = client.start(web.clone()).await.unwrap();
    assert_eq!((again.pid, again.adopted), (Some(web_pid), true));
    assert_eq!(count_running_with(&format!("{marker}-web")), 1);

    // A stop stops the adopted process's whole group, and forgets it.
    client.stop("web").await.unwrap();
    assert_stopped(web_pid);
    assert_stopped(child);
    assert!(!group_exists(web_pid));
    assert_eq!(
        table_processes(&kip_dir)
            .into_iter()
            .map(|(name, ..)| name)
            .collect::<Vec<_>>(),
        ["other"]
    );

    // A shutdown stops the adopted ones too.
    client.shutdown().await.unwrap();
    second_guard.pid = None;
    assert_stopped(other_pid);
    assert_eq!(count_running_with(&marker), 0);
    assert_eq!(table_processes(&kip_dir), []);
    assert!(!socket_path(&kip_dir).exists());
}

#[tokio::test]
async fn an_adopted_process_is_restarted_when_it_exits_and_replaced_only_once_stopped() {
    let mut groups = Groups::default();
    let dir = tempfile::tempdir().unwrap();
    let kip_dir = dir.path().join(".kip");
    let (mut first, mut first_guard) = start_detached(&kip_dir).await;
    // Takes 0.3 s to stop, and says when it did.
    let service = script_spec(
        dir.path(),
        "service",
        "trap 'sleep 0.3; echo old-stopped >> order; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
        log_line("^ready$"),
    );
    // Exits with 0 once `done` exists.
    let mut job = script_spec(
        dir.path(),
        "job",
        "echo ready; while [ ! -e done ]; do sleep 0.02; done; rm done; exit 0",
        log_line("^ready$"),
    );
    job.restart = RestartPolicy::OnFailure;
    let service_pid = groups.add(first.start(service.clone()).await.unwrap().pid.unwrap());
    let job_pid = groups.add(first.start(job.clone()).await.unwrap().pid.unwrap());
    drop(first);
    kill_supervisor(&mut first_guard);

    let daemon = TestDaemon::start_in(dir);
    let mut client = daemon.client().await;
    assert!(
        client
            .status()
            .await
            .unwrap()
            .iter()
            .all(|status| status.adopted)
    );

    // An adopted process's exit status is unknown: its exit counts as a failure, and on-failure restarts it.
    std::fs::write(daemon.path("done"), "").unwrap();
    let restarted = wait_for(&mut client, "job", Duration::from_secs(5), |status| {
        status.restarts == 1 && status.state == ProcessState::Ready
    })
    .await;
    groups.add(restarted.pid.unwrap());
    assert_ne!(restarted.pid, Some(job_pid));
    assert!(!restarted.adopted);
    assert_eq!(restarted.start_time, start_time(restarted.pid.unwrap()));
    assert_stopped(job_pid);
    let log = std::fs::read_to_string(&job.log).unwrap();
    assert!(log.contains("its exit status is unknown"), "{log}");

    // Another spec under the adopted name: the old process is stopped (which takes it 0.3 s) before the new one
    // is spawned.
    let mut changed = service.clone();
    changed.args[1] = "echo new-started >> order; echo ready; exec sleep 1000".to_owned();
    let replaced = client.start(changed).await.unwrap();
    groups.add(replaced.pid.unwrap());
    assert_ne!(replaced.pid, Some(service_pid));
    assert!(!replaced.adopted);
    assert_stopped(service_pid);
    assert_eq!(
        std::fs::read_to_string(daemon.path("order")).unwrap(),
        "old-stopped\nnew-started\n"
    );
}

#[tokio::test]
async fn a_supervisor_killed_during_a_start_leaves_the_process_to_the_next_one() {
    let mut groups = Groups::default();
    let dir = tempfile::tempdir().unwrap();
    let kip_dir = dir.path().join(".kip");
    let (first, mut first_guard) = start_detached(&kip_dir).await;
    let mut second = Client::connect(&kip_dir).await.unwrap().unwrap();
    // Ready once `go` exists.
    let mut slow = script_spec(
        dir.path(),
        "slow",
        "while [ ! -e go ]; do sleep 0.02; done; echo ready; exec sleep 1000",
        log_line("^ready$"),
    );
    slow.probe.timeout = Duration::from_secs(30);
    // Never ready.
    let mut doomed = script_spec(dir.path(), "doomed", "exec sleep 1000", log_line("^never$"));
    doomed.probe.timeout = Duration::from_millis(1_500);
    let slow_start = tokio::spawn({
        let mut first = first;
        async move { first.start(slow).await }
    });
    let doomed_start = tokio::spawn(async move { second.start(doomed).await });

    // Both pids are in the table while the probes still wait.
    let deadline = Instant::now() + Duration::from_secs(5);
    let pids = loop {
        let recorded: BTreeMap<String, u32> = table_processes(&kip_dir)
            .into_iter()
            .filter_map(|(name, pid, start)| {
                start?;
                Some((name, u32::try_from(pid?).ok()?))
            })
            .collect();
        if recorded.len() == 2 {
            break recorded;
        }
        assert!(
            Instant::now() < deadline,
            "the table does not list both: {recorded:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (slow_pid, doomed_pid) = (groups.add(pids["slow"]), groups.add(pids["doomed"]));
    kill_supervisor(&mut first_guard);
    assert!(slow_start.await.unwrap().is_err());
    assert!(doomed_start.await.unwrap().is_err());
    assert!(is_running(slow_pid) && is_running(doomed_pid));

    let mut client = connect_or_adopt(&kip_dir).await.expect("a supervisor");
    let _second_guard = DetachedGuard {
        kip_dir: kip_dir.clone(),
        pid: Some(client.daemon().pid),
    };
    let status = client.status().await.unwrap();
    let slow_status = status.iter().find(|status| status.name == "slow").unwrap();
    assert_eq!(
        (slow_status.pid, slow_status.adopted, &slow_status.state),
        (Some(slow_pid), true, &ProcessState::Starting)
    );

    // The adopted process's probe runs again: it becomes ready, as the same process.
    std::fs::write(dir.path().join("go"), "").unwrap();
    let ready = client
        .wait("slow", WaitUntil::Ready, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (ready.pid, ready.adopted, ready.state),
        (Some(slow_pid), true, ProcessState::Ready)
    );
    // The one that never passes its probe is stopped, not left running.
    let failed = client
        .wait("doomed", WaitUntil::Exited, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        matches!(&failed.state, ProcessState::Failed { reason } if reason.contains("did not become ready")),
        "{failed:?}"
    );
    assert_stopped(doomed_pid);

    client.shutdown().await.unwrap();
    assert_stopped(slow_pid);
}

#[tokio::test]
async fn the_leftovers_of_a_group_whose_leader_died_unsupervised_are_stopped() {
    let mut groups = Groups::default();
    let dir = tempfile::tempdir().unwrap();
    let kip_dir = dir.path().join(".kip");
    let (mut first, mut first_guard) = start_detached(&kip_dir).await;
    let web = script_spec(
        dir.path(),
        "web",
        "sleep 1000 & echo $! > web.child; echo ready; wait",
        log_line("^ready$"),
    );
    let web_pid = groups.add(first.start(web.clone()).await.unwrap().pid.unwrap());
    let child: u32 = std::fs::read_to_string(dir.path().join("web.child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(first);
    kill_supervisor(&mut first_guard);
    // Then its leader dies too, leaving its child behind in the group.
    rustix::process::kill_process(Pid::from_raw(web_pid as i32).unwrap(), Signal::KILL).unwrap();
    assert_stopped(web_pid);
    assert!(is_running(child));

    let daemon = TestDaemon::start_in(dir);
    let mut client = daemon.client().await;
    assert_stopped(child);
    assert_eq!(client.status().await.unwrap(), vec![]);
    let log = std::fs::read_to_string(&web.log).unwrap();
    assert!(log.contains("exited while no supervisor ran"), "{log}");
    // The name starts afresh.
    let restarted = client.start(web).await.unwrap();
    groups.add(restarted.pid.unwrap());
    assert!(!restarted.adopted);
}

/// A service that makes `left` (outside its directories) before it is ready, and names it in its `leaves`.
fn leaving_service(dir: &Path, left: &Path) -> SpawnSpec {
    let mut service = script_spec(
        dir,
        "service",
        &format!(
            "touch '{}'; echo ready; while :; do sleep 0.05; done",
            left.display()
        ),
        log_line("^ready$"),
    );
    service.leaves = vec![left.to_owned()];
    service
}

/// A supervisor killed, and then its process killed too, while no supervisor ran: the next supervisor finds the
/// record of a process that is gone and removes the files it left outside its directories (a destroy that follows
/// spawns nothing that would remove them).
#[tokio::test]
async fn the_files_of_a_process_that_died_unsupervised_are_removed_by_the_next_supervisor() {
    let mut groups = Groups::default();
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let left = outside.path().join("left.sock");
    let kip_dir = dir.path().join(".kip");
    let (mut first, mut first_guard) = start_detached(&kip_dir).await;
    let service = leaving_service(dir.path(), &left);
    let pid = groups.add(first.start(service).await.unwrap().pid.unwrap());
    drop(first);
    kill_supervisor(&mut first_guard);
    rustix::process::kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL).unwrap();
    assert_stopped(pid);
    assert!(left.exists());

    let daemon = TestDaemon::start_in(dir);
    let mut client = daemon.client().await;
    // A status answers once the records of the killed supervisor are dealt with.
    assert_eq!(client.status().await.unwrap(), vec![]);
    assert!(
        !left.exists(),
        "left behind by a process that died while no supervisor ran"
    );
}

#[tokio::test]
async fn a_reused_pid_is_neither_adopted_nor_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let kip_dir = dir.path().join(".kip");
    // A bystander in a process group of its own, which notes every signal it gets.
    let bystander = KillOnDrop(
        std::process::Command::new("/bin/sh")
            .args([
                "-c",
                "for s in TERM INT QUIT HUP USR1 USR2; do trap \"echo $s >> signals\" $s; done; \
                 while :; do sleep 0.05; done",
            ])
            .current_dir(dir.path())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let pid = bystander.0.id();
    let real_start = start_time(pid).unwrap();
    // A pid whose process is gone: a child that was reaped (and that started no group of its own).
    let mut gone = std::process::Command::new("/bin/true").spawn().unwrap();
    gone.wait().unwrap();
    let record = |name: &str, sequence: u64, pid: u32, start_time: u64| {
        json!({
            "name": name,
            "sequence": sequence,
            "spec": script_spec(dir.path(), name, "exec sleep 1000", ProbeKind::None),
            "pid": pid,
            "start_time": start_time,
            "log_offset": 0,
            "state": {"kind": "ready"},
            "restarts": 0,
            "started_at": null,
        })
    };
    let table = json!({
        "version": 1,
        "daemon_pid": 1,
        "processes": [record("reused", 0, pid, real_start + 7), record("gone", 1, gone.id(), 1)],
    });
    std::fs::create_dir_all(kip_dir.join("supervisor")).unwrap();
    std::fs::write(
        kip_dir.join("supervisor/table.json"),
        serde_json::to_vec(&table).unwrap(),
    )
    .unwrap();

    // Nothing to adopt: no supervisor is started (the program would not even run).
    assert!(
        Client::connect_or_adopt(&kip_dir, Path::new("/nonexistent/kip"), &[])
            .await
            .unwrap()
            .is_none()
    );
    assert!(!socket_path(&kip_dir).exists());

    let daemon = TestDaemon::start_in(dir);
    let mut client = daemon.client().await;
    assert_eq!(client.status().await.unwrap(), vec![]);
    assert_eq!(table_processes(&daemon.kip_dir), []);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(is_running(pid));
    assert_eq!(start_time(pid), Some(real_start));
    assert!(
        !daemon.path("signals").exists(),
        "the bystander was signalled: {:?}",
        std::fs::read_to_string(daemon.path("signals"))
    );
}

#[tokio::test]
async fn a_foreign_listener_on_the_probe_target_refuses_the_start_and_is_left_alone() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let spawned = daemon.path("spawned");
    let script = format!("echo yes >> {}; exec sleep 1000", spawned.display());

    // A unix socket someone else listens on.
    let socket = daemon.path("foreign.sock");
    let foreign = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let spec = daemon.script(
        "unix",
        &script,
        ProbeKind::Socket {
            path: socket.clone(),
        },
    );
    let error = client.start(spec).await.unwrap_err();
    assert!(error.hint().unwrap().contains("ss -xlp"), "{error}");
    assert_eq!(
        probe_error(error),
        RequestError::AddressInUse {
            name: "unix".to_owned(),
            target: socket.display().to_string(),
        }
    );
    // Untouched: it still accepts.
    let _connection = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    foreign.accept().unwrap();

    // A TCP port someone else listens on.
    let tcp = std::net::TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    let port = tcp.local_addr().unwrap().port();
    let spec = daemon.script(
        "tcp",
        &script,
        ProbeKind::Tcp {
            host: "127.0.0.1".to_owned(),
            port,
        },
    );
    let error = probe_error(client.start(spec).await.unwrap_err());
    assert_eq!(
        error,
        RequestError::AddressInUse {
            name: "tcp".to_owned(),
            target: format!("127.0.0.1:{port}"),
        }
    );
    assert!(
        error.to_string().contains(&format!(
            "something else already listens on 127.0.0.1:{port}"
        )),
        "{error}"
    );
    let _connection = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.accept().unwrap();
    assert!(!spawned.exists(), "a process was spawned");

    // A foreign listener that appears after the spawn, while the probe waits, does not make the process ready:
    // the listening socket is not its group's.
    let late_socket = daemon.path("late.sock");
    let late_port = free_port();
    for (name, probe) in [
        (
            "late-unix",
            ProbeKind::Socket {
                path: late_socket.clone(),
            },
        ),
        (
            "late-tcp",
            ProbeKind::Tcp {
                host: "127.0.0.1".to_owned(),
                port: late_port,
            },
        ),
    ] {
        let mut spec = daemon.script(name, "echo started; exec sleep 1000", probe);
        spec.probe.timeout = Duration::from_millis(1_000);
        let log = spec.log.clone();
        let bind_path = late_socket.clone();
        let binder = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !std::fs::read_to_string(&log).is_ok_and(|log| log.contains("started")) {
                assert!(Instant::now() < deadline, "the process did not start");
                std::thread::sleep(Duration::from_millis(5));
            }
            if name == "late-unix" {
                Ok(std::os::unix::net::UnixListener::bind(&bind_path).unwrap())
            } else {
                Err(std::net::TcpListener::bind(("127.0.0.1", late_port)).unwrap())
            }
        });
        let error = probe_error(client.start(spec).await.unwrap_err());
        let listener = binder.await.unwrap();
        let RequestError::NotReady { reason, .. } = &error else {
            panic!("{error:?}")
        };
        let group = reason
            .split_once("belongs to no process of the started process group ")
            .and_then(|(_, rest)| rest.split_once(": something else listens there"))
            .map(|(group, _)| group);
        assert!(
            group.is_some_and(|group| group.parse::<u32>().is_ok()),
            "the reason names the group in one sentence: {reason}"
        );
        // The foreign listener was left alone.
        match listener {
            Ok(unix) => {
                let _connection = std::os::unix::net::UnixStream::connect(&late_socket).unwrap();
                unix.accept().unwrap();
            }
            Err(tcp) => {
                let _connection = std::net::TcpStream::connect(("127.0.0.1", late_port)).unwrap();
                tcp.accept().unwrap();
            }
        }
    }
}

#[tokio::test]
async fn a_spent_restart_budget_fails_the_process_with_the_reason() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let mut crasher = daemon.script("crasher", "echo up; exit 1", ProbeKind::None);
    crasher.restart = RestartPolicy::OnFailure;
    assert_eq!(crasher.max_restarts, None);
    client.start(crasher.clone()).await.unwrap();

    // No max_restarts: the default budget; backoffs of 0.2, 0.4, 0.8, 1.6 and 3.2 s.
    let clock = Instant::now();
    let failed = client
        .wait("crasher", WaitUntil::Exited, Duration::from_secs(20))
        .await
        .unwrap();
    eprintln!("restart budget spent after {:?}", clock.elapsed());
    assert_eq!(DEFAULT_MAX_RESTARTS, 5);
    assert_eq!((failed.restarts, failed.pid), (5, None));
    let ProcessState::Failed { reason } = &failed.state else {
        panic!("{failed:?}")
    };
    assert_eq!(
        reason,
        "exited with code 1; gave up after 5 restarts in a row (max_restarts = 5)"
    );
    let log = std::fs::read_to_string(&crasher.log).unwrap();
    assert_eq!(log.matches("up\n").count(), 6, "{log}");
    assert!(log.contains(reason.as_str()), "{log}");
}

#[tokio::test]
async fn reload_sends_the_reload_signal_to_the_group() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let mut spec = daemon.script(
        "reloadable",
        "trap 'echo reloaded >> reloads' HUP; echo ready; while :; do sleep 0.05; done",
        log_line("^ready$"),
    );
    spec.reload = Some("SIGHUP".to_owned());
    let pid = client.start(spec.clone()).await.unwrap().pid.unwrap();
    let reloads = daemon.path("reloads");
    for count in 1..=2 {
        client.reload("reloadable").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while std::fs::read_to_string(&reloads)
            .unwrap_or_default()
            .matches("reloaded")
            .count()
            < count
        {
            assert!(Instant::now() < deadline, "no reload {count} noted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let status = wait_for(&mut client, "reloadable", Duration::from_secs(1), |_| true).await;
    assert_eq!((status.pid, status.state), (Some(pid), ProcessState::Ready));
    let log = std::fs::read_to_string(&spec.log).unwrap();
    assert!(log.contains("sending SIGHUP (reload)"), "{log}");

    // No reload signal, an unknown name, a process that is not running, a signal that does not exist.
    let plain = daemon.script("plain", "echo ready; exec sleep 1000", log_line("^ready$"));
    client.start(plain).await.unwrap();
    assert_eq!(
        probe_error(client.reload("plain").await.unwrap_err()),
        RequestError::NoReloadSignal {
            name: "plain".to_owned()
        }
    );
    assert_eq!(
        probe_error(client.reload("nobody").await.unwrap_err()),
        RequestError::UnknownProcess {
            name: "nobody".to_owned()
        }
    );
    let mut finished = daemon.script("finished", "exit 0", ProbeKind::None);
    finished.reload = Some("SIGHUP".to_owned());
    client.start(finished).await.unwrap();
    client
        .wait("finished", WaitUntil::Exited, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        probe_error(client.reload("finished").await.unwrap_err()),
        RequestError::NotRunning {
            name: "finished".to_owned(),
            state: "exited with code 0".to_owned(),
        }
    );
    let mut bad = daemon.script("bad", "exec sleep 1000", ProbeKind::None);
    bad.reload = Some("SIGFOO".to_owned());
    let error = probe_error(client.start(bad).await.unwrap_err());
    assert!(
        matches!(&error, RequestError::InvalidSpec { reason, .. } if reason.contains("SIGFOO")),
        "{error:?}"
    );
}

#[tokio::test]
async fn wait_until_exited_answers_a_one_shot_jobs_exit_code() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    for code in [0, 3] {
        let name = format!("job-{code}");
        let spec = daemon.script(&name, &format!("sleep 0.3; exit {code}"), ProbeKind::None);
        assert_eq!(spec.restart, RestartPolicy::No);
        let started = client.start(spec).await.unwrap();
        assert_eq!(started.state, ProcessState::Ready);
        let clock = Instant::now();
        let exited = client
            .wait(&name, WaitUntil::Exited, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            clock.elapsed() >= Duration::from_millis(200),
            "{:?}",
            clock.elapsed()
        );
        assert_eq!(
            (exited.state, exited.pid),
            (
                ProcessState::Exited {
                    code: Some(code),
                    signal: None
                },
                None
            )
        );
    }
    // Waiting again answers at once; waiting for it to be ready cannot succeed.
    let again = client
        .wait("job-3", WaitUntil::Exited, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(matches!(
        again.state,
        ProcessState::Exited { code: Some(3), .. }
    ));
    assert_eq!(
        probe_error(
            client
                .wait("job-3", WaitUntil::Ready, Duration::from_secs(5))
                .await
                .unwrap_err()
        ),
        RequestError::WaitUnreachable {
            name: "job-3".to_owned(),
            until: WaitUntil::Ready,
            state: "exited with code 3".to_owned(),
        }
    );

    // A process that keeps running: ready at once, and a wait for its exit times out.
    let runner = daemon.script("runner", "echo ready; exec sleep 1000", log_line("^ready$"));
    client.start(runner).await.unwrap();
    let ready = client
        .wait("runner", WaitUntil::Ready, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(ready.state, ProcessState::Ready);
    let clock = Instant::now();
    let error = probe_error(
        client
            .wait("runner", WaitUntil::Exited, Duration::from_millis(300))
            .await
            .unwrap_err(),
    );
    assert!(clock.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        error,
        RequestError::WaitTimeout {
            name: "runner".to_owned(),
            until: WaitUntil::Exited,
            waited_ms: 300,
            state: "is ready".to_owned(),
        }
    );
    assert_eq!(
        error.to_string(),
        "`runner` was not exited after 300 ms: it is ready"
    );
    assert_eq!(
        probe_error(
            client
                .wait("nobody", WaitUntil::Exited, Duration::from_secs(1))
                .await
                .unwrap_err()
        ),
        RequestError::UnknownProcess {
            name: "nobody".to_owned()
        }
    );
}

#[tokio::test]
async fn the_control_socket_is_private_and_other_accounts_are_refused() {
    let daemon = TestDaemon::start();
    let socket = socket_path(&daemon.kip_dir);
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    let mut client = daemon.client().await;
    client
        .start(daemon.script("secretive", "exec sleep 1000", ProbeKind::None))
        .await
        .unwrap();
    assert_eq!(mode(&daemon.kip_dir.join("supervisor/table.json")), 0o600);

    let python = Path::new("/usr/bin/python3");
    if !rustix::process::geteuid().is_root() || !python.exists() {
        eprintln!("skipped the other account: needs root and /usr/bin/python3");
        return;
    }
    // Connects as `nobody`, reads one line, and says whether the connection was closed after it.
    let as_nobody = |socket: &Path| {
        let output = std::process::Command::new(python)
            .args([
                "-c",
                "import socket, sys\n\
                 s = socket.socket(socket.AF_UNIX)\n\
                 try:\n    s.connect(sys.argv[1])\n\
                 except OSError as e:\n    print('connect failed', e.errno); sys.exit(0)\n\
                 f = s.makefile('rb')\n\
                 print(f.readline().decode().strip())\n\
                 print('closed' if f.readline() == b'' else 'open')\n",
                &socket.to_string_lossy(),
            ])
            .current_dir("/")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    // The socket's mode keeps it out (once the directories let it through).
    for dir in [daemon.dir.path(), daemon.kip_dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    assert_eq!(as_nobody(&socket), "connect failed 13\n");
    // And were the socket's mode lost, the peer check would refuse it.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let said = as_nobody(&socket);
    let mut lines = said.lines();
    let answer: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["error"]["kind"], "forbidden", "{answer}");
    assert_eq!(answer["error"]["uid"], 65534, "{answer}");
    assert_eq!(lines.next(), Some("closed"));
    // The daemon serves its own account as before.
    assert_eq!(client.status().await.unwrap().len(), 1);
}

#[tokio::test]
async fn two_supervisors_racing_for_one_project_leave_exactly_one_running() {
    let dir = tempfile::tempdir().unwrap();
    let kip_dir = dir.path().join(".kip");
    let exe = std::env::current_exe().unwrap();
    let mut racers: Vec<KillOnDrop> = (0..2)
        .map(|racer| {
            let output =
                std::fs::File::create(dir.path().join(format!("racer-{racer}.log"))).unwrap();
            KillOnDrop(
                std::process::Command::new(&exe)
                    .args(daemon_args(&kip_dir))
                    .stdin(std::process::Stdio::null())
                    .stdout(output.try_clone().unwrap())
                    .stderr(output)
                    .process_group(0)
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let _guard = DetachedGuard {
        kip_dir: kip_dir.clone(),
        pid: None,
    };
    // One exits (refused), the other serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (loser, status) = loop {
        if let Some((index, status)) = racers
            .iter_mut()
            .enumerate()
            .find_map(|(index, racer)| Some((index, racer.0.try_wait().unwrap()?)))
        {
            break (index, status);
        }
        assert!(Instant::now() < deadline, "neither supervisor gave way");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(!status.success());
    let said = std::fs::read_to_string(dir.path().join(format!("racer-{loser}.log"))).unwrap();
    assert!(
        said.contains("AlreadyRunning") || said.contains("Locked"),
        "{said}"
    );
    let winner = &mut racers[1 - loser].0;
    let mut client = Client::connect(&kip_dir)
        .await
        .unwrap()
        .expect("the winner answers");
    assert_eq!(client.daemon().pid, winner.id());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        winner.try_wait().unwrap().is_none(),
        "the winner exited too"
    );

    // A third one, in-process, is refused while the winner holds the lock; the winner goes on serving.
    let error = run_daemon_with(
        &kip_dir,
        DaemonOptions {
            handle_signals: false,
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, SupervisorError::AlreadyRunning { pid: Some(pid), .. } if *pid == winner.id()),
        "{error:?}"
    );
    client.ping().await.unwrap();

    // Two clients starting a supervisor at once end up with the same one.
    client.shutdown().await.unwrap();
    let winner_status = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(status) = winner.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert!(winner_status.success());
    let (first, second) = tokio::join!(start_detached(&kip_dir), start_detached(&kip_dir));
    let (first, _first_guard) = first;
    let (second, _second_guard) = second;
    assert_eq!(first.daemon().pid, second.daemon().pid);
    // The other one gives way (it may try for the lock a little longer while the winner starts listening).
    let deadline = Instant::now() + Duration::from_secs(5);
    let command_line = format!("kip-supervisor-dir={}", kip_dir.display());
    while count_running_with(&command_line) > 1 {
        assert!(
            Instant::now() < deadline,
            "two supervisors run for one project"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count_running_with(&command_line), 1);
    assert!(is_running(first.daemon().pid));
}

/// Asks a Valkey server on `socket` for PING.
fn valkey_ping(socket: &Path) -> String {
    let mut connection = std::os::unix::net::UnixStream::connect(socket).unwrap();
    connection
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    connection.write_all(b"PING\r\n").unwrap();
    let mut answer = [0; 7];
    connection.read_exact(&mut answer).unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn an_adopted_valkey_keeps_its_socket_and_is_replaced_on_the_same_socket() {
    let mut groups = Groups::default();
    let dir = tempfile::tempdir().unwrap();
    let kip_dir = dir.path().join(".kip");
    let server = unpack_valkey(&dir.path().join("valkey"));
    let socket = dir.path().join("valkey.sock");
    let mut spec = script_spec(
        dir.path(),
        "valkey.cache",
        "",
        ProbeKind::Socket {
            path: socket.clone(),
        },
    );
    spec.program = server;
    spec.args = [
        "--port",
        "0",
        "--unixsocket",
        &socket.to_string_lossy(),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(str::to_owned)
    .to_vec();
    spec.restart = RestartPolicy::OnFailure;
    let (mut first, mut first_guard) = start_detached(&kip_dir).await;
    let pid = groups.add(first.start(spec.clone()).await.unwrap().pid.unwrap());
    drop(first);
    kill_supervisor(&mut first_guard);
    assert_eq!(valkey_ping(&socket), "+PONG\r\n");

    let mut client = connect_or_adopt(&kip_dir).await.expect("a supervisor");
    let _second_guard = DetachedGuard {
        kip_dir: kip_dir.clone(),
        pid: Some(client.daemon().pid),
    };
    // Its own socket is not a foreign listener: the same spec answers the adopted server.
    let same = client.start(spec.clone()).await.unwrap();
    assert_eq!((same.pid, same.adopted), (Some(pid), true));
    assert_eq!(valkey_ping(&socket), "+PONG\r\n");

    // A changed spec: the adopted server is stopped, and the new one binds the same socket and is ready on it.
    let mut changed = spec.clone();
    changed
        .args
        .extend(["--databases".to_owned(), "4".to_owned()]);
    let replaced = client.start(changed).await.unwrap();
    let new_pid = groups.add(replaced.pid.unwrap());
    assert_ne!(new_pid, pid);
    assert!(!replaced.adopted);
    assert_stopped(pid);
    assert_eq!(valkey_ping(&socket), "+PONG\r\n");
    client.stop("valkey.cache").await.unwrap();
    assert_stopped(new_pid);
}

#[tokio::test]
async fn a_stop_command_stops_the_process_and_sigkill_follows_when_it_does_not() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;

    // The stop command asks the process (by KIP_STOP_PID) to stop; the process says how it was asked.
    let mut polite = daemon.script(
        "polite",
        "trap 'echo asked-by-usr1 > polite.txt; exit 0' USR1; trap 'echo got-term > polite.txt; exit 0' TERM; \
         echo ready; while :; do sleep 0.05; done",
        log_line("^ready$"),
    );
    polite.stop = StopSpec {
        command: Some(StopCommand {
            command: vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                "echo \"stop command for $KIP_STOP_PID\"; kill -USR1 \"$KIP_STOP_PID\"".to_owned(),
            ],
            wait_ms: 5_000,
        }),
        signals: vec![("SIGTERM".to_owned(), 2_000)],
        discard: None,
    };
    let pid = client.start(polite.clone()).await.unwrap().pid.unwrap();
    let clock = Instant::now();
    client.stop("polite").await.unwrap();
    assert!(
        clock.elapsed() < Duration::from_secs(2),
        "{:?}",
        clock.elapsed()
    );
    assert_gone(pid);
    assert_eq!(
        std::fs::read_to_string(daemon.path("polite.txt")).unwrap(),
        "asked-by-usr1\n"
    );
    let log = std::fs::read_to_string(&polite.log).unwrap();
    assert!(log.contains(&format!("stop command for {pid}")), "{log}");

    // A stop command that does not stop it (and hangs): killed after its wait, then the signals, then SIGKILL.
    let mut deaf = daemon.script(
        "deaf",
        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
        log_line("^ready$"),
    );
    deaf.stop = StopSpec {
        command: Some(StopCommand {
            command: vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                "echo $$ > stop-command.pid; exec sleep 30".to_owned(),
            ],
            wait_ms: 300,
        }),
        signals: vec![("SIGTERM".to_owned(), 300)],
        discard: None,
    };
    let pid = client.start(deaf.clone()).await.unwrap().pid.unwrap();
    let clock = Instant::now();
    client.stop("deaf").await.unwrap();
    let took = clock.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_gone(pid);
    assert!(!group_exists(pid));
    let log = std::fs::read_to_string(&deaf.log).unwrap();
    assert!(log.contains("still ran after 300 ms: killed"), "{log}");
    let stop_command: u32 = std::fs::read_to_string(daemon.path("stop-command.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_gone(stop_command);

    // A stop command that cannot run: the signals stop the process.
    let mut missing = daemon.script(
        "missing",
        "echo ready; while :; do sleep 0.05; done",
        log_line("^ready$"),
    );
    missing.stop = StopSpec {
        command: Some(StopCommand {
            command: vec!["/nonexistent/stop".to_owned()],
            wait_ms: 5_000,
        }),
        signals: vec![("SIGTERM".to_owned(), 2_000)],
        discard: None,
    };
    let pid = client.start(missing.clone()).await.unwrap().pid.unwrap();
    client.stop("missing").await.unwrap();
    assert_gone(pid);
    let log = std::fs::read_to_string(&missing.log).unwrap();
    assert!(
        log.contains("cannot run the stop command `/nonexistent/stop`"),
        "{log}"
    );
}

/// Starts `service` under a supervisor of its own process, SIGKILLs that supervisor, and starts a new one in
/// `dir`, which must have adopted the service: the killed supervisor's guard (to be dropped last), the new daemon,
/// a client of it, and the service's pid.
async fn adopted_after_a_kill(
    dir: tempfile::TempDir,
    groups: &mut Groups,
    service: SpawnSpec,
) -> (DetachedGuard, TestDaemon, Client, u32) {
    let kip_dir = dir.path().join(".kip");
    let (mut first, mut first_guard) = start_detached(&kip_dir).await;
    let pid = groups.add(first.start(service).await.unwrap().pid.unwrap());
    drop(first);
    kill_supervisor(&mut first_guard);
    let daemon = TestDaemon::start_in(dir);
    let mut client = daemon.client().await;
    let status = client.status().await.unwrap();
    assert!(
        status[0].adopted && status[0].pid == Some(pid),
        "{status:?}"
    );
    (first_guard, daemon, client, pid)
}

#[tokio::test]
async fn an_adopted_process_is_stopped_with_its_stop_command() {
    use kip_core::engine::StopCommand;
    let mut groups = Groups::default();
    let dir = tempfile::tempdir().unwrap();
    let mut service = script_spec(
        dir.path(),
        "service",
        "trap 'echo asked > asked.txt; exit 0' USR2; echo ready; while :; do sleep 0.05; done",
        log_line("^ready$"),
    );
    service.stop = StopSpec {
        command: Some(StopCommand {
            command: vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                "kill -USR2 \"$KIP_STOP_PID\"".to_owned(),
            ],
            wait_ms: 5_000,
        }),
        signals: Vec::new(),
        discard: None,
    };
    let (_first, daemon, mut client, pid) = adopted_after_a_kill(dir, &mut groups, service).await;
    client.stop("service").await.unwrap();
    assert_stopped(pid);
    assert_eq!(
        std::fs::read_to_string(daemon.path("asked.txt")).unwrap(),
        "asked\n"
    );
}

/// A supervisor killed while a process with files outside its directories runs: the next one adopts it, knows
/// those files from the persisted spec, and removes them when the process is discarded.
#[tokio::test]
async fn an_adopted_process_that_is_discarded_leaves_no_file_behind() {
    let mut groups = Groups::default();
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let left = outside.path().join("left.sock");
    let mut service = leaving_service(dir.path(), &left);
    service.stop.discard = Some(("SIGKILL".to_owned(), 0));
    let (_first, _daemon, mut client, pid) = adopted_after_a_kill(dir, &mut groups, service).await;
    assert!(left.exists());
    client.discard("service").await.unwrap();
    assert_stopped(pid);
    assert!(
        !left.exists(),
        "left behind by an adopted process's discard"
    );
}

#[tokio::test]
async fn without_a_probe_a_settle_time_fails_a_process_that_exits_at_once_and_retries_bound_a_probe()
 {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;

    let mut early = daemon.script(
        "early",
        "echo 'missing config' >&2; exit 4",
        ProbeKind::None,
    );
    early.probe.initial_delay = Duration::from_millis(300);
    early.restart = RestartPolicy::OnFailure;
    let error = probe_error(client.start(early).await.unwrap_err());
    match error {
        RequestError::ExitedBeforeReady { exit, tail, .. } => {
            assert_eq!(exit, "exited with code 4");
            assert!(tail.iter().any(|line| line == "missing config"), "{tail:?}");
        }
        other => panic!("{other:?}"),
    }

    // Alive through its settle time: ready, after it.
    let mut steady = daemon.script("steady", "exec sleep 30", ProbeKind::None);
    steady.probe.initial_delay = Duration::from_millis(200);
    let clock = Instant::now();
    let status = client.start(steady).await.unwrap();
    assert!(clock.elapsed() >= Duration::from_millis(200));
    assert_eq!(status.state, ProcessState::Ready);

    // Two failed checks allowed: the third fails the start, long before the timeout.
    let mut retried = daemon.script(
        "retried",
        "exec sleep 30",
        ProbeKind::Exec {
            command: vec!["false".to_owned()],
        },
    );
    retried.probe.retries = Some(2);
    retried.probe.timeout = Duration::from_secs(30);
    let clock = Instant::now();
    let error = probe_error(client.start(retried).await.unwrap_err());
    assert!(
        clock.elapsed() < Duration::from_secs(5),
        "{:?}",
        clock.elapsed()
    );
    match error {
        RequestError::NotReady { reason, .. } => {
            assert!(
                reason.starts_with("3 checks failed (retries = 2); last check:"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A Python server that binds a unix socket at `socket` or a loopback `port` after `delay_s`, then says so on its
/// output, and serves until stopped.
fn late_listener(socket: Option<&Path>, port: Option<u16>, delay_s: f64) -> Vec<String> {
    let script = format!(
        "import socket, sys, time\n\
         time.sleep({delay_s})\n\
         if {unix}:\n    s = socket.socket(socket.AF_UNIX); s.bind({socket:?})\n\
         else:\n    s = socket.socket(); s.bind(('127.0.0.1', {port}))\n\
         s.listen(); print('listening', flush=True)\n\
         while True: s.accept()[0].close()\n",
        unix = if socket.is_some() { "True" } else { "False" },
        socket = socket
            .map(|path| path.to_string_lossy().into_owned())
            .unwrap_or_default(),
        port = port.unwrap_or(0),
    );
    vec!["-c".to_owned(), script]
}

#[tokio::test]
async fn a_socket_or_port_that_starts_listening_is_seen_before_the_next_interval() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    // Checks every 3 s; the servers listen after 0.3 s. A probe that waited for its interval would take 3 s: one
    // woken by the socket appearing in its directory, or by the process's output, takes well under 2 s.
    let interval = Duration::from_secs(3);
    let socket = daemon.path("run/late.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let port = free_port();
    let cases = [
        (
            "unix",
            late_listener(Some(&socket), None, 0.3),
            ProbeKind::Socket {
                path: socket.clone(),
            },
        ),
        (
            "tcp",
            late_listener(None, Some(port), 0.3),
            ProbeKind::Tcp {
                host: "127.0.0.1".to_owned(),
                port,
            },
        ),
    ];
    for (name, args, probe) in cases {
        let mut spec = daemon.script(name, "", probe);
        spec.program = python().to_owned();
        spec.args = args;
        spec.probe.interval = interval;
        spec.probe.timeout = Duration::from_secs(20);
        let clock = Instant::now();
        let status = client.start(spec).await.unwrap();
        let took = clock.elapsed();
        assert_eq!(status.state, ProcessState::Ready, "{name}");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{name}: ready after {took:?}, with checks every {interval:?}"
        );
        client.stop(name).await.unwrap();
        assert_gone(status.pid.unwrap());
    }
}

#[tokio::test]
async fn a_tcp_probe_passes_for_a_listener_that_is_not_the_groups_leader() {
    // The check asks the group's leader first, and only then reads every process to find the other members: a
    // server started by a shell that stays (the leader) listens in a child of the group, and is still its own.
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let port = free_port();
    let mut spec = daemon.script(
        "wrapped",
        &format!(
            "{} -m http.server {port} --bind 127.0.0.1 --directory . & echo $! > server.child; wait",
            python().display()
        ),
        ProbeKind::Tcp {
            host: "127.0.0.1".to_owned(),
            port,
        },
    );
    spec.probe.timeout = Duration::from_secs(20);
    let status = client.start(spec).await.unwrap();
    assert_eq!(status.state, ProcessState::Ready);
    let leader = status.pid.unwrap();
    let child: u32 = std::fs::read_to_string(daemon.path("server.child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(child, leader, "the server is not the leader");
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("ready means listening");
    client.stop("wrapped").await.unwrap();
    assert_gone(leader);
    assert_gone(child);
}

#[tokio::test]
async fn output_that_wakes_a_probe_does_not_spend_its_retries() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    // Forty lines of output before the one the probe waits for: each wakes a check that fails. Two failed checks
    // are allowed, and the interval (1 s) passes once at most before "ready": still ready.
    let mut chatty = daemon.script(
        "chatty",
        "for i in $(seq 40); do echo \"loading $i\"; sleep 0.01; done; echo ready; exec sleep 30",
        log_line("^ready$"),
    );
    chatty.probe.interval = Duration::from_secs(1);
    chatty.probe.retries = Some(2);
    let status = client.start(chatty).await.unwrap();
    assert_eq!(status.state, ProcessState::Ready);
    client.stop("chatty").await.unwrap();
    assert_gone(status.pid.unwrap());
}

#[tokio::test]
async fn restart_delay_is_the_first_backoff_and_doubles() {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let mut crashing = daemon.script(
        "crashing",
        "date +%s%N >> starts.txt; echo ready; sleep 0.1; exit 1",
        log_line("^ready$"),
    );
    crashing.restart = RestartPolicy::OnFailure;
    crashing.max_restarts = Some(2);
    crashing.restart_delay_ms = Some(500);
    client.start(crashing).await.unwrap();
    wait_for(&mut client, "crashing", Duration::from_secs(10), |status| {
        matches!(status.state, ProcessState::Failed { .. })
    })
    .await;
    let starts: Vec<u128> = std::fs::read_to_string(daemon.path("starts.txt"))
        .unwrap()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    assert_eq!(starts.len(), 3, "{starts:?}");
    // Each run lasts ~0.1 s, then waits 0.5 s, then 1 s.
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|pair| (pair[1] - pair[0]) / 1_000_000)
        .collect();
    assert!((600..2_000).contains(&gaps[0]), "{gaps:?}");
    assert!((1_100..3_000).contains(&gaps[1]), "{gaps:?}");
}

/// A leader killed from outside whose worker left its process group (as PostgreSQL's backends do: they call
/// `setsid`) and still holds what a new run needs for a moment: a start of the same name right after the kill
/// waits for that worker instead of failing (a new postmaster beside old backends refuses to start).
#[tokio::test]
async fn a_start_after_a_kill_waits_for_the_workers_that_left_the_group() {
    start_after_a_kill_waits_for_the_worker(false).await;
}

/// The same, when the program was replaced on disk under the running worker (a toolchain unpacked again): the
/// worker's executable is then "deleted", and it is still the previous run's.
#[tokio::test]
async fn a_start_after_a_kill_waits_for_workers_whose_program_was_replaced() {
    start_after_a_kill_waits_for_the_worker(true).await;
}

async fn start_after_a_kill_waits_for_the_worker(replace_program: bool) {
    let daemon = TestDaemon::start();
    let mut client = daemon.client().await;
    let shell = std::fs::canonicalize("/bin/sh").unwrap();
    let program = if replace_program {
        let copy = daemon.dir.path().join("sh");
        std::fs::copy(&shell, &copy).unwrap();
        copy
    } else {
        shell
    };
    // The leader refuses to start while `held` exists, as a postmaster refuses a shared memory block still in use;
    // its worker holds it for 0.8 s after the leader died. Both are the same shell in the same directory, as a
    // postmaster and its backends are one program in one data directory. The leader says it is up only once its
    // worker runs that program (not `setsid` on its way there): the probe passes the moment it says so.
    let script = format!(
        "if [ -e held ]; then echo 'held by a worker'; exit 1; fi\n\
         touch held\n\
         rm -f worker-up\n\
         ( setsid {} -c 'touch worker-up; while kill -0 $0 2>/dev/null; do sleep 0.05; done; sleep 0.8; rm -f held' $$ & )\n\
         while [ ! -e worker-up ]; do sleep 0.01; done\n\
         echo up\n\
         while :; do sleep 1; done",
        program.display()
    );
    let mut spec = daemon.script(
        "held",
        &script,
        ProbeKind::LogLine {
            pattern: "^up$".to_owned(),
        },
    );
    spec.program = program.clone();
    let first = client.start(spec.clone()).await.unwrap();
    let leader = first.pid.unwrap();
    if replace_program {
        // A new file at the same path: the running worker's executable is the deleted one.
        std::fs::remove_file(&program).unwrap();
        std::fs::copy(std::fs::canonicalize("/bin/sh").unwrap(), &program).unwrap();
    }
    rustix::process::kill_process(Pid::from_raw(leader as i32).unwrap(), Signal::KILL).unwrap();
    assert_gone(leader);
    let started = Instant::now();
    let again = client
        .start(spec)
        .await
        .unwrap_or_else(|error| panic!("the start did not wait for the worker: {error}"));
    assert_ne!(again.pid, Some(leader));
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "started after {:?}, while the worker still held its file",
        started.elapsed()
    );
    client.stop("held").await.unwrap();
}
