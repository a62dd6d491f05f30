//! The `postgres` engine schema: a PostgreSQL server with roles, databases, schemas, extensions and grants.
//!
//! The arguments follow what `initdb`, `postgresql.conf` and the `CREATE ROLE` / `CREATE DATABASE` statements
//! offer, under the same names where possible, so PostgreSQL users recognise them.

use super::{host_export, settings_argument, version_argument};
use crate::schema::{
    ArgumentSchema as Arg, BlockSchema as Block, EngineSchema, ExportSchema as Export,
};
use crate::types::ValueType as T;

pub(super) fn schema() -> EngineSchema {
    EngineSchema {
        name: "postgres",
        doc: r#"PostgreSQL, the relational database, run from the upstream server binaries.

kip initialises a data directory under `.kip/` (cloned from a per-version template, so a fresh instance is
ready in well under a second), starts `postgres` under its supervisor listening on a unix socket, and on
127.0.0.1 when `port` is set, then converges the roles, databases, schemas, extensions and grants declared
in the block. Convergence owns structure only: it never touches rows.

```hcl
postgres "main" {
  version  = "16"
  settings = { shared_buffers = "128MB" }

  role "app" { login = true }

  database "shop" {
    owner      = "app"
    extensions = ["pgcrypto"]
  }

  grant {
    role       = "app"
    database   = "shop"
    on         = "tables"
    privileges = ["SELECT", "INSERT", "UPDATE", "DELETE"]
  }
}
```"#,
        majors: vec![14, 15, 16, 17, 18],
        versioned: true,
        replace_on_new_major: true,
        instance: Block::named_object(
            "postgres",
            "name",
            "A PostgreSQL server with its own data directory. The label names the instance: `postgres \"main\"` \
             is addressed as `postgres.main`.",
        )
        .arguments(vec![
            version_argument(
                "The PostgreSQL version: a major (`\"16\"`, resolved to the newest release the registry lists and \
                 pinned in `kip.lock`) or an exact release (`\"16.14\"`). A new minor release is an in-place \
                 restart; a new major needs a new data directory, since the on-disk format changes between majors.",
            ),
            Arg::new(
                "port",
                T::Port,
                "TCP port to listen on, on 127.0.0.1. When unset the server listens only on its unix socket, \
                 which is faster and never collides with a system PostgreSQL; `url` and `socket` still work.",
            ),
            settings_argument(
                "Extra `postgresql.conf` settings, written as PostgreSQL spells them: \
                 `{ shared_buffers = \"128MB\", log_min_duration_statement = 250 }`. Settings that need a \
                 restart trigger one.",
            ),
            Arg::new(
                "superuser",
                T::String,
                "Name of the bootstrap superuser created by `initdb`. kip connects as this role to converge.",
            )
            .with_default("postgres")
            .forces_replacement(),
            Arg::new(
                "password",
                T::String,
                "Password of the superuser. When unset, kip generates one and keeps it in state.",
            )
            .sensitive(),
            Arg::new(
                "auth_method",
                T::Enum(vec!["scram-sha-256", "trust"]),
                "How clients authenticate (`pg_hba.conf`): `\"scram-sha-256\"` requires the password, \
                 `\"trust\"` lets any local client in as any role, handy for throwaway CI databases.",
            )
            .with_default("scram-sha-256"),
            Arg::new(
                "encoding",
                T::String,
                "Server encoding chosen at `initdb` time; the default encoding of new databases.",
            )
            .with_default("UTF8")
            .forces_replacement(),
            Arg::new(
                "locale",
                T::String,
                "Locale chosen at `initdb` time (`\"C\"`, `\"en_US.UTF-8\"`); sets collation and character \
                 classification for new databases. `\"C\"` is fast and does not depend on the locales \
                 installed on the machine.",
            )
            .with_default("C")
            .forces_replacement(),
            Arg::new(
                "locale_provider",
                T::Enum(vec!["libc", "icu", "builtin"]),
                "Which library provides collations (`initdb --locale-provider`). `\"builtin\"` needs \
                 PostgreSQL 17 or later.",
            )
            .since(15)
            .forces_replacement(),
            Arg::new(
                "data_checksums",
                T::Bool,
                "Enable data page checksums at `initdb` time. When unset, PostgreSQL's own default applies \
                 (off before 18, on from 18).",
            )
            .forces_replacement(),
            Arg::new(
                "io_method",
                T::Enum(vec!["sync", "worker", "io_uring"]),
                "How the server performs asynchronous I/O. PostgreSQL's default is `\"worker\"`; `\"io_uring\"` \
                 needs a Linux kernel and build that support it.",
            )
            .since(18),
        ])
        .blocks(vec![role(), database(), schema_block(true), grant()])
        .exports(vec![
            Export::new(
                "url",
                "Connection URL as the superuser to the `postgres` database, over the unix socket unless `port` \
                 is set. Embeds the password.",
            )
            .sensitive()
            .env("DATABASE_URL"),
            host_export(),
            Export::new("port", "The TCP port, when `port` is set."),
            Export::new("socket", "Directory holding the unix socket, as libpq's `host` parameter expects it."),
            Export::new("user", "The superuser name."),
            Export::new("password", "The superuser password.").sensitive(),
        ]),
    }
}

/// PostgreSQL's identifiers hold at most NAMEDATALEN - 1 = 63 bytes.
const NAME_BYTES: usize = 63;

fn role() -> Block {
    Block::named_object(
        "role",
        "name",
        "A role (`CREATE ROLE`): a user when it can log in, a group otherwise. Attributes set here are \
         kept in step on every apply; roles removed from the config are dropped.",
    )
    .max_label_bytes(NAME_BYTES)
    .arguments(vec![
        Arg::new("login", T::Bool, "Whether the role can log in (a user rather than a group).").with_default(false),
        Arg::new("superuser", T::Bool, "Bypass all permission checks.").with_default(false),
        Arg::new("createdb", T::Bool, "Allow creating databases.").with_default(false),
        Arg::new("createrole", T::Bool, "Allow creating, altering and dropping other roles.").with_default(false),
        Arg::new("inherit", T::Bool, "Inherit the privileges of the roles it is a member of.").with_default(true),
        Arg::new("replication", T::Bool, "Allow streaming replication and backup connections.").with_default(false),
        Arg::new("bypassrls", T::Bool, "Bypass row-level security policies.").with_default(false),
        Arg::new(
            "password",
            T::String,
            "Password of the role. When unset and `login = true`, kip generates one and keeps it in state.",
        )
        .sensitive(),
        Arg::new("connection_limit", T::Number, "Maximum concurrent connections of the role; `-1` means no limit.")
            .with_default(-1),
        Arg::new(
            "member_of",
            T::list(T::String),
            "Roles this role is a member of (`GRANT group TO role`), e.g. `[\"readers\"]`.",
        )
        .refers_to("role"),
        Arg::new(
            "valid_until",
            T::String,
            "Timestamp after which the password stops working (`\"2030-01-01T00:00:00Z\"`), or `\"infinity\"`.",
        ),
    ])
    .exports(vec![
        Export::new("name", "The role name."),
        Export::new(
            "url",
            "Connection URL as this role to the `postgres` database. Embeds the password; needs `login = true`.",
        )
        .sensitive(),
        Export::new("password", "The role's password, given or generated.").sensitive(),
    ])
}

fn database() -> Block {
    Block::named_object(
        "database",
        "name",
        "A database (`CREATE DATABASE`). Its schemas and extensions can be declared inside it.",
    )
    .max_label_bytes(NAME_BYTES)
    .arguments(vec![
        Arg::new("owner", T::String, "Role that owns the database; the superuser when unset.").refers_to("role"),
        Arg::new("encoding", T::String, "Character encoding; the server's `encoding` when unset.").forces_replacement(),
        Arg::new("locale", T::String, "Sets both `lc_collate` and `lc_ctype`; the server's locale when unset.")
            .forces_replacement(),
        Arg::new("lc_collate", T::String, "Collation order (`LC_COLLATE`); overrides `locale`.").forces_replacement(),
        Arg::new("lc_ctype", T::String, "Character classification (`LC_CTYPE`); overrides `locale`.")
            .forces_replacement(),
        Arg::new(
            "template",
            T::String,
            "Database to copy. When unset, kip uses `template1`, or `template0` when `encoding` or a locale \
             differs from the server's, as PostgreSQL requires.",
        )
        .forces_replacement(),
        Arg::new("connection_limit", T::Number, "Maximum concurrent connections; `-1` means no limit.")
            .with_default(-1),
        Arg::new("allow_connections", T::Bool, "Whether clients may connect to this database.").with_default(true),
        Arg::new("is_template", T::Bool, "Whether other databases may be created from this one by any role with CREATEDB.")
            .with_default(false),
        Arg::new(
            "extensions",
            T::list(T::String),
            "Extensions to create with their defaults (`[\"pgcrypto\", \"citext\"]`): a shorthand for \
             `extension` blocks. An extension may not be declared both ways.",
        ),
    ])
    .blocks(vec![schema_block(false), extension()])
    .exports(vec![
        Export::new("name", "The database name."),
        Export::new(
            "url",
            "Connection URL to this database, as its owner when the owner can log in, otherwise as the \
             superuser. Embeds the password.",
        )
        .sensitive()
        .env("DATABASE_URL"),
    ])
}

/// `schema "name"`: inside a database it belongs to that database; at instance level it names its database.
fn schema_block(instance_level: bool) -> Block {
    let mut arguments = Vec::new();
    if instance_level {
        arguments.push(
            Arg::new(
                "database",
                T::String,
                "The database the schema lives in. Declare the schema inside a `database` block to leave it out.",
            )
            .required()
            .forces_replacement(),
        );
    }
    arguments.push(
        Arg::new(
            "owner",
            T::String,
            "Role that owns the schema; the database owner when unset.",
        )
        .refers_to("role"),
    );
    let doc = if instance_level {
        "A schema (`CREATE SCHEMA`) in the database named by `database`. Useful when the database itself is \
         not declared by kip; otherwise declare the schema inside the `database` block."
    } else {
        "A schema (`CREATE SCHEMA`) in this database. `public` exists already; declare it only to set its owner."
    };
    Block::named_object("schema", "name", doc)
        .max_label_bytes(NAME_BYTES)
        .arguments(arguments)
        .exports(vec![Export::new("name", "The schema name.")])
}

fn extension() -> Block {
    Block::named_object(
        "extension",
        "name",
        "An extension (`CREATE EXTENSION`) in this database. It must be available to the server: contrib \
         extensions such as `pgcrypto`, `citext` or `pg_trgm` ship with it.",
    )
    .max_label_bytes(NAME_BYTES)
    .arguments(vec![
        Arg::new("schema", T::String, "Schema to install the extension's objects into; `public` when unset.")
            .forces_replacement(),
        Arg::new(
            "version",
            T::String,
            "Extension version to install or update to; the newest available when unset.",
        ),
    ])
}

fn grant() -> Block {
    Block::new(
        "grant",
        "Grants privileges to a role (`GRANT … TO role`). `on` picks the kind of object: `\"database\"` \
         (needs `database`), `\"schema\"` (needs `database` and `schema`), or `\"tables\"`, `\"sequences\"`, \
         `\"functions\"`: every such object in `schema` of `database` at the time of the apply. Privileges \
         removed from the config are revoked.",
    )
    .repeatable()
    .object()
    .arguments(vec![
        Arg::new("role", T::String, "The role receiving the privileges.").required().refers_to("role"),
        Arg::new(
            "on",
            T::Enum(vec!["database", "schema", "tables", "sequences", "functions"]),
            "The kind of object the privileges apply to. When absent: `schema` if only `schema` is set, \
             otherwise `database`.",
        ),
        Arg::new("database", T::String, "The database granted on, or holding the objects granted on.").refers_to("database"),
        Arg::new(
            "schema",
            T::String,
            "The schema granted on, or holding the objects granted on. For tables, sequences and functions \
             it defaults to `public`.",
        ),
        Arg::new(
            "privileges",
            T::list(T::String),
            "Privileges as PostgreSQL names them: `[\"CONNECT\", \"CREATE\"]` on a database, \
             `[\"USAGE\"]` on a schema, `[\"SELECT\", \"INSERT\"]` on tables, or `[\"ALL\"]`.",
        )
        .required(),
        Arg::new("with_grant_option", T::Bool, "Allow the role to grant these privileges to others.")
            .with_default(false),
    ])
}
