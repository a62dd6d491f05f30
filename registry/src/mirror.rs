//! The binary mirror index: where to download each engine build and how to check it.
//!
//! A mirror publishes one `index.json`:
//!
//! ```json
//! {
//!   "format": 1,
//!   "engines": {
//!     "postgres": {
//!       "16.14.0": {
//!         "x86_64-unknown-linux-gnu": {
//!           "url": "postgres/16.14.0/postgres-16.14.0-x86_64-unknown-linux-gnu.tar.gz",
//!           "sha256": "<64 lowercase hex digits>",
//!           "size": 23456789
//!         }
//!       }
//!     }
//!   }
//! }
//! ```
//!
//! engine name → full version → platform triple → artifact. The fetcher (in `kip-core`) picks the newest full
//! version of a major, downloads `url` (which may be relative to the index), and checks `size` and `sha256` before
//! unpacking anything. This module only defines and checks the format: no network, no files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The index format this crate reads and writes.
pub const MIRROR_FORMAT: u32 = 1;

/// A mirror's `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorIndex {
    pub format: u32,
    /// engine → full version → platform triple → artifact.
    pub engines: BTreeMap<String, BTreeMap<String, BTreeMap<String, Artifact>>>,
}

/// One downloadable archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Absolute, or relative to the index's own address.
    pub url: String,
    /// Lowercase hex SHA-256 of the archive.
    pub sha256: String,
    /// Size of the archive in bytes.
    pub size: u64,
}

/// Why a mirror index was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MirrorError {
    /// Not valid JSON, or not the index shape.
    #[error("the mirror index is malformed at line {line}, column {column}")]
    Malformed {
        line: usize,
        column: usize,
        #[source]
        source: serde_json::Error,
    },

    /// A `format` this kip does not know.
    #[error("the mirror index has format {found}; this kip reads format {supported} only")]
    UnsupportedFormat { found: u32, supported: u32 },

    /// An artifact entry breaks a rule of the format.
    #[error("the mirror index entry {engine} {version} {platform} is invalid: {reason}")]
    InvalidArtifact {
        engine: String,
        version: String,
        platform: String,
        reason: String,
    },
}

impl MirrorError {
    /// What the user should do about this error.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            MirrorError::Malformed { .. } | MirrorError::InvalidArtifact { .. } => {
                "rebuild the index with `kip mirror index`, or ask the mirror's owner to"
            }
            MirrorError::UnsupportedFormat { .. } => "upgrade kip to read this mirror",
        })
    }
}

#[derive(Deserialize)]
struct FormatProbe {
    format: Option<u32>,
}

impl MirrorIndex {
    /// Parses and checks an index.
    pub fn parse(bytes: &[u8]) -> Result<MirrorIndex, MirrorError> {
        let malformed = |source: serde_json::Error| MirrorError::Malformed {
            line: source.line(),
            column: source.column(),
            source,
        };
        let probe: FormatProbe = serde_json::from_slice(bytes).map_err(malformed)?;
        if let Some(found) = probe.format.filter(|found| *found != MIRROR_FORMAT) {
            return Err(MirrorError::UnsupportedFormat {
                found,
                supported: MIRROR_FORMAT,
            });
        }
        let index: MirrorIndex = serde_json::from_slice(bytes).map_err(malformed)?;
        index.check()?;
        Ok(index)
    }

    /// The artifact for one engine, full version and platform, if the mirror has it.
    pub fn artifact(&self, engine: &str, version: &str, platform: &str) -> Option<&Artifact> {
        self.engines.get(engine)?.get(version)?.get(platform)
    }

    fn check(&self) -> Result<(), MirrorError> {
        for (engine, versions) in &self.engines {
            for (version, platforms) in versions {
                for (platform, artifact) in platforms {
                    let reason = if artifact.url.is_empty() {
                        Some("`url` is empty".to_owned())
                    } else if !is_sha256_hex(&artifact.sha256) {
                        Some(format!(
                            "`sha256` must be 64 lowercase hex digits, found {:?}",
                            artifact.sha256
                        ))
                    } else {
                        None
                    };
                    if let Some(reason) = reason {
                        return Err(MirrorError::InvalidArtifact {
                            engine: engine.clone(),
                            version: version.clone(),
                            platform: platform.clone(),
                            reason,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(sha256: &str) -> String {
        format!(
            r#"{{
  "format": 1,
  "engines": {{
    "postgres": {{
      "16.14.0": {{
        "x86_64-unknown-linux-gnu": {{ "url": "postgres/16.14.0.tar.gz", "sha256": "{sha256}", "size": 42 }}
      }}
    }}
  }}
}}"#
        )
    }

    #[test]
    fn parses_and_looks_up() {
        let index = MirrorIndex::parse(index(&"ab".repeat(32)).as_bytes()).unwrap();
        let artifact = index
            .artifact("postgres", "16.14.0", "x86_64-unknown-linux-gnu")
            .unwrap();
        assert_eq!(artifact.size, 42);
        assert!(
            index
                .artifact("postgres", "16.13.0", "x86_64-unknown-linux-gnu")
                .is_none()
        );
        let written = serde_json::to_vec(&index).unwrap();
        assert_eq!(MirrorIndex::parse(&written).unwrap(), index);
    }

    #[test]
    fn malformed_names_line_and_column() {
        let broken = index(&"ab".repeat(32)).replace("\"size\": 42", "\"size\": -1");
        let error = MirrorIndex::parse(broken.as_bytes()).unwrap_err();
        assert!(
            matches!(error, MirrorError::Malformed { line: 6, .. }),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .starts_with("the mirror index is malformed at line 6, column ")
        );
    }

    #[test]
    fn bad_hash_and_format_are_refused() {
        let error = MirrorIndex::parse(index("ABCD").as_bytes()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the mirror index entry postgres 16.14.0 x86_64-unknown-linux-gnu is invalid: `sha256` must be 64 \
             lowercase hex digits, found \"ABCD\""
        );
        let error = MirrorIndex::parse(br#"{"format": 9}"#).unwrap_err();
        assert!(matches!(
            error,
            MirrorError::UnsupportedFormat { found: 9, .. }
        ));
    }
}
