//! The `mariadb` engine schema: a MariaDB server with databases and users, each user carrying its grants.
//!
//! Grants are nested `grant {}` blocks inside `user` rather than a `grants` argument: in MariaDB a grant
//! belongs to an account (`'name'@'host'`), each grant is its own object to create and revoke, and a block
//! gets per-field validation and docs where a list of objects would not.

use super::{host_export, settings_argument, version_argument};
use crate::schema::{
    ArgumentSchema as Arg, BlockSchema as Block, EngineSchema, ExportSchema as Export,
};
use crate::types::ValueType as T;
use crate::validate::Shape;

pub(super) fn schema() -> EngineSchema {
    EngineSchema {
        name: "mariadb",
        doc: r#"MariaDB, the relational database, run from the upstream server binaries of the 10.11 long-term-support series.

kip runs `mariadb-install-db` once per version into a shared template and copies it for each instance, under
`.kip/`; starts `mariadbd` under its supervisor, with a generated option file and as kip's unprivileged account
when kip runs as root, listening on a unix socket (`skip-networking`) and, when `port` is set, on 127.0.0.1 only;
then converges the declared databases, users and grants. `root@localhost` has a password from before the first
start: no account can log in without one. Convergence owns structure only: it never touches rows.

```hcl
mariadb "main" {
  version = "10.11"

  database "shop" {}

  user "app" {
    grant {
      on         = "shop.*"
      privileges = ["SELECT", "INSERT", "UPDATE", "DELETE"]
    }
  }
}
```"#,
        majors: vec![10],
        versioned: true,
        replace_on_new_major: true,
        instance: Block::named_object(
            "mariadb",
            "name",
            "A MariaDB server. The label names the instance: `mariadb \"main\"` is addressed as `mariadb.main`.",
        )
        .arguments(vec![
            version_argument(
                "The MariaDB version. kip runs the 10.11 LTS series: `\"10\"` and `\"10.11\"` resolve to the \
                 newest 10.11 release the registry lists (pinned in `kip.lock`); `\"10.11.14\"` names an exact one.",
            ),
            Arg::new(
                "port",
                T::Port,
                "TCP port to listen on, on 127.0.0.1. When unset the server listens only on its unix socket \
                 (`skip-networking`).",
            ),
            settings_argument(
                "Extra `[mysqld]` options, by their MariaDB names: \
                 `{ innodb_buffer_pool_size = \"256M\", max_connections = 200 }`. A change of system variables \
                 MariaDB changes at runtime is applied live (`SET GLOBAL`); any other change, or a removed setting, \
                 restarts the server (the plan says which). Options kip writes itself (socket, port, data \
                 directory, character set, …) are refused.",
            )
            .value_check(settings_problem),
            Arg::new(
                "root_password",
                T::String,
                "Password of `root@localhost`. When unset, kip generates one and keeps it in state.",
            )
            .sensitive(),
            Arg::new(
                "character_set",
                T::String,
                "Server character set (`character_set_server`), the default of new databases. A change restarts \
                 the server.",
            )
            .with_default("utf8mb4"),
            Arg::new(
                "collation",
                T::String,
                "Server collation (`collation_server`); the character set's default collation when unset. A change \
                 restarts the server.",
            ),
        ])
        .blocks(vec![database(), user()])
        .exports(vec![
            Export::new(
                "url",
                "Connection URL as `root`, `mysql://root:…@localhost/?socket=…` over the unix socket, or \
                 `mysql://root:…@127.0.0.1:PORT/` when `port` is set. Embeds the password.",
            )
            .sensitive(),
            host_export(),
            Export::new("port", "The TCP port, when `port` is set."),
            Export::new("socket", "Path of the unix socket."),
            Export::new("username", "The administrative user, `root` (not `user`: `mariadb.<name>.user` names the user blocks)."),
            Export::new("password", "The `root` password, given or generated.").sensitive(),
        ]),
    }
}

fn database() -> Block {
    Block::named_object(
        "database",
        "name",
        "A database (`CREATE DATABASE`). Databases removed from the config are dropped only when empty \
         (apply fails with the number of tables otherwise). The name is at most 64 characters, cannot end \
         with a space, and cannot be one of MariaDB's own (`mysql`, `information_schema`, \
         `performance_schema`, `sys`).",
    )
    .label_check(database_name_problem)
    .arguments(vec![
        Arg::new("character_set", T::String, "Default character set of the database; the server's when unset."),
        Arg::new("collation", T::String, "Default collation of the database; the character set's default when unset."),
    ])
    .exports(vec![
        Export::new("name", "The database name."),
        Export::new("url", "Connection URL as `root` with this database selected. Embeds the password.").sensitive(),
    ])
}

fn user() -> Block {
    Block::named_object(
        "user",
        "name",
        "A user account, `'name'@'host'` (`CREATE USER`), with its privileges as nested `grant` blocks. \
         Privileges not declared are revoked (also on targets no `grant` block names); accounts removed from \
         the config are dropped. The password is kept as a `mysql_native_password` hash, so a password \
         changed behind kip's back is drift. The name is at most 128 characters and cannot be `root` (the \
         instance's own, see `root_password`) or `mariadb.sys`.",
    )
    .label_check(user_name_problem)
    .arguments(vec![
        Arg::new(
            "host",
            T::String,
            "Host part of the account: `\"localhost\"` for unix-socket clients, `\"127.0.0.1\"` for TCP on \
             loopback, `\"%\"` for any host.",
        )
        .with_default("localhost")
        .forces_replacement(),
        Arg::new("password", T::String, "Password of the account. When unset, kip generates one and keeps it in state.")
            .sensitive(),
        Arg::new("max_user_connections", T::Number, "Maximum concurrent connections of the account; `0` means no limit.")
            .with_default(0),
    ])
    .blocks(vec![grant()])
    .exports(vec![
        Export::new("name", "The user name."),
        Export::new(
            "url",
            "Connection URL as this user, as the instance's `url` is made (unix socket, or TCP when `port` is \
             set). Over the socket only `localhost` accounts can log in. Embeds the password.",
        )
        .sensitive(),
        Export::new("password", "The user's password, given or generated.").sensitive(),
    ])
}

fn grant() -> Block {
    Block::new(
        "grant",
        "Privileges of the enclosing user on some objects (`GRANT privileges ON on TO user`). One block per \
         target; the user's declared grants are the complete list.",
    )
    .repeatable()
    .object()
    .arguments(vec![
        Arg::new(
            "on",
            T::String,
            "What the privileges apply to, in MariaDB's notation: `\"shop.*\"` (every table of a database), \
             `\"shop.orders\"` (one table), `\"*.*\"` (everything). A name may be in backticks \
             (`` \"`my-db`.*\" ``).",
        )
        .required()
        .value_check(target_problem),
        Arg::new(
            "privileges",
            T::list(T::String),
            "Privileges as MariaDB names them: `[\"SELECT\", \"INSERT\"]`, `[\"ALL PRIVILEGES\"]`. Column \
             privileges (`SELECT (a)`) are not supported.",
        )
        .required()
        .value_check(privileges_problem),
        Arg::new("with_grant_option", T::Bool, "Allow the user to grant these privileges to others.")
            .with_default(false),
    ])
}

/// A grant target, `*.*` (both `None`), `db.*` (table `None`) or `db.table`, read from a `grant` block's `on`;
/// each part may be in backticks (a backtick doubled inside). Why not, when it is not one.
pub fn parse_grant_target(on: &str) -> Result<(Option<String>, Option<String>), &'static str> {
    const FORM: &str = "expected `*.*`, `database.*` or `database.table`";
    let (database, rest) = target_part(on.trim()).ok_or(FORM)?;
    let rest = rest.strip_prefix('.').ok_or(FORM)?;
    let (table, end) = target_part(rest).ok_or(FORM)?;
    if !end.is_empty() {
        return Err("unexpected text after the target");
    }
    if database.is_none() && table.is_some() {
        return Err("a table needs its database (`*.table` is not a target)");
    }
    Ok((database, table))
}

/// One part of a target: `*` (`None`), a name, or a backticked name; and what follows it.
fn target_part(text: &str) -> Option<(Option<String>, &str)> {
    if let Some(rest) = text.strip_prefix('*') {
        return Some((None, rest));
    }
    if let Some(mut rest) = text.strip_prefix('`') {
        let mut name = String::new();
        loop {
            let end = rest.find('`')?;
            name.push_str(&rest[..end]);
            rest = &rest[end + 1..];
            match rest.strip_prefix('`') {
                Some(after) => {
                    name.push('`');
                    rest = after;
                }
                None => return (!name.is_empty()).then_some((Some(name), rest)),
            }
        }
    }
    let end = text.find('.').unwrap_or(text.len());
    let name = &text[..end];
    (!name.is_empty() && !name.contains(['`', '*', ' ']))
        .then(|| (Some(name.to_owned()), &text[end..]))
}

/// Why MariaDB would refuse `privilege` in a grant (it goes into SQL text as it is: words of letters and `_`).
pub fn grant_privilege_problem(privilege: &str) -> Option<String> {
    let words: Vec<&str> = privilege.split_whitespace().collect();
    let valid = !words.is_empty()
        && words
            .iter()
            .all(|word| word.chars().all(|c| c.is_ascii_alphabetic() || c == '_'));
    (!valid).then(|| {
        format!("{privilege:?} is not a privilege name (words of letters; column privileges are not supported)")
    })
}

/// `on`: a target MariaDB reads.
fn target_problem(value: &Shape) -> Option<String> {
    let Shape::String(on) = value else {
        return None;
    };
    parse_grant_target(on)
        .err()
        .map(|why| format!("{on:?} is not a grant target: {why}"))
}

/// `privileges`: names only.
fn privileges_problem(value: &Shape) -> Option<String> {
    let Shape::List(items) = value else {
        return None;
    };
    items.iter().find_map(|item| match item {
        Shape::String(privilege) => grant_privilege_problem(privilege),
        _ => None,
    })
}

/// MariaDB's own databases: kip neither creates nor drops them.
const SYSTEM_DATABASES: &[&str] = &["mysql", "information_schema", "performance_schema", "sys"];

/// Why MariaDB (or kip) would refuse `name` as a database name.
fn database_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a database name cannot be empty".to_owned());
    }
    if name.chars().count() > 64 {
        return Some(format!(
            "MariaDB database names are at most 64 characters; this one has {}",
            name.chars().count()
        ));
    }
    if name.contains('\0') {
        return Some("a database name cannot hold a NUL character".to_owned());
    }
    if name.ends_with(' ') {
        return Some("MariaDB database names cannot end with a space".to_owned());
    }
    if SYSTEM_DATABASES.contains(&name.to_ascii_lowercase().as_str()) {
        return Some(format!("`{name}` is MariaDB's own database"));
    }
    None
}

/// Why MariaDB (or kip) would refuse `name` as a user name.
fn user_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("kip does not manage the anonymous user".to_owned());
    }
    if name.chars().count() > 128 {
        return Some(format!(
            "MariaDB user names are at most 128 characters; this one has {}",
            name.chars().count()
        ));
    }
    if name.contains('\0') {
        return Some("a user name cannot hold a NUL character".to_owned());
    }
    if name == "root" || name == "mariadb.sys" {
        return Some(format!(
            "`{name}` is the instance's own account; set the mariadb block's `root_password` for root"
        ));
    }
    None
}

/// Options kip writes itself, or that would open the server: refused in `settings` (compared lowercase, `_` for
/// `-`, without the `loose_` prefix).
const RESERVED: &[(&str, &str)] = &[
    ("port", "use the `port` argument"),
    (
        "bind_address",
        "kip binds 127.0.0.1 only, and only when `port` is set",
    ),
    (
        "skip_networking",
        "kip listens on TCP only when `port` is set",
    ),
    ("networking", "kip listens on TCP only when `port` is set"),
    (
        "socket",
        "kip puts the socket in the instance's private run directory",
    ),
    ("datadir", "kip owns the data directory"),
    ("basedir", "kip runs the server from its toolchain"),
    ("lc_messages_dir", "kip runs the server from its toolchain"),
    (
        "character_sets_dir",
        "kip runs the server from its toolchain",
    ),
    ("plugin_dir", "kip runs the server from its toolchain"),
    ("pid_file", "the supervisor tracks the process"),
    ("log_error", "the supervisor keeps the server's log"),
    ("user", "kip runs the server as its own account"),
    ("character_set_server", "use the `character_set` argument"),
    ("collation_server", "use the `collation` argument"),
    ("skip_grant_tables", "kip never opens access"),
    ("grant_tables", "kip never opens access"),
    ("init_file", "kip converges the declared objects itself"),
    ("defaults_file", "kip writes the whole configuration"),
    ("defaults_extra_file", "kip writes the whole configuration"),
    ("no_defaults", "kip writes the whole configuration"),
    ("bootstrap", "kip initialises the data directory itself"),
];

/// Why kip refuses `name` in a mariadb block's `settings`, if it does.
pub fn reserved_setting(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase().replace('-', "_");
    let name = name.strip_prefix("loose_").unwrap_or(&name);
    let name = ["skip_", "enable_", "disable_"]
        .iter()
        .find_map(|prefix| {
            name.strip_prefix(prefix)
                .filter(|rest| RESERVED.iter().any(|(r, _)| r == rest))
        })
        .unwrap_or(name);
    RESERVED
        .iter()
        .find(|(reserved, _)| *reserved == name)
        .map(|(_, why)| *why)
}

/// `settings`: no option kip writes itself, names MariaDB could read, values without line breaks.
fn settings_problem(value: &Shape) -> Option<String> {
    let Shape::Object(entries) = value else {
        return None;
    };
    entries.iter().find_map(|(name, value)| {
        if let Some(why) = reserved_setting(name) {
            Some(format!("kip sets `{name}` itself: {why}"))
        } else if name.is_empty()
            || !name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        {
            Some(format!(
                "{name:?} is not a MariaDB option name (letters, digits, `-`, `_`)"
            ))
        } else if let Shape::String(text) = value
            && text.chars().any(char::is_control)
        {
            Some(format!(
                "the value of `{name}` holds a line break or a control character"
            ))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_mariadb_refuses() {
        assert!(database_name_problem("shop").is_none());
        assert!(database_name_problem(&"d".repeat(64)).is_none());
        assert!(database_name_problem(&"d".repeat(65)).is_some());
        assert!(database_name_problem("x ").is_some());
        assert!(database_name_problem("mysql").is_some());
        assert!(user_name_problem(&"u".repeat(128)).is_none());
        assert!(user_name_problem(&"u".repeat(129)).is_some());
        assert!(user_name_problem("root").is_some());
    }

    #[test]
    fn grant_targets_and_privileges() {
        assert_eq!(parse_grant_target("*.*"), Ok((None, None)));
        assert_eq!(
            parse_grant_target("shop.*"),
            Ok((Some("shop".into()), None))
        );
        assert_eq!(
            parse_grant_target("`my.db`.`or``ders`"),
            Ok((Some("my.db".into()), Some("or`ders".into())))
        );
        for bad in ["shop", "*.orders", "shop.*x", "", "`a.*", "sh op.*"] {
            assert!(parse_grant_target(bad).is_err(), "{bad}");
        }
        assert!(grant_privilege_problem("READ_ONLY ADMIN").is_none());
        assert!(grant_privilege_problem("SELECT (a)").is_some());
        assert!(grant_privilege_problem("SELECT; DROP").is_some());
        assert!(grant_privilege_problem(" ").is_some());
    }

    #[test]
    fn reserved_settings() {
        assert!(reserved_setting("max_connections").is_none());
        assert!(reserved_setting("Skip-Grant-Tables").is_some());
        assert!(reserved_setting("loose-skip-grant-tables").is_some());
        assert!(reserved_setting("skip-networking").is_some());
        assert!(reserved_setting("bind_address").is_some());
        assert!(reserved_setting("skip_name_resolve").is_none());
    }
}
