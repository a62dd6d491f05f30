//! Apply's errors: one [`InstanceError`] per failed instance, kept typed with its whole cause chain and its hint,
//! so that the CLI renders each once (`error: postgres.main: …`, `caused by: …`, `hint: …`).

use std::path::PathBuf;

use crate::address::Address;
use crate::engine::EngineError;
use crate::lock::LockError;
use crate::resolve::ResolveError;
use crate::runas::RunAsError;
use crate::state::StateError;
use crate::supervisor::SupervisorError;

/// Why one instance failed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    RunAs(#[from] RunAsError),
    #[error(transparent)]
    Desired(#[from] crate::desired::DesiredError),
    #[error("it declares port {port}, which is already in use on 127.0.0.1")]
    PortTaken {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "port {port}, which kip chose for its {name} listener, is taken by another program, and so were the ports \
         chosen instead"
    )]
    ChosenPortTaken { name: String, port: u16 },
    #[error("it does not run, and kip sync never starts, creates or replaces an instance")]
    NotRunning,
    #[error("the job `{name}` {exit}{}", crate::supervisor::quote_tail(log, tail))]
    JobFailed {
        name: String,
        exit: String,
        log: PathBuf,
        /// The last lines the job wrote in this run.
        tail: Vec<String>,
    },
    #[error("kip.lock lacks a pin for {0} and --locked forbids adding one")]
    Locked(String),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("its processes still run after being stopped ({names}); its data is left in place")]
    StillRunning { names: String },
    #[error("the plan has no value for `{attribute}` and the configuration gives none")]
    MissingValue { attribute: String },
    #[error("the {engine} provider panicked: {message}")]
    Panicked { engine: String, message: String },
    #[error("kip cannot run {engine} instances yet")]
    Unsupported { engine: String },
}

impl InstanceError {
    /// What the user can do about it, for the `hint:` line.
    pub fn hint(&self) -> Option<String> {
        match self {
            InstanceError::Engine(error) => error.hint.clone(),
            InstanceError::Resolve(error) => error.hint(),
            InstanceError::Supervisor(error) => error.hint(),
            InstanceError::State(error) => error.hint(),
            InstanceError::RunAs(error) => error.hint(),
            InstanceError::PortTaken { .. } => Some(
                "choose a free port, stop what holds it, or drop `port` to use a unix socket only".into(),
            ),
            InstanceError::ChosenPortTaken { .. } => Some(
                "something on this machine keeps taking loopback ports; declare a `port` for the instance".into(),
            ),
            InstanceError::NotRunning => Some("run `kip up` (or `kip apply`) first".into()),
            InstanceError::JobFailed { log, .. } => Some(format!(
                "its output is in {}; fix the job and run `kip apply` again (it runs again until it succeeds)",
                log.display()
            )),
            InstanceError::Locked(_) => Some("run `kip lock` and commit kip.lock".into()),
            InstanceError::Lock(error) => error.hint().map(str::to_owned),
            InstanceError::StillRunning { .. } => Some(
                "see `kip ps`; stop them (kip down), then run the command again".into(),
            ),
            InstanceError::MissingValue { .. } => {
                Some("make a new plan with `kip plan --out FILE`".into())
            }
            InstanceError::Panicked { .. } => Some(
                "this is a bug in kip: please report it with the configuration; nothing that depends on the \
                 instance was touched"
                    .into(),
            ),
            InstanceError::Unsupported { .. } => Some(
                "its provider has not landed in this kip yet (`kip lint` warns about every such block); \
                 remove the block or use an engine kip runs"
                    .into(),
            ),
            InstanceError::Desired(_) | InstanceError::Io { .. } => None,
        }
    }
}

/// One failed instance: `postgres.main failed`, caused by the error (whose own messages never repeat the
/// address in front).
#[derive(Debug, thiserror::Error)]
#[error("{address} failed")]
pub struct InstanceFailure {
    pub address: Address,
    #[source]
    pub error: InstanceError,
}

/// Why an apply (or destroy, up, down) did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error(transparent)]
    RunAs(#[from] RunAsError),
    /// Instances failed; `skipped` were not touched because they depend on a failed one.
    #[error(
        "{} failed{}",
        failures.iter().map(|f| f.address.to_string()).collect::<Vec<_>>().join(", "),
        if skipped.is_empty() {
            String::new()
        } else {
            format!(
                " (skipped what depends on it: {})",
                skipped.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )
        }
    )]
    Failed {
        failures: Vec<InstanceFailure>,
        skipped: Vec<Address>,
    },
}

impl ApplyError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ApplyError::State(error) => error.hint(),
            ApplyError::Lock(error) => error.hint().map(str::to_owned),
            ApplyError::Supervisor(error) => error.hint(),
            ApplyError::RunAs(error) => error.hint(),
            ApplyError::Failed { failures, .. } => match failures.as_slice() {
                [one] => one.error.hint(),
                _ => None,
            },
        }
    }
}
