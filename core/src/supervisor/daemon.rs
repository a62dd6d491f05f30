//! The supervisor daemon: owns the project's control socket and pid file, serves requests (one task per
//! connection), and keeps the table of supervised processes.
//!
//! There is one daemon per project. It refuses to start while another one answers on the socket; a socket file
//! nobody listens on (left by a daemon that was killed) is removed. On shutdown (a `shutdown` request, or SIGTERM
//! or SIGINT when it handles signals) it stops every process, newest first, so that a process is stopped before
//! the ones it was started after, then removes its socket and pid file, if they are still its own.
//!
//! Starts of different processes run in parallel (apply starts independent instances at the same time); starts
//! of the same name are serialised, so that a repeated `start` sees the first one's outcome.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Notify;

use super::error::{RequestError, SupervisorError};
use super::process::{self, Handle};
use super::protocol::{self, MAX_LINE, PROTOCOL_VERSION, Request};
use super::{DaemonInfo, ProcessState, ProcessStatus, pid_file_path, socket_path};
use crate::engine::SpawnSpec;

/// How the daemon runs, beyond its directory.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Stop everything and exit on SIGTERM and SIGINT, and ignore SIGHUP (the terminal that started `kip` going
    /// away must not take the engines with it). On for the real daemon; tests that run the daemon inside their own
    /// process turn it off, since signal handlers are process-wide and outlive the daemon.
    pub handle_signals: bool,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            handle_signals: true,
        }
    }
}

/// The daemon body behind `kip supervisor --dir .kip`: serves the supervisor of the project whose `.kip/`
/// directory is `kip_dir` until told to shut down, then stops every process and returns.
///
/// Needs a tokio runtime with IO and time enabled (`enable_all`); a current-thread runtime is enough.
pub async fn run_daemon(kip_dir: &Path) -> Result<(), SupervisorError> {
    run_daemon_with(kip_dir, DaemonOptions::default()).await
}

/// [`run_daemon`], with options.
pub async fn run_daemon_with(
    kip_dir: &Path,
    options: DaemonOptions,
) -> Result<(), SupervisorError> {
    std::fs::create_dir_all(kip_dir).map_err(|source| SupervisorError::CreateDir {
        path: kip_dir.to_owned(),
        source,
    })?;
    let socket = socket_path(kip_dir);
    let listener = bind(&socket, kip_dir).await?;
    let mut files = OwnedFiles::new(socket, pid_file_path(kip_dir));
    files.write_pid()?;
    let mut signals = if options.handle_signals {
        Some(Signals::new()?)
    } else {
        None
    };
    let daemon = Arc::new(Daemon {
        supervisor: Supervisor::default(),
        files,
        exit: Notify::new(),
        info: DaemonInfo {
            pid: std::process::id(),
            protocol: PROTOCOL_VERSION,
            kip_version: env!("CARGO_PKG_VERSION").to_owned(),
        },
    });
    tracing::info!(socket = %daemon.files.socket.display(), pid = daemon.info.pid, "supervisor listening");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(Arc::clone(&daemon), stream));
                }
                Err(error) => {
                    // Out of file descriptors, most likely: wait for some to close rather than spin.
                    tracing::warn!("cannot accept a connection: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = daemon.exit.notified() => break,
            received = next_signal(&mut signals) => match received {
                Received::Stop(name) => {
                    tracing::info!("{name} received: stopping every process");
                    break;
                }
                Received::Ignore(name) => tracing::info!("{name} received and ignored"),
            },
        }
    }
    daemon.supervisor.shutdown().await;
    daemon.files.remove();
    tracing::info!("supervisor stopped");
    Ok(())
}

/// Binds the control socket, removing a stale socket file first; refuses when a live daemon answers on it.
async fn bind(socket: &Path, kip_dir: &Path) -> Result<UnixListener, SupervisorError> {
    let bind_error = |source| SupervisorError::Bind {
        socket: socket.to_owned(),
        source,
    };
    match UnixListener::bind(socket) {
        Ok(listener) => return Ok(listener),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {}
        Err(error) => return Err(bind_error(error)),
    }
    match UnixStream::connect(socket).await {
        Ok(_) => {
            return Err(SupervisorError::AlreadyRunning {
                socket: socket.to_owned(),
                pid: read_pid(kip_dir),
            });
        }
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %socket.display(), "removing the socket of a supervisor that is gone");
            match std::fs::remove_file(socket) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(bind_error(error)),
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SupervisorError::Connect {
                socket: socket.to_owned(),
                source,
            });
        }
    }
    UnixListener::bind(socket).map_err(bind_error)
}

/// The pid in a project's pid file, if there is one.
pub(super) fn read_pid(kip_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file_path(kip_dir))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The socket and pid file this daemon created; removed once, at shutdown (or when the daemon fails to start),
/// and only while they are still this daemon's: a file someone replaced is left alone.
struct OwnedFiles {
    socket: PathBuf,
    socket_inode: Option<(u64, u64)>,
    pid_file: PathBuf,
    pid_written: bool,
    removed: AtomicBool,
}

impl OwnedFiles {
    fn new(socket: PathBuf, pid_file: PathBuf) -> OwnedFiles {
        let socket_inode = std::fs::symlink_metadata(&socket)
            .ok()
            .map(|metadata| (metadata.dev(), metadata.ino()));
        OwnedFiles {
            socket,
            socket_inode,
            pid_file,
            pid_written: false,
            removed: AtomicBool::new(false),
        }
    }

    fn write_pid(&mut self) -> Result<(), SupervisorError> {
        crate::fsutil::write_atomically(
            &self.pid_file,
            format!("{}\n", std::process::id()).as_bytes(),
        )
        .map_err(|source| SupervisorError::PidFile {
            path: self.pid_file.clone(),
            source,
        })?;
        self.pid_written = true;
        Ok(())
    }

    fn remove(&self) {
        if self.removed.swap(true, Ordering::SeqCst) {
            return;
        }
        let still_ours = std::fs::symlink_metadata(&self.socket)
            .ok()
            .map(|metadata| (metadata.dev(), metadata.ino()))
            .is_some_and(|inode| Some(inode) == self.socket_inode);
        if still_ours {
            let _ = std::fs::remove_file(&self.socket);
        }
        let pid_is_ours = std::fs::read_to_string(&self.pid_file)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if self.pid_written && pid_is_ours {
            let _ = std::fs::remove_file(&self.pid_file);
        }
    }
}

impl Drop for OwnedFiles {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The signals the real daemon handles.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

enum Received {
    Stop(&'static str),
    Ignore(&'static str),
}

impl Signals {
    fn new() -> Result<Signals, SupervisorError> {
        let install = |kind| signal(kind).map_err(|source| SupervisorError::Signals { source });
        Ok(Signals {
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
            hangup: install(SignalKind::hangup())?,
        })
    }
}

/// The next signal, or never when signals are not handled.
async fn next_signal(signals: &mut Option<Signals>) -> Received {
    let Some(signals) = signals else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = signals.terminate.recv() => Received::Stop("SIGTERM"),
        _ = signals.interrupt.recv() => Received::Stop("SIGINT"),
        _ = signals.hangup.recv() => Received::Ignore("SIGHUP"),
    }
}

/// What the connection tasks share.
struct Daemon {
    supervisor: Supervisor,
    files: OwnedFiles,
    /// Told once a `shutdown` request has been answered: the accept loop ends.
    exit: Notify,
    info: DaemonInfo,
}

impl Daemon {
    async fn handle(&self, request: Request) -> Result<Value, RequestError> {
        let encode = |value: Result<Value, serde_json::Error>| {
            value.map_err(|error| RequestError::Other {
                message: format!("cannot encode the answer: {error}"),
            })
        };
        match request {
            Request::Ping => encode(serde_json::to_value(&self.info)),
            Request::Start { spec } => {
                encode(serde_json::to_value(self.supervisor.start(*spec).await?))
            }
            Request::Stop { name } => self.supervisor.stop(&name).await.map(|()| Value::Null),
            Request::Status => encode(serde_json::to_value(self.supervisor.status())),
            Request::Shutdown => {
                self.supervisor.shutdown().await;
                // Before answering, so that a client that got the answer finds no socket to connect to.
                self.files.remove();
                Ok(Value::Null)
            }
        }
    }
}

/// Serves one connection: one request per line, answered in order, until the client closes it.
async fn serve_connection(daemon: Arc<Daemon>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) => {
                tracing::debug!("a client connection failed: {error}");
                return;
            }
        }
        if line.len() > MAX_LINE {
            // Skip the rest of the line, so that the next request is read from its start (and so that the client
            // can read the answer: closing a unix socket with unread data resets the peer's connection).
            if !matches!(skip_line(&mut reader).await, Ok(true)) {
                return;
            }
            let error = RequestError::BadRequest {
                reason: format!("the request is longer than {MAX_LINE} bytes"),
            };
            if write
                .write_all(&protocol::encode_response(Err(error)))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let request = line.trim_ascii();
        if request.is_empty() {
            continue;
        }
        let (outcome, shutdown) = match protocol::decode_request(request) {
            Ok(request) => {
                tracing::debug!("request: {}", request.op());
                let shutdown = matches!(request, Request::Shutdown);
                (daemon.handle(request).await, shutdown)
            }
            Err(error) => {
                tracing::info!("bad request: {error}");
                (Err(error), false)
            }
        };
        let written = write.write_all(&protocol::encode_response(outcome)).await;
        if shutdown {
            daemon.exit.notify_one();
            return;
        }
        if written.is_err() {
            return;
        }
    }
}

/// Reads and drops bytes up to the next newline (true), or to the end of the stream or [`MAX_SKIP`] (false).
async fn skip_line(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> std::io::Result<bool> {
    let mut skipped = 0;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(false);
        }
        if let Some(end) = buffer.iter().position(|&byte| byte == b'\n') {
            reader.consume(end + 1);
            return Ok(true);
        }
        let length = buffer.len();
        reader.consume(length);
        skipped += length;
        if skipped > MAX_SKIP {
            return Ok(false);
        }
    }
}

/// How much of an over-long request is skipped before its connection is closed.
const MAX_SKIP: usize = 64 << 20;

/// The table of supervised processes.
#[derive(Default)]
struct Supervisor {
    table: Mutex<Table>,
    /// One lock per name, held for the whole of a start: a second start of the same name waits for the first.
    start_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Default)]
struct Table {
    entries: BTreeMap<String, Entry>,
    next_sequence: u64,
    shutting_down: bool,
}

struct Entry {
    /// When it was started, relative to the others: status lists and shutdown order follow it.
    sequence: u64,
    handle: Arc<Handle>,
}

impl Supervisor {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half-updated (every update is one insert or
        // remove), so a poisoned lock is still usable.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn start_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .start_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(locks.entry(name.to_owned()).or_default())
    }

    async fn start(&self, spec: SpawnSpec) -> Result<ProcessStatus, RequestError> {
        let checked = process::check(&spec)?;
        let name = spec.name.clone();
        let lock = self.start_lock(&name);
        let _serialised = lock.lock().await;
        let existing = {
            let table = self.table();
            if table.shutting_down {
                return Err(RequestError::ShuttingDown);
            }
            table
                .entries
                .get(&name)
                .map(|entry| (entry.sequence, Arc::clone(&entry.handle)))
        };
        if let Some((sequence, handle)) = existing {
            let status = handle.status.borrow().clone();
            if handle.spec == spec && status.state == ProcessState::Ready {
                return Ok(status);
            }
            tracing::info!(name = %name, "restarting: its spec changed, or it is not ready");
            self.remove_if(&name, sequence);
            handle.stop().await?;
        }
        self.wait_for_dependencies(&spec).await?;
        let ready = {
            let mut table = self.table();
            if table.shutting_down {
                return Err(RequestError::ShuttingDown);
            }
            let (handle, ready) = process::launch(spec, checked);
            let sequence = table.next_sequence;
            table.next_sequence += 1;
            let entry = Entry {
                sequence,
                handle: Arc::new(handle),
            };
            if let Some(replaced) = table.entries.insert(name.clone(), entry) {
                // Cannot happen while starts of a name are serialised; if it ever did, the replaced process
                // must not run on unsupervised.
                tokio::spawn(async move { replaced.handle.stop().await });
            }
            ready
        };
        ready
            .await
            .unwrap_or(Err(RequestError::StoppedBeforeReady { name }))
    }

    /// Waits for the processes `spec` must start after to be ready, for at most its own probe timeout.
    async fn wait_for_dependencies(&self, spec: &SpawnSpec) -> Result<(), RequestError> {
        for dependency in &spec.after {
            let not_ready = |state: String| RequestError::DependencyNotReady {
                name: spec.name.clone(),
                dependency: dependency.clone(),
                state,
            };
            let status = self
                .table()
                .entries
                .get(dependency)
                .map(|entry| entry.handle.status.clone());
            let Some(mut status) = status else {
                return Err(not_ready("not supervised".to_owned()));
            };
            let settled = tokio::time::timeout(
                spec.probe.timeout,
                status.wait_for(|status| {
                    !matches!(
                        status.state,
                        ProcessState::Starting | ProcessState::Restarting
                    )
                }),
            )
            .await;
            match settled {
                Ok(Ok(status)) if status.state == ProcessState::Ready => {}
                Ok(Ok(status)) => return Err(not_ready(describe_state(&status.state))),
                Ok(Err(_)) => return Err(not_ready("stopped".to_owned())),
                Err(_) => {
                    return Err(not_ready(format!(
                        "still not ready after {} ms",
                        spec.probe.timeout.as_millis()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Removes the entry `name` if it is still the one started as `sequence` (a concurrent stop may have removed
    /// it, and a start may have replaced it since).
    fn remove_if(&self, name: &str, sequence: u64) {
        let mut table = self.table();
        if table
            .entries
            .get(name)
            .is_some_and(|entry| entry.sequence == sequence)
        {
            table.entries.remove(name);
        }
    }

    async fn stop(&self, name: &str) -> Result<(), RequestError> {
        let entry = self.table().entries.remove(name);
        match entry {
            Some(entry) => entry.handle.stop().await,
            None => Err(RequestError::UnknownProcess {
                name: name.to_owned(),
            }),
        }
    }

    fn status(&self) -> Vec<ProcessStatus> {
        let table = self.table();
        let mut entries: Vec<&Entry> = table.entries.values().collect();
        entries.sort_by_key(|entry| entry.sequence);
        entries
            .iter()
            .map(|entry| entry.handle.status.borrow().clone())
            .collect()
    }

    /// Stops every process, the most recently started first; no start is accepted from here on.
    async fn shutdown(&self) {
        let mut entries: Vec<(String, Entry)> = {
            let mut table = self.table();
            table.shutting_down = true;
            std::mem::take(&mut table.entries).into_iter().collect()
        };
        entries.sort_by_key(|(_, entry)| std::cmp::Reverse(entry.sequence));
        for (name, entry) in entries {
            if let Err(error) = entry.handle.stop().await {
                tracing::warn!(name = %name, "{error}");
            }
        }
    }
}

/// A state as an error message says it.
fn describe_state(state: &ProcessState) -> String {
    match state {
        ProcessState::Starting => "starting".to_owned(),
        ProcessState::Ready => "ready".to_owned(),
        ProcessState::Restarting => "restarting".to_owned(),
        ProcessState::Exited {
            code: Some(code), ..
        } => format!("exited with code {code}"),
        ProcessState::Exited {
            signal: Some(signal),
            ..
        } => format!("killed by signal {signal}"),
        ProcessState::Exited { .. } => "exited".to_owned(),
        ProcessState::Failed { reason } => format!("failed ({reason})"),
    }
}
