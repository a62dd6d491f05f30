//! The files Valkey starts from, and what a change of the instance's attributes takes.
//!
//! `valkey.conf` (data directory, 0600, the engine account's) is rewritten from the attributes before every
//! start and every reconfigure: the unix socket in the instance's private run directory (`unixsocketperm 700`),
//! TCP on 127.0.0.1 only when `port` is declared (`port 0` otherwise), `protected-mode yes`, `daemonize no`,
//! `logfile ""` (the supervisor keeps stdout), `dir` the data directory, and `aclfile users.acl`.
//!
//! `users.acl` is written once, before the first start, with the `default` user's password hash, so that no
//! connection ever gets in without it; from then on it is Valkey's (kip runs `ACL SAVE` after changing users), so
//! a restart keeps the users kip converged.
//!
//! Which changes Valkey takes live was measured against Valkey 8.1 and 9.1 (`CONFIG SET` of every parameter to
//! its own value): [`IMMUTABLE`] lists the ones it refuses at runtime.

use std::collections::BTreeMap;
use std::path::Path;

use kip_core::engine::RunAs;
use serde_json::{Value as Json, json};

use super::args::{InstanceArgs, SettingValue};
use super::{VkError, io_error};

/// Parameters Valkey cannot change at runtime (`can't set immutable config` / `protected config`).
const IMMUTABLE: &[&str] = &[
    "aclfile",
    "always-show-logo",
    "aof-rewrite-cpulist",
    "aof_rewrite_cpulist",
    "appenddirname",
    "appendfilename",
    "bgsave-cpulist",
    "bgsave_cpulist",
    "bio-cpulist",
    "bio_cpulist",
    "cluster-config-file",
    "cluster-databases",
    "cluster-enabled",
    "cluster-port",
    "daemonize",
    "databases",
    "dbfilename",
    "dir",
    "disable-thp",
    "enable-debug-command",
    "enable-module-command",
    "enable-protected-configs",
    "hash-seed",
    "logfile",
    "mptcp",
    "pidfile",
    "rdbchecksum",
    "rdma-bind",
    "rdma-completion-vector",
    "rdma-rx-size",
    "repl-mptcp",
    "replicaof",
    "server-cpulist",
    "server_cpulist",
    "set-proc-title",
    "slaveof",
    "socket-mark-id",
    "supervised",
    "syslog-enabled",
    "syslog-facility",
    "syslog-ident",
    "tcp-backlog",
    "unixsocket",
    "unixsocketgroup",
    "unixsocketperm",
];

/// Why kip refuses `name` in `settings`, if it does (the schema's list, which lint checks first).
pub fn reserved(name: &str) -> Option<&'static str> {
    kip_schemas::valkey_reserved_setting(name)
}

/// Whether Valkey can change `name` at runtime (`CONFIG SET`).
pub fn is_live(name: &str) -> bool {
    !IMMUTABLE.contains(&name.to_ascii_lowercase().as_str())
}

/// The directives and values of the instance, in file order, before quoting.
pub fn directives(
    args: &InstanceArgs,
    data_dir: &Path,
    run_dir: &Path,
) -> Result<Vec<(String, String)>, VkError> {
    let mut lines: Vec<(String, String)> = vec![
        ("daemonize".into(), "no".into()),
        ("protected-mode".into(), "yes".into()),
        ("bind".into(), "127.0.0.1".into()),
        ("port".into(), args.port.unwrap_or(0).to_string()),
        (
            "unixsocket".into(),
            run_dir.join(super::SOCKET).to_string_lossy().into_owned(),
        ),
        ("unixsocketperm".into(), "700".into()),
        ("dir".into(), data_dir.to_string_lossy().into_owned()),
        ("logfile".into(), String::new()),
        (
            "aclfile".into(),
            data_dir
                .join(super::ACL_FILE)
                .to_string_lossy()
                .into_owned(),
        ),
    ];
    lines.extend(live_values(args)?);
    lines.push(("databases".into(), args.databases.to_string()));
    for (name, value) in args.settings.iter().flatten() {
        check_setting(name, value)?;
        lines.push((name.clone(), value.text()));
    }
    Ok(lines)
}

/// The arguments Valkey takes live, as `CONFIG SET` pairs (also written into the file).
pub fn live_values(args: &InstanceArgs) -> Result<Vec<(String, String)>, VkError> {
    let mut pairs = vec![
        (
            "maxmemory".to_owned(),
            args.maxmemory
                .as_ref()
                .map_or_else(|| "0".to_owned(), |size| size.text()),
        ),
        ("maxmemory-policy".to_owned(), args.maxmemory_policy.clone()),
        ("appendonly".to_owned(), yes_no(args.appendonly)),
        ("appendfsync".to_owned(), args.appendfsync.clone()),
        ("io-threads".to_owned(), args.io_threads.to_string()),
    ];
    if let Some(save) = &args.save {
        pairs.push(("save".to_owned(), save_rules(save)?));
    }
    Ok(pairs)
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// `["3600 1", "300 100"]` as Valkey's `save` value, each rule checked to be two whole numbers.
fn save_rules(rules: &[String]) -> Result<String, VkError> {
    let mut parts = Vec::new();
    for rule in rules {
        let numbers: Vec<&str> = rule.split_whitespace().collect();
        if numbers.len() != 2
            || !numbers
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(VkError::InvalidSetting {
                name: "save".into(),
                reason: format!("{rule:?} is not `\"<seconds> <changes>\"`"),
            });
        }
        parts.extend(numbers);
    }
    Ok(parts.join(" "))
}

fn check_setting(name: &str, value: &SettingValue) -> Result<(), VkError> {
    if let Some(why) = reserved(name) {
        return Err(VkError::InvalidSetting {
            name: name.to_owned(),
            reason: format!("kip sets it itself: {why}"),
        });
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(VkError::InvalidSetting {
            name: name.to_owned(),
            reason: "not a Valkey directive name (letters, digits, `-`, `_`)".into(),
        });
    }
    if let SettingValue::Float(number) = value
        && !number.is_finite()
    {
        return Err(VkError::InvalidSetting {
            name: name.to_owned(),
            reason: format!("{number} is not a number"),
        });
    }
    Ok(())
}

/// A value in Valkey's config file syntax: always double-quoted, with `\\`, `"` and anything not printable
/// escaped (Valkey's `sdssplitargs` reads `\n`, `\xHH`, …), so a value is one argument whatever it holds.
pub fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for byte in value.bytes() {
        match byte {
            b'\\' => quoted.push_str("\\\\"),
            b'"' => quoted.push_str("\\\""),
            b'\n' => quoted.push_str("\\n"),
            b'\r' => quoted.push_str("\\r"),
            b'\t' => quoted.push_str("\\t"),
            0x20..=0x7e => quoted.push(byte as char),
            other => quoted.push_str(&format!("\\x{other:02x}")),
        }
    }
    quoted.push('"');
    quoted
}

/// The config file text.
pub fn render(directives: &[(String, String)]) -> String {
    let mut text = String::from(
        "# Written by kip from kip.hcl before every start and reconfigure; edits here are overwritten.\n",
    );
    for (name, value) in directives {
        if name == "save" && !value.is_empty() {
            // Several rules are several arguments.
            text.push_str(&format!("save {value}\n"));
        } else {
            text.push_str(&format!("{name} {}\n", quote(value)));
        }
    }
    text
}

/// Writes `text` to `path` with mode 0600, owned by the engine's account. Answers whether it changed.
pub fn write_private(path: &Path, text: &str, run_as: Option<&RunAs>) -> Result<bool, VkError> {
    write_with(
        kip_core::fsutil::write_private_if_changed,
        path,
        text,
        run_as,
    )
}

/// [`write_private`] for the configuration, rendered anew before every start: not fsynced
/// ([`kip_core::fsutil::write_private_regenerated`]).
pub fn write_config_file(path: &Path, text: &str, run_as: Option<&RunAs>) -> Result<bool, VkError> {
    write_with(
        kip_core::fsutil::write_private_regenerated,
        path,
        text,
        run_as,
    )
}

/// A private write of [`kip_core::fsutil`]: path, contents, owner (uid, gid); whether it wrote.
type PrivateWrite = fn(&Path, &[u8], Option<(u32, u32)>) -> std::io::Result<bool>;

fn write_with(
    write: PrivateWrite,
    path: &Path,
    text: &str,
    run_as: Option<&RunAs>,
) -> Result<bool, VkError> {
    write(
        path,
        text.as_bytes(),
        run_as.map(|run_as| (run_as.uid, run_as.gid)),
    )
    .map_err(io_error("write", path))
}

/// The instance attributes whose change restarts Valkey, of those that changed between `before` and `after`.
/// Everything else is applied live: the arguments with `CONFIG SET`, the password with `ACL SETUSER`.
pub fn restart_because(
    changed: &[String],
    before: &BTreeMap<String, Json>,
    after: &BTreeMap<String, Json>,
) -> Vec<String> {
    let major = after.get("major").and_then(Json::as_u64);
    changed
        .iter()
        .filter(|name| match name.as_str() {
            "port" | "databases" | "version" | "major" | "run_as" => true,
            // Immutable in Valkey 8, live from 9 on.
            "io_threads" => major.is_none_or(|major| major < 9),
            "settings" => crate::shared::settings_need_restart(
                before.get("settings"),
                after.get("settings"),
                is_live,
            ),
            // Valkey's own snapshot rules come back only with a restart.
            "save" => after.get("save").is_none_or(Json::is_null),
            _ => false,
        })
        .cloned()
        .collect()
}

/// The `settings` entries to `CONFIG SET`: new or changed ones Valkey takes live.
pub fn changed_live_settings(
    before: Option<&BTreeMap<String, SettingValue>>,
    after: Option<&BTreeMap<String, SettingValue>>,
) -> Vec<(String, String)> {
    after
        .into_iter()
        .flatten()
        .filter(|(name, value)| {
            is_live(name) && before.and_then(|before| before.get(*name)) != Some(*value)
        })
        .map(|(name, value)| (name.clone(), value.text()))
        .collect()
}

/// The parameters refresh reads back (`CONFIG GET`), to tell a setting changed behind kip's back (drift).
pub const OBSERVED: &[&str] = &[
    "maxmemory",
    "maxmemory-policy",
    "appendonly",
    "appendfsync",
    "save",
    "io-threads",
];

/// A `CONFIG GET` answer as name → value.
pub fn parse_config_get(answer: &redis::Value) -> BTreeMap<String, String> {
    let text = |value: &redis::Value| match value {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    match answer {
        redis::Value::Array(items) => items
            .chunks(2)
            .filter_map(|pair| match pair {
                [name, value] => Some((text(name)?, text(value)?)),
                _ => None,
            })
            .collect(),
        redis::Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(name, value)| Some((text(name)?, text(value)?)))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The instance attributes whose live value differs from what kip applied, with the live value in the
/// attribute's own terms (what the plan shows as `before`). An attribute kip left to Valkey (`save` unset) is
/// never drift.
pub fn settings_drift(
    applied: &BTreeMap<String, Json>,
    live: &BTreeMap<String, String>,
) -> BTreeMap<String, Json> {
    let mut drift = BTreeMap::new();
    let mut compare = |attribute: &str,
                       parameter: &str,
                       expected: Option<String>,
                       shown: &dyn Fn(&str) -> Json| {
        if let (Some(expected), Some(value)) = (expected, live.get(parameter))
            && &expected != value
        {
            drift.insert(attribute.to_owned(), shown(value));
        }
    };
    let size = |value: Option<&Json>| match value {
        None | Some(Json::Null) => Some(0),
        Some(Json::Number(bytes)) => bytes.as_u64(),
        Some(Json::String(text)) => kip_schemas::parse_size(text),
        _ => None,
    };
    compare(
        "maxmemory",
        "maxmemory",
        size(applied.get("maxmemory")).map(|bytes| bytes.to_string()),
        &|value| {
            value
                .parse::<u64>()
                .map_or_else(|_| json!(value), |bytes| json!(bytes))
        },
    );
    compare(
        "maxmemory_policy",
        "maxmemory-policy",
        applied
            .get("maxmemory_policy")
            .and_then(Json::as_str)
            .map(str::to_owned),
        &|value| json!(value),
    );
    compare(
        "appendonly",
        "appendonly",
        applied
            .get("appendonly")
            .and_then(Json::as_bool)
            .map(yes_no),
        &|value| json!(value == "yes"),
    );
    compare(
        "appendfsync",
        "appendfsync",
        applied
            .get("appendfsync")
            .and_then(Json::as_str)
            .map(str::to_owned),
        &|value| json!(value),
    );
    compare(
        "io_threads",
        "io-threads",
        applied
            .get("io_threads")
            .and_then(Json::as_u64)
            .map(|n| n.to_string()),
        &|value| {
            value
                .parse::<u64>()
                .map_or_else(|_| json!(value), |n| json!(n))
        },
    );
    let save: Option<Vec<String>> = applied.get("save").and_then(Json::as_array).map(|rules| {
        rules
            .iter()
            .filter_map(Json::as_str)
            .map(str::to_owned)
            .collect()
    });
    compare(
        "save",
        "save",
        save.and_then(|rules| save_rules(&rules).ok()),
        &|value| {
            let numbers: Vec<&str> = value.split_whitespace().collect();
            json!(
                numbers
                    .chunks(2)
                    .map(|pair| pair.join(" "))
                    .collect::<Vec<_>>()
            )
        },
    );
    drift
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn attrs(value: Json) -> BTreeMap<String, Json> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn quoting_keeps_every_value_one_argument() {
        assert_eq!(quote("Ex"), "\"Ex\"");
        assert_eq!(quote("a \"b\" \\ c"), "\"a \\\"b\\\" \\\\ c\"");
        assert_eq!(quote("line\nbreak"), "\"line\\nbreak\"");
        assert_eq!(quote("é"), "\"\\xc3\\xa9\"");
        assert_eq!(quote(""), "\"\"");
    }

    #[test]
    fn save_rules_are_checked() {
        assert_eq!(
            save_rules(&["3600 1".into(), "300 100".into()]).unwrap(),
            "3600 1 300 100"
        );
        assert_eq!(save_rules(&[]).unwrap(), "");
        assert!(save_rules(&["soon".into()]).is_err());
        assert!(save_rules(&["1 2 3".into()]).is_err());
    }

    #[test]
    fn live_and_restart_changes_are_told_apart() {
        let before = attrs(
            json!({"maxmemory": "64mb", "port": null, "major": 8, "io_threads": 1,
            "settings": {"hz": 10}}),
        );
        let after = attrs(
            json!({"maxmemory": "128mb", "port": 7000, "major": 8, "io_threads": 2,
            "settings": {"hz": 20}}),
        );
        let changed: Vec<String> = ["io_threads", "maxmemory", "port", "settings"]
            .map(str::to_owned)
            .to_vec();
        assert_eq!(
            restart_because(&changed, &before, &after),
            ["io_threads", "port"]
        );
        let nine = attrs(json!({"major": 9, "io_threads": 2}));
        assert!(restart_because(&["io_threads".into()], &before, &nine).is_empty());
        let immutable = attrs(json!({"major": 8, "settings": {"hz": 10, "tcp-backlog": 100}}));
        assert_eq!(
            restart_because(&["settings".into()], &before, &immutable),
            ["settings"]
        );
        let removed = attrs(json!({"major": 8, "settings": {}}));
        assert_eq!(
            restart_because(&["settings".into()], &before, &removed),
            ["settings"]
        );
    }

    #[test]
    fn live_settings_changed_behind_kips_back_are_drift() {
        let applied = attrs(
            json!({"maxmemory": "64mb", "maxmemory_policy": "allkeys-lru", "appendonly": true,
            "appendfsync": "everysec", "io_threads": 1, "save": null}),
        );
        let mut live: BTreeMap<String, String> = [
            ("maxmemory", "67108864"),
            ("maxmemory-policy", "allkeys-lru"),
            ("appendonly", "yes"),
            ("appendfsync", "everysec"),
            ("io-threads", "1"),
            ("save", "3600 1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert!(settings_drift(&applied, &live).is_empty());
        live.insert("maxmemory-policy".into(), "volatile-ttl".into());
        live.insert("maxmemory".into(), "1024".into());
        live.insert("appendonly".into(), "no".into());
        assert_eq!(
            settings_drift(&applied, &live),
            attrs(
                json!({"maxmemory": 1024, "maxmemory_policy": "volatile-ttl", "appendonly": false})
            )
        );
        let with_save = attrs(json!({"maxmemory": "1kb", "save": ["60 10", "300 1"]}));
        assert_eq!(
            settings_drift(&with_save, &live),
            attrs(json!({"save": ["3600 1"]}))
        );
    }

    #[test]
    fn settings_kip_owns_are_refused() {
        assert!(check_setting("unixsocket", &SettingValue::String("/tmp/x".into())).is_err());
        assert!(check_setting("Port", &SettingValue::Integer(1)).is_err());
        assert!(check_setting("hz", &SettingValue::Integer(20)).is_ok());
        assert!(check_setting("hz\nport", &SettingValue::Integer(20)).is_err());
    }
}
