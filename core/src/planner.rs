//! Plan: what the configuration implies ([`crate::desired`]), against what exists (the state, refreshed from
//! the running engines so that a change made behind kip's back shows up), diffed into a [`Plan`].
//!
//! Instances are planned in dependency order, in waves (the instances of a wave depend only on earlier waves, and
//! are refreshed concurrently). Once an instance is planned, if neither it nor any of its objects
//! changes, its exports join the [`Scope`], so a reference to it is a known value in the plan; otherwise a
//! reference to it is `(known after apply)`.

// Errors here carry resolve, supervisor and engine errors whole (with the log lines they quote); they are built once
// per failed instance, never in a loop, so boxing them would cost clarity for nothing.
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::address::Address;
use crate::apply::lifecycle;
use crate::config::{Config, Instance};
use crate::desired::{DesiredError, desired_nodes};
use crate::engine::{EngineError, Engines, Exports, Managed};
use crate::graph::Graph;
use crate::plan::{self, Action, Change, Existing, Fingerprinter, INSTANCE, Plan};
use crate::project::Project;
use crate::references::Scope;
use crate::state::{InstanceState, ObjectState, State};
use crate::supervise::Supervisors;
use crate::supervisor::{ProcessState, ProcessStatus, SupervisorError};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("kip cannot run {engine} instances yet ({address})")]
    Unsupported { engine: String, address: Address },
    #[error(transparent)]
    Desired(#[from] DesiredError),
    #[error("{address}: cannot read what exists")]
    Refresh {
        address: Address,
        #[source]
        source: EngineError,
    },
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

impl PlanError {
    pub fn hint(&self) -> Option<String> {
        match self {
            PlanError::Unsupported { .. } => Some(
                "its provider has not landed in this kip yet (`kip lint` warns about every such block); \
                 remove the block or use an engine kip runs"
                    .into(),
            ),
            PlanError::Refresh { source, .. } => source.hint.clone(),
            PlanError::Supervisor(error) => error.hint(),
            PlanError::Desired(_) => None,
        }
    }
}

/// Everything plan needs.
pub struct Planner<'a> {
    pub project: &'a Project,
    pub config: &'a Config,
    pub graph: &'a Graph,
    pub engines: &'a Engines,
    pub state: &'a State,
    pub supervisors: &'a dyn Supervisors,
    /// Ask running engines what exists (`--refresh=false` trusts the state).
    pub refresh: bool,
    /// What engines read ahead for this plan ([`prefetch`]), if anything.
    pub prefetched: Option<&'a Prefetched>,
}

/// What the engines read ahead for a plan ([`prefetch`]), instance by instance as each read ends: a refresh waits
/// for its own instance's read-ahead, never for another's (one may be slow to fail while its instance is down).
#[derive(Debug)]
pub struct Prefetched {
    reads: tokio::sync::Mutex<Reads>,
    /// The serial and lineage of the state the reads started from: coming from the thread, then known.
    version: std::sync::Mutex<StartedFrom>,
}

#[derive(Debug)]
enum StartedFrom {
    Coming(std::sync::mpsc::Receiver<(u64, String)>),
    /// `None`: the thread found no state.
    Known(Option<(u64, String)>),
}

type Ahead = Option<Box<dyn std::any::Any + Send>>;

#[derive(Debug)]
struct Reads {
    /// Each instance's read as it ends; closed once every read has.
    receiver: tokio::sync::mpsc::UnboundedReceiver<(Address, Ahead)>,
    /// Reads that ended before their refresh asked.
    arrived: BTreeMap<Address, Ahead>,
}

impl Prefetched {
    /// What was read ahead for `address`, once; `None` when nothing was (or the read failed).
    async fn take(&self, address: &Address) -> Ahead {
        let mut reads = self.reads.lock().await;
        loop {
            if let Some(ahead) = reads.arrived.remove(address) {
                return ahead;
            }
            let (read_for, ahead) = reads.receiver.recv().await?;
            reads.arrived.insert(read_for, ahead);
        }
    }

    /// Whether the read-ahead still reads (some engine's session or first reads have not ended), without waiting:
    /// what a refresh would still wait for.
    pub fn pending(&self) -> bool {
        self.reads
            .try_lock()
            .map_or(true, |reads| !reads.receiver.is_closed())
    }

    /// Whether the reads started from the state `state` is (the same serial and lineage): false when another
    /// command changed it meanwhile (an apply that held the state lock), or when the thread found no state. Waits
    /// for the thread to have read it (the first thing it does).
    pub fn started_from(&self, state: &State) -> bool {
        let mut version = self
            .version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let StartedFrom::Coming(receiver) = &*version {
            *version = StartedFrom::Known(receiver.recv().ok());
        }
        matches!(&*version, StartedFrom::Known(Some((serial, lineage)))
            if *serial == state.serial && *lineage == state.lineage)
    }
}

/// Starts reading ahead, on a thread of its own, what the refresh of each applied instance will read whatever the
/// configuration says ([`crate::engine::Engine::prefetch`]), so that a plan's sessions and first reads overlap the
/// configuration's check and the state's read on this thread. The thread reads the state's instances without their
/// objects ([`State::instances_without_objects`]), so it reaches the engines while the whole state is still being
/// read here. `None` when no thread starts.
pub fn prefetch(project: &Project, engines: &Engines) -> Option<Prefetched> {
    let (project, engines) = (project.clone(), engines.clone());
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let (version_sender, version) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("kip-prefetch".into())
        .spawn(move || {
            let Some(read) = State::instances_without_objects(&project.kip_dir) else {
                return;
            };
            let _ = version_sender.send(read.version);
            let instances = read.instances;
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let reads = instances
                .iter()
                .filter(|(_, saved)| saved.lifecycle.initialized)
                .filter_map(|(address, saved)| {
                    let engine = engines.get(&saved.engine)?;
                    let ctx = lifecycle::ctx_without_objects(&project, address, saved);
                    let sender = &sender;
                    Some(async move {
                        // The plan may have ended without asking (a configuration error): then nobody receives it.
                        let _ = sender.send((address.clone(), engine.prefetch(&ctx).await));
                    })
                });
            runtime.block_on(futures_util::future::join_all(reads));
        })
        .ok()?;
    Some(Prefetched {
        reads: tokio::sync::Mutex::new(Reads {
            receiver,
            arrived: BTreeMap::new(),
        }),
        version: std::sync::Mutex::new(StartedFrom::Coming(version)),
    })
}

fn existing_instance<'s>(address: &Address, saved: &'s InstanceState) -> Existing<'s> {
    Existing {
        address: address.clone(),
        engine: saved.engine.clone(),
        kind: INSTANCE.into(),
        attributes: Cow::Borrowed(&saved.attributes),
        sensitive: saved.sensitive.clone(),
        prevent_destroy: saved.prevent_destroy,
        depends_on: saved.depends_on.clone(),
    }
}

fn existing_object<'s>(address: &Address, engine: &str, saved: &'s ObjectState) -> Existing<'s> {
    Existing {
        address: address.clone(),
        engine: engine.to_owned(),
        kind: saved.kind.clone(),
        attributes: Cow::Borrowed(&saved.attributes),
        sensitive: saved.sensitive.clone(),
        prevent_destroy: saved.prevent_destroy,
        depends_on: Vec::new(),
    }
}

/// The positions in `ordered` (dependency order) grouped in waves: an instance's wave is one after the latest wave
/// of the instances it depends on (`dependencies`, by position).
fn waves(ordered: &[&Instance], dependencies: &[Vec<Address>]) -> Vec<Vec<usize>> {
    let mut wave_of: BTreeMap<&Address, usize> = BTreeMap::new();
    let mut waves: Vec<Vec<usize>> = Vec::new();
    for (index, (instance, depends_on)) in ordered.iter().zip(dependencies).enumerate() {
        let wave = depends_on
            .iter()
            .filter_map(|dependency| wave_of.get(dependency))
            .map(|wave| wave + 1)
            .max()
            .unwrap_or(0);
        wave_of.insert(&instance.address, wave);
        if waves.len() <= wave {
            waves.resize_with(wave + 1, Vec::new);
        }
        waves[wave].push(index);
    }
    waves
}

/// What planning one instance gives: its changes, and its exports when another instance reads them and it does not
/// change.
struct Planned {
    changes: Vec<Change>,
    exports: Option<(Exports, Vec<(Address, Exports)>)>,
}

impl Planner<'_> {
    pub async fn plan(&self) -> Result<Plan, PlanError> {
        let fingerprints = Fingerprinter::new();
        // One status request for the whole plan: which instances run, and so can be refreshed.
        let statuses = if self.refresh {
            self.supervisors.running().await?
        } else {
            Vec::new()
        };
        let mut scope = Scope::new();
        let ordered = self.instances_in_order();
        let dependencies: Vec<Vec<Address>> = ordered
            .iter()
            .map(|instance| crate::desired::instance_dependencies(self.graph, instance))
            .collect();
        // Only what another instance reads goes into the scope: exports cost (a provider may derive a password per
        // object), and most instances are read by nobody.
        let read_by_others: BTreeSet<&Address> = dependencies.iter().flatten().collect();
        // Instances are planned in waves: each wave holds the instances whose dependencies were all planned in
        // earlier waves, and its instances are refreshed concurrently (each engine's round trips overlap the
        // others'); the scope grows between waves. The changes keep the dependency order either way.
        let mut planned: Vec<Option<Vec<Change>>> = ordered.iter().map(|_| None).collect();
        for wave in waves(&ordered, &dependencies) {
            let results = futures_util::future::join_all(wave.iter().map(|&index| {
                self.plan_instance(
                    ordered[index],
                    &statuses,
                    &scope,
                    &read_by_others,
                    &fingerprints,
                )
            }))
            .await;
            for (&index, result) in wave.iter().zip(results) {
                let Planned { changes, exports } = result?;
                if let Some((exports, objects)) = exports {
                    scope.add_instance(&ordered[index].address, exports, objects);
                }
                planned[index] = Some(changes);
            }
        }
        let mut changes: Vec<Change> = planned.into_iter().flatten().flatten().collect();
        // Instances the configuration no longer declares: deleted with everything in them.
        let declared: BTreeSet<&Address> =
            self.config.instances.iter().map(|i| &i.address).collect();
        let gone: BTreeMap<Address, Existing> = self
            .state
            .instances
            .iter()
            .filter(|(address, _)| !declared.contains(address))
            .map(|(address, saved)| (address.clone(), existing_instance(address, saved)))
            .collect();
        changes.extend(plan::diff(Vec::new(), &gone, &fingerprints));
        Ok(Plan {
            format_version: plan::PLAN_FORMAT.into(),
            lineage: self.state.lineage.clone(),
            serial: self.state.serial,
            changes,
        })
    }

    /// One declared instance: its desired nodes against what exists (refreshed when it runs), diffed.
    async fn plan_instance(
        &self,
        instance: &Instance,
        statuses: &[ProcessStatus],
        scope: &Scope,
        read_by_others: &BTreeSet<&Address>,
        fingerprints: &Fingerprinter,
    ) -> Result<Planned, PlanError> {
        let address = &instance.address;
        let engine = self
            .engines
            .get(instance.engine.name)
            .ok_or_else(|| PlanError::Unsupported {
                engine: instance.engine.name.into(),
                address: address.clone(),
            })?
            .as_ref();
        let desired = desired_nodes(self.config, self.graph, instance, engine, scope)?;
        let saved = self.state.instances.get(address);
        let mut existing: BTreeMap<Address, Existing> = BTreeMap::new();
        if let Some(saved) = saved {
            existing.insert(address.clone(), existing_instance(address, saved));
            let running = lifecycle::processes_of(statuses, address);
            self.existing_objects(instance, saved, &desired, &running, &mut existing)
                .await?;
        }
        // An object attribute the configuration leaves unset (`null`, no default) is the engine's to choose,
        // as Terraform's optional computed attributes: whatever it is, it is not a change. (The instance's
        // own attributes compare exactly: an unset `port` means no TCP listener.) An attribute the existing side
        // lacks is `null` there already; the state's attributes are copied only when one must change.
        for node in desired.iter().filter(|node| !node.address.is_instance()) {
            if let Some(have) = existing.get_mut(&node.address) {
                for (name, value) in &node.attributes {
                    if value.is_null()
                        && !node.unknown.contains(name)
                        && have
                            .attributes
                            .get(name)
                            .is_some_and(|have| !have.is_null())
                    {
                        have.attributes
                            .to_mut()
                            .insert(name.clone(), serde_json::Value::Null);
                    }
                }
            }
        }
        let mut changes = plan::diff(desired, &existing, fingerprints);
        let replaced = changes
            .iter()
            .any(|c| c.is_instance() && c.action == Action::Replace);
        if replaced {
            // A replaced instance starts empty: its declared objects are created again, and what it had goes
            // with its data.
            changes.retain(|c| c.is_instance() || c.action != Action::Delete);
            for change in changes.iter_mut().filter(|c| !c.is_instance()) {
                change.action = Action::Create;
                change.before = None;
                change.replace_because.clear();
            }
        }
        for change in changes
            .iter_mut()
            .filter(|c| c.is_instance() && c.action == Action::Update)
        {
            change.restart_because = engine.restart_because(change);
        }
        let unchanged = changes.iter().all(|c| c.action == Action::Noop);
        let exports = match saved {
            Some(saved) if unchanged && read_by_others.contains(address) => {
                let ctx = lifecycle::ctx_from_state(self.project, address, saved);
                Some(lifecycle::instance_exports(engine, &ctx))
            }
            _ => None,
        };
        Ok(Planned { changes, exports })
    }

    /// The declared instances, each after every instance it (or any of its objects) depends on.
    fn instances_in_order(&self) -> Vec<&Instance> {
        fn visit<'c>(
            instance: &'c Instance,
            planner: &Planner<'c>,
            ordered: &mut Vec<&'c Instance>,
            seen: &mut BTreeSet<Address>,
        ) {
            if !seen.insert(instance.address.clone()) {
                return;
            }
            for dependency in crate::desired::instance_dependencies(planner.graph, instance) {
                if let Some(dependency) = planner.config.instance(&dependency) {
                    visit(dependency, planner, ordered, seen);
                }
            }
            ordered.push(instance);
        }
        let mut ordered = Vec::new();
        let mut seen = BTreeSet::new();
        for instance in &self.config.instances {
            visit(instance, self, &mut ordered, &mut seen);
        }
        ordered
    }

    /// After a refresh failed: whether the instance's processes died and came back ready since `before` was
    /// taken (waits up to 30 s for that while the supervisor restarts them). False when they still run as they
    /// did (the failure is the engine's answer), or are stopped or failed.
    async fn ready_again(&self, address: &Address, before: &[&ProcessStatus]) -> bool {
        let pids: Vec<Option<u32>> = before.iter().map(|status| status.pid).collect();
        let started = std::time::Instant::now();
        let mut restarted = false;
        while started.elapsed() < std::time::Duration::from_secs(30) {
            let Ok(statuses) = self.supervisors.running().await else {
                return false;
            };
            let now = lifecycle::processes_of(&statuses, address);
            if now.is_empty()
                || now
                    .iter()
                    .any(|status| matches!(status.state, ProcessState::Failed { .. }))
            {
                return false;
            }
            let same = now.iter().map(|status| status.pid).collect::<Vec<_>>() == pids;
            let ready = now.iter().all(|status| status.state == ProcessState::Ready);
            restarted |= !(same && ready);
            if restarted && ready {
                return true;
            }
            // The supervisor notices a death within milliseconds: still the same processes after a second means
            // they did not die.
            if !restarted && started.elapsed() > std::time::Duration::from_secs(1) {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    }

    /// The objects that exist in an applied instance: refreshed from the engine when it runs, else as the state
    /// remembers them.
    async fn existing_objects<'s>(
        &self,
        instance: &Instance,
        saved: &'s InstanceState,
        desired: &[plan::Desired],
        running: &[&ProcessStatus],
        existing: &mut BTreeMap<Address, Existing<'s>>,
    ) -> Result<(), PlanError> {
        let address = &instance.address;
        let engine_name = instance.engine.name;
        let ready = running
            .iter()
            .any(|status| status.state == ProcessState::Ready);
        // An instance whose after-start step has not run yet (a kip was killed between its start and that step)
        // does not take its own credentials yet: what exists is what the state says, and apply finishes the step.
        if !(self.refresh && ready && saved.lifecycle.initialized) {
            for (object, saved_object) in &saved.objects {
                existing.insert(
                    object.clone(),
                    existing_object(object, engine_name, saved_object),
                );
            }
            return Ok(());
        }
        let engine = self
            .engines
            .get(engine_name)
            .expect("checked by the caller")
            .as_ref();
        // What kip manages here: the objects the configuration declares (with their desired attributes) and the
        // ones it created before (with their attributes as last applied), in address order, each with what the
        // state has of it. Both sides are sorted, so one merge pairs them: a lookup per object in the state's
        // map compared about ten addresses, and a plan of 1,000 objects made four such passes.
        let mut declared: Vec<&plan::Desired> = desired
            .iter()
            .filter(|node| !node.address.is_instance())
            .collect();
        declared.sort_by(|a, b| a.address.cmp(&b.address));
        let undeclared = |(address, object): (&'s Address, &'s ObjectState)| Managed {
            address,
            kind: &object.kind,
            attributes: &object.attributes,
            applied: Some(&object.attributes),
            declared: false,
        };
        // Room for all of them and the instance, pushed last (growing a vector of a thousand entries by one
        // copied it into fresh memory: 5% of a no-op plan's samples).
        let mut managed: Vec<Managed> =
            Vec::with_capacity(declared.len() + saved.objects.len() + 1);
        let mut saved_of: Vec<Option<&ObjectState>> = Vec::with_capacity(managed.capacity());
        let mut saved_objects = saved.objects.iter().peekable();
        for node in declared {
            while let Some(gone) = saved_objects.next_if(|(address, _)| *address < &node.address) {
                managed.push(undeclared(gone));
                saved_of.push(Some(gone.1));
            }
            let saved_object = saved_objects
                .next_if(|(address, _)| *address == &node.address)
                .map(|(_, object)| object);
            managed.push(Managed {
                address: &node.address,
                kind: &node.kind,
                attributes: &node.attributes,
                applied: saved_object.map(|object| &object.attributes),
                declared: true,
            });
            saved_of.push(saved_object);
        }
        for gone in saved_objects {
            managed.push(undeclared(gone));
            saved_of.push(Some(gone.1));
        }
        // The instance itself too: an engine may report its own settings as the server has them (overridden behind
        // kip's back); it is merged into the instance's attributes, never deleted or created from here.
        if let Some(instance_node) = desired.iter().find(|node| node.address.is_instance()) {
            managed.push(Managed {
                address,
                kind: plan::INSTANCE,
                attributes: &instance_node.attributes,
                applied: Some(&saved.attributes),
                declared: true,
            });
        }
        let ctx = lifecycle::ctx_without_objects(self.project, address, saved);
        if let Some(prefetched) = self.prefetched
            && let Some(ahead) = prefetched.take(address).await
        {
            ctx.session.keep_boxed(ahead);
        }
        let observed = match engine.refresh(&ctx, &managed).await {
            Ok(observed) => observed,
            Err(source) => {
                // The engine may have died just now (a crash, a SIGKILL) and be restarting while the supervisor's
                // answer still said ready: then wait for it to be ready again and ask once more.
                if self.ready_again(address, running).await {
                    engine.refresh(&ctx, &managed).await
                } else {
                    Err(source)
                }
                .map_err(|source| PlanError::Refresh {
                    address: address.clone(),
                    source,
                })?
            }
        };
        let mut observed: BTreeMap<Address, plan::Attributes> = observed
            .into_iter()
            .map(|node| (node.address, node.attributes))
            .collect();
        if let (Some(live), Some(instance)) = (observed.remove(address), existing.get_mut(address))
        {
            instance.attributes.to_mut().extend(live);
        }
        // Both `managed` (but for the instance, pushed last: `saved_of` has no entry for it, so the zip leaves it
        // out) and what the engine reported are in address order: one merge pairs them, and the existing objects
        // are added to `existing` in one bulk step.
        let mut reported = observed.into_iter().peekable();
        let mut found: Vec<(Address, Existing<'s>)> = Vec::with_capacity(saved_of.len());
        for (node, &saved_object) in managed.iter().zip(&saved_of) {
            // Something reported that kip does not manage is not kip's to plan.
            while reported
                .next_if(|(reported, _)| reported < node.address)
                .is_some()
            {}
            match reported.next_if(|(reported, _)| reported == node.address) {
                Some((_, mut attributes)) => {
                    // What the engine reports wins; what it cannot read (a password) is as last applied.
                    if let Some(saved_object) = saved_object {
                        for (name, value) in &saved_object.attributes {
                            if !attributes.contains_key(name) {
                                attributes.insert(name.clone(), value.clone());
                            }
                        }
                    }
                    found.push((
                        node.address.clone(),
                        Existing {
                            address: node.address.clone(),
                            engine: engine_name.to_owned(),
                            kind: node.kind.to_owned(),
                            attributes: Cow::Owned(attributes),
                            sensitive: saved_object
                                .map(|o| o.sensitive.clone())
                                .unwrap_or_default(),
                            // Protection outlives the block: a removed `prevent_destroy = true` stays protected.
                            prevent_destroy: saved_object.is_some_and(|o| o.prevent_destroy),
                            depends_on: Vec::new(),
                        },
                    ));
                }
                // Created by kip, no longer declared, and not reported (gone already, or something the engine cannot
                // see, such as a grant): planned as a delete from the state, which the engine carries out
                // idempotently.
                None if !node.declared => {
                    if let Some(saved_object) = saved_object {
                        found.push((
                            node.address.clone(),
                            existing_object(node.address, engine_name, saved_object),
                        ));
                    }
                }
                None => {}
            }
        }
        existing.append(&mut found.into_iter().collect::<BTreeMap<_, _>>());
        Ok(())
    }
}

/// The changes of a plan that touch `instance` or its objects.
pub fn changes_of<'p>(plan: &'p Plan, instance: &Address) -> Vec<&'p Change> {
    plan.changes
        .iter()
        .filter(|change| change.address.is_within(instance))
        .collect()
}
