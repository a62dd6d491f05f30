//! The schema of every engine kip ships, built once and shared.
//!
//! Each engine lives in its own module and describes only its `kip.hcl` surface (arguments, blocks,
//! exports and their docs); what it takes to run the engine lives in `kip-providers`. The order of
//! [`engines`] is the order of the docs index and of `kip schema --json`, so it is fixed here.

use std::sync::OnceLock;

use crate::schema::{ArgumentSchema, EngineSchema, ExportSchema};
use crate::types::ValueType;

mod mariadb;
mod nats;
mod postgres;
mod process;
mod s3;
mod valkey;

pub use mariadb::{
    grant_privilege_problem as mariadb_grant_privilege_problem,
    parse_grant_target as mariadb_grant_target, reserved_setting as mariadb_reserved_setting,
};
pub use s3::PROBE_BUCKET_PREFIX as S3_PROBE_BUCKET_PREFIX;
pub use valkey::reserved_setting as valkey_reserved_setting;

/// Every engine, in a stable order: postgres, valkey, mariadb, nats, s3, process.
pub fn engines() -> &'static [EngineSchema] {
    static ENGINES: OnceLock<Vec<EngineSchema>> = OnceLock::new();
    ENGINES.get_or_init(|| {
        vec![
            postgres::schema(),
            valkey::schema(),
            mariadb::schema(),
            nats::schema(),
            s3::schema(),
            process::schema(),
        ]
    })
}

/// The engine whose block type is `name`.
pub fn engine(name: &str) -> Option<&'static EngineSchema> {
    engines().iter().find(|engine| engine.name == name)
}

/// The `version` argument every versioned engine has. `Scalar` so that `version = 16` is accepted too.
fn version_argument(doc: &'static str) -> ArgumentSchema {
    ArgumentSchema::new("version", ValueType::Scalar, doc).required()
}

/// `settings`, the escape hatch to the engine's own configuration file.
fn settings_argument(doc: &'static str) -> ArgumentSchema {
    ArgumentSchema::new("settings", ValueType::map(ValueType::Scalar), doc)
}

fn host_export() -> ExportSchema {
    ExportSchema::new(
        "host",
        "The address to connect to: always `127.0.0.1`, kip binds engines to loopback only.",
    )
}

/// Why `name` is in an engine's table of `settings` kip refuses (`(name, why)`, lower case), if it is.
fn reserved_in(table: &[(&str, &'static str)], name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    table
        .iter()
        .find(|(reserved, _)| *reserved == name)
        .map(|(_, why)| *why)
}

/// The first `settings` entry kip refuses: one in `reserved` (it sets it itself, or it has an argument of its
/// own), or a name that is not `name_byte`s only (`what` names what it is not: "a Valkey directive name (letters,
/// digits, `-`, `_`)"), so no name can break out of its line in the engine's config file.
fn settings_name_problem(
    value: &crate::validate::Shape,
    reserved: &[(&str, &'static str)],
    name_byte: fn(u8) -> bool,
    what: &str,
) -> Option<String> {
    let crate::validate::Shape::Object(entries) = value else {
        return None;
    };
    entries.iter().find_map(|(name, _)| {
        if let Some(why) = reserved_in(reserved, name) {
            Some(format!("kip sets `{name}` itself: {why}"))
        } else if name.is_empty() || !name.bytes().all(name_byte) {
            Some(format!("{name:?} is not {what}"))
        } else {
            None
        }
    })
}
