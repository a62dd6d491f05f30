//! The supervisor as the lifecycle sees it: a [`Supervise`] connection that starts, stops, reloads and waits for
//! processes, and [`Supervisors`] that hands one to each worker of a parallel apply.
//!
//! [`DaemonSupervisors`] is the real one, the per-project daemon of [`crate::supervisor`], started on first use.
//! [`MemorySupervisors`] keeps a process table in memory and runs nothing: it lets the scheduler and the lifecycle
//! be exercised with a fake engine (see [`crate::fake`]), as a storage driver suite runs against an in-memory
//! driver.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::{BoxFuture, SpawnSpec};
use crate::supervisor::{Client, ProcessState, ProcessStatus, RequestError, SupervisorError};

/// One connection to a project's supervisor.
pub trait Supervise: Send {
    /// Starts `spec` and answers once it is ready (or, for a job, once it started). A process of that name that
    /// runs ready with the same spec is left alone.
    fn start(&mut self, spec: SpawnSpec) -> BoxFuture<'_, Result<ProcessStatus, SupervisorError>>;
    /// Stops a process; a name that is not supervised is already stopped.
    fn stop<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), SupervisorError>>;
    /// Stops a process whose data is deleted right after, with its spec's discard sequence when it has one (see
    /// [`crate::engine::StopSpec::discard`]); by default as [`Supervise::stop`].
    fn discard<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), SupervisorError>> {
        self.stop(name)
    }
    /// Sends a process its reload signal.
    fn reload<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), SupervisorError>>;
    /// Waits for a process (a job) to exit, and answers its final status.
    fn wait_exit<'a>(
        &'a mut self,
        name: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ProcessStatus, SupervisorError>>;
    /// Every supervised process.
    fn status(&mut self) -> BoxFuture<'_, Result<Vec<ProcessStatus>, SupervisorError>>;
}

/// Hands out supervisor connections, one per worker.
pub trait Supervisors: Send + Sync {
    /// A connection; a real supervisor is started on its first request, not here.
    fn connect(&self) -> Box<dyn Supervise>;
    /// What runs now, without starting anything (empty when no supervisor runs).
    fn running(&self) -> BoxFuture<'_, Result<Vec<ProcessStatus>, SupervisorError>>;
    /// Gets the supervisor going ahead of its first request, when an apply knows it will start something: a new
    /// project's daemon then starts while the apply resolves and provisions, not after. Errors are left to the
    /// first real request, which reports them.
    fn warm_up(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The project's supervisor daemon.
#[derive(Debug, Clone)]
pub struct DaemonSupervisors {
    pub kip_dir: PathBuf,
    /// The `kip` binary, to start the daemon with (`kip supervisor --dir …`).
    pub kip_exe: PathBuf,
    /// Held while a connection looks for the daemon or starts it: the workers of a parallel apply share one
    /// daemon rather than race to start several.
    starting: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl DaemonSupervisors {
    pub fn new(kip_dir: PathBuf, kip_exe: PathBuf) -> DaemonSupervisors {
        DaemonSupervisors {
            kip_dir,
            kip_exe,
            starting: Default::default(),
        }
    }
}

impl Supervisors for DaemonSupervisors {
    fn connect(&self) -> Box<dyn Supervise> {
        Box::new(DaemonConnection {
            supervisors: self.clone(),
            client: None,
        })
    }

    fn running(&self) -> BoxFuture<'_, Result<Vec<ProcessStatus>, SupervisorError>> {
        Box::pin(async move {
            match self.adopt().await? {
                Some(mut client) => client.status().await,
                None => Ok(Vec::new()),
            }
        })
    }

    fn warm_up(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(error) = self.connect_or_start().await {
                tracing::debug!("the supervisor did not start ahead of the apply: {error}");
            }
        })
    }
}

impl DaemonSupervisors {
    /// The running supervisor, or a new one started for the project (one starter at a time).
    async fn connect_or_start(&self) -> Result<Client, SupervisorError> {
        let _one_at_a_time = self.starting.lock().await;
        let dir = self.kip_dir.display().to_string();
        let args = ["supervisor", "--dir", dir.as_str()];
        Client::connect_or_start(&self.kip_dir, &self.kip_exe, &args).await
    }

    /// The running supervisor; or, when none answers but processes it ran outlived it (it was killed), or left
    /// files that only a supervisor removes, a new one that adopts or cleans up after them; or none.
    pub async fn adopt(&self) -> Result<Option<Client>, SupervisorError> {
        let _one_at_a_time = self.starting.lock().await;
        let dir = self.kip_dir.display().to_string();
        let args = ["supervisor", "--dir", dir.as_str()];
        Client::connect_or_adopt(&self.kip_dir, &self.kip_exe, &args).await
    }
}

struct DaemonConnection {
    supervisors: DaemonSupervisors,
    client: Option<Client>,
}

impl DaemonConnection {
    async fn client(&mut self) -> Result<&mut Client, SupervisorError> {
        if self.client.is_none() {
            self.client = Some(self.supervisors.connect_or_start().await?);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    /// Connects to a supervisor that runs (or adopts what a killed one left running), without starting one for
    /// nothing.
    async fn existing(&mut self) -> Result<Option<&mut Client>, SupervisorError> {
        if self.client.is_none() {
            self.client = self.supervisors.adopt().await?;
        }
        Ok(self.client.as_mut())
    }

    /// Stops `name` (with its discard sequence when `discard`) if a supervisor runs; a name that is not supervised
    /// is already stopped.
    async fn stop_with(&mut self, name: &str, discard: bool) -> Result<(), SupervisorError> {
        let Some(client) = self.existing().await? else {
            return Ok(());
        };
        unknown_is_stopped(if discard {
            client.discard(name).await
        } else {
            client.stop(name).await
        })
    }
}

fn unknown_is_stopped(result: Result<(), SupervisorError>) -> Result<(), SupervisorError> {
    match result {
        Err(SupervisorError::Request(error))
            if matches!(*error, RequestError::UnknownProcess { .. }) =>
        {
            Ok(())
        }
        other => other,
    }
}

impl Supervise for DaemonConnection {
    fn start(&mut self, spec: SpawnSpec) -> BoxFuture<'_, Result<ProcessStatus, SupervisorError>> {
        Box::pin(async move { self.client().await?.start(spec).await })
    }

    fn stop<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), SupervisorError>> {
        Box::pin(self.stop_with(name, false))
    }

    fn discard<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), SupervisorError>> {
        Box::pin(self.stop_with(name, true))
    }

    fn reload<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), SupervisorError>> {
        Box::pin(async move { self.client().await?.reload(name).await })
    }

    fn wait_exit<'a>(
        &'a mut self,
        name: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ProcessStatus, SupervisorError>> {
        Box::pin(async move {
            self.client()
                .await?
                .wait(name, crate::supervisor::WaitUntil::Exited, timeout)
                .await
        })
    }

    fn status(&mut self) -> BoxFuture<'_, Result<Vec<ProcessStatus>, SupervisorError>> {
        Box::pin(async move {
            match self.existing().await? {
                Some(client) => client.status().await,
                None => Ok(Vec::new()),
            }
        })
    }
}

pub mod memory_programs {
    //! Program names [`super::MemorySupervisors`] understands (the fake engine uses them): it runs nothing, and
    //! a spec's program says what happens instead.

    /// A server that becomes ready at once.
    pub const SERVE: &str = "memory:serve";
    /// A server whose start fails (its probe never passes).
    pub const FAIL: &str = "memory:fail";
    /// A job that exits with the code in its first argument.
    pub const EXIT: &str = "memory:exit";
    /// An argument `port=N`: the process "listens" on loopback port N (see
    /// [`super::MemorySupervisors::take_port_at_next_start`]).
    pub const PORT_ARG: &str = "port=";
}

/// A process table in memory, shared by every connection it hands out.
#[derive(Debug, Clone, Default)]
pub struct MemorySupervisors {
    table: Arc<Mutex<MemoryTable>>,
}

#[derive(Debug, Default)]
struct MemoryTable {
    processes: BTreeMap<String, (SpawnSpec, ProcessStatus)>,
    next_pid: u32,
    /// Every start that spawned something, in order, for tests.
    spawned: Vec<String>,
    reloads: Vec<String>,
    /// How many of the next starts find their port taken ([`MemorySupervisors::take_port_at_next_starts`]).
    take_ports: u32,
    /// The ports taken that way, held until the table is dropped.
    taken: Vec<std::net::TcpListener>,
}

impl MemorySupervisors {
    pub fn new() -> MemorySupervisors {
        MemorySupervisors::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryTable> {
        self.table
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The names of every process spawned so far, in order (a start of a running process spawns nothing).
    pub fn spawned(&self) -> Vec<String> {
        self.lock().spawned.clone()
    }

    /// The names of every process reloaded so far, in order.
    pub fn reloads(&self) -> Vec<String> {
        self.lock().reloads.clone()
    }

    /// Makes a process exit as if killed (SIGKILL), as an engine crash would.
    pub fn kill(&self, name: &str) {
        if let Some((_, status)) = self.lock().processes.get_mut(name) {
            status.pid = None;
            status.state = ProcessState::Exited {
                code: None,
                signal: Some(9),
            };
        }
    }

    /// Makes another program take the port of the next process started with a `port=N` argument just before it
    /// binds it, as a process starting at the same moment could: that start fails, and the port stays taken.
    pub fn take_port_at_next_start(&self) {
        self.take_port_at_next_starts(1);
    }

    /// The same for each of the next `starts` starts: another program that takes every port kip picks.
    pub fn take_port_at_next_starts(&self, starts: u32) {
        self.lock().take_ports = starts;
    }

    /// The ports taken by [`MemorySupervisors::take_port_at_next_start`].
    pub fn taken_ports(&self) -> Vec<u16> {
        self.lock()
            .taken
            .iter()
            .filter_map(|listener| listener.local_addr().ok())
            .map(|address| address.port())
            .collect()
    }

    /// Forgets every process, as a stopped supervisor (`kip down`) would.
    pub fn shutdown(&self) {
        self.lock().processes.clear();
    }
}

impl Supervisors for MemorySupervisors {
    fn connect(&self) -> Box<dyn Supervise> {
        Box::new(self.clone())
    }

    fn running(&self) -> BoxFuture<'_, Result<Vec<ProcessStatus>, SupervisorError>> {
        let status = self
            .lock()
            .processes
            .values()
            .map(|(_, status)| status.clone())
            .collect();
        Box::pin(async move { Ok(status) })
    }
}

impl Supervise for MemorySupervisors {
    fn start(&mut self, spec: SpawnSpec) -> BoxFuture<'_, Result<ProcessStatus, SupervisorError>> {
        let result = (|| {
            let mut table = self.lock();
            if let Some((running, status)) = table.processes.get(&spec.name)
                && *running == spec
                && status.state == ProcessState::Ready
            {
                return Ok(status.clone());
            }
            let program = spec.program.to_string_lossy().into_owned();
            table.next_pid += 1;
            let pid = 100_000 + table.next_pid;
            table.spawned.push(spec.name.clone());
            let port = spec.args.iter().find_map(|arg| {
                arg.strip_prefix(memory_programs::PORT_ARG)
                    .and_then(|port| port.parse::<u16>().ok())
            });
            if let Some(port) = port
                && table.take_ports > 0
            {
                table.take_ports -= 1;
                let taken = std::net::TcpListener::bind(("127.0.0.1", port));
                table.taken.extend(taken.ok());
                table.processes.remove(&spec.name);
                return Err(SupervisorError::from(RequestError::NotReady {
                    name: spec.name.clone(),
                    probe: "memory".to_owned(),
                    reason: format!("port {port} was taken just before it bound it"),
                    waited_ms: 0,
                    log: spec.log.clone(),
                    tail: vec![format!("fake: cannot listen on {port}: address in use")],
                }));
            }
            let state = match program.as_str() {
                memory_programs::FAIL => {
                    table.processes.remove(&spec.name);
                    return Err(SupervisorError::from(RequestError::NotReady {
                        name: spec.name.clone(),
                        probe: "memory".to_owned(),
                        reason: "the fake engine was told to fail".to_owned(),
                        waited_ms: 0,
                        log: spec.log.clone(),
                        tail: vec!["fake: refusing to start".to_owned()],
                    }));
                }
                memory_programs::EXIT => ProcessState::Exited {
                    code: Some(
                        spec.args
                            .first()
                            .and_then(|code| code.parse().ok())
                            .unwrap_or(0),
                    ),
                    signal: None,
                },
                _ => ProcessState::Ready,
            };
            let status = ProcessStatus {
                name: spec.name.clone(),
                instance: spec.instance.clone(),
                start_time: None,
                adopted: false,
                pid: (state == ProcessState::Ready).then_some(pid),
                state,
                started_at: Some(0),
                restarts: 0,
                log: spec.log.clone(),
                probe: spec.probe.kind.clone(),
            };
            table
                .processes
                .insert(spec.name.clone(), (spec, status.clone()));
            Ok(status)
        })();
        Box::pin(async move { result })
    }

    fn stop<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), SupervisorError>> {
        self.lock().processes.remove(name);
        Box::pin(async { Ok(()) })
    }

    fn reload<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<(), SupervisorError>> {
        let result = {
            let mut table = self.lock();
            match table.processes.get(name) {
                Some((spec, _)) if spec.reload.is_some() => {
                    table.reloads.push(name.to_owned());
                    Ok(())
                }
                Some(_) => Err(SupervisorError::from(RequestError::Other {
                    message: format!("`{name}` has no reload signal"),
                })),
                None => Err(SupervisorError::from(RequestError::UnknownProcess {
                    name: name.to_owned(),
                })),
            }
        };
        Box::pin(async move { result })
    }

    fn wait_exit<'a>(
        &'a mut self,
        name: &'a str,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<ProcessStatus, SupervisorError>> {
        let result = self
            .lock()
            .processes
            .get(name)
            .map(|(_, status)| status.clone())
            .ok_or_else(|| {
                SupervisorError::from(RequestError::UnknownProcess {
                    name: name.to_owned(),
                })
            });
        Box::pin(async move { result })
    }

    fn status(&mut self) -> BoxFuture<'_, Result<Vec<ProcessStatus>, SupervisorError>> {
        self.running()
    }
}
