//! The server's configuration as kip writes it: `kip.conf` and `pg_hba.conf` in the data dir, and what a change of
//! settings takes to apply (nothing, a reload, or a restart).
//!
//! kip never edits `postgresql.conf` beyond appending one `include_if_exists = 'kip.conf'` line, so a diff of the
//! data dir shows exactly what kip owns, and hand edits above that line still work (kip's file, included last,
//! wins over them; `ALTER SYSTEM` still wins over kip, as PostgreSQL reads `postgresql.auto.conf` after it).
//! `kip.conf` holds where the server listens (a private unix socket directory, plus 127.0.0.1 only when a port is
//! declared) and the user's `settings`, quoted for postgresql.conf's own lexer.
//!
//! Whether a change needs a restart is decided from `pg_settings`: the value the server runs with, its unit (so
//! `"8MB"` equals `8192` kB), and its `context` (`postmaster` means restart). Unsure cases lean to a reload, which
//! is harmless; after the reload, [`pending_restart`] is PostgreSQL's own word on whether a restart is still due.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use kip_core::engine::RunAs;
use serde::{Deserialize, Serialize};

use super::{DEFAULT_PORT, PgError, io_error};

/// The config file kip owns, next to postgresql.conf.
pub const KIP_CONF: &str = "kip.conf";

const INCLUDE_LINE: &str = "include_if_exists = 'kip.conf'";

/// Settings kip derives from other arguments (or that would move files kip relies on): not allowed in `settings`.
pub const MANAGED_SETTINGS: [&str; 9] = [
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "data_directory",
    "config_file",
    "hba_file",
    "include",
    "include_if_exists",
    "include_dir",
];

/// The longest unix socket path Linux accepts (`sun_path` is 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A value in `settings = { … }`, as HCL gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SettingValue {
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
}

impl SettingValue {
    /// The value in postgresql.conf syntax: booleans as on/off, numbers bare, strings single-quoted with `'` and
    /// `\` escaped (the config lexer reads backslash escapes inside quotes).
    pub fn render(&self, name: &str) -> Result<String, PgError> {
        Ok(match self {
            SettingValue::Bool(value) => if *value { "on" } else { "off" }.to_owned(),
            SettingValue::Integer(value) => value.to_string(),
            SettingValue::Float(value) if value.is_finite() => value.to_string(),
            SettingValue::Float(value) => {
                return Err(PgError::InvalidSetting {
                    name: name.to_owned(),
                    reason: format!("{value} is not a number"),
                });
            }
            SettingValue::String(value) => quote_conf(name, value)?,
        })
    }
}

fn quote_conf(name: &str, value: &str) -> Result<String, PgError> {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for character in value.chars() {
        match character {
            '\'' => quoted.push_str("''"),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            '\0' => {
                return Err(PgError::InvalidSetting {
                    name: name.to_owned(),
                    reason: "the value contains a NUL byte".into(),
                });
            }
            other => quoted.push(other),
        }
    }
    quoted.push('\'');
    Ok(quoted)
}

/// Checks a setting name against postgresql.conf's lexer (`name` or `prefix.name`, letters, digits, `_`, `$`) and
/// against the settings kip manages itself.
fn check_name(name: &str) -> Result<(), PgError> {
    let part_ok = |part: &str| {
        let mut characters = part.chars();
        characters
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && characters.all(|character| {
                character.is_ascii_alphanumeric() || character == '_' || character == '$'
            })
    };
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|part| part_ok(part)) {
        return Err(PgError::InvalidSetting {
            name: name.to_owned(),
            reason: "not a setting name (letters, digits and `_`, optionally `prefix.name`)".into(),
        });
    }
    let lower = name.to_ascii_lowercase();
    if MANAGED_SETTINGS.contains(&lower.as_str()) {
        let reason = match lower.as_str() {
            "port" | "listen_addresses" => "kip sets it; declare `port` on the instance instead",
            _ => {
                "kip sets it (the instance's socket directory, data directory and config files are kip's)"
            }
        };
        return Err(PgError::InvalidSetting {
            name: name.to_owned(),
            reason: reason.into(),
        });
    }
    Ok(())
}

/// What kip writes into an instance's `kip.conf`.
#[derive(Debug, Clone)]
pub struct ServerConfig<'a> {
    /// The instance's private socket directory (libpq's `host`).
    pub socket_dir: &'a Path,
    /// A TCP port on 127.0.0.1, only when declared.
    pub port: Option<u16>,
    pub settings: &'a BTreeMap<String, SettingValue>,
}

impl ServerConfig<'_> {
    /// The text of `kip.conf`: listening first, then the user's settings by name.
    pub fn render(&self) -> Result<String, PgError> {
        let socket_dir = self
            .socket_dir
            .to_str()
            .ok_or_else(|| PgError::InvalidSetting {
                name: "unix_socket_directories".into(),
                reason: format!(
                    "the socket directory {} is not UTF-8",
                    self.socket_dir.display()
                ),
            })?;
        let port = self.port.unwrap_or(DEFAULT_PORT);
        let socket = format!("{socket_dir}/.s.PGSQL.{port}");
        if socket.len() > MAX_SOCKET_PATH {
            return Err(PgError::InvalidSetting {
                name: "unix_socket_directories".into(),
                reason: format!(
                    "the socket path {socket} is {} bytes, over the {MAX_SOCKET_PATH} bytes unix sockets allow; move \
                     the project to a shorter path",
                    socket.len()
                ),
            });
        }
        // A list setting: quote the directory inside the value so spaces survive; a `"` or `,` could not.
        if socket_dir.contains(['"', ',']) {
            return Err(PgError::InvalidSetting {
                name: "unix_socket_directories".into(),
                reason: format!(
                    "the socket directory {socket_dir} contains `\"` or `,`, which PostgreSQL cannot take"
                ),
            });
        }
        let mut text = String::from(
            "# Written by kip from kip.hcl; edits here are overwritten by the next `kip apply`.\n\
             # Set values in `settings = { … }` of the postgres block instead.\n",
        );
        let listen = if self.port.is_some() { "127.0.0.1" } else { "" };
        text.push_str(&format!(
            "listen_addresses = {}\n",
            quote_conf("listen_addresses", listen)?
        ));
        text.push_str(&format!("port = {port}\n"));
        text.push_str(&format!(
            "unix_socket_directories = {}\n",
            quote_conf("unix_socket_directories", &format!("\"{socket_dir}\""))?
        ));
        for (name, value) in self.settings {
            check_name(name)?;
            text.push_str(&format!("{name} = {}\n", value.render(name)?));
        }
        Ok(text)
    }
}

/// Writes `kip.conf` (atomically) and makes sure `postgresql.conf` includes it. Returns whether `kip.conf` changed,
/// that is, whether the running server needs to hear about it ([`settings_change`] says how).
pub fn write_config(
    data_dir: &Path,
    config: &ServerConfig<'_>,
    run_as: Option<&RunAs>,
) -> Result<bool, PgError> {
    let text = config.render()?;
    let path = data_dir.join(KIP_CONF);
    let changed = match std::fs::read_to_string(&path) {
        Ok(existing) => existing != text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => true,
        Err(source) => {
            return Err(PgError::Io {
                action: "read",
                path,
                source,
            });
        }
    };
    if changed {
        kip_core::fsutil::write_regenerated(&path, text.as_bytes())
            .map_err(io_error("write", &path))?;
        give(&path, run_as)?;
    }
    ensure_included(data_dir)?;
    Ok(changed)
}

/// Appends the include line to postgresql.conf unless a line already says it.
fn ensure_included(data_dir: &Path) -> Result<(), PgError> {
    let path = data_dir.join("postgresql.conf");
    let existing = std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
    if existing.lines().any(|line| line.trim() == INCLUDE_LINE) {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io_error("open", &path))?;
    let separator = if existing.is_empty() || existing.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    write!(file, "{separator}\n# Added by kip: the settings from kip.hcl, last so that they win.\n{INCLUDE_LINE}\n")
        .map_err(io_error("append to", &path))?;
    Ok(())
}

/// How clients authenticate (`auth_method` in kip.hcl).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthMethod {
    #[serde(rename = "trust")]
    Trust,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::ScramSha256 => "scram-sha-256",
        }
    }
}

/// Writes `pg_hba.conf`: the unix socket and loopback, nothing else, all with `method`.
///
/// Templates are built with `trust`, so a new instance accepts the superuser without a password. Switching to
/// scram-sha-256 goes: set the superuser's password (`PgChange::AlterRole`), then write this file, then reload;
/// from then on connections need the password.
pub fn write_hba(
    data_dir: &Path,
    method: AuthMethod,
    run_as: Option<&RunAs>,
) -> Result<bool, PgError> {
    let method = method.as_str();
    let text = format!(
        "# Written by kip (auth_method in kip.hcl); edits here are overwritten by the next `kip apply`.\n\
         # TYPE  DATABASE  USER  ADDRESS       METHOD\n\
         local   all       all                 {method}\n\
         host    all       all   127.0.0.1/32  {method}\n\
         host    all       all   ::1/128       {method}\n"
    );
    let path = data_dir.join("pg_hba.conf");
    if std::fs::read_to_string(&path).is_ok_and(|existing| existing == text) {
        return Ok(false);
    }
    kip_core::fsutil::write_regenerated(&path, text.as_bytes())
        .map_err(io_error("write", &path))?;
    give(&path, run_as)?;
    Ok(true)
}

fn give(path: &Path, run_as: Option<&RunAs>) -> Result<(), PgError> {
    if let Some(run_as) = run_as {
        std::os::unix::fs::lchown(path, Some(run_as.uid), Some(run_as.gid))
            .map_err(io_error("change the owner of", path))?;
    }
    Ok(())
}

/// What it takes for the running server to pick up new settings. Ordered: the strongest need wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettingsAction {
    None,
    Reload,
    Restart,
}

/// One row of `pg_settings`, as much of it as the decision needs.
#[derive(Debug, Clone)]
struct ServerSetting {
    setting: Option<String>,
    unit: Option<String>,
    vartype: String,
    context: String,
    from_kip_conf: bool,
    pending_restart: bool,
}

/// Compares `desired` (the settings in kip.hcl) with what the running server uses, and says what applying them
/// takes. A setting removed from kip.hcl that is still in effect from `kip.conf` counts as a change too (it goes
/// back to its default). Unknown settings (without a `prefix.`) and settings no configuration can change are errors,
/// since PostgreSQL would refuse to start with the first and ignore the second.
pub async fn settings_change(
    client: &tokio_postgres::Client,
    desired: &BTreeMap<String, SettingValue>,
) -> Result<SettingsAction, PgError> {
    const QUERY: &str = "SELECT name, setting, unit, vartype, context, \
                         coalesce(sourcefile LIKE '%/kip.conf', false), pending_restart \
                         FROM pg_settings WHERE name = ANY($1) OR sourcefile LIKE '%/kip.conf'";
    let names: Vec<String> = desired
        .keys()
        .map(|name| name.to_ascii_lowercase())
        .collect();
    let rows = client
        .query(QUERY, &[&names])
        .await
        .map_err(|source| PgError::sql("postgres", QUERY, source))?;
    let mut server = BTreeMap::new();
    for row in rows {
        let name: String = row.get(0);
        server.insert(
            name,
            ServerSetting {
                setting: row.get(1),
                unit: row.get(2),
                vartype: row.get(3),
                context: row.get(4),
                from_kip_conf: row.get(5),
                pending_restart: row.get(6),
            },
        );
    }
    let mut action = SettingsAction::None;
    for (name, value) in desired {
        check_name(name)?;
        let Some(current) = server.get(&name.to_ascii_lowercase()) else {
            if name.contains('.') {
                // A module's setting that is not loaded yet: PostgreSQL keeps it as a placeholder.
                action = action.max(SettingsAction::Reload);
                continue;
            }
            return Err(PgError::InvalidSetting {
                name: name.clone(),
                reason: "PostgreSQL has no such setting (see `SHOW ALL`)".into(),
            });
        };
        if current.context == "internal" {
            return Err(PgError::InvalidSetting {
                name: name.clone(),
                reason:
                    "it is fixed when PostgreSQL is built or initialised and cannot be configured"
                        .into(),
            });
        }
        let needs = if current.context == "postmaster" {
            SettingsAction::Restart
        } else {
            SettingsAction::Reload
        };
        if current.pending_restart {
            action = action.max(SettingsAction::Restart);
        } else if !same_value(value, current) {
            action = action.max(needs);
        }
    }
    for (name, current) in &server {
        let declared = desired.keys().any(|key| key.eq_ignore_ascii_case(name));
        if current.from_kip_conf && !declared && !MANAGED_SETTINGS.contains(&name.as_str()) {
            let needs = if current.context == "postmaster" {
                SettingsAction::Restart
            } else {
                SettingsAction::Reload
            };
            action = action.max(needs);
        }
    }
    Ok(action)
}

/// The declared settings the running server does not have: overridden from elsewhere (`ALTER SYSTEM`, which
/// PostgreSQL reads after kip's file, or a setting changed at runtime), or different in value. By name, with
/// the value the server uses (`SHOW` text), for refresh to report as drift.
pub async fn settings_drift(
    client: &tokio_postgres::Client,
    desired: &BTreeMap<String, SettingValue>,
) -> Result<BTreeMap<String, String>, PgError> {
    const QUERY: &str = "SELECT name, setting, unit, vartype, context, \
                         coalesce(sourcefile LIKE '%/kip.conf', false), pending_restart, current_setting(name) \
                         FROM pg_settings WHERE name = ANY($1)";
    let names: Vec<String> = desired
        .keys()
        .map(|name| name.to_ascii_lowercase())
        .collect();
    let rows = client
        .query(QUERY, &[&names])
        .await
        .map_err(|source| PgError::sql("postgres", QUERY, source))?;
    let mut drift = BTreeMap::new();
    for row in rows {
        let name: String = row.get(0);
        let current = ServerSetting {
            setting: row.get(1),
            unit: row.get(2),
            vartype: row.get(3),
            context: row.get(4),
            from_kip_conf: row.get(5),
            pending_restart: row.get(6),
        };
        let Some((declared, value)) = desired
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(&name))
        else {
            continue;
        };
        // A setting waiting for a restart is kip's own change in progress, not drift.
        if current.pending_restart {
            continue;
        }
        if !current.from_kip_conf || !same_value(value, &current) {
            drift.insert(declared.clone(), row.get::<_, String>(7));
        }
    }
    Ok(drift)
}

/// Removes `ALTER SYSTEM` overrides of the declared settings (PostgreSQL reads them after kip's file, so they
/// would win over kip.hcl); says whether it removed any (a reload makes it take effect).
pub async fn reset_overrides(
    client: &tokio_postgres::Client,
    desired: &BTreeMap<String, SettingValue>,
) -> Result<bool, PgError> {
    const QUERY: &str = "SELECT name FROM pg_settings WHERE name = ANY($1) \
                         AND sourcefile LIKE '%/postgresql.auto.conf'";
    let names: Vec<String> = desired
        .keys()
        .map(|name| name.to_ascii_lowercase())
        .collect();
    let rows = client
        .query(QUERY, &[&names])
        .await
        .map_err(|source| PgError::sql("postgres", QUERY, source))?;
    for row in &rows {
        let name: String = row.get(0);
        check_name(&name)?;
        let statement = format!("ALTER SYSTEM RESET {name}");
        client
            .batch_execute(&statement)
            .await
            .map_err(|source| PgError::sql("postgres", statement.clone(), source))?;
    }
    Ok(!rows.is_empty())
}

/// Asks the server to re-read its config and waits (up to 5 s) until this session has, so that what follows on
/// `client`, and any new connection, sees the new values.
pub async fn reload(client: &tokio_postgres::Client) -> Result<(), PgError> {
    const LOADED: &str = "SELECT extract(epoch FROM pg_conf_load_time())::float8";
    const RELOAD: &str = "SELECT pg_reload_conf()";
    let before: f64 = client
        .query_one(LOADED, &[])
        .await
        .map_err(|source| PgError::sql("postgres", LOADED, source))?
        .get(0);
    client
        .query_one(RELOAD, &[])
        .await
        .map_err(|source| PgError::sql("postgres", RELOAD, source))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let now: f64 = client
            .query_one(LOADED, &[])
            .await
            .map_err(|source| PgError::sql("postgres", LOADED, source))?
            .get(0);
        if now > before {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tracing::warn!("PostgreSQL did not report reloading its configuration within 5 s");
    Ok(())
}

/// The settings PostgreSQL read from the config but cannot apply without a restart (after a [`reload`]).
pub async fn pending_restart(client: &tokio_postgres::Client) -> Result<Vec<String>, PgError> {
    const QUERY: &str = "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name";
    let rows = client
        .query(QUERY, &[])
        .await
        .map_err(|source| PgError::sql("postgres", QUERY, source))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Whether `desired` means what the server has: numbers with units are compared in the setting's base unit,
/// booleans and enums by meaning. When unsure, "different": a needless reload is harmless.
fn same_value(desired: &SettingValue, current: &ServerSetting) -> bool {
    let Some(setting) = current.setting.as_deref() else {
        return false;
    };
    match current.vartype.as_str() {
        "bool" => {
            let wanted = match desired {
                SettingValue::Bool(value) => Some(*value),
                SettingValue::Integer(value) => Some(*value != 0),
                SettingValue::String(text) => parse_bool(text),
                SettingValue::Float(_) => None,
            };
            wanted.is_some_and(|wanted| Some(wanted) == parse_bool(setting))
        }
        "integer" | "real" => {
            let Some(wanted) = numeric_in_base_unit(desired, current.unit.as_deref()) else {
                return false;
            };
            let Ok(have) = setting.parse::<f64>() else {
                return false;
            };
            if current.vartype == "integer" {
                // PostgreSQL rounds a value given in another unit to the nearest base unit.
                wanted.round() == have
            } else {
                (wanted - have).abs() <= 1e-9 * have.abs().max(1.0)
            }
        }
        "enum" => match desired {
            SettingValue::String(text) => text.eq_ignore_ascii_case(setting),
            SettingValue::Bool(value) => parse_bool(setting) == Some(*value),
            other => other
                .render("")
                .is_ok_and(|text| text.eq_ignore_ascii_case(setting)),
        },
        _ => match desired {
            SettingValue::String(text) => text == setting,
            other => other.render("").is_ok_and(|text| text == setting),
        },
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" | "t" | "y" => Some(true),
        "off" | "false" | "no" | "0" | "f" | "n" => Some(false),
        _ => None,
    }
}

/// A desired numeric value converted into the setting's base unit (`unit` as pg_settings spells it: "kB", "8kB",
/// "MB", "B", "ms", "s", "min").
fn numeric_in_base_unit(desired: &SettingValue, unit: Option<&str>) -> Option<f64> {
    let (number, given_unit) = match desired {
        SettingValue::Integer(value) => return Some(*value as f64),
        SettingValue::Float(value) => return Some(*value),
        SettingValue::Bool(_) => return None,
        SettingValue::String(text) => split_number_unit(text.trim())?,
    };
    if given_unit.is_empty() {
        return Some(number);
    }
    let (base_count, base_name) = split_number_unit(unit?).or_else(|| Some((1.0, unit?)))?;
    let base_count = if base_count == 0.0 { 1.0 } else { base_count };
    let given = unit_factor(given_unit)?;
    let base = unit_factor(base_name)?;
    // Memory and time units do not mix.
    if given.1 != base.1 {
        return None;
    }
    Some(number * given.0 / (base.0 * base_count))
}

/// "8MB" → (8, "MB"); "8kB" as a base unit → (8, "kB"); "kB" → None (no number).
fn split_number_unit(text: &str) -> Option<(f64, &str)> {
    let end = text
        .char_indices()
        .find(|(_, character)| {
            !(character.is_ascii_digit() || matches!(character, '.' | '-' | '+'))
        })
        .map_or(text.len(), |(index, _)| index);
    if end == 0 {
        return None;
    }
    let number = text[..end].parse().ok()?;
    Some((number, text[end..].trim()))
}

/// A unit's size in bytes or microseconds, and which of the two it measures.
fn unit_factor(unit: &str) -> Option<(f64, bool)> {
    const MEMORY: bool = true;
    Some(match unit {
        "B" => (1.0, MEMORY),
        "kB" => (1024.0, MEMORY),
        "MB" => (1024.0 * 1024.0, MEMORY),
        "GB" => (1024.0 * 1024.0 * 1024.0, MEMORY),
        "TB" => (1024.0 * 1024.0 * 1024.0 * 1024.0, MEMORY),
        "us" => (1.0, !MEMORY),
        "ms" => (1_000.0, !MEMORY),
        "s" => (1_000_000.0, !MEMORY),
        "min" => (60_000_000.0, !MEMORY),
        "h" => (3_600_000_000.0, !MEMORY),
        "d" => (86_400_000_000.0, !MEMORY),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn setting(setting: &str, unit: Option<&str>, vartype: &str) -> ServerSetting {
        ServerSetting {
            setting: Some(setting.into()),
            unit: unit.map(str::to_owned),
            vartype: vartype.into(),
            context: "user".into(),
            from_kip_conf: false,
            pending_restart: false,
        }
    }

    #[test]
    fn renders_listening_and_settings_in_order() {
        let settings = BTreeMap::from([
            ("work_mem".to_owned(), SettingValue::String("8MB".into())),
            (
                "log_min_duration_statement".to_owned(),
                SettingValue::Integer(250),
            ),
            ("fsync".to_owned(), SettingValue::Bool(false)),
            ("random_page_cost".to_owned(), SettingValue::Float(1.5)),
            (
                "log_line_prefix".to_owned(),
                SettingValue::String("it's \\ %m\n".into()),
            ),
        ]);
        let socket_dir = PathBuf::from("/tmp/my project/.kip/run");
        let text = ServerConfig {
            socket_dir: &socket_dir,
            port: None,
            settings: &settings,
        }
        .render()
        .unwrap();
        let body: Vec<&str> = text.lines().filter(|line| !line.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "listen_addresses = ''",
                "port = 5432",
                "unix_socket_directories = '\"/tmp/my project/.kip/run\"'",
                "fsync = off",
                "log_line_prefix = 'it''s \\\\ %m\\n'",
                "log_min_duration_statement = 250",
                "random_page_cost = 1.5",
                "work_mem = '8MB'",
            ]
        );
        let empty = BTreeMap::new();
        let text = ServerConfig {
            socket_dir: &socket_dir,
            port: Some(15432),
            settings: &empty,
        }
        .render()
        .unwrap();
        assert!(
            text.contains("listen_addresses = '127.0.0.1'\nport = 15432\n"),
            "{text}"
        );
    }

    #[test]
    fn refuses_managed_and_malformed_names_and_long_sockets() {
        let socket_dir = PathBuf::from("/run/kip");
        for name in [
            "port",
            "Listen_Addresses",
            "include",
            "bad name",
            "a.b.c",
            "1x",
            "x = 1\nfsync",
        ] {
            let settings = BTreeMap::from([(name.to_owned(), SettingValue::Integer(1))]);
            let result = ServerConfig {
                socket_dir: &socket_dir,
                port: None,
                settings: &settings,
            }
            .render();
            assert!(
                matches!(result, Err(PgError::InvalidSetting { .. })),
                "{name}: {result:?}"
            );
        }
        let settings = BTreeMap::from([(
            "auto_explain.log_min_duration".to_owned(),
            SettingValue::Integer(1),
        )]);
        ServerConfig {
            socket_dir: &socket_dir,
            port: None,
            settings: &settings,
        }
        .render()
        .unwrap();
        let long = PathBuf::from(format!("/{}", "d".repeat(100)));
        let empty = BTreeMap::new();
        assert!(
            ServerConfig {
                socket_dir: &long,
                port: None,
                settings: &empty
            }
            .render()
            .is_err()
        );
    }

    #[test]
    fn include_is_appended_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("postgresql.conf"), "max_connections = 100").unwrap();
        let settings =
            BTreeMap::from([("work_mem".to_owned(), SettingValue::String("8MB".into()))]);
        let config = ServerConfig {
            socket_dir: dir.path(),
            port: None,
            settings: &settings,
        };
        assert!(write_config(dir.path(), &config, None).unwrap());
        assert!(
            !write_config(dir.path(), &config, None).unwrap(),
            "unchanged the second time"
        );
        let conf = std::fs::read_to_string(dir.path().join("postgresql.conf")).unwrap();
        assert_eq!(conf.matches(INCLUDE_LINE).count(), 1, "{conf}");
        assert!(conf.starts_with("max_connections = 100\n"), "{conf}");
    }

    #[test]
    fn values_compare_in_the_base_unit() {
        let work_mem = setting("4096", Some("kB"), "integer");
        assert!(same_value(&SettingValue::String("4MB".into()), &work_mem));
        assert!(same_value(
            &SettingValue::String("4096kB".into()),
            &work_mem
        ));
        assert!(same_value(&SettingValue::Integer(4096), &work_mem));
        assert!(!same_value(&SettingValue::String("8MB".into()), &work_mem));
        let shared_buffers = setting("16384", Some("8kB"), "integer");
        assert!(same_value(
            &SettingValue::String("128MB".into()),
            &shared_buffers
        ));
        assert!(!same_value(
            &SettingValue::String("256MB".into()),
            &shared_buffers
        ));
        let timeout = setting("250", Some("ms"), "integer");
        assert!(same_value(&SettingValue::String("250ms".into()), &timeout));
        assert!(
            !same_value(&SettingValue::String("250kB".into()), &timeout),
            "units of another kind"
        );
        let checkpoint = setting("300", Some("s"), "integer");
        assert!(same_value(
            &SettingValue::String("5min".into()),
            &checkpoint
        ));
        let fsync = setting("on", None, "bool");
        assert!(same_value(&SettingValue::Bool(true), &fsync));
        assert!(same_value(&SettingValue::String("true".into()), &fsync));
        assert!(!same_value(&SettingValue::String("off".into()), &fsync));
        let wal_level = setting("replica", None, "enum");
        assert!(same_value(
            &SettingValue::String("Replica".into()),
            &wal_level
        ));
        let cost = setting("4", None, "real");
        assert!(same_value(&SettingValue::Float(4.0), &cost));
        assert!(same_value(&SettingValue::String("4.0".into()), &cost));
    }
}
