//! Tests for `kip_core::supervisor` against real processes: shell scripts, a Python HTTP server, and Valkey from the
//! test mirror, each test in its own temp dir with its own supervisor.
//!
//! Most tests run the daemon in a thread of the test process ([`TestDaemon`]), which makes every supervised
//! process a child of the test process: checking `/proc/PID` after a stop proves it was reaped, not left a zombie.
//! One test starts the daemon detached through [`Client::start_daemon`], with this test binary as the daemon
//! program (see [`supervisor_daemon_entry`]). Every guard shuts its supervisor down on drop, so a failing test
//! leaves no process behind.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kip_core::engine::{Probe, ProbeKind, RestartPolicy, RunAs, SpawnSpec, StopSpec};
use kip_core::supervisor::{
    Client, DaemonOptions, ProcessState, ProcessStatus, RequestError, SupervisorError,
    pid_file_path, run_daemon, run_daemon_with, socket_path,
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
        SpawnSpec {
            name: name.to_owned(),
            program: "/bin/sh".into(),
            args: vec!["-c".to_owned(), script.to_owned()],
            env: BTreeMap::new(),
            cwd: self.dir.path().to_owned(),
            run_as: None,
            probe: Probe {
                kind: probe,
                initial_delay: Duration::ZERO,
                interval: Duration::from_millis(20),
                timeout: Duration::from_secs(5),
            },
            restart: RestartPolicy::No,
            max_restarts: None,
            stop: StopSpec {
                signals: vec![("SIGTERM".to_owned(), 2_000)],
            },
            log: self.kip_dir.join("logs").join(format!("{name}.log")),
            after: Vec::new(),
            reload: None,
            instance: "test.main".to_owned(),
        }
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
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        signals: vec![("SIGTERM".to_owned(), 500)],
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
        signals: vec![("SIGINT".to_owned(), 300), ("SIGTERM".to_owned(), 5_000)],
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
        "sleep 0.4; echo ready; sleep 1000",
        ProbeKind::LogLine {
            pattern: "ready".into(),
        },
    );
    let other = daemon.script(
        "other",
        "sleep 0.4; echo ready; sleep 1000",
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
    assert!(
        took < Duration::from_millis(750),
        "two 0.4 s starts in parallel took {took:?}"
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
        },
        restart: RestartPolicy::OnFailure,
        max_restarts: None,
        stop: StopSpec::default(),
        log: kip_dir.join("logs/sleeper.log"),
        after: Vec::new(),
        reload: None,
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
