//! The locals pass: every `locals` entry, evaluated in dependency order.
//!
//! Locals may read variables and each other, so they settle in rounds; when a round settles nothing, what is
//! left waits on a cycle, and every local still waiting is reported. A local that reads an engine cannot be
//! known before apply: it is kept as a deferred expression, and whatever reads it depends on those engines.

use std::collections::{BTreeMap, BTreeSet};

use hcl::edit::structure::Attribute as EditAttribute;

use super::{Checker, span_of};
use crate::config::Declared;
use crate::config::refs::{self, RawReference, Step};
use crate::source::FileId;

impl Checker<'_> {
    /// Evaluates locals in dependency order; a local that reads an engine is deferred to apply.
    pub(super) fn locals(&mut self, attributes: &[(FileId, &EditAttribute)]) {
        let mut seen: BTreeMap<String, Declared> = BTreeMap::new();
        let mut pending: Vec<(FileId, &EditAttribute, Vec<RawReference>)> = Vec::new();
        for &(file, attribute) in attributes {
            let name = attribute.key.as_str();
            let declared = Declared {
                file,
                span: span_of(&attribute.key, &(0..0)),
            };
            if self.duplicate(
                &mut seen,
                name,
                &declared,
                "Duplicate local value",
                "local value",
            ) {
                continue;
            }
            pending.push((file, attribute, refs::collect(&attribute.value)));
        }
        let declared_names: BTreeSet<String> = seen.keys().cloned().collect();
        // Evaluate in rounds: each round settles the locals whose local references are all settled.
        loop {
            let before = pending.len();
            let mut still_pending = Vec::new();
            for (file, attribute, references) in pending {
                let waits = references.iter().any(|reference| {
                    reference.root == "local"
                        && matches!(reference.steps.first(), Some(Step::Attr(name))
                            if declared_names.contains(name)
                                && !self.context_values.locals.contains_key(name)
                                && !self.context_values.deferred_locals.contains_key(name))
                });
                if waits {
                    still_pending.push((file, attribute, references));
                    continue;
                }
                let name = attribute.key.as_str().to_owned();
                let mut runtime = false;
                for reference in &references {
                    match reference.root.as_str() {
                        "var" => {
                            self.check_var_reference(file, reference);
                        }
                        "local" => {
                            if let Some(Step::Attr(local)) = reference.steps.first() {
                                if self.context_values.deferred_locals.contains_key(local) {
                                    runtime = true;
                                } else if !declared_names.contains(local) {
                                    self.undeclared_local(file, reference, &declared_names);
                                }
                            }
                        }
                        root if self.options.engine(root).is_some() => runtime = true,
                        _ => {
                            self.unknown_root(file, reference, false, false);
                        }
                    }
                }
                let expr = hcl::Expression::from(attribute.value.clone());
                if runtime {
                    self.context_values.deferred_locals.insert(name, expr);
                    continue;
                }
                let value = self
                    .evaluate(file, &attribute.value, &expr, None)
                    .unwrap_or(hcl::Value::Null);
                self.context_values.locals.insert(name, value);
                self.base_context = None;
            }
            pending = still_pending;
            if pending.is_empty() || pending.len() == before {
                break;
            }
        }
        if !pending.is_empty() {
            let names: Vec<&str> = pending
                .iter()
                .map(|(_, attribute, _)| attribute.key.as_str())
                .collect();
            for (file, attribute, _) in &pending {
                let span = span_of(&attribute.key, &(0..0));
                self.error(
                    *file,
                    span,
                    "Cycle in local values",
                    format!(
                        "The locals {} refer to each other in a cycle, so none of them has a value. Break the cycle \
                         by removing one of the references.",
                        names.join(", ")
                    ),
                );
            }
        }
    }
}
