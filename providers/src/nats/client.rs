//! kip's connection to a NATS instance: an `async-nats` client on the instance's loopback port, with its token
//! (the server never accepts a client without one).

use std::time::{Duration, Instant};

use async_nats::{Client, ConnectErrorKind, ConnectOptions, ReconnectToServer, Server};

use super::NatsError;

/// How long kip waits for a server that does not listen (yet, or again: the supervisor is restarting it).
const RESTART_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a JetStream request may take: creating a file stream syncs its directory.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and with what kip connects: the port, and the tokens to try in turn (the one the configuration holds
/// first, then the one it held before: a reload may not have happened yet).
#[derive(Debug, Clone)]
pub struct Connector {
    pub port: u16,
    pub tokens: Vec<String>,
}

impl Connector {
    async fn connect_with(&self, token: &str) -> Result<Client, async_nats::ConnectError> {
        ConnectOptions::with_token(token.to_owned())
            .name("kip")
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .max_reconnects(Some(3))
            .reconnect_to_server_callback(|servers, _info| async move { at_once(servers) })
            .ignore_discovered_servers()
            .connect(format!("nats://127.0.0.1:{}", self.port))
            .await
    }

    /// A client the server accepted, trying each token; waits a moment for a server that is (re)starting.
    pub async fn connect(&self) -> Result<Client, NatsError> {
        let started = Instant::now();
        loop {
            let mut last = None;
            for token in &self.tokens {
                match self.connect_with(token).await {
                    Ok(client) => return Ok(client),
                    Err(error) => {
                        let refused = error.kind() == ConnectErrorKind::AuthorizationViolation;
                        last = Some(error);
                        if !refused {
                            break;
                        }
                    }
                }
            }
            let error = last.unwrap_or_else(|| {
                async_nats::ConnectError::new(ConnectErrorKind::AuthorizationViolation)
            });
            let starting = matches!(
                error.kind(),
                ConnectErrorKind::Io | ConnectErrorKind::TimedOut
            );
            if !starting || started.elapsed() > RESTART_TIMEOUT {
                return Err(NatsError::Connect {
                    port: self.port,
                    source: error,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The first attempt at a server, to be made now: async-nats sleeps before every attempt, the first one included,
/// for the delay its backoff gives (zero for the first), and tokio's timer rounds a zero sleep up to its next
/// millisecond tick: 1.1 ms of every connection, measured on the way to ready. `None` (a server tried already)
/// leaves the attempt to the default selection and backoff.
fn at_once(servers: Vec<Server>) -> Option<ReconnectToServer> {
    servers
        .into_iter()
        .find(|server| !server.did_connect && server.failed_attempts == 0)
        .map(|server| ReconnectToServer {
            addr: server.addr,
            delay: Some(Duration::ZERO),
        })
}

/// Whether JetStream answers for the client's account (`$JS.API.INFO`): it does once it recovered its streams.
pub async fn jetstream_answers(
    client: &Client,
) -> Result<(), async_nats::jetstream::context::AccountError> {
    async_nats::jetstream::new(client.clone())
        .query_account()
        .await
        .map(drop)
}

/// One attempt at what kip's ready step waits for: the server at `port` takes `token`, and JetStream answers.
/// For the benchmark's bare server, timed the same way as kip's own.
pub async fn serves(port: u16, token: &str) -> bool {
    let connector = Connector {
        port,
        tokens: vec![token.to_owned()],
    };
    match connector.connect_with(token).await {
        Ok(client) => jetstream_answers(&client).await.is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(failed_attempts: usize, did_connect: bool) -> Server {
        Server {
            addr: "nats://127.0.0.1:4222".parse().unwrap(),
            failed_attempts,
            did_connect,
            is_discovered: false,
            last_error: None,
        }
    }

    /// Only a first attempt goes at once; a retry, and a reconnect after a dropped connection, keep the backoff.
    #[test]
    fn only_the_first_attempt_at_a_server_skips_the_backoff() {
        let first = at_once(vec![server(0, false)]).expect("the first attempt");
        assert_eq!(first.delay, Some(Duration::ZERO));
        assert_eq!(first.addr, server(0, false).addr);
        assert!(at_once(vec![server(1, false)]).is_none());
        assert!(at_once(vec![server(0, true)]).is_none());
    }
}
