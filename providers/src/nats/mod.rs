//! NATS: the engine-specific half of kip's nats provider, as a library the engine traits wrap.
//!
//! - [`args`]: the schema's blocks as typed values.
//! - [`config`]: the `nats.conf` rendered from the instance's attributes (loopback listener, the token, the
//!   JetStream store in the data directory), and which attribute changes NATS reloads and which restart it.
//! - [`client`]: kip's connection through `async-nats`, with the instance's token.
//! - [`jetstream`]: streams and key-value buckets as JetStream stream configurations, read back and compared in
//!   the attributes' own terms, and converged from the plan.
//! - [`engine`]: the [`Engine`](kip_core::engine::Engine) contract and the exports.
//!
//! Convergence owns structure, never data: nothing here publishes, reads or purges a message.

pub mod args;
pub mod client;
pub mod config;
pub mod engine;
pub mod jetstream;

use std::path::PathBuf;

pub use engine::Nats;

/// The generated configuration, in the data directory.
pub const CONFIG_FILE: &str = "nats.conf";
/// The JetStream store, in the data directory.
pub const STORE_DIR: &str = "jetstream";

/// Everything that can go wrong in the NATS provider, each with what it was doing and on what.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at 127.0.0.1:{port}")]
    Connect {
        port: u16,
        #[source]
        source: async_nats::ConnectError,
    },
    /// A JetStream request NATS refused or did not answer: its own words are quoted.
    #[error("NATS refused {what}: {message}")]
    Refused { what: String, message: String },
    #[error("setting `{name}`: {reason}")]
    InvalidSetting { name: String, reason: String },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
}

impl NatsError {
    /// What to do, for the `hint:` the CLI renders.
    pub fn hint(&self) -> Option<String> {
        match self {
            NatsError::Connect { source, .. }
                if source.kind() == async_nats::ConnectErrorKind::AuthorizationViolation =>
            {
                Some(
                    "the token in kip's state does not work: it was changed behind kip's back, or the state was \
                     restored from an older backup. Restore the right .kip/state.json, or set `token` in the nats \
                     block to the token the server has"
                        .to_owned(),
                )
            }
            NatsError::InvalidSetting { .. } => Some(
                "set it with the nats block's own argument, or leave it to kip (see `kip schema nats`)".to_owned(),
            ),
            NatsError::Refused { .. } => {
                Some("fix the block in kip.hcl; NATS keeps what it had".to_owned())
            }
            _ => None,
        }
    }

    /// A JetStream request that failed, keeping NATS's message.
    pub(crate) fn refused(what: impl Into<String>, error: impl std::fmt::Display) -> NatsError {
        NatsError::Refused {
            what: what.into(),
            message: error.to_string(),
        }
    }
}

pub(crate) fn io_error(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> NatsError {
    let path = path.into();
    move |source| NatsError::Io {
        action,
        path,
        source,
    }
}

impl kip_core::engine::Hinted for NatsError {
    fn hint(&self) -> Option<String> {
        NatsError::hint(self)
    }
}
