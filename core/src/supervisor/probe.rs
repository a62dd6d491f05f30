//! Readiness probes: how the supervisor decides that a process it spawned is ready to serve, so that `kip apply`
//! can go on to converge it and start what depends on it.
//!
//! A probe waits its initial delay, then checks every interval until one check passes or its timeout (counted
//! from the spawn) runs out. Each check is bounded by what is left of the timeout, so a server that accepts a
//! connection and never answers cannot hold a probe past it. A failed probe reports the reason of its last check.

use std::path::PathBuf;
use std::time::Duration;

use regex_lite::Regex;
use tokio::time::Instant;

use super::logfile::LogScanner;
use crate::engine::{ProbeKind, RunAs, SpawnSpec};

/// The shortest interval between checks: a zero interval would spin.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// The least time a check gets, even when the probe's timeout is (nearly) spent: every probe checks at least once.
const MIN_CHECK: Duration = Duration::from_millis(50);

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
}

impl Prober {
    /// The probe of `spec` for the run spawned at `started`, whose output starts at `log_offset` in its log.
    /// `log_pattern` is the compiled `log_line` pattern (checked when the start request came in).
    pub(super) fn new(
        spec: &SpawnSpec,
        log_pattern: Option<Regex>,
        log_offset: u64,
        started: Instant,
    ) -> Result<Prober, String> {
        let check = match &spec.probe.kind {
            ProbeKind::Socket { path } => Check::Socket(path.clone()),
            ProbeKind::Tcp { host, port } => Check::Tcp(host.clone(), *port),
            ProbeKind::Http { url } => {
                // reqwest is built without a default TLS crypto provider; install ring as `fetch` does. Another
                // part of the process may have installed one already, which is fine.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let client = reqwest::Client::builder()
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
            interval: spec.probe.interval.max(MIN_INTERVAL),
            deadline: started + spec.probe.timeout,
            started,
        })
    }

    /// Checks until a check passes (Ok) or the timeout runs out (the last check's reason).
    pub(super) async fn wait_ready(mut self) -> Result<(), ProbeFailure> {
        if let Check::None = self.check {
            return Ok(());
        }
        tokio::time::sleep_until((self.started + self.initial_delay).min(self.deadline)).await;
        loop {
            let budget = self
                .deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_CHECK);
            let reason = match tokio::time::timeout(budget, self.check_once(budget)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(reason)) => reason,
                Err(_) => format!("the check did not finish within {} ms", budget.as_millis()),
            };
            let now = Instant::now();
            if now >= self.deadline {
                return Err(ProbeFailure {
                    reason,
                    waited: now - self.started,
                });
            }
            tokio::time::sleep_until((now + self.interval).min(self.deadline)).await;
        }
    }

    async fn check_once(&mut self, budget: Duration) -> Result<(), String> {
        match &mut self.check {
            Check::Socket(path) => tokio::net::UnixStream::connect(&*path)
                .await
                .map(drop)
                .map_err(|error| format!("cannot connect to {}: {error}", path.display())),
            Check::Tcp(host, port) => tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map(drop)
                .map_err(|error| format!("cannot connect to {host}:{port}: {error}")),
            Check::Http(client, url) => {
                let response = client
                    .get(url.as_str())
                    .timeout(budget)
                    .send()
                    .await
                    .map_err(|error| format!("GET {url} failed: {}", error_chain(&error)))?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
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

impl ExecCheck {
    async fn run(&self) -> Result<(), String> {
        let shown = self.command.join(" ");
        let Some((program, args)) = self.command.split_first() else {
            return Err("the exec probe has an empty command".to_owned());
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
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
