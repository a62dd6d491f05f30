//! The harness the suite (and engine tests) drive: a fresh project in a temp dir, the configuration checked as
//! `kip lint` checks it, and plan, apply, up, down, kill and destroy through kip-core's own planner, applier and
//! lifecycle, with the real supervisor daemon (run on a thread of the test) or the in-memory one.
//!
//! A harness cleans up after itself: dropping it destroys whatever the project still runs and stops its
//! supervisor, also when a step failed.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kip_core::address::Address;
use kip_core::apply::lifecycle;
use kip_core::apply::{Applier, ApplyError, Destroyer, Report};
use kip_core::config::{CheckOptions, Checked, check};
use kip_core::engine::{Engine, Engines, Exports};
use kip_core::plan::{Attributes, Plan};
use kip_core::planner::Planner;
use kip_core::project::Project;
use kip_core::resolve::ResolveSettings;
use kip_core::state::{State, StateLock};
use kip_core::supervise::{DaemonSupervisors, MemorySupervisors, Supervisors};
use kip_core::supervisor::{DaemonOptions, ProcessStatus, run_daemon_with};
use kip_schemas::{BlockSchema, EngineSchema, ValueType};

/// Which supervisor runs the processes.
#[derive(Debug, Clone)]
pub enum Processes {
    /// The real daemon, on a thread of the test process.
    Daemon,
    /// The in-memory table (for engines whose processes are not real, as the fake's).
    Memory(MemorySupervisors),
}

/// What a harness runs with.
#[derive(Debug, Clone)]
pub struct Setup {
    pub engines: Engines,
    pub processes: Processes,
    /// The mirror versioned engines resolve from (a URL or a directory).
    pub mirror: Option<String>,
    /// Schemas of engines `kip-schemas` does not ship (a fake), for the checker.
    pub extra_schemas: Vec<&'static EngineSchema>,
    /// A cache for toolchains and templates shared between harnesses; a fresh one per harness when `None`.
    pub cache: Option<PathBuf>,
    pub parallelism: usize,
}

impl Setup {
    /// The real supervisor, with `engines`.
    pub fn daemon(engines: Engines) -> Setup {
        Setup {
            engines,
            processes: Processes::Daemon,
            mirror: None,
            extra_schemas: Vec::new(),
            cache: None,
            parallelism: 10,
        }
    }

    /// The in-memory supervisor, with `engines`.
    pub fn memory(engines: Engines, supervisors: MemorySupervisors) -> Setup {
        Setup {
            processes: Processes::Memory(supervisors),
            ..Setup::daemon(engines)
        }
    }

    pub fn with_mirror(mut self, mirror: impl Into<String>) -> Setup {
        self.mirror = Some(mirror.into());
        self
    }

    pub fn with_schema(mut self, schema: &'static EngineSchema) -> Setup {
        self.extra_schemas.push(schema);
        self
    }

    pub fn with_cache(mut self, cache: impl Into<PathBuf>) -> Setup {
        self.cache = Some(cache.into());
        self
    }
}

struct Quiet;

impl Report for Quiet {
    fn step(&self, _address: &Address, _what: &str) {}
}

/// A daemon running on a thread of this process.
struct DaemonThread {
    thread: std::thread::JoinHandle<()>,
}

/// One project, its supervisor, and the operations the suite needs.
pub struct Harness {
    setup: Setup,
    dir: tempfile::TempDir,
    _cache: Option<tempfile::TempDir>,
    project: Project,
    supervisors: Box<dyn Supervisors>,
    daemon: Mutex<Option<DaemonThread>>,
}

fn open_to_engines(path: &Path) {
    // Engines may run as kip's unprivileged account (when tests run as root): it must reach the project and cache.
    let _ = std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755));
}

impl Harness {
    /// A fresh project whose kip.hcl holds `config`.
    pub fn new(setup: &Setup, config: &str) -> Harness {
        let dir = tempfile::tempdir().expect("a temp dir");
        open_to_engines(dir.path());
        let (cache, owned_cache) = match &setup.cache {
            Some(cache) => (cache.clone(), None),
            None => {
                let cache = tempfile::tempdir().expect("a temp dir");
                open_to_engines(cache.path());
                (cache.path().to_path_buf(), Some(cache))
            }
        };
        std::fs::create_dir_all(&cache).expect("the cache dir");
        let project_dir = std::fs::canonicalize(dir.path()).expect("the project dir");
        // The daemon runs on a thread here; no `kip` binary is started, so a missing one fails loudly.
        let project = Project::new(&project_dir, &cache, Path::new("/nonexistent/kip"));
        let supervisors: Box<dyn Supervisors> = match &setup.processes {
            Processes::Daemon => Box::new(DaemonSupervisors::new(
                project.kip_dir.clone(),
                project.kip_exe.clone(),
            )),
            Processes::Memory(memory) => Box::new(memory.clone()),
        };
        let harness = Harness {
            setup: setup.clone(),
            dir,
            _cache: owned_cache,
            project,
            supervisors,
            daemon: Mutex::new(None),
        };
        harness.write_config(config);
        harness
    }

    pub fn project(&self) -> &Project {
        &self.project
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write_config(&self, config: &str) {
        std::fs::write(self.project.dir.join("kip.hcl"), config).expect("write kip.hcl");
    }

    pub fn state(&self) -> State {
        State::read(&self.project.kip_dir).expect("the state reads")
    }

    fn ensure_daemon(&self) {
        if !matches!(self.setup.processes, Processes::Daemon) {
            return;
        }
        let mut daemon = self.daemon.lock().unwrap_or_else(|p| p.into_inner());
        if daemon.as_ref().is_some_and(|d| !d.thread.is_finished()) {
            return;
        }
        let kip_dir = self.project.kip_dir.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            if let Err(error) = runtime.block_on(run_daemon_with(
                &kip_dir,
                DaemonOptions {
                    handle_signals: false,
                },
            )) {
                eprintln!("the test supervisor ended: {error}");
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !kip_core::supervisor::socket_path(&self.project.kip_dir).exists() {
            assert!(
                Instant::now() < deadline,
                "the supervisor did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        *daemon = Some(DaemonThread { thread });
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    }

    /// Checks a configuration text as `kip lint` would; the summaries of its errors.
    pub fn lint(&self, config: &str) -> Vec<String> {
        let scratch = tempfile::tempdir().expect("a temp dir");
        std::fs::write(scratch.path().join("kip.hcl"), config).expect("write kip.hcl");
        let checked = self.check_dir(scratch.path());
        checked
            .diagnostics
            .iter()
            .filter(|d| d.severity == kip_core::diag::Severity::Error)
            .map(|d| d.summary.clone())
            .collect()
    }

    fn check_dir(&self, dir: &Path) -> Checked {
        let registry = kip_registry::embedded().expect("the embedded registry verifies");
        let options = CheckOptions {
            registry,
            vars: Vec::new(),
            env_vars: Vec::new(),
            extra_engines: self.setup.extra_schemas.clone(),
            runnable: None,
        };
        check(dir, &options).expect("the configuration loads")
    }

    /// The checked configuration of the project; panics with the diagnostics when it has errors.
    pub fn checked(&self) -> Checked {
        let checked = self.check_dir(&self.project.dir);
        if checked.config.is_none() {
            let problems: Vec<String> = checked
                .diagnostics
                .iter()
                .map(|d| format!("{}: {}", d.summary, d.detail))
                .collect();
            panic!("the configuration has errors: {problems:#?}");
        }
        checked
    }

    /// Plans the project's configuration against what exists.
    pub fn plan(&self) -> Result<Plan, String> {
        let checked = self.checked();
        let state = self.state();
        // As `kip plan` does: what engines read ahead reaches their refresh.
        let prefetched = kip_core::planner::prefetch(&self.project, &self.setup.engines);
        let planner = Planner {
            project: &self.project,
            config: checked.config.as_ref().expect("checked"),
            graph: checked.graph.as_ref().expect("checked"),
            engines: &self.setup.engines,
            state: &state,
            supervisors: self.supervisors.as_ref(),
            refresh: true,
            prefetched: prefetched.as_ref(),
        };
        Self::runtime()
            .block_on(planner.plan())
            .map_err(|error| render(&error))
    }

    /// Plans and applies; the plan applied.
    pub fn apply(&self) -> Result<Plan, ApplyError> {
        self.ensure_daemon();
        let _lock = StateLock::acquire(&self.project.kip_dir, Duration::from_secs(30))?;
        let checked = self.checked();
        let plan = self
            .plan()
            .unwrap_or_else(|error| panic!("plan failed: {error}"));
        let mut state = self.state();
        let applier = Applier {
            project: &self.project,
            config: checked.config.as_ref().expect("checked"),
            graph: checked.graph.as_ref().expect("checked"),
            engines: &self.setup.engines,
            supervisors: self.supervisors.as_ref(),
            resolve: ResolveSettings {
                mirror: self.setup.mirror.clone(),
                platform: kip_core::mirror::host_platform(),
                store: self.project.cache.join("store"),
                ..ResolveSettings::default()
            },
            locked: false,
            progress: &kip_core::fetch::NoProgress,
            report: &Quiet,
            run_as_env: None,
            parallelism: self.setup.parallelism,
            sync_only: false,
        };
        applier.apply(&plan, &mut state)?;
        Ok(plan)
    }

    /// Applies, and requires the next plan to be empty (Terraform's acceptance rule).
    pub fn apply_clean(&self, step: &str) -> Plan {
        let plan = self.apply().unwrap_or_else(|error| {
            panic!(
                "conformance step `{step}`: apply failed: {}\nprocesses working in the project: {:#?}",
                render(&error),
                processes_in(&self.project.dir)
            )
        });
        let next = self
            .plan()
            .unwrap_or_else(|error| panic!("conformance step `{step}`: plan failed: {error}"));
        if next.has_changes() {
            let changes: Vec<String> = next
                .changes
                .iter()
                .filter(|c| c.action != kip_core::plan::Action::Noop)
                .map(|c| format!("{:?} {} {:?}", c.action, c.address, c.changed_attributes()))
                .collect();
            panic!("conformance step `{step}`: the plan after apply is not empty: {changes:#?}");
        }
        plan
    }

    fn engine_of(
        &self,
        state: &State,
        instance: &Address,
    ) -> Result<std::sync::Arc<dyn Engine>, String> {
        let saved = state
            .instances
            .get(instance)
            .ok_or_else(|| format!("{instance} is not applied"))?;
        self.setup
            .engines
            .get(&saved.engine)
            .cloned()
            .ok_or_else(|| format!("no engine {}", saved.engine))
    }

    /// The exports of an applied instance or object (what `kip url` prints the `url` of).
    pub fn exports(&self, address: &Address) -> Result<Exports, String> {
        let state = self.state();
        let instance = address.instance_address();
        let engine = self.engine_of(&state, &instance)?;
        let ctx = lifecycle::ctx_from_state(&self.project, &instance, &state.instances[&instance]);
        engine
            .exports(&ctx, (!address.is_instance()).then_some(address))
            .map_err(|error| render(&error))
    }

    /// The live processes of an instance.
    pub fn running(&self, instance: &Address) -> Vec<ProcessStatus> {
        let statuses = Self::runtime()
            .block_on(self.supervisors.running())
            .unwrap_or_default();
        lifecycle::processes_of(&statuses, instance)
            .into_iter()
            .filter(|status| status.state.is_live())
            .cloned()
            .collect()
    }

    /// `kip down`: every instance stopped, dependents first, then the supervisor.
    pub fn down(&self) -> Result<(), String> {
        let state = self.state();
        let runtime = Self::runtime();
        let mut supervisor = self.supervisors.connect();
        for address in lifecycle::dependency_order(&state).iter().rev() {
            runtime
                .block_on(lifecycle::stop(supervisor.as_mut(), address))
                .map_err(|error| render(&error))?;
        }
        self.stop_supervisor();
        Ok(())
    }

    fn stop_supervisor(&self) {
        match &self.setup.processes {
            Processes::Memory(memory) => memory.shutdown(),
            Processes::Daemon => {
                let runtime = Self::runtime();
                let _ = runtime.block_on(async {
                    if let Some(client) =
                        kip_core::supervisor::Client::connect(&self.project.kip_dir).await?
                    {
                        client.shutdown().await?;
                    }
                    Ok::<_, kip_core::supervisor::SupervisorError>(())
                });
                if let Some(daemon) = self.daemon.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = daemon.thread.join();
                }
            }
        }
    }

    /// `kip up`: every applied instance started as applied, dependencies first.
    pub fn up(&self) -> Result<(), String> {
        self.ensure_daemon();
        let mut state = self.state();
        let runtime = Self::runtime();
        let mut supervisor = self.supervisors.connect();
        for address in lifecycle::dependency_order(&state) {
            let engine = self.engine_of(&state, &address)?;
            runtime
                .block_on(lifecycle::bring_up_in(
                    &self.project,
                    &mut state,
                    &address,
                    engine.as_ref(),
                    supervisor.as_mut(),
                ))
                .map_err(|error| render(&error))?;
        }
        Ok(())
    }

    /// SIGKILLs every process of an instance (the in-memory supervisor marks them killed); how many.
    pub fn kill(&self, instance: &Address) -> Result<usize, String> {
        let processes = self.running(instance);
        for process in &processes {
            match &self.setup.processes {
                Processes::Memory(memory) => memory.kill(&process.name),
                Processes::Daemon => {
                    let pid = process
                        .pid
                        .and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
                        .ok_or_else(|| format!("{} has no pid", process.name))?;
                    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
                        .map_err(|error| format!("cannot kill {}: {error}", process.name))?;
                }
            }
        }
        Ok(processes.len())
    }

    /// Destroys every instance and stops the supervisor; what is left behind (processes, directories, files its
    /// processes leave outside them, ports, state entries), in words.
    pub fn destroy_everything(&self) -> Result<Vec<String>, String> {
        let mut state = self.state();
        let instances: Vec<Address> = state.instances.keys().cloned().collect();
        let mut dirs = Vec::new();
        let mut files = Vec::new();
        let mut ports = Vec::new();
        for instance in &instances {
            let saved = &state.instances[instance];
            if let Some(engine) = self.setup.engines.get(&instance.engine)
                && let Ok(specs) =
                    engine.spawn_specs(&lifecycle::ctx_from_state(&self.project, instance, saved))
            {
                files.extend(specs.into_iter().flat_map(|spec| spec.leaves));
            }
            dirs.extend([
                saved.dir.clone(),
                saved.run_dir.clone(),
                saved.data_dir.clone(),
            ]);
            if let Ok(exports) = self.exports(instance)
                && let Some(port) = exports.get("port").and_then(|p| p.as_u64())
                && saved.attributes.get("port").is_some_and(|p| !p.is_null())
            {
                ports.push(port as u16);
            }
            ports.extend(saved.ports.values().copied());
        }
        self.ensure_daemon();
        let destroyer = Destroyer {
            project: &self.project,
            engines: &self.setup.engines,
            supervisors: self.supervisors.as_ref(),
            report: &Quiet,
            parallelism: self.setup.parallelism,
        };
        destroyer
            .destroy(&instances, &mut state)
            .map_err(|error| render(&error))?;
        let mut leftovers = Vec::new();
        for instance in &instances {
            for process in self.running(instance) {
                leftovers.push(format!("process {} (pid {:?})", process.name, process.pid));
            }
        }
        self.stop_supervisor();
        for dir in dirs {
            if dir.exists() {
                leftovers.push(format!("directory {}", dir.display()));
            }
        }
        for file in files {
            if file.symlink_metadata().is_ok() {
                leftovers.push(format!("file {}", file.display()));
            }
        }
        for port in ports {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                leftovers.push(format!("a listener on 127.0.0.1:{port}"));
            }
        }
        let state = self.state();
        for instance in state.instances.keys() {
            leftovers.push(format!("state entry {instance}"));
        }
        if state.instances.is_empty() {
            kip_core::runas::remove_project_account(&self.project.dir);
        }
        Ok(leftovers)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if !self.state().instances.is_empty() {
            let _ = self.destroy_everything();
        }
        self.stop_supervisor();
    }
}

/// An error with its causes, on one line each.
pub(crate) fn render(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    if let Some(failed) = error.downcast_ref::<ApplyError>()
        && let ApplyError::Failed { failures, .. } = failed
    {
        for failure in failures {
            text.push_str(&format!(
                "\n  {}: {}",
                failure.address,
                render(&failure.error)
            ));
        }
    }
    text
}

/// A value of `ty` for the typed-view check.
fn sample(ty: &ValueType) -> serde_json::Value {
    use serde_json::json;
    match ty {
        ValueType::Bool => json!(true),
        ValueType::Number => json!(1),
        ValueType::String | ValueType::Scalar | ValueType::Any => json!("x"),
        ValueType::Duration => json!("1s"),
        ValueType::Size => json!("1mb"),
        ValueType::Port => json!(5432),
        ValueType::Count => json!(3),
        ValueType::Enum(values) => json!(values.first().copied().unwrap_or("x")),
        ValueType::List(inner) => json!([sample(inner)]),
        ValueType::Map(inner) => json!({ "k": sample(inner) }),
    }
}

/// Every argument of every block, set, reaches the provider's typed view of that block (as the provider reads
/// it in provision, converge and exports): an argument the schema documents and the provider does not read is a
/// failure here.
pub(crate) fn every_argument_reaches_the_provider(engine: &dyn Engine) -> Result<(), String> {
    fn walk(
        engine: &dyn Engine,
        schema: &BlockSchema,
        kind: &str,
        address: Address,
    ) -> Result<(), String> {
        let mut attributes = Attributes::new();
        for argument in &schema.arguments {
            attributes.insert(argument.name.to_owned(), sample(&argument.ty));
        }
        for child in schema.blocks.iter().filter(|child| !child.object) {
            let mut fields = serde_json::Map::new();
            for argument in &child.arguments {
                fields.insert(argument.name.to_owned(), sample(&argument.ty));
            }
            let one = serde_json::Value::Object(fields);
            let value = if !child.repeatable {
                one
            } else if child.labels.is_empty() {
                serde_json::json!([one])
            } else {
                serde_json::json!({ "label": one })
            };
            attributes.insert(child.name.to_owned(), value);
        }
        let mut node = kip_core::plan::Desired {
            address: address.clone(),
            engine: engine.name().to_owned(),
            kind: kind.to_owned(),
            attributes,
            unknown: Default::default(),
            replace_on: Default::default(),
            sensitive: Default::default(),
            prevent_destroy: false,
            depends_on: Vec::new(),
        };
        if node.kind == kip_core::plan::INSTANCE && engine.schema().versioned {
            node.attributes
                .insert("version".into(), serde_json::json!("1"));
            node.attributes.insert("major".into(), serde_json::json!(1));
        }
        engine.derive(&mut node);
        engine
            .check_view(&node)
            .map_err(|error| format!("{address} ({kind}): {}", render(&error)))?;
        for child in schema.blocks.iter().filter(|child| child.object) {
            let label = if child.labels.is_empty() {
                kip_core::address::PathLabel::Index(0)
            } else {
                kip_core::address::PathLabel::Name("sample".into())
            };
            walk(engine, child, child.name, address.child(child.name, label))?;
        }
        Ok(())
    }
    let schema = engine.schema();
    walk(
        engine,
        &schema.instance,
        kip_core::plan::INSTANCE,
        Address::instance(schema.name, "main", None),
    )
}

/// The processes whose working directory is in `dir` (pid, `/proc` stat line, executable): what still runs of a
/// project when a step fails, so that a failure that depends on timing says what was there.
fn processes_in(dir: &Path) -> Vec<String> {
    kip_core::supervisor::working_in(dir)
        .into_iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_or_else(
                |error| format!("({error})"),
                |exe| exe.display().to_string(),
            );
            format!("{} {exe}", stat.trim_end())
        })
        .collect()
}
