//! The diff of desired against existing nodes, and the redaction of secrets on the way into the plan.
//!
//! Every attribute of a desired node is compared (the schema filled in defaults, so a setting the user did not
//! write is still the engine's default, and drift away from it shows). An attribute the existing side lacks is
//! `null` there. A sensitive value is compared in memory and leaves as a fingerprint.

use std::collections::{BTreeMap, BTreeSet};

use sha2::Digest as _;

use super::{Action, Attributes, Change, Desired, Existing, SENSITIVE_PREFIX};
use crate::address::Address;
use crate::engine::random_hex;

/// Fingerprints sensitive values with a key that exists only for one plan: equal values get equal fingerprints
/// within the plan, and nothing outside it can tell what they were.
#[derive(Debug, Clone)]
pub struct Fingerprinter {
    key: String,
}

impl Fingerprinter {
    pub fn new() -> Fingerprinter {
        // No randomness means no key an attacker could not guess: a constant would let a plan file be checked
        // against candidate passwords. Failing here is better; the OS always has random bytes in practice.
        Fingerprinter {
            key: random_hex(32).expect("the operating system provides random bytes"),
        }
    }

    /// `"sensitive:<16 hex>"` for a value; `null` stays `null` (nothing set is not a secret).
    pub fn redact(&self, value: &serde_json::Value) -> serde_json::Value {
        if value.is_null() {
            return serde_json::Value::Null;
        }
        let mut hasher = sha2::Sha256::new();
        hasher.update(self.key.as_bytes());
        hasher.update([0]);
        hasher.update(value.to_string().as_bytes());
        let digest = hasher.finalize();
        let hex: String = digest[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        serde_json::Value::String(format!("{SENSITIVE_PREFIX}{hex}"))
    }

    /// `attributes` with every sensitive value replaced by its fingerprint, the others moved as they are.
    fn redact_owned(&self, mut attributes: Attributes, sensitive: &BTreeSet<String>) -> Attributes {
        for name in sensitive {
            if let Some(value) = attributes.get_mut(name) {
                *value = self.redact(value);
            }
        }
        attributes
    }

    fn redact_all(&self, attributes: &Attributes, sensitive: &BTreeSet<String>) -> Attributes {
        attributes
            .iter()
            .map(|(name, value)| {
                let value = if sensitive.contains(name) {
                    self.redact(value)
                } else {
                    value.clone()
                };
                (name.clone(), value)
            })
            .collect()
    }
}

impl Default for Fingerprinter {
    fn default() -> Self {
        Fingerprinter::new()
    }
}

/// Compares desired with existing nodes; existing nodes nobody desires are deleted. The desired nodes are moved
/// into the changes (their attributes become the after-values), not copied.
pub fn diff(
    desired: Vec<Desired>,
    existing: &BTreeMap<Address, Existing<'_>>,
    fingerprints: &Fingerprinter,
) -> Vec<Change> {
    // Each desired node is paired with what exists of it by one merge in address order (a lookup per node
    // compared about ten addresses); what exists and nobody desires is deleted, after the rest, in address order.
    let mut order: Vec<usize> = (0..desired.len()).collect();
    order.sort_by(|&a, &b| desired[a].address.cmp(&desired[b].address));
    let mut matched: Vec<Option<&Existing<'_>>> = vec![None; desired.len()];
    let mut deletions = Vec::new();
    let mut existing_nodes = existing.iter().peekable();
    for index in order {
        let address = &desired[index].address;
        while let Some((gone, have)) = existing_nodes.next_if(|(have, _)| *have < address) {
            deletions.push(deletion(gone, have, fingerprints));
        }
        matched[index] = existing_nodes
            .next_if(|(have, _)| *have == address)
            .map(|(_, have)| have);
    }
    deletions.extend(existing_nodes.map(|(gone, have)| deletion(gone, have, fingerprints)));
    let mut changes = Vec::with_capacity(desired.len() + deletions.len());
    for (want, have) in desired.into_iter().zip(matched) {
        let Some(have) = have else {
            let after = fingerprints.redact_owned(want.attributes, &want.sensitive);
            changes.push(Change {
                address: want.address,
                engine: want.engine,
                kind: want.kind,
                action: Action::Create,
                before: None,
                after: Some(after),
                after_unknown: want.unknown,
                replace_because: Vec::new(),
                restart_because: None,
                sensitive: want.sensitive,
                prevent_destroy: want.prevent_destroy,
                depends_on: want.depends_on,
            });
            continue;
        };
        // An attribute the existing side lacks is `null` there.
        let differing: Vec<String> = want
            .attributes
            .iter()
            .filter(|(key, value)| {
                want.unknown.contains(*key)
                    || have
                        .attributes
                        .get(*key)
                        .unwrap_or(&serde_json::Value::Null)
                        != *value
            })
            .map(|(key, _)| key.clone())
            .collect();
        let replace_because: Vec<String> = differing
            .iter()
            .filter(|key| want.replace_on.contains(*key))
            .cloned()
            .collect();
        let action = if differing.is_empty() {
            Action::Noop
        } else if replace_because.is_empty() {
            Action::Update
        } else {
            Action::Replace
        };
        let unchanged = differing.is_empty() && have.sensitive.is_subset(&want.sensitive);
        // What exists, for a node that changes: every desired attribute as it is now, redacted with the secrets of
        // both sides.
        let changed = (!unchanged).then(|| {
            let sensitive: BTreeSet<String> =
                want.sensitive.union(&have.sensitive).cloned().collect();
            let before_real: Attributes = want
                .attributes
                .keys()
                .map(|key| {
                    let value = have
                        .attributes
                        .get(key)
                        .cloned()
                        .unwrap_or(serde_json::Value::Null);
                    (key.clone(), value)
                })
                .collect();
            (fingerprints.redact_all(&before_real, &sensitive), sensitive)
        });
        let after = fingerprints.redact_owned(want.attributes, &want.sensitive);
        let (before, sensitive) = match changed {
            Some((before, sensitive)) => (Some(before), sensitive),
            // Nothing differs (the common case of a no-op plan): the existing values are the desired ones, and
            // they are redacted alike. An object's are not copied into `before` (copying a thousand maps was 6% of
            // a no-op plan): `Change::before_values` gives its after-values; an instance's are, since apply
            // compares them.
            None => (
                want.address.is_instance().then(|| after.clone()),
                want.sensitive,
            ),
        };
        changes.push(Change {
            address: want.address,
            engine: want.engine,
            kind: want.kind,
            action,
            before,
            after: Some(after),
            after_unknown: want.unknown,
            replace_because,
            restart_because: None,
            sensitive,
            // While the block exists, the configuration says whether it is protected (it can be unprotected).
            prevent_destroy: want.prevent_destroy,
            depends_on: want.depends_on,
        });
    }
    changes.extend(deletions);
    changes
}

/// The deletion of `have`, which nobody desires any more.
fn deletion(address: &Address, have: &Existing<'_>, fingerprints: &Fingerprinter) -> Change {
    Change {
        address: address.clone(),
        engine: have.engine.clone(),
        kind: have.kind.clone(),
        action: Action::Delete,
        before: Some(fingerprints.redact_all(&have.attributes, &have.sensitive)),
        after: None,
        after_unknown: BTreeSet::new(),
        replace_because: Vec::new(),
        restart_because: None,
        sensitive: have.sensitive.clone(),
        prevent_destroy: have.prevent_destroy,
        depends_on: have.depends_on.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{PLAN_FORMAT, Plan, Summary};
    use super::*;

    fn attrs(pairs: &[(&str, serde_json::Value)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn address(label: &str) -> Address {
        Address::instance("postgres", "main", None).named_child("database", label)
    }

    fn want(label: &str, attributes: Attributes) -> Desired {
        Desired {
            address: address(label),
            engine: "postgres".into(),
            kind: "database".into(),
            attributes,
            unknown: BTreeSet::new(),
            replace_on: ["encoding".to_owned()].into(),
            sensitive: ["password".to_owned()].into(),
            prevent_destroy: false,
            depends_on: Vec::new(),
        }
    }

    fn have(
        label: &str,
        attributes: Attributes,
        prevent_destroy: bool,
    ) -> (Address, Existing<'static>) {
        let existing = Existing {
            address: address(label),
            engine: "postgres".into(),
            kind: "database".into(),
            attributes: std::borrow::Cow::Owned(attributes),
            sensitive: BTreeSet::new(),
            prevent_destroy,
            depends_on: Vec::new(),
        };
        (address(label), existing)
    }

    #[test]
    fn changes_keep_the_desired_order_and_deletions_follow_in_address_order() {
        // Desired out of address order (dependency order is not address order), with what nobody desires any
        // more before, between and after the desired addresses.
        let owner = || attrs(&[("owner", json!("app"))]);
        let desired = vec![want("m", owner()), want("c", owner()), want("x", owner())];
        let existing: BTreeMap<Address, Existing<'static>> = [
            have("a", owner(), false),
            have("c", owner(), false),
            have("k", owner(), false),
            have("m", attrs(&[("owner", json!("other"))]), false),
            have("z", owner(), false),
        ]
        .into_iter()
        .collect();
        let changes = diff(desired, &existing, &Fingerprinter::new());
        let actions: Vec<(&str, Action)> = changes
            .iter()
            .map(|c| (c.address.label().unwrap(), c.action))
            .collect();
        assert_eq!(
            actions,
            [
                ("m", Action::Update),
                ("c", Action::Noop),
                ("x", Action::Create),
                ("a", Action::Delete),
                ("k", Action::Delete),
                ("z", Action::Delete),
            ]
        );
    }

    #[test]
    fn every_action_and_the_summary() {
        let desired = vec![
            want("a", attrs(&[("owner", json!("app"))])),
            want("b", attrs(&[("owner", json!("app"))])),
            want("c", attrs(&[("encoding", json!("UTF8"))])),
            want("d", attrs(&[("owner", json!("app"))])),
        ];
        let existing: BTreeMap<Address, Existing<'static>> = [
            have(
                "b",
                attrs(&[("owner", json!("other")), ("connection_limit", json!(-1))]),
                false,
            ),
            have("c", attrs(&[("encoding", json!("LATIN1"))]), false),
            have(
                "d",
                attrs(&[("owner", json!("app")), ("extra", json!(1))]),
                false,
            ),
            have("e", attrs(&[("owner", json!("x"))]), true),
        ]
        .into_iter()
        .collect();
        let changes = diff(desired.clone(), &existing, &Fingerprinter::new());
        let actions: Vec<(String, Action)> = changes
            .iter()
            .map(|c| (c.address.label().unwrap().to_owned(), c.action))
            .collect();
        let expected = [
            ("a", Action::Create),
            ("b", Action::Update),
            ("c", Action::Replace),
            ("d", Action::Noop),
            ("e", Action::Delete),
        ];
        assert_eq!(
            actions,
            expected.map(|(label, action)| (label.to_owned(), action))
        );
        assert_eq!(changes[1].changed_attributes(), ["owner"]);
        assert_eq!(changes[2].replace_because, ["encoding"]);
        let plan = Plan {
            format_version: PLAN_FORMAT.into(),
            lineage: "l".into(),
            serial: 1,
            changes,
        };
        assert_eq!(
            plan.summary(),
            Summary {
                add: 2,
                change: 1,
                destroy: 2
            }
        );
        assert_eq!(plan.prevented().len(), 1);
    }

    #[test]
    fn secrets_leave_as_fingerprints_that_still_show_a_change() {
        let fingerprints = Fingerprinter::new();
        let desired = vec![
            want("same", attrs(&[("password", json!("hunter2"))])),
            want("new", attrs(&[("password", json!("correct horse"))])),
        ];
        let existing: BTreeMap<Address, Existing<'static>> = [
            have("same", attrs(&[("password", json!("hunter2"))]), false),
            have(
                "new",
                attrs(&[("password", json!("battery staple"))]),
                false,
            ),
        ]
        .into_iter()
        .collect();
        let changes = diff(desired.clone(), &existing, &fingerprints);
        let text = serde_json::to_string(&changes).unwrap();
        for secret in ["hunter2", "correct horse", "battery staple"] {
            assert!(!text.contains(secret), "{text}");
        }
        let by_label = |label: &str| {
            changes
                .iter()
                .find(|c| c.address.label() == Some(label))
                .unwrap()
        };
        assert_eq!(by_label("same").action, Action::Noop);
        assert_eq!(by_label("new").action, Action::Update);
        assert_eq!(by_label("new").changed_attributes(), ["password"]);
        // Another plan's fingerprints of the same value differ: a fingerprint cannot be looked up.
        assert_ne!(
            Fingerprinter::new().redact(&json!("hunter2")),
            fingerprints.redact(&json!("hunter2"))
        );
    }

    #[test]
    fn an_unknown_value_is_a_change_even_when_the_rest_matches() {
        let mut node = want("a", attrs(&[("owner", json!("app")), ("url", json!(null))]));
        node.unknown.insert("url".into());
        let existing: BTreeMap<Address, Existing<'static>> = [have(
            "a",
            attrs(&[("owner", json!("app")), ("url", json!("x"))]),
            false,
        )]
        .into_iter()
        .collect();
        let changes = diff(vec![node.clone()], &existing, &Fingerprinter::new());
        assert_eq!(changes[0].action, Action::Update);
        assert_eq!(changes[0].changed_attributes(), ["url"]);
    }
}
