//! The one error type of the registry crate.
//!
//! Every way a registry can be refused has its own variant, because the user's next step differs: an unsigned
//! document needs its `.sig`, an unknown key needs a kip that trusts that key, a tampered document must not be used at
//! all, an expired one needs a newer registry. The `Display` text says what was wrong; [`RegistryError::hint`] says
//! what to do, so the binary can render `error:`, `caused by:` and `hint:` without knowing the variants' meaning.

use std::path::PathBuf;

/// Why a registry document, a signature, a key or the trust store was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A registry document came without a signature file.
    #[error("the registry is not signed: no signature was supplied with the document")]
    Unsigned,

    /// The signature file is not the small JSON object `kip registry sign` writes.
    #[error("the registry signature file is malformed: {detail}")]
    MalformedSignature { detail: String },

    /// The signature names a key id that is not among the trusted keys.
    #[error(
        "the registry is signed by an unknown key (key id {key_id}); this kip does not trust it"
    )]
    UnknownKey { key_id: String },

    /// The key is trusted but the signature does not verify over the document bytes.
    #[error(
        "the registry signature does not verify with trusted key {key_id}: the document changed after it was \
         signed, or the signature belongs to another document"
    )]
    Tampered { key_id: String },

    /// The document is not valid JSON, or not the registry shape; serde_json gives the position.
    #[error("the registry document is malformed at line {line}, column {column}")]
    Malformed {
        line: usize,
        column: usize,
        #[source]
        source: serde_json::Error,
    },

    /// The document declares a `format` this kip does not know.
    #[error("the registry document has format {found}; this kip reads format {supported} only")]
    UnsupportedFormat { found: u32, supported: u32 },

    /// `issued` or `expires` is not an RFC 3339 timestamp.
    #[error("the registry field `{field}` is not an RFC 3339 timestamp: {value:?}")]
    InvalidTimestamp {
        field: &'static str,
        value: String,
        #[source]
        source: time::error::Parse,
    },

    /// The document parses but breaks a rule of the format (expiry before issue, empty or unordered majors, ...).
    #[error("the registry document is invalid: {reason}")]
    InvalidDocument { reason: String },

    /// The registry verified but its validity ended.
    #[error("the registry expired at {expires}")]
    Expired { expires: String },

    /// The registry verified but is older than one already trusted.
    #[error("the registry has serial {serial}, older than the already trusted serial {trusted}")]
    Rollback { serial: u64, trusted: u64 },

    /// A different registry was signed with the same serial as the trusted one.
    #[error(
        "the registry has serial {serial}, the same as the trusted registry, but different contents"
    )]
    SerialConflict { serial: u64 },

    /// A public key is not an ed25519 SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    #[error("not an ed25519 public key in PEM (SPKI) form: {detail}")]
    InvalidPublicKey { detail: String },

    /// A signing key is not an ed25519 PKCS#8 PEM (a PEM `PRIVATE KEY` block).
    #[error("not an ed25519 private key in PEM (PKCS#8) form: {detail}")]
    InvalidSigningKey { detail: String },

    /// The registry installed in the trust store failed verification.
    #[error("the installed registry {} is not usable", path.display())]
    InstalledInvalid {
        path: PathBuf,
        signature_path: PathBuf,
        #[source]
        source: Box<RegistryError>,
    },

    /// Reading or writing a trust-store file failed.
    #[error("could not {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RegistryError {
    /// What the user should do about this error, when there is something better to say than the message.
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            RegistryError::Unsigned => {
                "install the registry together with its .sig file; kip never accepts an unsigned registry"
            }
            RegistryError::MalformedSignature { .. } => {
                "the .sig file must be the JSON written by `kip registry sign`; download it again or re-sign the \
                 document"
            }
            RegistryError::UnknownKey { .. } => {
                "get a registry signed by the kip release key, or upgrade kip if the release key was rotated"
            }
            RegistryError::Tampered { .. } => {
                "download the document and its .sig again, as a pair; if it persists, the registry was altered: \
                 do not use it"
            }
            RegistryError::Malformed { .. } => {
                "fix the JSON at that position before signing, or download the registry again"
            }
            RegistryError::UnsupportedFormat { .. } => "upgrade kip to read this registry",
            RegistryError::InvalidTimestamp { .. } => {
                "write timestamps in RFC 3339, for example 2028-12-31T23:59:59Z, and sign the document again"
            }
            RegistryError::InvalidDocument { .. } => "fix the registry document and sign it again",
            RegistryError::Expired { .. } => {
                "ask for a newer registry (kip registry update) or upgrade kip"
            }
            RegistryError::Rollback { .. } => {
                "this would roll back to an outdated registry; get the newest registry (kip registry update)"
            }
            RegistryError::SerialConflict { .. } => {
                "every change to the registry must raise its serial; ask the signer for a registry with a higher \
                 serial"
            }
            RegistryError::InvalidPublicKey { .. } => {
                "expected the public half written by `kip registry keygen` or `openssl pkey -pubout`"
            }
            RegistryError::InvalidSigningKey { .. } => {
                "expected a key written by `kip registry keygen` or `openssl genpkey -algorithm ed25519`"
            }
            RegistryError::InstalledInvalid {
                path,
                signature_path,
                ..
            } => {
                return Some(format!(
                    "remove {} and {} to fall back to the registry built into kip, or install a valid one \
                     (kip registry update)",
                    path.display(),
                    signature_path.display()
                ));
            }
            RegistryError::Io { .. } => return None,
        };
        Some(hint.to_owned())
    }

    pub(crate) fn malformed(source: serde_json::Error) -> Self {
        RegistryError::Malformed {
            line: source.line(),
            column: source.column(),
            source,
        }
    }

    pub(crate) fn io(action: &'static str, path: PathBuf, source: std::io::Error) -> Self {
        RegistryError::Io {
            action,
            path,
            source,
        }
    }
}
