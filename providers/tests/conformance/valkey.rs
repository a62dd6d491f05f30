//! Valkey 8 and 9 through the conformance suite, checked with the `redis` crate.

use kip_conformance::Fixture;
use kip_core::address::Address;
use kip_core::engine::Exports;

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
    crate::conform(&ValkeyFixture {
        version,
        reads: Default::default(),
    });
}

#[test]
fn valkey_8_conforms() {
    valkey_conforms("8");
}

#[test]
fn valkey_9_conforms() {
    valkey_conforms("9");
}
