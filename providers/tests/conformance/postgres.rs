//! PostgreSQL 14 and 16 through the conformance suite, checked with tokio-postgres.

use kip_conformance::Fixture;
use kip_core::address::Address;
use kip_core::engine::Exports;

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

#[test]
fn postgres_14_conforms() {
    crate::conform(&PostgresFixture { version: "14" });
}

#[test]
fn postgres_16_conforms() {
    crate::conform(&PostgresFixture { version: "16" });
}
