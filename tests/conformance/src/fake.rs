//! A fake engine, `fake`, that keeps its objects in a JSON file in its data directory and runs its "processes" on
//! the in-memory supervisor ([`kip_core::supervise::MemorySupervisors`]). It passes the conformance suite like a
//! real engine, and its knobs make the parts of the lifecycle that real engines rarely exercise happen on demand:
//! a start that fails, a provider that panics, several processes started in order, a reload, a restart, a job
//! with a chosen exit code, a forced replacement, a slow provisioning (to see parallel starts). Everything it does
//! is written to a [`Journal`] the tests read.
//!
//! ```hcl
//! fake "main" {
//!   processes = 2          # two processes, the second started after the first
//!   setting   = "x"        # a change reloads
//!   item "kept" { value = "k" }
//! }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kip_core::address::Address;
use kip_core::engine::{
    BoxFuture, Engine, EngineError, Exports, InstanceCtx, Managed, Observed, Probe, ProbeKind,
    Reconfigure, RestartPolicy, SpawnSpec, StopSpec,
};
use kip_core::plan::{Action, Change};
use kip_core::supervise::memory_programs;
use kip_schemas::{
    ArgumentSchema as Arg, BlockSchema as Block, EngineSchema, ExportSchema as Export,
    ValueType as T,
};
use serde::Deserialize;
use serde_json::{Value as Json, json};

/// The `fake` engine's schema.
pub fn schema() -> &'static EngineSchema {
    static SCHEMA: OnceLock<EngineSchema> = OnceLock::new();
    SCHEMA.get_or_init(|| EngineSchema {
        name: "fake",
        doc: "A fake engine for kip's own tests: objects in a JSON file, processes in memory.",
        majors: Vec::new(),
        versioned: false,
        replace_on_new_major: false,
        instance: Block::named_object("fake", "name", "A fake instance.")
            .arguments(vec![
                Arg::new("fail", T::Bool, "Its start fails.").with_default(false),
                Arg::new(
                    "panic",
                    T::Enum(vec!["none", "provision", "converge"]),
                    "The provider panics in this step.",
                )
                .with_default("none"),
                Arg::new(
                    "processes",
                    T::Number,
                    "How many processes, each after the previous.",
                )
                .with_default(1),
                Arg::new("setting", T::String, "A change reloads the processes.").with_default("a"),
                Arg::new(
                    "restart_setting",
                    T::String,
                    "A change restarts the processes.",
                )
                .with_default("a"),
                Arg::new("flavour", T::String, "A change replaces the instance.")
                    .with_default("plain")
                    .forces_replacement(),
                Arg::new("job", T::Bool, "Its process is a job.").with_default(false),
                Arg::new("exit_code", T::Number, "The job's exit code.").with_default(0),
                Arg::new(
                    "password",
                    T::String,
                    "The instance's password; generated when unset.",
                )
                .sensitive(),
                Arg::new(
                    "delay_ms",
                    T::Number,
                    "Provisioning takes this long, and so does each refresh.",
                )
                .with_default(0),
                Arg::new(
                    "listens",
                    T::Bool,
                    "It gets a loopback port kip chooses (named `listen`), passed as `port=N`.",
                )
                .with_default(false),
                Arg::new(
                    "after_start",
                    T::Bool,
                    "It has an after-start step (false: it has none, as most engines).",
                )
                .with_default(true),
            ])
            .blocks(vec![
                Block::named_object("item", "name", "An object in the fake's store.")
                    .arguments(vec![
                        Arg::new("value", T::String, "The item's value.").required(),
                        Arg::new("secret", T::String, "A secret of the item.").sensitive(),
                    ])
                    .exports(vec![
                        Export::new("name", "The item's name."),
                        Export::new("url", "Where the item lives, with the password.").sensitive(),
                    ]),
            ])
            .exports(vec![
                Export::new("url", "The store, with the password.").sensitive(),
                Export::new("host", "Always 127.0.0.1."),
                Export::new("password", "The password.").sensitive(),
            ]),
    })
}

/// What the fake engine did, in order, for tests to read.
#[derive(Debug, Clone, Default)]
pub struct Journal(Arc<Mutex<Vec<Event>>>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub address: String,
    pub what: &'static str,
    pub at: Instant,
}

impl Journal {
    fn record(&self, address: &Address, what: &'static str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Event {
                address: address.to_string(),
                what,
                at: Instant::now(),
            });
    }

    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// When `what` happened to `address`, first.
    /// How many times the fake did `what`, to any instance.
    pub fn count(&self, what: &str) -> usize {
        self.events()
            .iter()
            .filter(|event| event.what == what)
            .count()
    }

    pub fn when(&self, address: &str, what: &str) -> Option<Instant> {
        self.events()
            .into_iter()
            .find(|event| event.address == address && event.what == what)
            .map(|event| event.at)
    }
}

/// The fake engine.
#[derive(Debug, Clone, Default)]
pub struct Fake {
    pub journal: Journal,
    squatter: Squatter,
    /// Ports the engine cannot use though nothing listens on them ([`Engine::port_unusable`]).
    unusable: Arc<Mutex<Vec<u16>>>,
}

/// Another program that takes the port kip chooses for an instance right after provisioning chose it, before the
/// start: the next `provisions` times ([`Fake::take_chosen_port_after_next_provisions`]).
#[derive(Debug, Clone, Default)]
struct Squatter(Arc<Mutex<(u32, Vec<std::net::TcpListener>)>>);

impl Fake {
    /// Makes another program take the port chosen by each of the next `provisions` provisionings, and hold it.
    pub fn take_chosen_port_after_next_provisions(&self, provisions: u32) {
        self.squatter.lock().0 = provisions;
    }

    /// Makes `port` one the engine cannot use, as another account's file named after it would (SeaweedFS's gRPC
    /// sockets in /tmp): never chosen, and given up when kept.
    pub fn make_port_unusable(&self, port: u16) {
        self.unusable
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(port);
    }

    fn usable(&self, port: u16) -> bool {
        !self
            .unusable
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .contains(&port)
    }

    /// The ports taken that way, in order.
    pub fn squatted_ports(&self) -> Vec<u16> {
        self.squatter
            .lock()
            .1
            .iter()
            .filter_map(|listener| listener.local_addr().ok())
            .map(|address| address.port())
            .collect()
    }
}

impl Squatter {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u32, Vec<std::net::TcpListener>)> {
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    fn take(&self, port: u16) -> Result<(), EngineError> {
        let mut squatter = self.lock();
        if squatter.0 > 0 {
            squatter.0 -= 1;
            let listener = std::net::TcpListener::bind(("127.0.0.1", port))
                .map_err(|e| EngineError::with_source("the test's squatter cannot bind", e))?;
            squatter.1.push(listener);
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeArgs {
    fail: bool,
    panic: String,
    processes: u32,
    setting: String,
    restart_setting: String,
    flavour: String,
    job: bool,
    exit_code: i64,
    password: Option<String>,
    delay_ms: u64,
    listens: bool,
    after_start: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemArgs {
    value: String,
    secret: Option<String>,
}

/// What the fake's prefetch read: its store.
struct ReadAhead(Json);

/// The name of the port kip chooses for an instance that `listens`.
pub const LISTEN_PORT: &str = "listen";

/// The store file of an instance.
pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("store.json")
}

/// Reads a store (`{"items": {name: {"value": …}}, "data": {key: value}}`).
pub fn read_store(path: &Path) -> Result<Json, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not a store: {e}", path.display()))
}

/// Writes a store whole.
pub fn write_store(path: &Path, store: &Json) -> Result<(), String> {
    let text = serde_json::to_string_pretty(store).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn engine_error(message: String) -> EngineError {
    EngineError::new(message)
}

const PASSWORD: &str = "password";

impl Engine for Fake {
    fn schema(&self) -> &'static EngineSchema {
        schema()
    }

    fn runs_as_caller(&self) -> bool {
        true
    }

    fn check_view(&self, node: &kip_core::plan::Desired) -> Result<(), EngineError> {
        match node.kind.as_str() {
            "item" => {
                kip_core::engine::typed::<ItemArgs>(&node.address, &node.attributes).map(drop)
            }
            _ => kip_core::engine::typed::<FakeArgs>(&node.address, &node.attributes).map(drop),
        }
    }

    fn provision<'a>(&'a self, ctx: &'a mut InstanceCtx) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let args: FakeArgs = ctx.args()?;
            self.journal.record(&ctx.address, "provision started");
            if args.panic == "provision" {
                panic!("the fake engine panics in provision, as told");
            }
            if args.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(args.delay_ms)).await;
            }
            std::fs::create_dir_all(&ctx.data_dir)
                .map_err(|e| EngineError::with_source("cannot create the data directory", e))?;
            let path = store_path(&ctx.data_dir);
            if !path.exists() {
                write_store(&path, &json!({ "items": {}, "data": {} })).map_err(engine_error)?;
            }
            if ctx.secrets.get(PASSWORD).is_none() {
                let password = match args.password {
                    Some(password) => password,
                    None => kip_core::engine::random_hex(16)?,
                };
                ctx.secrets.0.insert(PASSWORD.into(), password);
            }
            if args.listens {
                let port = ctx.port_where(LISTEN_PORT, |port| self.usable(port))?;
                self.squatter.take(port)?;
            }
            self.journal.record(&ctx.address, "provisioned");
            Ok(())
        })
    }

    fn port_unusable(&self, _ctx: &InstanceCtx, _name: &str, port: u16) -> bool {
        !self.usable(port)
    }

    fn spawn_specs(&self, ctx: &InstanceCtx) -> Result<Vec<SpawnSpec>, EngineError> {
        let args: FakeArgs = ctx.args()?;
        let count = args.processes.max(1);
        let mut specs: Vec<SpawnSpec> = Vec::new();
        for index in 0..count {
            let process = (count > 1).then(|| format!("p{index}"));
            let program = if args.job {
                memory_programs::EXIT
            } else if args.fail {
                memory_programs::FAIL
            } else {
                memory_programs::SERVE
            };
            specs.push(SpawnSpec {
                name: SpawnSpec::name_for(&ctx.address, process.as_deref()),
                instance: ctx.address.to_string(),
                program: program.into(),
                args: [
                    args.exit_code.to_string(),
                    args.setting.clone(),
                    args.restart_setting.clone(),
                    args.flavour.clone(),
                ]
                .into_iter()
                .chain(
                    ctx.ports
                        .get(LISTEN_PORT)
                        .map(|port| format!("{}{port}", memory_programs::PORT_ARG)),
                )
                .collect(),
                env: BTreeMap::new(),
                cwd: ctx.data_dir.clone(),
                run_as: None,
                probe: Probe {
                    kind: ProbeKind::None,
                    initial_delay: Duration::ZERO,
                    interval: Duration::from_millis(10),
                    timeout: Duration::from_secs(5),
                    retries: None,
                },
                restart: if args.job {
                    RestartPolicy::No
                } else {
                    RestartPolicy::OnFailure
                },
                max_restarts: Some(3),
                restart_delay_ms: None,
                stop: StopSpec::default(),
                log: ctx.log(process.as_deref().unwrap_or("fake")),
                after: specs
                    .last()
                    .map(|previous| vec![previous.name.clone()])
                    .unwrap_or_default(),
                reload: Some("SIGHUP".into()),
                job: args.job,
                leaves: Vec::new(),
            });
        }
        Ok(specs)
    }

    fn after_start<'a>(
        &'a self,
        ctx: &'a mut InstanceCtx,
    ) -> Option<BoxFuture<'a, Result<(), EngineError>>> {
        let args: FakeArgs = ctx.args().ok()?;
        args.after_start
            .then(|| -> BoxFuture<'a, Result<(), EngineError>> {
                Box::pin(async move {
                    self.journal.record(&ctx.address, "after start");
                    Ok(())
                })
            })
    }

    fn reconfigure<'a>(
        &'a self,
        ctx: &'a mut InstanceCtx,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<Reconfigure, EngineError>> {
        let changed = change.changed_attributes();
        let action = if changed.iter().any(|name| name == "restart_setting") {
            Reconfigure::Restart
        } else if changed.iter().any(|name| name == "setting") {
            Reconfigure::Reload
        } else {
            Reconfigure::Done
        };
        self.journal.record(&ctx.address, "reconfigured");
        Box::pin(async move { Ok(action) })
    }

    /// The store as the plan began, read ahead of the refresh (after `delay_ms`, as refresh).
    fn prefetch<'a>(
        &'a self,
        ctx: &'a InstanceCtx,
    ) -> BoxFuture<'a, Option<Box<dyn std::any::Any + Send>>> {
        Box::pin(async move {
            let args: FakeArgs = ctx.args().ok()?;
            if args.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(args.delay_ms)).await;
            }
            let store = read_store(&store_path(&ctx.data_dir)).ok()?;
            self.journal.record(&ctx.address, "read ahead");
            Some(Box::new(ReadAhead(store)) as Box<dyn std::any::Any + Send>)
        })
    }

    fn refresh<'a>(
        &'a self,
        ctx: &'a InstanceCtx,
        managed: &'a [Managed<'a>],
    ) -> BoxFuture<'a, Result<Vec<Observed>, EngineError>> {
        Box::pin(async move {
            self.journal.record(&ctx.address, "refresh started");
            let args: FakeArgs = ctx.args()?;
            if args.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(args.delay_ms)).await;
            }
            let store = match ctx.session.take::<ReadAhead>() {
                Some(ReadAhead(store)) => {
                    self.journal
                        .record(&ctx.address, "refresh took the read-ahead");
                    store
                }
                None => read_store(&store_path(&ctx.data_dir)).map_err(engine_error)?,
            };
            self.journal.record(&ctx.address, "refreshed");
            Ok(managed
                .iter()
                .filter_map(|node| {
                    let item = store["items"].get(node.address.label()?)?;
                    let mut attributes = BTreeMap::new();
                    attributes.insert("value".to_owned(), item["value"].clone());
                    Some(Observed {
                        address: node.address.clone(),
                        attributes,
                    })
                })
                .collect())
        })
    }

    fn converge<'a>(
        &'a self,
        ctx: &'a mut InstanceCtx,
        changes: &'a [Change],
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let args: FakeArgs = ctx.args()?;
            if args.panic == "converge" {
                panic!("the fake engine panics in converge, as told");
            }
            let path = store_path(&ctx.data_dir);
            let mut store = read_store(&path).map_err(engine_error)?;
            for change in changes {
                let Some(name) = change.address.label() else {
                    continue;
                };
                match change.action {
                    Action::Delete => {
                        if let Some(items) = store["items"].as_object_mut() {
                            items.remove(name);
                        }
                    }
                    Action::Noop => {}
                    _ => {
                        let item: ItemArgs = change.after_as()?;
                        store["items"][name] =
                            json!({ "value": item.value, "secret": item.secret });
                    }
                }
            }
            write_store(&path, &store).map_err(engine_error)?;
            self.journal.record(&ctx.address, "converged");
            Ok(())
        })
    }

    fn exports(&self, ctx: &InstanceCtx, object: Option<&Address>) -> Result<Exports, EngineError> {
        let password = ctx.secrets.get(PASSWORD).unwrap_or_default();
        let store = store_path(&ctx.data_dir);
        let url = format!("fake://:{password}@{}", store.display());
        let mut exports = Exports::new();
        match object {
            None => {
                exports.insert("url".into(), json!(url));
                exports.insert("host".into(), json!("127.0.0.1"));
                exports.insert("password".into(), json!(password));
            }
            Some(object) => {
                let name = object.label().unwrap_or_default();
                exports.insert("name".into(), json!(name));
                exports.insert("url".into(), json!(format!("{url}#{name}")));
            }
        }
        Ok(exports)
    }
}

/// The store path in a fake URL (`fake://:PASSWORD@/path/store.json`).
pub fn store_of_url(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("fake://")?;
    let (_, path) = rest.split_once('@')?;
    let path = path.split('#').next()?;
    Some(PathBuf::from(path))
}

/// The fake engine's fixture for the conformance suite: items, one pruned, data in the store's `data` map, drift
/// made by editing the store behind kip's back.
#[derive(Debug, Default)]
pub struct FakeFixture;

const FIXTURE: &str = r#"fake "main" {
  setting = "one"

  item "kept" {
    value  = "k"
    secret = "hunter2"
  }
  item "app.user" { value = "a label with a dot" }
  item "pruned" { value = "p" }
}
"#;

fn fixture_store(exports: &Exports) -> Result<PathBuf, String> {
    let url = exports
        .get("url")
        .and_then(Json::as_str)
        .ok_or("the instance exports no url")?;
    store_of_url(url).ok_or_else(|| format!("{url} is not a fake url"))
}

impl crate::Fixture for FakeFixture {
    fn engine(&self) -> &'static str {
        "fake"
    }

    fn version(&self) -> Option<String> {
        None
    }

    fn config(&self) -> String {
        FIXTURE.to_owned()
    }

    fn pruned(&self) -> (String, Address) {
        (
            FIXTURE.replace("  item \"pruned\" { value = \"p\" }\n", ""),
            Address::instance("fake", "main", None).named_child("item", "pruned"),
        )
    }

    fn check_objects(&self, exports: &Exports) -> Result<(), String> {
        let store = read_store(&fixture_store(exports)?)?;
        for (name, value) in [("kept", "k"), ("app.user", "a label with a dot")] {
            if store["items"][name]["value"] != value {
                return Err(format!("item {name:?} is {}", store["items"][name]));
            }
        }
        Ok(())
    }

    fn write_data(&self, exports: &Exports) -> Result<(), String> {
        let path = fixture_store(exports)?;
        let mut store = read_store(&path)?;
        store["data"]["greeting"] = json!("hello");
        write_store(&path, &store)
    }

    fn read_data(&self, exports: &Exports) -> Result<bool, String> {
        let store = read_store(&fixture_store(exports)?)?;
        Ok(store["data"]["greeting"] == "hello")
    }

    fn drift(&self, exports: &Exports) -> Result<Vec<(Address, String)>, String> {
        let path = fixture_store(exports)?;
        let mut store = read_store(&path)?;
        store["items"]["kept"]["value"] = json!("changed behind kip's back");
        write_store(&path, &store)?;
        Ok(vec![(
            Address::instance("fake", "main", None).named_child("item", "kept"),
            "value".to_owned(),
        )])
    }
}
