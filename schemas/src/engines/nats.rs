//! The `nats` engine schema: a NATS server with JetStream streams and key-value buckets.
//!
//! Stream and bucket arguments follow the names of the JetStream configuration (`max_msgs`, `max_age`,
//! `retention`…) so they read like `nats stream add` flags.

use super::{host_export, settings_argument, version_argument};
use crate::schema::{
    ArgumentSchema as Arg, BlockSchema as Block, EngineSchema, ExportSchema as Export,
};
use crate::types::ValueType as T;
use crate::validate::Shape;

pub(super) fn schema() -> EngineSchema {
    EngineSchema {
        name: "nats",
        doc: r#"NATS, the messaging server, with JetStream persistence, run from the upstream `nats-server`.

kip starts `nats-server` under its supervisor with a generated config, on a loopback TCP port (NATS has no
unix-socket listener: kip picks a free port once and keeps it in state unless `port` is set), with JetStream
storage under `.kip/`, then converges the declared streams and key-value buckets. Clients always need the
authorization token (`token`, or one kip generates and keeps in state), from the first start on. Changes NATS
can reload (`max_payload`, `max_connections`, `token`, JetStream limits from one value to another, some
`settings`) are applied with a reload; the others restart the server, and the plan says which. Messages and
keys are data: kip never purges them.

```hcl
nats "bus" {
  version = "2"

  stream "ORDERS" {
    subjects = ["orders.>"]
    max_age  = "7d"
  }

  kv "sessions" {
    ttl = "30m"
  }
}
```"#,
        majors: vec![2],
        versioned: true,
        replace_on_new_major: false,
        instance: Block::named_object(
            "nats",
            "name",
            "A NATS server. The label names the instance: `nats \"bus\"` is addressed as `nats.bus`.",
        )
        .arguments(vec![
            version_argument(
                "The NATS server version: a major (`\"2\"`, resolved to the newest release the registry lists \
                 and pinned in `kip.lock`), a minor series (`\"2.10\"`) or an exact release (`\"2.10.24\"`).",
            ),
            Arg::new(
                "port",
                T::Port,
                "Client port on 127.0.0.1. When unset, kip picks a free port once and keeps it in state, so it \
                 stays the same across applies and restarts. Changing it restarts the server.",
            ),
            Arg::new(
                "http_port",
                T::Port,
                "Port of the HTTP monitoring endpoint (`/varz`, `/jsz`) on 127.0.0.1. Disabled when unset. \
                 Changing it restarts the server.",
            ),
            Arg::new(
                "jetstream",
                T::Bool,
                "Enable JetStream, the persistence layer that `stream` and `kv` blocks need. Changing it restarts \
                 the server.",
            )
            .with_default(true),
            Arg::new("max_payload", T::Size, "Largest message the server accepts (`\"1mb\"`, `\"8mb\"`).")
                .with_default("1mb"),
            Arg::new("max_connections", T::Number, "Maximum concurrent client connections."),
            Arg::new(
                "max_memory_store",
                T::Size,
                "Upper bound of JetStream memory storage; NATS picks a share of system memory when unset. A new \
                 value is reloaded; setting or unsetting it restarts the server.",
            ),
            Arg::new(
                "max_file_store",
                T::Size,
                "Upper bound of JetStream file storage; NATS picks a share of free disk when unset. A new value \
                 is reloaded; setting or unsetting it restarts the server.",
            ),
            Arg::new(
                "token",
                T::String,
                "Authorization token clients must present. When unset, kip generates one and keeps it in state: \
                 the server never accepts a client without a token, from its first start on. Changed with a \
                 reload.",
            )
            .sensitive(),
            settings_argument(
                "Any other `nats-server` configuration option with a scalar value, by its NATS name: \
                 `{ write_deadline = \"10s\", max_pending = 67108864 }`. Changes of `write_deadline`, \
                 `ping_interval`, `ping_max`, `max_control_line`, `auth_timeout`, `debug`, `trace` and `logtime` \
                 are reloaded; any other change restarts the server. Options kip sets itself (`listen`, `port`, \
                 `jetstream`, `authorization`, …) or that have an argument of their own are refused.",
            )
            .value_check(settings_problem),
        ])
        .blocks(vec![stream(), key_value()])
        .exports(vec![
            Export::new(
                "url",
                "Client URL, `nats://127.0.0.1:PORT`. The token is not part of it (async-nats ignores \
                 credentials in a URL): clients pass `token` too (`NATS_TOKEN` in `kip env`).",
            )
            .env("NATS_URL"),
            host_export(),
            Export::new("port", "The client port, given or allocated."),
            Export::new("token", "The authorization token, given or generated.")
                .sensitive()
                .env("NATS_TOKEN"),
        ]),
    }
}

fn stream() -> Block {
    Block::named_object(
        "stream",
        "name",
        "A JetStream stream: stores messages published to its subjects. Stream names are conventionally upper \
         case (`\"ORDERS\"`) and may not contain spaces, `.`, `*` or `>`. Changes are applied with a stream \
         update; arguments NATS cannot change on a live stream replace it. A stream changed or deleted \
         behind kip's back is planned and repaired; a stream removed from the config is deleted with its \
         messages. Names starting with `KV_` are the streams of `kv` buckets.",
    )
    .label_check(stream_name_problem)
    .arguments(vec![
        Arg::new(
            "subjects",
            T::list(T::String),
            "Subjects captured by the stream, wildcards allowed: `[\"orders.>\"]`, `[\"events.*.created\"]`.",
        )
        .required(),
        Arg::new("description", T::String, "Free text shown by `nats stream info`."),
        Arg::new(
            "retention",
            T::Enum(vec!["limits", "interest", "workqueue"]),
            "When messages go away: `\"limits\"` keeps them until a limit is hit, `\"interest\"` until every \
             consumer acknowledged them, `\"workqueue\"` until one consumer did.",
        )
        .with_default("limits")
        .forces_replacement(),
        Arg::new("storage", T::Enum(vec!["file", "memory"]), "Where messages are kept.")
            .with_default("file")
            .forces_replacement(),
        Arg::new("max_msgs", T::Number, "Most messages kept; `-1` means no limit.").with_default(-1),
        Arg::new("max_msgs_per_subject", T::Number, "Most messages kept per subject; `-1` means no limit.")
            .with_default(-1),
        Arg::new("max_bytes", T::Size, "Most bytes kept (`\"1gb\"`). No limit when unset."),
        Arg::new("max_age", T::Duration, "Oldest message kept (`\"24h\"`, `\"7d\"`). No limit when unset."),
        Arg::new("max_msg_size", T::Size, "Largest message accepted into the stream. The server's `max_payload` when unset."),
        Arg::new(
            "discard",
            T::Enum(vec!["old", "new"]),
            "At a limit, drop the oldest messages (`\"old\"`) or refuse new ones (`\"new\"`).",
        )
        .with_default("old"),
        Arg::new(
            "duplicate_window",
            T::Duration,
            "Window in which messages with the same `Nats-Msg-Id` header are stored only once.",
        )
        .with_default("2m"),
        Arg::new("replicas", T::Number, "Copies of each message. A single kip server can only hold `1`.")
            .with_default(1)
            .value_check(replicas_problem),
    ])
    .exports(vec![Export::new("name", "The stream name.")])
}

fn key_value() -> Block {
    Block::named_object(
        "kv",
        "bucket",
        "A JetStream key-value bucket (the stream `KV_<bucket>`). Bucket names may contain letters, digits, \
         `-` and `_`. A bucket changed or deleted behind kip's back is planned and repaired; a bucket removed \
         from the config is deleted with its keys.",
    )
    .label_check(bucket_name_problem)
    .arguments(vec![
        Arg::new(
            "description",
            T::String,
            "Free text shown by `nats kv info`.",
        ),
        Arg::new("history", T::Number, "Values kept per key, from 1 to 64.")
            .with_default(1)
            .value_check(history_problem),
        Arg::new(
            "ttl",
            T::Duration,
            "How long a key lives after its last write (`\"30m\"`). Forever when unset.",
        ),
        Arg::new(
            "max_bytes",
            T::Size,
            "Most bytes the bucket holds. No limit when unset.",
        ),
        Arg::new(
            "max_value_size",
            T::Size,
            "Largest value accepted. The server's `max_payload` when unset.",
        ),
        Arg::new(
            "storage",
            T::Enum(vec!["file", "memory"]),
            "Where values are kept.",
        )
        .with_default("file")
        .forces_replacement(),
        Arg::new(
            "replicas",
            T::Number,
            "Copies of each value. A single kip server can only hold `1`.",
        )
        .with_default(1)
        .value_check(replicas_problem),
    ])
    .exports(vec![Export::new("name", "The bucket name.")])
}

/// Why NATS would refuse `name` as a stream name (`nats-server` refuses whitespace, `.`, `*` and `>`), or why kip
/// does: `KV_` streams belong to `kv` buckets.
fn stream_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a stream name cannot be empty".to_owned());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Some(format!(
            "NATS stream names cannot contain {bad:?} (no spaces, `.`, `*`, `>`, slashes or control characters)"
        ));
    }
    if name.starts_with("KV_") {
        return Some(
            "streams named `KV_…` hold key-value buckets: declare a `kv` block for the bucket instead".to_owned(),
        );
    }
    None
}

/// Why NATS would refuse `name` as a key-value bucket name (letters, digits, `-` and `_` only).
fn bucket_name_problem(name: &str) -> Option<String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    {
        return Some(format!(
            "{name:?} is not a NATS bucket name: only letters, digits, `-` and `_` are allowed"
        ));
    }
    None
}

/// `replicas`: a single server holds one copy; NATS refuses more outside a cluster.
fn replicas_problem(value: &Shape) -> Option<String> {
    match value {
        Shape::Number(number) if *number != 1.0 => Some(format!(
            "{number} replicas need a NATS cluster; a kip server is a single node and holds `1`"
        )),
        _ => None,
    }
}

/// `history`: NATS keeps from 1 to 64 values per key.
fn history_problem(value: &Shape) -> Option<String> {
    match value {
        Shape::Number(number) if !(1.0..=64.0).contains(number) || number.fract() != 0.0 => {
            Some(format!("{number} is not a whole number from 1 to 64"))
        }
        _ => None,
    }
}

/// Options kip writes itself, or that have an argument of their own: refused in `settings`.
const RESERVED: &[(&str, &str)] = &[
    ("listen", "kip binds 127.0.0.1 on the instance's port"),
    ("host", "kip binds 127.0.0.1 only"),
    ("net", "kip binds 127.0.0.1 only"),
    ("addr", "kip binds 127.0.0.1 only"),
    ("port", "use the `port` argument"),
    ("client_advertise", "kip binds 127.0.0.1 only"),
    ("http", "use the `http_port` argument"),
    ("http_port", "use the `http_port` argument"),
    ("monitor_port", "use the `http_port` argument"),
    ("https", "kip serves monitoring over plain HTTP on loopback"),
    (
        "https_port",
        "kip serves monitoring over plain HTTP on loopback",
    ),
    (
        "http_base_path",
        "kip serves monitoring at its default path",
    ),
    ("jetstream", "use the `jetstream` argument"),
    (
        "store_dir",
        "kip keeps the JetStream store in the instance's data directory",
    ),
    ("max_memory_store", "use the `max_memory_store` argument"),
    ("max_file_store", "use the `max_file_store` argument"),
    ("max_mem", "use the `max_memory_store` argument"),
    ("max_file", "use the `max_file_store` argument"),
    ("max_payload", "use the `max_payload` argument"),
    ("max_connections", "use the `max_connections` argument"),
    ("max_conn", "use the `max_connections` argument"),
    ("authorization", "use the `token` argument"),
    ("authentication", "use the `token` argument"),
    ("token", "use the `token` argument"),
    ("auth_callout", "kip manages authorization with the token"),
    (
        "no_auth_user",
        "kip never lets a client in without the token",
    ),
    ("users", "kip manages authorization with the token"),
    ("accounts", "kip manages authorization with the token"),
    ("system_account", "kip manages authorization with the token"),
    ("operator", "kip manages authorization with the token"),
    ("resolver", "kip manages authorization with the token"),
    ("include", "kip writes the whole configuration"),
    ("log_file", "the supervisor keeps NATS's log"),
    ("logfile", "the supervisor keeps NATS's log"),
    ("syslog", "the supervisor keeps NATS's log"),
    ("remote_syslog", "the supervisor keeps NATS's log"),
    ("pid_file", "the supervisor tracks the process"),
    ("pidfile", "the supervisor tracks the process"),
    ("ports_file_dir", "kip keeps the ports in its state"),
    ("cluster", "kip runs a single server"),
    ("gateway", "kip runs a single server"),
    ("leafnodes", "kip runs a single server"),
    (
        "websocket",
        "kip serves NATS clients on the client port only",
    ),
    ("mqtt", "kip serves NATS clients on the client port only"),
    ("tls", "kip serves NATS on loopback without TLS"),
];

/// `settings`: no option kip writes itself, names NATS could read (no way to break out of the config file).
fn settings_problem(value: &Shape) -> Option<String> {
    super::settings_name_problem(
        value,
        RESERVED,
        |byte| byte.is_ascii_alphanumeric() || byte == b'_',
        "a NATS configuration option name (letters, digits, `_`)",
    )
}
