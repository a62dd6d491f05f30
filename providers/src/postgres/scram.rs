//! SCRAM-SHA-256 verifiers (RFC 5802 / 7677, as PostgreSQL stores them): whether a password is the one a stored
//! verifier was made from. Refresh uses it so that a password changed behind kip's back is drift the plan shows
//! and apply repairs: a password `kip url` prints always works, or the plan says why not.

use base64::Engine as _;
use hmac::{KeyInit as _, Mac as _};
use sha2_digest11::Digest as _;

type HmacSha256 = hmac::Hmac<sha2_digest11::Sha256>;

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// RFC 5802's `Hi()`: PBKDF2 with HMAC-SHA-256 and one block of output.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2_digest11::Sha256>(password, salt, iterations, &mut salted);
    salted
}

/// The password as SCRAM prepares it (SASLprep when it applies, else the bytes as they are, as libpq does).
fn prepared(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(prepared) => prepared.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

/// Iterations for a password kip generated: one. Stretching makes guessing a weak password from a stolen
/// verifier slower; 128 random bits cannot be guessed, stretched or not. Every plan checks every role's verifier
/// (a password changed behind kip's back is drift), so the count is paid per role per plan: a no-op plan of 1,000
/// roles spent ~3 ms on it at 16 iterations.
pub const GENERATED_ITERATIONS: u32 = 1;
/// Iterations for a password someone chose (PostgreSQL's own default): it may be guessable, so stretch it.
pub const CHOSEN_ITERATIONS: u32 = 4096;

/// A SCRAM-SHA-256 verifier of `password` with a fresh random salt, as PostgreSQL stores it: sent instead of the
/// password, so the password itself never reaches the server (nor its statement logs).
pub fn verifier(password: &str, iterations: u32) -> Result<String, kip_core::engine::EngineError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|error| {
        kip_core::engine::EngineError::new(format!(
            "the operating system gave no random bytes for a salt: {error}"
        ))
    })?;
    let salted = salted_password(&prepared(password), &salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key: [u8; 32] = sha2_digest11::Sha256::digest(client_key).into();
    let server_key = hmac(&salted, b"Server Key");
    let engine = base64::engine::general_purpose::STANDARD;
    Ok(format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        engine.encode(salt),
        engine.encode(stored_key),
        engine.encode(server_key)
    ))
}

/// Whether `password` is the one `verifier` (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`) was
/// made from. Anything that is not such a verifier (an MD5 hash, a plain text, garbage) does not verify.
pub fn verifies(verifier: &str, password: &str) -> bool {
    let Some(rest) = verifier.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((parameters, keys)) = rest.split_once('$') else {
        return false;
    };
    let (Some((iterations, salt)), Some((stored_key, _))) =
        (parameters.split_once(':'), keys.split_once(':'))
    else {
        return false;
    };
    let engine = base64::engine::general_purpose::STANDARD;
    let (Ok(iterations), Ok(salt), Ok(stored_key)) = (
        iterations.parse::<u32>(),
        engine.decode(salt),
        engine.decode(stored_key),
    ) else {
        return false;
    };
    // A verifier with absurd iterations is not worth the time to check: it is not one a client made.
    if iterations == 0 || iterations > 10_000_000 {
        return false;
    }
    let salted = salted_password(&prepared(password), &salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let computed: [u8; 32] = sha2_digest11::Sha256::digest(client_key).into();
    computed.as_slice() == stored_key.as_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_made_by_postgres_protocol_verifies_its_password_only() {
        for password in ["hunter2", "ünïcode pässword", "with 'quotes' and \"more\""] {
            let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
            assert!(verifies(&verifier, password), "{password}");
            assert!(!verifies(&verifier, "something else"));
        }
        assert!(!verifies("md5abcdef", "x"));
        assert!(!verifies("SCRAM-SHA-256$x:y$z:w", "x"));
        assert!(!verifies("", "x"));
    }

    #[test]
    fn kips_own_verifiers_verify_and_differ_by_salt() {
        let one = verifier("p4ss", GENERATED_ITERATIONS).unwrap();
        let two = verifier("p4ss", GENERATED_ITERATIONS).unwrap();
        assert_ne!(one, two);
        assert!(one.starts_with("SCRAM-SHA-256$1:"));
        assert!(verifies(&one, "p4ss") && verifies(&two, "p4ss"));
        assert!(!verifies(&one, "p4sS"));
    }
}
