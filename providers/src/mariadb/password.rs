//! MariaDB's `mysql_native_password` hash, computed by kip: what a root or user password looks like in
//! `mysql.global_priv`, so that refresh can tell a password changed behind kip's back without asking the server to
//! hash anything, and the template's bootstrap password never reaches the server in clear.

use sha1::{Digest as _, Sha1};

/// The `mysql_native_password` hash of `password` as MariaDB stores it and `PASSWORD()` returns it: `*` and the
/// upper-case hex of SHA1(SHA1(password)).
pub fn native_hash(password: &str) -> String {
    let twice = Sha1::digest(Sha1::digest(password.as_bytes()));
    let mut hash = String::with_capacity(41);
    hash.push('*');
    for byte in twice {
        hash.push_str(&format!("{byte:02X}"));
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_hashes_match_mariadb() {
        // SELECT PASSWORD('x'), PASSWORD('boot') on MariaDB 10.11.
        assert_eq!(
            native_hash("x"),
            "*B69027D44F6E5EDC07F1AEAD1477967B16F28227"
        );
        assert_eq!(
            native_hash("boot"),
            "*172B651893006B15A3AB50480D11873D0F877221"
        );
    }
}
