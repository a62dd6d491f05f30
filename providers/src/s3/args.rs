//! The `s3` block and its `bucket` objects as typed values, read from the attributes core built from the schema.
//! Every struct denies unknown fields, so an argument added to the schema and not here fails the provider's
//! schema test instead of being ignored.

use serde::Deserialize;

/// `s3 "name" { … }`.
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
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub region: String,
}

/// `bucket "name" { … }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketArgs {
    pub versioning: bool,
    pub object_lock: bool,
    pub force_destroy: bool,
}
