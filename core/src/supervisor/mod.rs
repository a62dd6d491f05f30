//! kip's per-project supervisor: the background process that runs a project's engines, so that they outlive the
//! `kip` command that started them, and that survives its own crash without losing them.
//!
//! `kip apply` and `kip up` connect to the project's supervisor (starting it on demand with
//! [`Client::start_daemon`]), ask it to start each process of each instance, and return; the engines keep running
//! until `kip down` or `kip destroy` stops them. The supervisor spawns every process in its own process group with
//! its output appended to its log, answers a start only once the process passed its readiness probe (and the
//! socket or port the probe reached is the process's own), restarts a process that crashes (per its
//! [`RestartPolicy`](crate::engine::RestartPolicy), with exponential backoff, at most `max_restarts` times in a
//! row, [`DEFAULT_MAX_RESTARTS`] unless the spec says otherwise), and stops processes with their stop sequence
//! (each signal to the whole group, then SIGKILL).
//!
//! The daemon persists its process table on every change. When it is killed (SIGKILL, OOM killer) the engines run
//! on; the next daemon (started by [`Client::connect_or_adopt`] when a command finds none answering but the table
//! lists live processes) adopts every process whose pid is alive with the recorded start time: it reports,
//! monitors, restarts and stops them as if it had started them. A start of an adopted process with the same spec
//! spawns nothing.
//!
//! Layout under the project's `.kip/` directory: `supervisor.sock` (the control socket, mode 0600),
//! `supervisor.lock` (locked by the daemon for its whole life: one daemon per project), `supervisor.pid` (the
//! daemon's pid, for humans and for error messages), `supervisor/table.json` (the persisted process table, mode
//! 0600), `logs/supervisor.log` (the daemon's own output, written by [`Client::start_daemon`]). Process logs go
//! wherever each [`SpawnSpec::log`](crate::engine::SpawnSpec) says.
//!
//! # Wire protocol (version 2)
//!
//! Newline-delimited JSON over the unix socket: the client writes one request object per line and reads one
//! response line per request, in order. A connection may carry any number of requests; the daemon serves
//! connections concurrently, and the requests of one connection one after the other (a `start` or `wait` holds
//! its connection until it is answered, so a client that starts processes in parallel opens one connection each).
//! Only the daemon's own effective uid and root may connect: any other peer gets one `forbidden` error line, and
//! the connection is closed.
//!
//! Every message carries `"v": 2`. A request without it, with another version, that is not JSON or not an
//! object, or longer than 1 MiB gets an error response (the rest of an over-long line is skipped), and the daemon
//! keeps serving, on that connection too.
//!
//! ```text
//! → {"v":2,"op":"ping"}                   ← {"v":2,"ok":true,"result":{"pid":4242,"protocol":2,"kip_version":"0.1.0"}}
//! → {"v":2,"op":"start","spec":{…}}       ← {"v":2,"ok":true,"result":<ProcessStatus>}   (once ready)
//! → {"v":2,"op":"stop","name":"pg.main"}  ← {"v":2,"ok":true,"result":null}              (once its group is gone)
//! → {"v":2,"op":"status"}                 ← {"v":2,"ok":true,"result":[<ProcessStatus>, …]}  (in start order)
//! → {"v":2,"op":"reload","name":"pg.main"}                          ← {"v":2,"ok":true,"result":null}
//! → {"v":2,"op":"wait","name":"job","until":"exited","timeout_ms":60000}
//!                                         ← {"v":2,"ok":true,"result":<ProcessStatus>}   (once it got there)
//! → {"v":2,"op":"shutdown"}               ← {"v":2,"ok":true,"result":null}  (everything stopped, socket removed)
//! ← {"v":2,"ok":false,"error":{"kind":"not_ready","message":"…","hint":"…",…}}
//! ```
//!
//! - `ping`: the daemon's pid, protocol version and kip version ([`DaemonInfo`]).
//! - `start`: starts the process `spec` describes and answers once its readiness probe passed. A process of that
//!   name that is ready with an equal spec is left alone and its status answered (a starting one is waited for);
//!   with another spec it is stopped first (its whole group), then the new one is spawned. A `socket`, `tcp` or
//!   loopback `http` probe target that already accepts connections before the spawn refuses the start
//!   (`address_in_use`): that server is someone else's.
//! - `stop`: stops the process with its stop sequence and forgets it; answered once its process group is gone.
//! - `status`: every supervised process, in start order.
//! - `reload`: sends the spec's `reload` signal to the running process's group (`no_reload_signal` when the spec
//!   has none, `not_running` when no run is alive).
//! - `wait`: answers the status once the process is `ready`, or, with `"until":"exited"`, once it is no longer
//!   running and will not be restarted (a one-shot job: `state` is `exited` with its `code`, or `failed`). Longer
//!   than `timeout_ms` is a `wait_timeout` error; waiting for `ready` on a process that exited for good is
//!   `wait_unreachable`.
//! - `shutdown`: stops every process, newest first, removes the socket and ends the daemon.
//!
//! `spec` is a [`SpawnSpec`](crate::engine::SpawnSpec) as serde writes it (durations in milliseconds); a
//! [`ProcessStatus`] likewise:
//!
//! ```text
//! {"name":"postgres.main","pid":4711,"state":{"kind":"ready"},"started_at":1767225600000,"restarts":0,
//!  "log":"/p/.kip/logs/postgres.main.log","probe":{"kind":"socket","path":"/p/.kip/run/main/.s.PGSQL.5432"},
//!  "instance":"postgres.main","start_time":123456,"adopted":false}
//! ```
//!
//! `state.kind` is `starting`, `ready`, `restarting`, `exited` (with `code` or `signal`) or `failed` (with
//! `reason`; a spent restart budget says how many restarts were made and how the last run ended). `start_time` is
//! the running process's start in clock ticks since boot (`/proc/PID/stat`); `adopted` says the running process
//! was started by an earlier supervisor. An error is a [`RequestError`] (tagged by `kind`, with its fields) plus
//! `message` (the rendered error) and `hint` (or null) for clients that do not know the kind.

// Inside the module, `RequestError` results carry the log lines they quote, which makes them large; they are
// built once per failed request, never in a loop. The public `SupervisorError` boxes it.
#![allow(clippy::result_large_err)]

mod client;
mod daemon;
mod error;
mod logfile;
mod probe;
mod process;
mod procfs;
mod protocol;
mod table;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use client::{Client, DAEMON_START_TIMEOUT};
pub use daemon::{DaemonOptions, run_daemon, run_daemon_with};
pub use error::{RequestError, SupervisorError, quote_tail};
pub use logfile::tail as log_tail;
pub use process::DEFAULT_MAX_RESTARTS;
pub use procfs::{pids, running_as, working_in};
pub use protocol::PROTOCOL_VERSION;

use crate::engine::ProbeKind;

/// The control socket's file name in the project's `.kip/` directory.
pub const SOCKET_FILE: &str = "supervisor.sock";
/// The daemon's pid file name in `.kip/`.
pub const PID_FILE: &str = "supervisor.pid";
/// The daemon's own log, relative to `.kip/`.
pub const DAEMON_LOG: &str = "logs/supervisor.log";
/// The file the daemon holds an exclusive lock on for its whole life, in `.kip/`: one daemon per project.
pub const LOCK_FILE: &str = "supervisor.lock";
/// The persisted process table, relative to `.kip/`.
pub const TABLE_FILE: &str = "supervisor/table.json";

/// The control socket of the supervisor of the project whose `.kip/` directory is `kip_dir`.
pub fn socket_path(kip_dir: &Path) -> PathBuf {
    kip_dir.join(SOCKET_FILE)
}

/// The pid file of the supervisor of `kip_dir`.
pub fn pid_file_path(kip_dir: &Path) -> PathBuf {
    kip_dir.join(PID_FILE)
}

/// The daemon's own log (where [`Client::start_daemon`] sends its stdout and stderr).
pub fn daemon_log_path(kip_dir: &Path) -> PathBuf {
    kip_dir.join(DAEMON_LOG)
}

/// The daemon's lock file.
pub fn lock_path(kip_dir: &Path) -> PathBuf {
    kip_dir.join(LOCK_FILE)
}

/// The persisted process table, which a new daemon reads to adopt the processes of one that was killed.
pub fn table_path(kip_dir: &Path) -> PathBuf {
    kip_dir.join(TABLE_FILE)
}

/// What `kip ps` shows about one supervised process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub name: String,
    /// The pid (and process group id) of the running process; none while restarting or after it exited.
    pub pid: Option<u32>,
    pub state: ProcessState,
    /// When the current (or last) run was spawned, in milliseconds since the unix epoch.
    pub started_at: Option<u64>,
    /// How many times the supervisor restarted it since it was first started.
    pub restarts: u32,
    pub log: PathBuf,
    /// What its readiness probe checks: the socket path, host and port, URL… (the spec's probe kind).
    pub probe: ProbeKind,
    /// The engine instance it belongs to (the spec's `instance`).
    #[serde(default)]
    pub instance: String,
    /// When the running process started, in clock ticks since boot (`/proc/PID/stat` field 22): with the pid, it
    /// tells this process from a later one that got the same pid.
    #[serde(default)]
    pub start_time: Option<u64>,
    /// The running process was started by an earlier supervisor (which was killed) and adopted by this one. Its
    /// exit status is unknown to this supervisor, so its exit counts as a failure.
    #[serde(default)]
    pub adopted: bool,
}

/// Where a supervised process is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ProcessState {
    /// Spawned, its readiness probe has not passed yet.
    Starting,
    /// Its readiness probe passed and it is running.
    Ready,
    /// It exited and the supervisor waits out the backoff before starting it again.
    Restarting,
    /// It exited and its restart policy says to leave it so: a `code`, or the `signal` that ended it.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// It never became ready, or crashed more often than its `max_restarts` allows.
    Failed { reason: String },
}

impl ProcessState {
    /// Whether a process in this state is (still) running or about to be.
    pub fn is_live(&self) -> bool {
        matches!(
            self,
            ProcessState::Starting | ProcessState::Ready | ProcessState::Restarting
        )
    }
}

impl ProcessState {
    /// The state as a sentence ends after "it": "is ready", "exited with code 3", "failed (…)".
    pub(crate) fn describe(&self) -> String {
        match self {
            ProcessState::Starting => "is starting".to_owned(),
            ProcessState::Ready => "is ready".to_owned(),
            ProcessState::Restarting => "is waiting to be restarted".to_owned(),
            ProcessState::Exited {
                code: Some(code), ..
            } => format!("exited with code {code}"),
            ProcessState::Exited {
                signal: Some(signal),
                ..
            } => format!("was killed by signal {signal}"),
            ProcessState::Exited { .. } => "exited".to_owned(),
            ProcessState::Failed { reason } => format!("failed ({reason})"),
        }
    }
}

/// What a `wait` request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitUntil {
    /// The process passed its readiness probe and runs.
    Ready,
    /// The process is no longer running and will not be restarted (a one-shot job finished): its state is
    /// `exited` (with its code) or `failed`.
    Exited,
}

impl std::fmt::Display for WaitUntil {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            WaitUntil::Ready => "ready",
            WaitUntil::Exited => "exited",
        })
    }
}

/// What a supervisor says about itself when pinged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub protocol: u32,
    pub kip_version: String,
}
