//! PostgreSQL: the engine-specific half of kip's postgres provider, as a library the engine traits wrap.
//!
//! - [`template`]: `initdb` once per version and init options into a shared template, then a copy per instance
//!   (a fresh data dir in ~0.2 s instead of ~0.6 s).
//! - [`config`]: kip's settings rendered into `kip.conf` (included from `postgresql.conf`) and `pg_hba.conf`, and
//!   whether a settings change needs a reload or a restart.
//! - [`spawn`]: the [`SpawnSpec`](kip_core::engine::SpawnSpec) the supervisor runs.
//! - [`sql`]: the connection over the unix socket, [`read_live`] (what exists) and [`apply`] (make it so).
//! - [`live`] and [`change`]: the plain data on either side of the diff the core computes.
//! - [`engine`]: the [`Engine`](kip_core::engine::Engine) contract, with [`args`] (the schema's blocks as typed
//!   values), [`observe`] (refresh), [`converge`] (plan changes → statements) and [`exports`] (URLs).
//! - [`quote`]: the only way names and values get into SQL text.
//!
//! Convergence owns structure, never data: nothing here drops a table, a row, or anything kip did not declare.

pub mod args;
pub mod change;
pub mod config;
pub mod converge;
pub mod engine;
pub mod exports;
pub mod live;
pub mod observe;
pub mod quote;
pub mod scram;
pub mod shmem;
pub mod spawn;
pub mod sql;
pub mod template;

use std::path::PathBuf;

pub use change::{DatabaseSpec, GrantSpec, GrantTarget, Password, PgChange, RoleAttributes};
pub use config::{
    AuthMethod, ServerConfig, SettingValue, SettingsAction, pending_restart, reload,
    settings_change, write_config, write_hba,
};
pub use engine::Postgres;
pub use live::{Live, LiveDatabase, LiveExtension, LiveRole, LiveSchema, ObjectGrants, Privileges};
pub use quote::{quote_ident, quote_literal};
pub use spawn::spawn_spec;
pub use sql::{Connector, apply, read_live};
pub use template::{
    InitOptions, PREMADE_DATABASE, bootstrap_password, ensure_template, provision,
    set_password_offline,
};

/// The port PostgreSQL uses when none is declared; with a private socket directory per instance it never
/// collides, and it names the socket file (`.s.PGSQL.5432`).
pub const DEFAULT_PORT: u16 = 5432;

/// Everything that can go wrong in the PostgreSQL provider, each with what it was doing and on what.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {}", program.display())]
    Run {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initdb for PostgreSQL {version} into {} failed ({status}):\n{output}", data_dir.display())]
    Initdb {
        version: String,
        data_dir: PathBuf,
        status: String,
        output: String,
    },
    #[error(transparent)]
    RunAs(#[from] kip_core::runas::RunAsError),
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    #[error("PostgreSQL in single-user mode on {} failed ({what}):\n{output}", data_dir.display())]
    Offline {
        data_dir: PathBuf,
        /// What it was to do ("set the superuser's password").
        what: &'static str,
        output: String,
    },
    #[error("a PostgreSQL server kip has no credentials for runs on {}", data_dir.display())]
    NoCredentials { data_dir: PathBuf },
    #[error("cannot connect to PostgreSQL at {} (database {database:?} as {user:?})", socket_dir.display())]
    Connect {
        socket_dir: PathBuf,
        database: String,
        user: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement the server refused (boxed: it is large, and `Result`s carry it everywhere).
    #[error(transparent)]
    Sql(Box<SqlError>),
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("{privilege:?} is not a privilege PostgreSQL grants on {on}")]
    InvalidPrivilege { privilege: String, on: &'static str },
    #[error("setting `{name}`: {reason}")]
    InvalidSetting { name: String, reason: String },
}

/// A statement the server refused, with what the server said about it.
#[derive(Debug, thiserror::Error)]
#[error(
    "PostgreSQL refused `{statement}` in database {database:?}: {message}{}",
    code.as_ref().map(|code| format!(" (SQLSTATE {code})")).unwrap_or_default()
)]
pub struct SqlError {
    pub database: String,
    /// The statement, with passwords redacted.
    pub statement: String,
    /// The SQLSTATE ("2BP01").
    pub code: Option<String>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    #[source]
    pub source: tokio_postgres::Error,
}

impl PgError {
    /// The server's detail line, or what to do, for the `hint:` the CLI renders.
    pub fn hint(&self) -> Option<String> {
        match self {
            PgError::Sql(error) => match (&error.detail, &error.hint) {
                (Some(detail), Some(hint)) => Some(format!("{detail}\n{hint}")),
                (Some(text), None) | (None, Some(text)) => Some(text.clone()),
                (None, None) => None,
            },
            PgError::RunAs(error) => error.hint(),
            PgError::Template(error) => error.hint(),
            PgError::NoCredentials { data_dir } => Some(format!(
                "kip's state no longer knows this instance (it was lost, or restored from an older backup), and kip \
                 never opens access to recover: restore .kip/state.json from .kip/state.json.backup if that is \
                 the right one; or, to recreate the instance, stop it (kip down) and remove {} (its data goes)",
                data_dir.parent().unwrap_or(data_dir).display()
            )),
            PgError::Connect { source, .. } if source.code().is_some_and(|c| c.code() == "28P01") => Some(
                "the superuser password in kip's state does not work: it was changed behind kip's back, or the state \
                 was restored from an older backup. Restore the right .kip/state.json, or set `password` in the \
                 postgres block to the password the server has"
                    .to_owned(),
            ),
            _ => None,
        }
    }

    /// Builds an [`PgError::Sql`] from a tokio-postgres error, keeping the server's code, message and detail.
    pub(crate) fn sql(
        database: &str,
        statement: impl Into<String>,
        source: tokio_postgres::Error,
    ) -> PgError {
        let (code, message, detail, hint) = match source.as_db_error() {
            Some(db) => (
                Some(db.code().code().to_owned()),
                db.message().to_owned(),
                db.detail().map(str::to_owned),
                db.hint().map(str::to_owned),
            ),
            None => (
                source.code().map(|code| code.code().to_owned()),
                source.to_string(),
                None,
                None,
            ),
        };
        PgError::Sql(Box::new(SqlError {
            database: database.to_owned(),
            statement: statement.into(),
            code,
            message,
            detail,
            hint,
            source,
        }))
    }

    /// The SQLSTATE of a refused statement.
    pub fn code(&self) -> Option<&str> {
        match self {
            PgError::Sql(error) => error.code.as_deref(),
            PgError::Connect { source, .. } => source.code().map(|code| code.code()),
            _ => None,
        }
    }
}

pub(crate) fn io_error(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> PgError {
    let path = path.into();
    move |source| PgError::Io {
        action,
        path,
        source,
    }
}

impl kip_core::engine::Hinted for PgError {
    fn hint(&self) -> Option<String> {
        PgError::hint(self)
    }
}
