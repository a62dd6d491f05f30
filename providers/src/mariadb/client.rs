//! The connection kip converges and refreshes through: `mysql_async` over the instance's unix socket, as
//! `root@localhost`, trying the passwords kip may have set (the bootstrap one before the first start is through,
//! the instance's own, a newly declared one).

use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql_async::prelude::Queryable as _;
use mysql_async::{Conn, OptsBuilder};

use super::MyError;

/// MariaDB's "access denied" (ER_ACCESS_DENIED_ERROR).
pub const ACCESS_DENIED: u16 = 1045;

/// How kip reaches an instance.
#[derive(Clone)]
pub struct Connector {
    pub socket: PathBuf,
    pub user: String,
    /// Tried in order: the first that MariaDB accepts is used.
    pub passwords: Vec<String>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("socket", &self.socket)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Connector {
    pub fn new(socket: &Path, passwords: Vec<String>) -> Connector {
        Connector {
            socket: socket.to_owned(),
            user: "root".to_owned(),
            passwords,
        }
    }

    fn opts(&self, password: &str) -> OptsBuilder {
        OptsBuilder::default()
            .socket(Some(self.socket.to_string_lossy().into_owned()))
            .user(Some(self.user.clone()))
            .pass(Some(password.to_owned()))
            .prefer_socket(true)
            .wait_timeout(None)
    }

    /// A session, with backslash escapes on whatever `sql_mode` the settings give (see [`super::quote`]). A server
    /// still starting (its socket not there yet, or refusing) is waited for a few seconds.
    pub async fn connect(&self) -> Result<Conn, MyError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.try_passwords().await {
                // Only a server not there yet (no socket, refused) is worth waiting for; a refusal of the
                // credentials, or no password at all, will not change.
                Err(MyError::Connect {
                    source: mysql_async::Error::Io(_),
                    ..
                }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Which of the passwords works, if one does.
    pub async fn working_password(&self) -> Result<String, MyError> {
        let mut last = None;
        for password in &self.passwords {
            match Conn::new(self.opts(password)).await {
                Ok(conn) => {
                    let _ = conn.disconnect().await;
                    return Ok(password.clone());
                }
                Err(error) => last = Some(error),
            }
        }
        Err(self.error(last))
    }

    async fn try_passwords(&self) -> Result<Conn, MyError> {
        let mut last = None;
        for password in &self.passwords {
            match Conn::new(self.opts(password)).await {
                Ok(mut conn) => {
                    let statement = "SET SESSION sql_mode = REPLACE(@@SESSION.sql_mode, 'NO_BACKSLASH_ESCAPES', '')";
                    conn.query_drop(statement)
                        .await
                        .map_err(|error| MyError::sql(statement, error))?;
                    return Ok(conn);
                }
                Err(error) if is_access_denied(&error) => last = Some(error),
                Err(error) => return Err(self.error(Some(error))),
            }
        }
        Err(self.error(last))
    }

    fn error(&self, source: Option<mysql_async::Error>) -> MyError {
        MyError::Connect {
            socket: self.socket.clone(),
            user: self.user.clone(),
            source: source.unwrap_or_else(|| {
                mysql_async::Error::Other("kip has no password for this instance".into())
            }),
        }
    }
}

/// Whether MariaDB refused the credentials.
pub fn is_access_denied(error: &mysql_async::Error) -> bool {
    server_code(error) == Some(ACCESS_DENIED)
}

/// The server's error code, for an error the server sent.
pub fn server_code(error: &mysql_async::Error) -> Option<u16> {
    match error {
        mysql_async::Error::Server(server) => Some(server.code),
        _ => None,
    }
}
