//! `kip.lock`: the pins a team commits, so every machine and CI run the exact same engine builds.
//!
//! One block per declared engine version spec, with the full version it resolved to and the sha256 of the archive
//! for every platform the mirror offered:
//!
//! ```hcl
//! engine "postgres" "16" {
//!   version = "16.14.0"
//!   hashes = {
//!     "x86_64-unknown-linux-gnu" = "sha256:1f3c…"
//!   }
//! }
//! ```
//!
//! A pin wins over whatever the mirror offers later; a download that does not match the pinned hash is refused.
//! The file is written in a stable order (engine, then spec) so diffs stay small, and atomically.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hcl::edit::Span as _;
use hcl::edit::expr::{Expression, ObjectKey};
use hcl::edit::structure::Structure;

pub const LOCK_FILE: &str = "kip.lock";

/// One pinned engine version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The full version the spec resolved to, e.g. "16.14.0".
    pub version: String,
    /// Platform triple → lowercase hex sha256 of the archive.
    pub hashes: BTreeMap<String, String>,
}

/// The pins, keyed by engine and spec as written in the config ("16", "16.14").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockFile {
    pub pins: BTreeMap<(String, String), Pin>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

impl LockError {
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            LockError::Invalid { .. } => Some(
                "kip.lock is written by `kip lock`; fix the line, or delete the file and run `kip lock` again",
            ),
            _ => None,
        }
    }
}

impl LockFile {
    /// Reads `path`; a missing file is an empty lock.
    pub fn read(path: &Path) -> Result<LockFile, LockError> {
        match std::fs::read_to_string(path) {
            Ok(text) => LockFile::parse(path, &text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(LockFile::default()),
            Err(source) => Err(LockError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<LockFile, LockError> {
        let invalid = |offset: usize, message: String| {
            let (line, column) = line_col(text, offset);
            LockError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        };
        let body = hcl::edit::parser::parse_body(text).map_err(|error| {
            let location = error.location();
            LockError::Invalid {
                path: path.to_path_buf(),
                line: location.line(),
                column: location.column(),
                message: format!("not valid HCL: {}", error.message()),
            }
        })?;
        let mut lock = LockFile::default();
        for structure in body.iter() {
            let block = match structure {
                Structure::Block(block) if block.ident.as_str() == "engine" => block,
                Structure::Block(block) => {
                    let at = block.ident.span().map_or(0, |span| span.start);
                    return Err(invalid(
                        at,
                        format!(
                            "unexpected block {:?}; kip.lock holds engine blocks",
                            block.ident.as_str()
                        ),
                    ));
                }
                Structure::Attribute(attribute) => {
                    let at = attribute.key.span().map_or(0, |span| span.start);
                    return Err(invalid(
                        at,
                        format!(
                            "unexpected argument {:?} at the top level",
                            attribute.key.as_str()
                        ),
                    ));
                }
            };
            let at = block.ident.span().map_or(0, |span| span.start);
            let [engine, spec] = block.labels.as_slice() else {
                return Err(invalid(
                    at,
                    "an engine block has two labels: engine \"NAME\" \"SPEC\"".to_owned(),
                ));
            };
            let key = (engine.as_str().to_owned(), spec.as_str().to_owned());
            let mut version = None;
            let mut hashes = BTreeMap::new();
            for attribute in block.body.attributes() {
                let value_at = attribute.value.span().map_or(at, |span| span.start);
                match (attribute.key.as_str(), &attribute.value) {
                    ("version", Expression::String(text)) => version = Some(text.value().clone()),
                    ("hashes", Expression::Object(object)) => {
                        for (platform, hash) in object.iter() {
                            let platform = match platform {
                                ObjectKey::Ident(ident) => ident.as_str().to_owned(),
                                ObjectKey::Expression(Expression::String(text)) => {
                                    text.value().clone()
                                }
                                ObjectKey::Expression(_) => {
                                    return Err(invalid(
                                        value_at,
                                        "a platform is a quoted string".to_owned(),
                                    ));
                                }
                            };
                            let hash_at = hash.expr().span().map_or(value_at, |span| span.start);
                            let Expression::String(hash) = hash.expr() else {
                                return Err(invalid(
                                    hash_at,
                                    "a hash is a string \"sha256:HEX\"".to_owned(),
                                ));
                            };
                            let Some(hex) = hash
                                .value()
                                .strip_prefix("sha256:")
                                .filter(|hex| is_sha256(hex))
                            else {
                                return Err(invalid(
                                    hash_at,
                                    format!(
                                        "{:?} is not \"sha256:\" followed by 64 hex digits",
                                        hash.value()
                                    ),
                                ));
                            };
                            hashes.insert(platform, hex.to_owned());
                        }
                    }
                    (name @ ("version" | "hashes"), _) => {
                        return Err(invalid(value_at, format!("{name} has the wrong type")));
                    }
                    (other, _) => {
                        let key_at = attribute.key.span().map_or(at, |span| span.start);
                        return Err(invalid(
                            key_at,
                            format!("unexpected argument {other:?} in an engine block"),
                        ));
                    }
                }
            }
            let Some(version) = version else {
                return Err(invalid(
                    at,
                    format!("engine {:?} {:?} has no version", key.0, key.1),
                ));
            };
            if lock
                .pins
                .insert(key.clone(), Pin { version, hashes })
                .is_some()
            {
                return Err(invalid(
                    at,
                    format!("engine {:?} {:?} is pinned twice", key.0, key.1),
                ));
            }
        }
        Ok(lock)
    }

    /// The canonical text: header comment, engines sorted by name then spec, hashes sorted by platform.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# This file is maintained by `kip lock`. Commit it: it pins every engine to an exact, verified build.\n",
        );
        for ((engine, spec), pin) in &self.pins {
            let _ = write!(
                out,
                "\nengine {engine:?} {spec:?} {{\n  version = {:?}\n  hashes = {{\n",
                pin.version
            );
            for (platform, hash) in &pin.hashes {
                let _ = writeln!(out, "    {platform:?} = \"sha256:{hash}\"");
            }
            out.push_str("  }\n}\n");
        }
        out
    }

    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        crate::fsutil::write_atomically(path, self.render().as_bytes()).map_err(|source| {
            LockError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// [`LockFile::write`] with the fsyncs on a thread ([`crate::fsutil::write_atomically_soon`]): readers see the
    /// old file or the new one at once; it is durable before any state written after it is.
    pub fn write_soon(&self, path: &Path) -> Result<(), LockError> {
        crate::fsutil::write_atomically_soon(path, self.render().as_bytes()).map_err(|source| {
            LockError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    pub fn pin(&self, engine: &str, spec: &str) -> Option<&Pin> {
        self.pins.get(&(engine.to_owned(), spec.to_owned()))
    }
}

fn is_sha256(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "1f3c0000000000000000000000000000000000000000000000000000000000aa";

    fn sample() -> LockFile {
        let mut lock = LockFile::default();
        let mut hashes = BTreeMap::new();
        hashes.insert("x86_64-unknown-linux-gnu".to_owned(), HASH.to_owned());
        lock.pins.insert(
            ("valkey".into(), "9".into()),
            Pin {
                version: "9.1.2".into(),
                hashes: hashes.clone(),
            },
        );
        lock.pins.insert(
            ("postgres".into(), "16".into()),
            Pin {
                version: "16.14.0".into(),
                hashes,
            },
        );
        lock
    }

    #[test]
    fn renders_in_a_stable_order_and_parses_back() {
        let lock = sample();
        let text = lock.render();
        assert!(text.find("\"postgres\"").unwrap() < text.find("\"valkey\"").unwrap());
        assert_eq!(LockFile::parse(Path::new("kip.lock"), &text).unwrap(), lock);
        assert_eq!(
            LockFile::parse(Path::new("kip.lock"), &text)
                .unwrap()
                .render(),
            text
        );
    }

    #[test]
    fn malformed_files_name_the_position() {
        let check = |text: &str, line: usize, needle: &str| {
            let error = LockFile::parse(Path::new("kip.lock"), text).unwrap_err();
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("kip.lock:{line}:")),
                "{message}"
            );
            assert!(message.contains(needle), "{message}");
        };
        check("engine \"postgres\" {\n", 1, "not valid HCL");
        check(
            "engine \"postgres\" \"16\" {\n  version = 16\n}\n",
            2,
            "wrong type",
        );
        check(
            "engine \"postgres\" \"16\" {\n  version = \"16.1.0\"\n  hashes = { x = \"md5:1\" }\n}\n",
            3,
            "sha256",
        );
        check(
            "engine \"postgres\" {\n  version = \"16.1.0\"\n}\n",
            1,
            "two labels",
        );
        check(
            "engine \"p\" \"1\" {\n  version = \"1.0.0\"\n}\nengine \"p\" \"1\" {\n  version = \"1.0.1\"\n}\n",
            4,
            "twice",
        );
        check("provider \"x\" {}\n", 1, "unexpected block");
    }
}
