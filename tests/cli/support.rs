//! The harness for CLI tests: a fresh project directory per test, the real `kip` binary run in it with a clean
//! environment, and insta filters that hide what differs between machines (temp paths).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary project: its directory holds the config files; `home` is kip's data dir (KIP_HOME).
pub struct Project {
    pub dir: tempfile::TempDir,
    pub home: tempfile::TempDir,
}

/// What one run of kip printed, and its exit code.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The run as a snapshot: exit code, then stdout and stderr.
    pub fn snapshot(&self) -> String {
        format!(
            "exit: {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Project {
    pub fn new() -> Self {
        let project = Project {
            dir: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
        };
        // Engines run as an unprivileged account when the tests run as root: it must reach the project and the
        // cache (a fresh temp dir is 0700).
        for dir in [project.dir.path(), project.home.path()] {
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        project
    }

    /// A project whose kip.hcl holds `source`.
    pub fn with_config(source: &str) -> Self {
        let project = Project::new();
        project.write("kip.hcl", source);
        project
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// kip's cache (toolchain store) for this test: isolated from every other test and from the user's.
    pub fn cache_dir(&self) -> PathBuf {
        self.home.path().join("cache")
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kip"));
        command.args(args).current_dir(self.dir.path());
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("KIP_") || key == "NO_COLOR" || key.starts_with("XDG_") {
                command.env_remove(key.as_ref());
            }
        }
        command
            .env("KIP_HOME", self.home.path())
            .env("KIP_CACHE_DIR", self.cache_dir())
            .env("NO_COLOR", "1")
            // Each test has its own cache, where a spare data directory would only be written, never used; the
            // spares' own test turns them on again.
            .env("KIP_SPARES", "0")
            // An account made ahead of time in a test's cache would outlive it; their own test turns them on.
            .env("KIP_SPARE_ACCOUNTS", "0");
        command
    }

    pub fn run_with(&self, mut command: Command) -> Run {
        let output = command.output().expect("the kip binary runs");
        let filter = |text: &[u8]| {
            let text = String::from_utf8_lossy(text).into_owned();
            text.replace(&self.dir.path().display().to_string(), "[PROJECT]")
                .replace(&self.home.path().display().to_string(), "[KIP_HOME]")
        };
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: filter(&output.stdout),
            stderr: filter(&output.stderr),
        }
    }

    pub fn kip(&self, args: &[&str]) -> Run {
        self.run_with(self.command(args))
    }
}

/// The release signing key, beside the repository in ../shared (never copied into it).
pub fn release_key() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/keys/registry-signing.pem");
    assert!(
        path.exists(),
        "the release signing key is expected at {}: ../shared beside the repo",
        path.display()
    );
    path
}

/// The test mirror of real engine builds that `scripts/test-mirror.sh` builds (the README's test command runs it).
pub fn test_mirror() -> PathBuf {
    let dir = std::env::var_os("KIP_TEST_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
                });
            cache.join("kip/test-mirror")
        });
    assert!(
        dir.join("index.json").exists(),
        "the test mirror is missing at {}: run scripts/test-mirror.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// Runs `command` (a `kip apply`) and SIGKILLs it as soon as its stderr shows `moment` (`valkey.cache: starting`);
/// fails the test when the apply ends without showing it (the kill the test is about never happened).
pub fn kill_when_logged(mut command: Command, moment: &str) {
    use std::io::BufRead as _;
    command
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = command.spawn().unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut killed = false;
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.contains(moment) {
            child.kill().unwrap();
            killed = true;
            break;
        }
        seen.push(line);
    }
    let _ = child.wait();
    assert!(
        killed,
        "the apply ended without logging `{moment}`: it was never killed there. It said:\n{}",
        seen.join("\n")
    );
}

/// Runs `command` (a `kip apply`) and SIGKILLs it as soon as `path` exists (an engine's socket); fails the test when
/// the apply ends, or 30 s pass, before it does.
pub fn kill_when_exists(mut command: Command, path: &Path) {
    command
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    let mut child = command.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut ended = false;
    while !path.exists() && std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            ended = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !ended && path.exists(),
        "{} never appeared while the apply ran: it was never killed at that moment",
        path.display()
    );
}

/// Binds `port` on 127.0.0.1 for a test that wants a port an engine freed (after `kip down`) taken by another
/// program. `None` when something else took it first: the tests run at once, and any outgoing connection may get
/// a port of the ephemeral range, which is where kip allocates its own. The test's premise holds either way (the
/// port is taken); only what it asserts of its own holder needs the listener.
pub fn hold_freed_port(port: u16) -> Option<std::net::TcpListener> {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(listener) => Some(listener),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => None,
        Err(error) => panic!("cannot bind 127.0.0.1:{port}: {error}"),
    }
}

/// A free loopback port no other test of this binary was given, for a test to declare. It is below the kernel's
/// ephemeral range (`ip_local_port_range`), which is where every port kip chooses for an instance and every
/// client connection's own port come from: the tests run at once, and a declared port from that range can be
/// taken by another test's engine between this check and the apply (the likely cause of a NATS test whose apply
/// once never reached its start). Bound and released here, so tests use it at once.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000_u64, u64::from(ephemeral_start).clamp(10_001, 65_536));
    // A different walk per test process, so that two test binaries running at once rarely try the same ports.
    let span = high - low;
    let start = u64::from(std::process::id()) * 7919 % span;
    for step in 0..span {
        let port = u16::try_from(low + (start + step * 104_729) % span).expect("below 65536");
        if !GIVEN.lock().unwrap().insert(port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    kip_core::engine::free_port(|port| !GIVEN.lock().unwrap().insert(port)).unwrap()
}

/// The pid of a supervised process, from `kip ps --json`.
pub fn pid_of(stack: &crate::apply::Stack, name: &str) -> u32 {
    let ps = stack.ok(&["ps", "--json"]);
    let processes: serde_json::Value = serde_json::from_str(&ps.stdout).unwrap();
    processes
        .as_array()
        .unwrap()
        .iter()
        .find(|process| process["name"] == name)
        .and_then(|process| process["pid"].as_u64())
        .unwrap_or_else(|| panic!("{name} is not running: {}", ps.stdout)) as u32
}

/// Another local account (`nobody`) running `attempts` (a shell snippet of connection attempts without credentials)
/// in a tight loop until it is stopped; `attempts` is given the path of the output file, where it writes what it
/// got (`GOT-IN-…` when a connection got in).
pub struct HostilePoller {
    child: std::process::Child,
    stop: PathBuf,
    output: PathBuf,
}

impl HostilePoller {
    pub fn start(dir: &Path, attempts: impl FnOnce(&Path) -> String) -> HostilePoller {
        HostilePoller::start_as(("nobody", "nogroup"), dir, attempts)
    }

    /// The same, as another local account (`(user, group)`, names or numbers): the engine's own, for one.
    pub fn start_as(
        (user, group): (&str, &str),
        dir: &Path,
        attempts: impl FnOnce(&Path) -> String,
    ) -> HostilePoller {
        let stop = dir.join("stop");
        let output = dir.join("poller.out");
        let script = format!(
            "while [ ! -e '{stop}' ]; do {attempts} done",
            stop = stop.display(),
            attempts = attempts(&output),
        );
        std::fs::write(&output, "").unwrap();
        std::fs::set_permissions(&output, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .unwrap();
        let child = std::process::Command::new("setpriv")
            .args([
                &format!("--reuid={user}"),
                &format!("--regid={group}"),
                "--clear-groups",
                "sh",
                "-c",
                &script,
            ])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/nonexistent")
            .spawn()
            .expect("setpriv runs the poller as another account");
        HostilePoller {
            child,
            stop,
            output,
        }
    }

    /// Stops it and returns what it saw.
    pub fn finish(mut self) -> String {
        std::fs::write(&self.stop, "").unwrap();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.output).unwrap()
    }
}

impl Drop for HostilePoller {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop, "");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to 60 s) until the supervisor no longer shows `name` starting: a kip killed right after spawning leaves
/// the start to the supervisor, and a test that wants the next apply to meet the server ready, rather than still
/// starting (faults.rs covers that case), waits for it.
pub fn settled(stack: &crate::apply::Stack, name: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let ps = stack.ok(&["ps", "--json"]);
        let processes: serde_json::Value = serde_json::from_str(&ps.stdout).unwrap();
        let starting = processes
            .as_array()
            .unwrap()
            .iter()
            .any(|process| process["name"] == name && process["state"]["kind"] == "starting");
        if !starting {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} was still starting after 60 s:\n{}",
            ps.stdout
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `kip lint` fails and its report holds every one of `expected` (the spans, `kip.hcl:3:14`, and the words given
/// there); the run, for further checks.
pub fn lint_reports(stack: &crate::apply::Stack, expected: &[&str]) -> Run {
    let run = stack.kip(&["lint"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    for expected in expected {
        assert!(run.stderr.contains(expected), "{expected}\n{}", run.stderr);
    }
    run
}

/// What kip says when a port it chose for an instance's `listener` (kept in state) was taken by another program
/// and the instance moved from `from` to `to`.
pub fn moved_port_line(from: u16, listener: &str, to: u16) -> String {
    format!(
        "port {from} (its {listener} listener), which kip chose, is taken by another program; it listens on {to} now"
    )
}

/// `kip apply` refuses the instance's declared `port`, which another program holds, before spawning anything.
pub fn refuses_taken_port(stack: &crate::apply::Stack, port: u16) {
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr
            .contains(&format!("declares port {port}, which is already in use")),
        "{}",
        run.stderr
    );
    let ps = stack.ok(&["ps", "--json"]);
    assert_eq!(ps.stdout.trim(), "[]", "nothing was spawned");
}

/// Whether `pid` is a running process: a zombie (exited, not yet reaped by whoever inherited it) is not.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Waits until `pid` is no running process ([`alive`]), failing the test after `timeout`.
pub fn wait_gone(pid: u32, timeout: std::time::Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} is still alive after {timeout:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Every pid in /proc now.
pub fn all_pids() -> Vec<u32> {
    kip_core::supervisor::pids().collect()
}

/// The arguments of `pid` (empty when it is gone or not readable).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the tests run as root (the tests of accounts kip makes need it).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0)
}

/// `shell_line` run by `sh -c` as `nobody` (another local account than kip's and its engines'): its status, stdout
/// and stderr.
pub fn as_nobody(shell_line: &str) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "sh",
            "-c",
            shell_line,
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("setpriv runs a command as nobody")
}

/// Sends the signal `name` (`KILL`, `TERM`, …) to `pid`, whether or not it still runs.
pub fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

pub fn sigkill(pid: u32) {
    signal(pid, "KILL");
}
