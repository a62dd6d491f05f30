//! MariaDB: the engine-specific half of kip's mariadb provider, as a library the engine traits wrap.
//!
//! - [`template`]: `mariadb-install-db` once per version into a shared, closed template, then a copy per instance.
//! - [`config`]: `kip.cnf` rendered from the instance's attributes, and which changes MariaDB takes live.
//! - [`client`]: the `mysql_async` connection over the instance's unix socket, as `root`.
//! - [`grants`]: privilege targets (`shop.*`) and lists, as kip writes and MariaDB reports them.
//! - [`observe`] (refresh, in a constant number of queries) and [`converge`] (plan changes → statements).
//! - [`engine`]: the [`Engine`](kip_core::engine::Engine) contract and the exports.
//! - [`quote`]: the only way names and values get into SQL text; [`password`]: `mysql_native_password` hashes (the `sha1` crate).
//!
//! Convergence owns structure, never data: nothing here drops a table, a row, or a database that holds tables.

pub mod args;
pub mod client;
pub mod config;
pub mod converge;
pub mod engine;
pub mod grants;
pub mod observe;
pub mod password;
pub mod quote;
pub mod template;

use std::path::PathBuf;

pub use engine::MariaDb;

/// The socket file in the instance's private run directory.
pub const SOCKET: &str = "mariadb.sock";
/// The option file, in the data directory.
pub const CONFIG_FILE: &str = "kip.cnf";

/// Everything that can go wrong in the MariaDB provider, each with what it was doing and on what.
#[derive(Debug, thiserror::Error)]
pub enum MyError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    #[error("mariadb-install-db for MariaDB {version} into {} failed:\n{output}", data_dir.display())]
    InstallDb {
        version: String,
        data_dir: PathBuf,
        output: String,
    },
    #[error("cannot close the new MariaDB template {} to every account but root:\n{output}", data_dir.display())]
    Close { data_dir: PathBuf, output: String },
    #[error("cannot connect to MariaDB at {} as {user:?}", socket.display())]
    Connect {
        socket: PathBuf,
        user: String,
        #[source]
        source: mysql_async::Error,
    },
    #[error("MariaDB refused `{statement}`: {message}")]
    Sql {
        /// The statement, with passwords left out.
        statement: String,
        code: Option<u16>,
        message: String,
        #[source]
        source: mysql_async::Error,
    },
    #[error("a MariaDB server kip has no credentials for runs on {}", data_dir.display())]
    NoCredentials { data_dir: PathBuf },
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("setting `{name}`: {reason}")]
    InvalidSetting { name: String, reason: String },
    #[error("grant on {on:?}: {reason}")]
    InvalidGrant { on: String, reason: String },
    #[error("database {database:?} is not empty ({tables} tables): kip drops only empty databases")]
    NotEmpty { database: String, tables: u64 },
}

impl MyError {
    /// What to do, for the `hint:` the CLI renders.
    pub fn hint(&self) -> Option<String> {
        match self {
            MyError::Template(error) => error.hint(),
            MyError::Connect { source, .. } if client::is_access_denied(source) => Some(
                "root's password in kip's state does not work: it was changed behind kip's back, or the state was \
                 restored from an older backup. Restore the right .kip/state.json, or set `root_password` in the \
                 mariadb block to the password the server has"
                    .to_owned(),
            ),
            MyError::NoCredentials { data_dir } => Some(format!(
                "kip's state no longer knows this instance (it was lost, or restored from an older backup), and kip \
                 never opens access to recover: restore .kip/state.json from .kip/state.json.backup if that is \
                 the right one; or, to recreate the instance, stop it (kip down) and remove {} (its data goes)",
                data_dir.parent().unwrap_or(data_dir).display()
            )),
            MyError::InvalidSetting { .. } => Some(
                "set it with the mariadb block's own argument, or leave it to kip (see `kip schema mariadb`)"
                    .to_owned(),
            ),
            MyError::NotEmpty { database, .. } => Some(format!(
                "keep the database block, or drop its tables yourself (`DROP DATABASE {database}` drops them all) \
                 and apply again"
            )),
            _ => None,
        }
    }

    /// A refused statement, keeping MariaDB's own code and message.
    pub(crate) fn sql(statement: impl Into<String>, source: mysql_async::Error) -> MyError {
        let (code, message) = match &source {
            mysql_async::Error::Server(server) => (Some(server.code), server.message.clone()),
            other => (None, other.to_string()),
        };
        MyError::Sql {
            statement: statement.into(),
            code,
            message,
            source,
        }
    }

    /// MariaDB's error code of a refused statement.
    pub fn code(&self) -> Option<u16> {
        match self {
            MyError::Sql { code, .. } => *code,
            MyError::Connect { source, .. } => client::server_code(source),
            _ => None,
        }
    }
}

pub(crate) fn io_error(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> MyError {
    let path = path.into();
    move |source| MyError::Io {
        action,
        path,
        source,
    }
}

impl kip_core::engine::Hinted for MyError {
    fn hint(&self) -> Option<String> {
        MyError::hint(self)
    }
}
