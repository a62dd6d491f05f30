//! `kip.cnf`, the only option file the server reads (`--defaults-file`, so no `/etc/my.cnf` or `~/.my.cnf`), and
//! which changes of the instance's attributes MariaDB takes live.
//!
//! The file (data directory, 0600, the engine account's) is rewritten from the attributes before every start: the
//! unix socket and the pid file in the instance's private run directory, `skip-networking` unless `port` is
//! declared (then `bind-address = 127.0.0.1` only), the server's character set and collation, the template's redo
//! log size, and the `settings`. The log goes to stderr, which the supervisor keeps.
//!
//! Which settings MariaDB changes live is [`DYNAMIC`]: the system variables `SET GLOBAL` accepts, measured against
//! 10.11.19. Anything else restarts, as does a removed setting (its default comes back only with a restart).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as Json;

use super::args::{InstanceArgs, SettingValue};
use super::{MyError, SOCKET, template::REDO_LOG_SIZE};

/// MariaDB's system variables that `SET GLOBAL` changes at runtime, one per line (see the file's header).
const DYNAMIC: &str = include_str!("dynamic_variables.txt");

/// A setting's name as MariaDB reads it either way: lowercase, `_` for `-`.
pub fn normalize(name: &str) -> String {
    name.to_ascii_lowercase().replace('-', "_")
}

/// Whether `SET GLOBAL` changes the setting `name` at runtime.
pub fn is_dynamic(name: &str) -> bool {
    static NAMES: std::sync::LazyLock<std::collections::HashSet<&'static str>> =
        std::sync::LazyLock::new(|| {
            DYNAMIC
                .lines()
                .filter(|line| !line.starts_with('#'))
                .collect()
        });
    NAMES.contains(normalize(name).as_str())
}

/// The option file's text.
pub fn render(
    args: &InstanceArgs,
    toolchain_root: &Path,
    data_dir: &Path,
    run_dir: &Path,
) -> Result<String, MyError> {
    let mut lines: Vec<(String, Option<String>)> = vec![
        ("basedir".into(), Some(path(toolchain_root))),
        ("datadir".into(), Some(path(data_dir))),
        (
            "lc-messages-dir".into(),
            Some(path(&toolchain_root.join("share/mysql"))),
        ),
        (
            "character-sets-dir".into(),
            Some(path(&toolchain_root.join("share/mysql/charsets"))),
        ),
        ("socket".into(), Some(path(&run_dir.join(SOCKET)))),
        ("pid-file".into(), Some(path(&run_dir.join("mariadb.pid")))),
        (
            "character-set-server".into(),
            Some(args.character_set.clone()),
        ),
    ];
    if let Some(collation) = &args.collation {
        lines.push(("collation-server".into(), Some(collation.clone())));
    }
    match args.port {
        Some(port) => {
            lines.push(("port".into(), Some(port.to_string())));
            lines.push(("bind-address".into(), Some("127.0.0.1".into())));
        }
        None => lines.push(("skip-networking".into(), None)),
    }
    let settings = args.settings.clone().unwrap_or_default();
    if !settings
        .keys()
        .any(|name| normalize(name) == "innodb_log_file_size")
    {
        lines.push(("innodb-log-file-size".into(), Some(REDO_LOG_SIZE.into())));
    }
    for (name, value) in &settings {
        check_setting(name, value)?;
        lines.push((name.clone(), Some(value_text(value))));
    }
    let mut text = String::from(
        "# Written by kip from kip.hcl before every start; edits here are overwritten.\n[mysqld]\n",
    );
    for (name, value) in lines {
        match value {
            Some(value) => text.push_str(&format!("{name} = {}\n", quote(&value))),
            None => text.push_str(&format!("{name}\n")),
        }
    }
    Ok(text)
}

fn path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A value as MariaDB reads it in an option file and in `SET GLOBAL`: booleans as `ON` / `OFF`.
pub fn value_text(value: &SettingValue) -> String {
    match value {
        SettingValue::Bool(true) => "ON".to_owned(),
        SettingValue::Bool(false) => "OFF".to_owned(),
        SettingValue::Integer(value) => value.to_string(),
        SettingValue::Float(value) => value.to_string(),
        SettingValue::String(value) => value.clone(),
    }
}

/// A value in an option file: double-quoted with `\` and `"` escaped, so that it is one value whatever it holds
/// (a `#` would start a comment otherwise). Line breaks are refused before ([`check_setting`]).
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Refuses a setting kip writes itself, a name MariaDB could not read, or a value that would break the file.
pub fn check_setting(name: &str, value: &SettingValue) -> Result<(), MyError> {
    if let Some(why) = kip_schemas::mariadb_reserved_setting(name) {
        return Err(MyError::InvalidSetting {
            name: name.to_owned(),
            reason: format!("kip sets it itself: {why}"),
        });
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    {
        return Err(MyError::InvalidSetting {
            name: name.to_owned(),
            reason: "not a MariaDB option name (letters, digits, `-`, `_`)".into(),
        });
    }
    match value {
        SettingValue::String(text) if text.chars().any(char::is_control) => {
            Err(MyError::InvalidSetting {
                name: name.to_owned(),
                reason: "the value holds a line break or a control character".into(),
            })
        }
        SettingValue::Float(number) if !number.is_finite() => Err(MyError::InvalidSetting {
            name: name.to_owned(),
            reason: format!("{number} is not a number"),
        }),
        _ => Ok(()),
    }
}

/// The instance attributes whose change restarts MariaDB, of those that changed between `before` and `after`.
/// `root_password` is applied live (`ALTER USER`), and so are settings that are all [`is_dynamic`].
pub fn restart_because(
    changed: &[String],
    before: &BTreeMap<String, Json>,
    after: &BTreeMap<String, Json>,
) -> Vec<String> {
    changed
        .iter()
        .filter(|name| match name.as_str() {
            "root_password" => false,
            "settings" => crate::shared::settings_need_restart(
                before.get("settings"),
                after.get("settings"),
                is_dynamic,
            ),
            _ => true,
        })
        .cloned()
        .collect()
}

/// The settings to `SET GLOBAL`: new or changed ones (all dynamic when no restart is planned).
pub fn changed_settings(
    before: Option<&BTreeMap<String, SettingValue>>,
    after: Option<&BTreeMap<String, SettingValue>>,
) -> Vec<(String, SettingValue)> {
    after
        .into_iter()
        .flatten()
        .filter(|(name, value)| {
            is_dynamic(name) && before.and_then(|before| before.get(*name)) != Some(*value)
        })
        .map(|(name, value)| (normalize(name), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn attrs(value: Json) -> BTreeMap<String, Json> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn dynamic_settings_are_known() {
        assert!(is_dynamic("max_connections"));
        assert!(is_dynamic("Max-Connections"));
        assert!(is_dynamic("innodb_buffer_pool_size"));
        assert!(!is_dynamic("innodb_page_size"));
        assert!(!is_dynamic("log_bin"));
        assert!(!is_dynamic("# MariaDB 10.11 system variables"));
    }

    #[test]
    fn live_and_restart_changes_are_told_apart() {
        let before = attrs(json!({"settings": {"max_connections": 100}}));
        let live = attrs(json!({"settings": {"max_connections": 200}}));
        let changed = vec!["settings".to_owned(), "root_password".to_owned()];
        assert!(restart_because(&changed, &before, &live).is_empty());
        let fixed = attrs(json!({"settings": {"max_connections": 100, "innodb_page_size": "32k"}}));
        assert_eq!(restart_because(&changed, &before, &fixed), ["settings"]);
        let removed = attrs(json!({"settings": {}}));
        assert_eq!(restart_because(&changed, &before, &removed), ["settings"]);
        assert_eq!(
            restart_because(&["port".into(), "collation".into()], &before, &before),
            ["port", "collation"]
        );
    }

    #[test]
    fn settings_are_checked_and_quoted() {
        assert!(check_setting("socket", &SettingValue::String("/tmp/x".into())).is_err());
        assert!(check_setting("Skip-Grant-Tables", &SettingValue::Bool(true)).is_err());
        assert!(check_setting("max_connections", &SettingValue::Integer(5)).is_ok());
        assert!(check_setting("a\nb", &SettingValue::Integer(5)).is_err());
        assert!(check_setting("sql_mode", &SettingValue::String("a\nport=1".into())).is_err());
        assert_eq!(quote("a \"b\" # c"), "\"a \\\"b\\\" # c\"");
    }
}
