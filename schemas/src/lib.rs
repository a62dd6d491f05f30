//! kip-schemas: the schema vocabulary of kip engines, their validation, and their published docs.
//!
//! This crate sits at the bottom of the workspace. It describes what each engine accepts in `kip.hcl`
//! (engines, blocks, arguments, types, defaults, `since` gates, sensitivity, docs), checks decoded bodies
//! against those descriptions, and renders the same descriptions as JSON and Markdown, so the reference
//! users read is the one `kip lint` enforces.
//!
//! It knows nothing of HCL parsing, files or processes: the core hands it a [`BodyView`] with byte
//! [`Span`]s and turns the returned [`Problem`]s into rendered diagnostics.

mod engines;
mod export;
mod schema;
mod suggest;
mod types;
mod validate;
mod version;

pub use engines::{
    S3_PROBE_BUCKET_PREFIX, engine, engines, mariadb_grant_privilege_problem, mariadb_grant_target,
    mariadb_reserved_setting, valkey_reserved_setting,
};
pub use export::{JSON_FORMAT, REGENERATE_DOCS, markdown_index, to_json, to_markdown};
pub use schema::{ArgumentSchema, BlockSchema, EngineSchema, ExportSchema};
pub use suggest::did_you_mean;
pub use types::{Mismatch, MismatchKind, PathStep, ValueType, parse_duration, parse_size};
pub use validate::{
    AttributeView, BlockView, BodyView, Problem, Shape, Span, summary, validate_block,
    validate_body,
};
pub use version::{ParseVersionError, Version};
