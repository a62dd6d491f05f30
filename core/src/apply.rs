//! Plan and apply: the orchestration between the checked configuration, the state, the engines and the
//! supervisor.
//!
//! Plan builds each engine's desired nodes from the configuration, the existing nodes from the state refreshed
//! against the running engines (so a change made behind kip's back shows up), and diffs them. Apply executes only
//! the plan: instances in dependency order (resolve → provision → spawn → converge → prune), saving the state after
//! each step, so that a kip killed at any point leaves a state the next apply repairs. A failed instance skips
//! what depends on it, reported once.

// Apply errors carry the resolve and supervisor errors whole (with the log lines they quote); they are built
// once per failed instance, never in a loop, so boxing them would cost clarity for nothing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::{Config, Instance};
use crate::engine::{Engine, EngineError, InstanceEnv, Reconfigure, RunAs};
use crate::graph::Graph;
use crate::lock::LockFile;
use crate::plan::{self, Action, Change, Existing, Plan};
use crate::resolve::{
    Policy, Request, ResolveError, ResolveSettings, Resolver, Toolchain, ToolchainSource,
};
use crate::state::{InstanceState, ObjectState, State, StateError};
use crate::supervisor::{Client, SupervisorError};

/// The engines kip can run, by name.
pub type Engines = BTreeMap<&'static str, Box<dyn Engine>>;

/// Where a project keeps its files.
#[derive(Debug, Clone)]
pub struct Project {
    /// The directory holding kip.hcl.
    pub dir: PathBuf,
    /// `dir/.kip`: state, supervisor socket, logs.
    pub kip_dir: PathBuf,
    /// The user's cache: the toolchain store and templates.
    pub cache: PathBuf,
    /// The `kip` binary, to start the supervisor with.
    pub kip_exe: PathBuf,
}

impl Project {
    pub fn new(dir: &Path, cache: &Path, kip_exe: &Path) -> Project {
        Project {
            dir: dir.to_path_buf(),
            kip_dir: dir.join(".kip"),
            cache: cache.to_path_buf(),
            kip_exe: kip_exe.to_path_buf(),
        }
    }

    /// Where an instance's data, sockets and logs go: under `.kip/`, unless the account the engine runs as
    /// cannot reach it (a project in root's 0700 home), then under `/var/lib/kip/projects/<hash>/`.
    fn runtime_root(&self, run_as: Option<&RunAs>) -> PathBuf {
        let local = self.kip_dir.join("run");
        match run_as {
            Some(run_as) if crate::runas::ensure_reachable(&self.kip_dir, run_as).is_err() => {
                let hash =
                    <sha2::Sha256 as sha2::Digest>::digest(self.dir.to_string_lossy().as_bytes());
                let digest = crate::mirror::hex(&hash[..8]);
                PathBuf::from("/var/lib/kip/projects").join(digest)
            }
            _ => local,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("{address}: {source}")]
    Engine {
        address: String,
        #[source]
        source: EngineError,
    },
    #[error("{address} declares port {port}, which is already in use on 127.0.0.1")]
    PortTaken {
        address: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("{address} does not run, and kip sync never starts or creates an instance")]
    NotRunning { address: String },
    #[error("kip cannot run {engine} instances yet ({address})")]
    Unsupported { engine: String, address: String },
    #[error(transparent)]
    RunAs(#[from] crate::runas::RunAsError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kip.lock lacks a pin for {0} and --locked forbids adding one")]
    Locked(String),
    #[error(
        "{} failed{}:\n{}",
        failed.join(", "),
        if skipped.is_empty() { String::new() } else { format!(" (skipped what depends on it: {})", skipped.join(", ")) },
        errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
    )]
    Partial {
        failed: Vec<String>,
        skipped: Vec<String>,
        errors: Vec<String>,
    },
}

impl ApplyError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ApplyError::State(error) => error.hint(),
            ApplyError::Resolve(error) => error.hint(),
            ApplyError::Supervisor(error) => error.hint(),
            ApplyError::Engine { source, .. } => source.hint.clone(),
            ApplyError::RunAs(error) => error.hint(),
            ApplyError::Lock(error) => error.hint().map(str::to_owned),
            ApplyError::Locked(_) => Some("run `kip lock` and commit kip.lock".into()),
            ApplyError::NotRunning { .. } => Some("run `kip up` (or `kip apply`) first".into()),
            ApplyError::PortTaken { .. } => Some(
                "choose a free port, stop what holds it, or drop `port` to use a unix socket only"
                    .into(),
            ),
            ApplyError::Unsupported { .. } => {
                Some("this kip runs postgres instances; the other engines come next".into())
            }
            _ => None,
        }
    }
}

/// The environment of an instance from its state.
fn env_from_state(
    project: &Project,
    address: &str,
    instance: &Instance,
    saved: &InstanceState,
) -> InstanceEnv {
    let run_dir = saved
        .socket_dir
        .clone()
        .unwrap_or_else(|| saved.data_dir.with_extension("run"));
    InstanceEnv {
        address: address.to_owned(),
        instance: instance.clone(),
        toolchain: Toolchain {
            engine: saved.engine.clone(),
            spec: saved.spec.clone(),
            version: saved.version.clone(),
            bin: saved.toolchain.join("bin"),
            root: saved.toolchain.clone(),
            // The store names each toolchain after its archive's hash (`sha256-HEX`); a BINDIR toolchain has none.
            source: match saved
                .toolchain
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("sha256-"))
            {
                Some(sha256) => ToolchainSource::Store {
                    sha256: sha256.to_owned(),
                    downloaded: false,
                },
                None => ToolchainSource::Bindir,
            },
        },
        data_dir: saved.data_dir.clone(),
        run_dir,
        log: saved.log.clone(),
        templates: project.cache.join("templates"),
        run_as: saved.run_as.clone(),
        secrets: saved.secrets.clone(),
    }
}

/// The instance node as the state remembers it.
fn instance_from_state(address: &str, saved: &InstanceState, prevent_destroy: bool) -> Existing {
    Existing {
        address: address.to_owned(),
        engine: saved.engine.clone(),
        kind: "instance".into(),
        attributes: saved.attributes.clone(),
        prevent_destroy,
    }
}

/// An object as the state remembers it.
fn object_from_state(address: &str, saved: &InstanceState, object: &ObjectState) -> Existing {
    Existing {
        address: address.to_owned(),
        engine: saved.engine.clone(),
        kind: object.kind.clone(),
        attributes: object.attributes.clone(),
        prevent_destroy: object.prevent_destroy,
    }
}

/// The names of the processes the supervisor reports ready.
async fn ready_processes(supervisor: &mut Option<Client>) -> BTreeSet<String> {
    let Some(client) = supervisor.as_mut() else {
        return BTreeSet::new();
    };
    client
        .status()
        .await
        .map(|all| {
            all.into_iter()
                .filter(|p| matches!(p.state, crate::supervisor::ProcessState::Ready))
                .map(|p| p.name)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the supervisor reports `name` ready.
async fn running(supervisor: &mut Option<Client>, name: &str) -> bool {
    ready_processes(supervisor).await.contains(name)
}

/// Everything plan needs.
pub struct Planner<'a> {
    pub project: &'a Project,
    pub config: &'a Config,
    pub engines: &'a Engines,
    pub state: &'a State,
    /// Ask running engines what exists (`--refresh=false` trusts the state).
    pub refresh: bool,
}

impl Planner<'_> {
    pub async fn plan(&self) -> Result<Plan, ApplyError> {
        let mut desired = Vec::new();
        let mut existing: BTreeMap<String, Existing> = BTreeMap::new();
        // One status request for the whole plan: which instances run, and so can be refreshed.
        let ready = ready_processes(&mut Client::connect(&self.project.kip_dir).await?).await;
        for instance in &self.config.instances {
            let address = instance.address.to_string();
            let Some(engine) = self.engines.get(instance.engine.name) else {
                return Err(ApplyError::Unsupported {
                    engine: instance.engine.name.into(),
                    address,
                });
            };
            let nodes = engine
                .desired(instance)
                .map_err(|source| ApplyError::Engine {
                    address: address.clone(),
                    source,
                })?;
            let Some(saved) = self.state.instances.get(&address) else {
                desired.extend(nodes);
                continue;
            };
            existing.insert(
                address.clone(),
                instance_from_state(&address, saved, instance.prevent_destroy),
            );
            // What kip manages in this instance: the objects it created (with their attributes as last applied)
            // and the objects the configuration declares.
            let mut managed: BTreeMap<String, plan::Attributes> = saved
                .objects
                .iter()
                .map(|(address, object)| (address.clone(), object.attributes.clone()))
                .collect();
            for node in nodes.iter().filter(|n| n.kind != "instance") {
                managed.entry(node.address.clone()).or_default();
            }
            let declared: BTreeSet<&str> = nodes.iter().map(|n| n.address.as_str()).collect();
            if self.refresh && ready.contains(&address) {
                let env = env_from_state(self.project, &address, instance, saved);
                let live =
                    engine
                        .refresh(&env, &managed)
                        .await
                        .map_err(|source| ApplyError::Engine {
                            address: address.clone(),
                            source,
                        })?;
                existing.extend(live);
                for (object, saved_object) in &saved.objects {
                    match existing.get_mut(object) {
                        // Protection outlives the block: a removed `prevent_destroy = true` object stays protected.
                        Some(node) => node.prevent_destroy |= saved_object.prevent_destroy,
                        // Created by kip, no longer declared, and not reported (gone already, or something the
                        // engine cannot see, such as a grant): planned as a delete from the state, which the
                        // engine carries out idempotently.
                        None if !declared.contains(object.as_str()) => {
                            existing.insert(
                                object.clone(),
                                object_from_state(object, saved, saved_object),
                            );
                        }
                        None => {}
                    }
                }
            } else {
                for (object, saved_object) in &saved.objects {
                    existing.insert(
                        object.clone(),
                        object_from_state(object, saved, saved_object),
                    );
                }
            }
            desired.extend(nodes);
        }
        // Instances in the state that the configuration no longer declares.
        for (address, saved) in &self.state.instances {
            if self
                .config
                .instances
                .iter()
                .any(|i| i.address.to_string() == *address)
            {
                continue;
            }
            existing.insert(address.clone(), instance_from_state(address, saved, false));
        }
        let mut changes = plan::diff(&desired, &existing);
        // An object of an instance being deleted goes with it: no separate change.
        let deleted: Vec<String> = changes
            .iter()
            .filter(|c| {
                c.kind == "instance" && matches!(c.action, Action::Delete | Action::Replace)
            })
            .map(|c| format!("{}.", c.address))
            .collect();
        changes.retain(|c| {
            c.kind == "instance"
                || !deleted
                    .iter()
                    .any(|prefix| c.address.starts_with(prefix.as_str()))
                || c.action == Action::Create
        });
        Ok(Plan {
            format_version: plan::PLAN_FORMAT.into(),
            lineage: self.state.lineage.clone(),
            serial: self.state.serial,
            changes,
        })
    }
}

/// What apply reports as it goes.
pub trait Report: Send + Sync {
    fn step(&self, address: &str, what: &str);
}

/// Everything apply needs.
pub struct Applier<'a> {
    pub project: &'a Project,
    pub config: &'a Config,
    pub graph: &'a Graph,
    pub engines: &'a Engines,
    pub resolve: ResolveSettings,
    pub locked: bool,
    pub progress: &'a dyn crate::fetch::Progress,
    pub report: &'a dyn Report,
    pub run_as_env: Option<String>,
    /// How many instances apply at once (`--parallelism`).
    pub parallelism: usize,
    /// `kip sync`: converge objects only; never create, start, restart or replace an instance.
    pub sync_only: bool,
}

impl Applier<'_> {
    /// Executes `plan` against `state`, saving the state after every step. Instances run in parallel, up to
    /// `parallelism` at once, each as soon as the instances it depends on are done; a failure skips everything
    /// that depends on it, reported once. Each running instance has its own thread and runtime, so a slow
    /// engine never holds up an independent one.
    pub fn apply(&self, plan: &Plan, state: &mut State) -> Result<(), ApplyError> {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| ApplyError::Io {
                    action: "start a runtime in",
                    path: self.project.dir.clone(),
                    source,
                })
        };
        let lock_path = self.project.dir.join(crate::lock::LOCK_FILE);
        let shared_lock = Mutex::new(LockFile::read(&lock_path)?);
        let before = locked(&shared_lock).clone();
        let shared_state = Mutex::new(std::mem::take(state));

        // Instances the configuration dropped go first, objects and all.
        let deletions: Vec<&Change> = plan
            .changes
            .iter()
            .filter(|c| c.kind == "instance" && c.action == Action::Delete)
            .collect();
        let instances: Vec<&Instance> = self
            .config
            .instances
            .iter()
            .filter(|instance| {
                let address = instance.address.to_string();
                let prefix = format!("{address}.");
                plan.changes
                    .iter()
                    .any(|c| c.address == address || c.address.starts_with(&prefix))
            })
            .collect();
        let setup = runtime()?.block_on(async {
            let mut supervisor = None;
            for change in &deletions {
                self.destroy_instance(&change.address, &shared_state, &mut supervisor)
                    .await?;
            }
            if !instances.is_empty() {
                // Start the supervisor once, before the instances race to it.
                self.client(&mut supervisor).await?;
            }
            Ok::<(), ApplyError>(())
        });
        if let Err(error) = setup {
            *state = shared_state
                .into_inner()
                .unwrap_or_else(|poison| poison.into_inner());
            return Err(error);
        }

        // The instances each instance waits for.
        let addresses: Vec<String> = instances.iter().map(|i| i.address.to_string()).collect();
        let waits: Vec<BTreeSet<usize>> = instances
            .iter()
            .map(|instance| {
                let own = instance.address.to_string();
                let mut nodes = vec![instance.address.clone()];
                collect_object_addresses(&instance.body, &mut nodes);
                nodes
                    .iter()
                    .flat_map(|node| self.graph.dependencies(node))
                    .filter_map(|dep| {
                        let dep_instance = dep.address.instance_address().to_string();
                        (dep_instance != own)
                            .then(|| addresses.iter().position(|a| *a == dep_instance))
                            .flatten()
                    })
                    .collect()
            })
            .collect();

        let parallelism = self.parallelism.max(1);
        let mut done = vec![false; instances.len()];
        let mut started = vec![false; instances.len()];
        let mut failed: Vec<String> = Vec::new();
        let mut skipped: Vec<String> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        let mut blocked = vec![false; instances.len()];
        std::thread::scope(|scope| {
            let (sender, receiver) = std::sync::mpsc::channel::<(usize, Result<(), ApplyError>)>();
            let mut running = 0;
            loop {
                // Skip what waits for a failure; start what is ready, up to the limit.
                for index in 0..instances.len() {
                    if started[index] || blocked[index] {
                        continue;
                    }
                    if waits[index].iter().any(|dep| blocked[*dep]) {
                        blocked[index] = true;
                        done[index] = true;
                        skipped.push(addresses[index].clone());
                        continue;
                    }
                    if running >= parallelism || !waits[index].iter().all(|dep| done[*dep]) {
                        continue;
                    }
                    started[index] = true;
                    running += 1;
                    let sender = sender.clone();
                    let instance = instances[index];
                    let (shared_state, shared_lock) = (&shared_state, &shared_lock);
                    scope.spawn(move || {
                        let result = match runtime() {
                            Ok(runtime) => runtime.block_on(self.apply_instance(
                                instance,
                                plan,
                                shared_state,
                                shared_lock,
                            )),
                            Err(error) => Err(error),
                        };
                        let _ = sender.send((index, result));
                    });
                }
                if running == 0 {
                    break;
                }
                let Ok((index, result)) = receiver.recv() else {
                    break;
                };
                running -= 1;
                done[index] = true;
                if let Err(error) = result {
                    errors.push(format!("{}: {}", addresses[index], render(&error)));
                    failed.push(addresses[index].clone());
                    blocked[index] = true;
                }
            }
        });
        *state = shared_state
            .into_inner()
            .unwrap_or_else(|poison| poison.into_inner());
        let lock = shared_lock
            .into_inner()
            .unwrap_or_else(|poison| poison.into_inner());
        if lock != before {
            lock.write(&lock_path)?;
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(ApplyError::Partial {
                failed,
                skipped,
                errors,
            })
        }
    }

    async fn client<'s>(
        &self,
        supervisor: &'s mut Option<Client>,
    ) -> Result<&'s mut Client, ApplyError> {
        if supervisor.is_none() {
            let dir = self.project.kip_dir.display().to_string();
            let args = ["supervisor", "--dir", dir.as_str()];
            let client =
                Client::connect_or_start(&self.project.kip_dir, &self.project.kip_exe, &args)
                    .await?;
            *supervisor = Some(client);
        }
        Ok(supervisor.as_mut().expect("just connected"))
    }

    async fn destroy_instance(
        &self,
        address: &str,
        state: &Mutex<State>,
        supervisor: &mut Option<Client>,
    ) -> Result<(), ApplyError> {
        self.report.step(address, "stopping");
        if let Some(client) = Client::connect(&self.project.kip_dir).await? {
            *supervisor = Some(client);
        }
        if let Some(client) = supervisor.as_mut() {
            match client.stop(address).await {
                Ok(()) => {}
                Err(SupervisorError::Request(error))
                    if matches!(
                        &*error,
                        crate::supervisor::RequestError::UnknownProcess { .. }
                    ) => {}
                Err(error) => return Err(error.into()),
            }
        }
        let removed = locked(state).instances.remove(address);
        if let Some(saved) = removed {
            for dir in [Some(saved.data_dir.clone()), saved.socket_dir.clone()]
                .into_iter()
                .flatten()
            {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(|source| ApplyError::Io {
                        action: "remove",
                        path: dir.clone(),
                        source,
                    })?;
                }
            }
        }
        locked(state).write(&self.project.kip_dir)?;
        self.report.step(address, "destroyed");
        Ok(())
    }

    async fn apply_instance(
        &self,
        instance: &Instance,
        plan: &Plan,
        state: &Mutex<State>,
        shared_lock: &Mutex<LockFile>,
    ) -> Result<(), ApplyError> {
        let mut supervisor: Option<Client> = None;
        let supervisor = &mut supervisor;
        let address = instance.address.to_string();
        let engine =
            self.engines
                .get(instance.engine.name)
                .ok_or_else(|| ApplyError::Unsupported {
                    engine: instance.engine.name.into(),
                    address: address.clone(),
                })?;
        let change = plan.changes.iter().find(|c| c.address == address);
        let action = change.map_or(Action::Noop, |c| c.action);
        if action == Action::Replace {
            self.destroy_instance(&address, state, supervisor).await?;
        }
        let engine_error = |source| ApplyError::Engine {
            address: address.clone(),
            source,
        };

        let saved_instance = locked(state).instances.get(&address).cloned();
        let mut env = match saved_instance.as_ref() {
            Some(saved) if action != Action::Replace => {
                env_from_state(self.project, &address, instance, saved)
            }
            _ => {
                // Resolve → provision.
                let spec = instance
                    .version
                    .clone()
                    .ok_or_else(|| ApplyError::Unsupported {
                        engine: instance.engine.name.into(),
                        address: address.clone(),
                    })?;
                let request = Request {
                    engine: instance.engine.name.to_owned(),
                    spec,
                };
                if self.locked
                    && locked(shared_lock)
                        .pin(&request.engine, &request.spec_text())
                        .is_none()
                {
                    return Err(ApplyError::Locked(format!(
                        "{} \"{}\"",
                        request.engine,
                        request.spec_text()
                    )));
                }
                self.report.step(&address, "resolving");
                // Each instance resolves with its own resolver (the store's file locks keep concurrent downloads of
                // one archive to one), then merges the pins it added.
                let mut lock = locked(shared_lock).clone();
                let mut resolver = Resolver::new(self.resolve.clone(), self.progress);
                let toolchain = resolver
                    .resolve(&request, &mut lock, &Policy::UseLock)
                    .await?;
                locked(shared_lock).pins.extend(lock.pins);
                let run_as = crate::runas::resolve_run_as(
                    instance.run_as.as_deref(),
                    self.run_as_env.as_deref(),
                )?;
                let root = self.project.runtime_root(run_as.as_ref());
                let slug = slug(&address);
                let data_dir = root.join(&slug).join("data");
                let run_dir = root.join(&slug).join("run");
                let log = self
                    .project
                    .kip_dir
                    .join("logs")
                    .join(format!("{slug}.log"));
                for dir in [
                    &root.join(&slug),
                    &run_dir,
                    &self.project.cache.join("templates"),
                ] {
                    std::fs::create_dir_all(dir).map_err(|source| ApplyError::Io {
                        action: "create",
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                if let Some(run_as) = &run_as {
                    crate::runas::chown_tree(&root.join(&slug), run_as)?;
                    crate::runas::chown_tree(&self.project.cache.join("templates"), run_as)?;
                    crate::runas::ensure_reachable(&toolchain.root, run_as)?;
                    crate::runas::ensure_reachable(&run_dir, run_as)?;
                }
                InstanceEnv {
                    address: address.clone(),
                    instance: instance.clone(),
                    toolchain,
                    data_dir,
                    run_dir,
                    log,
                    templates: self.project.cache.join("templates"),
                    run_as,
                    secrets: BTreeMap::new(),
                }
            }
        };
        env.instance = instance.clone();
        let fresh = !locked(state).instances.contains_key(&address);
        if fresh {
            self.report.step(&address, "provisioning");
            engine.provision(&mut env).await.map_err(engine_error)?;
            let mut guard = locked(state);
            save_instance(&mut guard, &env, change, BTreeMap::new());
            guard.write(&self.project.kip_dir)?;
        }

        // Spawn (or make sure it runs), then the settings. An instance that does not run (after `kip down`, a
        // crash, or a failed start) gets its configuration rewritten first, so a fixed setting takes effect. A
        // declared port that something else holds is refused before anything is spawned.
        self.client(supervisor).await?;
        let is_running = running(supervisor, &address).await;
        if self.sync_only && (!is_running || fresh || matches!(action, Action::Replace)) {
            return Err(ApplyError::NotRunning {
                address: address.clone(),
            });
        }
        if !is_running {
            if !fresh {
                engine.provision(&mut env).await.map_err(engine_error)?;
            }
            for port in engine.ports(&env) {
                if let Err(source) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                    return Err(ApplyError::PortTaken {
                        address: address.clone(),
                        port,
                        source,
                    });
                }
            }
        }
        let client = self.client(supervisor).await?;
        let specs = engine.spawn_specs(&env).map_err(engine_error)?;
        if !is_running {
            for spec in &specs {
                self.report.step(&address, "starting");
                client.start(spec.clone()).await?;
            }
        }
        if !env.secrets.contains_key("hba.secured") {
            engine.after_start(&env).await.map_err(engine_error)?;
            env.secrets.insert("hba.secured".into(), "true".into());
        } else if action == Action::Update && is_running {
            self.report.step(&address, "reconfiguring");
            if engine.reconfigure(&env).await.map_err(engine_error)? == Reconfigure::RestartNeeded
                && !self.sync_only
            {
                self.report.step(&address, "restarting");
                for spec in &specs {
                    client.stop(&spec.name).await?;
                    client.start(spec.clone()).await?;
                }
            }
        }
        {
            let mut guard = locked(state);
            let objects = guard
                .instances
                .get(&address)
                .map(|s| s.objects.clone())
                .unwrap_or_default();
            save_instance(&mut guard, &env, change, objects);
            guard.write(&self.project.kip_dir)?;
        }

        // Converge the objects, then record them.
        let prefix = format!("{address}.");
        let object_changes: Vec<Change> = plan
            .changes
            .iter()
            .filter(|c| c.address.starts_with(&prefix) && c.action != Action::Noop)
            .cloned()
            .collect();
        if !object_changes.is_empty() {
            self.report.step(
                &address,
                &format!("converging {} object(s)", object_changes.len()),
            );
            engine
                .converge(&mut env, &object_changes)
                .await
                .map_err(engine_error)?;
        }
        let mut guard = locked(state);
        let saved = guard.instances.get_mut(&address).expect("saved above");
        saved.secrets = env.secrets.clone();
        for change in plan
            .changes
            .iter()
            .filter(|c| c.address.starts_with(&prefix))
        {
            match (&change.action, &change.after) {
                (Action::Delete, _) => {
                    saved.objects.remove(&change.address);
                }
                (_, Some(after)) => {
                    saved.objects.insert(
                        change.address.clone(),
                        ObjectState {
                            kind: change.kind.clone(),
                            attributes: after.clone(),
                            prevent_destroy: change.prevent_destroy,
                        },
                    );
                }
                _ => {}
            }
        }
        guard.write(&self.project.kip_dir)?;
        self.report.step(&address, "ready");
        Ok(())
    }
}

/// Locks a mutex, taking the data of a poisoned one (a panicked worker cannot leave the state half-written: every
/// write is whole).
fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn collect_object_addresses(body: &crate::config::Body, into: &mut Vec<crate::config::Address>) {
    for block in &body.blocks {
        if let Some(address) = &block.address {
            into.push(address.clone());
        }
        collect_object_addresses(&block.body, into);
    }
}

fn save_instance(
    state: &mut State,
    env: &InstanceEnv,
    change: Option<&Change>,
    objects: BTreeMap<String, ObjectState>,
) {
    let attributes = change
        .and_then(|c| c.after.clone())
        .or_else(|| {
            state
                .instances
                .get(&env.address)
                .map(|s| s.attributes.clone())
        })
        .unwrap_or_default();
    state.instances.insert(
        env.address.clone(),
        InstanceState {
            engine: env.instance.engine.name.to_owned(),
            spec: env.toolchain.spec.clone(),
            version: env.toolchain.version.clone(),
            data_dir: env.data_dir.clone(),
            socket_dir: Some(env.run_dir.clone()),
            secrets: env.secrets.clone(),
            toolchain: env.toolchain.root.clone(),
            run_as: env.run_as.clone(),
            log: env.log.clone(),
            attributes,
            objects,
        },
    );
}

/// A file-system-safe name for an address: `postgres.main["eu"]` → `postgres.main-eu`.
pub fn slug(address: &str) -> String {
    let mut out = String::new();
    for c in address.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => out.push(c),
            '[' => out.push('-'),
            _ => {}
        }
    }
    out
}

fn render(error: &ApplyError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The environment of a declared instance that kip runs, for `kip url` / `kip env`.
pub fn instance_env(
    project: &Project,
    config: &Config,
    state: &State,
    address: &str,
) -> Option<InstanceEnv> {
    let instance = config.instances.iter().find(|i| {
        address == i.address.to_string() || address.starts_with(&format!("{}.", i.address))
    })?;
    let key = instance.address.to_string();
    let saved = state.instances.get(&key)?;
    Some(env_from_state(project, &key, instance, saved))
}
