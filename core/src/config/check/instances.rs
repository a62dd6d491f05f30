//! The instance passes: declaring every engine instance block, then checking and expanding each one.
//!
//! Declaration comes first and covers every instance (unique plain names, `count` / `for_each`, the tree of
//! objects each declares), because a reference in one instance may name any other. The per-instance pass then
//! validates the block, resolves its references, expands it into one `Instance` per key, and collects the graph
//! edges each expanded instance brings.

use std::collections::{BTreeMap, BTreeSet};

use hcl::edit::Span as _;
use hcl::edit::expr::Expression;
use hcl::edit::structure::{Block as EditBlock, Body as EditBody};
use kip_schemas::{BlockSchema, EngineSchema};

use super::edges::{collect_nesting_edges, walk_sibling_references};
use super::{
    Checker, DeclaredTree, EdgeKind, Expansion, INSTANCE_META, InstanceDecl, ResolvedReference,
    path_label, schema_span, span_of,
};
use crate::config::eval;
use crate::config::refs::{self, Step};
use crate::config::{Address, Declared, Instance, PathStep};
use crate::diag::Diagnostic;
use crate::graph::{EdgeReason, GraphEdge};
use crate::source::FileId;

/// The most instances one block may expand to with `count`: each is a real engine process.
const MAX_COUNT: u64 = 1000;

impl Checker<'_> {
    // ---- instances: declaration pass --------------------------------------------------------------------

    pub(super) fn declare_instances<'b>(
        &mut self,
        blocks: &[(FileId, &'b EditBlock, &'static EngineSchema)],
    ) -> Vec<InstanceDecl<'b>> {
        let mut seen: BTreeMap<String, Declared> = BTreeMap::new();
        let mut declarations = Vec::new();
        for &(file, block, engine) in blocks {
            let prefix = format!("{}.", engine.name);
            let Some((name, declared)) = self.named(
                file,
                block,
                &mut seen,
                &prefix,
                "Duplicate instance",
                "instance",
            ) else {
                continue;
            };
            if !crate::address::is_plain_label(&name) {
                self.error(
                    file,
                    declared.span.clone(),
                    "Invalid instance name",
                    format!(
                        "The instance name {name:?} is not a plain name: use letters, digits, `_` and `-`, \
                         starting with a letter or `_` (such as \"main\"), so that references \
                         ({}.NAME), addresses and environment variable names stay unambiguous.",
                        engine.name
                    ),
                );
                continue;
            }
            let expansion = self.expansion(file, block, &declared);
            let tree = declared_tree(&engine.instance, &block.body);
            declarations.push(InstanceDecl {
                file,
                block,
                engine,
                name,
                expansion,
                tree,
                declared,
            });
        }
        declarations
    }

    fn expansion(&mut self, file: FileId, block: &EditBlock, declared: &Declared) -> Expansion {
        let count = block.body.get_attribute("count");
        let for_each = block.body.get_attribute("for_each");
        if let (Some(_), Some(for_each)) = (count, for_each) {
            let span = span_of(&for_each.key, &declared.span);
            self.error(
                file,
                span,
                "Invalid combination of \"count\" and \"for_each\"",
                "An instance may set count or for_each, not both. Keep the one that fits.",
            );
            return Expansion::Invalid;
        }
        if let Some(attribute) = count {
            let Some(value) = self.static_value(file, &attribute.value, "count") else {
                return Expansion::Invalid;
            };
            let span = span_of(&attribute.value, &declared.span);
            return match value.as_u64() {
                Some(count) if count > MAX_COUNT => {
                    self.error(
                        file,
                        span,
                        "Invalid count argument",
                        format!(
                            "count is {count}, more than the {MAX_COUNT} instances kip runs from one block. Each \
                             instance is a real engine; split the block if you really need more."
                        ),
                    );
                    Expansion::Invalid
                }
                Some(count) => Expansion::Count(count),
                None => {
                    self.error(
                        file,
                        span,
                        "Invalid count argument",
                        format!("count must be a whole number of 0 or more, got {value}."),
                    );
                    Expansion::Invalid
                }
            };
        }
        if let Some(attribute) = for_each {
            let Some(value) = self.static_value(file, &attribute.value, "for_each") else {
                return Expansion::Invalid;
            };
            let span = span_of(&attribute.value, &declared.span);
            return match value {
                hcl::Value::Object(map) => Expansion::ForEach(map.into_iter().collect()),
                hcl::Value::Array(items) if items.iter().all(hcl::Value::is_string) => {
                    let mut keys: Vec<String> = items
                        .iter()
                        .filter_map(|i| i.as_str().map(str::to_owned))
                        .collect();
                    keys.sort();
                    keys.dedup();
                    Expansion::ForEach(
                        keys.into_iter()
                            .map(|key| (key.clone(), hcl::Value::String(key)))
                            .collect(),
                    )
                }
                other => {
                    self.error(
                        file,
                        span,
                        "Invalid for_each argument",
                        format!(
                            "for_each must be a map, or a list of strings, got {}.",
                            eval::kind_of(&other)
                        ),
                    );
                    Expansion::Invalid
                }
            };
        }
        Expansion::Single
    }

    /// Evaluates a meta-argument that must be known before anything runs (`count`, `for_each`).
    fn static_value(&mut self, file: FileId, edit: &Expression, what: &str) -> Option<hcl::Value> {
        let references = refs::collect(edit);
        for reference in &references {
            let ok = match reference.root.as_str() {
                "var" => {
                    if !self.check_var_reference(file, reference) {
                        return None;
                    }
                    true
                }
                "local" => match reference.steps.first() {
                    Some(Step::Attr(name)) if self.context_values.locals.contains_key(name) => true,
                    Some(Step::Attr(name))
                        if self.context_values.deferred_locals.contains_key(name) =>
                    {
                        false
                    }
                    _ => {
                        let declared: BTreeSet<String> =
                            self.context_values.locals.keys().cloned().collect();
                        self.undeclared_local(file, reference, &declared);
                        return None;
                    }
                },
                _ => false,
            };
            if !ok {
                self.error(
                    file,
                    reference.span.clone(),
                    &format!("Invalid {what} argument"),
                    format!(
                        "{what} must be known before anything runs, so it may read only variables and locals, not \
                         engines."
                    ),
                );
                return None;
            }
        }
        let expr = hcl::Expression::from(edit.clone());
        self.evaluate(file, edit, &expr, None)
    }

    // ---- instances: check, resolve, expand ---------------------------------------------------------------

    pub(super) fn instance(
        &mut self,
        declarations: &[InstanceDecl<'_>],
        index: &BTreeMap<(String, String), usize>,
        position: usize,
    ) -> (Vec<Instance>, Vec<GraphEdge>) {
        let decl = &declarations[position];
        let file = decl.file;
        let block = decl.block;
        let engine = decl.engine;
        let counted = matches!(decl.expansion, Expansion::Count(_));
        let for_each = matches!(decl.expansion, Expansion::ForEach(_));

        // Validate against the schema, with meta-arguments stripped and known values as shapes.
        let mut view = self.body_view(file, &block.body, &engine.instance, INSTANCE_META);
        // A missing argument of the instance is reported at its header: `postgres "main"`.
        let header_end = block
            .labels
            .last()
            .and_then(|label| label.span())
            .map_or(0, |span| span.end);
        let header_start = block.ident.span().map_or(header_end, |span| span.start);
        view.span = schema_span(&(header_start..header_end.max(header_start)));
        let version = self.version(decl, &view);
        let problems = kip_schemas::validate_body(&engine.instance, &view, version.as_ref());
        for problem in problems {
            self.diagnostics.push(
                Diagnostic::error(problem.summary, problem.detail)
                    .at(file, problem.span.start..problem.span.end),
            );
        }
        if let Some(runnable) = &self.options.runnable
            && !runnable.contains(&engine.name)
        {
            self.diagnostics.push(
                Diagnostic::warning(
                    "Engine not supported yet",
                    format!(
                        "kip checks {} blocks but cannot run them yet: `kip plan` and `kip apply` refuse them. \
                         This kip runs: {}.",
                        engine.name,
                        runnable.join(", ")
                    ),
                )
                .at(file, header_start..header_end.max(header_start)),
            );
        }
        let run_as = self.literal_string(file, &block.body, "run_as");
        let prevent_destroy = self
            .literal_bool(file, &block.body, "prevent_destroy")
            .unwrap_or(false);

        // Resolve references: which nodes does each node of this block depend on?
        let mut holder_references: Vec<(Vec<PathStep>, ResolvedReference, EdgeKind)> = Vec::new();
        self.resolve_body(
            declarations,
            index,
            decl,
            &block.body,
            &engine.instance,
            &mut Vec::new(),
            (counted, for_each),
            &mut holder_references,
        );

        // Expand.
        let mut instances = Vec::new();
        let mut edges = Vec::new();
        for (key, each_value) in decl.expansion.keys() {
            let address = Address::instance(engine.name, &decl.name, key.clone());
            let body = self.expand_body(
                file,
                &block.body,
                &engine.instance,
                &address,
                &key,
                &each_value,
                INSTANCE_META,
            );
            collect_nesting_edges(&address, &body, &mut edges);
            walk_sibling_references(
                &address,
                &decl.tree,
                &engine.instance,
                &body,
                None,
                &mut edges,
            );
            for (holder, reference, kind) in &holder_references {
                let mut to = address.clone();
                to.path.extend(holder.iter().cloned());
                for target in &reference.targets {
                    edges.push(GraphEdge {
                        from: target.clone(),
                        to: to.clone(),
                        reason: match kind {
                            EdgeKind::Reference => EdgeReason::Reference,
                            EdgeKind::DependsOn => EdgeReason::DependsOn,
                        },
                        declared: Some(Declared {
                            file,
                            span: reference.span.clone(),
                        }),
                    });
                }
            }
            instances.push(Instance {
                address,
                engine,
                each_value,
                version: version.clone(),
                body,
                run_as: run_as.clone(),
                prevent_destroy,
                declared: decl.declared.clone(),
            });
        }
        (instances, edges)
    }
}

/// The tree of objects a block declares, by kind and label.
fn declared_tree(schema: &BlockSchema, body: &EditBody) -> DeclaredTree {
    let mut tree = DeclaredTree::default();
    let mut positions: BTreeMap<&str, usize> = BTreeMap::new();
    for block in body.blocks() {
        let kind = block.ident.as_str();
        let Some(child) = schema
            .blocks
            .iter()
            .find(|child| child.name == kind && child.object)
        else {
            continue;
        };
        let position = positions.entry(kind).or_insert(0);
        let label = path_label(block, *position);
        *position += 1;
        tree.children
            .entry(kind.to_owned())
            .or_default()
            .insert(label, declared_tree(child, &block.body));
    }
    tree
}
