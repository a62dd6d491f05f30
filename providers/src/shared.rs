//! Small helpers more than one engine needs: how a URL part is encoded, how a generated password is derived, and
//! whether a `settings` change needs a restart.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value as Json;

/// Everything but RFC 3986's unreserved characters is encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` as one part of a URL (user, password, path segment, query value): a label or password with `@`, `/`,
/// `?`, spaces or unicode stays one value.
pub fn url_encode(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// The password kip generates for `name`: derived from a random `key` kept in the instance's state from its first
/// provisioning (`purpose` tells the engines and kinds apart), so it is known again even after a crash between
/// creating the account and saving the state, and unguessable from the configuration.
pub fn derived_password(key: &str, purpose: &str, name: &str) -> String {
    use std::fmt::Write as _;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(format!("kip {purpose}\0{key}\0{name}"));
    let mut hex = String::with_capacity(32);
    for byte in &digest[..16] {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Whether a change of a `settings` map (`before` → `after`, as attributes) restarts the engine: it touches a
/// setting the engine cannot change live (`is_live` says), or removes one (the engine's default comes back only
/// with a restart).
pub fn settings_need_restart(
    before: Option<&Json>,
    after: Option<&Json>,
    is_live: fn(&str) -> bool,
) -> bool {
    let empty = serde_json::Map::new();
    let before = before.and_then(Json::as_object).unwrap_or(&empty);
    let after = after.and_then(Json::as_object).unwrap_or(&empty);
    before.keys().any(|name| !after.contains_key(name))
        || after
            .iter()
            .any(|(name, value)| before.get(name) != Some(value) && !is_live(name))
}

/// The strings of a JSON list attribute (others left out); empty when it is not a list.
pub fn strings(value: Option<&Json>) -> Vec<String> {
    value
        .and_then(Json::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Json::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The whole environment an engine's programs get: a plain PATH, and nothing else of the caller's (a cloud key or
/// token in kip's environment must never reach a server). Each engine adds only what it needs on top.
pub fn engine_environment() -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([(
        "PATH".to_owned(),
        "/usr/local/bin:/usr/bin:/bin".to_owned(),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_passwords_are_stable_and_distinct() {
        let one = derived_password("key", "role password", "app");
        assert_eq!(one.len(), 32);
        assert_eq!(one, derived_password("key", "role password", "app"));
        assert_ne!(one, derived_password("key", "valkey user password", "app"));
        assert_ne!(one, derived_password("other", "role password", "app"));
    }
}
