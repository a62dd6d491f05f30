//! The `mariadb` block and its objects as typed values, read from the attributes core built from the schema. Every
//! struct denies unknown fields, so an argument added to the schema and not here fails the provider's schema test
//! instead of being ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A `settings` value as HCL gives it (the same shapes as Valkey's; MariaDB writes them with
/// [`super::config::value_text`]).
pub use crate::valkey::args::SettingValue;

/// `mariadb "name" { … }`.
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
    pub root_password: Option<String>,
    pub character_set: String,
    pub collation: Option<String>,
}

/// `database "name" { … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseArgs {
    pub character_set: Option<String>,
    pub collation: Option<String>,
}

/// `user "name" { … }` (its `grant` blocks are objects of their own).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserArgs {
    pub host: String,
    pub password: Option<String>,
    pub max_user_connections: u32,
    /// Derived: the password kip hands out for the user is the one MariaDB checks.
    #[serde(default)]
    pub password_works: bool,
    /// Derived: privileges the user has on targets no `grant` block names (none, as declared).
    #[serde(default)]
    pub undeclared_grants: Vec<String>,
}

/// `grant { … }` inside a user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantArgs {
    pub on: String,
    pub privileges: Vec<String>,
    pub with_grant_option: bool,
}
