//! The `nats` engine schema: a NATS server with JetStream streams and key-value buckets.
//!
//! Stream and bucket arguments follow the names of the JetStream configuration (`max_msgs`, `max_age`,
//! `retention`…) so they read like `nats stream add` flags.

use super::{host_export, settings_argument, version_argument};
use crate::schema::{
    ArgumentSchema as Arg, BlockSchema as Block, EngineSchema, ExportSchema as Export,
};
use crate::types::ValueType as T;

pub(super) fn schema() -> EngineSchema {
    EngineSchema {
        name: "nats",
        doc: r#"NATS, the messaging server, with JetStream persistence, run from the upstream `nats-server`.

kip starts `nats-server` under its supervisor on a loopback TCP port (NATS has no unix-socket listener),
with JetStream storage under `.kip/`, then converges the declared streams and key-value buckets. Messages
and keys are data: kip never purges them.

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
                 stays the same across applies.",
            ),
            Arg::new(
                "http_port",
                T::Number,
                "Port of the HTTP monitoring endpoint (`/varz`, `/jsz`) on 127.0.0.1. Disabled when unset.",
            ),
            Arg::new(
                "jetstream",
                T::Bool,
                "Enable JetStream, the persistence layer that `stream` and `kv` blocks need.",
            )
            .with_default(true),
            Arg::new("max_payload", T::Size, "Largest message the server accepts (`\"1mb\"`, `\"8mb\"`).")
                .with_default("1mb"),
            Arg::new("max_connections", T::Number, "Maximum concurrent client connections."),
            Arg::new(
                "max_memory_store",
                T::Size,
                "Upper bound of JetStream memory storage; NATS picks a share of system memory when unset.",
            ),
            Arg::new(
                "max_file_store",
                T::Size,
                "Upper bound of JetStream file storage; NATS picks a share of free disk when unset.",
            ),
            Arg::new(
                "token",
                T::String,
                "Authorization token clients must present. When unset, clients connect without credentials, \
                 which suits a server bound to loopback.",
            )
            .sensitive(),
            settings_argument(
                "Any other `nats-server` configuration option, by its NATS name: \
                 `{ write_deadline = \"10s\", max_pending = 67108864 }`.",
            ),
        ])
        .blocks(vec![stream(), key_value()])
        .exports(vec![
            Export::new("url", "Client URL, `nats://127.0.0.1:PORT`. The token, if any, is not part of it."),
            host_export(),
            Export::new("port", "The client port, given or allocated."),
            Export::new("token", "The authorization token, when set.").sensitive(),
        ]),
    }
}

fn stream() -> Block {
    Block::named_object(
        "stream",
        "name",
        "A JetStream stream: stores messages published to its subjects. Stream names are conventionally upper \
         case (`\"ORDERS\"`) and may not contain spaces, `.`, `*` or `>`. Changes are applied with a stream \
         update; arguments NATS cannot change on a live stream replace it.",
    )
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
            .with_default(1),
    ])
    .exports(vec![Export::new("name", "The stream name.")])
}

fn key_value() -> Block {
    Block::named_object(
        "kv",
        "bucket",
        "A JetStream key-value bucket. Bucket names may contain letters, digits, `-` and `_`.",
    )
    .arguments(vec![
        Arg::new(
            "description",
            T::String,
            "Free text shown by `nats kv info`.",
        ),
        Arg::new("history", T::Number, "Values kept per key, from 1 to 64.").with_default(1),
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
        .with_default(1),
    ])
    .exports(vec![Export::new("name", "The bucket name.")])
}
