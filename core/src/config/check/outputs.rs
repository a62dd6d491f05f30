//! The outputs pass: each `output` block's value, known now or deferred to apply.
//!
//! It runs after the instances are declared, because an output usually reads an engine
//! (`value = postgres.main.url`) and its references are checked like any other.

use std::collections::BTreeMap;

use hcl::edit::structure::Block as EditBlock;

use super::{Checker, InstanceDecl};
use crate::config::refs;
use crate::config::{Declared, Output, Value};
use crate::source::FileId;

impl Checker<'_> {
    pub(super) fn outputs(
        &mut self,
        blocks: &[(FileId, &EditBlock)],
        declarations: &[InstanceDecl<'_>],
        index: &BTreeMap<(String, String), usize>,
    ) -> Vec<Output> {
        let mut seen: BTreeMap<String, Declared> = BTreeMap::new();
        let mut outputs = Vec::new();
        for &(file, block) in blocks {
            let Some((name, declared)) =
                self.named(file, block, &mut seen, "", "Duplicate output", "output")
            else {
                continue;
            };
            self.check_arguments(
                file,
                &block.body,
                &["value", "description", "sensitive"],
                "output",
            );
            let Some(attribute) = block.body.get_attribute("value") else {
                self.error(
                    file,
                    declared.span.clone(),
                    "Missing required argument",
                    "An output needs a value: `value = postgres.main.url`, for example.",
                );
                continue;
            };
            for reference in refs::collect(&attribute.value) {
                self.resolve_reference(declarations, index, file, &reference, (false, false));
            }
            let value = match self.known_value(file, &attribute.value, None) {
                Some(value) => Value::Known(value),
                None => Value::Deferred(hcl::Expression::from(attribute.value.clone())),
            };
            let description = self.literal_string(file, &block.body, "description");
            let sensitive = self
                .literal_bool(file, &block.body, "sensitive")
                .unwrap_or(false);
            outputs.push(Output {
                name,
                value,
                description,
                sensitive,
                declared,
            });
        }
        outputs
    }
}
