//! The instance lifecycle, the same for every engine: resolve → provision → spawn → ready → after-start →
//! converge → prune, and stop / destroy. [`super::Applier`] drives it for a plan; `kip up`, `kip down` and
//! `kip destroy` use the steps here directly. Everything an engine does goes through the [`Engine`] trait, and
//! everything a process does through a [`Supervise`] connection, so a fake engine on an in-memory supervisor
//! exercises exactly this code.

// Errors here carry resolve, supervisor and engine errors whole (with the log lines they quote); they are built once
// per failed instance, never in a loop, so boxing them would cost clarity for nothing.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::time::Duration;

use crate::address::Address;
use crate::engine::{Engine, Engines, Exports, InstanceCtx, ObjectView, Secrets, SpawnSpec};
use crate::project::Project;
use crate::references::Scope;
use crate::resolve::{Toolchain, ToolchainSource};
use crate::state::{InstanceState, State};
use crate::supervise::Supervise;
use crate::supervisor::{ProcessState, ProcessStatus};

use super::InstanceError;

/// How long apply waits for a job (a migration) to finish.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(3600);

/// The context of an applied instance, from its state, with its objects as last applied.
pub fn ctx_from_state(project: &Project, address: &Address, saved: &InstanceState) -> InstanceCtx {
    let mut ctx = ctx_without_objects(project, address, saved);
    ctx.objects = saved
        .objects
        .iter()
        .map(|(address, object)| {
            (
                address.clone(),
                ObjectView {
                    kind: object.kind.clone(),
                    attributes: object.attributes.clone(),
                },
            )
        })
        .collect();
    ctx
}

/// The context of an applied instance, from its state, without its objects: for the steps that are handed the
/// objects another way (refresh gets them as `managed`; apply puts in the desired ones). Copying every object's
/// attributes from the state took a tenth of a no-op plan of 1,000 roles.
pub fn ctx_without_objects<O>(
    project: &Project,
    address: &Address,
    saved: &InstanceState<O>,
) -> InstanceCtx {
    let toolchain = match (&saved.toolchain, &saved.spec, &saved.version) {
        (Some(root), Some(spec), Some(version)) => Some(Toolchain {
            engine: saved.engine.clone(),
            spec: spec.clone(),
            version: version.clone(),
            bin: root.join("bin"),
            root: root.clone(),
            // The store names each toolchain after its archive's hash (`sha256-HEX`); a BINDIR toolchain has none.
            source: match root
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
        }),
        _ => None,
    };
    InstanceCtx {
        address: address.clone(),
        attributes: saved.attributes.clone(),
        objects: BTreeMap::new(),
        toolchain,
        data_dir: saved.data_dir.clone(),
        run_dir: saved.run_dir.clone(),
        log_dir: saved.log_dir.clone(),
        project_dir: project.dir.clone(),
        templates: project.templates(),
        run_as: saved.run_as.clone(),
        secrets: Secrets(saved.secrets.clone()),
        ports: saved.ports.clone(),
        initialized: saved.lifecycle.initialized,
        provision_unfinished: saved.lifecycle.provisioning,
        session: Default::default(),
    }
}

/// The exports of an applied instance and of its objects that export anything, for references.
pub fn instance_exports(
    engine: &dyn Engine,
    ctx: &InstanceCtx,
) -> (Exports, Vec<(Address, Exports)>) {
    let exports = engine.exports(ctx, None).unwrap_or_default();
    let mut objects = Vec::new();
    for object in ctx.objects.keys() {
        let exports_something = object
            .path
            .iter()
            .try_fold(&engine.schema().instance, |schema, step| {
                schema.block(&step.kind)
            })
            .is_some_and(|schema| !schema.exports.is_empty());
        if exports_something && let Ok(exports) = engine.exports(ctx, Some(object)) {
            objects.push((object.clone(), exports));
        }
    }
    (exports, objects)
}

/// A scope of the applied instances for which `include` is true.
pub fn scope_from_state(
    project: &Project,
    engines: &Engines,
    state: &State,
    include: impl Fn(&Address) -> bool,
) -> Scope {
    let mut scope = Scope::new();
    for (address, saved) in &state.instances {
        if !include(address) {
            continue;
        }
        let Some(engine) = engines.get(&saved.engine) else {
            continue;
        };
        let ctx = ctx_from_state(project, address, saved);
        let (exports, objects) = instance_exports(engine.as_ref(), &ctx);
        scope.add_instance(address, exports, objects);
    }
    scope
}

/// Whether a process of the instance `address` has this supervisor name.
pub fn belongs_to(name: &str, address: &Address) -> bool {
    let address = address.to_string();
    name == address
        || name
            .strip_prefix(address.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The supervised processes of an instance, in start order.
pub fn processes_of<'s>(
    statuses: &'s [ProcessStatus],
    address: &Address,
) -> Vec<&'s ProcessStatus> {
    statuses
        .iter()
        .filter(|status| belongs_to(&status.name, address))
        .collect()
}

/// Whether every server process of `specs` runs ready (an instance of jobs only never "runs").
pub fn all_ready(statuses: &[ProcessStatus], specs: &[SpawnSpec]) -> bool {
    let servers: Vec<&SpawnSpec> = specs.iter().filter(|spec| !spec.job).collect();
    !servers.is_empty()
        && servers.iter().all(|spec| {
            statuses
                .iter()
                .any(|status| status.name == spec.name && status.state == ProcessState::Ready)
        })
}

/// A port kip chose for an instance (kept in state) that another program took, and the one the instance got
/// instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedPort {
    /// The name the port is kept under (the listener it is for).
    pub name: String,
    pub from: u16,
    pub to: u16,
}

impl std::fmt::Display for MovedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "port {} (its {} listener), which kip chose, is taken by another program; it listens on {} now",
            self.from, self.name, self.to
        )
    }
}

/// How many times a start gives up taken ports kip chose for new ones before it fails.
const PORT_TRIES: usize = 3;

/// Starts the provisioned instance's processes on ports that are free; answers the specs they run with and the
/// ports that moved.
///
/// - A port its configuration declares ([`Engine::ports`]) that something else holds refuses the start: the user
///   chose it, and only they can choose another.
/// - A port kip chose (kept in the context's `ports`) that something else holds, or that the engine cannot use
///   ([`Engine::port_unusable`]), is given up for a new free one: one taken while the instance did not run (an
///   outgoing connection may get any port of the ephemeral range, another kip's instance a port this one had),
///   or between this check and the engine's bind (another kip choosing at the same moment). The instance is then
///   provisioned again, so that its configuration names the new port, `moved` is called (to save the state before
///   anything runs on the new port), and the start is tried again, at most [`PORT_TRIES`] times.
///
/// Nothing is checked while a process of the instance itself is live in the supervisor (`statuses`): still
/// starting after a kip that was killed mid-apply, or restarting after a crash, it holds its own ports, and the
/// start joins (or replaces) that run instead of racing it.
pub async fn start_on_free_ports(
    engine: &dyn Engine,
    ctx: &mut InstanceCtx,
    statuses: &[ProcessStatus],
    supervisor: &mut dyn Supervise,
    moved: &mut dyn FnMut(&InstanceCtx) -> Result<(), InstanceError>,
) -> Result<(Vec<SpawnSpec>, Vec<MovedPort>), InstanceError> {
    let live = processes_of(statuses, &ctx.address)
        .iter()
        .any(|status| status.state.is_live());
    let mut all_moved = Vec::new();
    let mut tries = 0;
    loop {
        let mut failed = None;
        let mut taken = if live {
            Vec::new()
        } else {
            check_declared_ports(engine, ctx)?;
            taken_chosen_ports(engine, ctx)
        };
        if taken.is_empty() {
            let specs = engine.spawn_specs(ctx)?;
            let error = match start(supervisor, &specs).await {
                Ok(()) => return Ok((specs, all_moved)),
                Err(error) if live => return Err(error),
                Err(error) => error,
            };
            // The engine could not bind a port that was free a moment ago if another program has it now.
            taken = taken_chosen_ports(engine, ctx);
            if taken.is_empty() {
                return Err(error);
            }
            tracing::warn!(instance = %ctx.address, "the start failed and a port kip chose is taken: {error}");
            failed = Some(error);
        }
        tries += 1;
        if tries > PORT_TRIES {
            // The start's own error when there was one: it quotes the engine.
            return Err(failed.unwrap_or_else(|| chosen_port_taken(&taken)));
        }
        all_moved.extend(choose_again(engine, ctx, &taken).await?);
        moved(ctx)?;
    }
}

/// Refuses a declared port something else holds (the ones kip chose are [`taken_chosen_ports`]'s).
fn check_declared_ports(engine: &dyn Engine, ctx: &InstanceCtx) -> Result<(), InstanceError> {
    for port in engine.ports(ctx) {
        if ctx.ports.values().any(|chosen| *chosen == port) {
            continue;
        }
        if let Err(source) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Err(InstanceError::PortTaken { port, source });
        }
    }
    Ok(())
}

/// The ports kip chose for the instance that something else holds now (or keeps it from using: see
/// [`Engine::port_unusable`]), with their names.
fn taken_chosen_ports(engine: &dyn Engine, ctx: &InstanceCtx) -> Vec<(String, u16)> {
    ctx.ports
        .iter()
        .filter(|(name, port)| {
            std::net::TcpListener::bind(("127.0.0.1", **port)).is_err()
                || engine.port_unusable(ctx, name, **port)
        })
        .map(|(name, port)| (name.clone(), *port))
        .collect()
}

/// Forgets the `taken` ports and provisions the instance again, which chooses new ones.
async fn choose_again(
    engine: &dyn Engine,
    ctx: &mut InstanceCtx,
    taken: &[(String, u16)],
) -> Result<Vec<MovedPort>, InstanceError> {
    for (name, _) in taken {
        ctx.ports.remove(name);
    }
    engine.provision(ctx).await?;
    taken
        .iter()
        .map(|(name, from)| match ctx.ports.get(name) {
            Some(to) => {
                let moved = MovedPort {
                    name: name.clone(),
                    from: *from,
                    to: *to,
                };
                tracing::warn!(instance = %ctx.address, "{moved}");
                Ok(moved)
            }
            None => Err(chosen_port_taken(taken)),
        })
        .collect()
}

fn chosen_port_taken(taken: &[(String, u16)]) -> InstanceError {
    let (name, port) = taken[0].clone();
    InstanceError::ChosenPortTaken { name, port }
}

/// Starts the instance's processes in order. A job is waited for, and fails the start unless it exits 0.
pub async fn start(
    supervisor: &mut dyn Supervise,
    specs: &[SpawnSpec],
) -> Result<(), InstanceError> {
    for spec in specs {
        // Where this run's output starts in the log, for the lines a failure quotes.
        let offset = std::fs::metadata(&spec.log).map_or(0, |metadata| metadata.len());
        supervisor.start(spec.clone()).await?;
        if spec.job {
            let status = supervisor.wait_exit(&spec.name, JOB_TIMEOUT).await?;
            let tail = || crate::supervisor::log_tail(&spec.log, offset);
            match status.state {
                ProcessState::Exited { code: Some(0), .. } => {}
                ProcessState::Exited { code, signal } => {
                    return Err(InstanceError::JobFailed {
                        name: spec.name.clone(),
                        exit: match (code, signal) {
                            (Some(code), _) => format!("exited with code {code}"),
                            (None, Some(signal)) => format!("was killed by signal {signal}"),
                            _ => "exited".to_owned(),
                        },
                        log: spec.log.clone(),
                        tail: tail(),
                    });
                }
                ProcessState::Failed { reason } => {
                    return Err(InstanceError::JobFailed {
                        name: spec.name.clone(),
                        exit: format!("failed: {reason}"),
                        log: spec.log.clone(),
                        tail: tail(),
                    });
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Stops every process of the instance, the last started first; answers the names it stopped.
pub async fn stop(
    supervisor: &mut dyn Supervise,
    address: &Address,
) -> Result<Vec<String>, InstanceError> {
    stop_processes(supervisor, address, false).await
}

/// [`stop`], or with `discard` (its data goes right after) each process's discard sequence.
async fn stop_processes(
    supervisor: &mut dyn Supervise,
    address: &Address,
    discard: bool,
) -> Result<Vec<String>, InstanceError> {
    let statuses = supervisor.status().await?;
    let names: Vec<String> = processes_of(&statuses, address)
        .into_iter()
        .map(|status| status.name.clone())
        .collect();
    for name in names.iter().rev() {
        if discard {
            supervisor.discard(name).await?;
        } else {
            supervisor.stop(name).await?;
        }
    }
    Ok(names)
}

/// Stops the instance (with its discard sequence: nothing it would write on the way out is kept), checks nothing
/// of it runs any more, lets the engine release what its processes left outside its directories
/// ([`Engine::release`]), and removes its directories. A data directory is never removed under a live process.
pub async fn destroy(
    supervisor: &mut dyn Supervise,
    engine: Option<&dyn Engine>,
    project: &Project,
    address: &Address,
    saved: &InstanceState,
) -> Result<(), InstanceError> {
    stop_processes(supervisor, address, true).await?;
    let statuses = supervisor.status().await?;
    let live: Vec<String> = processes_of(&statuses, address)
        .into_iter()
        .filter(|status| status.state.is_live())
        .map(|status| status.name.clone())
        .collect();
    if !live.is_empty() {
        return Err(InstanceError::StillRunning {
            names: live.join(", "),
        });
    }
    // An engine this kip no longer has cannot be asked; its directories go all the same.
    if let Some(engine) = engine {
        engine.release(&ctx_from_state(project, address, saved));
    }
    for dir in [&saved.dir, &saved.log_dir] {
        if dir.as_os_str().is_empty() || !dir.exists() {
            continue;
        }
        std::fs::remove_dir_all(dir).map_err(|source| InstanceError::Io {
            action: "remove",
            path: dir.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The secrets, ports and flags an instance keeps from its context into its state.
pub fn save_ctx(saved: &mut InstanceState, ctx: &InstanceCtx) {
    saved.secrets = ctx.secrets.0.clone();
    saved.ports = ctx.ports.clone();
    saved.attributes = ctx.attributes.clone();
}

/// The objects of a context, by address, for a state entry being built.
pub fn objects_view(nodes: &[crate::plan::Desired]) -> BTreeMap<Address, ObjectView> {
    nodes
        .iter()
        .filter(|node| !node.address.is_instance())
        .map(|node| {
            (
                node.address.clone(),
                ObjectView {
                    kind: node.kind.clone(),
                    attributes: node.attributes.clone(),
                },
            )
        })
        .collect()
}

/// What [`bring_up`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Up {
    /// It was running already.
    Running,
    /// A job that succeeded with its current configuration: not run again.
    Done,
    /// Started; the pids of its processes, and the ports kip chose that moved because others took them.
    Started(Vec<u32>, Vec<MovedPort>),
}

/// Starts an applied instance that does not run (after `kip down` or a crash), as it was last applied: its
/// configuration rewritten, its ports checked (see [`start_on_free_ports`]; `moved` saves the context when kip's
/// ports moved), its processes started and ready. Nothing is planned or converged.
pub async fn bring_up(
    engine: &dyn Engine,
    ctx: &mut InstanceCtx,
    saved: &InstanceState,
    supervisor: &mut dyn Supervise,
    moved: &mut dyn FnMut(&InstanceCtx) -> Result<(), InstanceError>,
) -> Result<Up, InstanceError> {
    // An unfinished first provisioning is done first: the specs need what it assigns (and nothing of the instance
    // ever ran).
    let provisioned = ctx.provision_unfinished;
    if provisioned {
        engine.provision(ctx).await?;
        ctx.provision_unfinished = false;
    }
    let specs = engine.spawn_specs(ctx)?;
    let jobs = specs.iter().any(|spec| spec.job);
    if jobs && saved.lifecycle.succeeded {
        return Ok(Up::Done);
    }
    let statuses = supervisor.status().await?;
    if all_ready(&statuses, &specs) {
        return Ok(Up::Running);
    }
    if !provisioned {
        engine.provision(ctx).await?;
    }
    let (_, ports_moved) = start_on_free_ports(engine, ctx, &statuses, supervisor, moved).await?;
    if !jobs {
        engine.ready(ctx).await?;
        if !ctx.initialized {
            if let Some(step) = engine.after_start(ctx) {
                step.await?;
            }
            ctx.initialized = true;
        }
    }
    let statuses = supervisor.status().await?;
    Ok(Up::Started(
        processes_of(&statuses, &ctx.address)
            .iter()
            .filter_map(|status| status.pid)
            .collect(),
        ports_moved,
    ))
}

/// [`bring_up`] for the instance `address` of `state`, which is written when the instance started (its secrets,
/// ports and flags) and as soon as ports kip chose moved, before anything runs on them. An address the state does
/// not hold has nothing to bring up: `Up::Running`, as for one that runs.
pub async fn bring_up_in(
    project: &Project,
    state: &mut State,
    address: &Address,
    engine: &dyn Engine,
    supervisor: &mut dyn Supervise,
) -> Result<Up, InstanceError> {
    let Some(saved) = state.instances.get(address).cloned() else {
        return Ok(Up::Running);
    };
    let mut ctx = ctx_from_state(project, address, &saved);
    let mut save = |ctx: &InstanceCtx| {
        if let Some(entry) = state.instances.get_mut(address) {
            entry.ports = ctx.ports.clone();
        }
        Ok(state.write(&project.kip_dir)?)
    };
    let outcome = bring_up(engine, &mut ctx, &saved, supervisor, &mut save).await?;
    if let Up::Started(..) = outcome
        && let Some(entry) = state.instances.get_mut(address)
    {
        entry.lifecycle.initialized = ctx.initialized;
        entry.lifecycle.provisioning = false;
        save_ctx(entry, &ctx);
        entry.attributes = saved.attributes.clone();
        state.write(&project.kip_dir)?;
    }
    Ok(outcome)
}

/// The applied instances in dependency order (what an instance depends on comes first), from the state alone.
pub fn dependency_order(state: &State) -> Vec<Address> {
    let mut ordered: Vec<Address> = Vec::new();
    let mut visiting = std::collections::BTreeSet::new();
    fn visit(
        address: &Address,
        state: &State,
        ordered: &mut Vec<Address>,
        visiting: &mut std::collections::BTreeSet<Address>,
    ) {
        if ordered.contains(address) || !visiting.insert(address.clone()) {
            return;
        }
        if let Some(saved) = state.instances.get(address) {
            for dependency in &saved.depends_on {
                visit(dependency, state, ordered, visiting);
            }
            ordered.push(address.clone());
        }
    }
    for address in state.instances.keys() {
        visit(address, state, &mut ordered, &mut visiting);
    }
    ordered
}
