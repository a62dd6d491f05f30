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
