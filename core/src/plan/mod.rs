//! The plan: plain data saying what apply will do, node by node, in Terraform's vocabulary.
//!
//! A change compares what the configuration implies ([`Desired`]: built from the engine's schema, no live
//! queries) with what exists ([`Existing`]: the state, refreshed from the running engine). Apply executes the
//! changes and nothing else; reasons shown to people (which attribute forces a replacement) are data too.
//!
//! Secrets never enter a plan: a sensitive value is replaced by a fingerprint keyed with a random key that lives
//! only as long as the plan is being made, so a plan shows *that* a secret changes, not what it is, and a saved
//! plan file reveals nothing. Apply takes the real values from where they live (the configuration, whose digest
//! a saved plan checks, or the state). A value that reads another instance's exports before that instance is
//! applied is `(known after apply)`: listed in [`Change::after_unknown`], evaluated during apply.
//!
//! The JSON form is versioned (`format_version`) and documented in docs/plan-json.md.

mod diff;

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use diff::{Fingerprinter, diff};

use crate::address::Address;
use crate::engine::EngineError;

pub const PLAN_FORMAT: &str = "2.0";

/// A node's attributes, by argument name, as JSON values.
pub type Attributes = BTreeMap<String, serde_json::Value>;

/// The kind of an instance node; objects have their block type ("role", "database").
pub const INSTANCE: &str = "instance";

/// How a redacted value starts in a plan: `"sensitive:<fingerprint>"`.
pub const SENSITIVE_PREFIX: &str = "sensitive:";

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
    pub address: Address,
    pub engine: String,
    /// [`INSTANCE`], or the object kind ("role", "database").
    pub kind: String,
    pub action: Action,
    /// What exists now. `None` for a create, and for an object that does not change (its before-values are its
    /// after-values: [`Change::before_values`]).
    pub before: Option<Attributes>,
    pub after: Option<Attributes>,
    /// Attributes known only during apply (they read another instance's exports); `null` in `after`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub after_unknown: BTreeSet<String>,
    /// The attributes whose change forces the replacement (for `-/+`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replace_because: Vec<String>,
    /// For an update of an instance: the attributes whose change makes apply restart the engine's processes, when
    /// the engine can tell before apply ([`crate::engine::Engine::restart_because`]); empty means it takes the
    /// whole change live (`CONFIG SET`, a reload). `None` when the engine cannot tell, or for other changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_because: Option<Vec<String>>,
    /// Attributes whose values are never shown (redacted to a fingerprint here).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub sensitive: BTreeSet<String>,
    /// `prevent_destroy = true`: a delete or replace of this node makes the plan fail.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prevent_destroy: bool,
    /// For an instance: the instances it depends on. Deletions run in the reverse of this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Address>,
}

impl Change {
    /// Whether the plan restarts the instance for this change (its [`Change::restart_because`] names attributes):
    /// apply then restarts it whatever the engine's `reconfigure` answers.
    pub fn restarts(&self) -> bool {
        self.restart_because
            .as_ref()
            .is_some_and(|because| !because.is_empty())
    }

    /// What exists now: the before-values, or for an object that does not change, its after-values.
    pub fn before_values(&self) -> Option<&Attributes> {
        match (&self.before, self.action) {
            (None, Action::Noop) => self.after.as_ref(),
            (before, _) => before.as_ref(),
        }
    }

    /// The attributes that differ between before and after, in order; unknown ones count as differing.
    pub fn changed_attributes(&self) -> Vec<String> {
        let empty = Attributes::new();
        let before = self.before_values().unwrap_or(&empty);
        let after = self.after.as_ref().unwrap_or(&empty);
        let mut names: BTreeSet<&String> = before.keys().collect();
        names.extend(after.keys());
        names
            .into_iter()
            .filter(|name| {
                self.after_unknown.contains(*name) || before.get(*name) != after.get(*name)
            })
            .cloned()
            .collect()
    }

    /// Whether this is the change of an instance (not of an object in one).
    pub fn is_instance(&self) -> bool {
        self.kind == INSTANCE
    }

    /// The after-values as the provider's typed view (with real values during apply).
    pub fn after_as<T: DeserializeOwned>(&self) -> Result<T, EngineError> {
        crate::engine::typed(
            &self.address,
            self.after.as_ref().unwrap_or(&Attributes::new()),
        )
    }

    /// The before-values as the provider's typed view.
    pub fn before_as<T: DeserializeOwned>(&self) -> Result<T, EngineError> {
        crate::engine::typed(
            &self.address,
            self.before_values().unwrap_or(&Attributes::new()),
        )
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
    /// The plan as its JSON format documents it (`kip plan --json`, `kip plan --out`): every node that exists with
    /// its before-values, those of an unchanged object too, which the plan itself does not copy.
    pub fn documented(&self) -> Plan {
        let mut plan = self.clone();
        for change in &mut plan.changes {
            if change.before.is_none() && change.action == Action::Noop {
                change.before = change.after.clone();
            }
        }
        plan
    }

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

    /// The change of `address`, if the plan has one.
    pub fn change(&self, address: &Address) -> Option<&Change> {
        self.changes
            .iter()
            .find(|change| &change.address == address)
    }

    /// Keeps the changes of the targets, the nodes below them, and the instances they belong to.
    pub fn retain_targets(&mut self, targets: &[Address]) {
        if targets.is_empty() {
            return;
        }
        self.changes.retain(|change| {
            targets.iter().any(|target| {
                change.address.is_within(target)
                    || (change.is_instance() && change.address == target.instance_address())
            })
        });
    }
}

/// What the configuration wants of one node, with real values (secrets included): it never leaves memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub address: Address,
    pub engine: String,
    pub kind: String,
    pub attributes: Attributes,
    /// Attributes whose value is known only during apply (`null` in `attributes` until then).
    pub unknown: BTreeSet<String>,
    /// Attributes that cannot change in place.
    pub replace_on: BTreeSet<String>,
    pub sensitive: BTreeSet<String>,
    pub prevent_destroy: bool,
    /// For an instance: the instances it depends on.
    pub depends_on: Vec<Address>,
}

/// What exists of one node, with real values: borrowed from the state when it is as last applied, owned when the
/// engine reported it (or it was changed here).
#[derive(Debug, Clone, PartialEq)]
pub struct Existing<'a> {
    pub address: Address,
    pub engine: String,
    pub kind: String,
    pub attributes: std::borrow::Cow<'a, Attributes>,
    pub sensitive: BTreeSet<String>,
    pub prevent_destroy: bool,
    pub depends_on: Vec<Address>,
}
