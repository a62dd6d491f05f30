//! The engine contract: what a provider implements so that core can plan, start, converge, prune and stop its
//! instances without knowing which engine it is.
//!
//! The shape, in the order core drives it (see [`crate::lifecycle`]):
//!
//! - **Describe**: [`Engine::schema`] is the engine's `kip-schemas` description. Core builds every node's desired
//!   attributes from it (defaults filled in, `sensitive` redacted, `forces_replacement` planned as `-/+`), so an
//!   argument the schema documents always reaches the provider; providers read them as typed values
//!   ([`InstanceCtx::args`], [`crate::plan::Change::after_as`]) into structs that deny unknown fields, which is
//!   what makes a forgotten argument a test failure rather than a silent drop.
//! - **Provision** a data directory (idempotent; also rewrites the configuration of a stopped instance), then
//!   **spawn** the processes [`Engine::spawn_specs`] describes (one or several, with `after` ordering, probes,
//!   a reload signal, jobs), then **after-start** once in the life of an instance (recorded in state, not a
//!   marker), **reconfigure** a running instance whose own attributes changed, **refresh** what exists,
//!   **converge** object changes straight from the plan, and give **exports** (url, host, port, …) that other
//!   blocks reference.
//! - Errors are [`EngineError`]s: a message, a typed source kept for the chain, and a hint for the user.
//!
//! The types in [`spec`] are plain data shared with the supervisor.

pub mod spec;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kip_schemas::EngineSchema;
use serde::de::DeserializeOwned;

pub use spec::{Probe, ProbeKind, RestartPolicy, RunAs, SpawnSpec, StopCommand, StopSpec};

use crate::address::Address;
use crate::plan::{Attributes, Change, Desired};
use crate::resolve::Toolchain;

/// A boxed future, so that engines can be used as trait objects.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// An engine's error: what failed, the typed cause (kept for the `caused by:` chain), and what to do.
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

    /// `message`, caused by a provider's own error, which also says what to do ([`Hinted`]).
    pub fn hinted(
        message: impl Into<String>,
        source: impl Hinted + std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let hint = source.hint();
        EngineError {
            hint,
            ..EngineError::with_source(message, source)
        }
    }
}

/// A provider's error that may say what to do about it (the CLI renders it as `hint:`).
pub trait Hinted {
    fn hint(&self) -> Option<String>;
}

/// What it takes to apply a running instance's changed attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconfigure {
    /// Nothing, or the engine applied them itself (a live `SET`, `CONFIG SET`).
    Done,
    /// Ask the supervisor to send each process its reload signal.
    Reload,
    /// Stop and start the processes.
    Restart,
}

/// An object kip manages in an instance, as refresh is asked about it. It borrows from the plan's desired state
/// and the saved state: a refresh is asked about every object, and there may be thousands.
#[derive(Debug, Clone, Copy)]
pub struct Managed<'a> {
    pub address: &'a Address,
    pub kind: &'a str,
    /// The desired attributes when the configuration declares it, else the ones last applied.
    pub attributes: &'a Attributes,
    /// The attributes as kip last applied them, when it did (what kip itself did is what refresh compares against
    /// to tell drift from a change of the configuration).
    pub applied: Option<&'a Attributes>,
    pub declared: bool,
}

/// An object as the running engine reports it. Attributes the engine cannot read (a password) are left out, and
/// the state's last applied value stands in for them.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub address: Address,
    pub attributes: Attributes,
}

/// An instance's or object's exported attributes, by the names its schema declares (`url`, `host`, `port`,
/// `socket`, `user`, `password`, `name`, …). Which of them are sensitive is the schema's to say.
pub type Exports = BTreeMap<String, serde_json::Value>;

/// Secrets kip generates for an instance (passwords, keys), kept in state only; never in a plan or a log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets(pub BTreeMap<String, String>);

impl Secrets {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The secret called `key`, generated (random, hex, 32 characters) the first time it is asked for.
    pub fn get_or_generate(&mut self, key: &str) -> Result<String, EngineError> {
        if let Some(secret) = self.0.get(key) {
            return Ok(secret.clone());
        }
        let secret = random_hex(16)?;
        self.0.insert(key.to_owned(), secret.clone());
        Ok(secret)
    }

    pub fn remove(&mut self, key: &str) {
        self.0.remove(key);
    }
}

/// `bytes` random bytes from the operating system, as hex. Never falls back to anything weaker.
pub fn random_hex(bytes: usize) -> Result<String, EngineError> {
    let mut buffer = vec![0u8; bytes];
    getrandom::getrandom(&mut buffer).map_err(|error| {
        EngineError::new(format!(
            "the operating system gave no random bytes for a secret: {error}"
        ))
    })?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// An object of the instance as apply and exports see it: declared (desired) or last applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectView {
    pub kind: String,
    pub attributes: Attributes,
}

/// Everything an engine sees of one instance.
#[derive(Debug, Clone)]
pub struct InstanceCtx {
    pub address: Address,
    /// The instance's own attributes, with real values (secrets and references resolved).
    pub attributes: Attributes,
    /// The instance's objects, declared or last applied, with real values.
    pub objects: BTreeMap<Address, ObjectView>,
    /// The resolved engine build; `None` for unversioned engines (`process`).
    pub toolchain: Option<Toolchain>,
    /// The instance's own data directory (created by provision).
    pub data_dir: PathBuf,
    /// Where its sockets go (private to the instance).
    pub run_dir: PathBuf,
    /// Where its processes' logs go (`<log_dir>/<process>.log`).
    pub log_dir: PathBuf,
    /// The project directory (where kip.hcl is): relative paths in the configuration start there.
    pub project_dir: PathBuf,
    /// A shared cache for templates (initialised data dirs per version), one per machine and account.
    pub templates: PathBuf,
    pub run_as: Option<RunAs>,
    pub secrets: Secrets,
    /// Loopback ports allocated to the instance, by name, kept in state so they stay the same.
    pub ports: BTreeMap<String, u16>,
    /// Whether the after-start step ran already (once in the life of the instance).
    pub initialized: bool,
    /// The instance's first provisioning was interrupted: a kip was killed after it had started writing the
    /// instance's files and before the state had the secrets and ports it generated. No process ever ran on those
    /// files, and the secrets in them are lost, so provision writes again what it writes only once otherwise (a
    /// file the engine owns after its first start). Never set for an instance whose state was lost: that data
    /// directory was used, and access to it is never reset.
    pub provision_unfinished: bool,
    /// A session the engine opened in one step of this instance's apply, for the next step to take up instead of
    /// opening its own (the ready step's, used by after-start).
    pub session: Session,
}

/// A connection kept from one step of an instance's lifecycle to the next, within one apply (one runtime): the
/// engine [`Session::keep`]s its client at the end of a step and [`Session::take`]s it in the next. Empty in a
/// clone of the context, and dropped with it, so a session never outlives the apply that opened it.
#[derive(Default)]
pub struct Session(std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>);

impl Session {
    /// Keeps `session` for the next step (replacing one kept before).
    pub fn keep<T: std::any::Any + Send>(&self, session: T) {
        *self.slot() = Some(Box::new(session));
    }

    /// Keeps a session that is boxed already (what [`Engine::prefetch`] read ahead), for [`Session::take`].
    pub fn keep_boxed(&self, session: Box<dyn std::any::Any + Send>) {
        *self.slot() = Some(session);
    }

    /// The session kept by an earlier step, if it is a `T`; the slot is empty afterwards.
    pub fn take<T: std::any::Any + Send>(&self) -> Option<T> {
        let kept = self.slot().take()?;
        kept.downcast::<T>().ok().map(|session| *session)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Box<dyn std::any::Any + Send>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Clone for Session {
    fn clone(&self) -> Session {
        Session::default()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.slot().is_some();
        f.debug_struct("Session").field("kept", &kept).finish()
    }
}

impl InstanceCtx {
    /// The instance's attributes as the provider's typed view.
    pub fn args<T: DeserializeOwned>(&self) -> Result<T, EngineError> {
        typed(&self.address, &self.attributes)
    }

    /// The log file of a process of this instance.
    pub fn log(&self, process: &str) -> PathBuf {
        self.log_dir.join(format!("{process}.log"))
    }

    /// The toolchain, for engines that have one.
    pub fn toolchain(&self) -> Result<&Toolchain, EngineError> {
        self.toolchain
            .as_ref()
            .ok_or_else(|| EngineError::new(format!("{} has no resolved toolchain", self.address)))
    }

    /// A free loopback port for `name`, allocated once and kept in state, so the instance keeps its address
    /// across restarts; never one the instance keeps under another name.
    pub fn port(&mut self, name: &str) -> Result<u16, EngineError> {
        self.port_besides(name, &[])
    }

    /// [`InstanceCtx::port`], and none of `declared` either (ports the instance's configuration names, free until
    /// its process binds them).
    pub fn port_besides(&mut self, name: &str, declared: &[u16]) -> Result<u16, EngineError> {
        self.port_where(name, |port| !declared.contains(&port))
    }

    /// [`InstanceCtx::port`], and only one `usable` accepts (not the declared ports, say, nor one whose name a
    /// file already has: see [`Engine::port_unusable`]).
    pub fn port_where(
        &mut self,
        name: &str,
        usable: impl Fn(u16) -> bool,
    ) -> Result<u16, EngineError> {
        if let Some(port) = self.ports.get(name) {
            return Ok(*port);
        }
        let port = free_port(|port| !usable(port) || self.ports.values().any(|kept| *kept == port))
            .map_err(|error| EngineError::with_source("cannot find a free loopback port", error))?;
        self.ports.insert(name.to_owned(), port);
        Ok(port)
    }

    /// The objects of `kind`, in address order.
    pub fn objects_of<'a>(
        &'a self,
        kind: &'a str,
    ) -> impl Iterator<Item = (&'a Address, &'a ObjectView)> + 'a {
        self.objects
            .iter()
            .filter(move |(_, object)| object.kind == kind)
    }
}

/// A loopback port nothing listens on and `taken` does not refuse. The kernel hands out a port again as soon as
/// the listener that found it is closed, so a refused one stays bound while the next is looked for.
pub fn free_port(taken: impl Fn(u16) -> bool) -> std::io::Result<u16> {
    let mut refused = Vec::new();
    loop {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        if !taken(port) {
            return Ok(port);
        }
        if refused.len() >= 64 {
            return Err(std::io::Error::other(
                "every port the kernel offered is one the instance has already or cannot use",
            ));
        }
        refused.push(listener);
    }
}

/// Reads attributes into a provider's typed view; a mismatch is a bug in the provider (the checker already
/// validated the values against the schema), reported with the node it happened on.
pub fn typed<T: DeserializeOwned>(
    address: &Address,
    attributes: &Attributes,
) -> Result<T, EngineError> {
    let object: serde_json::Map<String, serde_json::Value> = attributes
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    serde_json::from_value(serde_json::Value::Object(object)).map_err(|error| {
        EngineError::with_source(
            format!("the provider cannot read the attributes of {address}"),
            error,
        )
        .hint("this is a bug in kip's provider: please report it with the configuration block")
    })
}

/// An engine: how kip provisions, starts, reconfigures, refreshes, converges and exports its instances. Optional
/// steps have defaults, so a provider implements what its engine has.
pub trait Engine: Send + Sync {
    /// The engine's schema, as `kip-schemas` describes it.
    fn schema(&self) -> &'static EngineSchema;

    fn name(&self) -> &'static str {
        self.schema().name
    }

    /// Reads a node's attributes into the provider's typed view of its kind, as provision, converge and exports
    /// read them. The conformance suite calls it with every argument of every block set: an argument the schema
    /// documents and the provider does not read fails there, instead of being dropped silently.
    fn check_view(&self, node: &Desired) -> Result<(), EngineError>;

    /// Whether the engine's processes run as the user who ran kip (a user's own program), rather than as kip's
    /// unprivileged account when kip runs as root (database servers). `run_as` overrides either.
    fn runs_as_caller(&self) -> bool {
        false
    }

    /// The nodes (addresses as the configuration names them: `process.migrate`, `postgres.main`) that an instance
    /// with these attributes needs only *started* — its processes spawned, not yet ready or converged — before it
    /// may start itself (a process's `wait_for "x" { condition = "started" }`). Everything else it depends on
    /// finishes its lifecycle first.
    fn needs_only_started(&self, _attributes: &Attributes) -> Vec<Address> {
        Vec::new()
    }

    /// Adds attributes derived from the declared ones to a desired node (a role that logs in has a password),
    /// so that the plan compares what the engine can report.
    fn derive(&self, _node: &mut Desired) {}

    /// Creates the instance's data directory when it does not exist, and (re)writes its configuration from the
    /// instance's attributes. Idempotent: it runs before every start of a stopped instance.
    fn provision<'a>(
        &'a self,
        instance: &'a mut InstanceCtx,
    ) -> BoxFuture<'a, Result<(), EngineError>>;

    /// The processes to run, in start order.
    fn spawn_specs(&self, instance: &InstanceCtx) -> Result<Vec<SpawnSpec>, EngineError>;

    /// The loopback TCP ports the instance's configuration declares; apply refuses to start when one is taken.
    /// By default its `port` argument, which every engine's schema spells the same way.
    fn ports(&self, instance: &InstanceCtx) -> Vec<u16> {
        instance
            .attributes
            .get("port")
            .and_then(serde_json::Value::as_u64)
            .and_then(|port| u16::try_from(port).ok())
            .into_iter()
            .collect()
    }

    /// Whether something other than a listener keeps the instance from using `port`, which kip chose for its
    /// listener `name`: another account's file at a path the engine names after the port (SeaweedFS's gRPC
    /// sockets in /tmp), which kip may not remove. Asked before a start while nothing of the instance runs; such a
    /// port is given up for a new one, as one another program listens on is. A provider that chooses ports
    /// ([`InstanceCtx::port_where`]) refuses these from the start.
    fn port_unusable(&self, _instance: &InstanceCtx, _name: &str, _port: u16) -> bool {
        false
    }

    /// Runs when the instance is destroyed, once none of its processes runs and before its directories are
    /// deleted: removes what its processes left outside them that only the engine knows of (PostgreSQL's SysV
    /// shared-memory segment, after a postmaster was SIGKILLed). Best effort, and never fatal: it logs what it
    /// could not remove.
    fn release(&self, _instance: &InstanceCtx) {}

    /// Waits until the started instance serves its clients (its processes passed their probes already): the
    /// *ready* step, through the engine's own client. PostgreSQL, for one, listens a moment before it takes
    /// sessions.
    fn ready<'a>(&'a self, _instance: &'a InstanceCtx) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async { Ok(()) })
    }

    /// The step that runs once in the life of an instance, after its first start, before anything else may use it
    /// (and again if kip stopped before it finished, so it must be idempotent). It may change the instance's
    /// secrets: a bootstrap credential replaced by the instance's own, for one.
    ///
    /// `None` (the default): the engine has no such step. Its instances count as initialized from their first
    /// provisioning, which is saved before their first start anyway, so nothing is written between their start and
    /// ready. Core also calls this to learn which it is, so the step must do nothing until its future is polled.
    fn after_start<'a>(
        &'a self,
        _instance: &'a mut InstanceCtx,
    ) -> Option<BoxFuture<'a, Result<(), EngineError>>> {
        None
    }

    /// Applies a change of the instance's own attributes to the running instance (its configuration was
    /// rewritten by provision already) and says what else it takes.
    fn reconfigure<'a>(
        &'a self,
        _instance: &'a mut InstanceCtx,
        _change: &'a Change,
    ) -> BoxFuture<'a, Result<Reconfigure, EngineError>> {
        Box::pin(async { Ok(Reconfigure::Restart) })
    }

    /// For a planned update of a running instance's own attributes: which of the changed attributes
    /// ([`Change::changed_attributes`]) make apply restart the engine, as the plan shows it; an empty list says
    /// the engine takes the whole change live. `None` (the default) when the engine cannot tell before apply
    /// (PostgreSQL asks the server). Apply restarts when the list is not empty, whatever `reconfigure` says.
    fn restart_because(&self, _change: &Change) -> Option<Vec<String>> {
        None
    }

    /// Reads ahead, for a plan, what [`Engine::refresh`] of this instance will read whatever the configuration
    /// says (PostgreSQL: its roles and databases), while core is still checking the configuration: the session's
    /// set-up and the first reads then overlap that work instead of following it. The instance is built from the
    /// state alone, and may not run (no supervisor was asked): prefetch must fail fast, never wait for a start.
    /// What it returns, refresh finds in `instance.session`; `None` (the default, and on any failure) reads
    /// nothing ahead, and refresh reads, and reports errors, for itself.
    fn prefetch<'a>(
        &'a self,
        _instance: &'a InstanceCtx,
    ) -> BoxFuture<'a, Option<Box<dyn std::any::Any + Send>>> {
        Box::pin(async { None })
    }

    /// Reads what exists of the managed objects, in a constant number of round trips. Objects that do not
    /// exist are left out. The objects are `managed` (with their desired and last applied attributes), not
    /// `instance.objects`, which is empty here.
    fn refresh<'a>(
        &'a self,
        _instance: &'a InstanceCtx,
        _managed: &'a [Managed<'a>],
    ) -> BoxFuture<'a, Result<Vec<Observed>, EngineError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Applies this instance's object changes (creates, updates, replacements, deletions in the order given:
    /// deletions last, in reverse dependency order), with real values.
    fn converge<'a>(
        &'a self,
        _instance: &'a mut InstanceCtx,
        _changes: &'a [Change],
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async { Ok(()) })
    }

    /// The exported attributes of the instance (`object` None) or of one of its objects.
    fn exports(
        &self,
        instance: &InstanceCtx,
        object: Option<&Address>,
    ) -> Result<Exports, EngineError>;
}

/// The engines kip can run, by name. Providers register theirs (`kip_providers::engines()`); core names none.
#[derive(Clone, Default)]
pub struct Engines {
    engines: BTreeMap<&'static str, Arc<dyn Engine>>,
}

impl std::fmt::Debug for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.engines.keys()).finish()
    }
}

impl Engines {
    pub fn new() -> Engines {
        Engines::default()
    }

    pub fn register(&mut self, engine: impl Engine + 'static) {
        self.engines.insert(engine.name(), Arc::new(engine));
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Engine>> {
        self.engines.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.engines.keys().copied()
    }

    /// The schemas of the registered engines, for the checker.
    pub fn schemas(&self) -> Vec<&'static EngineSchema> {
        self.engines
            .values()
            .map(|engine| engine.schema())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    #[test]
    fn a_session_is_taken_once_as_its_own_type_and_never_copied() {
        let session = super::Session::default();
        session.keep(7_u32);
        assert_eq!(format!("{session:?}"), "Session { kept: true }");
        assert_eq!(session.clone().take::<u32>(), None, "a clone is empty");
        assert_eq!(session.take::<String>(), None, "another type is not it");
        // A take of the wrong type empties the slot: the session is dropped, never handed to the wrong step.
        assert_eq!(session.take::<u32>(), None);
        session.keep(8_u32);
        assert_eq!(session.take::<u32>(), Some(8));
        assert_eq!(session.take::<u32>(), None, "taken once");
    }

    /// Ports found one after another are all different, and a refused one is never handed out: the kernel offers
    /// a port again once the listener that found it is closed (an S3 instance once got its declared port twice).
    #[test]
    fn free_ports_are_never_ones_already_taken() {
        let mut taken = BTreeSet::new();
        for _ in 0..300 {
            let port = super::free_port(|port| taken.contains(&port)).unwrap();
            assert!(taken.insert(port), "{port} was handed out twice");
        }
        // A port refused by the caller is skipped even when it is the one the kernel offers next.
        let refused = super::free_port(|_| false).unwrap();
        let next = super::free_port(|port| port == refused).unwrap();
        assert_ne!(next, refused);
    }
}
