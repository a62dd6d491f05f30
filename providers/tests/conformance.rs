//! PostgreSQL 14 and 16, and Valkey 8 and 9, through the conformance suite, with the real supervisor and the real
//! servers from the test mirror served over loopback HTTP, checked with each engine's own client (tokio-postgres,
//! the `redis` crate) through the instance's exports.

#[path = "../../core/tests/support/http.rs"]
mod http;

use std::path::PathBuf;
use std::sync::OnceLock;

use kip_conformance::{Fixture, Setup, run};
use kip_core::address::Address;
use kip_core::engine::Exports;

/// The test mirror that `scripts/test-mirror.sh` builds.
fn test_mirror() -> PathBuf {
    let dir = std::env::var_os("KIP_TEST_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache")
                });
            cache.join("kip/test-mirror")
        });
    assert!(
        dir.join("index.json").exists(),
        "the test mirror is missing at {}: run scripts/test-mirror.sh",
        dir.display()
    );
    dir
}

/// One toolchain store and template cache for the tests of this binary (reachable by the engines' account).
fn cache() -> PathBuf {
    static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = CACHE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        dir
    });
    dir.path().to_path_buf()
}

struct PostgresFixture {
    version: &'static str,
}

fn main_address() -> Address {
    Address::instance("postgres", "main", None)
}

impl PostgresFixture {
    fn config_with(&self, scratch: bool) -> String {
        let scratch = if scratch {
            "  database \"scratch\" {}\n"
        } else {
            ""
        };
        format!(
            r#"postgres "main" {{
  version = "{version}"

  role "app" {{ login = true }}
  role "reader" {{}}
  database "shop" {{ owner = "app" }}
{scratch}
  grant {{
    role       = "reader"
    database   = "shop"
    privileges = ["CONNECT"]
  }}
}}
"#,
            version = self.version
        )
    }

    fn query(&self, url: &str, statements: &str) -> Result<Vec<Vec<String>>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{url}: {e}"))?;
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let messages = client
                .simple_query(statements)
                .await
                .map_err(|e| e.to_string())?;
            Ok(messages
                .into_iter()
                .filter_map(|message| match message {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|index| row.get(index).unwrap_or("NULL").to_owned())
                            .collect(),
                    ),
                    _ => None,
                })
                .collect())
        })
    }

    fn url(exports: &Exports) -> Result<String, String> {
        exports
            .get("url")
            .and_then(|url| url.as_str())
            .map(str::to_owned)
            .ok_or_else(|| "no url export".to_owned())
    }

    /// The superuser's URL to another database.
    fn url_of(exports: &Exports, database: &str) -> Result<String, String> {
        Ok(Self::url(exports)?.replacen("@/postgres?", &format!("@/{database}?"), 1))
    }
}

impl Fixture for PostgresFixture {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    fn version(&self) -> Option<String> {
        Some(self.version.to_owned())
    }

    fn config(&self) -> String {
        self.config_with(true)
    }

    fn pruned(&self) -> (String, Address) {
        (
            self.config_with(false),
            main_address().named_child("database", "scratch"),
        )
    }

    fn check_objects(&self, exports: &Exports) -> Result<(), String> {
        let rows = self.query(
            &Self::url(exports)?,
            "SELECT rolname, rolcanlogin::text FROM pg_roles WHERE rolname IN ('app', 'reader') ORDER BY 1; \
             SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'; \
             SELECT has_database_privilege('reader', 'shop', 'CONNECT')::text",
        )?;
        let expected = [
            vec!["app", "true"],
            vec!["reader", "false"],
            vec!["shop", "app"],
            vec!["true"],
        ];
        if rows != expected {
            return Err(format!("expected {expected:?}, the server has {rows:?}"));
        }
        Ok(())
    }

    fn write_data(&self, exports: &Exports) -> Result<(), String> {
        self.query(
            &Self::url_of(exports, "shop")?,
            "CREATE TABLE IF NOT EXISTS conformance (v text); INSERT INTO conformance VALUES ('kept')",
        )
        .map(drop)
    }

    fn read_data(&self, exports: &Exports) -> Result<bool, String> {
        let rows = self.query(&Self::url_of(exports, "shop")?, "SELECT v FROM conformance")?;
        Ok(rows.iter().any(|row| row[0] == "kept"))
    }

    fn drift(&self, exports: &Exports) -> Result<Vec<(Address, String)>, String> {
        self.query(
            &Self::url(exports)?,
            "ALTER ROLE app NOLOGIN; ALTER DATABASE shop OWNER TO reader",
        )?;
        Ok(vec![
            (
                main_address().named_child("role", "app"),
                "login".to_owned(),
            ),
            (
                main_address().named_child("database", "shop"),
                "owner".to_owned(),
            ),
        ])
    }
}

fn conform(version: &'static str) {
    let server = http::TestServer::serve(&test_mirror());
    let setup = Setup::daemon(kip_providers::engines())
        .with_mirror(server.base_url())
        .with_cache(cache());
    run(&PostgresFixture { version }, &setup);
}

#[test]
fn postgres_14_conforms() {
    conform("14");
}

#[test]
fn postgres_16_conforms() {
    conform("16");
}

/// Valkey with three ACL users and an append-only file synced on every write. `read_data` also leaves a marker
/// that the next `read_data` looks for: the marker written just before the suite's SIGKILL must be there after
/// it, which only the append-only file can give (snapshots are off).
struct ValkeyFixture {
    version: &'static str,
    reads: std::sync::atomic::AtomicUsize,
}

fn valkey_main() -> Address {
    Address::instance("valkey", "main", None)
}

impl ValkeyFixture {
    fn config_with(&self, scratch: bool) -> String {
        let scratch = if scratch {
            "  user \"scratch\" { enabled = false }\n"
        } else {
            ""
        };
        format!(
            r#"valkey "main" {{
  version          = "{version}"
  appendonly       = true
  appendfsync      = "always"
  save             = []
  maxmemory        = "64mb"
  maxmemory_policy = "allkeys-lru"
  settings         = {{ hz = 20 }}

  user "app" {{
    commands = ["+@all", "-flushall"]
    keys     = ["app:*"]
    channels = ["events.*"]
  }}
  user "worker" {{
    commands = ["+get", "+set"]
    keys     = ["jobs:*"]
  }}
{scratch}}}
"#,
            version = self.version
        )
    }

    fn connection(exports: &Exports) -> Result<redis::Connection, String> {
        let url = exports
            .get("url")
            .and_then(|url| url.as_str())
            .ok_or_else(|| "no url export".to_owned())?;
        redis::Client::open(url)
            .and_then(|client| client.get_connection())
            .map_err(|e| format!("cannot connect through the url export: {e}"))
    }

    fn getuser(
        connection: &mut redis::Connection,
        name: &str,
    ) -> Result<Option<Vec<(String, String)>>, String> {
        let answer: redis::Value = redis::cmd("ACL")
            .arg("GETUSER")
            .arg(name)
            .query(connection)
            .map_err(|e| e.to_string())?;
        let items = match answer {
            redis::Value::Nil => return Ok(None),
            redis::Value::Array(items) => items,
            other => return Err(format!("ACL GETUSER answered {other:?}")),
        };
        let text = |value: &redis::Value| match value {
            redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            redis::Value::SimpleString(text) => text.clone(),
            redis::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    redis::Value::SimpleString(text) => text.clone(),
                    _ => String::new(),
                })
                .collect::<Vec<_>>()
                .join(","),
            _ => String::new(),
        };
        Ok(Some(
            items
                .chunks(2)
                .filter(|pair| pair.len() == 2)
                .map(|pair| (text(&pair[0]), text(&pair[1])))
                .filter(|(key, _)| {
                    ["flags", "commands", "keys", "channels"].contains(&key.as_str())
                })
                .map(|(key, value)| match key.as_str() {
                    // Only on/off is kip's (Valkey adds `sanitize-payload` and the like).
                    "flags" if value.split(',').any(|flag| flag == "on") => (key, "on".to_owned()),
                    "flags" => (key, "off".to_owned()),
                    _ => (key, value),
                })
                .collect(),
        ))
    }
}

impl Fixture for ValkeyFixture {
    fn engine(&self) -> &'static str {
        "valkey"
    }

    fn version(&self) -> Option<String> {
        Some(self.version.to_owned())
    }

    fn config(&self) -> String {
        self.config_with(true)
    }

    fn pruned(&self) -> (String, Address) {
        (
            self.config_with(false),
            valkey_main().named_child("user", "scratch"),
        )
    }

    fn check_objects(&self, exports: &Exports) -> Result<(), String> {
        let mut connection = Self::connection(exports)?;
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let expected = [
            (
                "app",
                pairs(&[
                    ("flags", "on"),
                    ("commands", "+@all -flushall"),
                    ("keys", "~app:*"),
                    ("channels", "&events.*"),
                ]),
            ),
            (
                "worker",
                pairs(&[
                    ("flags", "on"),
                    ("commands", "-@all +get +set"),
                    ("keys", "~jobs:*"),
                    ("channels", ""),
                ]),
            ),
        ];
        for (name, want) in expected {
            let have = Self::getuser(&mut connection, name)?;
            if have.as_ref() != Some(&want) {
                return Err(format!(
                    "user {name}: expected {want:?}, Valkey has {have:?}"
                ));
            }
        }
        Ok(())
    }

    fn write_data(&self, exports: &Exports) -> Result<(), String> {
        let mut connection = Self::connection(exports)?;
        redis::cmd("SET")
            .arg("conformance")
            .arg("kept")
            .query::<()>(&mut connection)
            .map_err(|e| e.to_string())
    }

    fn read_data(&self, exports: &Exports) -> Result<bool, String> {
        let mut connection = Self::connection(exports)?;
        let kept: Option<String> = redis::cmd("GET")
            .arg("conformance")
            .query(&mut connection)
            .map_err(|e| e.to_string())?;
        let reads = self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let marker_kept = if reads == 0 {
            true
        } else {
            let marker: Option<String> = redis::cmd("GET")
                .arg(format!("marker:{}", reads - 1))
                .query(&mut connection)
                .map_err(|e| e.to_string())?;
            marker.is_some()
        };
        redis::cmd("SET")
            .arg(format!("marker:{reads}"))
            .arg("written")
            .query::<()>(&mut connection)
            .map_err(|e| e.to_string())?;
        Ok(kept.as_deref() == Some("kept") && marker_kept)
    }

    fn drift(&self, exports: &Exports) -> Result<Vec<(Address, String)>, String> {
        let mut connection = Self::connection(exports)?;
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("app")
            .arg("~other:*")
            .query::<()>(&mut connection)
            .map_err(|e| e.to_string())?;
        redis::cmd("ACL")
            .arg("DELUSER")
            .arg("worker")
            .query::<i64>(&mut connection)
            .map_err(|e| e.to_string())?;
        let worker = valkey_main().named_child("user", "worker");
        let mut expected = vec![(valkey_main().named_child("user", "app"), "keys".to_owned())];
        // A deleted user is created again: every attribute of it is planned.
        for attribute in [
            "channels",
            "commands",
            "enabled",
            "keys",
            "password",
            "password_works",
        ] {
            expected.push((worker.clone(), attribute.to_owned()));
        }
        Ok(expected)
    }
}

fn valkey_conforms(version: &'static str) {
    let server = http::TestServer::serve(&test_mirror());
    let setup = Setup::daemon(kip_providers::engines())
        .with_mirror(server.base_url())
        .with_cache(cache());
    run(
        &ValkeyFixture {
            version,
            reads: Default::default(),
        },
        &setup,
    );
}

#[test]
fn valkey_8_conforms() {
    valkey_conforms("8");
}

#[test]
fn valkey_9_conforms() {
    valkey_conforms("9");
}

/// Every engine kip registers, every argument its schema documents: each reaches the provider's typed view. A
/// new engine or a new argument is covered without touching this test.
#[test]
fn every_documented_argument_reaches_the_providers_typed_view() {
    let engines = kip_providers::engines();
    let names: Vec<&str> = engines.names().collect();
    assert!(
        names.contains(&"postgres") && names.contains(&"process"),
        "{names:?}"
    );
    for name in names {
        let engine = engines.get(name).unwrap();
        kip_conformance::check_schema(engine.as_ref())
            .unwrap_or_else(|error| panic!("{name}: {error}"));
    }
}
