//! Validation against the engine schemas and the registry version gate.
//!
//! `kip-schemas` knows nothing of HCL, so a block is handed to it as a `BodyView`: names, byte spans and the
//! shape of every value known before apply (anything else is `Unknown`, which never fails a type check). The
//! declared version of a versioned engine must parse and be a major that both the engine schema and the signed
//! registry support, so an unsupported version is refused here, before anything is downloaded or run.

use hcl::edit::structure::Body as EditBody;
use kip_schemas::{BlockSchema, Shape, Version};

use super::{Checker, InstanceDecl, OBJECT_META, body_span, label_text, schema_span, span_of};
use crate::config::eval::shape_of;
use crate::source::FileId;

impl Checker<'_> {
    /// Reads and gates the declared version of an instance against the registry.
    pub(super) fn version(
        &mut self,
        decl: &InstanceDecl<'_>,
        view: &kip_schemas::BodyView,
    ) -> Option<Version> {
        if !decl.engine.versioned {
            return None;
        }
        let attribute = view
            .attributes
            .iter()
            .find(|attribute| attribute.name == "version")?;
        let span = attribute.value_span.start..attribute.value_span.end;
        let text = match &attribute.shape {
            Shape::String(text) => text.clone(),
            Shape::Number(number) => format_number(*number),
            _ => return None,
        };
        let Some(version) = Version::parse(&text) else {
            self.error(
                decl.file,
                span,
                "Invalid engine version",
                format!(
                    "{text:?} is not a version. Write a major (\"16\") or a major and minor (\"16.14\"); the \
                     newest matching release is used and pinned in kip.lock."
                ),
            );
            return None;
        };
        let engine = decl.engine.name;
        let registry = self.options.registry;
        let supported: Vec<u32> = registry
            .majors(engine)
            .unwrap_or_default()
            .iter()
            .copied()
            .filter(|major| decl.engine.majors.contains(major))
            .collect();
        if !supported.contains(&version.major) {
            let list = supported
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let detail = if supported.is_empty() {
                format!(
                    "kip's registry (serial {}) lists no supported version of {engine}.",
                    registry.serial
                )
            } else {
                format!(
                    "{engine} {} is not supported: kip's registry (serial {}) supports {engine} {list}. Use one of \
                     those majors, or install a newer registry with `kip registry update`.",
                    version.major, registry.serial
                )
            };
            self.error(decl.file, span, "Unsupported engine version", detail);
            return None;
        }
        Some(version)
    }

    /// The view of a body that the schema validator checks: known values become shapes, the rest `Unknown`.
    pub(super) fn body_view(
        &mut self,
        file: FileId,
        body: &EditBody,
        schema: &BlockSchema,
        meta: &[&str],
    ) -> kip_schemas::BodyView {
        let whole = body_span(body);
        let mut view = kip_schemas::BodyView {
            span: schema_span(&whole),
            attributes: Vec::new(),
            blocks: Vec::new(),
        };
        for attribute in body.attributes() {
            let name = attribute.key.as_str();
            if meta.contains(&name) {
                continue;
            }
            let value_span = span_of(&attribute.value, &whole);
            let shape = match self.known_value(file, &attribute.value, None) {
                Some(value) => shape_of(&value),
                None => Shape::Unknown,
            };
            view.attributes.push(kip_schemas::AttributeView {
                name: name.to_owned(),
                name_span: schema_span(&span_of(&attribute.key, &whole)),
                value_span: schema_span(&value_span),
                shape,
            });
        }
        for block in body.blocks() {
            let child_schema = schema
                .blocks
                .iter()
                .find(|child| child.name == block.ident.as_str());
            let child_meta = match child_schema {
                Some(child) if child.object => OBJECT_META,
                _ => &[],
            };
            let child_body = match child_schema {
                Some(child) => self.body_view(file, &block.body, child, child_meta),
                None => kip_schemas::BodyView {
                    span: schema_span(&body_span(&block.body)),
                    attributes: Vec::new(),
                    blocks: Vec::new(),
                },
            };
            let block_span = span_of(block, &whole);
            view.blocks.push(kip_schemas::BlockView {
                ident: block.ident.as_str().to_owned(),
                ident_span: schema_span(&span_of(&block.ident, &block_span)),
                labels: block
                    .labels
                    .iter()
                    .map(|label| {
                        (
                            label_text(label).to_owned(),
                            schema_span(&span_of(label, &block_span)),
                        )
                    })
                    .collect(),
                body: child_body,
                span: schema_span(&block_span),
            });
        }
        view
    }
}

fn format_number(number: f64) -> String {
    if number.fract() == 0.0 && number.abs() < 1e15 {
        format!("{}", number as i64)
    } else {
        format!("{number}")
    }
}
