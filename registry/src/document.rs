//! The registry document: which major versions of each engine kip accepts.
//!
//! The document is plain JSON so that a person can read and review it before signing:
//!
//! ```json
//! {
//!   "format": 1,
//!   "serial": 1,
//!   "issued": "2026-11-23T00:00:00Z",
//!   "expires": "2028-12-31T23:59:59Z",
//!   "engines": {
//!     "postgres": { "majors": [14, 15, 16, 17, 18] }
//!   }
//! }
//! ```
//!
//! `format` versions the shape; a reader refuses a format it does not know instead of guessing. Fields a format-1
//! reader does not know are ignored, so additive changes need no new format. `serial` grows with every signed
//! change and is what rollback protection compares. `issued` and `expires` are RFC 3339; an expired registry is
//! refused so a stale one cannot be replayed forever. Majors are listed in ascending order without duplicates, which
//! keeps the document canonical and lets diagnostics quote the list as is.
//!
//! Parsing only checks the document; whether it is trusted is decided by [`crate::verify`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::RegistryError;

/// The registry document format this crate reads and writes.
pub const REGISTRY_FORMAT: u32 = 1;

/// A parsed and checked registry document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// The document format; always [`REGISTRY_FORMAT`] after [`Registry::parse`].
    pub format: u32,
    /// Grows with every signed change; a lower serial than the trusted one is a rollback.
    pub serial: u64,
    /// When the document was issued, RFC 3339.
    pub issued: String,
    /// When the document stops being valid, RFC 3339.
    pub expires: String,
    /// Engine name (as written in `kip.hcl`, e.g. `postgres`) to what is supported.
    pub engines: BTreeMap<String, EngineEntry>,
}

/// What the registry says about one engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineEntry {
    /// Supported major versions, ascending, without duplicates.
    pub majors: Vec<u32>,
}

/// Only the `format` field, read first so a future format gets "unsupported format" rather than a shape error.
#[derive(Deserialize)]
struct FormatProbe {
    format: Option<u32>,
}

impl Registry {
    /// Parses and checks a registry document. It does not verify a signature; see [`crate::verify`].
    pub fn parse(document: &[u8]) -> Result<Registry, RegistryError> {
        let probe: FormatProbe =
            serde_json::from_slice(document).map_err(RegistryError::malformed)?;
        if let Some(found) = probe.format.filter(|found| *found != REGISTRY_FORMAT) {
            return Err(RegistryError::UnsupportedFormat {
                found,
                supported: REGISTRY_FORMAT,
            });
        }
        let registry: Registry =
            serde_json::from_slice(document).map_err(RegistryError::malformed)?;
        registry.check()?;
        Ok(registry)
    }

    /// The supported majors of `engine`, ascending, or `None` when the registry does not list the engine.
    pub fn majors(&self, engine: &str) -> Option<&[u32]> {
        self.engines
            .get(engine)
            .map(|entry| entry.majors.as_slice())
    }

    /// Whether `major` of `engine` is supported.
    pub fn supports(&self, engine: &str, major: u32) -> bool {
        self.majors(engine)
            .is_some_and(|majors| majors.contains(&major))
    }

    /// When the document was issued.
    pub fn issued_at(&self) -> Result<OffsetDateTime, RegistryError> {
        parse_timestamp("issued", &self.issued)
    }

    /// When the document stops being valid.
    pub fn expires_at(&self) -> Result<OffsetDateTime, RegistryError> {
        parse_timestamp("expires", &self.expires)
    }

    /// Whether the document is past its expiry at `now`.
    pub fn check_not_expired(&self, now: OffsetDateTime) -> Result<(), RegistryError> {
        if now > self.expires_at()? {
            return Err(RegistryError::Expired {
                expires: self.expires.clone(),
            });
        }
        Ok(())
    }

    fn check(&self) -> Result<(), RegistryError> {
        let issued = self.issued_at()?;
        let expires = self.expires_at()?;
        if expires <= issued {
            return Err(invalid(format!(
                "`expires` ({}) is not after `issued` ({})",
                self.expires, self.issued
            )));
        }
        for (engine, entry) in &self.engines {
            if engine.is_empty() {
                return Err(invalid("an engine name is empty".to_owned()));
            }
            if entry.majors.is_empty() {
                return Err(invalid(format!("engine `{engine}` lists no majors")));
            }
            if entry.majors.windows(2).any(|pair| pair[0] >= pair[1]) {
                return Err(invalid(format!(
                    "the majors of engine `{engine}` are not in ascending order without duplicates: {:?}",
                    entry.majors
                )));
            }
        }
        Ok(())
    }
}

fn invalid(reason: String) -> RegistryError {
    RegistryError::InvalidDocument { reason }
}

fn parse_timestamp(field: &'static str, value: &str) -> Result<OffsetDateTime, RegistryError> {
    OffsetDateTime::parse(value, &Rfc3339).map_err(|source| RegistryError::InvalidTimestamp {
        field,
        value: value.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"{
  "format": 1,
  "serial": 7,
  "issued": "2026-11-23T00:00:00Z",
  "expires": "2028-12-31T23:59:59Z",
  "engines": {
    "postgres": { "majors": [14, 15, 16, 17, 18] },
    "valkey": { "majors": [8, 9] }
  }
}
"#;

    fn parse_error(document: &str) -> RegistryError {
        Registry::parse(document.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_and_answers_questions() {
        let registry = Registry::parse(VALID.as_bytes()).unwrap();
        assert_eq!(registry.serial, 7);
        assert_eq!(registry.majors("postgres"), Some(&[14, 15, 16, 17, 18][..]));
        assert!(registry.supports("postgres", 16));
        assert!(!registry.supports("postgres", 19));
        assert!(!registry.supports("oracle", 23));
        assert_eq!(registry.majors("oracle"), None);
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let broken = VALID.replace("\"serial\": 7,", "\"serial\": 7");
        let error = parse_error(&broken);
        let RegistryError::Malformed { line, column, .. } = &error else {
            panic!("expected Malformed, got {error:?}");
        };
        assert_eq!((*line, *column), (4, 3));
        assert_eq!(
            error.to_string(),
            "the registry document is malformed at line 4, column 3"
        );
    }

    #[test]
    fn wrong_shape_names_line_and_column() {
        let error = parse_error(&VALID.replace("\"serial\": 7", "\"serial\": \"seven\""));
        assert!(
            matches!(error, RegistryError::Malformed { line: 3, .. }),
            "{error:?}"
        );
        let error = parse_error(r#"{"format": 1}"#);
        assert!(
            matches!(error, RegistryError::Malformed { line: 1, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn unknown_format_is_refused_before_the_shape() {
        let error = parse_error(r#"{"format": 2, "something": "else"}"#);
        assert!(matches!(
            error,
            RegistryError::UnsupportedFormat {
                found: 2,
                supported: 1
            }
        ));
        assert_eq!(
            error.to_string(),
            "the registry document has format 2; this kip reads format 1 only"
        );
    }

    #[test]
    fn timestamps_are_checked() {
        let error = parse_error(&VALID.replace("2028-12-31T23:59:59Z", "end of 2028"));
        assert!(matches!(
            error,
            RegistryError::InvalidTimestamp {
                field: "expires",
                ..
            }
        ));
        assert!(error.to_string().contains("\"end of 2028\""));

        let error = parse_error(&VALID.replace("2028-12-31T23:59:59Z", "2025-01-01T00:00:00Z"));
        assert!(matches!(error, RegistryError::InvalidDocument { .. }));
        assert!(error.to_string().contains("is not after `issued`"));
    }

    #[test]
    fn majors_must_be_ascending_and_present() {
        let error = parse_error(&VALID.replace("[8, 9]", "[9, 8]"));
        assert!(error.to_string().contains("engine `valkey`"), "{error}");
        let error = parse_error(&VALID.replace("[8, 9]", "[8, 8]"));
        assert!(matches!(error, RegistryError::InvalidDocument { .. }));
        let error = parse_error(&VALID.replace("[8, 9]", "[]"));
        assert!(error.to_string().contains("lists no majors"), "{error}");
    }

    #[test]
    fn unknown_fields_are_ignored_for_additive_changes() {
        let extended = VALID.replace("\"serial\": 7,", "\"serial\": 7, \"note\": \"new field\",");
        assert_eq!(Registry::parse(extended.as_bytes()).unwrap().serial, 7);
    }

    #[test]
    fn serialises_back_to_an_equal_document() {
        let registry = Registry::parse(VALID.as_bytes()).unwrap();
        let written = serde_json::to_vec_pretty(&registry).unwrap();
        assert_eq!(Registry::parse(&written).unwrap(), registry);
    }
}
