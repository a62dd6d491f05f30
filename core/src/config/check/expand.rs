//! Body expansion: the decoded `Body` of one expanded instance, with every value known for its key evaluated.
//!
//! The same source block yields one body per `count` index or `for_each` key; what can be known before apply
//! becomes a `Value::Known`, the rest stays a deferred expression, and every engine object gets its address.

use std::collections::BTreeMap;

use hcl::edit::structure::Body as EditBody;
use kip_schemas::BlockSchema;

use super::{Checker, OBJECT_META, body_span, label_text, path_label, span_of};
use crate::config::refs::IndexKey;
use crate::config::{Address, Attribute, Block, Body, Declared, Value};
use crate::source::FileId;

impl Checker<'_> {
    /// Builds the decoded body of one expanded instance (or object), evaluating what is known.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn expand_body(
        &mut self,
        file: FileId,
        body: &EditBody,
        schema: &BlockSchema,
        address: &Address,
        key: &Option<IndexKey>,
        each_value: &Option<hcl::Value>,
        meta: &[&str],
    ) -> Body {
        let fallback = body_span(body);
        let mut decoded = Body::default();
        for attribute in body.attributes() {
            let name = attribute.key.as_str();
            if meta.contains(&name) {
                continue;
            }
            let declared = Declared {
                file,
                span: span_of(&attribute.value, &fallback),
            };
            let value = match self.known_value(file, &attribute.value, Some((key, each_value))) {
                Some(value) => Value::Known(value),
                None => Value::Deferred(hcl::Expression::from(attribute.value.clone())),
            };
            decoded
                .attributes
                .insert(name.to_owned(), Attribute { value, declared });
        }
        let mut positions: BTreeMap<&str, usize> = BTreeMap::new();
        for block in body.blocks() {
            let kind = block.ident.as_str();
            let Some(child) = schema.blocks.iter().find(|child| child.name == kind) else {
                continue;
            };
            let position = positions.entry(kind).or_insert(0);
            let label = block
                .labels
                .first()
                .map(|label| label_text(label).to_owned());
            let child_address = child
                .object
                .then(|| address.child(kind, path_label(block, *position)));
            *position += 1;
            let child_meta = if child.object { OBJECT_META } else { &[] };
            let body = self.expand_body(
                file,
                &block.body,
                child,
                child_address.as_ref().unwrap_or(address),
                key,
                each_value,
                child_meta,
            );
            let prevent_destroy = child.object
                && self
                    .literal_bool(file, &block.body, "prevent_destroy")
                    .unwrap_or(false);
            decoded.blocks.push(Block {
                kind: kind.to_owned(),
                label,
                address: child_address,
                body,
                prevent_destroy,
                declared: Declared {
                    file,
                    span: span_of(block, &fallback),
                },
            });
        }
        decoded
    }
}
