//! kip's connection to a Valkey instance: the `redis` crate's multiplexed connection over the instance's unix
//! socket, authenticated as `default` (the server never accepts a connection without a password).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use super::VkError;

/// How long kip waits for an answer: `ACL SAVE` or turning `appendonly` on write files.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long kip waits for a server that is starting (no socket yet, nobody listening on it: the supervisor is
/// restarting it) or loading its data (`LOADING`) before it answers.
const LOADING_TIMEOUT: Duration = Duration::from_secs(60);
const RESTART_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as whom kip connects: the socket, and the passwords to try in turn (the one in state first, then a
/// newly declared one the server may have already, after a restart with a rewritten ACL file).
#[derive(Debug, Clone)]
pub struct Connector {
    pub socket: PathBuf,
    pub passwords: Vec<String>,
}

impl Connector {
    pub fn new(socket: &Path, passwords: Vec<String>) -> Connector {
        Connector {
            socket: socket.to_owned(),
            passwords,
        }
    }

    async fn connect_as(&self, password: &str) -> Result<MultiplexedConnection, redis::RedisError> {
        let info = ConnectionAddr::Unix(self.socket.clone())
            .into_connection_info()?
            .set_redis_settings(
                RedisConnectionInfo::default()
                    .set_username("default")
                    .set_password(password)
                    .set_skip_set_lib_name(),
            );
        let client = redis::Client::open(info)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(10)))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// An authenticated connection that answers `PING` (waiting out `LOADING`).
    pub async fn connect(&self) -> Result<MultiplexedConnection, VkError> {
        let started = Instant::now();
        loop {
            let mut last = None;
            for password in &self.passwords {
                match self.connect_as(password).await {
                    Ok(mut connection) => {
                        let pong: Result<String, _> =
                            redis::cmd("PING").query_async(&mut connection).await;
                        match pong {
                            Ok(_) => return Ok(connection),
                            Err(error) => last = Some(error),
                        }
                    }
                    Err(error) => last = Some(error),
                }
                if last
                    .as_ref()
                    .is_some_and(|error| !super::is_auth_error(error))
                {
                    break;
                }
            }
            let error = last.unwrap_or_else(|| {
                redis::RedisError::from((
                    redis::ErrorKind::AuthenticationFailed,
                    "no password to try",
                ))
            });
            if starting_for(&error).is_none_or(|timeout| started.elapsed() > timeout) {
                return Err(VkError::Connect {
                    socket: self.socket.clone(),
                    source: error,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How long the server may be still starting: `LOADING` (its data) for longer, no socket or a cut connection
/// (the supervisor is restarting a server that died) for a few seconds.
fn starting_for(error: &redis::RedisError) -> Option<Duration> {
    if error.code() == Some("LOADING") {
        Some(LOADING_TIMEOUT)
    } else if error.kind() == redis::ErrorKind::Io {
        Some(RESTART_TIMEOUT)
    } else {
        None
    }
}

/// Runs `command` and keeps Valkey's refusal, quoted; `shown` is the command as errors show it (no passwords).
pub async fn run<T: redis::FromRedisValue>(
    connection: &mut MultiplexedConnection,
    command: &redis::Cmd,
    shown: &str,
) -> Result<T, VkError> {
    command
        .query_async(connection)
        .await
        .map_err(|error| VkError::refused(shown, error))
}
