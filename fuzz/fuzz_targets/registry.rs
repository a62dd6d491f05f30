//! Fuzzes the registry parser and verifier with arbitrary documents and signatures: never a panic.
//! Run: `cargo +nightly fuzz run registry` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (document, signature) = data.split_at(data.len() / 2);
    let _ = kip_registry::Registry::parse(document);
    let now = time::OffsetDateTime::UNIX_EPOCH;
    let _ = kip_registry::verify(document, Some(signature), kip_registry::trusted_keys(), now, Some(1));
});
