//! The supervisor's errors: [`RequestError`] for what the daemon answers about a request (it crosses the socket,
//! so it holds plain data: names, paths, reasons and log lines), and [`SupervisorError`] for everything a caller
//! of this module can meet, including the daemon's answers.
//!
//! Errors about a process always name it, and the ones about readiness quote the last lines of its log: that is
//! where the engine says why it did not come up (a bad setting, a port in use), and the user should not have to
//! go and look for it.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::WaitUntil;

/// Why the daemon refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RequestError {
    #[error("the process `{name}` cannot be started as specified: {reason}")]
    InvalidSpec { name: String, reason: String },
    #[error("cannot open the log of `{name}` at {}: {reason}", log.display())]
    OpenLog {
        name: String,
        log: PathBuf,
        reason: String,
    },
    #[error("cannot start `{name}` ({}): {reason}", program.display())]
    Spawn {
        name: String,
        program: PathBuf,
        reason: String,
    },
    #[error(
        "`{name}` did not become ready: its {probe} probe did not pass within {}; {reason}{}",
        seconds(*waited_ms),
        quote_tail(log, tail)
    )]
    NotReady {
        name: String,
        probe: String,
        reason: String,
        waited_ms: u64,
        log: PathBuf,
        tail: Vec<String>,
    },
    #[error(
        "`{name}` exited before it was ready ({exit}){}",
        quote_tail(log, tail)
    )]
    ExitedBeforeReady {
        name: String,
        exit: String,
        log: PathBuf,
        tail: Vec<String>,
    },
    #[error("`{name}` was stopped before it became ready")]
    StoppedBeforeReady { name: String },
    #[error("`{name}` must start after `{dependency}`, which is {state}")]
    DependencyNotReady {
        name: String,
        dependency: String,
        state: String,
    },
    #[error("no process named `{name}` is supervised")]
    UnknownProcess { name: String },
    #[error("cannot send {signal} to `{name}` (process group {pid}): {reason}")]
    Signal {
        name: String,
        signal: String,
        pid: u32,
        reason: String,
    },
    #[error("cannot start `{name}`: something else already listens on {target}")]
    AddressInUse { name: String, target: String },
    #[error("`{name}` has no reload signal: it can only be restarted")]
    NoReloadSignal { name: String },
    #[error("`{name}` is not running: it {state}")]
    NotRunning { name: String, state: String },
    #[error("`{name}` was not {until} after {}: it {state}", seconds(*waited_ms))]
    WaitTimeout {
        name: String,
        until: WaitUntil,
        waited_ms: u64,
        state: String,
    },
    #[error("`{name}` will not be {until}: it {state}")]
    WaitUnreachable {
        name: String,
        until: WaitUntil,
        state: String,
    },
    #[error(
        "the supervisor serves only uid {owner} and root, and this connection comes from {}",
        uid.map_or_else(|| "an unknown uid".to_owned(), |uid| format!("uid {uid}"))
    )]
    Forbidden { uid: Option<u32>, owner: u32 },
    #[error("bad request: {reason}")]
    BadRequest { reason: String },
    #[error(
        "the supervisor speaks protocol version {supported}, and the request is version {requested}"
    )]
    UnsupportedVersion { requested: String, supported: u32 },
    #[error("the supervisor is shutting down")]
    ShuttingDown,
    /// An error kind this client does not know (a newer supervisor), with the daemon's rendering of it.
    #[error("{message}")]
    Other { message: String },
}

impl RequestError {
    /// What the user can do about it, for the `hint:` line the CLI renders.
    pub fn hint(&self) -> Option<String> {
        match self {
            RequestError::NotReady { log, .. } | RequestError::ExitedBeforeReady { log, .. } => {
                Some(format!("the whole log is {}", log.display()))
            }
            RequestError::DependencyNotReady { dependency, .. } => {
                Some(format!("start `{dependency}` first, and make sure it stays up"))
            }
            RequestError::UnsupportedVersion { .. } => Some(
                "the running supervisor belongs to another kip version: stop it with `kip down` from that version, \
                 or stop its pid (in .kip/supervisor.pid)"
                    .to_owned(),
            ),
            RequestError::AddressInUse { target, .. } => Some(format!(
                "stop whatever serves {target} (`ss -xlp` lists unix sockets, `ss -tlnp` TCP ports with their \
                 processes), or give the instance another socket or port"
            )),
            RequestError::NoReloadSignal { .. } => {
                Some("restart it instead: apply with the changed settings restarts it".to_owned())
            }
            RequestError::Forbidden { .. } => Some(
                "run kip as the account that started the supervisor (or as root)".to_owned(),
            ),
            RequestError::Spawn { program, .. } => Some(format!(
                "check that {} exists and is executable by the account the process runs as",
                program.display()
            )),
            _ => None,
        }
    }
}

/// Everything that can go wrong running, reaching or asking the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot create {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {}", socket.display())]
    Bind {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another supervisor already serves {}{}", socket.display(), pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default())]
    AlreadyRunning { socket: PathBuf, pid: Option<u32> },
    #[error("another supervisor holds {}{}", lock.display(), pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default())]
    Locked { lock: PathBuf, pid: Option<u32> },
    #[error("cannot lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the process table {}", path.display())]
    Table {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", path.display())]
    PidFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the supervisor's signal handling")]
    Signals {
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to the supervisor at {}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lost the connection to the supervisor at {}", socket.display())]
    Transport {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the supervisor at {} closed the connection without answering", socket.display())]
    Closed { socket: PathBuf },
    #[error("the supervisor at {} answered something this kip does not understand: {reason}", socket.display())]
    Protocol { socket: PathBuf, reason: String },
    #[error("the supervisor at {} did not answer {what} within {}", socket.display(), seconds(*waited_ms))]
    Timeout {
        socket: PathBuf,
        what: &'static str,
        waited_ms: u64,
    },
    #[error("cannot open the supervisor's log {}", path.display())]
    DaemonLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the supervisor ({})", program.display())]
    SpawnDaemon {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the supervisor did not answer on {} within {}{}{}",
        socket.display(),
        seconds(*waited_ms),
        exit.as_ref().map(|exit| format!("; it exited ({exit})")).unwrap_or_default(),
        quote_tail(log, tail)
    )]
    DaemonDidNotStart {
        socket: PathBuf,
        waited_ms: u64,
        exit: Option<String>,
        log: PathBuf,
        tail: Vec<String>,
    },
    /// The daemon's answer to a request. Boxed: it quotes log lines, and every `Result` of this module would
    /// otherwise carry its size.
    #[error(transparent)]
    Request(Box<RequestError>),
}

impl From<RequestError> for SupervisorError {
    fn from(error: RequestError) -> SupervisorError {
        SupervisorError::Request(Box::new(error))
    }
}

impl SupervisorError {
    /// What the user can do about it, for the `hint:` line the CLI renders.
    pub fn hint(&self) -> Option<String> {
        match self {
            SupervisorError::AlreadyRunning { .. } => Some(
                "use the running supervisor (kip up, kip ps), or stop it with `kip down`"
                    .to_owned(),
            ),
            SupervisorError::Locked { .. } => Some(
                "another supervisor of this project is starting or stuck: wait a moment, or stop its pid".to_owned(),
            ),
            SupervisorError::Bind { socket, source }
                if source.kind() == io::ErrorKind::InvalidInput =>
            {
                Some(format!(
                    "unix socket paths are limited to 107 bytes and {} has {}: move the project to a shorter path",
                    socket.display(),
                    socket.as_os_str().len()
                ))
            }
            SupervisorError::Timeout { .. } => Some(
                "the supervisor may be stuck: see .kip/logs/supervisor.log, and stop its pid (in \
                 .kip/supervisor.pid) if it does not recover"
                    .to_owned(),
            ),
            SupervisorError::DaemonDidNotStart { log, .. } => {
                Some(format!("the whole log is {}", log.display()))
            }
            SupervisorError::Request(error) => error.hint(),
            _ => None,
        }
    }
}

/// `1.5 s`, `200 ms`: a duration in the unit a person reads best.
fn seconds(millis: u64) -> String {
    if millis < 1000 {
        format!("{millis} ms")
    } else {
        format!("{:.1} s", millis as f64 / 1000.0)
    }
}

/// The log lines an error quotes, indented under a line that names the log.
/// The last lines of a log as an error quotes them, on lines of their own after the message.
pub fn quote_tail(log: &Path, tail: &[String]) -> String {
    if tail.is_empty() {
        return format!("\n  (nothing in {} from this run)", log.display());
    }
    let mut text = format!("\n  last lines of {}:", log.display());
    for line in tail {
        let _ = write!(text, "\n  | {line}");
    }
    text
}
