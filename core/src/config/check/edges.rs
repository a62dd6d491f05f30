//! Graph edges that come from the shape of an expanded body rather than from references.
//!
//! An instance exists before the objects nested in it, and an object exists before the objects of the same
//! instance that name it in an argument the schema marks as `refers_to` (`owner = "app"` → `role "app"`).
//! Edges from references and `depends_on` are resolved in `references` and added by the per-instance pass.

use kip_schemas::BlockSchema;

use super::DeclaredTree;
use crate::config::{Address, Body, PathLabel};
use crate::graph::{EdgeReason, GraphEdge};

/// Edges for arguments that name another object of the same instance (`owner = "app"` → `role "app"`),
/// when the instance declares that object.
pub(super) fn walk_sibling_references(
    instance: &Address,
    declared: &DeclaredTree,
    schema: &BlockSchema,
    body: &Body,
    holder: Option<&Address>,
    edges: &mut Vec<GraphEdge>,
) {
    if let Some(holder) = holder {
        for argument in schema
            .arguments
            .iter()
            .filter(|argument| argument.refers_to.is_some())
        {
            let Some(kind) = argument.refers_to else {
                continue;
            };
            let Some(attribute) = body.attributes.get(argument.name) else {
                continue;
            };
            let names: Vec<&str> = match attribute.value.known() {
                Some(hcl::Value::String(name)) => vec![name.as_str()],
                Some(hcl::Value::Array(items)) => {
                    items.iter().filter_map(hcl::Value::as_str).collect()
                }
                _ => Vec::new(),
            };
            let siblings = declared.children.get(kind);
            for name in names {
                let label = PathLabel::Name(name.to_owned());
                if !siblings.is_some_and(|labels| labels.contains_key(&label)) {
                    continue;
                }
                let target = instance.child(kind, label);
                if &target != holder {
                    edges.push(GraphEdge {
                        from: target,
                        to: holder.clone(),
                        reason: EdgeReason::Reference,
                        declared: Some(attribute.declared.clone()),
                    });
                }
            }
        }
    }
    for block in &body.blocks {
        let Some(child) = schema.blocks.iter().find(|child| child.name == block.kind) else {
            continue;
        };
        let holder = block.address.as_ref().or(holder);
        walk_sibling_references(instance, declared, child, &block.body, holder, edges);
    }
}

/// Edges from each node to the objects nested in it: an instance exists before its databases.
pub(super) fn collect_nesting_edges(parent: &Address, body: &Body, edges: &mut Vec<GraphEdge>) {
    for block in &body.blocks {
        match &block.address {
            Some(child) => {
                edges.push(GraphEdge {
                    from: parent.clone(),
                    to: child.clone(),
                    reason: EdgeReason::Nesting,
                    declared: None,
                });
                collect_nesting_edges(child, &block.body, edges);
            }
            None => collect_nesting_edges(parent, &block.body, edges),
        }
    }
}
