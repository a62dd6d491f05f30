//! Apply: executes a plan, and nothing else.
//!
//! Instances the plan deletes go first, in reverse dependency order (a web server before the database it uses).
//! Then every instance the plan touches runs its [`lifecycle`] on its own thread, up to `parallelism` at once,
//! each released as soon as the instances it depends on are done ([`walk`]), or merely started where its engine says
//! that is enough ([`Engine::needs_only_started`], a process's `wait_for` with `condition = "started"`); a failure
//! (or a provider panic) skips what depends on it, reported once. The state is saved after every step, so a kip killed at any moment
//! leaves a state the next apply repairs.
//!
//! Values come from the plan. Two kinds are taken where they live instead: secrets (the plan holds only
//! fingerprints) and values the plan marked `(known after apply)`. Both are computed from the configuration —
//! which a saved plan proves unchanged by its digest — against the instances applied so far.

// Errors here carry resolve, supervisor and engine errors whole (with the log lines they quote); they are built once
// per failed instance, never in a loop, so boxing them would cost clarity for nothing.
#![allow(clippy::result_large_err)]

mod error;
pub mod lifecycle;
pub mod walk;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;

pub use error::{ApplyError, InstanceError, InstanceFailure};
pub use walk::{Failure, Outcome, Started, walk, walk_gated};

use crate::address::Address;
use crate::config::{Config, Instance};
use crate::desired::desired_nodes;
use crate::engine::{Engine, Engines, InstanceCtx, Reconfigure, Secrets};
use crate::graph::Graph;
use crate::lock::LockFile;
use crate::plan::{Action, Attributes, Change, Desired, Plan};
use crate::project::Project;
use crate::resolve::{Policy, Request, ResolveSettings, Resolver};
use crate::state::{InstanceState, Lifecycle, ObjectState, State};
use crate::supervise::{Supervise, Supervisors};

/// What apply reports as it goes.
pub trait Report: Send + Sync {
    fn step(&self, address: &Address, what: &str);
}

/// Everything apply needs.
pub struct Applier<'a> {
    pub project: &'a Project,
    pub config: &'a Config,
    pub graph: &'a Graph,
    pub engines: &'a Engines,
    pub supervisors: &'a dyn Supervisors,
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

/// Locks a mutex, taking the data of a poisoned one (a panicked worker cannot leave the state half-written: every
/// write is whole).
fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn runtime() -> Result<tokio::runtime::Runtime, InstanceError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| InstanceError::Io {
            action: "start a runtime for",
            path: Path::new("apply").to_path_buf(),
            source,
        })
}

/// Turns a walk's outcome into failures and skips by address.
fn collect<E>(
    outcome: Outcome<E>,
    addresses: &[Address],
    failures: &mut Vec<InstanceFailure>,
    skipped: &mut Vec<Address>,
    panicked: impl Fn(usize, String) -> E,
) where
    E: Into<InstanceError>,
{
    for (index, failure) in outcome.failed {
        let error = match failure {
            walk::Failure::Error(error) => error.into(),
            walk::Failure::Panic(message) => panicked(index, message).into(),
        };
        failures.push(InstanceFailure {
            address: addresses[index].clone(),
            error,
        });
    }
    skipped.extend(
        outcome
            .skipped
            .into_iter()
            .map(|index| addresses[index].clone()),
    );
}

/// The declared instances an apply may start while its plan still refreshes the others: new ones (not in
/// `state`) that stand alone (they depend on no other instance, and none depends on them), in a project that runs
/// instances to refresh, none of which protects itself or an object with `prevent_destroy` (so that the plan is
/// unlikely to refuse to go on after they started). A new instance's plan needs nothing refreshed.
pub fn ahead_of_refresh(config: &Config, graph: &Graph, state: &State) -> Vec<Address> {
    let protected = state.instances.values().any(|saved| {
        saved.prevent_destroy || saved.objects.values().any(|object| object.prevent_destroy)
    });
    if state.instances.is_empty() || protected {
        return Vec::new();
    }
    let dependencies: Vec<Vec<Address>> = config
        .instances
        .iter()
        .map(|instance| crate::desired::instance_dependencies(graph, instance))
        .collect();
    config
        .instances
        .iter()
        .zip(&dependencies)
        .filter(|(instance, depends_on)| {
            !state.instances.contains_key(&instance.address)
                && depends_on.is_empty()
                && !dependencies
                    .iter()
                    .any(|others| others.contains(&instance.address))
        })
        .map(|(instance, _)| instance.address.clone())
        .collect()
}

/// One apply in progress: the state and kip.lock its walks share, and what failed so far. [`Applier::begin`] makes
/// it, [`Applier::run`] walks a plan in it (more than one at once, from several threads, when the plans' instances
/// are apart), and [`Applier::finish`] makes the state durable and reports.
pub struct ApplyRun {
    state: Mutex<State>,
    serial_before: u64,
    lock: Mutex<LockFile>,
    failures: Mutex<Vec<InstanceFailure>>,
    skipped: Mutex<Vec<Address>>,
}

impl Applier<'_> {
    /// Executes `plan` against `state`, saving the state after every step.
    pub fn apply(&self, plan: &Plan, state: &mut State) -> Result<(), ApplyError> {
        let run = self.begin(std::mem::take(state))?;
        self.run(plan, &run);
        self.finish(run, state)
    }

    /// Starts an apply of `state`: reads kip.lock.
    pub fn begin(&self, state: State) -> Result<ApplyRun, ApplyError> {
        let lock = LockFile::read(&self.project.dir.join(crate::lock::LOCK_FILE))?;
        Ok(ApplyRun {
            serial_before: state.serial,
            state: Mutex::new(state),
            lock: Mutex::new(lock),
            failures: Mutex::new(Vec::new()),
            skipped: Mutex::new(Vec::new()),
        })
    }

    /// Executes `plan` in `run`: its deletions, then its instances in dependency order. Two runs of plans whose
    /// instances neither depend on each other nor share one may go on at once.
    pub fn run(&self, plan: &Plan, run: &ApplyRun) {
        let shared_state = &run.state;
        let shared_lock = &run.lock;
        let mut failures = Vec::new();
        let mut skipped = Vec::new();
        // Deletions of whole instances, dependents first.
        let deleted: Vec<Address> = plan
            .changes
            .iter()
            .filter(|change| change.is_instance() && change.action == Action::Delete)
            .map(|change| change.address.clone())
            .collect();
        let destroyer = Destroyer {
            project: self.project,
            engines: self.engines,
            supervisors: self.supervisors,
            report: self.report,
            parallelism: self.parallelism,
        };
        destroyer.walk(&deleted, shared_state, &mut failures, &mut skipped);

        // Every declared instance the plan has a change for (`--target` keeps only some), in dependency order.
        let instances: Vec<&Instance> = self
            .config
            .instances
            .iter()
            .filter(|instance| plan.change(&instance.address).is_some())
            .collect();
        let addresses: Vec<Address> = instances.iter().map(|i| i.address.clone()).collect();
        let position: BTreeMap<&Address, usize> =
            addresses.iter().enumerate().map(|(i, a)| (a, i)).collect();
        let waits: Vec<Vec<usize>> = instances
            .iter()
            .map(|instance| {
                crate::desired::instance_dependencies(self.graph, instance)
                    .iter()
                    .filter_map(|dependency| position.get(dependency).copied())
                    .collect()
            })
            .collect();
        // The dependencies an instance needs only started (its engine says which: a process's `wait_for` with
        // `condition = "started"`).
        let early: Vec<Vec<usize>> = instances
            .iter()
            .map(|instance| {
                let engine = self.engines.get(instance.engine.name);
                let attributes = plan
                    .change(&instance.address)
                    .and_then(|change| change.after.as_ref());
                match (engine, attributes) {
                    (Some(engine), Some(attributes)) => engine
                        .needs_only_started(attributes)
                        .iter()
                        .filter_map(|dependency| position.get(dependency).copied())
                        .collect(),
                    _ => Vec::new(),
                }
            })
            .collect();
        // An apply that will start something gets the supervisor going at once, beside the walk's first steps.
        let starts = plan.changes.iter().any(|change| {
            change.is_instance() && !matches!(change.action, Action::Delete | Action::Noop)
        });
        let outcome = std::thread::scope(|scope| {
            if starts {
                scope.spawn(|| {
                    if let Ok(runtime) = runtime() {
                        runtime.block_on(self.supervisors.warm_up());
                    }
                });
            }
            walk_gated(&waits, &early, self.parallelism, |index, started| {
                let runtime = runtime()?;
                runtime.block_on(self.apply_instance(
                    instances[index],
                    plan,
                    shared_state,
                    shared_lock,
                    started,
                ))
            })
        });
        collect(
            outcome,
            &addresses,
            &mut failures,
            &mut skipped,
            |index, message| InstanceError::Panicked {
                engine: instances[index].engine.name.to_owned(),
                message,
            },
        );

        locked(&run.failures).extend(failures);
        locked(&run.skipped).extend(skipped);
    }

    /// Ends `run`: the state, written by the walks without fsyncs, made durable once, and kip.lock, which the walks
    /// wrote as they added pins; the state handed back in `state`.
    pub fn finish(&self, run: ApplyRun, state: &mut State) -> Result<(), ApplyError> {
        *state = run
            .state
            .into_inner()
            .unwrap_or_else(|poison| poison.into_inner());
        // The walk's steps wrote the state without fsyncs ([`State::checkpoint`]); durable once, now.
        if state.serial != run.serial_before {
            State::sync(&self.project.kip_dir)?;
        }
        // The account the project took from the spares, recorded without an fsync on the way to ready.
        crate::runas::sync_recorded_accounts()?;
        // kip.lock's fsyncs, owed since a walk added a pin (`resolve_toolchain`), when no state sync above waited
        // for them (an instance that failed before its first state write). Every other file a walk writes follows
        // a state write, so the sync above has waited for it; with nothing owed this returns at once.
        crate::fsutil::settle().map_err(|source| crate::lock::LockError::Write {
            path: self.project.dir.join(crate::lock::LOCK_FILE),
            source,
        })?;
        let failures = run
            .failures
            .into_inner()
            .unwrap_or_else(|poison| poison.into_inner());
        let skipped = run
            .skipped
            .into_inner()
            .unwrap_or_else(|poison| poison.into_inner());
        if failures.is_empty() && skipped.is_empty() {
            Ok(())
        } else {
            Err(ApplyError::Failed { failures, skipped })
        }
    }

    /// The plan's change with real values: secrets and values known only now, from the configuration evaluated
    /// against what is applied. A known, non-secret value the configuration no longer gives means the plan is
    /// stale.
    fn resolve_change(
        change: &Change,
        desired: &BTreeMap<&Address, &Desired>,
        saved: Option<&Attributes>,
    ) -> Result<Change, InstanceError> {
        let mut resolved = change.clone();
        if let (Some(after), Some(now)) = (resolved.after.as_mut(), desired.get(&change.address)) {
            for name in change.sensitive.iter().chain(&change.after_unknown) {
                if after.contains_key(name) {
                    let value = now.attributes.get(name).cloned().ok_or_else(|| {
                        InstanceError::MissingValue {
                            attribute: name.clone(),
                        }
                    })?;
                    after.insert(name.clone(), value);
                }
            }
        } else if resolved.after.is_some() {
            return Err(InstanceError::MissingValue {
                attribute: "(every attribute)".to_owned(),
            });
        }
        if let (Some(before), Some(saved)) = (resolved.before.as_mut(), saved) {
            for name in &change.sensitive {
                if let (Some(slot), Some(value)) = (before.get_mut(name), saved.get(name)) {
                    *slot = value.clone();
                }
            }
        }
        resolved.after_unknown.clear();
        Ok(resolved)
    }

    /// The verified toolchain of a versioned instance (pinned in kip.lock), or `None` for an unversioned one.
    async fn resolve_toolchain(
        &self,
        instance: &Instance,
        shared_lock: &Mutex<LockFile>,
    ) -> Result<Option<crate::resolve::Toolchain>, InstanceError> {
        let address = &instance.address;
        Ok(match &instance.version {
            Some(spec) if instance.engine.versioned => {
                let request = Request {
                    engine: instance.engine.name.to_owned(),
                    spec: spec.clone(),
                };
                if self.locked
                    && locked(shared_lock)
                        .pin(&request.engine, &request.spec_text())
                        .is_none()
                {
                    return Err(InstanceError::Locked(format!(
                        "{} \"{}\"",
                        request.engine,
                        request.spec_text()
                    )));
                }
                self.report.step(address, "resolving");
                // Each instance resolves with its own resolver (the store's file locks keep concurrent downloads
                // of one archive to one), then merges the pins it added.
                let mut lock = locked(shared_lock).clone();
                let mut resolver = Resolver::new(self.resolve.clone(), self.progress);
                let toolchain = resolver
                    .resolve(&request, &mut lock, &Policy::UseLock)
                    .await?;
                // kip.lock is written as soon as a pin is added, before the engine that uses it starts, its
                // fsyncs on a thread: they are not on the way to ready, and the state's durable write at the end
                // of the apply waits for them. Written under the mutex, so the last file holds every pin.
                let mut shared = locked(shared_lock);
                let adds = lock
                    .pins
                    .iter()
                    .any(|(key, pin)| shared.pins.get(key) != Some(pin));
                if adds {
                    shared.pins.extend(lock.pins);
                    shared.write_soon(&self.project.dir.join(crate::lock::LOCK_FILE))?;
                }
                Some(toolchain)
            }
            _ => None,
        })
    }

    /// Resolves the toolchain (for versioned engines) and lays out a new instance's directories.
    async fn new_ctx(
        &self,
        engine: &dyn Engine,
        instance: &Instance,
        attributes: Attributes,
        shared_lock: &Mutex<LockFile>,
    ) -> Result<InstanceCtx, InstanceError> {
        let address = &instance.address;
        let toolchain = self.resolve_toolchain(instance, shared_lock).await?;
        let run_as = if engine.runs_as_caller() && instance.run_as.is_none() {
            None
        } else {
            let own = instance.run_as.is_none() && self.run_as_env.is_none();
            let spares = crate::runas::SpareAccounts::in_cache(&self.project.cache);
            if own {
                crate::runas::take_project_account(&self.project.dir, &spares)?;
            }
            let account = crate::runas::project_account(&self.project.dir);
            let run_as = crate::runas::resolve_run_as(
                instance.run_as.as_deref(),
                self.run_as_env.as_deref(),
                &account,
            )?;
            // What `kip cache prune` reads to delete the account once this project is gone without a destroy.
            if own && run_as.is_some() {
                spares.note_user(&account, &self.project.dir);
            }
            run_as
        };
        let dirs = self.project.instance_dirs(address, run_as.as_ref());
        let templates = self.project.templates();
        for dir in [&dirs.dir, &dirs.run_dir, &dirs.log_dir, &templates] {
            std::fs::create_dir_all(dir).map_err(|source| InstanceError::Io {
                action: "create",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        // The instance's data, sockets and logs are the engine account's and the caller's only (root reaches them
        // anyway): another local user cannot even reach a socket to knock on.
        for dir in [&dirs.dir, &dirs.run_dir, &dirs.log_dir] {
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|source| InstanceError::Io {
                    action: "set the mode of",
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        if let Some(run_as) = &run_as {
            crate::runas::chown_tree(&dirs.dir, run_as)?;
            crate::runas::chown_tree(&dirs.log_dir, run_as)?;
            if let Some(toolchain) = &toolchain {
                crate::runas::ensure_reachable(&toolchain.root, run_as)?;
            }
            crate::runas::ensure_reachable(&dirs.run_dir, run_as)?;
        }
        Ok(InstanceCtx {
            address: address.clone(),
            attributes,
            objects: BTreeMap::new(),
            toolchain,
            data_dir: dirs.data_dir,
            run_dir: dirs.run_dir,
            log_dir: dirs.log_dir,
            project_dir: self.project.dir.clone(),
            templates,
            run_as,
            secrets: Secrets::default(),
            ports: BTreeMap::new(),
            initialized: false,
            provision_unfinished: false,
            session: Default::default(),
        })
    }

    /// Returns once a process of the instance `address` was spawned (it has a pid), as a second connection to the
    /// supervisor sees it; never, when the supervisor cannot be asked.
    async fn spawned(&self, address: &Address) {
        let mut supervisor = self.supervisors.connect();
        loop {
            match supervisor.status().await {
                Ok(statuses) => {
                    // A pid is this start's: a process that ran before and stopped has none (a job that exits
                    // before it is seen is released by its finish instead).
                    let spawned = lifecycle::processes_of(&statuses, address)
                        .iter()
                        .any(|status| status.pid.is_some());
                    if spawned {
                        return;
                    }
                }
                Err(error) => {
                    tracing::debug!("watching {address} start: {error}");
                    return std::future::pending().await;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Writes the instance's entry (keeping its objects) and the state file.
    fn save(
        &self,
        state: &Mutex<State>,
        ctx: &InstanceCtx,
        engine: &dyn Engine,
        instance_change: Option<&Change>,
        lifecycle: &Lifecycle,
    ) -> Result<(), InstanceError> {
        let mut guard = locked(state);
        let previous = guard.instances.remove(&ctx.address);
        let dir = previous.as_ref().map(|p| p.dir.clone()).unwrap_or_else(|| {
            ctx.data_dir
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        });
        let entry = InstanceState {
            engine: engine.name().to_owned(),
            spec: ctx.toolchain.as_ref().map(|t| t.spec.clone()),
            version: ctx.toolchain.as_ref().map(|t| t.version.clone()),
            toolchain: ctx.toolchain.as_ref().map(|t| t.root.clone()),
            dir,
            data_dir: ctx.data_dir.clone(),
            run_dir: ctx.run_dir.clone(),
            log_dir: ctx.log_dir.clone(),
            run_as: ctx.run_as.clone(),
            secrets: ctx.secrets.0.clone(),
            ports: ctx.ports.clone(),
            attributes: ctx.attributes.clone(),
            sensitive: instance_change
                .map(|c| c.sensitive.clone())
                .or_else(|| previous.as_ref().map(|p| p.sensitive.clone()))
                .unwrap_or_default(),
            objects: previous
                .as_ref()
                .map(|p| p.objects.clone())
                .unwrap_or_default(),
            lifecycle: lifecycle.clone(),
            depends_on: instance_change
                .map(|c| c.depends_on.clone())
                .or_else(|| previous.as_ref().map(|p| p.depends_on.clone()))
                .unwrap_or_default(),
            prevent_destroy: instance_change
                .map(|c| c.prevent_destroy)
                .or_else(|| previous.as_ref().map(|p| p.prevent_destroy))
                .unwrap_or_default(),
        };
        // Nothing new to record (a step that changed no flag, secret or attribute): the state on disk says it
        // already, and each write costs an fsync on the way to ready.
        let unchanged = previous.as_ref() == Some(&entry);
        guard.instances.insert(ctx.address.clone(), entry);
        if !unchanged {
            guard.checkpoint(&self.project.kip_dir)?;
        }
        Ok(())
    }

    /// [`lifecycle::start_on_free_ports`] for apply: ports kip chose that moved are in the state before anything
    /// runs on them, and reported. Answers the specs the processes run with.
    #[allow(clippy::too_many_arguments)]
    async fn start_on_free_ports(
        &self,
        engine: &dyn Engine,
        ctx: &mut InstanceCtx,
        statuses: &[crate::supervisor::ProcessStatus],
        supervisor: &mut dyn Supervise,
        state: &Mutex<State>,
        instance_change: Option<&Change>,
        lifecycle: &Lifecycle,
    ) -> Result<Vec<crate::engine::SpawnSpec>, InstanceError> {
        let mut save =
            |ctx: &InstanceCtx| self.save(state, ctx, engine, instance_change, lifecycle);
        let (specs, moved) =
            lifecycle::start_on_free_ports(engine, ctx, statuses, supervisor, &mut save).await?;
        for port in &moved {
            self.report.step(&ctx.address, &port.to_string());
        }
        Ok(specs)
    }

    async fn apply_instance(
        &self,
        instance: &Instance,
        plan: &Plan,
        state: &Mutex<State>,
        shared_lock: &Mutex<LockFile>,
        started_signal: &Started<'_>,
    ) -> Result<(), InstanceError> {
        let address = &instance.address;
        let engine = self
            .engines
            .get(instance.engine.name)
            .ok_or_else(|| InstanceError::Unsupported {
                engine: instance.engine.name.to_owned(),
            })?
            .as_ref();
        let mut supervisor = self.supervisors.connect();
        let supervisor: &mut dyn Supervise = supervisor.as_mut();
        let change = plan.change(address);
        let action = change.map_or(Action::Noop, |c| c.action);
        if self.sync_only && matches!(action, Action::Create | Action::Replace) {
            return Err(InstanceError::NotRunning);
        }

        // Real values, now that what this instance reads is applied.
        let desired = {
            let guard = locked(state);
            let dependencies = crate::desired::instance_dependencies(self.graph, instance);
            let scope = lifecycle::scope_from_state(self.project, self.engines, &guard, |a| {
                dependencies.contains(a)
            });
            drop(guard);
            desired_nodes(self.config, self.graph, instance, engine, &scope)?
        };
        let by_address: BTreeMap<&Address, &Desired> =
            desired.iter().map(|node| (&node.address, node)).collect();

        if action == Action::Replace {
            let saved = locked(state).instances.get(address).cloned();
            if let Some(saved) = saved {
                self.report.step(address, "replacing");
                lifecycle::destroy(supervisor, Some(engine), self.project, address, &saved).await?;
                let mut guard = locked(state);
                guard.instances.remove(address);
                guard.checkpoint(&self.project.kip_dir)?;
            }
        }
        let saved = locked(state).instances.get(address).cloned();
        let instance_change = match change {
            Some(change) => Some(Self::resolve_change(
                change,
                &by_address,
                saved.as_ref().map(|s| &s.attributes),
            )?),
            None => None,
        };
        // An update planned only because a value read from another instance was unknown at plan time, and that
        // turned out the same, changes nothing: the instance is not restarted (and a job not run again).
        let action = match &instance_change {
            Some(resolved)
                if action == Action::Update
                    && saved.is_some()
                    && resolved.changed_attributes().is_empty() =>
            {
                Action::Noop
            }
            _ => action,
        };
        let attributes = instance_change
            .as_ref()
            .and_then(|c| c.after.clone())
            .or_else(|| saved.as_ref().map(|s| s.attributes.clone()))
            .unwrap_or_default();
        let fresh = saved.is_none();
        let mut lifecycle = saved
            .as_ref()
            .map(|s| s.lifecycle.clone())
            .unwrap_or_default();
        let mut ctx = match &saved {
            Some(saved) => {
                let mut ctx = lifecycle::ctx_without_objects(self.project, address, saved);
                ctx.attributes = attributes;
                ctx
            }
            None => {
                if self.sync_only {
                    return Err(InstanceError::NotRunning);
                }
                self.new_ctx(engine, instance, attributes, shared_lock)
                    .await?
            }
        };
        ctx.objects = lifecycle::objects_view(&desired);
        // A first provisioning, or one a killed kip left unfinished: done before anything else looks at the
        // instance (its processes' specs need the ports it assigns).
        let first_provision = fresh || lifecycle.provisioning;
        if first_provision {
            // In the state before anything is made on disk: a provisioning that fails half-way leaves an instance
            // the next plan knows (and replaces, when what it was made with changed) and `kip destroy` removes,
            // never a directory nobody knows of. Marked unfinished until what it generated is saved.
            lifecycle.provisioning = true;
            self.save(state, &ctx, engine, instance_change.as_ref(), &lifecycle)?;
            self.report.step(address, "provisioning");
            engine.provision(&mut ctx).await?;
            lifecycle.provisioning = false;
            ctx.provision_unfinished = false;
            // An engine with no after-start step has nothing to finish after the first start: the instance is
            // initialized with this save, and nothing is written between its start and ready.
            if !lifecycle.initialized && engine.after_start(&mut ctx).is_none() {
                lifecycle.initialized = true;
                ctx.initialized = true;
            }
            self.save(state, &ctx, engine, instance_change.as_ref(), &lifecycle)?;
        }

        // Spawn (or make sure it runs), or reconfigure what runs. An instance that does not run (after `kip down`,
        // a crash, or a failed start) gets its configuration rewritten first, so a fixed setting takes effect.
        // A new release of the same major (a new major replaces the instance): resolved here, and the processes
        // restart on it below.
        let new_release = action == Action::Update
            && !fresh
            && instance_change.as_ref().is_some_and(|c| {
                c.changed_attributes()
                    .iter()
                    .any(|a| a == crate::desired::VERSION)
            });
        if new_release {
            ctx.toolchain = self.resolve_toolchain(instance, shared_lock).await?;
            if let (Some(run_as), Some(toolchain)) = (&ctx.run_as, &ctx.toolchain) {
                crate::runas::ensure_reachable(&toolchain.root, run_as)?;
            }
        }
        let mut specs = engine.spawn_specs(&ctx)?;
        let statuses = supervisor.status().await?;
        let running = lifecycle::all_ready(&statuses, &specs);
        let jobs = specs.iter().any(|spec| spec.job);
        if action == Action::Update {
            // A job runs again when what it was run with changed.
            lifecycle.succeeded = false;
        }
        let mut started = false;
        if running || jobs && lifecycle.succeeded {
            started_signal.signal();
        } else {
            if self.sync_only {
                return Err(InstanceError::NotRunning);
            }
            if !first_provision {
                engine.provision(&mut ctx).await?;
                // What provisioning generated (a password it set offline) is in the state before any process
                // runs with it: a kip killed during the start leaves the next one able to get in.
                self.save(state, &ctx, engine, instance_change.as_ref(), &lifecycle)?;
            }
            self.report
                .step(address, if jobs { "running" } else { "starting" });
            let start = self.start_on_free_ports(
                engine,
                &mut ctx,
                &statuses,
                supervisor,
                state,
                instance_change.as_ref(),
                &lifecycle,
            );
            specs = if started_signal.wanted() {
                // Released as soon as a process of the instance was spawned, while the start goes on.
                let mut start = std::pin::pin!(start);
                tokio::select! {
                    result = &mut start => result?,
                    () = self.spawned(address) => {
                        started_signal.signal();
                        start.await?
                    }
                }
            } else {
                start.await?
            };
            if jobs {
                lifecycle.succeeded = true;
            } else {
                engine.ready(&ctx).await?;
            }
            started = true;
        }
        if !lifecycle.initialized && !jobs {
            if let Some(step) = engine.after_start(&mut ctx) {
                step.await?;
            }
            lifecycle.initialized = true;
            ctx.initialized = true;
            self.save(state, &ctx, engine, instance_change.as_ref(), &lifecycle)?;
        }
        // A changed instance that runs (or was just started with its new configuration) hears about the change:
        // what provision could not do on disk (a new password, a reload, a restart).
        if action == Action::Update && !fresh && !jobs {
            self.report.step(address, "reconfiguring");
            if !started {
                engine.provision(&mut ctx).await?;
            }
            let change = instance_change.as_ref().expect("an update has a change");
            let mut needed = engine.reconfigure(&mut ctx, change).await?;
            if new_release || change.restarts() {
                needed = Reconfigure::Restart;
            }
            match needed {
                // Just started with its new configuration: nothing more to reload or restart.
                Reconfigure::Reload | Reconfigure::Restart if started => {}
                Reconfigure::Done => {}
                Reconfigure::Reload => {
                    for spec in specs.iter().filter(|spec| spec.reload.is_some()) {
                        supervisor.reload(&spec.name).await?;
                    }
                }
                Reconfigure::Restart if self.sync_only => {}
                Reconfigure::Restart => {
                    self.report.step(address, "restarting");
                    lifecycle::stop(supervisor, address).await?;
                    self.start_on_free_ports(
                        engine,
                        &mut ctx,
                        &[],
                        supervisor,
                        state,
                        instance_change.as_ref(),
                        &lifecycle,
                    )
                    .await?;
                    engine.ready(&ctx).await?;
                }
            }
        }
        self.save(state, &ctx, engine, instance_change.as_ref(), &lifecycle)?;

        // Converge the objects: creates and updates in plan order (parents first), then deletions, deepest first.
        let mut changes: Vec<Change> = Vec::new();
        let mut deletions: Vec<Change> = Vec::new();
        for change in plan
            .changes
            .iter()
            .filter(|c| !c.is_instance() && c.address.is_within(address))
        {
            let saved_object = saved
                .as_ref()
                .and_then(|s| s.objects.get(&change.address))
                .map(|o| &o.attributes);
            let resolved = Self::resolve_change(change, &by_address, saved_object)?;
            match change.action {
                Action::Delete => deletions.push(resolved),
                _ => changes.push(resolved),
            }
        }
        deletions.sort_by_key(|c| std::cmp::Reverse(c.address.path.len()));
        let converging: Vec<Change> = changes
            .iter()
            .filter(|c| c.action != Action::Noop)
            .cloned()
            .chain(deletions.iter().cloned())
            .collect();
        if !converging.is_empty() {
            self.report.step(
                address,
                &format!("converging {} object(s)", converging.len()),
            );
            engine.converge(&mut ctx, &converging).await?;
        }
        let mut guard = locked(state);
        let saved = guard
            .instances
            .get_mut(address)
            .expect("saved above, and only this worker touches this instance");
        let before = saved.clone();
        saved.secrets = ctx.secrets.0.clone();
        saved.ports = ctx.ports.clone();
        for change in &deletions {
            saved.objects.remove(&change.address);
        }
        for change in &changes {
            if let Some(after) = &change.after {
                saved.objects.insert(
                    change.address.clone(),
                    ObjectState {
                        kind: change.kind.clone(),
                        attributes: after.clone(),
                        sensitive: change.sensitive.clone(),
                        prevent_destroy: change.prevent_destroy,
                    },
                );
            }
        }
        if guard.instances.get(address) != Some(&before) {
            guard.checkpoint(&self.project.kip_dir)?;
        }
        drop(guard);
        self.report.step(address, "ready");
        Ok(())
    }
}

/// Destroys instances: stops them, removes their data, drops them from the state, dependents first.
pub struct Destroyer<'a> {
    pub project: &'a Project,
    /// Asked to release what an instance's processes left outside its directories ([`Engine::release`]).
    pub engines: &'a Engines,
    pub supervisors: &'a dyn Supervisors,
    pub report: &'a dyn Report,
    pub parallelism: usize,
}

impl Destroyer<'_> {
    /// Destroys `addresses` (instances in `state`), each after every one of them that depends on it.
    pub fn destroy(&self, addresses: &[Address], state: &mut State) -> Result<(), ApplyError> {
        let shared_state = Mutex::new(std::mem::take(state));
        let mut failures = Vec::new();
        let mut skipped = Vec::new();
        self.walk(addresses, &shared_state, &mut failures, &mut skipped);
        *state = shared_state
            .into_inner()
            .unwrap_or_else(|poison| poison.into_inner());
        if failures.is_empty() && skipped.is_empty() {
            Ok(())
        } else {
            Err(ApplyError::Failed { failures, skipped })
        }
    }

    fn walk(
        &self,
        addresses: &[Address],
        state: &Mutex<State>,
        failures: &mut Vec<InstanceFailure>,
        skipped: &mut Vec<Address>,
    ) {
        let depends_on: Vec<Vec<Address>> = {
            let guard = locked(state);
            addresses
                .iter()
                .map(|address| {
                    guard
                        .instances
                        .get(address)
                        .map(|saved| saved.depends_on.clone())
                        .unwrap_or_default()
                })
                .collect()
        };
        // An instance waits for every instance being destroyed that depends on it.
        let waits: Vec<Vec<usize>> = addresses
            .iter()
            .map(|address| {
                depends_on
                    .iter()
                    .enumerate()
                    .filter(|(_, dependencies)| dependencies.contains(address))
                    .map(|(index, _)| index)
                    .collect()
            })
            .collect();
        let outcome = walk(&waits, self.parallelism, |index| {
            let runtime = runtime()?;
            runtime.block_on(self.destroy_one(&addresses[index], state))
        });
        let engines: Vec<String> = {
            let guard = locked(state);
            addresses
                .iter()
                .map(|a| {
                    guard
                        .instances
                        .get(a)
                        .map(|s| s.engine.clone())
                        .unwrap_or_default()
                })
                .collect()
        };
        collect(outcome, addresses, failures, skipped, |index, message| {
            InstanceError::Panicked {
                engine: engines[index].clone(),
                message,
            }
        });
    }

    async fn destroy_one(
        &self,
        address: &Address,
        state: &Mutex<State>,
    ) -> Result<(), InstanceError> {
        let Some(saved) = locked(state).instances.get(address).cloned() else {
            return Ok(());
        };
        self.report.step(address, "destroying");
        let engine = self
            .engines
            .get(&address.engine)
            .map(|engine| engine.as_ref());
        let mut supervisor = self.supervisors.connect();
        lifecycle::destroy(supervisor.as_mut(), engine, self.project, address, &saved).await?;
        let mut guard = locked(state);
        guard.instances.remove(address);
        guard.write(&self.project.kip_dir)?;
        drop(guard);
        self.report.step(address, "destroyed");
        Ok(())
    }
}

/// The addresses of the instances that `address` (an instance or an object) belongs to or lies below, among
/// `known`: for `kip url`, `kip destroy ADDR`.
pub fn owning_instance<'k>(
    known: impl IntoIterator<Item = &'k Address>,
    address: &Address,
) -> Option<&'k Address> {
    known
        .into_iter()
        .find(|instance| address.is_within(instance) && instance.is_instance())
}

/// The set of instances `address` depends on, from the state (for ordering deletions and stops).
pub fn state_dependencies(state: &State) -> BTreeMap<Address, BTreeSet<Address>> {
    state
        .instances
        .iter()
        .map(|(address, saved)| {
            (
                address.clone(),
                saved.depends_on.iter().cloned().collect::<BTreeSet<_>>(),
            )
        })
        .collect()
}
