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

pub(super) fn schema() -> EngineSchema {
    EngineSchema {
        name: "mariadb",
        doc: r#"MariaDB, the relational database, run from the upstream server binaries of the 10.11 long-term-support series.

kip initialises a data directory under `.kip/` with `mariadb-install-db`, starts `mariadbd` under its
supervisor listening on a unix socket and, when `port` is set, on 127.0.0.1, then converges the declared
databases, users and grants. Convergence owns structure only: it never touches rows.

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
                 `{ innodb_buffer_pool_size = \"256M\", max_connections = 200 }`.",
            ),
            Arg::new(
                "root_password",
                T::String,
                "Password of `root@localhost`. When unset, kip generates one and keeps it in state.",
            )
            .sensitive(),
            Arg::new(
                "character_set",
                T::String,
                "Server character set (`character_set_server`), the default of new databases.",
            )
            .with_default("utf8mb4"),
            Arg::new(
                "collation",
                T::String,
                "Server collation (`collation_server`); the character set's default collation when unset.",
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
            Export::new("user", "The administrative user, `root`."),
            Export::new("password", "The `root` password, given or generated.").sensitive(),
        ]),
    }
}

fn database() -> Block {
    Block::named_object(
        "database",
        "name",
        "A database (`CREATE DATABASE`). Databases removed from the config are dropped only when empty.",
    )
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
         Privileges not declared are revoked; accounts removed from the config are dropped.",
    )
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
        Export::new("url", "Connection URL as this user. Embeds the password.").sensitive(),
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
             `\"shop.orders\"` (one table), `\"*.*\"` (everything).",
        )
        .required(),
        Arg::new(
            "privileges",
            T::list(T::String),
            "Privileges as MariaDB names them: `[\"SELECT\", \"INSERT\"]`, `[\"ALL PRIVILEGES\"]`.",
        )
        .required(),
        Arg::new("with_grant_option", T::Bool, "Allow the user to grant these privileges to others.")
            .with_default(false),
    ])
}
