//! The `valkey` engine schema: a Valkey server (the open-source Redis fork) and its ACL users.
//!
//! Top-level arguments are the `valkey.conf` directives people actually tune, under their own names;
//! `settings` passes anything else through untouched.

use super::{host_export, settings_argument, version_argument};
use crate::schema::{
    ArgumentSchema as Arg, BlockSchema as Block, EngineSchema, ExportSchema as Export,
};
use crate::types::ValueType as T;
use crate::validate::Shape;

pub(super) fn schema() -> EngineSchema {
    EngineSchema {
        name: "valkey",
        doc: r#"Valkey, the in-memory key-value store (the open-source continuation of Redis), run from the upstream `valkey-server`.

kip starts `valkey-server` under its supervisor with a generated config, listening on a unix socket under
`.kip/` and, when `port` is set, on 127.0.0.1, then converges the declared ACL users. The `default` user always
has a password (`password`, or one kip generates and keeps in state), set before the first start, so no
connection ever gets in without it. Settings Valkey can change at runtime are applied with `CONFIG SET`; the
others restart the server, and the plan says which. Keys are data: kip never reads or deletes them.

```hcl
valkey "cache" {
  version          = "8"
  maxmemory        = "64mb"
  maxmemory_policy = "allkeys-lru"

  user "app" {
    commands = ["+@all", "-@dangerous"]
    keys     = ["app:*"]
  }
}
```"#,
        majors: vec![8, 9],
        versioned: true,
        replace_on_new_major: false,
        instance: Block::named_object(
            "valkey",
            "name",
            "A Valkey server. The label names the instance: `valkey \"cache\"` is addressed as `valkey.cache`.",
        )
        .arguments(vec![
            version_argument(
                "The Valkey version: a major (`\"8\"`, resolved to the newest release the registry lists and \
                 pinned in `kip.lock`) or an exact release (`\"8.1\"`, `\"8.1.4\"`).",
            ),
            Arg::new(
                "port",
                T::Port,
                "TCP port to listen on, on 127.0.0.1. When unset the server listens only on its unix socket. \
                 Changing it restarts the server.",
            ),
            Arg::new(
                "maxmemory",
                T::Size,
                "Memory limit for data (`\"64mb\"`, `\"1gb\"`); what happens at the limit is \
                 `maxmemory_policy`. Unlimited when unset.",
            ),
            Arg::new(
                "maxmemory_policy",
                T::Enum(vec![
                    "noeviction",
                    "allkeys-lru",
                    "allkeys-lfu",
                    "allkeys-random",
                    "volatile-lru",
                    "volatile-lfu",
                    "volatile-random",
                    "volatile-ttl",
                ]),
                "Which keys to evict when `maxmemory` is reached: `\"noeviction\"` rejects writes instead, \
                 `allkeys-*` consider every key, `volatile-*` only keys with a TTL. A cache usually wants \
                 `\"allkeys-lru\"`.",
            )
            .with_default("noeviction"),
            Arg::new(
                "appendonly",
                T::Bool,
                "Log every write to an append-only file, so data survives a crash (not only a clean stop).",
            )
            .with_default(false),
            Arg::new(
                "appendfsync",
                T::Enum(vec!["always", "everysec", "no"]),
                "How often the append-only file is flushed to disk when `appendonly = true`.",
            )
            .with_default("everysec"),
            Arg::new(
                "save",
                T::list(T::String),
                "RDB snapshot rules, each `\"<seconds> <changes>\"`: `[\"3600 1\", \"300 100\"]` snapshots after \
                 an hour if one key changed, or after five minutes if a hundred did. `[]` disables snapshots. \
                 Valkey's own rules apply when unset.",
            )
            .value_check(save_problem),
            Arg::new(
                "databases",
                T::Number,
                "Number of logical databases (`SELECT 0` … `SELECT n-1`). Changing it restarts the server.",
            )
                .with_default(16),
            Arg::new(
                "password",
                T::String,
                "Password of the `default` user, the one `url` connects as and kip manages the server with. \
                 When unset, kip generates one and keeps it in state: the default user never goes without a \
                 password, from the first start on. Changed live.",
            )
            .sensitive(),
            Arg::new(
                "io_threads",
                T::Number,
                "Threads for network I/O; `1` keeps everything on the main thread, which is right for \
                 development. Changing it restarts Valkey 8 (Valkey 9 changes it live).",
            )
            .with_default(1),
            settings_argument(
                "Any other `valkey.conf` directive, by its Valkey name: \
                 `{ notify-keyspace-events = \"Ex\", hz = 20 }`. Booleans are written `yes` / `no`. A directive \
                 Valkey can change at runtime is applied with `CONFIG SET`; an immutable one (`unixsocketgroup`, \
                 `tcp-backlog`, …), or one removed from the map, restarts the server. Directives kip sets itself \
                 (`port`, `bind`, `unixsocket`, `dir`, `aclfile`, …) and those with an argument of their own are \
                 refused.",
            )
            .value_check(settings_problem),
        ])
        .blocks(vec![user()])
        .exports(vec![
            Export::new(
                "url",
                "Connection URL as the `default` user: `unix:///…/valkey.sock?pass=…` for the socket, or \
                 `redis://default:…@127.0.0.1:PORT` when `port` is set. Embeds the password.",
            )
            .sensitive()
            .env("REDIS_URL"),
            host_export(),
            Export::new("port", "The TCP port, when `port` is set."),
            Export::new("socket", "Path of the unix socket."),
            Export::new("password", "The `default` user's password, given or generated.").sensitive(),
        ]),
    }
}

fn user() -> Block {
    Block::named_object(
        "user",
        "name",
        "An ACL user (`ACL SETUSER`). Rules are replaced as a whole on every apply, so the config is the \
         truth; a user changed or deleted behind kip's back is planned and repaired; users removed from the \
         config are deleted. The name cannot hold spaces or control characters (Valkey refuses them), and \
         cannot be `default`: that user is the instance's own (its password is the block's `password`).",
    )
    .label_check(user_name_problem)
    .arguments(vec![
        Arg::new("enabled", T::Bool, "Whether the user can authenticate (`on` / `off`).").with_default(true),
        Arg::new(
            "password",
            T::String,
            "Password of the user. When unset, kip generates one and keeps it in state.",
        )
        .sensitive(),
        Arg::new(
            "commands",
            T::list(T::String),
            "Command rules in ACL syntax, applied in order: `[\"+@all\", \"-flushall\"]`, \
             `[\"+@read\", \"+ping\"]`. A user without rules can run no command.",
        )
        .value_check(acl_words_problem),
        Arg::new(
            "keys",
            T::list(T::String),
            "Key patterns the user may access, without the ACL `~` prefix: `[\"app:*\"]`; `[\"*\"]` for all \
             keys. No keys when unset.",
        )
        .value_check(acl_words_problem),
        Arg::new(
            "channels",
            T::list(T::String),
            "Pub/Sub channel patterns the user may use, without the ACL `&` prefix: `[\"events.*\"]`. \
             No channels when unset.",
        )
        .value_check(acl_words_problem),
    ])
    .exports(vec![
        Export::new("name", "The user name."),
        Export::new("url", "Connection URL authenticating as this user. Embeds the password.").sensitive(),
        Export::new("password", "The user's password, given or generated.").sensitive(),
    ])
}

/// Why Valkey (or kip) would refuse `name` as an ACL user name.
fn user_name_problem(name: &str) -> Option<String> {
    if name == "default" {
        return Some(
            "`default` is the user kip manages the instance as; set the valkey block's `password` instead"
                .to_owned(),
        );
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("Valkey user names cannot contain spaces or control characters".to_owned());
    }
    None
}

/// Directives kip writes itself, or that have an argument of their own: refused in `settings`.
const RESERVED: &[(&str, &str)] = &[
    ("port", "use the `port` argument"),
    ("bind", "kip binds 127.0.0.1 only"),
    (
        "unixsocket",
        "kip puts the socket in the instance's private run directory",
    ),
    ("unixsocketperm", "kip keeps the socket private"),
    ("dir", "kip owns the data directory"),
    ("aclfile", "kip keeps the users in the instance's ACL file"),
    ("requirepass", "use the `password` argument"),
    ("masterauth", "kip runs no replicas"),
    ("user", "declare a `user` block"),
    ("daemonize", "the supervisor runs Valkey in the foreground"),
    ("supervised", "the supervisor runs Valkey"),
    ("logfile", "the supervisor keeps Valkey's log"),
    ("pidfile", "the supervisor tracks the process"),
    ("include", "kip writes the whole configuration"),
    ("protected-mode", "kip keeps protected mode on"),
    (
        "enable-protected-configs",
        "kip keeps protected configs off",
    ),
    ("enable-debug-command", "kip keeps the DEBUG command off"),
    ("enable-module-command", "kip keeps the MODULE command off"),
    ("loadmodule", "modules are not supported"),
    ("maxmemory", "use the `maxmemory` argument"),
    ("maxmemory-policy", "use the `maxmemory_policy` argument"),
    ("appendonly", "use the `appendonly` argument"),
    ("appendfsync", "use the `appendfsync` argument"),
    ("save", "use the `save` argument"),
    ("databases", "use the `databases` argument"),
    ("io-threads", "use the `io_threads` argument"),
];

/// Why kip refuses `name` in `settings`, if it does: a directive kip writes itself, or one with an argument of
/// its own.
pub fn reserved_setting(name: &str) -> Option<&'static str> {
    super::reserved_in(RESERVED, name)
}

/// `settings`: no directive kip writes itself, names Valkey could read (no line breaks into the config file).
fn settings_problem(value: &Shape) -> Option<String> {
    super::settings_name_problem(
        value,
        RESERVED,
        |byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_',
        "a Valkey directive name (letters, digits, `-`, `_`)",
    )
}

/// `save`: each rule is `"<seconds> <changes>"`.
fn save_problem(value: &Shape) -> Option<String> {
    let Shape::List(rules) = value else {
        return None;
    };
    rules.iter().find_map(|rule| match rule {
        Shape::String(text) => {
            let numbers: Vec<&str> = text.split_whitespace().collect();
            let valid = numbers.len() == 2
                && numbers
                    .iter()
                    .all(|number| number.bytes().all(|byte| byte.is_ascii_digit()));
            (!valid).then(|| format!("{text:?} is not a rule of the form \"<seconds> <changes>\""))
        }
        _ => None,
    })
}

/// ACL patterns and rules are single words: Valkey's ACL file is split on spaces.
fn acl_words_problem(value: &Shape) -> Option<String> {
    let Shape::List(items) = value else {
        return None;
    };
    items.iter().find_map(|item| match item {
        Shape::String(text)
            if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Some(format!(
                "{text:?} is empty or holds a space or a control character, which Valkey's ACL syntax cannot express"
            ))
        }
        _ => None,
    })
}
