//! One supervised process: spawning it, gating on its readiness probe, restarting it when it crashes, and stopping
//! it. Each process is owned by one task, which alone holds its [`Child`]; the rest of the daemon talks to that
//! task through a [`Handle`] (a command channel and a status watch), so that nothing else ever races it for the
//! process's exit status.
//!
//! Process groups: every process is spawned as the leader of its own process group (`process_group(0)`), and
//! every stop signal goes to the whole group. Engines that fork workers (PostgreSQL's backends, a shell script's
//! children) are stopped with them, a terminal's Ctrl-C that reaches the `kip` command never reaches them, and a
//! stop is done only when the group is empty, not merely when the leader exited.
//!
//! Zombies: the owning task always waits for its child (in the stop sequence, or when it exits by itself), so the
//! leader is reaped as soon as it exits; a child that is dropped unreaped (a stop that gave up after SIGKILL)
//! goes to tokio's orphan queue, which reaps it later. Members of the group other than the leader are not the
//! daemon's children: when the leader dies they are reparented to init, which reaps them.
//!
//! Restarts: a process that exits after it was ready is restarted per its policy, after a backoff that starts at
//! 200 ms and doubles up to 10 s. `max_restarts` bounds the restarts in a row: a run that stays up for 30 s
//! resets that count and the backoff, so a process that crashes once a day is not given up on after a week. A
//! restarted process must pass its readiness probe again; a restart that does not become ready counts as a crash.

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
use super::{ProcessState, ProcessStatus, logfile};
use crate::engine::{ProbeKind, RestartPolicy, SpawnSpec};

/// The first restart waits this long; each further one twice as long as the one before.
pub(super) const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait before a restart.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A run that stayed ready this long resets the backoff and the count of restarts in a row.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// After SIGKILL, how long to wait for the group to disappear before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a stop checks whether the group is gone, once its leader has been reaped.
const GROUP_POLL: Duration = Duration::from_millis(10);

/// What the daemon may tell a process's task.
pub(super) enum Command {
    /// Stop the process (if it runs) and end the task; the reply comes once the process is gone.
    Stop {
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
}

/// The rest of the daemon's view of a supervised process.
pub(super) struct Handle {
    pub spec: SpawnSpec,
    pub status: watch::Receiver<ProcessStatus>,
    commands: mpsc::Sender<Command>,
}

impl Handle {
    /// Stops the process and ends its task; returns once the process (and its group) is gone.
    pub(super) async fn stop(&self) -> Result<(), RequestError> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Stop { reply }).await.is_err() {
            // The task has ended already, and with it the process.
            return Ok(());
        }
        answer.await.unwrap_or(Ok(()))
    }
}

/// A stop signal, parsed.
struct StopStep {
    signal: Signal,
    name: String,
    wait: Duration,
}

/// What checking a spec produced, for its task to use.
pub(super) struct Checked {
    log_pattern: Option<Regex>,
    stop: Vec<StopStep>,
}

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
        .map(|(name, wait)| match parse_signal(name) {
            Some(signal) => Ok(StopStep { signal, name: name.clone(), wait: Duration::from_millis(*wait) }),
            None => Err(invalid(format!(
                "the stop signal `{name}` is not one of SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGKILL"
            ))),
        })
        .collect::<Result<_, _>>()?;
    Ok(Checked { log_pattern, stop })
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

/// Starts supervising `spec`: spawns it in a new task and returns its handle, and a receiver that gets the status
/// once the first run is ready (or the error that says why it is not).
pub(super) fn launch(
    spec: SpawnSpec,
    checked: Checked,
) -> (
    Handle,
    oneshot::Receiver<Result<ProcessStatus, RequestError>>,
) {
    let (status_sender, status) = watch::channel(ProcessStatus {
        name: spec.name.clone(),
        pid: None,
        state: ProcessState::Starting,
        started_at: None,
        restarts: 0,
        log: spec.log.clone(),
        probe: spec.probe.kind.clone(),
    });
    let (commands_sender, commands) = mpsc::channel(4);
    let (ready_sender, ready) = oneshot::channel();
    let runner = Runner {
        spec: Arc::new(spec.clone()),
        checked,
        status: status_sender,
        commands,
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
}

/// How one run of the process ended.
enum RunEnd {
    /// The daemon said stop (or went away); the process is gone; the stop's reply is still to send.
    Stopped(
        Option<oneshot::Sender<Result<(), RequestError>>>,
        Result<(), RequestError>,
    ),
    /// It never became ready (could not spawn, failed its probe, exited first); it is stopped.
    NotReady(RequestError),
    /// It exited after it was ready; `stable` when it had been up long enough to reset the backoff.
    Exited {
        status: Option<ExitStatus>,
        stable: bool,
    },
}

/// What the first wait of a run saw first.
enum Readiness {
    Probe(Result<(), probe::ProbeFailure>),
    Exited(Option<ExitStatus>),
    Command(Option<Command>),
}

impl Runner {
    async fn run(mut self, ready: oneshot::Sender<Result<ProcessStatus, RequestError>>) {
        let mut first = Some(ready);
        let mut in_a_row = 0u32;
        let mut backoff = INITIAL_BACKOFF;
        loop {
            // How the run ended: its exit status when it ran and its status is known, and why, in words.
            let (exit, reason) = match self.run_once(&mut first).await {
                RunEnd::Stopped(reply, result) => {
                    if let Some(first) = first.take() {
                        let _ = first.send(Err(RequestError::StoppedBeforeReady {
                            name: self.spec.name.clone(),
                        }));
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                    return;
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
                RunEnd::Exited { status, stable } => {
                    if stable {
                        in_a_row = 0;
                        backoff = INITIAL_BACKOFF;
                    }
                    let reason = status
                        .map_or_else(|| "its exit status is unknown".to_owned(), describe_exit);
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
            if let Some(max) = self.spec.max_restarts.filter(|max| in_a_row >= *max) {
                let reason =
                    format!("{reason}; gave up after {max} restarts in a row (max_restarts)");
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
                command = self.commands.recv() => {
                    if let Some(Command::Stop { reply }) = command {
                        let _ = reply.send(Ok(()));
                    }
                    return;
                }
            }
            in_a_row += 1;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            self.status.send_modify(|status| status.restarts += 1);
        }
        // Not running, and not to be restarted: stay in the table (for `kip ps`) until told to stop.
        if let Some(Command::Stop { reply }) = self.commands.recv().await {
            let _ = reply.send(Ok(()));
        }
    }

    /// One run: spawn, wait for readiness, then wait for an exit or a stop.
    async fn run_once(
        &mut self,
        first: &mut Option<oneshot::Sender<Result<ProcessStatus, RequestError>>>,
    ) -> RunEnd {
        let spec = Arc::clone(&self.spec);
        let (mut child, offset) = match spawn(&spec) {
            Ok(spawned) => spawned,
            Err(error) => return RunEnd::NotReady(error),
        };
        let started = Instant::now();
        let pid = child.id().unwrap_or_default();
        tracing::info!(name = %spec.name, pid, "started {}", spec.program.display());
        self.status.send_modify(|status| {
            status.pid = Some(pid);
            status.state = ProcessState::Starting;
            status.started_at = Some(unix_millis());
        });
        let prober = match Prober::new(&spec, self.checked.log_pattern.clone(), offset, started) {
            Ok(prober) => prober,
            Err(reason) => {
                let _ = self.stop_process(&mut child, pid).await;
                return RunEnd::NotReady(RequestError::InvalidSpec {
                    name: spec.name.clone(),
                    reason,
                });
            }
        };
        let readiness = tokio::select! {
            result = prober.wait_ready() => Readiness::Probe(result),
            exit = child.wait() => Readiness::Exited(exit.ok()),
            command = self.commands.recv() => Readiness::Command(command),
        };
        match readiness {
            Readiness::Probe(Ok(())) => {}
            Readiness::Probe(Err(failure)) => {
                let _ = self.stop_process(&mut child, pid).await;
                return RunEnd::NotReady(RequestError::NotReady {
                    name: spec.name.clone(),
                    probe: probe::describe(&spec.probe.kind),
                    reason: failure.reason,
                    waited_ms: failure.waited.as_millis() as u64,
                    log: spec.log.clone(),
                    tail: logfile::tail(&spec.log, offset),
                });
            }
            Readiness::Exited(status) => {
                // Whatever it left behind in its group goes with it.
                let _ = self.stop_process(&mut child, pid).await;
                return RunEnd::NotReady(RequestError::ExitedBeforeReady {
                    name: spec.name.clone(),
                    exit: status
                        .map_or_else(|| "its exit status is unknown".to_owned(), describe_exit),
                    log: spec.log.clone(),
                    tail: logfile::tail(&spec.log, offset),
                });
            }
            Readiness::Command(command) => {
                let result = self.stop_process(&mut child, pid).await;
                return RunEnd::Stopped(command.map(|Command::Stop { reply }| reply), result);
            }
        }
        self.status
            .send_modify(|status| status.state = ProcessState::Ready);
        tracing::info!(name = %spec.name, pid, "ready after {} ms", started.elapsed().as_millis());
        if let Some(first) = first.take() {
            let _ = first.send(Ok(self.status.borrow().clone()));
        }
        let ready_at = Instant::now();
        tokio::select! {
            exit = child.wait() => {
                let status = exit.ok();
                let _ = self.stop_process(&mut child, pid).await;
                RunEnd::Exited { status, stable: ready_at.elapsed() >= STABLE_RUN }
            }
            command = self.commands.recv() => {
                let result = self.stop_process(&mut child, pid).await;
                RunEnd::Stopped(command.map(|Command::Stop { reply }| reply), result)
            }
        }
    }

    /// Records that no process runs now.
    fn set_stopped(&self, state: ProcessState) {
        self.status.send_modify(|status| {
            status.pid = None;
            status.state = state;
        });
    }

    /// A line in the process's log that says what the supervisor did, so that `kip logs` shows crashes and
    /// restarts among the engine's own lines.
    fn note_in_log(&self, message: &str) {
        if let Ok(mut log) = OpenOptions::new().append(true).open(&self.spec.log) {
            let _ = writeln!(log, "[kip supervisor] {}: {message}", self.spec.name);
        }
    }

    /// The stop sequence: each signal to the process group, waiting up to its time for the group to be gone, then
    /// SIGKILL. The leader is reaped on the way. Also cleans up after a leader that exited by itself: what is left
    /// of its group gets the same sequence (an empty group returns at once).
    async fn stop_process(&self, child: &mut Child, pid: u32) -> Result<(), RequestError> {
        let Some(group) = Pid::from_raw(pid as i32) else {
            return Ok(());
        };
        let name = &self.spec.name;
        for step in &self.checked.stop {
            match rustix::process::kill_process_group(group, step.signal) {
                Ok(()) => {}
                Err(errno) if errno == Errno::SRCH => {}
                Err(errno) => {
                    tracing::warn!(name = %name, pid, "cannot send {}: {errno}", step.name)
                }
            }
            if wait_group_gone(child, group, step.wait).await {
                return Ok(());
            }
            tracing::info!(name = %name, pid, "still running {} ms after {}", step.wait.as_millis(), step.name);
        }
        match rustix::process::kill_process_group(group, Signal::KILL) {
            Ok(()) => {}
            Err(errno) if errno == Errno::SRCH => {}
            Err(errno) => {
                return Err(RequestError::Signal {
                    name: name.clone(),
                    signal: "SIGKILL".to_owned(),
                    pid,
                    reason: errno.to_string(),
                });
            }
        }
        if !wait_group_gone(child, group, KILL_WAIT).await {
            // A member stuck in the kernel, or a zombie its new parent does not reap: nothing more to do here. An
            // unreaped leader goes to tokio's orphan queue when `child` is dropped.
            tracing::warn!(name = %name, pid, "process group still present {} s after SIGKILL", KILL_WAIT.as_secs());
        }
        Ok(())
    }
}

/// Waits up to `budget` for the leader to exit (reaping it) and the rest of its group to be gone.
async fn wait_group_gone(child: &mut Child, group: Pid, budget: Duration) -> bool {
    let deadline = Instant::now() + budget;
    loop {
        let leader_reaped = !matches!(child.try_wait(), Ok(None));
        if leader_reaped && group_is_gone(group) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let tick = (deadline - now).min(GROUP_POLL);
        if leader_reaped {
            tokio::time::sleep(tick).await;
        } else {
            // Wake up as soon as the leader exits rather than at the next tick.
            tokio::select! {
                _ = child.wait() => {}
                () = tokio::time::sleep(deadline - now) => {}
            }
        }
    }
}

/// Whether no live process is left in the group. Zombies do not count: they hold no port, socket or file, and
/// the members other than the leader are not the daemon's to reap. Whoever inherited them does that: init, which
/// in a container may be slow to, or never do it (a container's PID 1 is often not an init at all).
fn group_is_gone(group: Pid) -> bool {
    match rustix::process::test_kill_process_group(group) {
        Err(errno) if errno == Errno::SRCH => true,
        _ => !group_has_live_member(group),
    }
}

/// Whether a process of the group is alive (neither a zombie nor dead), from `/proc/*/stat`.
fn group_has_live_member(group: Pid) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        // Without /proc, only the signal test can tell, and it counts zombies: say the group is there.
        return true;
    };
    let group = group.as_raw_pid();
    entries.flatten().any(|entry| {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses, so split after the last ')'.
        let Some(after_comm) = stat.rfind(')').map(|end| &stat[end + 1..]) else {
            return false;
        };
        let mut fields = after_comm.split_whitespace();
        let state = fields.next();
        let process_group = fields.nth(1).and_then(|field| field.parse::<i32>().ok());
        process_group == Some(group) && !matches!(state, Some("Z" | "X"))
    })
}

/// Spawns one run of `spec`: output appended to its log (whose length before the run is returned, for the probe
/// and the error tail), in its own process group, as its `run_as` account.
fn spawn(spec: &SpawnSpec) -> Result<(Child, u64), RequestError> {
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
    command
        .args(&spec.args)
        .envs(&spec.env)
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
