//! Reference resolution: what each node reads or waits for, checked against what is declared.
//!
//! A reference to a variable, a local, `count` or `each` is checked and then left to evaluation; a reference to
//! an engine (`postgres.main`, `postgres.main.database.shop.name`, `postgres.replica[0]`) is resolved to the
//! addresses it makes its holder depend on, and those become graph edges. So are `depends_on` entries and the
//! labels of blocks that name a node (`wait_for "process.migrate"`). A wrong name gets a did-you-mean when a
//! declared one is close.

use std::collections::{BTreeMap, BTreeSet};

use hcl::edit::expr::Expression;
use hcl::edit::structure::{Block as EditBlock, Body as EditBody};
use kip_schemas::{BlockSchema, did_you_mean};

use super::{
    Checker, EdgeKind, Expansion, InstanceDecl, ResolvedReference, label_text, path_label, span_of,
};
use crate::config::refs::{self, IndexKey, RawReference, Step};
use crate::config::{Address, PathLabel, PathStep};
use crate::source::FileId;

impl Checker<'_> {
    pub(super) fn check_var_reference(&mut self, file: FileId, reference: &RawReference) -> bool {
        let Some(Step::Attr(name)) = reference.steps.first() else {
            self.error(
                file,
                reference.span.clone(),
                "Invalid reference",
                "`var` must be followed by a variable name, as in var.port.",
            );
            return false;
        };
        if self.context_values.vars.contains_key(name) {
            return true;
        }
        if self.context_values.declared_vars.contains(name) {
            // Declared without a value: "No value for required variable" says so already.
            return false;
        }
        let hint = match did_you_mean(name, self.context_values.vars.keys().map(String::as_str)) {
            Some(close) => format!(" Did you mean {close:?}?"),
            None => format!(" Declare it with a `variable {name:?} {{}}` block."),
        };
        self.error(
            file,
            reference.span.clone(),
            "Reference to undeclared input variable",
            format!("An input variable named {name:?} has not been declared.{hint}"),
        );
        false
    }

    pub(super) fn undeclared_local(
        &mut self,
        file: FileId,
        reference: &RawReference,
        declared: &BTreeSet<String>,
    ) {
        let Some(Step::Attr(name)) = reference.steps.first() else {
            self.error(
                file,
                reference.span.clone(),
                "Invalid reference",
                "`local` must be followed by a local value's name, as in local.prefix.",
            );
            return;
        };
        let hint = match did_you_mean(name, declared.iter().map(String::as_str)) {
            Some(close) => format!(" Did you mean {close:?}?"),
            None => " Declare it in a locals block.".to_owned(),
        };
        self.error(
            file,
            reference.span.clone(),
            "Reference to undeclared local value",
            format!("A local value named {name:?} has not been declared.{hint}"),
        );
    }

    pub(super) fn unknown_root(
        &mut self,
        file: FileId,
        reference: &RawReference,
        counted: bool,
        for_each: bool,
    ) {
        let root = reference.root.as_str();
        let (summary, detail) = match root {
            "count" => (
                "Reference to \"count\" in non-counted context",
                "count.index is only available inside a block that sets count.".to_owned(),
            ),
            "each" => (
                "Reference to \"each\" in context without for_each",
                "each.key and each.value are only available inside a block that sets for_each."
                    .to_owned(),
            ),
            _ => {
                let mut candidates: Vec<&str> = kip_schemas::engines()
                    .iter()
                    .map(|engine| engine.name)
                    .collect();
                candidates.extend(["var", "local"]);
                if counted {
                    candidates.push("count");
                }
                if for_each {
                    candidates.push("each");
                }
                let hint = match did_you_mean(root, candidates.iter().copied()) {
                    Some(close) => format!(" Did you mean {close:?}?"),
                    None => String::new(),
                };
                (
                    "Unknown reference",
                    format!(
                        "{root:?} is not a variable (var.NAME), a local value (local.NAME) or an engine instance \
                         (ENGINE.NAME).{hint}"
                    ),
                )
            }
        };
        self.error(file, reference.span.clone(), summary, detail);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn resolve_body(
        &mut self,
        declarations: &[InstanceDecl<'_>],
        index: &BTreeMap<(String, String), usize>,
        decl: &InstanceDecl<'_>,
        body: &EditBody,
        schema: &BlockSchema,
        holder: &mut Vec<PathStep>,
        (counted, for_each): (bool, bool),
        out: &mut Vec<(Vec<PathStep>, ResolvedReference, EdgeKind)>,
    ) {
        let file = decl.file;
        for attribute in body.attributes() {
            let depends_on =
                attribute.key.as_str() == "depends_on" && (holder.is_empty() || schema.object);
            if depends_on {
                let Expression::Array(items) = &attribute.value else {
                    let span = span_of(&attribute.value, &(0..0));
                    self.error(
                        file,
                        span,
                        "Invalid depends_on",
                        "depends_on is a list of instances or objects, as in depends_on = [postgres.main].",
                    );
                    continue;
                };
                for item in items.iter() {
                    let Expression::Traversal(_) = item else {
                        let span = span_of(item, &(0..0));
                        self.error(
                            file,
                            span,
                            "Invalid depends_on",
                            "Each depends_on entry names an instance or object, as in postgres.main or \
                             postgres.main.database.shop.",
                        );
                        continue;
                    };
                    for reference in refs::collect(item) {
                        if let Some(resolved) = self.resolve_reference(
                            declarations,
                            index,
                            file,
                            &reference,
                            (counted, for_each),
                        ) {
                            out.push((holder.clone(), resolved, EdgeKind::DependsOn));
                        }
                    }
                }
                continue;
            }
            for reference in refs::collect(&attribute.value) {
                if let Some(resolved) = self.resolve_reference(
                    declarations,
                    index,
                    file,
                    &reference,
                    (counted, for_each),
                ) {
                    out.push((holder.clone(), resolved, EdgeKind::Reference));
                }
            }
        }
        let mut positions: BTreeMap<&str, usize> = BTreeMap::new();
        for block in body.blocks() {
            let kind = block.ident.as_str();
            let Some(child) = schema.blocks.iter().find(|child| child.name == kind) else {
                continue;
            };
            if child.label_is_reference {
                self.resolve_label_reference(
                    declarations,
                    index,
                    decl,
                    block,
                    (counted, for_each),
                    holder,
                    out,
                );
            }
            let position = positions.entry(kind).or_insert(0);
            let pushed = if child.object {
                holder.push(PathStep {
                    kind: kind.to_owned(),
                    label: path_label(block, *position),
                });
                true
            } else {
                false
            };
            *position += 1;
            self.resolve_body(
                declarations,
                index,
                decl,
                &block.body,
                child,
                holder,
                (counted, for_each),
                out,
            );
            if pushed {
                holder.pop();
            }
        }
    }

    /// A block whose label is a node's address (`wait_for "process.migrate"`) makes its holder depend on it.
    #[allow(clippy::too_many_arguments)]
    fn resolve_label_reference(
        &mut self,
        declarations: &[InstanceDecl<'_>],
        index: &BTreeMap<(String, String), usize>,
        decl: &InstanceDecl<'_>,
        block: &EditBlock,
        scope: (bool, bool),
        holder: &[PathStep],
        out: &mut Vec<(Vec<PathStep>, ResolvedReference, EdgeKind)>,
    ) {
        let Some(label) = block.labels.first() else {
            return;
        };
        let span = span_of(label, &(0..0));
        let text = label_text(label);
        let parsed = hcl::edit::parser::parse_expr(text).ok();
        let reference = parsed.as_ref().and_then(|expr| match expr {
            Expression::Traversal(_) => refs::collect(expr).into_iter().next(),
            _ => None,
        });
        let Some(reference) = reference.filter(|r| self.options.engine(&r.root).is_some()) else {
            self.error(
                decl.file,
                span,
                "Invalid reference",
                format!(
                    "The label of a {} block is the address of an instance or object, as in \"postgres.main\" or \
                     \"process.migrate\"; {text:?} is not one.",
                    block.ident.as_str()
                ),
            );
            return;
        };
        let reference = RawReference { span, ..reference };
        if let Some(resolved) =
            self.resolve_reference(declarations, index, decl.file, &reference, scope)
        {
            out.push((holder.to_vec(), resolved, EdgeKind::DependsOn));
        }
    }

    /// Resolves one reference; `None` for references to values (var, local, count, each) and for errors.
    pub(super) fn resolve_reference(
        &mut self,
        declarations: &[InstanceDecl<'_>],
        index: &BTreeMap<(String, String), usize>,
        file: FileId,
        reference: &RawReference,
        (counted, for_each): (bool, bool),
    ) -> Option<ResolvedReference> {
        let span = reference.span.clone();
        match reference.root.as_str() {
            "var" => {
                self.check_var_reference(file, reference);
                return None;
            }
            "local" => {
                let name = match reference.steps.first() {
                    Some(Step::Attr(name)) => name,
                    _ => {
                        self.undeclared_local(file, reference, &BTreeSet::new());
                        return None;
                    }
                };
                if let Some(expr) = self.context_values.deferred_locals.get(name).cloned() {
                    // A deferred local makes the holder depend on the engines the local reads.
                    let edit = hcl::edit::expr::Expression::from(expr);
                    let mut targets = Vec::new();
                    for inner in refs::collect(&edit) {
                        if self.options.engine(&inner.root).is_some() {
                            let inner = RawReference {
                                span: span.clone(),
                                ..inner
                            };
                            if let Some(resolved) = self.resolve_reference(
                                declarations,
                                index,
                                file,
                                &inner,
                                (false, false),
                            ) {
                                targets.extend(resolved.targets);
                            }
                        }
                    }
                    return Some(ResolvedReference { targets, span });
                }
                if !self.context_values.locals.contains_key(name) {
                    let declared: BTreeSet<String> = self
                        .context_values
                        .locals
                        .keys()
                        .chain(self.context_values.deferred_locals.keys())
                        .cloned()
                        .collect();
                    self.undeclared_local(file, reference, &declared);
                }
                return None;
            }
            "count" if counted => {
                if reference.steps.first() != Some(&Step::Attr("index".into())) {
                    self.error(
                        file,
                        span,
                        "Invalid reference",
                        "count has one attribute: count.index.",
                    );
                }
                return None;
            }
            "each" if for_each => {
                match reference.steps.first() {
                    Some(Step::Attr(name)) if name == "key" || name == "value" => {}
                    _ => self.error(
                        file,
                        span,
                        "Invalid reference",
                        "each has two attributes: each.key and each.value.",
                    ),
                }
                return None;
            }
            _ => {}
        }
        let Some(engine) = self.options.engine(&reference.root) else {
            self.unknown_root(file, reference, counted, for_each);
            return None;
        };
        let mut steps = reference.steps.iter().peekable();
        let Some(Step::Attr(name)) = steps.next() else {
            self.error(
                file,
                span,
                "Invalid reference",
                format!(
                    "A reference to an engine instance names it: {}.NAME.",
                    engine.name
                ),
            );
            return None;
        };
        let Some(&position) = index.get(&(engine.name.to_owned(), name.clone())) else {
            let names = declarations
                .iter()
                .filter(|d| d.engine.name == engine.name)
                .map(|d| d.name.as_str());
            let hint = match did_you_mean(name, names) {
                Some(close) => format!(" Did you mean {close:?}?"),
                None => String::new(),
            };
            self.error(
                file,
                span,
                "Reference to undeclared instance",
                format!(
                    "No {} instance named {name:?} is declared.{hint}",
                    engine.name
                ),
            );
            return None;
        };
        let target = &declarations[position];
        let base = Address::instance(engine.name, name, None);

        // The instance key: required for counted instances, refused otherwise.
        let keys: Vec<Option<IndexKey>> = match (&target.expansion, steps.peek()) {
            (Expansion::Single, Some(Step::Index(_) | Step::Splat)) => {
                self.error(
                    file,
                    span,
                    "Unexpected instance key",
                    format!(
                        "{base} sets neither count nor for_each, so it has no instances to index."
                    ),
                );
                return None;
            }
            (Expansion::Single, _) => vec![None],
            (Expansion::Invalid, _) => return None,
            (expansion, Some(Step::Splat)) => {
                steps.next();
                expansion.keys().into_iter().map(|(key, _)| key).collect()
            }
            (expansion, Some(Step::Index(key))) => {
                steps.next();
                let all: Vec<Option<IndexKey>> =
                    expansion.keys().into_iter().map(|(key, _)| key).collect();
                match key {
                    // A computed index: depend on every instance.
                    None => all,
                    Some(key) => {
                        let key = match (expansion, key) {
                            (Expansion::Count(_), IndexKey::String(text)) => text
                                .parse()
                                .map(IndexKey::Number)
                                .unwrap_or(IndexKey::String(text.clone())),
                            (_, key) => key.clone(),
                        };
                        if !all.contains(&Some(key.clone())) {
                            self.error(
                                file,
                                span,
                                "Invalid instance key",
                                format!(
                                    "{base} has no instance {key}; it has {} instance(s).",
                                    all.len()
                                ),
                            );
                            return None;
                        }
                        vec![Some(key)]
                    }
                }
            }
            (expansion, _) => {
                let (example, what) = match expansion {
                    Expansion::Count(_) => ("[0]", "count"),
                    _ => ("[\"KEY\"]", "for_each"),
                };
                self.error(
                    file,
                    span,
                    "Missing instance key",
                    format!(
                        "{base} sets {what}, so a reference must name one of its instances, as in {base}{example}, \
                         or all of them with {base}[*]."
                    ),
                );
                return None;
            }
        };

        // Walk declared objects, then at most one exported attribute.
        let mut schema = &engine.instance;
        let mut tree = &target.tree;
        let mut path = Vec::new();
        let mut described = base.to_string();
        while let Some(step) = steps.next() {
            let Step::Attr(attr) = step else { break };
            if let Some(child) = schema
                .blocks
                .iter()
                .find(|child| child.name == attr && child.object)
            {
                let label = match steps.next() {
                    Some(Step::Attr(label)) if !child.labels.is_empty() => {
                        PathLabel::Name(label.clone())
                    }
                    // A label that is not an identifier: `role["app.user"]`, as addresses write it.
                    Some(Step::Index(Some(IndexKey::String(label))))
                        if !child.labels.is_empty() =>
                    {
                        PathLabel::Name(label.clone())
                    }
                    Some(Step::Index(Some(IndexKey::Number(position))))
                        if child.labels.is_empty() =>
                    {
                        PathLabel::Index(*position as usize)
                    }
                    _ => {
                        let example = if child.labels.is_empty() {
                            "[0]"
                        } else {
                            ".NAME (or [\"LABEL\"] for a label that is not a plain name)"
                        };
                        self.error(
                            file,
                            span,
                            "Invalid reference",
                            format!("A reference to a {attr} of {described} names it: {described}.{attr}{example}."),
                        );
                        return None;
                    }
                };
                let declared = tree.children.get(attr.as_str());
                let Some(subtree) = declared.and_then(|labels| labels.get(&label)) else {
                    let text = match &label {
                        PathLabel::Name(name) => format!("{name:?}"),
                        PathLabel::Index(position) => format!("[{position}]"),
                    };
                    let names: Vec<String> = declared
                        .map(|labels| {
                            labels
                                .keys()
                                .filter_map(|label| match label {
                                    PathLabel::Name(name) => Some(name.clone()),
                                    PathLabel::Index(_) => None,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let plain = match &label {
                        PathLabel::Name(name) => name.as_str(),
                        PathLabel::Index(_) => "",
                    };
                    let hint = match did_you_mean(plain, names.iter().map(String::as_str)) {
                        Some(close) => format!(" Did you mean {close:?}?"),
                        None => String::new(),
                    };
                    self.error(
                        file,
                        span,
                        "Reference to undeclared object",
                        format!("{described} declares no {attr} {text}.{hint}"),
                    );
                    return None;
                };
                path.push(PathStep {
                    kind: attr.clone(),
                    label,
                });
                described = format!(
                    "{described}.{attr}.{}",
                    path_text(path.last().expect("just pushed"))
                );
                schema = child;
                tree = subtree;
                continue;
            }
            if !schema.exports.iter().any(|export| export.name == attr) {
                let exports: Vec<&str> = schema.exports.iter().map(|export| export.name).collect();
                let hint = match did_you_mean(attr, exports.iter().copied()) {
                    Some(close) => format!(" Did you mean {close:?}?"),
                    None if exports.is_empty() => " It exports no attributes.".to_owned(),
                    None => format!(" It exports: {}.", exports.join(", ")),
                };
                self.error(
                    file,
                    span,
                    "Unsupported attribute",
                    format!("{described} has no attribute {attr:?}.{hint}"),
                );
                return None;
            }
            break;
        }
        let targets = keys
            .into_iter()
            .map(|key| Address {
                key,
                path: path.clone(),
                ..base.clone()
            })
            .collect();
        Some(ResolvedReference { targets, span })
    }
}

fn path_text(step: &PathStep) -> String {
    match &step.label {
        PathLabel::Name(name) => name.clone(),
        PathLabel::Index(position) => format!("[{position}]"),
    }
}
