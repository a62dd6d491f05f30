//! The engine contract: what a provider tells the core so that it can plan, spawn, converge and prune an engine
//! instance without knowing which engine it is.
//!
//! A provider describes its schema (in `kip-schemas`), and for an instance returns the processes to run
//! ([`SpawnSpec`]) with their readiness probes; optional capabilities (converge, inventory, prune, templater) are
//! separate traits in `kip-providers`, checked at run time. The types here are plain data so that they can be
//! sent to the supervisor over its socket and stored in state.

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
    /// No probe: ready as soon as it started.
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
}

/// When the supervisor restarts a process that exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    No,
    OnFailure,
    Always,
}

/// How to stop a process: each signal in turn, waiting up to its timeout, then SIGKILL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopSpec {
    /// Signal names ("SIGINT", "SIGTERM", "SIGQUIT") with how long to wait after each.
    pub signals: Vec<(String, u64)>,
}

impl Default for StopSpec {
    fn default() -> Self {
        StopSpec {
            signals: vec![("SIGTERM".into(), 10_000), ("SIGQUIT".into(), 5_000)],
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

/// One process of an instance, as the supervisor runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnSpec {
    /// Unique in the project: the instance address, plus a suffix for composite engines ("postgres.main").
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub run_as: Option<RunAs>,
    pub probe: Probe,
    pub restart: RestartPolicy,
    #[serde(default)]
    pub max_restarts: Option<u32>,
    pub stop: StopSpec,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    /// Names of processes of the same instance that must be ready first (composite engines).
    #[serde(default)]
    pub after: Vec<String>,
    /// The signal ("SIGHUP") that makes the process re-read its configuration, sent to its whole process group by
    /// the supervisor's `reload`; none when the engine cannot reload without a restart.
    #[serde(default)]
    pub reload: Option<String>,
    /// The address of the engine instance the process belongs to ("postgres.main"); an instance may have several
    /// processes.
    #[serde(default)]
    pub instance: String,
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

/// A boxed future, so that engines can be used as trait objects.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// An engine's error, with an optional hint for the user.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub message: String,
    pub hint: Option<String>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl EngineError {
    pub fn new(message: impl Into<String>) -> Self {
        EngineError {
            message: message.into(),
            hint: None,
            source: None,
        }
    }

    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        EngineError {
            message: message.into(),
            hint: None,
            source: Some(Box::new(source)),
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Everything an engine needs to act on one instance.
#[derive(Debug, Clone)]
pub struct InstanceEnv {
    /// "postgres.main"
    pub address: String,
    pub instance: crate::config::Instance,
    pub toolchain: crate::resolve::Toolchain,
    /// The engine's data directory (created by provision).
    pub data_dir: PathBuf,
    /// Where the engine's sockets go.
    pub run_dir: PathBuf,
    /// Where the engine's log goes.
    pub log: PathBuf,
    /// A shared cache for templates (initialised data dirs per version).
    pub templates: PathBuf,
    pub run_as: Option<RunAs>,
    /// Secrets kept in state (generated passwords), by name.
    pub secrets: BTreeMap<String, String>,
}

/// What to do after new settings were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconfigure {
    Nothing,
    Reloaded,
    RestartNeeded,
}

/// An engine: how kip plans, starts, converges and prunes its instances. Optional behaviour has defaults, so a
/// provider implements what its engine supports.
pub trait Engine: Send + Sync {
    fn name(&self) -> &'static str;

    /// The nodes the configuration implies for this instance (the instance itself and its objects), from the
    /// configuration alone.
    fn desired(
        &self,
        instance: &crate::config::Instance,
    ) -> Result<Vec<crate::plan::Desired>, EngineError>;

    /// Creates the data directory when it does not exist (idempotent) and generates the secrets it needs.
    fn provision<'a>(&'a self, env: &'a mut InstanceEnv) -> BoxFuture<'a, Result<(), EngineError>>;

    /// The processes to run.
    fn spawn_specs(&self, env: &InstanceEnv) -> Result<Vec<SpawnSpec>, EngineError>;

    /// The loopback TCP ports the instance will listen on; apply refuses to spawn when one is taken.
    fn ports(&self, _env: &InstanceEnv) -> Vec<u16> {
        Vec::new()
    }

    /// Runs once the processes are ready, before objects converge (set the superuser password, …).
    fn after_start<'a>(&'a self, _env: &'a InstanceEnv) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async { Ok(()) })
    }

    /// Writes changed settings into the running instance's configuration and says what it takes to apply them.
    fn reconfigure<'a>(
        &'a self,
        _env: &'a InstanceEnv,
    ) -> BoxFuture<'a, Result<Reconfigure, EngineError>> {
        Box::pin(async { Ok(Reconfigure::Nothing) })
    }

    /// The objects that exist in the running instance, by address; `managed` are the objects kip created (with
    /// their attributes as last applied) or the configuration declares (with none); the addresses kip created
    /// or the configuration declares (others are never reported, so never pruned).
    fn refresh<'a>(
        &'a self,
        _env: &'a InstanceEnv,
        _managed: &'a BTreeMap<String, crate::plan::Attributes>,
    ) -> BoxFuture<'a, Result<BTreeMap<String, crate::plan::Existing>, EngineError>> {
        Box::pin(async { Ok(BTreeMap::new()) })
    }

    /// Applies this instance's object changes, batched.
    fn converge<'a>(
        &'a self,
        _env: &'a mut InstanceEnv,
        _changes: &'a [crate::plan::Change],
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async { Ok(()) })
    }

    /// Exported attributes (url, host, port, socket, user, password) of the instance, or of one of its objects
    /// (`object` is its full address).
    fn exports(&self, env: &InstanceEnv, object: Option<&str>) -> BTreeMap<String, String>;
}
