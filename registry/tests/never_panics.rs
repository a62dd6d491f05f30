//! Property tests: parsing and verification return errors, never panic, whatever bytes arrive.
//!
//! Registry documents and signatures come from disk and from the network, so every byte is untrusted. Besides
//! arbitrary bytes, the tests mutate a valid document and re-sign the mutation with a test key, so the mutations
//! get past the signature check and reach the parser and the expiry and rollback checks.

use std::sync::OnceLock;

use kip_registry::mirror::MirrorIndex;
use kip_registry::{Registry, SigningKey, TrustedKey, keygen, load_signing_key, sign, verify};
use proptest::prelude::*;
use time::OffsetDateTime;
use time::macros::datetime;

const VALID: &str = include_str!("../data/registry.json");
const NOW: OffsetDateTime = datetime!(2027-06-01 12:00 UTC);

fn test_key() -> &'static (SigningKey, Vec<TrustedKey>) {
    static KEY: OnceLock<(SigningKey, Vec<TrustedKey>)> = OnceLock::new();
    KEY.get_or_init(|| {
        let (private_pem, public_pem) = keygen();
        (
            load_signing_key(&private_pem).unwrap(),
            vec![TrustedKey::from_pem(&public_pem).unwrap()],
        )
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Replace(at, byte)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(document: &mut Vec<u8>, mutation: &Mutation) {
    let length = document.len();
    match *mutation {
        Mutation::Replace(at, byte) if length > 0 => document[at % length] = byte,
        Mutation::Insert(at, byte) => document.insert(at % (length + 1), byte),
        Mutation::Remove(at) if length > 0 => {
            document.remove(at % length);
        }
        Mutation::Truncate(at) => document.truncate(at % (length + 1)),
        _ => {}
    }
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Registry::parse(&bytes);
        let _ = MirrorIndex::parse(&bytes);
    }

    #[test]
    fn verify_never_panics_on_arbitrary_bytes(
        document in proptest::collection::vec(any::<u8>(), 0..256),
        signature in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256)),
        serial in proptest::option::of(any::<u64>()),
    ) {
        let (_, keys) = test_key();
        let _ = verify(&document, signature.as_deref(), keys, NOW, serial);
    }

    #[test]
    fn mutated_documents_never_panic_and_never_verify_under_the_old_signature(
        mutations in proptest::collection::vec(mutation(), 1..6),
        serial in proptest::option::of(0u64..4),
    ) {
        let (signing_key, keys) = test_key();
        let original_signature = sign(VALID.as_bytes(), signing_key);
        let mut document = VALID.as_bytes().to_vec();
        for mutation in &mutations {
            apply(&mut document, mutation);
        }
        let _ = Registry::parse(&document);
        let under_old = verify(&document, Some(original_signature.as_bytes()), keys, NOW, serial);
        if document != VALID.as_bytes() {
            prop_assert!(under_old.is_err());
        }
        // Re-signed, the mutation reaches the parser and the expiry and rollback checks.
        let resigned = sign(&document, signing_key);
        let _ = verify(&document, Some(resigned.as_bytes()), keys, NOW, serial);
    }

    #[test]
    fn mutated_signatures_never_panic(mutations in proptest::collection::vec(mutation(), 1..6)) {
        let (signing_key, keys) = test_key();
        let mut signature = sign(VALID.as_bytes(), signing_key).into_bytes();
        for mutation in &mutations {
            apply(&mut signature, mutation);
        }
        let _ = verify(VALID.as_bytes(), Some(&signature), keys, NOW, None);
    }
}
