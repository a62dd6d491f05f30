//! What is compiled into the kip binary: the trusted public key(s) and the signed default registry.
//!
//! The default registry is verified like any other (signature with the compiled-in keys, then parsing), so a
//! document edited without re-signing fails the tests instead of shipping. Expiry is not checked here: it depends on
//! the clock, and an expired embedded registry may still be superseded by a newer installed one; that decision is
//! [`crate::TrustStore::active`]'s.
//!
//! To change the registry, edit `data/registry.json`, raise `serial`, and re-sign with
//! `cargo run -p kip-registry --example sign -- KEY.pem registry/data/registry.json` (or `kip registry sign`).

use std::sync::OnceLock;

use crate::{Registry, RegistryError, TrustedKey, verify_signed};

/// The public half of the release signing key.
const RELEASE_PUBLIC_KEY_PEM: &str = include_str!("../keys/release.pub.pem");

/// The exact bytes of the default registry document, as signed.
pub const EMBEDDED_DOCUMENT: &[u8] = include_bytes!("../data/registry.json");

/// The signature file of [`EMBEDDED_DOCUMENT`].
pub const EMBEDDED_SIGNATURE: &[u8] = include_bytes!("../data/registry.json.sig");

/// The keys kip accepts registry signatures from.
pub fn trusted_keys() -> &'static [TrustedKey] {
    static KEYS: OnceLock<Vec<TrustedKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        // The key file is part of the source; a unit test parses it, so this cannot fail in a tested build.
        vec![
            TrustedKey::from_pem(RELEASE_PUBLIC_KEY_PEM)
                .expect("keys/release.pub.pem is a valid ed25519 key"),
        ]
    })
}

/// The default registry, verified once per process against [`trusted_keys`]. Expiry is not checked; see the module
/// documentation.
pub fn embedded() -> Result<&'static Registry, RegistryError> {
    static EMBEDDED: OnceLock<Registry> = OnceLock::new();
    if let Some(registry) = EMBEDDED.get() {
        return Ok(registry);
    }
    // Only success is cached: errors are not Clone, and a failure (a build with a stale signature) is reported the
    // same way on every call by verifying again, which costs one signature check.
    let registry = verify_signed(EMBEDDED_DOCUMENT, Some(EMBEDDED_SIGNATURE), trusted_keys())?;
    Ok(EMBEDDED.get_or_init(|| registry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_release_key_parses() {
        let keys = trusted_keys();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].to_pem(), RELEASE_PUBLIC_KEY_PEM);
    }

    #[test]
    fn the_embedded_registry_verifies_with_the_compiled_in_key() {
        let registry = embedded().unwrap_or_else(|error| {
            panic!("{error} (hint: re-sign registry/data/registry.json after editing it)")
        });
        assert_eq!(registry.format, 1);
        assert_eq!(registry.serial, 1);
        assert_eq!(registry.issued, "2026-11-23T00:00:00Z");
        assert_eq!(registry.expires, "2028-12-31T23:59:59Z");
        assert_eq!(registry.majors("postgres"), Some(&[14, 15, 16, 17, 18][..]));
        assert_eq!(registry.majors("valkey"), Some(&[8, 9][..]));
        assert_eq!(registry.majors("mariadb"), Some(&[10][..]));
        assert_eq!(registry.majors("nats"), Some(&[2][..]));
        assert_eq!(registry.majors("s3"), Some(&[4][..]));
        assert_eq!(registry.engines.len(), 5);
        assert!(!registry.supports("postgres", 19));
    }

    #[test]
    fn the_embedded_registry_passes_full_verification_while_current() {
        let registry = crate::verify(
            EMBEDDED_DOCUMENT,
            Some(EMBEDDED_SIGNATURE),
            trusted_keys(),
            datetime!(2026-11-23 12:00 UTC),
            Some(1),
        )
        .unwrap();
        assert_eq!(&registry, embedded().unwrap());
    }

    #[test]
    fn the_embedded_document_is_pretty_with_a_trailing_newline() {
        let text = std::str::from_utf8(EMBEDDED_DOCUMENT).unwrap();
        assert!(text.starts_with("{\n"));
        assert!(text.ends_with("}\n"));
    }
}
