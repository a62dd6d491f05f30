//! MariaDB 10.11 through the conformance suite, checked with `mysql_async` through the url exports as they are.

use kip_conformance::Fixture;
use kip_core::address::Address;
use kip_core::engine::Exports;
use mysql_async::prelude::Queryable as _;

/// MariaDB with a database, two users with grants (one on TCP's loopback host), and a third user to prune.
/// `read_data` also leaves a marker that the next `read_data` looks for: the row committed just before the
/// suite's SIGKILL must be there after it (InnoDB's redo log).
struct MariaDbFixture {
    reads: std::sync::atomic::AtomicUsize,
}

fn main_address() -> Address {
    Address::instance("mariadb", "main", None)
}

fn user(name: &str) -> Address {
    main_address().named_child("user", name)
}

impl MariaDbFixture {
    fn config_with(&self, scratch: bool) -> String {
        let scratch = if scratch {
            "  user \"scratch\" {}\n"
        } else {
            ""
        };
        format!(
            r#"mariadb "main" {{
  version   = "10.11"
  collation = "utf8mb4_unicode_ci"
  settings  = {{ max_connections = 50, innodb_flush_log_at_trx_commit = 1 }}

  database "shop" {{
    character_set = "utf8mb4"
    collation     = "utf8mb4_unicode_ci"
  }}

  user "app" {{
    grant {{
      on         = "shop.*"
      privileges = ["SELECT", "INSERT", "UPDATE", "DELETE", "CREATE"]
    }}
  }}
  user "report" {{
    host                 = "127.0.0.1"
    password             = "report's secret"
    max_user_connections = 5
    grant {{
      on                = "shop.*"
      privileges        = ["SELECT"]
      with_grant_option = true
    }}
    grant {{
      on         = "*.*"
      privileges = ["PROCESS"]
    }}
  }}
{scratch}}}
"#
        )
    }

    fn url(exports: &Exports) -> Result<String, String> {
        exports
            .get("url")
            .and_then(|url| url.as_str())
            .map(str::to_owned)
            .ok_or_else(|| "no url export".to_owned())
    }

    /// Runs `statements` through `url` (exactly as exported) and returns the rows of the last one, as text.
    fn query(url: &str, statements: &[&str]) -> Result<Vec<Vec<Option<String>>>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let opts =
                mysql_async::Opts::from_url(url).map_err(|e| format!("the url export: {e}"))?;
            let mut conn = mysql_async::Conn::new(opts)
                .await
                .map_err(|e| format!("cannot connect through the url export: {e}"))?;
            let mut rows = Vec::new();
            for statement in statements {
                let result: Vec<mysql_async::Row> = conn
                    .query(*statement)
                    .await
                    .map_err(|e| format!("{statement}: {e}"))?;
                rows = result
                    .into_iter()
                    .map(|row| {
                        (0..row.len())
                            .map(|index| {
                                row.get_opt::<Option<String>, _>(index)
                                    .and_then(Result::ok)
                                    .flatten()
                            })
                            .collect()
                    })
                    .collect();
            }
            let _ = conn.disconnect().await;
            Ok(rows)
        })
    }

    fn privileges(url: &str, grantee: &str) -> Result<Vec<String>, String> {
        let rows = Self::query(
            url,
            &[&format!(
                "SELECT CONCAT(COALESCE(TABLE_SCHEMA, '*'), ' ', PRIVILEGE_TYPE, ' ', IS_GRANTABLE) FROM \
                 (SELECT GRANTEE, NULL AS TABLE_SCHEMA, PRIVILEGE_TYPE, IS_GRANTABLE FROM information_schema.USER_PRIVILEGES \
                  UNION ALL SELECT GRANTEE, TABLE_SCHEMA, PRIVILEGE_TYPE, IS_GRANTABLE FROM information_schema.SCHEMA_PRIVILEGES) AS p \
                 WHERE GRANTEE = \"{grantee}\" AND PRIVILEGE_TYPE <> 'USAGE' ORDER BY 1"
            )],
        )?;
        Ok(rows
            .into_iter()
            .filter_map(|row| row.into_iter().next().flatten())
            .collect())
    }
}

impl Fixture for MariaDbFixture {
    fn engine(&self) -> &'static str {
        "mariadb"
    }

    fn version(&self) -> Option<String> {
        Some("10.11".to_owned())
    }

    fn config(&self) -> String {
        self.config_with(true)
    }

    fn pruned(&self) -> (String, Address) {
        (self.config_with(false), user("scratch"))
    }

    fn check_objects(&self, exports: &Exports) -> Result<(), String> {
        let url = Self::url(exports)?;
        let databases = Self::query(
            &url,
            &[
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA \
               WHERE SCHEMA_NAME = 'shop'",
            ],
        )?;
        let expected = vec![vec![
            Some("utf8mb4".to_owned()),
            Some("utf8mb4_unicode_ci".to_owned()),
        ]];
        if databases != expected {
            return Err(format!("database shop: {databases:?}"));
        }
        let server = Self::query(
            &url,
            &["SELECT @@collation_server, @@max_connections, @@skip_networking"],
        )?;
        if server
            != vec![vec![
                Some("utf8mb4_unicode_ci".to_owned()),
                Some("50".to_owned()),
                Some("1".to_owned()),
            ]]
        {
            return Err(format!("server settings: {server:?}"));
        }
        let accounts = Self::query(
            &url,
            &[
                "SELECT CONCAT(User, '@', Host, ' ', COALESCE(JSON_VALUE(Priv, '$.max_user_connections'), 0)) \
               FROM mysql.global_priv ORDER BY 1",
            ],
        )?;
        let accounts: Vec<String> = accounts
            .into_iter()
            .filter_map(|row| row.into_iter().next().flatten())
            .collect();
        // Only root, MariaDB's locked definer and the declared users: the template's other accounts are gone.
        let expected = [
            "app@localhost 0",
            "mariadb.sys@localhost 0",
            "report@127.0.0.1 5",
            "root@localhost 0",
            "scratch@localhost 0",
        ];
        if accounts != expected {
            return Err(format!("accounts: {accounts:?}"));
        }
        let app = Self::privileges(&url, "'app'@'localhost'")?;
        let expected = [
            "shop CREATE NO",
            "shop DELETE NO",
            "shop INSERT NO",
            "shop SELECT NO",
            "shop UPDATE NO",
        ];
        if app != expected {
            return Err(format!("app's privileges: {app:?}"));
        }
        let report = Self::privileges(&url, "'report'@'127.0.0.1'")?;
        if report != ["* PROCESS NO", "shop SELECT YES"] {
            return Err(format!("report's privileges: {report:?}"));
        }
        Ok(())
    }

    fn write_data(&self, exports: &Exports) -> Result<(), String> {
        let url = Self::url(exports)?;
        Self::query(
            &url,
            &[
                "CREATE TABLE IF NOT EXISTS shop.kept (name VARCHAR(64) PRIMARY KEY) ENGINE = InnoDB",
                "INSERT INTO shop.kept VALUES ('conformance')",
            ],
        )
        .map(drop)
    }

    fn read_data(&self, exports: &Exports) -> Result<bool, String> {
        let url = Self::url(exports)?;
        let kept = Self::query(
            &url,
            &["SELECT name FROM shop.kept WHERE name = 'conformance'"],
        )?;
        let reads = self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let marker_kept = reads == 0
            || !Self::query(
                &url,
                &[&format!(
                    "SELECT name FROM shop.kept WHERE name = 'marker {}'",
                    reads - 1
                )],
            )?
            .is_empty();
        Self::query(
            &url,
            &[&format!("INSERT INTO shop.kept VALUES ('marker {reads}')")],
        )?;
        Ok(kept.len() == 1 && marker_kept)
    }

    fn drift(&self, exports: &Exports) -> Result<Vec<(Address, String)>, String> {
        let url = Self::url(exports)?;
        Self::query(
            &url,
            &[
                "ALTER DATABASE shop COLLATE utf8mb4_general_ci",
                "ALTER USER 'report'@'127.0.0.1' WITH MAX_USER_CONNECTIONS 10",
                "REVOKE INSERT ON shop.* FROM 'app'@'localhost'",
                "GRANT DELETE ON mysql.* TO 'app'@'localhost'",
                "SET PASSWORD FOR 'scratch'@'localhost' = PASSWORD('guessed')",
                "SET GLOBAL character_set_server = latin1",
            ],
        )?;
        let app_grant = user("app").child("grant", kip_core::address::PathLabel::Index(0));
        Ok(vec![
            (
                main_address().named_child("database", "shop"),
                "collation".to_owned(),
            ),
            (user("report"), "max_user_connections".to_owned()),
            (app_grant, "privileges".to_owned()),
            (user("app"), "undeclared_grants".to_owned()),
            (user("scratch"), "password_works".to_owned()),
            // The server's own: its collation follows the character set.
            (main_address(), "character_set".to_owned()),
            (main_address(), "collation".to_owned()),
        ])
    }
}

#[test]
fn mariadb_10_11_conforms() {
    crate::conform(&MariaDbFixture {
        reads: Default::default(),
    });
}
