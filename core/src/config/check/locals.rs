//! The locals pass: every `locals` entry, evaluated in dependency order.
//!
//! Locals may read variables and each other, so they settle in dependency order (Kahn's algorithm: each local once
//! every local it reads is settled, in declaration order among those ready); what is left at the end waits on a
//! cycle, and every local still waiting is reported. A local that reads an engine cannot be
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
        // Dependency order (Kahn): a local is evaluated once every declared local it reads is settled, each local
        // once, in declaration order among those that are ready. What is left at the end waits on a cycle.
        let index: BTreeMap<&str, usize> = pending
            .iter()
            .enumerate()
            .map(|(position, (_, attribute, _))| (attribute.key.as_str(), position))
            .collect();
        let reads: Vec<BTreeSet<usize>> = pending
            .iter()
            .map(|(_, _, references)| {
                references
                    .iter()
                    .filter(|reference| reference.root == "local")
                    .filter_map(|reference| match reference.steps.first() {
                        Some(Step::Attr(name)) => index.get(name.as_str()).copied(),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        let mut waiting: Vec<usize> = reads.iter().map(BTreeSet::len).collect();
        let mut readers: Vec<Vec<usize>> = vec![Vec::new(); pending.len()];
        for (reader, read) in reads.iter().enumerate() {
            for &local in read {
                readers[local].push(reader);
            }
        }
        let mut ready: std::collections::BTreeSet<usize> = waiting
            .iter()
            .enumerate()
            .filter(|(_, count)| **count == 0)
            .map(|(position, _)| position)
            .collect();
        let mut settled = vec![false; pending.len()];
        while let Some(position) = ready.pop_first() {
            settled[position] = true;
            let (file, attribute, references) = &pending[position];
            self.settle_local(*file, attribute, references, &declared_names);
            for &reader in &readers[position] {
                waiting[reader] -= 1;
                if waiting[reader] == 0 {
                    ready.insert(reader);
                }
            }
        }
        let pending: Vec<_> = pending
            .into_iter()
            .zip(settled)
            .filter(|(_, settled)| !settled)
            .map(|(local, _)| local)
            .collect();
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

    /// Evaluates one local whose local references are all settled: deferred to apply when it reads an engine
    /// (or a deferred local), else its value, evaluated with only the locals it reads.
    fn settle_local(
        &mut self,
        file: FileId,
        attribute: &EditAttribute,
        references: &[RawReference],
        declared_names: &BTreeSet<String>,
    ) {
        let name = attribute.key.as_str().to_owned();
        let mut runtime = false;
        let mut reads: BTreeSet<&str> = BTreeSet::new();
        for reference in references {
            match reference.root.as_str() {
                "var" => {
                    self.check_var_reference(file, reference);
                }
                "local" => {
                    if let Some(Step::Attr(local)) = reference.steps.first() {
                        if self.context_values.deferred_locals.contains_key(local) {
                            runtime = true;
                        } else if !declared_names.contains(local) {
                            self.undeclared_local(file, reference, declared_names);
                        }
                        reads.insert(local.as_str());
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
            return;
        }
        let value = self
            .evaluate_local(file, &attribute.value, &expr, &reads)
            .unwrap_or(hcl::Value::Null);
        self.context_values.locals.insert(name, value);
        self.base_context = None;
    }
}
