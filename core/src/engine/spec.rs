//! The processes of an engine instance as plain data: what to run ([`SpawnSpec`]), how to tell it is ready
//! ([`Probe`]), when to restart it ([`RestartPolicy`]), how to stop ([`StopSpec`]) and reload it, and as whom
//! ([`RunAs`]). These cross the supervisor's socket and are kept in its process table, so they hold no behaviour.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How to tell that a process is ready to serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ProbeKind {
    /// A unix socket accepts a connection.
    Socket { path: PathBuf },
    /// A TCP port accepts a connection.
    Tcp { host: String, port: u16 },
    /// An HTTP GET answers 2xx.
    Http { url: String },
    /// A command exits 0.
    Exec { command: Vec<String> },
    /// The process's log has a line containing this text.
    LogLine { pattern: String },
    /// No probe: ready as soon as it started, or, when the probe has an `initial_delay`, once it has run that
    /// long without exiting (so that a program that exits at once fails its start instead of passing it).
    None,
}

/// A readiness probe: what to check, how often, and for how long at most.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub kind: ProbeKind,
    /// Wait this long after the start before the first check.
    #[serde(with = "millis")]
    pub initial_delay: Duration,
    #[serde(with = "millis")]
    pub interval: Duration,
    /// The whole budget: not ready by then is a failure whose error quotes the log's last lines.
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// Failed checks allowed before the probe gives up, within `timeout`; `None`: only `timeout` limits it.
    #[serde(default)]
    pub retries: Option<u32>,
}

/// When the supervisor restarts a process that exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    No,
    OnFailure,
    Always,
}

/// How to stop a process: its stop command when it has one, then each signal in turn, waiting up to its timeout
/// for the whole process group to be gone, then SIGKILL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopSpec {
    /// A command that asks the process to stop (`["./bin/web", "shutdown"]`), run first, with the process's
    /// environment, directory and account, plus `KIP_STOP_PID` (the process's pid).
    #[serde(default)]
    pub command: Option<StopCommand>,
    /// Signal names ("SIGINT", "SIGTERM", "SIGQUIT") with how long to wait after each.
    pub signals: Vec<(String, u64)>,
    /// How to stop it when its data is deleted right after (`kip destroy`, a replacement): one signal that skips
    /// the shutdown work nobody will read (PostgreSQL's immediate shutdown, SIGKILL for an engine whose data are
    /// files only), with how long to wait, then SIGKILL. None: the ordinary sequence, whatever comes after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard: Option<(String, u64)>,
}

/// A stop command and how long the process gets to be gone after it is started (the command itself included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopCommand {
    pub command: Vec<String>,
    pub wait_ms: u64,
}

impl Default for StopSpec {
    fn default() -> Self {
        StopSpec {
            command: None,
            signals: vec![("SIGTERM".into(), 10_000), ("SIGQUIT".into(), 5_000)],
            discard: None,
        }
    }
}

/// An account to run as (engines that refuse root, or `run_as`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// The uid a process runs as: `run_as`'s, or without one, this process's own (kip runs engines as itself when
    /// it is not root).
    pub fn uid_or_own(run_as: Option<&RunAs>) -> u32 {
        run_as.map_or_else(|| rustix::process::geteuid().as_raw(), |run_as| run_as.uid)
    }
}

/// One process of an instance, as the supervisor runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnSpec {
    /// Unique in the project: the instance address, plus `/process` for instances of several processes
    /// (`s3.store/master`); see [`SpawnSpec::name_for`].
    pub name: String,
    /// The address of the instance the process belongs to (an instance may run several).
    #[serde(default)]
    pub instance: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The process's whole environment: the supervisor starts it with exactly this, inheriting nothing (engines
    /// get what they need; `process` blocks get kip's environment plus `env`, explicitly).
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub run_as: Option<RunAs>,
    pub probe: Probe,
    pub restart: RestartPolicy,
    #[serde(default)]
    pub max_restarts: Option<u32>,
    /// The pause before the first restart in a row, in milliseconds; each further one is twice as long, up to
    /// 10 s (or this, when it is longer). `None`: the supervisor's own (200 ms).
    #[serde(default)]
    pub restart_delay_ms: Option<u64>,
    pub stop: StopSpec,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    /// Names of processes of the same instance that must be ready first (composite engines).
    #[serde(default)]
    pub after: Vec<String>,
    /// The signal that makes the process re-read its configuration ("SIGHUP"); `None` when it has no reload.
    #[serde(default)]
    pub reload: Option<String>,
    /// A job rather than a server: it is done when it exits 0 (a migration), and apply waits for that.
    #[serde(default)]
    pub job: bool,
    /// Files the process makes outside the instance's directories, where it has no option to put them elsewhere
    /// (SeaweedFS's gRPC sockets in `/tmp`). The supervisor removes them, when they are the process's account's,
    /// before each spawn (a file of an earlier run may be in the way) and once the process is gone after a stop
    /// or a discard, so that nothing of an instance outlives it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaves: Vec<PathBuf>,
}

impl SpawnSpec {
    /// The supervisor name of `process` of `instance`: the instance address for its main (or only) process,
    /// `address/process` for the others.
    pub fn name_for(instance: &crate::address::Address, process: Option<&str>) -> String {
        match process {
            None => instance.to_string(),
            Some(process) => format!("{instance}/{process}"),
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(duration.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}
