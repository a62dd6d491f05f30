//! kip's per-project supervisor: the background process that runs a project's engines, so that they outlive the
//! `kip` command that started them.
//!
//! `kip apply` and `kip up` connect to the project's supervisor (starting it on demand with
//! [`Client::start_daemon`]), ask it to start each process of each instance, and return; the engines keep running
//! until `kip down` or `kip destroy` stops them. The supervisor spawns every process in its own process group with
//! its output appended to its log, answers a start only once the process passed its readiness probe, restarts a
//! process that crashes (per its [`RestartPolicy`](crate::engine::RestartPolicy), with exponential backoff), and
//! stops processes with their stop sequence (each signal to the whole group, then SIGKILL).
//!
//! Layout under the project's `.kip/` directory: `supervisor.sock` (the control socket), `supervisor.pid` (the
//! daemon's pid, for humans and for error messages), `logs/supervisor.log` (the daemon's own output, written by
//! [`Client::start_daemon`]). Process logs go wherever each [`SpawnSpec::log`](crate::engine::SpawnSpec) says.
//!
//! # Wire protocol (version 1)
//!
//! Newline-delimited JSON over the unix socket: the client writes one request object per line and reads one
//! response line per request, in order. A connection may carry any number of requests; the daemon serves
//! connections concurrently, and the requests of one connection one after the other (a `start` that waits for
//! readiness holds its connection, so a client that starts processes in parallel opens one connection each).
//!
//! Every message carries `"v": 1`. A request without it, with another version, that is not JSON or not an
//! object, or longer than 1 MiB gets an error response (the rest of an over-long line is skipped), and the daemon
//! keeps serving, on that connection too.
//!
//! ```text
//! → {"v":1,"op":"ping"}                   ← {"v":1,"ok":true,"result":{"pid":4242,"protocol":1,"kip_version":"0.1.0"}}
//! → {"v":1,"op":"start","spec":{…}}       ← {"v":1,"ok":true,"result":<ProcessStatus>}   (once ready)
//! → {"v":1,"op":"stop","name":"pg.main"}  ← {"v":1,"ok":true,"result":null}              (once exited and reaped)
//! → {"v":1,"op":"status"}                 ← {"v":1,"ok":true,"result":[<ProcessStatus>, …]}  (in start order)
//! → {"v":1,"op":"shutdown"}               ← {"v":1,"ok":true,"result":null}  (everything stopped, socket removed)
//! ← {"v":1,"ok":false,"error":{"kind":"not_ready","message":"…","hint":"…",…}}
//! ```
//!
//! `spec` is a [`SpawnSpec`](crate::engine::SpawnSpec) as serde writes it (durations in milliseconds); a
//! [`ProcessStatus`] likewise:
//!
//! ```text
//! {"name":"postgres.main","pid":4711,"state":{"kind":"ready"},"started_at":1767225600000,"restarts":0,
//!  "log":"/p/.kip/logs/postgres.main.log","probe":{"kind":"socket","path":"/p/.kip/run/main/.s.PGSQL.5432"}}
//! ```
//!
//! `state.kind` is `starting`, `ready`, `restarting`, `exited` (with `code` or `signal`) or `failed` (with
//! `reason`). An error is a [`RequestError`] (tagged by `kind`, with its fields) plus `message` (the rendered
//! error) and `hint` (or null) for clients that do not know the kind.

// Inside the module, `RequestError` results carry the log lines they quote, which makes them large; they are
// built once per failed request, never in a loop. The public `SupervisorError` boxes it.
#![allow(clippy::result_large_err)]

mod client;
mod daemon;
mod error;
mod logfile;
mod probe;
mod process;
mod protocol;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use client::{Client, DAEMON_START_TIMEOUT};
pub use daemon::{DaemonOptions, run_daemon, run_daemon_with};
pub use error::{RequestError, SupervisorError};
pub use protocol::PROTOCOL_VERSION;

use crate::engine::ProbeKind;

/// The control socket's file name in the project's `.kip/` directory.
pub const SOCKET_FILE: &str = "supervisor.sock";
/// The daemon's pid file name in `.kip/`.
pub const PID_FILE: &str = "supervisor.pid";
/// The daemon's own log, relative to `.kip/`.
pub const DAEMON_LOG: &str = "logs/supervisor.log";

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

/// What a supervisor says about itself when pinged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub protocol: u32,
    pub kip_version: String,
}
