//! The plan: plain data saying what apply will do, node by node, in Terraform's vocabulary.
//!
//! A change is computed by comparing what the configuration implies (the desired attributes of a node, with no
//! live queries) with what exists (the state, refreshed from the running engine). Reasons shown to people
//! (which attribute forces a replacement) are data too; apply executes only the actions. The JSON form is
//! versioned (`format_version`) and documented in docs/plan-json.md.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub const PLAN_FORMAT: &str = "1.0";

pub type Attributes = BTreeMap<String, serde_json::Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Noop,
    Create,
    Update,
    Replace,
    Delete,
}

impl Action {
    /// The symbol Terraform users know: `+`, `~`, `-/+`, `-`.
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Noop => " ",
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
        }
    }
}

/// One node's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub address: String,
    pub engine: String,
    /// "instance", or the object kind ("role", "database").
    pub kind: String,
    pub action: Action,
    pub before: Option<Attributes>,
    pub after: Option<Attributes>,
    /// The attributes whose change forces the replacement (for `-/+`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replace_because: Vec<String>,
    /// Attributes whose values are never shown.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub sensitive: BTreeSet<String>,
    /// `prevent_destroy = true`: a delete or replace of this node makes the plan fail.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prevent_destroy: bool,
}

impl Change {
    /// The attributes that differ between before and after, in order.
    pub fn changed_attributes(&self) -> Vec<String> {
        let empty = Attributes::new();
        let before = self.before.as_ref().unwrap_or(&empty);
        let after = self.after.as_ref().unwrap_or(&empty);
        let mut names: BTreeSet<&String> = before.keys().collect();
        names.extend(after.keys());
        names
            .into_iter()
            .filter(|name| before.get(*name) != after.get(*name))
            .cloned()
            .collect()
    }
}

/// A plan: the changes, and the state it was made against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: String,
    /// The state's lineage and serial when the plan was made: `kip apply PLANFILE` refuses a changed state.
    pub lineage: String,
    pub serial: u64,
    pub changes: Vec<Change>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
}

impl Plan {
    pub fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for change in &self.changes {
            match change.action {
                Action::Create => summary.add += 1,
                Action::Update => summary.change += 1,
                Action::Replace => {
                    summary.add += 1;
                    summary.destroy += 1;
                }
                Action::Delete => summary.destroy += 1,
                Action::Noop => {}
            }
        }
        summary
    }

    pub fn has_changes(&self) -> bool {
        self.changes
            .iter()
            .any(|change| change.action != Action::Noop)
    }

    /// The nodes protected by `prevent_destroy` that the plan would delete or replace.
    pub fn prevented(&self) -> Vec<&Change> {
        self.changes
            .iter()
            .filter(|change| {
                change.prevent_destroy && matches!(change.action, Action::Delete | Action::Replace)
            })
            .collect()
    }
}

/// What the configuration wants of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub address: String,
    pub engine: String,
    pub kind: String,
    pub attributes: Attributes,
    /// Attributes that cannot change in place.
    pub replace_on: BTreeSet<String>,
    pub sensitive: BTreeSet<String>,
    pub prevent_destroy: bool,
}

/// What exists of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Existing {
    pub address: String,
    pub engine: String,
    pub kind: String,
    pub attributes: Attributes,
    pub prevent_destroy: bool,
}

/// Compares desired with existing nodes. Attributes the configuration does not set are not compared (an
/// engine's own defaults are not drift), except that a node that does not exist is created with all of them.
pub fn diff(desired: &[Desired], existing: &BTreeMap<String, Existing>) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut seen = BTreeSet::new();
    for want in desired {
        seen.insert(want.address.as_str());
        let Some(have) = existing.get(&want.address) else {
            changes.push(Change {
                address: want.address.clone(),
                engine: want.engine.clone(),
                kind: want.kind.clone(),
                action: Action::Create,
                before: None,
                after: Some(want.attributes.clone()),
                replace_because: Vec::new(),
                sensitive: want.sensitive.clone(),
                prevent_destroy: want.prevent_destroy,
            });
            continue;
        };
        let before: Attributes = want
            .attributes
            .keys()
            .filter_map(|key| {
                have.attributes
                    .get(key)
                    .map(|value| (key.clone(), value.clone()))
            })
            .collect();
        let differing: Vec<String> = want
            .attributes
            .iter()
            .filter(|(key, value)| have.attributes.get(*key) != Some(*value))
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
        changes.push(Change {
            address: want.address.clone(),
            engine: want.engine.clone(),
            kind: want.kind.clone(),
            action,
            before: Some(before),
            after: Some(want.attributes.clone()),
            replace_because,
            sensitive: want.sensitive.clone(),
            // While the block exists, the configuration says whether it is protected (it can be unprotected).
            prevent_destroy: want.prevent_destroy,
        });
    }
    for (address, have) in existing {
        if seen.contains(address.as_str()) {
            continue;
        }
        changes.push(Change {
            address: address.clone(),
            engine: have.engine.clone(),
            kind: have.kind.clone(),
            action: Action::Delete,
            before: Some(have.attributes.clone()),
            after: None,
            replace_because: Vec::new(),
            sensitive: BTreeSet::new(),
            prevent_destroy: have.prevent_destroy,
        });
    }
    changes
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn attrs(pairs: &[(&str, serde_json::Value)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn want(address: &str, attributes: Attributes) -> Desired {
        Desired {
            address: address.into(),
            engine: "postgres".into(),
            kind: "database".into(),
            attributes,
            replace_on: ["encoding".to_owned()].into(),
            sensitive: BTreeSet::new(),
            prevent_destroy: false,
        }
    }

    fn have(address: &str, attributes: Attributes, prevent_destroy: bool) -> (String, Existing) {
        let existing = Existing {
            address: address.into(),
            engine: "postgres".into(),
            kind: "database".into(),
            attributes,
            prevent_destroy,
        };
        (address.to_owned(), existing)
    }

    #[test]
    fn every_action_and_the_summary() {
        let desired = vec![
            want("a", attrs(&[("owner", json!("app"))])),
            want("b", attrs(&[("owner", json!("app"))])),
            want("c", attrs(&[("encoding", json!("UTF8"))])),
            want("d", attrs(&[("owner", json!("app"))])),
        ];
        let existing: BTreeMap<String, Existing> = [
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
        let changes = diff(&desired, &existing);
        let actions: Vec<(&str, Action)> = changes
            .iter()
            .map(|c| (c.address.as_str(), c.action))
            .collect();
        assert_eq!(
            actions,
            [
                ("a", Action::Create),
                ("b", Action::Update),
                ("c", Action::Replace),
                ("d", Action::Noop),
                ("e", Action::Delete)
            ]
        );
        assert_eq!(
            changes[1].changed_attributes(),
            ["owner"],
            "unset attributes are not drift"
        );
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
}
