//! The file NATS starts from, and what a change of the instance's attributes takes.
//!
//! `nats.conf` (data directory, 0600, the engine account's) is rewritten from the attributes before every start
//! and every reconfigure: the client listener on 127.0.0.1 only (NATS has no unix socket), the monitoring
//! listener on 127.0.0.1 when `http_port` is declared, the authorization token (so no client ever gets in
//! without it, from the first start on: nothing secret goes on the command line), and the JetStream store in the
//! data directory.
//!
//! Which changes NATS reloads (SIGHUP) was measured against nats-server 2.15 (a reload of each option, read from
//! its log): `max_payload`, `max_connections`, the token, and [`RELOADABLE_SETTINGS`]; the JetStream limits from
//! one value to another, not from or to unset ("config reload not supported for jetstream max memory and max
//! store"). The listeners, JetStream itself and anything else restart the server.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value as Json;

use super::NatsError;
use super::args::{InstanceArgs, SettingValue, bytes};

/// `settings` options a reload applies (nats-server's `diffOptions` hot-swaps them).
pub const RELOADABLE_SETTINGS: &[&str] = &[
    "write_deadline",
    "ping_interval",
    "ping_max",
    "max_control_line",
    "auth_timeout",
    "debug",
    "trace",
    "logtime",
];

/// Everything the config file needs besides the attributes.
#[derive(Debug, Clone)]
pub struct Rendered<'a> {
    pub args: &'a InstanceArgs,
    pub port: u16,
    pub token: &'a str,
    pub store_dir: &'a Path,
}

/// A string in NATS's config syntax: double-quoted, with `\\`, `"` and control characters escaped (the lexer
/// reads `\t`, `\n`, `\r`, `\"`, `\\` and `\xXX`; other characters, UTF-8 included, are taken as they are), so a
/// value is one string whatever it holds (and a `$` in it is never read as a variable).
pub fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for character in value.chars() {
        match character {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            control if control.is_ascii_control() => {
                let _ = write!(quoted, "\\x{:02x}", control as u32);
            }
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

/// A `settings` value as NATS reads it.
fn setting_text(name: &str, value: &SettingValue) -> Result<String, NatsError> {
    Ok(match value {
        SettingValue::Bool(flag) => flag.to_string(),
        SettingValue::Integer(number) => number.to_string(),
        SettingValue::Float(number) if number.is_finite() => number.to_string(),
        SettingValue::Float(number) => {
            return Err(NatsError::InvalidSetting {
                name: name.to_owned(),
                reason: format!("{number} is not a number"),
            });
        }
        SettingValue::String(text) => quote(text),
    })
}

/// A `settings` name NATS could read as one key (the schema refuses the options kip sets itself at lint).
fn check_setting_name(name: &str) -> Result<(), NatsError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
    {
        return Err(NatsError::InvalidSetting {
            name: name.to_owned(),
            reason: "not a NATS configuration option name (letters, digits, `_`)".into(),
        });
    }
    Ok(())
}

/// The config file text.
pub fn render(rendered: &Rendered<'_>) -> Result<String, NatsError> {
    let args = rendered.args;
    let mut text = String::from(
        "# Written by kip from kip.hcl before every start and reconfigure; edits here are overwritten.\n",
    );
    let mut line = |line: String| {
        text.push_str(&line);
        text.push('\n');
    };
    line(format!(
        "listen: {}",
        quote(&format!("127.0.0.1:{}", rendered.port))
    ));
    if let Some(http_port) = args.http_port {
        line(format!(
            "http: {}",
            quote(&format!("127.0.0.1:{http_port}"))
        ));
    }
    line(format!(
        "max_payload: {}",
        bytes("max_payload", &args.max_payload)?
    ));
    if let Some(max_connections) = args.max_connections {
        line(format!("max_connections: {max_connections}"));
    }
    line(format!(
        "authorization {{\n  token: {}\n}}",
        quote(rendered.token)
    ));
    if args.jetstream {
        let mut block = format!(
            "jetstream {{\n  store_dir: {}\n",
            quote(&rendered.store_dir.to_string_lossy())
        );
        if let Some(size) = &args.max_memory_store {
            let _ = writeln!(
                block,
                "  max_memory_store: {}",
                bytes("max_memory_store", size)?
            );
        }
        if let Some(size) = &args.max_file_store {
            let _ = writeln!(
                block,
                "  max_file_store: {}",
                bytes("max_file_store", size)?
            );
        }
        block.push('}');
        line(block);
    }
    for (name, value) in args.settings.iter().flatten() {
        check_setting_name(name)?;
        line(format!("{name}: {}", setting_text(name, value)?));
    }
    Ok(text)
}

/// The instance attributes whose change restarts NATS, of those that changed between `before` and `after`;
/// everything else is reloaded.
pub fn restart_because(
    changed: &[String],
    before: &BTreeMap<String, Json>,
    after: &BTreeMap<String, Json>,
) -> Vec<String> {
    let set = |attributes: &BTreeMap<String, Json>, name: &str| {
        attributes.get(name).is_some_and(|value| !value.is_null())
    };
    changed
        .iter()
        .filter(|name| match name.as_str() {
            "max_payload" | "max_connections" | "token" => false,
            // From one limit to another reloads; from or to NATS's own share of memory or disk does not.
            "max_memory_store" | "max_file_store" => set(before, name) != set(after, name),
            "settings" => settings_need_restart(before.get("settings"), after.get("settings")),
            // The listeners, JetStream itself, the build and the account.
            _ => true,
        })
        .cloned()
        .collect()
}

/// A settings change restarts when it adds, changes or removes an option a reload does not apply.
fn settings_need_restart(before: Option<&Json>, after: Option<&Json>) -> bool {
    let empty = serde_json::Map::new();
    let before = before.and_then(Json::as_object).unwrap_or(&empty);
    let after = after.and_then(Json::as_object).unwrap_or(&empty);
    let reloadable =
        |name: &String| RELOADABLE_SETTINGS.contains(&name.to_ascii_lowercase().as_str());
    before
        .keys()
        .chain(after.keys())
        .filter(|name| before.get(*name) != after.get(*name))
        .any(|name| !reloadable(name))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::nats::args::Size;

    fn attrs(value: Json) -> BTreeMap<String, Json> {
        serde_json::from_value(value).unwrap()
    }

    fn args() -> InstanceArgs {
        InstanceArgs {
            version: Some("2".into()),
            major: Some(2),
            run_as: None,
            port: None,
            http_port: Some(8222),
            jetstream: true,
            max_payload: Size::Text("1mb".into()),
            max_connections: Some(64),
            max_memory_store: Some(Size::Text("64mb".into())),
            max_file_store: None,
            token: None,
            settings: Some(BTreeMap::from([
                (
                    "write_deadline".to_owned(),
                    SettingValue::String("10s".into()),
                ),
                ("debug".to_owned(), SettingValue::Bool(true)),
            ])),
        }
    }

    #[test]
    fn the_config_binds_loopback_and_requires_the_token() {
        let args = args();
        let text = render(&Rendered {
            args: &args,
            port: 4333,
            token: "t\"$x",
            store_dir: Path::new("/data/jetstream"),
        })
        .unwrap();
        assert!(text.contains("listen: \"127.0.0.1:4333\"\n"), "{text}");
        assert!(text.contains("http: \"127.0.0.1:8222\"\n"), "{text}");
        assert!(text.contains("max_payload: 1048576\n"), "{text}");
        assert!(text.contains("token: \"t\\\"$x\"\n"), "{text}");
        assert!(
            text.contains("store_dir: \"/data/jetstream\"\n  max_memory_store: 67108864\n}"),
            "{text}"
        );
        assert!(text.contains("write_deadline: \"10s\"\n"), "{text}");
        assert!(text.contains("debug: true\n"), "{text}");
    }

    #[test]
    fn setting_names_cannot_break_out_of_their_line() {
        let mut args = args();
        args.settings = Some(BTreeMap::from([(
            "debug: true\nlisten".to_owned(),
            SettingValue::Bool(true),
        )]));
        assert!(
            render(&Rendered {
                args: &args,
                port: 1,
                token: "t",
                store_dir: Path::new("/s")
            })
            .is_err()
        );
        assert_eq!(quote("é\n\u{1}"), "\"é\\n\\x01\"");
    }

    #[test]
    fn reloads_and_restarts_are_told_apart() {
        let before = attrs(
            json!({"max_payload": "1mb", "max_memory_store": "64mb", "max_file_store": null,
            "settings": {"debug": true}, "port": null}),
        );
        let after = attrs(
            json!({"max_payload": "2mb", "max_memory_store": "128mb", "max_file_store": "1gb",
            "settings": {"debug": false, "write_deadline": "5s"}, "port": 4333}),
        );
        let changed: Vec<String> = [
            "max_payload",
            "max_memory_store",
            "max_file_store",
            "settings",
            "port",
            "token",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(
            restart_because(&changed, &before, &after),
            ["max_file_store", "port"]
        );
        let pending = attrs(json!({"settings": {"debug": true, "max_pending": 1000}}));
        assert_eq!(
            restart_because(&["settings".into()], &before, &pending),
            ["settings"]
        );
        let removed = attrs(json!({"settings": {}}));
        assert!(restart_because(&["settings".into()], &before, &removed).is_empty());
        assert_eq!(
            restart_because(&["jetstream".into()], &before, &after),
            ["jetstream"]
        );
    }
}
