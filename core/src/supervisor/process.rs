//! One supervised process: spawning it (or adopting it from a supervisor that was killed), gating on its readiness
//! probe, restarting it when it crashes, reloading it, and stopping it. Each process is owned by one task, which
//! alone holds its [`Child`]; the rest of the daemon talks to that task through a [`Handle`] (a command channel and
//! a status watch), so that nothing else ever races it for the process's exit status.
//!
//! Process groups: every process is spawned as the leader of its own process group (`process_group(0)`), and
//! every stop and reload signal goes to the whole group. Engines that fork workers (PostgreSQL's backends, a shell
//! script's children) are stopped with them, a terminal's Ctrl-C that reaches the `kip` command never reaches them,
//! and a stop is done only when the group is empty, not merely when the leader exited. Workers that leave the group
//! (PostgreSQL's backends call `setsid`) are not signalled; a spawn waits for those a previous run left behind
//! (same program, directory and account, orphaned) before it starts a new leader beside them.
//!
//! Zombies: the owning task always waits for its child (in the stop sequence, or when it exits by itself), so the
//! leader is reaped as soon as it exits; a child that is dropped unreaped (a stop that gave up after SIGKILL)
//! goes to tokio's orphan queue, which reaps it later. Members of the group other than the leader are not the
//! daemon's children: when the leader dies they are reparented to init, which reaps them.
//!
//! Adopted processes: a process started by a supervisor that was killed is not this daemon's child. Its task knows
//! it by pid and start time (from the persisted table), polls `/proc` every [`ADOPTED_POLL`] to notice its exit
//! (whose status it cannot learn: an adopted process's exit counts as a failure), and stops it like any other, with
//! its spec's stop sequence to the whole group. One that was still starting runs its readiness probe again, with a
//! full budget, from the log offset its spawn recorded. Once restarted, it is an ordinary child again.
//!
//! Restarts: a process that exits after it was ready is restarted per its policy, after a backoff that starts at
//! 200 ms and doubles up to 10 s. `max_restarts` (default [`DEFAULT_MAX_RESTARTS`]) bounds the restarts in a row:
//! once spent, the process is `failed`, with a reason that says how many restarts were made and how the last run
//! ended. A run that stays up for 30 s resets that count and the backoff, so a process that crashes once a day is
//! not given up on after a week. A restarted process must pass its readiness probe again; a restart that does not
//! become ready counts as a crash.
//!
//! Persistence: every change of a process's status is written to the daemon's table (see [`super::table`]) before
//! anything else happens, the run id of a new run right before its spawn and its pid and start time right after,
//! before the probe; the one exception is a run becoming ready, recorded right after the start is answered (a daemon
//! killed in between leaves it `starting`, and the next one probes it again). The record is removed once the process
//! is gone after a stop, just before the stop is answered.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regex_lite::Regex;
use rustix::io::Errno;
use rustix::process::{Pid, Signal};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::error::RequestError;
use super::probe::{self, Prober};
use super::procfs::{self, Identity};
use super::table::{NAME_ENV, RUN_ENV, Record, Store};
use super::{ProcessState, ProcessStatus, logfile};
use crate::engine::{ProbeKind, RestartPolicy, RunAs, SpawnSpec};

/// The first restart waits this long; each further one twice as long as the one before.
pub(super) const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// The shortest wait before a restart, whatever the spec's restart delay.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// The longest wait before a restart.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How many restarts in a row a process gets when its spec sets no `max_restarts`: with the backoff, a process
/// that crashes at once is given up on after about 6 s (0.2 + 0.4 + 0.8 + 1.6 + 3.2), rather than restarted
/// forever while it fills its log.
pub const DEFAULT_MAX_RESTARTS: u32 = 5;
/// A run that stayed ready this long resets the backoff and the count of restarts in a row.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// After SIGKILL, how long to wait for the group to disappear before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a stop checks whether the group is gone, once its leader has been reaped.
const GROUP_POLL: Duration = Duration::from_millis(10);
/// How often the task of an adopted process (not the daemon's child: no exit notification) checks that it runs.
pub(super) const ADOPTED_POLL: Duration = Duration::from_millis(50);

/// The reply to a command.
type Reply = oneshot::Sender<Result<(), RequestError>>;

/// What the daemon may tell a process's task.
pub(super) enum Command {
    /// Stop the process (if it runs) and end the task; the reply comes once the process is gone. `discard`: its
    /// data is deleted right after, so the spec's discard sequence is used when it has one.
    Stop { reply: Reply, discard: bool },
    /// Send the reload signal to the process group of the running process.
    Reload { reply: Reply },
}

/// The rest of the daemon's view of a supervised process.
pub(super) struct Handle {
    pub spec: SpawnSpec,
    pub status: watch::Receiver<ProcessStatus>,
    commands: mpsc::Sender<Command>,
}

impl Handle {
    /// Stops the process and ends its task; returns once the process (and its group) is gone.
    pub(super) async fn stop(&self, discard: bool) -> Result<(), RequestError> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Stop { reply, discard })
            .await
            .is_err()
        {
            // The task has ended already, and with it the process.
            return Ok(());
        }
        answer.await.unwrap_or(Ok(()))
    }

    /// Sends the reload signal to the running process's group.
    pub(super) async fn reload(&self) -> Result<(), RequestError> {
        let stopped = || RequestError::NotRunning {
            name: self.spec.name.clone(),
            state: "was stopped".to_owned(),
        };
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Reload { reply }).await.is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// A signal, parsed, with the name the spec gave it.
struct NamedSignal {
    signal: Signal,
    name: String,
}

/// A stop signal and how long to wait after it.
struct StopStep {
    signal: NamedSignal,
    wait: Duration,
}

/// A stop command and how long the group gets to be gone once it was started.
#[derive(Clone)]
struct StopCommandStep {
    command: Vec<String>,
    wait: Duration,
}

/// What checking a spec produced, for its task to use.
pub(super) struct Checked {
    log_pattern: Option<Regex>,
    stop_command: Option<StopCommandStep>,
    stop: Vec<StopStep>,
    /// The spec's discard step, for a stop whose data goes right after.
    discard: Option<StopStep>,
    reload: Option<NamedSignal>,
}

const SIGNAL_NAMES: &str = "SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGKILL";

/// Checks what the daemon cannot run, before anything is spawned: a pattern that is not a regex, an unknown
/// signal, an empty command.
pub(super) fn check(spec: &SpawnSpec) -> Result<Checked, RequestError> {
    let invalid = |reason: String| RequestError::InvalidSpec {
        name: spec.name.clone(),
        reason,
    };
    if spec.name.is_empty() {
        return Err(invalid("the name is empty".to_owned()));
    }
    if spec.program.as_os_str().is_empty() {
        return Err(invalid("the program is empty".to_owned()));
    }
    if spec.log.as_os_str().is_empty() {
        return Err(invalid("the log path is empty".to_owned()));
    }
    if let Some(path) = spec.leaves.iter().find(|path| !path.is_absolute()) {
        return Err(invalid(format!(
            "a file it leaves, `{}`, is not an absolute path",
            path.display()
        )));
    }
    let log_pattern = match &spec.probe.kind {
        ProbeKind::LogLine { pattern } => Some(Regex::new(pattern).map_err(|error| {
            invalid(format!(
                "the log_line pattern /{pattern}/ is not a valid regex: {error}"
            ))
        })?),
        ProbeKind::Exec { command } if command.is_empty() => {
            return Err(invalid("the exec probe has an empty command".to_owned()));
        }
        _ => None,
    };
    let stop = spec
        .stop
        .signals
        .iter()
        .map(|(name, wait)| match named_signal(name) {
            Some(signal) => Ok(StopStep {
                signal,
                wait: Duration::from_millis(*wait),
            }),
            None => Err(invalid(format!(
                "the stop signal `{name}` is not one of {SIGNAL_NAMES}"
            ))),
        })
        .collect::<Result<_, _>>()?;
    let discard = match &spec.stop.discard {
        Some((name, wait)) => Some(StopStep {
            signal: named_signal(name).ok_or_else(|| {
                invalid(format!(
                    "the discard signal `{name}` is not one of {SIGNAL_NAMES}"
                ))
            })?,
            wait: Duration::from_millis(*wait),
        }),
        None => None,
    };
    let reload = match &spec.reload {
        Some(name) => Some(named_signal(name).ok_or_else(|| {
            invalid(format!(
                "the reload signal `{name}` is not one of {SIGNAL_NAMES}"
            ))
        })?),
        None => None,
    };
    let stop_command = match &spec.stop.command {
        Some(command) if command.command.is_empty() => {
            return Err(invalid("the stop command is empty".to_owned()));
        }
        Some(command) => Some(StopCommandStep {
            command: command.command.clone(),
            wait: Duration::from_millis(command.wait_ms),
        }),
        None => None,
    };
    Ok(Checked {
        log_pattern,
        stop_command,
        stop,
        discard,
        reload,
    })
}

/// [`check`] for a spec read back from the persisted table, whose process runs already and must be supervised
/// whatever this kip thinks of its spec (a later kip may have written it): what does not check out is left out (a
/// pattern, a reload signal), and stop signals this kip does not know give way to SIGTERM.
pub(super) fn check_persisted(spec: &SpawnSpec) -> Checked {
    check(spec).unwrap_or_else(|error| {
        tracing::warn!(name = %spec.name, "adopting a process whose spec does not check out: {error}");
        let stop: Vec<StopStep> = spec
            .stop
            .signals
            .iter()
            .filter_map(|(name, wait)| {
                Some(StopStep {
                    signal: named_signal(name)?,
                    wait: Duration::from_millis(*wait),
                })
            })
            .collect();
        Checked {
            log_pattern: match &spec.probe.kind {
                ProbeKind::LogLine { pattern } => Regex::new(pattern).ok(),
                _ => None,
            },
            stop_command: spec
                .stop
                .command
                .as_ref()
                .filter(|command| !command.command.is_empty())
                .map(|command| StopCommandStep {
                    command: command.command.clone(),
                    wait: Duration::from_millis(command.wait_ms),
                }),
            stop: if stop.is_empty() {
                vec![StopStep {
                    signal: NamedSignal {
                        signal: Signal::TERM,
                        name: "SIGTERM".to_owned(),
                    },
                    wait: Duration::from_secs(10),
                }]
            } else {
                stop
            },
            discard: spec.stop.discard.as_ref().and_then(|(name, wait)| {
                Some(StopStep {
                    signal: named_signal(name)?,
                    wait: Duration::from_millis(*wait),
                })
            }),
            reload: spec.reload.as_deref().and_then(named_signal),
        }
    })
}

fn named_signal(name: &str) -> Option<NamedSignal> {
    Some(NamedSignal {
        signal: parse_signal(name)?,
        name: name.to_owned(),
    })
}

fn parse_signal(name: &str) -> Option<Signal> {
    let name = name.trim();
    let name = name.strip_prefix("SIG").unwrap_or(name);
    Some(match name {
        "INT" => Signal::INT,
        "TERM" => Signal::TERM,
        "QUIT" => Signal::QUIT,
        "HUP" => Signal::HUP,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "KILL" => Signal::KILL,
        _ => return None,
    })
}

/// The name of a signal number, for messages.
fn signal_name(number: i32) -> Option<&'static str> {
    Some(match number {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// "exited with code 1", "was killed by signal 9 (SIGKILL)".
pub(super) fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => match signal_name(signal) {
            Some(name) => format!("was killed by signal {signal} ({name})"),
            None => format!("was killed by signal {signal}"),
        },
        (None, None) => format!("ended ({status})"),
    }
}

/// Milliseconds since the unix epoch.
fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// How a supervised process's first run begins.
pub(super) enum Origin {
    /// Spawn it; `replaces` when it replaces an earlier run of the same name (which may have left workers behind).
    Spawn { replaces: bool },
    /// It runs already: a supervisor that was killed started it.
    Adopt(Adoption),
}

/// What the persisted table says about a process to adopt (checked alive with the same start time).
pub(super) struct Adoption {
    pub pid: u32,
    pub start_time: u64,
    /// `Ready`, or `Starting` when the earlier supervisor was killed before its probe passed.
    pub state: ProcessState,
    pub restarts: u32,
    pub started_at: Option<u64>,
    pub log_offset: u64,
    pub run: Option<String>,
}

impl Adoption {
    /// The adoption a record describes, when it names a run (pid and start time) that was starting or ready.
    pub(super) fn from_record(record: &Record) -> Option<Adoption> {
        matches!(record.state, ProcessState::Starting | ProcessState::Ready).then_some(())?;
        Some(Adoption {
            pid: record.pid?,
            start_time: record.start_time?,
            state: record.state.clone(),
            restarts: record.restarts,
            started_at: record.started_at,
            log_offset: record.log_offset,
            run: record.run.clone(),
        })
    }
}

/// Where a process's task persists its record: the daemon's table, under the sequence it was started as.
pub(super) struct Persistence {
    pub store: Arc<Store>,
    pub sequence: u64,
}

/// Starts supervising `spec`: spawns (or adopts) it in a new task and returns its handle, and a receiver that gets
/// the status once the first run is ready (or the error that says why it is not).
pub(super) fn launch(
    spec: SpawnSpec,
    checked: Checked,
    origin: Origin,
    persistence: Persistence,
) -> (
    Handle,
    oneshot::Receiver<Result<ProcessStatus, RequestError>>,
) {
    let mut status = ProcessStatus {
        name: spec.name.clone(),
        pid: None,
        state: ProcessState::Starting,
        started_at: None,
        restarts: 0,
        log: spec.log.clone(),
        probe: spec.probe.kind.clone(),
        instance: spec.instance.clone(),
        start_time: None,
        adopted: false,
    };
    let mut log_offset = 0;
    let mut run = None;
    let mut had_a_run = false;
    let adoption = match origin {
        Origin::Spawn { replaces } => {
            had_a_run = replaces;
            None
        }
        Origin::Adopt(adoption) => {
            status.pid = Some(adoption.pid);
            status.start_time = Some(adoption.start_time);
            status.state = adoption.state.clone();
            status.restarts = adoption.restarts;
            status.started_at = adoption.started_at;
            status.adopted = true;
            log_offset = adoption.log_offset;
            run = adoption.run.clone();
            Some(adoption)
        }
    };
    let (status_sender, status) = watch::channel(status);
    let (commands_sender, commands) = mpsc::channel(4);
    let (ready_sender, ready) = oneshot::channel();
    let runner = Runner {
        spec: Arc::new(spec.clone()),
        checked,
        status: status_sender,
        commands,
        persistence,
        log_offset,
        run,
        had_a_run,
        adoption,
        discarding: false,
    };
    tokio::spawn(runner.run(ready_sender));
    (
        Handle {
            spec,
            status,
            commands: commands_sender,
        },
        ready,
    )
}

/// The task that owns a process.
struct Runner {
    spec: Arc<SpawnSpec>,
    checked: Checked,
    status: watch::Sender<ProcessStatus>,
    commands: mpsc::Receiver<Command>,
    persistence: Persistence,
    /// The length of the log when the current run was spawned.
    log_offset: u64,
    /// The current run's id (see [`RUN_ENV`]).
    run: Option<String>,
    /// Whether a run of this name came before the next spawn (this task's, or the one it replaced): only then can
    /// workers of a killed run be left, and only then is `/proc` searched for them.
    had_a_run: bool,
    /// The process to adopt, until the first run takes it.
    adoption: Option<Adoption>,
    /// The stop that came asked for the discard sequence (the data goes right after).
    discarding: bool,
}

/// A stop request that ended the task: its reply (none when the daemon went away), and what the stop came to.
struct StopOutcome {
    reply: Option<Reply>,
    result: Result<(), RequestError>,
}

/// How one run of the process ended.
enum RunEnd {
    /// The daemon said stop (or went away); the process is gone; the stop's reply is still to send.
    Stopped(StopOutcome),
    /// It never became ready (could not spawn, failed its probe, exited first); it is stopped.
    NotReady(RequestError),
    /// It exited after it was ready; `stable` when it had been up long enough to reset the backoff. The status is
    /// unknown for an adopted process.
    Exited {
        status: Option<ExitStatus>,
        adopted: bool,
        stable: bool,
    },
}

/// What the first wait of a run saw first.
enum Readiness {
    Probe(Result<(), probe::ProbeFailure>),
    Exited(Option<ExitStatus>),
    Stop(Option<Reply>),
}

/// The leader of a run's process group: the daemon's child, or a process it adopted.
enum Leader {
    Child(Child),
    Adopted { pid: u32, start_time: u64 },
}

impl Leader {
    /// Waits for the leader to exit (reaping a child); its exit status when it is the daemon's child.
    /// Cancel-safe.
    async fn wait(&mut self) -> Option<ExitStatus> {
        match self {
            Leader::Child(child) => child.wait().await.ok(),
            Leader::Adopted { pid, start_time } => loop {
                if procfs::identify(*pid, *start_time) != Identity::Alive {
                    return None;
                }
                tokio::time::sleep(ADOPTED_POLL).await;
            },
        }
    }

    /// Whether the leader has exited (and a child been reaped).
    fn has_exited(&mut self) -> bool {
        match self {
            Leader::Child(child) => !matches!(child.try_wait(), Ok(None)),
            Leader::Adopted { pid, start_time } => {
                procfs::identify(*pid, *start_time) != Identity::Alive
            }
        }
    }
}

impl Runner {
    async fn run(mut self, ready: oneshot::Sender<Result<ProcessStatus, RequestError>>) {
        // An adopted process is recorded at once; a new one is recorded (with its run id) right before its spawn.
        if self.adoption.is_some() {
            self.save();
        }
        let stop = self.supervise(ready).await;
        if stop.result.is_ok() {
            remove_leaves(&self.spec);
        }
        // The process is gone: forget it before the stop is answered, so that whoever got the answer finds a
        // table without it.
        self.persistence.store.remove(self.persistence.sequence);
        if let Some(reply) = stop.reply {
            let _ = reply.send(stop.result);
        }
    }

    /// Runs, restarts and waits until told to stop; returns the stop request.
    async fn supervise(
        &mut self,
        ready: oneshot::Sender<Result<ProcessStatus, RequestError>>,
    ) -> StopOutcome {
        let mut first = Some(ready);
        let mut in_a_row = 0u32;
        // A restart delay of zero still waits a little, and doubles from there: a process that crashes at once
        // with no restart limit must not spin.
        let initial_backoff = self
            .spec
            .restart_delay_ms
            .map_or(INITIAL_BACKOFF, Duration::from_millis)
            .max(MIN_BACKOFF);
        let max_backoff = MAX_BACKOFF.max(initial_backoff);
        let mut backoff = initial_backoff;
        loop {
            // How the run ended: its exit status when it ran and its status is known, and why, in words.
            let (exit, reason) = match self.run_once(&mut first).await {
                RunEnd::Stopped(stop) => {
                    if let Some(first) = first.take() {
                        let _ = first.send(Err(RequestError::StoppedBeforeReady {
                            name: self.spec.name.clone(),
                        }));
                    }
                    return stop;
                }
                RunEnd::NotReady(error) => {
                    let reason = error
                        .to_string()
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    if let Some(first) = first.take() {
                        // The first start is the caller's to retry, not the restart policy's.
                        self.set_stopped(ProcessState::Failed { reason });
                        let _ = first.send(Err(error));
                        break;
                    }
                    (None, reason)
                }
                RunEnd::Exited {
                    status,
                    adopted,
                    stable,
                } => {
                    if stable {
                        in_a_row = 0;
                        backoff = initial_backoff;
                    }
                    let reason = match status {
                        Some(status) => describe_exit(status),
                        None if adopted => {
                            "exited (it was adopted from a supervisor that was killed, so its \
                                            exit status is unknown)"
                                .to_owned()
                        }
                        None => "exited (its exit status is unknown)".to_owned(),
                    };
                    (status, reason)
                }
            };
            let failed = exit.is_none_or(|status| !status.success());
            let restart = match self.spec.restart {
                RestartPolicy::No => false,
                RestartPolicy::OnFailure => failed,
                RestartPolicy::Always => true,
            };
            if !restart {
                tracing::info!(name = %self.spec.name, "{reason}; not restarting (restart policy)");
                self.note_in_log(&reason);
                let state = match exit {
                    Some(status) => ProcessState::Exited {
                        code: status.code(),
                        signal: status.signal(),
                    },
                    None => ProcessState::Failed { reason },
                };
                self.set_stopped(state);
                break;
            }
            let max = self.spec.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS);
            if in_a_row >= max {
                let reason = format!(
                    "{reason}; gave up after {in_a_row} restarts in a row (max_restarts = {max})"
                );
                tracing::warn!(name = %self.spec.name, "{reason}");
                self.note_in_log(&reason);
                self.set_stopped(ProcessState::Failed { reason });
                break;
            }
            let message = format!("{reason}; restarting in {} ms", backoff.as_millis());
            tracing::warn!(name = %self.spec.name, "{message}");
            self.note_in_log(&message);
            self.set_stopped(ProcessState::Restarting);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                reply = self.next_stop(None) => return StopOutcome { reply, result: Ok(()) },
            }
            in_a_row += 1;
            backoff = (backoff * 2).min(max_backoff);
            self.update(|status| status.restarts += 1);
        }
        // Not running, and not to be restarted: stay in the table (for `kip ps`) until told to stop.
        StopOutcome {
            reply: self.next_stop(None).await,
            result: Ok(()),
        }
    }

    /// One run: spawn (or adopt), wait for readiness, then wait for an exit or a stop.
    async fn run_once(
        &mut self,
        first: &mut Option<oneshot::Sender<Result<ProcessStatus, RequestError>>>,
    ) -> RunEnd {
        let spec = Arc::clone(&self.spec);
        let started = Instant::now();
        let (mut leader, pid, probe_first) = match self.adoption.take() {
            Some(adoption) => {
                tracing::info!(name = %spec.name, pid = adoption.pid, "adopted ({:?})", adoption.state);
                let probe_first = adoption.state != ProcessState::Ready;
                let leader = Leader::Adopted {
                    pid: adoption.pid,
                    start_time: adoption.start_time,
                };
                (leader, adoption.pid, probe_first)
            }
            None => {
                if let Some(target) = probe::target_in_use(&spec.probe.kind).await {
                    return RunEnd::NotReady(RequestError::AddressInUse {
                        name: spec.name.clone(),
                        target,
                    });
                }
                if self.had_a_run || self.run.is_some() {
                    wait_for_leftovers(&spec).await;
                }
                remove_leaves(&spec);
                self.had_a_run = true;
                let run = format!(
                    "{}-{}-{}",
                    std::process::id(),
                    self.persistence.sequence,
                    unix_millis()
                );
                // The run id is persisted before the spawn: a daemon killed between the spawn and the record of
                // its pid leaves the next one a way to find the process (its environment carries the id).
                self.run = Some(run.clone());
                self.update(|status| {
                    status.pid = None;
                    status.start_time = None;
                    status.state = ProcessState::Starting;
                });
                let (child, offset) = match spawn(&spec, &run) {
                    Ok(spawned) => spawned,
                    Err(error) => return RunEnd::NotReady(error),
                };
                let pid = child.id().unwrap_or_default();
                let start_time = procfs::stat(pid).map(|stat| stat.start_time);
                tracing::info!(name = %spec.name, pid, "started {}", spec.program.display());
                self.log_offset = offset;
                // Persisted before the probe: a daemon killed while it waits still leaves the pid behind.
                self.update(|status| {
                    status.pid = Some(pid);
                    status.start_time = start_time;
                    status.state = ProcessState::Starting;
                    status.started_at = Some(unix_millis());
                    status.adopted = false;
                });
                // Without a probe, a process is ready once it is spawned (a one-shot job that exits at once
                // included: its exit is then seen as an exit after readiness).
                (
                    Leader::Child(child),
                    pid,
                    spec.probe.kind != ProbeKind::None || !spec.probe.initial_delay.is_zero(),
                )
            }
        };
        let adopted = matches!(leader, Leader::Adopted { .. });
        let tail_offset = self.log_offset;
        if probe_first {
            let prober = match Prober::new(
                &spec,
                self.checked.log_pattern.clone(),
                self.log_offset,
                started,
                pid,
            ) {
                Ok(prober) => prober,
                Err(reason) => {
                    let _ = self.stop_process(&mut leader, pid).await;
                    return RunEnd::NotReady(RequestError::InvalidSpec {
                        name: spec.name.clone(),
                        reason,
                    });
                }
            };
            let readiness = tokio::select! {
                result = prober.wait_ready() => Readiness::Probe(result),
                exit = leader.wait() => Readiness::Exited(exit),
                reply = self.next_stop(Some(pid)) => Readiness::Stop(reply),
            };
            match readiness {
                Readiness::Probe(Ok(())) => {}
                Readiness::Probe(Err(failure)) => {
                    let _ = self.stop_process(&mut leader, pid).await;
                    return RunEnd::NotReady(RequestError::NotReady {
                        name: spec.name.clone(),
                        probe: probe::describe(&spec.probe.kind),
                        reason: failure.reason,
                        waited_ms: failure.waited.as_millis() as u64,
                        log: spec.log.clone(),
                        tail: logfile::tail(&spec.log, tail_offset),
                    });
                }
                // A job that finished its work before its probe said so has succeeded, not failed to start.
                Readiness::Exited(status)
                    if spec.job && status.is_some_and(|status| status.success()) =>
                {
                    let _ = self.stop_process(&mut leader, pid).await;
                    self.update(|status| status.state = ProcessState::Ready);
                    if let Some(first) = first.take() {
                        let _ = first.send(Ok(self.status.borrow().clone()));
                    }
                    return RunEnd::Exited {
                        status,
                        adopted,
                        stable: false,
                    };
                }
                Readiness::Exited(status) => {
                    // Whatever it left behind in its group goes with it.
                    let _ = self.stop_process(&mut leader, pid).await;
                    return RunEnd::NotReady(RequestError::ExitedBeforeReady {
                        name: spec.name.clone(),
                        exit: status
                            .map_or_else(|| "its exit status is unknown".to_owned(), describe_exit),
                        log: spec.log.clone(),
                        tail: logfile::tail(&spec.log, tail_offset),
                    });
                }
                Readiness::Stop(reply) => {
                    let result = self.stop_process(&mut leader, pid).await;
                    return RunEnd::Stopped(StopOutcome { reply, result });
                }
            }
            tracing::info!(name = %spec.name, pid, "ready after {} ms", started.elapsed().as_millis());
        }
        // The record follows the send, on this thread, before the request's task writes the answer (the runtime
        // has one thread: yielding here let the answer out first, which moved no benchmark, and a daemon killed
        // right after its caller heard `ready` then left a `starting` record that the next daemon probed again).
        // A daemon killed before the record leaves it `starting` with its pid, which the next daemon adopts and
        // probes again.
        self.status
            .send_modify(|status| status.state = ProcessState::Ready);
        if let Some(first) = first.take() {
            let _ = first.send(Ok(self.status.borrow().clone()));
        }
        self.save();
        let ready_at = Instant::now();
        tokio::select! {
            exit = leader.wait() => {
                let status = exit;
                let _ = self.stop_process(&mut leader, pid).await;
                RunEnd::Exited { status, adopted, stable: ready_at.elapsed() >= STABLE_RUN }
            }
            reply = self.next_stop(Some(pid)) => {
                let result = self.stop_process(&mut leader, pid).await;
                RunEnd::Stopped(StopOutcome { reply, result })
            }
        }
    }

    /// Serves commands until a stop comes (its reply; none when the daemon went away). Reloads are answered on the
    /// way: the signal goes to the group of `running` (the pid of the running process), or the reload is refused.
    /// Cancel-safe: a command is handled completely between two receives.
    async fn next_stop(&mut self, running: Option<u32>) -> Option<Reply> {
        loop {
            match self.commands.recv().await? {
                Command::Stop { reply, discard } => {
                    self.discarding = discard;
                    return Some(reply);
                }
                Command::Reload { reply } => {
                    let _ = reply.send(self.reload(running));
                }
            }
        }
    }

    fn reload(&self, running: Option<u32>) -> Result<(), RequestError> {
        let name = &self.spec.name;
        let Some(signal) = &self.checked.reload else {
            return Err(RequestError::NoReloadSignal { name: name.clone() });
        };
        let Some(group) = running.and_then(|pid| Pid::from_raw(pid as i32)) else {
            return Err(RequestError::NotRunning {
                name: name.clone(),
                state: self.status.borrow().state.describe(),
            });
        };
        tracing::info!(name = %name, pid = group.as_raw_pid(), "sending {} (reload)", signal.name);
        self.note_in_log(&format!("sending {} (reload)", signal.name));
        rustix::process::kill_process_group(group, signal.signal).map_err(|errno| {
            RequestError::Signal {
                name: name.clone(),
                signal: signal.name.clone(),
                pid: group.as_raw_pid() as u32,
                reason: errno.to_string(),
            }
        })
    }

    /// Changes the status and persists it.
    fn update(&self, change: impl FnOnce(&mut ProcessStatus)) {
        self.status.send_modify(change);
        self.save();
    }

    /// Writes this process's record to the daemon's table.
    fn save(&self) {
        let status = self.status.borrow().clone();
        self.persistence.store.put(Record {
            name: status.name,
            sequence: self.persistence.sequence,
            spec: (*self.spec).clone(),
            pid: status.pid,
            start_time: status.start_time,
            log_offset: self.log_offset,
            run: self.run.clone(),
            state: status.state,
            restarts: status.restarts,
            started_at: status.started_at,
        });
    }

    /// Records that no process runs now.
    fn set_stopped(&self, state: ProcessState) {
        self.update(|status| {
            status.pid = None;
            status.start_time = None;
            status.state = state;
        });
    }

    /// A line in the process's log that says what the supervisor did, so that `kip logs` shows crashes and
    /// restarts among the engine's own lines.
    fn note_in_log(&self, message: &str) {
        note_in_log(&self.spec, message);
    }

    async fn stop_process(&self, leader: &mut Leader, pid: u32) -> Result<(), RequestError> {
        stop_group(&self.spec, &self.checked, leader, pid, self.discarding).await
    }
}

/// A line in a process's log that says what the supervisor did.
fn note_in_log(spec: &SpawnSpec, message: &str) {
    if let Ok(mut log) = OpenOptions::new().append(true).open(&spec.log) {
        let _ = writeln!(log, "[kip supervisor] {}: {message}", spec.name);
    }
}

/// Stops the process group `group` of a record the daemon does not adopt: the group of a process whose leader runs
/// (under a name adopted already, or in a state a new daemon cannot resume), or what is left of the group of one
/// whose leader is gone (workers of an engine whose supervisor and leader were both killed). A group whose leader is
/// gone may by now be another one that got the same id, after ours emptied: it is stopped only when every live
/// member carries the run's id in its environment ([`RUN_ENV`]), inherited from the leader. Answers whether nothing
/// of the group is left to use the run's files.
pub(super) async fn stop_leftovers(
    spec: &SpawnSpec,
    checked: &Checked,
    group: u32,
    start_time: u64,
    run: Option<&str>,
) -> bool {
    let members = procfs::group_members(group);
    if members.is_empty() {
        return true;
    }
    let leader_runs = procfs::identify(group, start_time) == Identity::Alive;
    let all_ours = run.is_some_and(|run| {
        members
            .iter()
            .all(|(pid, _)| procfs::environment_has(*pid, RUN_ENV, run))
    });
    if !leader_runs && !all_ours {
        tracing::info!(
            name = %spec.name,
            "process group {group} has live members that may not be its: left alone"
        );
        return false;
    }
    let message = if leader_runs {
        format!("stopping process group {group}, which this supervisor does not adopt")
    } else {
        format!(
            "its leader {group} exited while no supervisor ran; stopping the {} process(es) left in its group",
            members.len()
        )
    };
    tracing::warn!(name = %spec.name, "{message}");
    note_in_log(spec, &message);
    let mut leader = Leader::Adopted {
        pid: group,
        start_time,
    };
    if let Err(error) = stop_group(spec, checked, &mut leader, group, false).await {
        tracing::warn!(name = %spec.name, "{error}");
    }
    !procfs::group_has_live_member(group)
}

/// The stop sequence: the stop command when the spec has one, waiting up to its time for the group to be gone, then
/// each signal to the process group, waiting up to its time, then SIGKILL. A child leader is reaped on the way.
/// `discard` (the data is deleted right after) with a discard step in the spec: that one signal, then SIGKILL.
/// Also cleans up after a leader that exited by itself: what is left of its group gets the same sequence (an empty
/// group returns at once, and is not signalled: once a group is empty, its number may be reused).
async fn stop_group(
    spec: &SpawnSpec,
    checked: &Checked,
    leader: &mut Leader,
    pid: u32,
    discard: bool,
) -> Result<(), RequestError> {
    let name = spec.name.as_str();
    let Some(group) = Pid::from_raw(pid as i32) else {
        return Ok(());
    };
    let discard = checked.discard.as_ref().filter(|_| discard);
    let steps = match discard {
        Some(step) => std::slice::from_ref(step),
        None => checked.stop.as_slice(),
    };
    // The stop command asks the leader to stop: when the leader is gone already (what is left of its group is being
    // cleaned up), there is nobody to ask, and the signals follow at once.
    if let Some(step) = &checked.stop_command
        && discard.is_none()
        && !leader.has_exited()
        && !wait_group_gone(leader, group, Duration::ZERO).await
    {
        if run_stop_command(spec, step, leader, group, pid).await {
            return Ok(());
        }
        tracing::info!(name = %name, pid, "still running {} ms after its stop command", step.wait.as_millis());
    }
    for step in steps {
        if wait_group_gone(leader, group, Duration::ZERO).await {
            return Ok(());
        }
        match rustix::process::kill_process_group(group, step.signal.signal) {
            Ok(()) => {}
            Err(errno) if errno == Errno::SRCH => {}
            Err(errno) => {
                tracing::warn!(name = %name, pid, "cannot send {}: {errno}", step.signal.name)
            }
        }
        if wait_group_gone(leader, group, step.wait).await {
            return Ok(());
        }
        tracing::info!(name = %name, pid, "still running {} ms after {}", step.wait.as_millis(), step.signal.name);
    }
    if wait_group_gone(leader, group, Duration::ZERO).await {
        return Ok(());
    }
    match rustix::process::kill_process_group(group, Signal::KILL) {
        Ok(()) => {}
        Err(errno) if errno == Errno::SRCH => {}
        Err(errno) => {
            return Err(RequestError::Signal {
                name: name.to_owned(),
                signal: "SIGKILL".to_owned(),
                pid,
                reason: errno.to_string(),
            });
        }
    }
    if !wait_group_gone(leader, group, KILL_WAIT).await {
        // A member stuck in the kernel, or a zombie its new parent does not reap: nothing more to do here. An
        // unreaped leader goes to tokio's orphan queue when its `Child` is dropped.
        tracing::warn!(name = %name, pid, "process group still present {} s after SIGKILL", KILL_WAIT.as_secs());
    }
    Ok(())
}

/// Runs the stop command of `spec` for the run `pid` and waits up to the step's time for the group to be gone
/// (whether the command finished or not); answers whether it is. A command still running then is killed: the
/// sequence goes on with signals. What the command printed goes to the process's log.
async fn run_stop_command(
    spec: &SpawnSpec,
    step: &StopCommandStep,
    leader: &mut Leader,
    group: Pid,
    pid: u32,
) -> bool {
    let shown = step.command.join(" ");
    note_in_log(spec, &format!("running the stop command `{shown}`"));
    let log = OpenOptions::new().append(true).open(&spec.log);
    let (stdout, stderr) = match log.and_then(|log| Ok((log.try_clone()?, log))) {
        Ok((stdout, stderr)) => (Stdio::from(stdout), Stdio::from(stderr)),
        Err(_) => (Stdio::null(), Stdio::null()),
    };
    let (program, args) = step
        .command
        .split_first()
        .expect("check refuses an empty stop command");
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(&spec.env)
        .env("KIP_STOP_PID", pid.to_string())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own group: the signals that may follow go to the process's group, not to the command.
        .process_group(0)
        .kill_on_drop(true);
    if !spec.cwd.as_os_str().is_empty() {
        command.current_dir(&spec.cwd);
    }
    if let Some(run_as) = &spec.run_as {
        command.uid(run_as.uid).gid(run_as.gid);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let message = format!("cannot run the stop command `{shown}`: {error}");
            tracing::warn!(name = %spec.name, "{message}");
            note_in_log(spec, &message);
            return false;
        }
    };
    let gone = wait_group_gone(leader, group, step.wait).await;
    match child.try_wait() {
        Ok(Some(status)) if !status.success() => {
            note_in_log(
                spec,
                &format!("the stop command `{shown}` {}", describe_exit(status)),
            );
        }
        Ok(Some(_)) => {}
        _ => {
            note_in_log(
                spec,
                &format!(
                    "the stop command `{shown}` still ran after {} ms: killed",
                    step.wait.as_millis()
                ),
            );
            if let Some(command_group) = child.id().and_then(|id| Pid::from_raw(id as i32)) {
                let _ = rustix::process::kill_process_group(command_group, Signal::KILL);
            }
            let _ = child.wait().await;
        }
    }
    gone
}

/// Waits up to `budget` for the leader to exit (reaping a child) and the rest of its group to be gone.
async fn wait_group_gone(leader: &mut Leader, group: Pid, budget: Duration) -> bool {
    let deadline = Instant::now() + budget;
    loop {
        let leader_exited = leader.has_exited();
        if leader_exited && group_is_gone(group) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let tick = (deadline - now).min(GROUP_POLL);
        match leader {
            Leader::Child(child) if !leader_exited => {
                // Wake up as soon as the leader exits rather than at the next tick.
                tokio::select! {
                    _ = child.wait() => {}
                    () = tokio::time::sleep(deadline - now) => {}
                }
            }
            _ => tokio::time::sleep(tick).await,
        }
    }
}

/// Whether no live process is left in the group (zombies do not count, see [`procfs::group_has_live_member`]).
fn group_is_gone(group: Pid) -> bool {
    match rustix::process::test_kill_process_group(group) {
        Err(errno) if errno == Errno::SRCH => true,
        _ => !procfs::group_has_live_member(group.as_raw_pid() as u32),
    }
}

/// How long a spawn waits for the workers of a previous run to go (see [`procfs::leftover_workers`]).
const LEFTOVER_WAIT: Duration = Duration::from_secs(10);

/// Waits, up to [`LEFTOVER_WAIT`], until no worker of a previous run of `spec` is left: a PostgreSQL killed from
/// outside leaves backends that exit within moments (they notice their postmaster's death), and a new postmaster
/// started before they did refuses to start ("pre-existing shared memory block is still in use"). They are only
/// waited for, never signalled: a process matched by program, directory and account is very likely a leftover,
/// but not proven to be one. After the wait the spawn goes ahead, and the engine says what still holds it.
async fn wait_for_leftovers(spec: &SpawnSpec) {
    let uid = account(spec);
    let started = Instant::now();
    let mut logged = false;
    loop {
        let left = procfs::leftover_workers(&spec.name, &spec.program, &spec.cwd, uid);
        if left.is_empty() {
            return;
        }
        if started.elapsed() >= LEFTOVER_WAIT {
            tracing::warn!(name = %spec.name, ?left, "workers of a previous run still run; starting anyway");
            return;
        }
        if !logged {
            tracing::info!(name = %spec.name, ?left, "waiting for the workers of the previous run to exit");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The account `spec`'s process runs as: its `run_as`, or the supervisor's own.
fn account(spec: &SpawnSpec) -> u32 {
    RunAs::uid_or_own(spec.run_as.as_ref())
}

/// Removes the files `spec`'s process leaves outside its directories ([`SpawnSpec::leaves`]) that are its
/// account's; another account's file at one of those paths is not this process's to remove, and stays.
pub(super) fn remove_leaves(spec: &SpawnSpec) {
    use std::os::unix::fs::MetadataExt as _;
    let uid = account(spec);
    for path in &spec.leaves {
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if metadata.uid() == uid && !metadata.is_dir() => {
                if let Err(error) = std::fs::remove_file(path) {
                    tracing::warn!(name = %spec.name, path = %path.display(), "cannot remove: {error}");
                }
            }
            Ok(_) => {
                tracing::warn!(name = %spec.name, path = %path.display(), "not the process's account's: left alone");
            }
            Err(_) => {}
        }
    }
}

/// Spawns one run of `spec`: output appended to its log (whose length before the run is returned, for the probe
/// and the error tail), in its own process group, as its `run_as` account, with its run id in [`RUN_ENV`].
fn spawn(spec: &SpawnSpec, run: &str) -> Result<(Child, u64), RequestError> {
    let log_error = |error: std::io::Error| RequestError::OpenLog {
        name: spec.name.clone(),
        log: spec.log.clone(),
        reason: error.to_string(),
    };
    if let Some(parent) = spec
        .log
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(log_error)?;
    }
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(log_error)?;
    let _ = writeln!(
        log,
        "[kip supervisor] {}: starting {}",
        spec.name,
        spec.program.display()
    );
    let offset = log.metadata().map_err(log_error)?.len();
    let stderr = log.try_clone().map_err(log_error)?;
    let mut command = tokio::process::Command::new(&spec.program);
    // The spec's environment is the whole environment: nothing of the supervisor's (nor of the kip that started
    // it) leaks into an engine, so a caller's secrets never reach a server process.
    command
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .env(RUN_ENV, run)
        .env(NAME_ENV, &spec.name)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(false);
    if !spec.cwd.as_os_str().is_empty() {
        command.current_dir(&spec.cwd);
    }
    if let Some(run_as) = &spec.run_as {
        command.uid(run_as.uid).gid(run_as.gid);
    }
    let child = command.spawn().map_err(|error| RequestError::Spawn {
        name: spec.name.clone(),
        program: spec.program.clone(),
        reason: error.to_string(),
    })?;
    Ok((child, offset))
}
