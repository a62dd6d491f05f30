//! Readiness probes: how the supervisor decides that a process it spawned is ready to serve, so that `kip apply`
//! can go on to converge it and start what depends on it.
//!
//! A probe waits its initial delay, then checks every interval until one check passes or its timeout (counted
//! from the spawn) runs out. Each check is bounded by what is left of the timeout, so a server that accepts a
//! connection and never answers cannot hold a probe past it. A failed probe reports the reason of its last check.
//!
//! A server that is not the spawned process must never make it ready: another instance's engine (or one left
//! running by a supervisor that was killed) on the same socket path or port would have the start succeed while the
//! new process fails to bind and restart-loops. So before each spawn [`target_in_use`] refuses a socket, tcp or
//! (loopback) http target that already accepts connections, and a check that connects passes only when the
//! listening socket belongs to the spawned process group: for a unix socket, the peer credentials of the connection
//! name the process that called `listen` (or else the socket's inode in `/proc/net/unix` is looked for among the
//! group's open files); for a TCP port, the inodes of the sockets listening on it (`/proc/net/tcp`, `tcp6`) are.
//!
//! Between its intervals a socket, tcp or `log_line` probe also checks as soon as the process shows a sign of life
//! (see [`Wake`]): a file appearing where its socket will be, or a write to its log. A server that starts
//! listening is then seen within microseconds rather than up to an interval (and tokio's millisecond timer) late;
//! the interval stays the fallback for a server that does neither.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regex_lite::Regex;
use tokio::time::Instant;

use super::logfile::LogScanner;
use super::procfs;
use crate::engine::{ProbeKind, RunAs, SpawnSpec};
use crate::wake::Wake;

/// The shortest interval between checks: a zero interval would spin. A socket or port check is one connect (a few
/// microseconds; whose listener it is, is read only once one answers), so it may run every millisecond, as the
/// database engines' probes do (at 2 ms, a start was seen 1 ms late on average); a check that forks a command,
/// sends a request or reads a log is held to 10 ms whatever its spec says.
fn min_interval(kind: &ProbeKind) -> Duration {
    match kind {
        ProbeKind::Socket { .. } | ProbeKind::Tcp { .. } => Duration::from_millis(1),
        _ => Duration::from_millis(10),
    }
}
/// The least time a check gets, even when the probe's timeout is (nearly) spent: every probe checks at least once.
const MIN_CHECK: Duration = Duration::from_millis(50);
/// How long [`target_in_use`] tries to connect: a listener on this machine answers at once.
const IN_USE_CHECK: Duration = Duration::from_secs(1);

/// A probe that did not pass: the reason its last check gave, and how long it tried.
#[derive(Debug)]
pub(super) struct ProbeFailure {
    pub reason: String,
    pub waited: Duration,
}

/// How an error names a probe: its kind and what it checks.
pub(super) fn describe(kind: &ProbeKind) -> String {
    match kind {
        ProbeKind::Socket { path } => format!("socket ({})", path.display()),
        ProbeKind::Tcp { host, port } => format!("tcp ({host}:{port})"),
        ProbeKind::Http { url } => format!("http ({url})"),
        ProbeKind::Exec { command } => format!("exec (`{}`)", command.join(" ")),
        ProbeKind::LogLine { pattern } => format!("log_line (/{pattern}/)"),
        ProbeKind::None => "none".to_owned(),
    }
}

/// What accepts connections for a probe, when it connects to something: a unix socket or a TCP port.
enum Target {
    Unix(PathBuf),
    /// A host and port; `local` when the host is this machine (a loopback address or `localhost`), the only case
    /// where the listener can be looked up.
    Tcp {
        host: String,
        port: u16,
        local: bool,
    },
}

impl Target {
    fn of(kind: &ProbeKind) -> Option<Target> {
        match kind {
            ProbeKind::Socket { path } => Some(Target::Unix(path.clone())),
            ProbeKind::Tcp { host, port } => Some(Target::Tcp {
                host: host.clone(),
                port: *port,
                local: is_local(host),
            }),
            ProbeKind::Http { url } => {
                let url = reqwest::Url::parse(url).ok()?;
                let host = url.host_str()?.to_owned();
                let port = url.port_or_known_default()?;
                // Only a server on this machine can be one of the group's; a remote URL is left to the probe.
                is_local(&host).then_some(Target::Tcp {
                    host,
                    port,
                    local: true,
                })
            }
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Unix(path) => path.display().to_string(),
            Target::Tcp { host, port, .. } => format!("{host}:{port}"),
        }
    }
}

/// Whether `host` is this machine.
fn is_local(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback() || address.is_unspecified())
}

/// The probe's target, described ("/p/.kip/run/pg/.s.PGSQL.5432", "127.0.0.1:6379"), when something already
/// accepts connections there: the process must not be spawned, its probe would pass on that server.
pub(super) async fn target_in_use(kind: &ProbeKind) -> Option<String> {
    let target = Target::of(kind)?;
    let connected = match &target {
        Target::Unix(path) => {
            tokio::time::timeout(IN_USE_CHECK, tokio::net::UnixStream::connect(path))
                .await
                .is_ok_and(|connected| connected.is_ok())
        }
        Target::Tcp { host, port, .. } => tokio::time::timeout(
            IN_USE_CHECK,
            tokio::net::TcpStream::connect((host.as_str(), *port)),
        )
        .await
        .is_ok_and(|connected| connected.is_ok()),
    };
    connected.then(|| target.describe())
}

/// Whether the socket a check connected to is served by the process group `group`: `Err` with the reason when
/// it is not. When `/proc` cannot tell, the connection is taken as the group's (nothing better is known).
fn check_listener(target: &Target, group: u32, peer_pid: Option<u32>) -> Result<(), String> {
    let not_ours = || {
        format!(
            "{} accepts connections, but its listening socket belongs to no process of the started process group \
             {group}: something else listens there",
            target.describe()
        )
    };
    let inodes = match target {
        Target::Unix(path) => {
            // The peer credentials of a unix connection name the process that called `listen`.
            if let Some(pid) = peer_pid
                && procfs::stat(pid)
                    .is_some_and(|stat| stat.process_group == group && !stat.is_dead())
            {
                return Ok(());
            }
            procfs::unix_listening_inodes(path)
        }
        Target::Tcp { local: false, .. } => return Ok(()),
        Target::Tcp { port, .. } => match procfs::group_listens_on(group, *port) {
            Some(true) => return Ok(()),
            Some(false) => return Err(not_ours()),
            None => procfs::tcp_listening_inodes(*port),
        },
    };
    let Some(inodes) = inodes else {
        tracing::debug!(
            "cannot read /proc/net to check who listens on {}",
            target.describe()
        );
        return Ok(());
    };
    if procfs::group_holds_socket(group, &inodes) {
        Ok(())
    } else {
        Err(not_ours())
    }
}

/// One kind of check, prepared once per run.
enum Check {
    Socket(PathBuf),
    Tcp(String, u16),
    Http(reqwest::Client, String),
    Exec(ExecCheck),
    LogLine(LogScanner),
    None,
}

struct ExecCheck {
    command: Vec<String>,
    cwd: PathBuf,
    env: Vec<(String, String)>,
    run_as: Option<RunAs>,
}

/// The readiness probe of one run of a process.
pub(super) struct Prober {
    check: Check,
    initial_delay: Duration,
    interval: Duration,
    deadline: Instant,
    started: Instant,
    /// Failed checks allowed before giving up (within the deadline).
    retries: Option<u32>,
    /// The spawned process group, which must own the listening socket a check connects to.
    group: u32,
    /// The socket or port the check connects to, if it connects to one.
    target: Option<Target>,
    /// What wakes the probe before its next interval, when anything can.
    wake: Option<Wake>,
}

/// The signs of life that wake a probe between its intervals: a file created or moved into the directory of the
/// socket a socket probe connects to (the server bound it), and a write to the process's log (servers say when
/// they listen and when they are ready). Only the probes whose check is cheap (one connect, or reading the log's
/// new bytes) are woken; one that forks a command or sends a request keeps its interval. Without inotify (no
/// instances left, an unreadable directory) the probe just checks every interval.
fn wake_for(kind: &ProbeKind, log: &Path) -> Option<Wake> {
    match kind {
        ProbeKind::Socket { path } => Wake::new(&[log], path.parent().as_slice()),
        ProbeKind::Tcp { .. } | ProbeKind::LogLine { .. } => Wake::new(&[log], &[]),
        _ => None,
    }
}

impl Prober {
    /// The probe of `spec` for the run spawned at `started` as the process group `group`, whose output starts at
    /// `log_offset` in its log. `log_pattern` is the compiled `log_line` pattern (checked when the start request
    /// came in).
    pub(super) fn new(
        spec: &SpawnSpec,
        log_pattern: Option<Regex>,
        log_offset: u64,
        started: Instant,
        group: u32,
    ) -> Result<Prober, String> {
        let check = match &spec.probe.kind {
            ProbeKind::Socket { path } => Check::Socket(path.clone()),
            ProbeKind::Tcp { host, port } => Check::Tcp(host.clone(), *port),
            ProbeKind::Http { url } => {
                let client = crate::fetch::client_builder()
                    .user_agent(concat!("kip-supervisor/", env!("CARGO_PKG_VERSION")))
                    // A probe checks a local engine: a proxy from the environment would check something else.
                    .no_proxy()
                    .build()
                    .map_err(|error| {
                        format!("cannot set up the HTTP client: {}", error_chain(&error))
                    })?;
                Check::Http(client, url.clone())
            }
            ProbeKind::Exec { command } => Check::Exec(ExecCheck {
                command: command.clone(),
                cwd: spec.cwd.clone(),
                env: spec
                    .env
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect(),
                run_as: spec.run_as.clone(),
            }),
            ProbeKind::LogLine { .. } => match log_pattern {
                Some(regex) => Check::LogLine(LogScanner::new(spec.log.clone(), regex, log_offset)),
                None => return Err("the log_line pattern was not compiled".to_owned()),
            },
            ProbeKind::None => Check::None,
        };
        Ok(Prober {
            check,
            initial_delay: spec.probe.initial_delay,
            interval: spec.probe.interval.max(min_interval(&spec.probe.kind)),
            deadline: started + spec.probe.timeout,
            started,
            retries: spec.probe.retries,
            group,
            target: Target::of(&spec.probe.kind),
            wake: wake_for(&spec.probe.kind, &spec.log),
        })
    }

    /// Checks until a check passes (Ok), or the timeout runs out or more checks than `retries` failed (the last
    /// check's reason). Without a check, the process is ready once it has run for the initial delay (its caller
    /// sees an exit before then).
    pub(super) async fn wait_ready(mut self) -> Result<(), ProbeFailure> {
        if let Check::None = self.check {
            tokio::time::sleep_until(self.started + self.initial_delay).await;
            return Ok(());
        }
        tokio::time::sleep_until((self.started + self.initial_delay).min(self.deadline)).await;
        let mut failed = 0u32;
        let mut woken = false;
        let mut next = Instant::now();
        loop {
            // Checks start every `interval` (not `interval` after the last one ended), so a slow check does not
            // stretch the cadence: a server that is up is seen at most one interval late. A check woken in
            // between keeps the cadence, and its failure does not count against `retries` (a process that
            // writes its log often would spend them in no time).
            if !woken {
                next = Instant::now() + self.interval;
            }
            let budget = self
                .deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_CHECK);
            let clock = std::time::Instant::now();
            let reason = match tokio::time::timeout(budget, self.check_once(budget)).await {
                Ok(Ok(())) => {
                    tracing::trace!(woken, "probe check passed in {:?}", clock.elapsed());
                    return Ok(());
                }
                Ok(Err(reason)) => reason,
                Err(_) => format!("the check did not finish within {} ms", budget.as_millis()),
            };
            let now = Instant::now();
            tracing::trace!(woken, "probe check failed: {reason}");
            if !woken {
                failed = failed.saturating_add(1);
            }
            if let Some(retries) = self.retries
                && failed > retries
            {
                return Err(ProbeFailure {
                    reason: format!(
                        "{failed} checks failed (retries = {retries}); last check: {reason}"
                    ),
                    waited: now - self.started,
                });
            }
            if now >= self.deadline {
                return Err(ProbeFailure {
                    reason: format!("last check: {reason}"),
                    waited: now - self.started,
                });
            }
            let interval = tokio::time::sleep_until(next.min(self.deadline));
            woken = match &mut self.wake {
                Some(wake) => tokio::select! {
                    () = interval => false,
                    () = wake.next() => true,
                },
                None => {
                    interval.await;
                    false
                }
            };
        }
    }

    async fn check_once(&mut self, budget: Duration) -> Result<(), String> {
        match &mut self.check {
            Check::Socket(path) => {
                let stream = tokio::net::UnixStream::connect(&*path)
                    .await
                    .map_err(|error| format!("cannot connect to {}: {error}", path.display()))?;
                let peer_pid = stream
                    .peer_cred()
                    .ok()
                    .and_then(|cred| cred.pid())
                    .and_then(|pid| u32::try_from(pid).ok());
                self.check_listener(peer_pid)
            }
            Check::Tcp(host, port) => {
                tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|error| format!("cannot connect to {host}:{port}: {error}"))?;
                self.check_listener(None)
            }
            Check::Http(client, url) => {
                let response = client
                    .get(url.as_str())
                    .timeout(budget)
                    .send()
                    .await
                    .map_err(|error| format!("GET {url} failed: {}", error_chain(&error)))?;
                let status = response.status();
                if status.is_success() {
                    self.check_listener(None)
                } else {
                    Err(format!("GET {url} answered {status}"))
                }
            }
            Check::Exec(exec) => exec.run().await,
            Check::LogLine(scanner) => scanner.check(),
            Check::None => Ok(()),
        }
    }
}

impl Prober {
    fn check_listener(&self, peer_pid: Option<u32>) -> Result<(), String> {
        match &self.target {
            Some(target) => check_listener(target, self.group, peer_pid),
            None => Ok(()),
        }
    }
}

impl ExecCheck {
    async fn run(&self) -> Result<(), String> {
        let shown = self.command.join(" ");
        let Some((program, args)) = self.command.split_first() else {
            return Err("the exec probe has an empty command".to_owned());
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            // When the check runs out of time, the future is dropped: kill the command then (tokio reaps it).
            .kill_on_drop(true);
        if !self.cwd.as_os_str().is_empty() {
            command.current_dir(&self.cwd);
        }
        if let Some(run_as) = &self.run_as {
            command.uid(run_as.uid).gid(run_as.gid);
        }
        let output = command
            .output()
            .await
            .map_err(|error| format!("cannot run `{shown}`: {error}"))?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = stderr
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .map(str::trim);
        Err(match said {
            Some(said) => format!(
                "`{shown}` {}: {said}",
                super::process::describe_exit(output.status)
            ),
            None => format!("`{shown}` {}", super::process::describe_exit(output.status)),
        })
    }
}

/// An error and its causes on one line: reqwest's own message rarely says what actually failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
