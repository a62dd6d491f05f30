//! The client side of the supervisor, used by the CLI: find the project's supervisor (or start one, detached,
//! also when none runs but a killed one left live processes to adopt), and ask it to start, stop, reload, wait
//! for and report on processes.
//!
//! A [`Client`] is one connection; its requests are answered in order. To start processes in parallel, open one
//! client per task. A request whose future is dropped before its answer arrived leaves the connection out of step,
//! so the client refuses further requests on it instead of reading the wrong answer.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use super::error::SupervisorError;
use super::protocol::{self, MAX_LINE, Request};
use super::{
    DaemonInfo, ProcessStatus, WaitUntil, daemon_log_path, logfile, socket_path, table, table_path,
};
use crate::engine::SpawnSpec;

/// How long [`Client::start_daemon`] waits for a new supervisor to answer. It binds its socket within
/// milliseconds; the margin is for a loaded CI machine.
pub const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a supervisor may take to answer a ping before it is called stuck.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How often [`Client::start_daemon`] looks for the new supervisor's socket: a connect that finds no socket costs
/// microseconds, and every millisecond here is on the path of a new project's first apply.
const START_POLL: Duration = Duration::from_millis(1);

/// A connection to a project's supervisor.
pub struct Client {
    socket: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    daemon: DaemonInfo,
    /// A request was sent and its answer not read (its future was dropped): the connection is out of step.
    in_flight: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Client")
            .field("socket", &self.socket)
            .field("daemon", &self.daemon)
            .finish()
    }
}

impl Client {
    /// Connects to the supervisor of the project whose `.kip/` directory is `kip_dir`; `None` when none runs
    /// (no socket, a socket file nobody listens on, or a supervisor that was dying as it was reached: it accepted
    /// the connection and vanished without an answer). A supervisor that accepts the connection but does not
    /// answer a ping is an error: it is there, and stuck.
    pub async fn connect(kip_dir: &Path) -> Result<Option<Client>, SupervisorError> {
        let socket = socket_path(kip_dir);
        let stream = match UnixStream::connect(&socket).await {
            Ok(stream) => stream,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(source) => return Err(SupervisorError::Connect { socket, source }),
        };
        let (read, writer) = stream.into_split();
        let placeholder = DaemonInfo {
            pid: 0,
            protocol: protocol::PROTOCOL_VERSION,
            kip_version: String::new(),
        };
        let mut client = Client {
            socket,
            reader: BufReader::new(read),
            writer,
            daemon: placeholder,
            in_flight: false,
        };
        client.daemon = match tokio::time::timeout(PING_TIMEOUT, client.ping()).await {
            Ok(Err(SupervisorError::Closed { .. })) => return Ok(None),
            Ok(Err(SupervisorError::Transport { source, .. }))
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(None);
            }
            Ok(answer) => answer?,
            Err(_) => {
                return Err(SupervisorError::Timeout {
                    socket: client.socket,
                    what: "a ping",
                    waited_ms: PING_TIMEOUT.as_millis() as u64,
                });
            }
        };
        Ok(Some(client))
    }

    /// Starts a supervisor for `kip_dir` by running `kip_exe args…` detached (its own process group, stdin from
    /// /dev/null, output appended to `.kip/logs/supervisor.log`), and connects to it once it answers. If another
    /// supervisor won a race to start, connects to that one. Errors quote the supervisor log's new lines.
    pub async fn start_daemon(
        kip_dir: &Path,
        kip_exe: &Path,
        args: &[&str],
    ) -> Result<Client, SupervisorError> {
        let log_path = daemon_log_path(kip_dir);
        if let Some(logs) = log_path.parent() {
            std::fs::create_dir_all(logs).map_err(|source| SupervisorError::CreateDir {
                path: logs.to_owned(),
                source,
            })?;
        }
        let log_error = |source| SupervisorError::DaemonLog {
            path: log_path.clone(),
            source,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(log_error)?;
        let offset = log.metadata().map_err(log_error)?.len();
        let stderr = log.try_clone().map_err(log_error)?;
        // The daemon keeps nothing of the caller's environment but where programs are and how to log: it holds
        // no secret a process could read from it, and every process it starts gets its spec's environment.
        // kip holds huge pages back for itself; the supervisor takes back the setting kip was started with.
        let kept = ["PATH", "KIP_LOG", "LANG", "TZ"]
            .into_iter()
            .filter_map(|name| std::env::var_os(name).map(|value| (name, value)))
            .chain(crate::huge_pages::handed_on().map(|(name, value)| (name, value.into())));
        let mut child = tokio::process::Command::new(kip_exe)
            .args(args)
            .env_clear()
            .envs(kept)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            // Out of the terminal's process group: a Ctrl-C meant for `kip apply` must not stop the engines.
            .process_group(0)
            // Dropping the child leaves it running; tokio reaps it if it exits while this process lives.
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| SupervisorError::SpawnDaemon {
                program: kip_exe.to_owned(),
                source,
            })?;
        let started = Instant::now();
        let did_not_start = |exit: Option<String>| SupervisorError::DaemonDidNotStart {
            socket: socket_path(kip_dir),
            waited_ms: started.elapsed().as_millis() as u64,
            exit,
            log: log_path.clone(),
            tail: logfile::tail(&log_path, offset),
        };
        let mut exited = None;
        loop {
            if let Some(client) = Client::connect(kip_dir).await? {
                return Ok(client);
            }
            if let Some(status) = exited {
                // It exited, and even after that nobody answers. If another daemon holds the lock, that one won a
                // race to start and is not listening yet: wait for it.
                if !super::daemon::lock_is_held(kip_dir)
                    || started.elapsed() >= DAEMON_START_TIMEOUT
                {
                    return Err(did_not_start(Some(super::process::describe_exit(status))));
                }
                tokio::time::sleep(START_POLL).await;
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Connect once more: it may have exited because another supervisor won the race.
                exited = Some(status);
                continue;
            }
            if started.elapsed() >= DAEMON_START_TIMEOUT {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
                return Err(did_not_start(None));
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    /// [`Client::connect`], else [`Client::start_daemon`].
    pub async fn connect_or_start(
        kip_dir: &Path,
        kip_exe: &Path,
        args: &[&str],
    ) -> Result<Client, SupervisorError> {
        match Client::connect(kip_dir).await? {
            Some(client) => Ok(client),
            None => Client::start_daemon(kip_dir, kip_exe, args).await,
        }
    }

    /// [`Client::connect`]; when no supervisor answers but the persisted process table lists processes that still
    /// run (their supervisor was killed), or gone ones whose files outside their directories are still there,
    /// starts one with [`Client::start_daemon`], which adopts them or removes those files, and returns the
    /// connection to it. `None` when no supervisor runs and nothing is left to adopt or clean up: nothing is
    /// started.
    ///
    /// For commands that act on what runs (`ps`, `down`, `destroy`, `apply`) without necessarily starting anything.
    pub async fn connect_or_adopt(
        kip_dir: &Path,
        kip_exe: &Path,
        args: &[&str],
    ) -> Result<Option<Client>, SupervisorError> {
        if let Some(client) = Client::connect(kip_dir).await? {
            return Ok(Some(client));
        }
        if !table::calls_for_a_supervisor(&table_path(kip_dir)) {
            return Ok(None);
        }
        Client::start_daemon(kip_dir, kip_exe, args).await.map(Some)
    }

    /// The control socket this client is connected to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What the supervisor said about itself when this client connected.
    pub fn daemon(&self) -> &DaemonInfo {
        &self.daemon
    }

    /// Asks the supervisor who it is.
    pub async fn ping(&mut self) -> Result<DaemonInfo, SupervisorError> {
        let answer = self.request(&Request::Ping).await?;
        self.decode(answer)
    }

    /// Starts `spec` and returns its status once its readiness probe passed. A process of that name that runs
    /// ready with the same spec is left alone; with another spec, it is stopped and started again.
    pub async fn start(&mut self, spec: SpawnSpec) -> Result<ProcessStatus, SupervisorError> {
        let answer = self
            .request(&Request::Start {
                spec: Box::new(spec),
            })
            .await?;
        self.decode(answer)
    }

    /// Stops a process with its stop sequence; returns once it is gone.
    pub async fn stop(&mut self, name: &str) -> Result<(), SupervisorError> {
        self.stop_with(name, false).await
    }

    /// Stops a process whose data is deleted right after: with its spec's discard sequence when it has one (an
    /// immediate shutdown), else as [`Client::stop`]; returns once it is gone.
    pub async fn discard(&mut self, name: &str) -> Result<(), SupervisorError> {
        self.stop_with(name, true).await
    }

    async fn stop_with(&mut self, name: &str, discard: bool) -> Result<(), SupervisorError> {
        let name = name.to_owned();
        self.request(&Request::Stop { name, discard })
            .await
            .map(drop)
    }

    /// Sends the process's reload signal (its spec's `reload`) to its whole process group.
    pub async fn reload(&mut self, name: &str) -> Result<(), SupervisorError> {
        self.request(&Request::Reload {
            name: name.to_owned(),
        })
        .await
        .map(drop)
    }

    /// Waits until the process is ready, or has exited for good (a one-shot job: its state then says its exit
    /// code), and returns its status then. Waiting longer than `timeout` is an error, and so is waiting for a
    /// process that exited for good to become ready.
    pub async fn wait(
        &mut self,
        name: &str,
        until: WaitUntil,
        timeout: Duration,
    ) -> Result<ProcessStatus, SupervisorError> {
        let answer = self
            .request(&Request::Wait {
                name: name.to_owned(),
                until,
                timeout_ms: timeout.as_millis().try_into().unwrap_or(u64::MAX),
            })
            .await?;
        self.decode(answer)
    }

    /// Every supervised process, in start order.
    pub async fn status(&mut self) -> Result<Vec<ProcessStatus>, SupervisorError> {
        let answer = self.request(&Request::Status).await?;
        self.decode(answer)
    }

    /// Stops every process (the most recently started first) and ends the supervisor; returns once everything
    /// is stopped and the socket removed.
    pub async fn shutdown(mut self) -> Result<(), SupervisorError> {
        self.request(&Request::Shutdown).await.map(drop)
    }

    async fn request(&mut self, request: &Request) -> Result<Value, SupervisorError> {
        if self.in_flight {
            return Err(SupervisorError::Protocol {
                socket: self.socket.clone(),
                reason: "an earlier request on this connection was abandoned before its answer; reconnect".to_owned(),
            });
        }
        let transport = |source| SupervisorError::Transport {
            socket: self.socket.clone(),
            source,
        };
        self.in_flight = true;
        self.writer
            .write_all(&protocol::encode_request(request))
            .await
            .map_err(transport)?;
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await;
        let read = read.map_err(|source| SupervisorError::Transport {
            socket: self.socket.clone(),
            source,
        })?;
        if read == 0 || !line.ends_with(b"\n") {
            return Err(if line.len() > MAX_LINE {
                SupervisorError::Protocol {
                    socket: self.socket.clone(),
                    reason: format!("the answer is longer than {MAX_LINE} bytes"),
                }
            } else {
                SupervisorError::Closed {
                    socket: self.socket.clone(),
                }
            });
        }
        self.in_flight = false;
        match protocol::decode_response(&line) {
            Ok(outcome) => outcome.map_err(SupervisorError::from),
            Err(reason) => Err(SupervisorError::Protocol {
                socket: self.socket.clone(),
                reason,
            }),
        }
    }

    fn decode<T: DeserializeOwned>(&self, answer: Value) -> Result<T, SupervisorError> {
        serde_json::from_value(answer).map_err(|error| SupervisorError::Protocol {
            socket: self.socket.clone(),
            reason: error.to_string(),
        })
    }
}
