//! Detached ed25519 signatures over registry documents, the keys that make them, and verification.
//!
//! # Signature file format
//!
//! A registry document `registry.json` travels with `registry.json.sig`, one line of JSON:
//!
//! ```json
//! {"format":1,"key_id":"0123456789abcdef","signature":"<128 hex digits>"}
//! ```
//!
//! - `format`: the signature file format, `1`.
//! - `key_id`: lowercase hex of the first 8 bytes of SHA-256 over the raw 32-byte ed25519 public key. It names the
//!   key without carrying it, so "signed by a key this kip does not trust" is told apart from "the key is trusted
//!   but the signature does not verify" (the document was tampered with).
//! - `signature`: lowercase hex of the 64-byte ed25519 signature over the exact bytes of the document, as
//!   committed or downloaded: no canonicalisation, so any change of any byte, whitespace included, breaks it.
//!
//! Verification uses `verify_strict`, which also refuses weak keys and non-canonical signatures.
//!
//! # Keys
//!
//! Signing keys are PKCS#8 PEM (a PEM `PRIVATE KEY` block) as `openssl genpkey -algorithm ed25519` writes
//! them; public keys are SPKI PEM (`-----BEGIN PUBLIC KEY-----`). The release signing key never enters the
//! source repository; only its public half does (`keys/release.pub.pem`).

use std::fmt;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{Registry, RegistryError};

/// The signature file format this crate reads and writes.
pub const SIGNATURE_FORMAT: u32 = 1;

/// The short, public name of an ed25519 public key: the first 8 bytes of SHA-256 over its 32 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 8]);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &VerifyingKey) -> KeyId {
        let digest = Sha256::digest(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    /// The raw 8 bytes.
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&encode_hex(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "KeyId({self})")
    }
}

/// A public key kip accepts registry signatures from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    verifying_key: VerifyingKey,
    key_id: KeyId,
}

impl TrustedKey {
    /// Trusts `verifying_key`.
    pub fn new(verifying_key: VerifyingKey) -> TrustedKey {
        TrustedKey {
            key_id: KeyId::of(&verifying_key),
            verifying_key,
        }
    }

    /// Reads an ed25519 public key in SPKI PEM form (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(pem: &str) -> Result<TrustedKey, RegistryError> {
        let verifying_key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|error| {
            RegistryError::InvalidPublicKey {
                detail: error.to_string(),
            }
        })?;
        Ok(TrustedKey::new(verifying_key))
    }

    /// The key itself.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying_key
    }

    /// The key's id, as written in signature files.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The key in SPKI PEM form, ending in a newline.
    pub fn to_pem(&self) -> String {
        public_key_pem(&self.verifying_key)
    }
}

/// The on-disk signature file; see the module documentation.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    format: u32,
    key_id: String,
    signature: String,
}

/// A signature file read and decoded, not yet checked against any key.
struct DetachedSignature {
    key_id: KeyId,
    signature: Signature,
}

/// Signs the exact bytes of `document` and returns the signature file text (one JSON line and a newline).
pub fn sign(document: &[u8], key: &SigningKey) -> String {
    let file = SignatureFile {
        format: SIGNATURE_FORMAT,
        key_id: KeyId::of(&key.verifying_key()).to_string(),
        signature: encode_hex(&key.sign(document).to_bytes()),
    };
    // Serialising a struct of a number and two strings into JSON cannot fail.
    let mut text = serde_json::to_string(&file).expect("a signature file serialises");
    text.push('\n');
    text
}

/// Reads an ed25519 signing key in PKCS#8 PEM form (a PEM `PRIVATE KEY` block).
pub fn load_signing_key(pem: &str) -> Result<SigningKey, RegistryError> {
    SigningKey::from_pkcs8_pem(pem.trim()).map_err(|error| RegistryError::InvalidSigningKey {
        detail: error.to_string(),
    })
}

/// Generates a new signing key from OS randomness and returns `(private PKCS#8 PEM, public SPKI PEM)`.
///
/// The private key is written in PKCS#8 v1, the same shape `openssl genpkey -algorithm ed25519` writes, so both
/// tools read each other's keys.
pub fn keygen() -> (String, String) {
    let signing_key = SigningKey::generate(&mut rand_core::OsRng);
    let keypair = KeypairBytes {
        secret_key: signing_key.to_bytes(),
        public_key: None,
    };
    // Encoding 32 bytes into a fixed PKCS#8 structure has no failure case beyond allocation.
    let private_pem = keypair
        .to_pkcs8_pem(LineEnding::LF)
        .expect("an ed25519 key encodes to PKCS#8");
    (
        private_pem.as_str().to_owned(),
        public_key_pem(&signing_key.verifying_key()),
    )
}

fn public_key_pem(key: &VerifyingKey) -> String {
    // Encoding 32 bytes into a fixed SPKI structure has no failure case beyond allocation.
    key.to_public_key_pem(LineEnding::LF)
        .expect("an ed25519 key encodes to SPKI")
}

/// Verifies a registry document and its signature, then checks it is current and no older than what is trusted.
///
/// The checks run in this order, and the first failure is returned: signature missing ([`RegistryError::Unsigned`]),
/// signature file malformed ([`RegistryError::MalformedSignature`]), key not trusted
/// ([`RegistryError::UnknownKey`]), signature does not verify ([`RegistryError::Tampered`]), document malformed or
/// invalid, expired at `now` ([`RegistryError::Expired`]), serial below `trusted_serial`
/// ([`RegistryError::Rollback`]). An equal serial is accepted.
pub fn verify(
    document: &[u8],
    signature: Option<&[u8]>,
    keys: &[TrustedKey],
    now: OffsetDateTime,
    trusted_serial: Option<u64>,
) -> Result<Registry, RegistryError> {
    let registry = verify_signed(document, signature, keys)?;
    registry.check_not_expired(now)?;
    if let Some(trusted) = trusted_serial.filter(|trusted| registry.serial < *trusted) {
        return Err(RegistryError::Rollback {
            serial: registry.serial,
            trusted,
        });
    }
    Ok(registry)
}

/// The time-independent part of [`verify`]: the signature checks, then parsing. Expiry and rollback are left to the
/// caller, for when the caller has to choose between several registries first.
pub fn verify_signed(
    document: &[u8],
    signature: Option<&[u8]>,
    keys: &[TrustedKey],
) -> Result<Registry, RegistryError> {
    let signature = signature.ok_or(RegistryError::Unsigned)?;
    let detached = decode_signature_file(signature)?;
    let key = keys
        .iter()
        .find(|key| key.key_id == detached.key_id)
        .ok_or_else(|| RegistryError::UnknownKey {
            key_id: detached.key_id.to_string(),
        })?;
    key.verifying_key
        .verify_strict(document, &detached.signature)
        .map_err(|_| RegistryError::Tampered {
            key_id: detached.key_id.to_string(),
        })?;
    Registry::parse(document)
}

fn decode_signature_file(bytes: &[u8]) -> Result<DetachedSignature, RegistryError> {
    let malformed = |detail: String| RegistryError::MalformedSignature { detail };
    let file: SignatureFile = serde_json::from_slice(bytes).map_err(|error| {
        malformed(format!(
            "{} (line {}, column {})",
            serde_json_message(&error),
            error.line(),
            error.column()
        ))
    })?;
    if file.format != SIGNATURE_FORMAT {
        return Err(malformed(format!(
            "format {} is not supported (this kip reads format {SIGNATURE_FORMAT})",
            file.format
        )));
    }
    let key_id: [u8; 8] = decode_hex_exact(&file.key_id).ok_or_else(|| {
        malformed(format!(
            "`key_id` must be 16 hex digits, found {:?}",
            file.key_id
        ))
    })?;
    let signature: [u8; 64] = decode_hex_exact(&file.signature).ok_or_else(|| {
        malformed(format!(
            "`signature` must be 128 hex digits, found {} characters",
            file.signature.chars().count()
        ))
    })?;
    Ok(DetachedSignature {
        key_id: KeyId(key_id),
        signature: Signature::from_bytes(&signature),
    })
}

/// serde_json's message without its trailing " at line L column C", which the caller words itself.
fn serde_json_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// Decodes exactly `N` bytes of hex (either case); `None` for a wrong length or a non-hex digit.
fn decode_hex_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != N * 2 {
        return None;
    }
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const DOCUMENT: &str = r#"{
  "format": 1,
  "serial": 5,
  "issued": "2026-11-23T00:00:00Z",
  "expires": "2028-12-31T23:59:59Z",
  "engines": {
    "postgres": { "majors": [16, 17] }
  }
}
"#;

    const NOW: OffsetDateTime = datetime!(2027-06-01 12:00 UTC);

    struct Fixture {
        signing_key: SigningKey,
        keys: Vec<TrustedKey>,
        signature: String,
    }

    fn fixture() -> Fixture {
        let (private_pem, public_pem) = keygen();
        let signing_key = load_signing_key(&private_pem).unwrap();
        let keys = vec![TrustedKey::from_pem(&public_pem).unwrap()];
        let signature = sign(DOCUMENT.as_bytes(), &signing_key);
        Fixture {
            signing_key,
            keys,
            signature,
        }
    }

    fn verify_with(
        fixture: &Fixture,
        document: &[u8],
        signature: Option<&str>,
        now: OffsetDateTime,
        trusted_serial: Option<u64>,
    ) -> Result<Registry, RegistryError> {
        verify(
            document,
            signature.map(str::as_bytes),
            &fixture.keys,
            now,
            trusted_serial,
        )
    }

    #[test]
    fn sign_then_verify_roundtrips() {
        let fixture = fixture();
        let registry = verify_with(
            &fixture,
            DOCUMENT.as_bytes(),
            Some(&fixture.signature),
            NOW,
            Some(5),
        )
        .unwrap();
        assert_eq!(registry.serial, 5);
        assert!(registry.supports("postgres", 17));
    }

    #[test]
    fn signature_file_has_the_documented_shape() {
        let fixture = fixture();
        let value: serde_json::Value = serde_json::from_str(&fixture.signature).unwrap();
        assert!(fixture.signature.ends_with("}\n"));
        assert_eq!(value["format"], 1);
        let key_id = value["key_id"].as_str().unwrap();
        let expected = Sha256::digest(fixture.signing_key.verifying_key().as_bytes());
        assert_eq!(key_id, encode_hex(&expected[..8]));
        assert_eq!(value["signature"].as_str().unwrap().len(), 128);
        assert_eq!(value.as_object().unwrap().len(), 3);
    }

    #[test]
    fn unsigned_is_refused() {
        let fixture = fixture();
        let error = verify_with(&fixture, DOCUMENT.as_bytes(), None, NOW, None).unwrap_err();
        assert!(matches!(error, RegistryError::Unsigned));
        assert_eq!(
            error.to_string(),
            "the registry is not signed: no signature was supplied with the document"
        );
        assert!(error.hint().unwrap().contains(".sig"));
    }

    #[test]
    fn unknown_key_is_refused_and_named() {
        let fixture = fixture();
        let (other_private, _) = keygen();
        let other = load_signing_key(&other_private).unwrap();
        let signature = sign(DOCUMENT.as_bytes(), &other);
        let error =
            verify_with(&fixture, DOCUMENT.as_bytes(), Some(&signature), NOW, None).unwrap_err();
        let other_id = KeyId::of(&other.verifying_key()).to_string();
        assert!(matches!(&error, RegistryError::UnknownKey { key_id } if *key_id == other_id));
        assert_eq!(
            error.to_string(),
            format!(
                "the registry is signed by an unknown key (key id {other_id}); this kip does not trust it"
            )
        );
    }

    #[test]
    fn one_flipped_byte_is_tampering() {
        let fixture = fixture();
        let mut document = DOCUMENT.as_bytes().to_vec();
        let position = DOCUMENT.find("16").unwrap();
        document[position] = b'2';
        let error =
            verify_with(&fixture, &document, Some(&fixture.signature), NOW, None).unwrap_err();
        assert!(matches!(error, RegistryError::Tampered { .. }), "{error:?}");
        assert!(error.to_string().contains(
            "the document changed after it was signed, or the signature belongs to another document"
        ));
    }

    #[test]
    fn a_flipped_signature_bit_is_tampering() {
        let fixture = fixture();
        let mut file: serde_json::Value = serde_json::from_str(&fixture.signature).unwrap();
        let mut signature = file["signature"].as_str().unwrap().to_owned();
        let last = signature.pop().unwrap();
        signature.push(if last == '0' { '1' } else { '0' });
        file["signature"] = signature.into();
        let error = verify_with(
            &fixture,
            DOCUMENT.as_bytes(),
            Some(&file.to_string()),
            NOW,
            None,
        )
        .unwrap_err();
        assert!(matches!(error, RegistryError::Tampered { .. }), "{error:?}");
    }

    #[test]
    fn expired_is_refused_after_the_signature_checks() {
        let fixture = fixture();
        let later = datetime!(2029-01-01 00:00 UTC);
        let error = verify_with(
            &fixture,
            DOCUMENT.as_bytes(),
            Some(&fixture.signature),
            later,
            None,
        )
        .unwrap_err();
        assert!(
            matches!(&error, RegistryError::Expired { expires } if expires == "2028-12-31T23:59:59Z")
        );
        assert_eq!(
            error.to_string(),
            "the registry expired at 2028-12-31T23:59:59Z"
        );
        assert_eq!(
            error.hint().unwrap(),
            "ask for a newer registry (kip registry update) or upgrade kip"
        );
        // The very last second is still valid.
        let last_second = datetime!(2028-12-31 23:59:59 UTC);
        verify_with(
            &fixture,
            DOCUMENT.as_bytes(),
            Some(&fixture.signature),
            last_second,
            None,
        )
        .unwrap();
    }

    #[test]
    fn lower_serial_is_a_rollback() {
        let fixture = fixture();
        let error = verify_with(
            &fixture,
            DOCUMENT.as_bytes(),
            Some(&fixture.signature),
            NOW,
            Some(6),
        )
        .unwrap_err();
        assert!(matches!(
            error,
            RegistryError::Rollback {
                serial: 5,
                trusted: 6
            }
        ));
        assert_eq!(
            error.to_string(),
            "the registry has serial 5, older than the already trusted serial 6"
        );
    }

    #[test]
    fn malformed_document_is_reported_with_position_once_signed() {
        let fixture = fixture();
        let document = DOCUMENT.replace("\"serial\": 5,", "\"serial\": 5");
        let signature = sign(document.as_bytes(), &fixture.signing_key);
        let error =
            verify_with(&fixture, document.as_bytes(), Some(&signature), NOW, None).unwrap_err();
        assert!(
            matches!(
                error,
                RegistryError::Malformed {
                    line: 4,
                    column: 3,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "the registry document is malformed at line 4, column 3"
        );
    }

    #[test]
    fn malformed_signatures_are_refused() {
        let fixture = fixture();
        let key_id = fixture.keys[0].key_id().to_string();
        let good_signature = "ab".repeat(64);
        let cases = [
            ("", "EOF while parsing a value (line 1, column 0)"),
            ("not json", "expected ident (line 1, column 2)"),
            (
                &format!(r#"{{"format":2,"key_id":"{key_id}","signature":"{good_signature}"}}"#),
                "format 2 is not supported (this kip reads format 1)",
            ),
            (
                &format!(r#"{{"format":1,"key_id":"xyz","signature":"{good_signature}"}}"#),
                "`key_id` must be 16 hex digits, found \"xyz\"",
            ),
            (
                &format!(r#"{{"format":1,"key_id":"{key_id}","signature":"abcd"}}"#),
                "`signature` must be 128 hex digits, found 4 characters",
            ),
            (
                &format!(
                    r#"{{"format":1,"key_id":"{key_id}","signature":"{good_signature}","extra":1}}"#
                ),
                "unknown field `extra`, expected one of `format`, `key_id`, `signature` (line 1, column 190)",
            ),
        ];
        for (signature, detail) in cases {
            let error =
                verify_with(&fixture, DOCUMENT.as_bytes(), Some(signature), NOW, None).unwrap_err();
            let RegistryError::MalformedSignature { detail: found } = &error else {
                panic!("expected MalformedSignature for {signature:?}, got {error:?}");
            };
            assert_eq!(found, detail, "for {signature:?}");
            assert!(
                error
                    .to_string()
                    .starts_with("the registry signature file is malformed: ")
            );
        }
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let fixture = fixture();
        let upper = fixture.signature.to_uppercase().replace("FORMAT", "format");
        let upper = upper
            .replace("KEY_ID", "key_id")
            .replace("SIGNATURE", "signature");
        verify_with(&fixture, DOCUMENT.as_bytes(), Some(&upper), NOW, None).unwrap();
    }

    #[test]
    fn keys_roundtrip_through_pem_and_openssl_shapes() {
        let (private_pem, public_pem) = keygen();
        assert!(private_pem.starts_with(concat!("-----BEGIN ", "PRIVATE KEY-----\n")));
        assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let signing_key = load_signing_key(&private_pem).unwrap();
        let trusted = TrustedKey::from_pem(&public_pem).unwrap();
        assert_eq!(trusted.verifying_key(), &signing_key.verifying_key());
        assert_eq!(trusted.to_pem(), public_pem);
        // PKCS#8 v1 for an ed25519 key is 48 bytes of DER, which is 64 base64 characters: one line.
        assert_eq!(private_pem.lines().count(), 3);

        let error = load_signing_key(&public_pem).unwrap_err();
        assert!(matches!(error, RegistryError::InvalidSigningKey { .. }));
        let error = TrustedKey::from_pem(&private_pem).unwrap_err();
        assert!(matches!(error, RegistryError::InvalidPublicKey { .. }));
    }

    #[test]
    fn hex_helpers_roundtrip() {
        let bytes = [0x00, 0x7f, 0x80, 0xff];
        assert_eq!(encode_hex(&bytes), "007f80ff");
        assert_eq!(decode_hex_exact::<4>("007F80ff"), Some(bytes));
        assert_eq!(decode_hex_exact::<4>("007f80f"), None);
        assert_eq!(decode_hex_exact::<4>("007f80fg"), None);
        assert_eq!(decode_hex_exact::<2>("+1+1"), None);
    }
}
