//! The supervisor daemon: owns the project's control socket, lock and pid file, serves requests (one task per
//! connection), and keeps the table of supervised processes, persisted so that a daemon that replaces a killed one
//! adopts its processes.
//!
//! There is one daemon per project: it holds an exclusive lock on `.kip/supervisor.lock` for its whole life (the
//! kernel releases it when the daemon dies, however it dies), and it also refuses to start while another one
//! answers on the socket (a daemon of an older kip, which took no lock). A socket file nobody listens on (left by a
//! daemon that was killed) is removed. The socket is made 0600 before the first connection is accepted, and every
//! connection's peer must be the daemon's own effective uid or root: anyone else gets one `forbidden` error line
//! and is disconnected. On shutdown (a `shutdown` request, or SIGTERM or SIGINT when it handles signals) it stops
//! every process, newest first, so that a process is stopped before the ones it was started after, then removes its
//! socket and pid file, if they are still its own. It does the same when its project is gone: the lock file it
//! holds was unlinked (`.kip/` deleted with its project: a removed checkout, a CI workspace wiped between jobs),
//! after which no kip could reach its processes again, and they would run on, unsupervisable, for ever.
//!
//! At start-up, before it serves anything, the daemon reads the persisted table: a process whose pid is alive with
//! the recorded start time is adopted (see [`super::process`]); one whose leader is gone is dropped (the next
//! apply starts it again), after what is left of its process group is stopped, when every member still carries the
//! run's id in its environment; one whose pid another process has now is dropped without a signal. Until such
//! leftovers are stopped, a start of the same name waits.
//!
//! Starts of different processes run in parallel (apply starts independent instances at the same time); starts
//! of the same name are serialised, so that a repeated `start` sees the first one's outcome, and a start that
//! replaces a process stops the old one (its whole group) before it spawns the new one: two processes of one name
//! never run at the same time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::error::{RequestError, SupervisorError};
use super::process::{self, Adoption, Handle, Origin, Persistence};
use super::procfs::{self, Identity};
use super::protocol::{self, MAX_LINE, PROTOCOL_VERSION, Request};
use super::table::{self, LoadError, Record, Store};
use super::{
    DaemonInfo, ProcessState, ProcessStatus, WaitUntil, lock_path, pid_file_path, socket_path,
    table_path,
};
use crate::engine::SpawnSpec;

/// How long a daemon that finds the lock taken keeps trying before it refuses to start: the holder may be a client
/// checking whether a daemon runs ([`lock_is_held`]), which lets go at once, or a daemon that was just killed,
/// whose threads are still exiting (its socket may even still accept connections).
const LOCK_PATIENCE: Duration = Duration::from_secs(1);
/// How much longer than its probe's timeout a start waits for a process of the same spec that is starting already.
const SETTLE_MARGIN: Duration = Duration::from_secs(1);
/// How often the daemon checks that its project still exists ([`project_gone`]).
const GONE_CHECK: Duration = Duration::from_secs(2);

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
    // What the processes it starts inherit: the machine's policy, as the kip that started it found it.
    crate::huge_pages::restore_handed_on();
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
    let lock = acquire_lock(kip_dir, &socket).await?;
    let listener = bind(&socket, kip_dir).await?;
    let mut files = OwnedFiles::new(socket, pid_file_path(kip_dir));
    // Before the first accept: until then, connections only wait in the backlog, and each one's peer is checked.
    std::fs::set_permissions(&files.socket, std::fs::Permissions::from_mode(0o600)).map_err(
        |source| SupervisorError::Bind {
            socket: files.socket.clone(),
            source,
        },
    )?;
    files.write_pid()?;
    let mut signals = if options.handle_signals {
        Some(Signals::new()?)
    } else {
        None
    };
    let supervisor = Supervisor::adopt(table_path(kip_dir))?;
    let daemon = Arc::new(Daemon {
        supervisor,
        files,
        exit: Notify::new(),
        info: DaemonInfo {
            pid: std::process::id(),
            protocol: PROTOCOL_VERSION,
            kip_version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        owner: rustix::process::geteuid().as_raw(),
        lock,
    });
    tracing::info!(socket = %daemon.files.socket.display(), pid = daemon.info.pid, "supervisor listening");
    let lock_file = lock_path(kip_dir);
    let gone = project_gone(&daemon.lock, &lock_file);
    tokio::pin!(gone);
    // Whether the processes are stopped with their discard sequence: their data went with the project, and what they
    // would write on the way out (Valkey refuses to exit when its last save fails) has nowhere to go.
    let mut discard = false;
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
            () = &mut gone => {
                tracing::warn!(
                    lock = %lock_file.display(),
                    "the project's .kip directory is gone (its lock file was deleted): stopping every process"
                );
                discard = true;
                break;
            }
            received = next_signal(&mut signals) => match received {
                Received::Stop(name) => {
                    tracing::info!("{name} received: stopping every process");
                    break;
                }
                Received::Ignore(name) => tracing::info!("{name} received and ignored"),
            },
        }
    }
    daemon.supervisor.shutdown(discard).await;
    daemon.files.remove();
    tracing::info!("supervisor stopped");
    Ok(())
}

/// Takes the project's daemon lock, and writes this daemon's pid into the lock file (for messages). Refuses when
/// the lock stays taken for [`LOCK_PATIENCE`]: as `AlreadyRunning` when a daemon listens on the socket, else as
/// `Locked`.
async fn acquire_lock(kip_dir: &Path, socket: &Path) -> Result<std::fs::File, SupervisorError> {
    let path = lock_path(kip_dir);
    let lock_error = |source| SupervisorError::Lock {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(lock_error)?;
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                if UnixStream::connect(socket).await.is_ok() {
                    return Err(SupervisorError::AlreadyRunning {
                        socket: socket.to_owned(),
                        pid: read_pid(kip_dir),
                    });
                }
                return Err(SupervisorError::Locked {
                    pid: lock_holder(&path),
                    lock: path,
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(lock_error(source)),
        }
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()));
    if let Err(error) = written {
        tracing::warn!(lock = %path.display(), "cannot write the pid into the lock file: {error}");
    }
    Ok(file)
}

/// Returns once the lock file the daemon holds (`lock`, at `path`) has been unlinked and nothing at `path` is that
/// file any more: its project's `.kip/` was deleted. A project moved elsewhere keeps its link, and its daemon.
async fn project_gone(lock: &std::fs::File, path: &Path) {
    let mut checks = tokio::time::interval(GONE_CHECK);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        checks.tick().await;
        if unlinked(lock, path) {
            return;
        }
    }
}

/// Whether the open file `file` has no name left, at `path` or anywhere.
fn unlinked(file: &std::fs::File, path: &Path) -> bool {
    let Ok(held) = file.metadata() else {
        return false;
    };
    if held.nlink() > 0 {
        return false;
    }
    !std::fs::symlink_metadata(path)
        .is_ok_and(|named| (named.dev(), named.ino()) == (held.dev(), held.ino()))
}

/// The pid a daemon wrote into the lock file it holds.
fn lock_holder(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether a daemon holds the lock of `kip_dir` (it may be starting, not yet answering). Takes the lock for an
/// instant when it is free; a daemon starting at that instant waits ([`LOCK_PATIENCE`]).
pub(super) fn lock_is_held(kip_dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(lock_path(kip_dir)) else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
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
    /// The daemon's effective uid: with root, the only peer it serves.
    owner: u32,
    /// The project's daemon lock, held while this lives.
    lock: std::fs::File,
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
            Request::Stop { name, discard } => self
                .supervisor
                .stop(&name, discard)
                .await
                .map(|()| Value::Null),
            Request::Status => {
                self.supervisor.cleaned().await;
                encode(serde_json::to_value(self.supervisor.status()))
            }
            Request::Reload { name } => self.supervisor.reload(&name).await.map(|()| Value::Null),
            Request::Wait {
                name,
                until,
                timeout_ms,
            } => encode(serde_json::to_value(
                self.supervisor.wait(&name, until, timeout_ms).await?,
            )),
            Request::Shutdown => {
                self.supervisor.shutdown(false).await;
                // Before answering, so that a client that got the answer finds no socket to connect to.
                self.files.remove();
                Ok(Value::Null)
            }
        }
    }
}

/// Serves one connection: one request per line, answered in order, until the client closes it. A peer that is
/// neither the daemon's own uid nor root gets one error line and is disconnected.
async fn serve_connection(daemon: Arc<Daemon>, mut stream: UnixStream) {
    let uid = stream.peer_cred().ok().map(|cred| cred.uid());
    if !uid.is_some_and(|uid| uid == daemon.owner || uid == 0) {
        tracing::warn!("refused a connection from uid {uid:?}");
        let error = RequestError::Forbidden {
            uid,
            owner: daemon.owner,
        };
        let _ = stream
            .write_all(&protocol::encode_response(Err(error)))
            .await;
        let _ = stream.shutdown().await;
        return;
    }
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
struct Supervisor {
    table: Mutex<Table>,
    /// One lock per name, held for the whole of a start: a second start of the same name waits for the first.
    start_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The persisted table.
    store: Arc<Store>,
    /// Stops of what a killed supervisor left behind (see [`Supervisor::adopt`]); shutdown waits for them.
    cleanups: Mutex<Vec<JoinHandle<()>>>,
    /// How many of those stops are still running: a status waits for them, so that nobody is told nothing runs (and
    /// goes on to use a data directory) while a leftover is still being stopped.
    cleaning: tokio::sync::watch::Sender<usize>,
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

/// What a new daemon does with one record of the persisted table.
enum Verdict {
    /// Its process runs: supervise it.
    Adopt(Adoption),
    /// Stop what runs of its process group, then forget it: its leader is gone (or runs under a name adopted
    /// already, or in a state that cannot be resumed).
    Stop { group: u32, start_time: u64 },
    /// Forget it: nothing of it runs, or its pid belongs to another process now.
    Drop,
}

impl Supervisor {
    /// The supervisor of a new daemon: reads the persisted table at `path` and adopts the processes of the daemon
    /// that wrote it (see the module header). Needs a runtime (it spawns the adopted processes' tasks).
    fn adopt(path: PathBuf) -> Result<Supervisor, SupervisorError> {
        let mut records = match table::load(&path) {
            Ok(records) => records,
            Err(LoadError::Io(source)) => return Err(SupervisorError::Table { path, source }),
            Err(LoadError::Malformed(reason)) => {
                tracing::warn!(table = %path.display(), "the process table cannot be read ({reason}): set aside");
                table::set_aside(&path);
                Vec::new()
            }
        };
        // Newest first: if a name appears twice (it should not), the newest is the one adopted.
        records.sort_by_key(|record| std::cmp::Reverse(record.sequence));
        let mut names = HashSet::new();
        let mut verdicts: Vec<(Record, Verdict)> = Vec::new();
        let recorded_pids: Vec<u32> = records.iter().filter_map(|record| record.pid).collect();
        for record in records {
            let verdict = match (record.identify(), record.pid, record.start_time) {
                (Some(Identity::Alive), Some(group), Some(start_time)) => {
                    match Adoption::from_record(&record) {
                        Some(adoption) if names.insert(record.name.clone()) => {
                            Verdict::Adopt(adoption)
                        }
                        _ => Verdict::Stop { group, start_time },
                    }
                }
                (Some(Identity::Gone), Some(group), Some(start_time)) => {
                    Verdict::Stop { group, start_time }
                }
                // Spawned, and the daemon killed before it recorded the pid: whatever carries the run's id is it.
                (None, None, _) if record.run.is_some() => {
                    let run = record.run.as_deref().unwrap_or_default();
                    let leader = procfs::orphaned_leaders(
                        table::RUN_ENV,
                        run,
                        &record.spec.program,
                        &record.spec.cwd,
                        &recorded_pids,
                    )
                    .into_iter()
                    .next();
                    match leader {
                        Some((pid, stat)) => Verdict::Stop {
                            group: pid,
                            start_time: stat.start_time,
                        },
                        None => Verdict::Drop,
                    }
                }
                _ => Verdict::Drop,
            };
            match &verdict {
                Verdict::Adopt(adoption) => {
                    tracing::info!(name = %record.name, pid = adoption.pid, "adopting ({:?})", adoption.state)
                }
                Verdict::Stop { group, .. } => {
                    tracing::info!(name = %record.name, pid = group, "not adopted: stopping what is left of it")
                }
                Verdict::Drop => tracing::info!(
                    name = %record.name,
                    pid = record.pid,
                    "not adopted: it is gone (or its pid belongs to another process now)"
                ),
            }
            verdicts.push((record, verdict));
        }
        // A record that is not adopted ran a process that is gone (or is stopped below): the files it left outside
        // its directories (`leaves`) go with it, unless a process of the same name is adopted and uses them.
        let adopted: Arc<HashSet<String>> = Arc::new(
            verdicts
                .iter()
                .filter(|(_, verdict)| matches!(verdict, Verdict::Adopt(_)))
                .map(|(record, _)| record.name.clone())
                .collect(),
        );
        // The records to keep are written before anything else happens: a daemon killed during the adoption
        // leaves them to the next one.
        let store = Arc::new(Store::new(
            path,
            verdicts
                .iter()
                .filter(|(_, verdict)| !matches!(verdict, Verdict::Drop))
                .map(|(record, _)| record.clone()),
        ));
        let supervisor = Supervisor {
            table: Mutex::new(Table::default()),
            start_locks: Mutex::default(),
            store: Arc::clone(&store),
            cleanups: Mutex::default(),
            cleaning: tokio::sync::watch::Sender::new(0),
        };
        let mut table = supervisor.table();
        for (record, verdict) in verdicts.into_iter().rev() {
            table.next_sequence = table.next_sequence.max(record.sequence + 1);
            let checked = process::check_persisted(&record.spec);
            let persistence = Persistence {
                store: Arc::clone(&store),
                sequence: record.sequence,
            };
            match verdict {
                Verdict::Adopt(adoption) => {
                    let (handle, _ready) =
                        process::launch(record.spec, checked, Origin::Adopt(adoption), persistence);
                    table.entries.insert(
                        record.name,
                        Entry {
                            sequence: record.sequence,
                            handle: Arc::new(handle),
                        },
                    );
                }
                Verdict::Stop { group, start_time } => {
                    // A start of this name waits until the leftovers are gone: the lock is taken here, before
                    // anything is served (only a second record of the same name could hold it already, and that
                    // one is a cleanup too).
                    let guard = supervisor.start_lock(&record.name).try_lock_owned().ok();
                    let cleaning = supervisor.cleaning.clone();
                    cleaning.send_modify(|count| *count += 1);
                    let adopted = Arc::clone(&adopted);
                    let cleanup = tokio::spawn(async move {
                        let _serialised = guard;
                        let gone = process::stop_leftovers(
                            &record.spec,
                            &checked,
                            group,
                            start_time,
                            record.run.as_deref(),
                        )
                        .await;
                        if gone && !adopted.contains(&record.name) {
                            process::remove_leaves(&record.spec);
                        }
                        persistence.store.remove(persistence.sequence);
                        cleaning.send_modify(|count| *count -= 1);
                    });
                    supervisor
                        .cleanups
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(cleanup);
                }
                Verdict::Drop => {
                    if !adopted.contains(&record.name) {
                        process::remove_leaves(&record.spec);
                    }
                }
            }
        }
        drop(table);
        Ok(supervisor)
    }

    /// Waits (up to a minute) until the leftovers of a killed supervisor are stopped.
    async fn cleaned(&self) {
        let mut cleaning = self.cleaning.subscribe();
        let _ = tokio::time::timeout(
            Duration::from_secs(60),
            cleaning.wait_for(|count| *count == 0),
        )
        .await;
    }

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

    fn handle(&self, name: &str) -> Result<Arc<Handle>, RequestError> {
        self.table()
            .entries
            .get(name)
            .map(|entry| Arc::clone(&entry.handle))
            .ok_or_else(|| RequestError::UnknownProcess {
                name: name.to_owned(),
            })
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
        let replaces = existing.is_some();
        if let Some((sequence, handle)) = existing {
            let mut status = handle.status.borrow().clone();
            if handle.spec == spec && status.state == ProcessState::Starting {
                // The same process on its way up (adopted while its probe ran, or restarting): its outcome is
                // this start's.
                let mut watch = handle.status.clone();
                let settled = tokio::time::timeout(
                    spec.probe.timeout + SETTLE_MARGIN,
                    watch.wait_for(|status| status.state != ProcessState::Starting),
                )
                .await;
                if let Ok(Ok(settled)) = settled {
                    status = settled.clone();
                }
            }
            // A leader that exited a moment ago may be reaped before its run has told its status: a ready
            // status whose process is gone is not ready.
            if handle.spec == spec && status.state == ProcessState::Ready && still_runs(&status) {
                return Ok(status);
            }
            tracing::info!(name = %name, "restarting: its spec changed, or it is not ready");
            self.remove_if(&name, sequence);
            handle.stop(false).await?;
        }
        self.wait_for_dependencies(&spec).await?;
        let ready = {
            let mut table = self.table();
            if table.shutting_down {
                return Err(RequestError::ShuttingDown);
            }
            let sequence = table.next_sequence;
            table.next_sequence += 1;
            let persistence = Persistence {
                store: Arc::clone(&self.store),
                sequence,
            };
            let (handle, ready) =
                process::launch(spec, checked, Origin::Spawn { replaces }, persistence);
            let entry = Entry {
                sequence,
                handle: Arc::new(handle),
            };
            if let Some(replaced) = table.entries.insert(name.clone(), entry) {
                // Cannot happen while starts of a name are serialised; if it ever did, the replaced process
                // must not run on unsupervised.
                tokio::spawn(async move { replaced.handle.stop(false).await });
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

    async fn stop(&self, name: &str, discard: bool) -> Result<(), RequestError> {
        let entry = self.table().entries.remove(name);
        match entry {
            Some(entry) => entry.handle.stop(discard).await,
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

    async fn reload(&self, name: &str) -> Result<(), RequestError> {
        self.handle(name)?.reload().await
    }

    /// Answers the status of `name` once it is ready (or has exited), for at most `timeout_ms`.
    async fn wait(
        &self,
        name: &str,
        until: WaitUntil,
        timeout_ms: u64,
    ) -> Result<ProcessStatus, RequestError> {
        let mut status = self.handle(name)?.status.clone();
        let reached = |status: &ProcessStatus| match until {
            WaitUntil::Ready => status.state == ProcessState::Ready,
            WaitUntil::Exited => !status.state.is_live(),
        };
        // A process that exited for good will not become ready.
        let hopeless =
            |status: &ProcessStatus| until == WaitUntil::Ready && !status.state.is_live();
        let unreachable = |state: String| RequestError::WaitUnreachable {
            name: name.to_owned(),
            until,
            state,
        };
        let outcome = tokio::time::timeout(
            Duration::from_millis(timeout_ms),
            status.wait_for(|status| reached(status) || hopeless(status)),
        )
        .await
        .map(|settled| settled.map(|status| status.clone()));
        match outcome {
            Ok(Ok(status)) if reached(&status) => Ok(status),
            Ok(Ok(status)) => Err(unreachable(status.state.describe())),
            Ok(Err(_)) => Err(unreachable("was stopped".to_owned())),
            Err(_) => Err(RequestError::WaitTimeout {
                name: name.to_owned(),
                until,
                waited_ms: timeout_ms,
                state: status.borrow().state.describe(),
            }),
        }
    }

    /// Stops every process, the most recently started first (with its discard sequence when `discard`), and waits
    /// for the stops of leftovers; no start is accepted from here on.
    async fn shutdown(&self, discard: bool) {
        let mut entries: Vec<(String, Entry)> = {
            let mut table = self.table();
            table.shutting_down = true;
            std::mem::take(&mut table.entries).into_iter().collect()
        };
        entries.sort_by_key(|(_, entry)| std::cmp::Reverse(entry.sequence));
        for (name, entry) in entries {
            if let Err(error) = entry.handle.stop(discard).await {
                tracing::warn!(name = %name, "{error}");
            }
        }
        let cleanups = std::mem::take(
            &mut *self
                .cleanups
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for cleanup in cleanups {
            let _ = cleanup.await;
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

/// Whether the process a status names still runs (its pid exists with the same start time and is not a zombie).
fn still_runs(status: &ProcessStatus) -> bool {
    match (status.pid, status.start_time) {
        (Some(pid), Some(start_time)) => procfs::identify(pid, start_time) == Identity::Alive,
        (Some(pid), None) => procfs::stat(pid).is_some_and(|stat| !stat.is_dead()),
        (None, _) => false,
    }
}
