//! kip's signed version registry, and the binary mirror index format.
//!
//! The registry decides which engine versions kip accepts: `version = "19"` for postgres is refused by `kip lint`
//! because the registry lists postgres majors 14 to 18. It is a JSON [`Registry`] document plus a detached ed25519
//! signature ([`sign`], [`verify`]). kip embeds the trusted public key(s) ([`trusted_keys`]) and a signed default
//! registry ([`embedded`]); a newer registry can be installed in a [`TrustStore`], and is refused when unsigned,
//! signed by an unknown key, tampered with, expired, or older than one already trusted, each with its own
//! [`RegistryError`] variant and hint.
//!
//! This crate sits at the bottom of the workspace: it spawns no processes, does no network I/O and prints nothing.
//! Its only file I/O is the trust store's own directory, which the caller chooses.

mod document;
mod embedded;
mod error;
pub mod mirror;
mod signature;
mod store;

pub use document::{EngineEntry, REGISTRY_FORMAT, Registry};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use embedded::{EMBEDDED_DOCUMENT, EMBEDDED_SIGNATURE, embedded, trusted_keys};
pub use error::RegistryError;
pub use signature::{
    KeyId, SIGNATURE_FORMAT, TrustedKey, keygen, load_signing_key, sign, verify, verify_signed,
};
pub use store::{ActiveRegistry, DOCUMENT_FILE, SIGNATURE_FILE, Source, TrustStore};
