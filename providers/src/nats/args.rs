//! The `nats` block and its `stream` and `kv` objects as typed values, read from the attributes core built from
//! the schema. Every struct denies unknown fields, so an argument added to the schema and not here fails the
//! provider's schema test instead of being ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

pub use crate::valkey::args::{SettingValue, Size};

use super::NatsError;

/// `nats "name" { … }`.
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
    pub http_port: Option<u16>,
    pub jetstream: bool,
    pub max_payload: Size,
    pub max_connections: Option<u64>,
    pub max_memory_store: Option<Size>,
    pub max_file_store: Option<Size>,
    pub token: Option<String>,
    pub settings: Option<BTreeMap<String, SettingValue>>,
}

/// `stream "NAME" { … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamArgs {
    pub subjects: Vec<String>,
    pub description: Option<String>,
    pub retention: String,
    pub storage: String,
    pub max_msgs: i64,
    pub max_msgs_per_subject: i64,
    pub max_bytes: Option<Size>,
    pub max_age: Option<String>,
    pub max_msg_size: Option<Size>,
    pub discard: String,
    pub duplicate_window: String,
    pub replicas: u64,
}

/// `kv "bucket" { … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvArgs {
    pub description: Option<String>,
    pub history: i64,
    pub ttl: Option<String>,
    pub max_bytes: Option<Size>,
    pub max_value_size: Option<Size>,
    pub storage: String,
    pub replicas: u64,
}

/// The bytes of a `size` argument.
pub fn bytes(what: &str, size: &Size) -> Result<u64, NatsError> {
    match size {
        Size::Bytes(bytes) => Ok(*bytes),
        Size::Text(text) => kip_schemas::parse_size(text).ok_or_else(|| NatsError::Invalid {
            what: what.to_owned(),
            reason: format!("{text:?} is not a size"),
        }),
    }
}

/// The length of a `duration` argument.
pub fn duration(what: &str, text: &str) -> Result<Duration, NatsError> {
    kip_schemas::parse_duration(text).ok_or_else(|| NatsError::Invalid {
        what: what.to_owned(),
        reason: format!("{text:?} is not a duration"),
    })
}

/// A duration in the schema's own terms (`"7d"`, `"2m"`, `"90s"`, `"250ms"`): how a live value read back from
/// NATS is shown in a plan.
pub fn duration_text(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    const MS: u128 = 1_000_000;
    for (unit, size) in [
        ("d", 86_400_000 * MS),
        ("h", 3_600_000 * MS),
        ("m", 60_000 * MS),
        ("s", 1_000 * MS),
        ("ms", MS),
    ] {
        if nanos > 0 && nanos.is_multiple_of(size) {
            return format!("{}{unit}", nanos / size);
        }
    }
    format!("{}ms", nanos as f64 / MS as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_back_in_the_schemas_terms() {
        assert_eq!(duration_text(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(duration_text(Duration::from_secs(120)), "2m");
        assert_eq!(duration_text(Duration::from_secs(90)), "90s");
        assert_eq!(duration_text(Duration::from_millis(250)), "250ms");
        for text in ["7d", "2m", "90s", "250ms", "1h"] {
            assert_eq!(duration_text(duration("x", text).unwrap()), text);
        }
    }
}
