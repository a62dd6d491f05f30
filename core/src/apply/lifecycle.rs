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
pub fn ctx_without_objects(
    project: &Project,
    address: &Address,
    saved: &InstanceState,
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

/// Refuses to start when a declared port is taken: a tcp probe would otherwise pass against whatever holds it.
/// Not while a process of the instance itself is live in the supervisor (`statuses`): still starting after a kip
/// that was killed mid-apply, or restarting after a crash, it holds its own port, and the start that follows
/// joins (or replaces) that run instead of racing it.
pub fn check_ports(
    engine: &dyn Engine,
    ctx: &InstanceCtx,
    statuses: &[ProcessStatus],
) -> Result<(), InstanceError> {
    if processes_of(statuses, &ctx.address)
        .iter()
        .any(|status| status.state.is_live())
    {
        return Ok(());
    }
    for port in engine.ports(ctx) {
        if let Err(source) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Err(InstanceError::PortTaken { port, source });
        }
    }
    Ok(())
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
    /// Started; the pids of its processes.
    Started(Vec<u32>),
}

/// Starts an applied instance that does not run (after `kip down` or a crash), as it was last applied: its
/// configuration rewritten, its declared ports checked, its processes started and ready. Nothing is planned or
/// converged.
pub async fn bring_up(
    engine: &dyn Engine,
    ctx: &mut InstanceCtx,
    saved: &InstanceState,
    supervisor: &mut dyn Supervise,
) -> Result<Up, InstanceError> {
    let specs = engine.spawn_specs(ctx)?;
    let jobs = specs.iter().any(|spec| spec.job);
    if jobs && saved.lifecycle.succeeded {
        return Ok(Up::Done);
    }
    let statuses = supervisor.status().await?;
    if all_ready(&statuses, &specs) {
        return Ok(Up::Running);
    }
    engine.provision(ctx).await?;
    check_ports(engine, ctx, &statuses)?;
    start(supervisor, &specs).await?;
    if !jobs {
        engine.ready(ctx).await?;
        if !ctx.initialized {
            engine.after_start(ctx).await?;
            ctx.initialized = true;
        }
    }
    let statuses = supervisor.status().await?;
    Ok(Up::Started(
        processes_of(&statuses, &ctx.address)
            .iter()
            .filter_map(|status| status.pid)
            .collect(),
    ))
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
