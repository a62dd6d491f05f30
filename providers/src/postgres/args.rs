//! The `postgres` block and its objects as typed values: one struct per block of the schema, read from the
//! attributes core built from that schema. Every struct denies unknown fields, so an argument added to the schema
//! and not here fails the provider's schema test instead of being ignored.
//!
//! Attributes core adds to every versioned instance (`version`, `major`, `run_as`) and the ones this provider
//! derives ([`super::engine`]'s `derive`: `has_password`, a nested object's `database`) are fields too.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{AuthMethod, SettingValue};

/// `postgres "name" { … }`.
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
    pub settings: Option<BTreeMap<String, SettingValue>>,
    pub superuser: String,
    pub password: Option<String>,
    pub auth_method: AuthMethod,
    pub encoding: String,
    pub locale: String,
    pub locale_provider: Option<String>,
    pub data_checksums: Option<bool>,
    pub io_method: Option<String>,
}

impl InstanceArgs {
    /// Every setting kip writes into `kip.conf`: the user's `settings`, and arguments that are settings
    /// (`io_method`).
    pub fn server_settings(&self) -> BTreeMap<String, SettingValue> {
        let mut settings = self.settings.clone().unwrap_or_default();
        if let Some(io_method) = &self.io_method {
            settings.insert("io_method".into(), SettingValue::String(io_method.clone()));
        }
        settings
    }
}

/// `role "name" { … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleArgs {
    pub login: bool,
    pub superuser: bool,
    pub createdb: bool,
    pub createrole: bool,
    pub inherit: bool,
    pub replication: bool,
    pub bypassrls: bool,
    pub password: Option<String>,
    pub connection_limit: i64,
    pub member_of: Option<Vec<String>>,
    pub valid_until: Option<String>,
    /// Derived: a role that logs in, or has a configured password, has a password.
    #[serde(default)]
    pub has_password: bool,
    /// Derived: the password kip hands out for the role (configured or generated) is the one the server has.
    #[serde(default)]
    pub password_works: bool,
}

/// `database "name" { … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseArgs {
    pub owner: Option<String>,
    pub encoding: Option<String>,
    pub locale: Option<String>,
    pub lc_collate: Option<String>,
    pub lc_ctype: Option<String>,
    pub template: Option<String>,
    pub connection_limit: i64,
    pub allow_connections: bool,
    pub is_template: bool,
    /// Derived: always a sorted list (empty when unset), so removing the last one drops it.
    pub extensions: Option<Vec<String>>,
}

/// `schema "name" { … }`, at instance level (with `database`) or inside a database (derived `database`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaArgs {
    pub database: Option<String>,
    pub owner: Option<String>,
}

/// `extension "name" { … }` inside a database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionArgs {
    pub schema: Option<String>,
    pub version: Option<String>,
    /// Derived: the database it lives in.
    pub database: Option<String>,
}

/// `grant { … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantArgs {
    pub role: String,
    pub on: Option<String>,
    pub database: Option<String>,
    pub schema: Option<String>,
    pub privileges: Vec<String>,
    pub with_grant_option: bool,
}
