//! The `valkey` block and its `user` objects as typed values, read from the attributes core built from the schema.
//! Every struct denies unknown fields, so an argument added to the schema and not here fails the provider's
//! schema test instead of being ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A `settings` value as HCL gives it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SettingValue {
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
}

impl SettingValue {
    /// The value as Valkey reads it, in `CONFIG SET` and in the config file (before quoting): booleans as
    /// `yes` / `no`.
    pub fn text(&self) -> String {
        match self {
            SettingValue::Bool(true) => "yes".to_owned(),
            SettingValue::Bool(false) => "no".to_owned(),
            SettingValue::Integer(value) => value.to_string(),
            SettingValue::Float(value) => value.to_string(),
            SettingValue::String(value) => value.clone(),
        }
    }
}

/// A `size` argument: `"64mb"` or a number of bytes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    pub fn text(&self) -> String {
        match self {
            Size::Bytes(bytes) => bytes.to_string(),
            Size::Text(text) => text.replace(' ', "").to_ascii_lowercase(),
        }
    }
}

/// `valkey "name" { … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceArgs {
    /// Added by core: the declared version and its major.
    pub version: Option<String>,
    pub major: Option<u32>,
    /// Added by core when `run_as` is set.
    #[serde(default)]
    pub run_as: Option<String>,
    pub port: Option<u16>,
    pub maxmemory: Option<Size>,
    pub maxmemory_policy: String,
    pub appendonly: bool,
    pub appendfsync: String,
    pub save: Option<Vec<String>>,
    pub databases: u32,
    pub password: Option<String>,
    pub io_threads: u32,
    pub settings: Option<BTreeMap<String, SettingValue>>,
}

/// `user "name" { … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserArgs {
    pub enabled: bool,
    pub password: Option<String>,
    /// Derived: always a list (empty when unset: no commands, no keys, no channels).
    pub commands: Option<Vec<String>>,
    pub keys: Option<Vec<String>>,
    pub channels: Option<Vec<String>>,
    /// Derived: the password kip hands out for the user is the only one Valkey accepts for it.
    #[serde(default)]
    pub password_works: bool,
}
