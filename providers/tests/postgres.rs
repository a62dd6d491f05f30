//! The PostgreSQL provider against real PostgreSQL servers (16, and 14 for the converge scenario) from the test
//! mirror: template and provision, converge and drift, a thousand roles in one batch, settings (reload and
//! restart), and names that need quoting.
//!
//! As root (CI, containers) everything runs as an unprivileged account chosen by `kip_core::runas` (`KIP_RUN_AS`,
//! else the `kip` account, created when missing), in temp dirs under /tmp that the account can reach. Servers listen
//! on unix sockets only, and a guard stops every server a test started, also when the test fails. Timings are
//! printed with `timing:`; run with `--nocapture` to see them.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use kip_core::engine::{ProbeKind, RunAs};
use kip_providers::postgres::config::{pending_restart, reload};
use kip_providers::postgres::{
    AuthMethod, Connector, DatabaseSpec, GrantSpec, GrantTarget, InitOptions, Password, PgChange,
    PgError, RoleAttributes, ServerConfig, SettingValue, SettingsAction, apply, ensure_template,
    provision, read_live, settings_change, spawn_spec, write_config, write_hba,
};

// ---------------------------------------------------------------------------------------------------------------
// Fixtures: toolchains from the mirror, the account, sandboxes, servers.

struct Toolchain {
    version: String,
    root: PathBuf,
}

fn mirror() -> PathBuf {
    match std::env::var_os("KIP_TEST_MIRROR") {
        Some(mirror) if !mirror.is_empty() => PathBuf::from(mirror),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/kip/test-mirror"),
    }
}

/// The newest build of `major` in the mirror, unpacked (once per machine, keyed by its sha256) under
/// /tmp/kip-test-toolchains, where an unprivileged account can read it.
fn toolchain(major: u32) -> Toolchain {
    static UNPACKING: Mutex<()> = Mutex::new(());
    let mirror = mirror();
    let index_path = mirror.join("index.json");
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&index_path).unwrap_or_else(|error| {
            panic!(
                "cannot read the test mirror {}: {error}",
                index_path.display()
            )
        }),
    )
    .expect("the mirror index is JSON");
    let versions = index["engines"]["postgres"]
        .as_object()
        .expect("the mirror has postgres");
    let (version, builds) = versions
        .iter()
        .filter(|(version, _)| version.split('.').next() == Some(&major.to_string()))
        .max_by_key(|(version, _)| {
            version
                .split('.')
                .map(|part| part.parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
        })
        .unwrap_or_else(|| panic!("the test mirror has no PostgreSQL {major}"));
    let build = &builds["x86_64-unknown-linux-gnu"];
    let sha256 = build["sha256"].as_str().unwrap();
    let archive = mirror.join(build["url"].as_str().unwrap());

    let _guard = UNPACKING
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let base = PathBuf::from("/tmp/kip-test-toolchains");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = base.join(format!("postgres-{version}-{}", &sha256[..12]));
    if !root.join("bin/postgres").is_file() {
        let work = base.join(format!(".unpack-{version}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir(&work).unwrap();
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&work)
            .status()
            .unwrap();
        assert!(status.success(), "tar failed on {}", archive.display());
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();
        if std::fs::rename(&work, &root).is_err() {
            // Another test process unpacked it first.
            let _ = std::fs::remove_dir_all(&work);
        }
    }
    Toolchain {
        version: version.clone(),
        root,
    }
}

/// The account servers run as: None when the tests do not run as root.
fn run_as() -> Option<RunAs> {
    static RUN_AS: OnceLock<Option<RunAs>> = OnceLock::new();
    RUN_AS
        .get_or_init(|| {
            let env = std::env::var("KIP_RUN_AS").ok();
            kip_core::runas::resolve_run_as(None, env.as_deref(), kip_core::runas::DEFAULT_ACCOUNT)
                .expect("an account to run PostgreSQL as")
        })
        .clone()
}

/// A temp dir under /tmp that the account can traverse, holding templates, data dirs, sockets and logs.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("kip-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Sandbox { dir }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn templates(&self) -> PathBuf {
        self.path("templates")
    }
}

/// A running server, stopped on drop: SIGINT (fast shutdown), then SIGKILL to its process group.
struct Server {
    child: Child,
    log: PathBuf,
    connector: Connector,
    data_dir: PathBuf,
}

impl Server {
    fn stop(&mut self) {
        let Ok(None) = self.child.try_wait() else {
            return;
        };
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("a pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One instance: a data dir from the template, its config, and the server started from its SpawnSpec.
struct Instance {
    name: String,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    toolchain_root: PathBuf,
}

impl Instance {
    fn provision(
        sandbox: &Sandbox,
        toolchain: &Toolchain,
        template: &Path,
        name: &str,
    ) -> (Instance, Duration) {
        let run_as = run_as();
        let data_dir = sandbox.path(&format!("data/{name}"));
        let socket_dir = sandbox.path(&format!("run/{name}"));
        for directory in [
            sandbox.path("data"),
            sandbox.path("run"),
            sandbox.path("logs"),
        ] {
            std::fs::create_dir_all(&directory).unwrap();
            std::fs::set_permissions(&directory, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::create_dir_all(&socket_dir).unwrap();
        if let Some(run_as) = &run_as {
            kip_core::runas::chown_tree(&socket_dir, run_as).unwrap();
        }
        let started = Instant::now();
        provision(template, &data_dir, run_as.as_ref(), None).unwrap();
        let elapsed = started.elapsed();
        // These tests drive the provider's library below the engine contract, as the superuser without a password:
        // the template rejects every connection until kip's engine secures an instance, so open this one to its
        // private socket directory only (the engine's own first start is tested in kip's CLI and security tests).
        write_hba(&data_dir, AuthMethod::Trust, run_as.as_ref()).unwrap();
        let instance = Instance {
            name: name.to_owned(),
            data_dir,
            socket_dir,
            log: sandbox.path(&format!("logs/{name}.log")),
            toolchain_root: toolchain.root.clone(),
        };
        instance.configure(&BTreeMap::new());
        (instance, elapsed)
    }

    fn configure(&self, settings: &BTreeMap<String, SettingValue>) -> bool {
        let config = ServerConfig {
            socket_dir: &self.socket_dir,
            port: None,
            settings,
        };
        write_config(&self.data_dir, &config, run_as().as_ref()).unwrap()
    }

    /// Starts the server the way the supervisor will (program, args, env, cwd, account from the SpawnSpec) and
    /// waits for its socket probe, then for a session.
    async fn start(&self) -> (Server, Duration) {
        let spec = spawn_spec(
            &format!("postgres.{}", self.name),
            &self.toolchain_root,
            &self.data_dir,
            &self.socket_dir,
            None,
            &self.log,
            run_as(),
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .unwrap();
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(&spec.env)
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        if let Some(run_as) = &spec.run_as {
            command.uid(run_as.uid).gid(run_as.gid);
        }
        let started = Instant::now();
        let child = command.spawn().unwrap();
        let mut server = Server {
            child,
            log: spec.log.clone(),
            connector: Connector::new(&self.socket_dir, None),
            data_dir: self.data_dir.clone(),
        };
        let ProbeKind::Socket { path: socket } = &spec.probe.kind else {
            panic!("postgres probes its socket")
        };
        let deadline = started + spec.probe.timeout;
        while !socket.exists() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "postgres exited ({status}) before its socket appeared:\n{}",
                    server.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no socket after {:?}:\n{}",
                spec.probe.timeout,
                server.log_tail()
            );
            std::thread::sleep(spec.probe.interval);
        }
        let probed = started.elapsed();
        let client = server.connector.connect("postgres").await;
        if let Err(error) = &client {
            panic!(
                "cannot connect after the probe: {error}\n{}",
                server.log_tail()
            );
        }
        let ready = started.elapsed();
        eprintln!(
            "timing: {} socket probe {probed:?}, first session {ready:?}",
            self.name
        );
        let _ = &server.data_dir;
        (server, ready)
    }
}

fn template_for(sandbox: &Sandbox, toolchain: &Toolchain) -> (PathBuf, Duration) {
    let started = Instant::now();
    let template = ensure_template(
        &toolchain.root,
        &toolchain.version,
        &InitOptions::default(),
        &sandbox.templates(),
        run_as().as_ref(),
    )
    .unwrap();
    (template, started.elapsed())
}

/// A fresh server of `major`, ready.
async fn fresh_server(sandbox: &Sandbox, major: u32, name: &str) -> (Instance, Server) {
    let toolchain = toolchain(major);
    let (template, _) = template_for(sandbox, &toolchain);
    let (instance, _) = Instance::provision(sandbox, &toolchain, &template, name);
    let (server, _) = instance.start().await;
    (instance, server)
}

fn role(name: &str) -> PgChange {
    PgChange::CreateRole {
        name: name.into(),
        attributes: RoleAttributes::default(),
    }
}

fn grant(role: &str, target: GrantTarget, privileges: &[&str]) -> GrantSpec {
    GrantSpec {
        role: role.into(),
        target,
        privileges: privileges
            .iter()
            .map(|privilege| privilege.to_string())
            .collect(),
        with_grant_option: false,
    }
}

fn keys<V>(map: &BTreeMap<String, V>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

async fn sql(connector: &Connector, database: &str, statements: &str) {
    connector
        .connect(database)
        .await
        .unwrap()
        .batch_execute(statements)
        .await
        .unwrap();
}

async fn show(connector: &Connector, setting: &str) -> String {
    let client = connector.connect("postgres").await.unwrap();
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .unwrap()
        .get(0)
}

// ---------------------------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn one_template_two_independent_clusters() {
    let sandbox = Sandbox::new();
    let toolchain = toolchain(16);
    let (template, initdb) = template_for(&sandbox, &toolchain);
    let (again, cached) = template_for(&sandbox, &toolchain);
    assert_eq!(again, template);
    assert!(
        template.ends_with(format!("postgres-{}", toolchain.version)),
        "{}",
        template.display()
    );

    let (first, first_copy) = Instance::provision(&sandbox, &toolchain, &template, "first");
    let (second, second_copy) = Instance::provision(&sandbox, &toolchain, &template, "second");
    let mode = std::fs::metadata(&first.data_dir)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "PostgreSQL requires a private data dir");
    if let Some(run_as) = run_as() {
        use std::os::unix::fs::MetadataExt as _;
        let metadata = std::fs::metadata(first.data_dir.join("global/pg_control")).unwrap();
        assert_eq!((metadata.uid(), metadata.gid()), (run_as.uid, run_as.gid));
    }
    // Provisioning again leaves the data dir alone.
    std::fs::write(first.data_dir.join("marker"), "kept").unwrap();
    provision(&template, &first.data_dir, run_as().as_ref(), None).unwrap();
    assert!(first.data_dir.join("marker").exists());
    std::fs::remove_file(first.data_dir.join("marker")).unwrap();

    let (first_server, first_ready) = first.start().await;
    let (second_server, second_ready) = second.start().await;
    eprintln!(
        "timing: PostgreSQL {} initdb into the template {initdb:?}, template cached {cached:?}; provision (copy) \
         {first_copy:?} and {second_copy:?}; start to ready {first_ready:?} and {second_ready:?}",
        toolchain.version
    );

    sql(
        &first_server.connector,
        "postgres",
        "CREATE ROLE only_in_first",
    )
    .await;
    let first_live = read_live(&first_server.connector).await.unwrap();
    let second_live = read_live(&second_server.connector).await.unwrap();
    assert_eq!(keys(&first_live.roles), ["only_in_first"]);
    assert!(
        second_live.roles.is_empty(),
        "the clusters share nothing: {:?}",
        second_live.roles
    );
    assert_eq!(first_live.server_version / 10_000, 16);
}

#[test]
fn concurrent_builders_make_one_template() {
    let sandbox = Sandbox::new();
    let toolchain = toolchain(16);
    let started = Instant::now();
    let results: Vec<Result<PathBuf, PgError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    ensure_template(
                        &toolchain.root,
                        &toolchain.version,
                        &InitOptions::default(),
                        &sandbox.templates(),
                        run_as().as_ref(),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    });
    let paths: BTreeSet<PathBuf> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(paths.len(), 1, "{paths:?}");
    let leftovers: Vec<_> = std::fs::read_dir(sandbox.templates().join(".tmp"))
        .unwrap()
        .collect();
    assert!(
        leftovers.is_empty(),
        "no half-built template is left: {leftovers:?}"
    );
    eprintln!(
        "timing: three concurrent ensure_template calls took {:?} in all",
        started.elapsed()
    );
}

/// Roles, a database owned by a role, a schema, an extension and grants; read back exactly; idempotent; drift;
/// snapshot grants on tables; password authentication; drops that refuse to take user data.
async fn converge_scenario(major: u32) {
    let sandbox = Sandbox::new();
    let (instance, server) = fresh_server(&sandbox, major, "main").await;
    let mut connector = server.connector.clone();
    let app_password = r"it's a \ secret";
    let changes = vec![
        PgChange::CreateRole {
            name: "app".into(),
            attributes: RoleAttributes {
                login: true,
                connection_limit: 5,
                password: Some(Password::new(app_password)),
                ..RoleAttributes::default()
            },
        },
        PgChange::CreateRole {
            name: "readers".into(),
            attributes: RoleAttributes {
                inherit: false,
                valid_until: Some("2030-01-01 12:00:00+02".into()),
                ..Default::default()
            },
        },
        role("doomed"),
        PgChange::GrantMembership {
            role: "app".into(),
            group: "readers".into(),
        },
        PgChange::CreateDatabase {
            name: "shop".into(),
            spec: DatabaseSpec {
                owner: Some("app".into()),
                connection_limit: 20,
                ..DatabaseSpec::default()
            },
        },
        PgChange::CreateSchema {
            database: "shop".into(),
            name: "inventory".into(),
            owner: None,
        },
        PgChange::CreateExtension {
            database: "shop".into(),
            name: "pgcrypto".into(),
            schema: None,
            version: None,
        },
        PgChange::Grant(grant(
            "readers",
            GrantTarget::Database {
                database: "shop".into(),
            },
            &["CONNECT"],
        )),
        PgChange::Grant(grant(
            "readers",
            GrantTarget::Schema {
                database: "shop".into(),
                schema: "inventory".into(),
            },
            &["USAGE"],
        )),
        PgChange::Grant(grant(
            "readers",
            GrantTarget::Tables {
                database: "shop".into(),
                schema: "inventory".into(),
            },
            &["SELECT"],
        )),
    ];
    let started = Instant::now();
    apply(&connector, &changes).await.unwrap();
    let applied = started.elapsed();
    let started = Instant::now();
    let live = read_live(&connector).await.unwrap();
    eprintln!(
        "timing: PostgreSQL {major} converge {applied:?}, read_live {:?}",
        started.elapsed()
    );

    assert_eq!(keys(&live.roles), ["app", "doomed", "readers"]);
    let app = &live.roles["app"];
    assert!(app.login && app.has_password && app.inherit && !app.superuser && !app.createdb);
    assert_eq!(app.connection_limit, 5);
    assert_eq!(app.member_of, BTreeSet::from(["readers".to_owned()]));
    let readers = &live.roles["readers"];
    assert!(!readers.login && !readers.inherit && !readers.has_password);
    assert_eq!(readers.valid_until.as_deref(), Some("2030-01-01T10:00:00Z"));
    assert_eq!(live.roles["doomed"].valid_until, None);

    assert_eq!(keys(&live.databases), ["shop"]);
    let shop = &live.databases["shop"];
    assert_eq!(
        (
            shop.owner.as_str(),
            shop.encoding.as_str(),
            shop.lc_collate.as_str()
        ),
        ("app", "UTF8", "C")
    );
    assert_eq!(shop.connection_limit, 20);
    assert!(shop.contents_read && shop.allow_connections && !shop.is_template);
    assert!(shop.holds("readers", &["CONNECT"], false));
    assert!(!shop.holds("readers", &["CREATE"], false));
    assert!(
        shop.holds("app", &["CONNECT", "CREATE", "TEMPORARY"], false),
        "the owner holds everything"
    );
    assert_eq!(keys(&shop.schemas), ["inventory", "public"]);
    let inventory = &shop.schemas["inventory"];
    assert_eq!(
        inventory.owner, "app",
        "a schema without owner goes to the database's owner"
    );
    assert_eq!(
        inventory.grants["readers"],
        BTreeMap::from([("USAGE".to_owned(), false)])
    );
    assert_eq!(inventory.tables.objects, 0);
    assert!(
        inventory.tables.holds("readers", &["SELECT"], false),
        "no tables: the grant holds vacuously"
    );
    assert_eq!(keys(&shop.extensions), ["pgcrypto", "plpgsql"]);
    assert_eq!(shop.extensions["pgcrypto"].schema, "public");

    // The same changes again change nothing.
    apply(&connector, &changes).await.unwrap();
    assert_eq!(
        read_live(&connector).await.unwrap(),
        live,
        "applying twice is a no-op"
    );

    // Grants on tables are a snapshot: a table made later does not have them, which is drift, and a new apply of
    // the same grant repairs it.
    sql(
        &connector,
        "shop",
        "CREATE TABLE inventory.items (id int); INSERT INTO inventory.items VALUES (1)",
    )
    .await;
    let drifted = read_live(&connector).await.unwrap();
    let tables = &drifted.databases["shop"].schemas["inventory"].tables;
    assert_eq!(tables.objects, 1);
    assert!(!tables.holds("readers", &["SELECT"], false));
    apply(&connector, &changes).await.unwrap();
    let repaired = read_live(&connector).await.unwrap();
    assert!(
        repaired.databases["shop"].schemas["inventory"]
            .tables
            .holds("readers", &["SELECT"], false)
    );

    // Drift behind kip's back: a role dropped with plain SQL is gone from the live view.
    sql(&connector, "postgres", "DROP ROLE doomed").await;
    let live = read_live(&connector).await.unwrap();
    assert_eq!(keys(&live.roles), ["app", "readers"]);

    // Password authentication: give the superuser a password, switch pg_hba.conf to scram-sha-256, reload.
    let superuser_password = "kip's generated one";
    apply(
        &connector,
        &[PgChange::SetPassword {
            role: "postgres".into(),
            password: Password::new(superuser_password),
        }],
    )
    .await
    .unwrap();
    assert!(
        write_hba(
            &instance.data_dir,
            AuthMethod::ScramSha256,
            run_as().as_ref()
        )
        .unwrap()
    );
    reload(&connector.connect("postgres").await.unwrap())
        .await
        .unwrap();
    assert!(
        connector.connect("postgres").await.is_err(),
        "no password, no session"
    );
    connector.password = Some(Password::new(superuser_password));
    connector.connect("postgres").await.unwrap();
    let as_app = Connector {
        user: "app".into(),
        password: Some(Password::new(app_password)),
        quiet_log: false,
        ..connector.clone()
    };
    as_app.connect("shop").await.unwrap();
    let wrong = Connector {
        password: Some(Password::new("wrong")),
        ..as_app.clone()
    };
    assert!(wrong.connect("shop").await.is_err());

    // Drops never take user data: a schema holding a table is not dropped (no CASCADE), and the table stays.
    let refused = apply(
        &connector,
        &[PgChange::DropSchema {
            database: "shop".into(),
            name: "inventory".into(),
        }],
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Some("2BP01"), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("DROP SCHEMA IF EXISTS \"inventory\""),
        "{refused}"
    );
    assert!(
        refused.hint().unwrap_or_default().contains("items"),
        "PostgreSQL's detail names the table: {refused:?}"
    );
    let client = connector.connect("shop").await.unwrap();
    let rows: i64 = client
        .query_one("SELECT count(*) FROM inventory.items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    drop(client);

    // Dropping the database is the one thing that removes its data, and only when asked; twice is fine.
    let drop_shop = [PgChange::DropDatabase {
        name: "shop".into(),
        force: false,
    }];
    apply(&connector, &drop_shop).await.unwrap();
    apply(&connector, &drop_shop).await.unwrap();
    assert!(read_live(&connector).await.unwrap().databases.is_empty());
}

#[tokio::test]
async fn converge_and_drift_on_16() {
    converge_scenario(16).await;
}

#[tokio::test]
async fn converge_and_drift_on_14() {
    converge_scenario(14).await;
}

#[tokio::test]
async fn a_thousand_roles_in_one_batch() {
    let sandbox = Sandbox::new();
    let (_instance, server) = fresh_server(&sandbox, 16, "many").await;
    let connector = &server.connector;
    let changes: Vec<PgChange> = (0..1000)
        .map(|index| role(&format!("role_{index:04}")))
        .collect();
    let started = Instant::now();
    apply(connector, &changes).await.unwrap();
    let created = started.elapsed();
    let started = Instant::now();
    let live = read_live(connector).await.unwrap();
    let read = started.elapsed();
    assert_eq!(live.roles.len(), 1000);
    let started = Instant::now();
    apply(connector, &changes).await.unwrap();
    let again = started.elapsed();
    assert_eq!(read_live(connector).await.unwrap(), live);

    let with_passwords: Vec<PgChange> = (0..1000)
        .map(|index| PgChange::CreateRole {
            name: format!("user_{index:04}"),
            attributes: RoleAttributes {
                login: true,
                password: Some(Password::new(format!("password-{index}"))),
                ..RoleAttributes::default()
            },
        })
        .collect();
    let started = Instant::now();
    apply(connector, &with_passwords).await.unwrap();
    let logins = started.elapsed();
    assert_eq!(read_live(connector).await.unwrap().roles.len(), 2000);
    eprintln!(
        "timing: 1000 roles created in {created:?} (read back in {read:?}, applied again in {again:?}); 1000 login \
         roles with passwords (SCRAM hashed by the server) in {logins:?}"
    );
}

#[tokio::test]
async fn settings_reload_or_restart() {
    let sandbox = Sandbox::new();
    let (instance, mut server) = fresh_server(&sandbox, 16, "tuned").await;
    let client = server.connector.connect("postgres").await.unwrap();

    let mut settings =
        BTreeMap::from([("work_mem".to_owned(), SettingValue::String("8MB".into()))]);
    assert_eq!(
        settings_change(&client, &settings).await.unwrap(),
        SettingsAction::Reload
    );
    assert!(instance.configure(&settings));
    assert!(
        !instance.configure(&settings),
        "rewriting the same settings changes nothing"
    );
    reload(&client).await.unwrap();
    assert_eq!(show(&server.connector, "work_mem").await, "8MB");
    assert_eq!(
        settings_change(&client, &settings).await.unwrap(),
        SettingsAction::None
    );
    // The same value in another unit is no change.
    let in_kb = BTreeMap::from([("work_mem".to_owned(), SettingValue::String("8192kB".into()))]);
    assert_eq!(
        settings_change(&client, &in_kb).await.unwrap(),
        SettingsAction::None
    );

    settings.insert("shared_buffers".into(), SettingValue::String("64MB".into()));
    assert_eq!(
        settings_change(&client, &settings).await.unwrap(),
        SettingsAction::Restart
    );
    instance.configure(&settings);
    reload(&client).await.unwrap();
    assert_eq!(pending_restart(&client).await.unwrap(), ["shared_buffers"]);
    assert_eq!(
        settings_change(&client, &settings).await.unwrap(),
        SettingsAction::Restart,
        "still pending"
    );
    drop(client);

    server.stop();
    let (restarted, _) = instance.start().await;
    server = restarted;
    assert_eq!(show(&server.connector, "shared_buffers").await, "64MB");
    let client = server.connector.connect("postgres").await.unwrap();
    assert_eq!(
        settings_change(&client, &settings).await.unwrap(),
        SettingsAction::None
    );

    // A setting removed from kip.hcl goes back to its default: a change too.
    settings.remove("work_mem");
    assert_eq!(
        settings_change(&client, &settings).await.unwrap(),
        SettingsAction::Reload
    );
    instance.configure(&settings);
    reload(&client).await.unwrap();
    assert_eq!(show(&server.connector, "work_mem").await, "4MB");

    // Settings PostgreSQL does not have, or that no config can change, are refused before anything is written.
    let unknown = BTreeMap::from([("work_memory".to_owned(), SettingValue::String("8MB".into()))]);
    assert!(matches!(
        settings_change(&client, &unknown).await,
        Err(PgError::InvalidSetting { .. })
    ));
    let internal = BTreeMap::from([("block_size".to_owned(), SettingValue::Integer(8192))]);
    assert!(matches!(
        settings_change(&client, &internal).await,
        Err(PgError::InvalidSetting { .. })
    ));
}

#[tokio::test]
async fn names_that_need_quoting_round_trip() {
    let sandbox = Sandbox::new();
    let (_instance, server) = fresh_server(&sandbox, 16, "quoted").await;
    let connector = &server.connector;
    let weird_roles = [
        r#"we"ird role"#,
        "ünï 🐘",
        "'; DROP ROLE postgres; --",
        "Mixed Case",
        r"back\slash",
    ];
    let database = r#"data base "q" ü'"#;
    let schema = "s'c h\"";
    let mut changes: Vec<PgChange> = weird_roles
        .iter()
        .map(|name| PgChange::CreateRole {
            name: (*name).into(),
            attributes: RoleAttributes {
                login: true,
                password: Some(Password::new(r#"p'a\ss"w"#)),
                ..RoleAttributes::default()
            },
        })
        .collect();
    changes.push(PgChange::GrantMembership {
        role: weird_roles[1].into(),
        group: weird_roles[0].into(),
    });
    changes.push(PgChange::CreateDatabase {
        name: database.into(),
        spec: DatabaseSpec {
            owner: Some(weird_roles[0].into()),
            ..DatabaseSpec::default()
        },
    });
    changes.push(PgChange::CreateSchema {
        database: database.into(),
        name: schema.into(),
        owner: Some(weird_roles[2].into()),
    });
    changes.push(PgChange::Grant(grant(
        weird_roles[3],
        GrantTarget::Database {
            database: database.into(),
        },
        &["ALL"],
    )));
    changes.push(PgChange::Grant(grant(
        weird_roles[4],
        GrantTarget::Schema {
            database: database.into(),
            schema: schema.into(),
        },
        &["usage", "create"],
    )));
    apply(connector, &changes).await.unwrap();
    apply(connector, &changes).await.unwrap();

    let live = read_live(connector).await.unwrap();
    let expected: BTreeSet<&str> = weird_roles.iter().copied().collect();
    assert_eq!(
        live.roles
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        expected
    );
    assert!(
        live.roles.contains_key("ünï 🐘")
            && live.roles["ünï 🐘"].member_of.contains(r#"we"ird role"#)
    );
    assert_eq!(keys(&live.databases), [database]);
    let live_database = &live.databases[database];
    assert_eq!(live_database.owner, weird_roles[0]);
    assert!(live_database.holds("Mixed Case", &["CONNECT", "CREATE", "TEMPORARY"], false));
    assert_eq!(live_database.schemas[schema].owner, weird_roles[2]);
    assert!(live_database.schemas[schema].holds(r"back\slash", &["CREATE", "USAGE"], false));
    // The database with the odd name takes connections under that name.
    connector.connect(database).await.unwrap();

    // Too long to be stored as written: refused rather than truncated.
    let too_long = apply(connector, &[role(&"x".repeat(64))])
        .await
        .unwrap_err();
    assert!(
        matches!(too_long, PgError::InvalidName { .. }),
        "{too_long}"
    );
}
