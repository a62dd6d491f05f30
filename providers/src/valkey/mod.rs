//! Valkey: the engine-specific half of kip's valkey provider, as a library the engine traits wrap.
//!
//! - [`args`]: the schema's blocks as typed values.
//! - [`config`]: `valkey.conf` and the first `users.acl` rendered from the instance's attributes, and which
//!   attribute changes Valkey takes live (`CONFIG SET`) and which restart it.
//! - [`acl`]: ACL users: the rules kip sets (`ACL SETUSER … reset …`), and reading back what Valkey reports
//!   (`ACL GETUSER`) as attributes the plan compares.
//! - [`client`]: the connection through the `redis` crate, over the instance's unix socket, as `default`.
//! - [`engine`]: the [`Engine`](kip_core::engine::Engine) contract and the exports.
//!
//! Convergence owns structure, never data: nothing here reads, writes or deletes a key.

pub mod acl;
pub mod args;
pub mod client;
pub mod config;
pub mod engine;

use std::path::PathBuf;

pub use engine::Valkey;

/// The socket file in the instance's private run directory.
pub const SOCKET: &str = "valkey.sock";
/// The generated configuration, in the data directory.
pub const CONFIG_FILE: &str = "valkey.conf";
/// The ACL file Valkey loads at start and `ACL SAVE` rewrites, in the data directory.
pub const ACL_FILE: &str = "users.acl";

/// Everything that can go wrong in the Valkey provider, each with what it was doing and on what.
#[derive(Debug, thiserror::Error)]
pub enum VkError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to Valkey at {}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: redis::RedisError,
    },
    /// A command Valkey refused: its own words are quoted.
    #[error("Valkey refused `{command}`: {message}")]
    Refused {
        /// The command, with passwords left out.
        command: String,
        message: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("Valkey answered `{command}` with something kip cannot read: {answer}")]
    Unexpected { command: String, answer: String },
    #[error("setting `{name}`: {reason}")]
    InvalidSetting { name: String, reason: String },
    #[error("user {user:?}: {reason}")]
    InvalidUser { user: String, reason: String },
}

impl VkError {
    /// What to do, for the `hint:` the CLI renders.
    pub fn hint(&self) -> Option<String> {
        match self {
            VkError::Connect { source, .. } if is_auth_error(source) => Some(
                "the default user's password in kip's state does not work: it was changed behind kip's back, or the \
                 state was restored from an older backup. Restore the right .kip/state.json, or set `password` in \
                 the valkey block to the password the server has"
                    .to_owned(),
            ),
            VkError::InvalidSetting { .. } => Some(
                "set it with the valkey block's own argument, or leave it to kip (see `kip schema valkey`)".to_owned(),
            ),
            _ => None,
        }
    }

    /// A refused command, keeping Valkey's own message.
    pub(crate) fn refused(command: impl Into<String>, source: redis::RedisError) -> VkError {
        let message = match (source.code(), source.detail()) {
            (Some(code), Some(detail)) => format!("{code} {detail}"),
            _ => source.to_string(),
        };
        VkError::Refused {
            command: command.into(),
            message,
            source,
        }
    }
}

/// Whether Valkey refused the credentials (`WRONGPASS`, or `NOAUTH` for a server that wants one).
pub(crate) fn is_auth_error(error: &redis::RedisError) -> bool {
    matches!(error.code(), Some("WRONGPASS" | "NOAUTH"))
        || error.kind() == redis::ErrorKind::AuthenticationFailed
}

pub(crate) fn io_error(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> VkError {
    let path = path.into();
    move |source| VkError::Io {
        action,
        path,
        source,
    }
}

/// The SHA-256 of a password as Valkey keeps and reports it (lowercase hex): what kip writes (`#<hash>`) and
/// compares, so a plaintext password never goes to the server or comes back.
pub fn password_hash(password: &str) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(password.as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl kip_core::engine::Hinted for VkError {
    fn hint(&self) -> Option<String> {
        VkError::hint(self)
    }
}
