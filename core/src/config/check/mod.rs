//! Decoding and checking: the front half of the pipeline, from parsed HCL to a [`Config`] and its [`Graph`].
//!
//! It works in passes over the `hcl::edit` tree (the only hcl-rs tree that keeps source spans): collect the
//! top-level declarations, resolve variables, evaluate locals, gather every instance's declared objects, then
//! validate each instance against its engine schema and the registry, resolve every reference, expand `count`
//! and `for_each`, and finally build the graph. Every pass reports all the problems it finds; a later pass skips
//! only what an earlier error made meaningless, so one run reports everything at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::Path;

use hcl::edit::Span as _;
use hcl::edit::expr::Expression;
use hcl::edit::structure::{
    Attribute as EditAttribute, Block as EditBlock, BlockLabel, Body as EditBody, Structure,
};
use hcl::eval::{Context, Evaluate};
use kip_registry::Registry;
use kip_schemas::{BlockSchema, EngineSchema, Shape, Version, did_you_mean};

use super::eval::{self, conform, parse_cli_value, shape_of, variable_type};
use super::load::{LoadError, discover, read_all};
use super::refs::{self, IndexKey, RawReference, Step};
use super::{
    Address, Attribute, Block, Body, Config, Declared, Instance, Output, PathLabel, Value,
    ValueSource, Variable, VariableType,
};
use crate::diag::{Diagnostic, Diagnostics};
use crate::graph::{EdgeReason, Graph, GraphEdge};
use crate::source::{FileId, Sources};

/// What a check needs besides the files.
#[derive(Debug, Clone)]
pub struct CheckOptions<'a> {
    /// The verified registry that says which engine majors are supported.
    pub registry: &'a Registry,
    /// `--var name=value`, in command-line order (a later one wins).
    pub vars: Vec<(String, String)>,
    /// `KIP_VAR_name=value` from the environment, name without the prefix.
    pub env_vars: Vec<(String, String)>,
}

/// The result of a check: the sources (always, to render diagnostics), and the config and graph when there
/// were no errors.
#[derive(Debug)]
pub struct Checked {
    pub sources: Sources,
    pub config: Option<Config>,
    pub graph: Option<Graph>,
    pub diagnostics: Diagnostics,
}

/// Loads and checks the configuration in `dir`.
pub fn check(dir: &Path, options: &CheckOptions<'_>) -> Result<Checked, LoadError> {
    let files = discover(dir)?;
    tracing::debug!(?files, "loading configuration files");
    let mut sources = Sources::default();
    read_all(dir, &files, &mut sources)?;
    Ok(check_sources(dir, sources, options))
}

/// Checks configuration files already in memory (used by `check`, tests, fuzzing and benchmarks).
pub fn check_sources(dir: &Path, sources: Sources, options: &CheckOptions<'_>) -> Checked {
    let mut diagnostics = Diagnostics::default();
    let bodies: Vec<(FileId, EditBody)> = sources
        .iter()
        .filter_map(
            |(file, source)| match hcl::edit::parser::parse_body(&source.text) {
                Ok(body) => Some((file, body)),
                Err(error) => {
                    let offset = error.location().offset().min(source.text.len());
                    let end = next_char_boundary(&source.text, offset);
                    diagnostics.push(
                        Diagnostic::error(
                            "Invalid HCL syntax",
                            parse_error_detail(error.message()),
                        )
                        .at(file, offset..end),
                    );
                    None
                }
            },
        )
        .collect();

    let mut checker = Checker {
        options,
        sources: &sources,
        diagnostics,
        context_values: ContextValues::default(),
        known_values: HashMap::new(),
        base_context: None,
    };
    let (config, graph) = checker.run(dir, &bodies);
    let mut diagnostics = checker.diagnostics;
    diagnostics.sort();
    tracing::debug!(
        files = sources.len(),
        instances = config.as_ref().map_or(0, |config| config.instances.len()),
        nodes = graph.as_ref().map_or(0, Graph::len),
        diagnostics = diagnostics.len(),
        "checked the configuration"
    );
    let ok = !diagnostics.has_errors();
    Checked {
        sources,
        config: config.filter(|_| ok),
        graph: graph.filter(|_| ok),
        diagnostics,
    }
}

fn next_char_boundary(text: &str, offset: usize) -> usize {
    let mut end = (offset + 1).min(text.len());
    while end < text.len() && !text.is_char_boundary(end) {
        end += 1;
    }
    end
}

fn parse_error_detail(message: &str) -> String {
    let message = message.trim();
    if message.is_empty() {
        "The file is not valid HCL here. Check for an unclosed brace, bracket or string.".to_owned()
    } else {
        format!("The file is not valid HCL here: {message}.")
    }
}

/// Meta-arguments kip handles itself on every instance; the schema never sees them.
const INSTANCE_META: &[&str] = &[
    "count",
    "for_each",
    "depends_on",
    "run_as",
    "prevent_destroy",
];
/// Meta-arguments kip handles itself on every engine object.
const OBJECT_META: &[&str] = &["depends_on", "prevent_destroy"];
/// The most instances one block may expand to with `count`: each is a real engine process.
const MAX_COUNT: u64 = 1000;
const TOP_LEVEL: &[&str] = &["variable", "locals", "output"];

fn span_of(item: &impl hcl::edit::Span, fallback: &Range<usize>) -> Range<usize> {
    item.span().unwrap_or_else(|| fallback.clone())
}

fn label_text(label: &BlockLabel) -> &str {
    label.as_str()
}

fn schema_span(range: &Range<usize>) -> kip_schemas::Span {
    kip_schemas::Span {
        start: range.start,
        end: range.end,
    }
}

/// What an expression needs before it can be evaluated.
#[derive(Debug, Default, Clone, Copy)]
struct Needs {
    /// Reads an engine attribute or a local that does: known only at apply.
    runtime: bool,
    /// Reads `count.index` or `each.*`: known per expanded instance.
    iteration: bool,
}

/// How an instance block expands.
#[derive(Debug, Clone)]
enum Expansion {
    Single,
    Count(u64),
    ForEach(Vec<(String, hcl::Value)>),
    /// `count` or `for_each` could not be evaluated; an error was reported.
    Invalid,
}

impl Expansion {
    fn keys(&self) -> Vec<(Option<IndexKey>, Option<hcl::Value>)> {
        match self {
            Expansion::Single => vec![(None, None)],
            Expansion::Count(count) => (0..*count)
                .map(|index| (Some(IndexKey::Number(index)), None))
                .collect(),
            Expansion::ForEach(entries) => entries
                .iter()
                .map(|(key, value)| (Some(IndexKey::String(key.clone())), Some(value.clone())))
                .collect(),
            Expansion::Invalid => Vec::new(),
        }
    }
}

/// The objects one instance block declares, for resolving references like `postgres.main.database.shop`.
#[derive(Debug, Default)]
struct DeclaredTree {
    /// kind → label (or position, for unlabelled blocks) → subtree
    children: BTreeMap<String, BTreeMap<PathLabel, DeclaredTree>>,
}

struct InstanceDecl<'b> {
    file: FileId,
    block: &'b EditBlock,
    engine: &'static EngineSchema,
    name: String,
    expansion: Expansion,
    tree: DeclaredTree,
    declared: Declared,
}

/// Values that expressions can read: `var.*` and the known `local.*`.
#[derive(Debug, Default)]
struct ContextValues {
    vars: hcl::Map<String, hcl::Value>,
    /// Every declared variable, including those without a value (already reported).
    declared_vars: BTreeSet<String>,
    locals: hcl::Map<String, hcl::Value>,
    /// Locals whose value is known only at apply, with the engine nodes they read.
    deferred_locals: BTreeMap<String, hcl::Expression>,
}

/// A resolved reference: the nodes it makes the holder depend on.
#[derive(Debug, Clone)]
struct ResolvedReference {
    targets: Vec<Address>,
    span: Range<usize>,
}

struct Checker<'o> {
    options: &'o CheckOptions<'o>,
    sources: &'o Sources,
    diagnostics: Diagnostics,
    context_values: ContextValues,
    /// Values already evaluated for expressions that do not depend on the instance key, by file and span.
    known_values: HashMap<(FileId, usize), Option<hcl::Value>>,
    /// The evaluation context for `var` and `local`, built on first use after the locals are settled.
    base_context: Option<Context<'static>>,
}

impl Checker<'_> {
    /// `file:line:col` of a declaration, for details that point at a second place.
    fn position(&self, declared: &Declared) -> String {
        let file = self.sources.get(declared.file);
        let at = file.line_col(declared.span.start);
        format!("{}:{}:{}", file.name, at.line, at.column)
    }

    fn error(
        &mut self,
        file: FileId,
        span: Range<usize>,
        summary: &str,
        detail: impl Into<String>,
    ) {
        self.diagnostics
            .push(Diagnostic::error(summary, detail).at(file, span));
    }

    fn run(
        &mut self,
        dir: &Path,
        bodies: &[(FileId, EditBody)],
    ) -> (Option<Config>, Option<Graph>) {
        let mut variable_blocks = Vec::new();
        let mut local_attributes = Vec::new();
        let mut output_blocks = Vec::new();
        let mut instance_blocks = Vec::new();

        for (file, body) in bodies {
            for structure in body.iter() {
                match structure {
                    Structure::Attribute(attribute) => {
                        let span = span_of(&attribute.key, &(0..0));
                        self.error(
                            *file,
                            span,
                            "Unsupported argument",
                            format!(
                                "An argument named {:?} cannot stand at the top level of a file. Arguments go inside \
                                 a block: an engine instance, a variable, locals or an output.",
                                attribute.key.as_str()
                            ),
                        );
                    }
                    Structure::Block(block) => {
                        let ident = block.ident.as_str();
                        match ident {
                            "variable" => variable_blocks.push((*file, block)),
                            "locals" => {
                                self.expect_labels(*file, block, &[]);
                                for structure in block.body.iter() {
                                    match structure {
                                        Structure::Attribute(attribute) => local_attributes.push((*file, attribute)),
                                        Structure::Block(inner) => self.error(
                                            *file,
                                            span_of(&inner.ident, &(0..0)),
                                            "Unsupported block type",
                                            "A locals block holds only `name = expression` arguments.",
                                        ),
                                    }
                                }
                            }
                            "output" => output_blocks.push((*file, block)),
                            _ => match kip_schemas::engine(ident) {
                                Some(engine) => instance_blocks.push((*file, block, engine)),
                                None => {
                                    let candidates = kip_schemas::engines()
                                        .iter()
                                        .map(|engine| engine.name)
                                        .chain(TOP_LEVEL.iter().copied());
                                    let detail = match did_you_mean(ident, candidates) {
                                        Some(close) => format!(
                                            "A block type named {ident:?} is not expected here. Did you mean {close:?}?"
                                        ),
                                        None => format!(
                                            "A block type named {ident:?} is not expected here. kip knows the engines \
                                             {} and the blocks variable, locals and output.",
                                            kip_schemas::engines()
                                                .iter()
                                                .map(|engine| engine.name)
                                                .collect::<Vec<_>>()
                                                .join(", ")
                                        ),
                                    };
                                    let span = span_of(&block.ident, &(0..0));
                                    self.error(*file, span, "Unsupported block type", detail);
                                }
                            },
                        }
                    }
                }
            }
        }

        let variables = self.variables(&variable_blocks);
        self.locals(&local_attributes);
        let mut declarations = self.declare_instances(&instance_blocks);
        let index: BTreeMap<(String, String), usize> = declarations
            .iter()
            .enumerate()
            .map(|(position, decl)| ((decl.engine.name.to_owned(), decl.name.clone()), position))
            .collect();

        let mut instances = Vec::new();
        let mut edges = Vec::new();
        for position in 0..declarations.len() {
            let (expanded, instance_edges) = self.instance(&declarations, &index, position);
            instances.extend(expanded);
            edges.extend(instance_edges);
        }
        let outputs = self.outputs(&output_blocks, &declarations, &index);
        declarations.clear();

        let config = Config {
            dir: dir.to_path_buf(),
            variables,
            locals: self
                .context_values
                .locals
                .iter()
                .map(|(name, value)| (name.clone(), Value::Known(value.clone())))
                .chain(
                    self.context_values
                        .deferred_locals
                        .iter()
                        .map(|(name, expr)| (name.clone(), Value::Deferred(expr.clone()))),
                )
                .collect(),
            instances,
            outputs,
        };
        if self.diagnostics.has_errors() {
            return (Some(config), None);
        }
        let graph = match Graph::build(&config, edges) {
            Ok(graph) => Some(graph),
            Err(cycles) => {
                self.diagnostics.extend(cycles);
                None
            }
        };
        (Some(config), graph)
    }

    fn expect_labels(&mut self, file: FileId, block: &EditBlock, names: &[&str]) -> bool {
        if block.labels.len() == names.len() {
            return true;
        }
        let ident = block.ident.as_str();
        let span = span_of(&block.ident, &(0..0));
        let detail = if names.is_empty() {
            format!(
                "A {ident} block takes no labels, got {}.",
                block.labels.len()
            )
        } else {
            format!(
                "A {ident} block needs {} label{} ({}), got {}: write `{ident} \"{}\" {{ … }}`.",
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                names.join(", "),
                block.labels.len(),
                names.join("\" \"")
            )
        };
        self.error(file, span, "Wrong number of labels", detail);
        false
    }

    fn check_arguments(&mut self, file: FileId, body: &EditBody, allowed: &[&str], what: &str) {
        for attribute in body.attributes() {
            let key = attribute.key.as_str();
            if allowed.contains(&key) {
                continue;
            }
            let hint = match did_you_mean(key, allowed.iter().copied()) {
                Some(close) => format!(" Did you mean {close:?}?"),
                None => format!(" A {what} takes: {}.", allowed.join(", ")),
            };
            let span = span_of(&attribute.key, &(0..0));
            self.error(
                file,
                span,
                "Unsupported argument",
                format!("An argument named {key:?} is not expected here.{hint}"),
            );
        }
        for block in body.blocks() {
            let span = span_of(&block.ident, &(0..0));
            self.error(
                file,
                span,
                "Unsupported block type",
                format!(
                    "A {what} holds no blocks; {:?} is not expected here.",
                    block.ident.as_str()
                ),
            );
        }
    }

    // ---- variables --------------------------------------------------------------------------------------

    fn variables(&mut self, blocks: &[(FileId, &EditBlock)]) -> Vec<Variable> {
        let mut seen: BTreeMap<String, Declared> = BTreeMap::new();
        let mut variables = Vec::new();
        for &(file, block) in blocks {
            let Some((name, declared)) = self.named(
                file,
                block,
                &mut seen,
                "",
                "Duplicate variable declaration",
                "variable",
            ) else {
                continue;
            };
            self.check_arguments(
                file,
                &block.body,
                &["type", "default", "description", "sensitive"],
                "variable",
            );
            let ty = match block.body.get_attribute("type") {
                None => VariableType::Any,
                Some(attribute) => variable_type(&attribute.value).unwrap_or_else(|| {
                    let span = span_of(&attribute.value, &declared.span);
                    self.error(
                        file,
                        span,
                        "Invalid type specification",
                        "A variable type is one of string, number, bool, any, list(TYPE) or map(TYPE).",
                    );
                    VariableType::Any
                }),
            };
            let description = self.literal_string(file, &block.body, "description");
            let sensitive = self
                .literal_bool(file, &block.body, "sensitive")
                .unwrap_or(false);
            let default = block.body.get_attribute("default").and_then(|attribute| {
                let span = span_of(&attribute.value, &declared.span);
                match hcl::Expression::from(attribute.value.clone()).evaluate(&Context::new()) {
                    Ok(value) => match conform(value, &ty) {
                        Ok(value) => Some(value),
                        Err(why) => {
                            self.error(
                                file,
                                span,
                                "Invalid default value for variable",
                                format!("The default of variable {name:?} does not fit its type: {why}."),
                            );
                            None
                        }
                    },
                    Err(_) => {
                        self.error(
                            file,
                            span,
                            "Invalid default value for variable",
                            "A variable's default must be a literal value; it cannot read other variables, locals \
                             or engines.",
                        );
                        None
                    }
                }
            });
            let from_flag = self.options.vars.iter().rev().find(|(key, _)| key == &name);
            let from_env = self
                .options
                .env_vars
                .iter()
                .rev()
                .find(|(key, _)| key == &name);
            let (raw, source) = match (from_flag, from_env) {
                (Some((_, raw)), _) => (Some(raw), ValueSource::Flag),
                (None, Some((_, raw))) => (Some(raw), ValueSource::Environment),
                (None, None) => (None, ValueSource::Default),
            };
            let value = match raw {
                Some(raw) => match parse_cli_value(raw, &ty) {
                    Ok(value) => Some(value),
                    Err(why) => {
                        let origin = match source {
                            ValueSource::Flag => format!("--var {name}=…"),
                            _ => format!("KIP_VAR_{name}"),
                        };
                        self.error(
                            file,
                            declared.span.clone(),
                            "Invalid value for variable",
                            format!(
                                "The value given by {origin} does not fit the type {ty}: {why}."
                            ),
                        );
                        None
                    }
                },
                None => {
                    if default.is_none() && block.body.get_attribute("default").is_none() {
                        self.error(
                            file,
                            declared.span.clone(),
                            "No value for required variable",
                            format!(
                                "Variable {name:?} has no default. Set it with --var {name}=VALUE or the \
                                 environment variable KIP_VAR_{name}, or give it a default."
                            ),
                        );
                    }
                    default
                }
            };
            let Some(value) = value else { continue };
            self.context_values.vars.insert(name.clone(), value.clone());
            variables.push(Variable {
                name,
                ty,
                description,
                sensitive,
                value,
                source,
                declared,
            });
        }
        for (name, _) in &self.options.vars {
            if !seen.contains_key(name) {
                let hint = match did_you_mean(name, seen.keys().map(String::as_str)) {
                    Some(close) => format!(" Did you mean {close:?}?"),
                    None => " Declare it with a variable block, or drop the flag.".to_owned(),
                };
                self.diagnostics.push(Diagnostic::error(
                    "Value for undeclared variable",
                    format!("--var sets {name:?}, but no variable {name:?} is declared.{hint}"),
                ));
            }
        }
        variables
    }

    /// The name of a block that takes one label (`variable "port"`, `postgres "main"`) and where it is declared;
    /// `None`, reported, when the labels are wrong or the name (qualified by `prefix`) is already taken.
    fn named(
        &mut self,
        file: FileId,
        block: &EditBlock,
        seen: &mut BTreeMap<String, Declared>,
        prefix: &str,
        summary: &str,
        what: &str,
    ) -> Option<(String, Declared)> {
        if !self.expect_labels(file, block, &["name"]) {
            return None;
        }
        let name = label_text(&block.labels[0]).to_owned();
        let declared = Declared {
            file,
            span: span_of(&block.labels[0], &(0..0)),
        };
        if self.duplicate(seen, &format!("{prefix}{name}"), &declared, summary, what) {
            return None;
        }
        Some((name, declared))
    }

    fn duplicate(
        &mut self,
        seen: &mut BTreeMap<String, Declared>,
        name: &str,
        declared: &Declared,
        summary: &str,
        what: &str,
    ) -> bool {
        if let Some(first) = seen.get(name) {
            let first = self.position(first);
            let article = if what.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "An"
            } else {
                "A"
            };
            self.diagnostics.push(
                Diagnostic::error(
                    summary,
                    format!(
                        "{article} {what} named {name:?} is already declared at {first}; names must be unique. \
                         Rename or remove one of them."
                    ),
                )
                .at(declared.file, declared.span.clone()),
            );
            return true;
        }
        seen.insert(name.to_owned(), declared.clone());
        false
    }

    fn literal_string(&mut self, file: FileId, body: &EditBody, key: &str) -> Option<String> {
        let attribute = body.get_attribute(key)?;
        match &attribute.value {
            Expression::String(text) => Some(text.value().clone()),
            other => {
                let span = span_of(other, &(0..0));
                self.error(
                    file,
                    span,
                    "Incorrect attribute value type",
                    format!("{key:?} must be a string literal."),
                );
                None
            }
        }
    }

    fn literal_bool(&mut self, file: FileId, body: &EditBody, key: &str) -> Option<bool> {
        let attribute = body.get_attribute(key)?;
        match &attribute.value {
            Expression::Bool(flag) => Some(*flag.value()),
            other => {
                let span = span_of(other, &(0..0));
                self.error(
                    file,
                    span,
                    "Incorrect attribute value type",
                    format!("{key:?} must be true or false."),
                );
                None
            }
        }
    }

    // ---- locals -----------------------------------------------------------------------------------------

    /// Evaluates locals in dependency order; a local that reads an engine is deferred to apply.
    fn locals(&mut self, attributes: &[(FileId, &EditAttribute)]) {
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
                        root if kip_schemas::engine(root).is_some() => runtime = true,
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

    fn check_var_reference(&mut self, file: FileId, reference: &RawReference) -> bool {
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

    fn undeclared_local(
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

    fn unknown_root(
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

    /// Evaluates an expression that needs no engine; errors become diagnostics.
    fn evaluate(
        &mut self,
        file: FileId,
        edit: &Expression,
        expr: &hcl::Expression,
        iteration: Option<(&Option<IndexKey>, &Option<hcl::Value>)>,
    ) -> Option<hcl::Value> {
        if self.base_context.is_none() {
            let mut context = Context::new();
            eval::declare_functions(&mut context);
            context.declare_var("var", hcl::Value::Object(self.context_values.vars.clone()));
            context.declare_var(
                "local",
                hcl::Value::Object(self.context_values.locals.clone()),
            );
            self.base_context = Some(context);
        }
        let base = self.base_context.as_ref().expect("just built");
        let iterated;
        let context = match iteration {
            Some((Some(IndexKey::Number(index)), _)) => {
                let mut context = base.clone();
                let mut count = hcl::Map::new();
                count.insert("index".to_owned(), hcl::Value::from(*index));
                context.declare_var("count", hcl::Value::Object(count));
                iterated = context;
                &iterated
            }
            Some((Some(IndexKey::String(key)), Some(value))) => {
                let mut context = base.clone();
                let mut each = hcl::Map::new();
                each.insert("key".to_owned(), hcl::Value::from(key.clone()));
                each.insert("value".to_owned(), value.clone());
                context.declare_var("each", hcl::Value::Object(each));
                iterated = context;
                &iterated
            }
            _ => base,
        };
        match expr.evaluate(context) {
            Ok(value) => Some(value),
            Err(errors) => {
                let span = span_of(edit, &(0..0));
                let message = errors.to_string();
                let hint = match message
                    .split("undefined func `")
                    .nth(1)
                    .and_then(|rest| rest.split('`').next())
                {
                    Some(name) => match did_you_mean(name, eval::FUNCTIONS.iter().copied()) {
                        Some(close) => format!(" Did you mean {close:?}?"),
                        None => format!(" kip's functions are: {}.", eval::FUNCTIONS.join(", ")),
                    },
                    None => String::new(),
                };
                self.error(
                    file,
                    span,
                    "Invalid expression",
                    format!(
                        "This expression cannot be evaluated: {}.{hint}",
                        message.trim_end_matches('.')
                    ),
                );
                None
            }
        }
    }

    // ---- instances: declaration pass --------------------------------------------------------------------

    fn declare_instances<'b>(
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

    fn instance(
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
        let run_as = self.literal_string(file, &block.body, "run_as");
        let prevent_destroy = self
            .literal_bool(file, &block.body, "prevent_destroy")
            .unwrap_or(false);

        // Resolve references: which nodes does each node of this block depend on?
        let mut holder_references: Vec<(Vec<super::PathStep>, ResolvedReference, EdgeKind)> =
            Vec::new();
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

    /// Reads and gates the declared version of an instance against the registry.
    fn version(
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
    fn body_view(
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

    /// The value of an expression if it is known before apply; `None` when it reads an engine, or depends on
    /// the instance key and no key is given, or failed to evaluate (reported once).
    fn known_value(
        &mut self,
        file: FileId,
        edit: &Expression,
        iteration: Option<(&Option<IndexKey>, &Option<hcl::Value>)>,
    ) -> Option<hcl::Value> {
        if let Some(value) = literal(edit) {
            return Some(value);
        }
        let needs = self.needs(edit);
        if needs.runtime {
            return None;
        }
        if needs.iteration {
            let (key, _) = iteration?;
            key.as_ref()?;
            let expr = hcl::Expression::from(edit.clone());
            return self.evaluate(file, edit, &expr, iteration);
        }
        let cache_key = (file, span_of(edit, &(0..0)).start);
        if let Some(cached) = self.known_values.get(&cache_key) {
            return cached.clone();
        }
        let expr = hcl::Expression::from(edit.clone());
        let value = self.evaluate(file, edit, &expr, None);
        self.known_values.insert(cache_key, value.clone());
        value
    }

    fn needs(&self, edit: &Expression) -> Needs {
        let mut needs = Needs::default();
        for reference in refs::collect(edit) {
            match reference.root.as_str() {
                "count" | "each" => needs.iteration = true,
                "var" => match reference.steps.first() {
                    Some(Step::Attr(name)) if self.context_values.vars.contains_key(name) => {}
                    // Undeclared or without a value: reported by the resolver, not evaluated.
                    _ => needs.runtime = true,
                },
                "local" => match reference.steps.first() {
                    Some(Step::Attr(name)) if self.context_values.locals.contains_key(name) => {}
                    _ => needs.runtime = true,
                },
                // Engine references, and unknown names (reported by the resolver) are not evaluable now.
                _ => needs.runtime = true,
            }
        }
        needs
    }

    #[allow(clippy::too_many_arguments)]
    fn resolve_body(
        &mut self,
        declarations: &[InstanceDecl<'_>],
        index: &BTreeMap<(String, String), usize>,
        decl: &InstanceDecl<'_>,
        body: &EditBody,
        schema: &BlockSchema,
        holder: &mut Vec<super::PathStep>,
        (counted, for_each): (bool, bool),
        out: &mut Vec<(Vec<super::PathStep>, ResolvedReference, EdgeKind)>,
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
                holder.push(super::PathStep {
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
        holder: &[super::PathStep],
        out: &mut Vec<(Vec<super::PathStep>, ResolvedReference, EdgeKind)>,
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
        let Some(reference) = reference.filter(|r| kip_schemas::engine(&r.root).is_some()) else {
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
    fn resolve_reference(
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
                        if kip_schemas::engine(&inner.root).is_some() {
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
        let Some(engine) = kip_schemas::engine(&reference.root) else {
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
                path.push(super::PathStep {
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

    /// Builds the decoded body of one expanded instance (or object), evaluating what is known.
    #[allow(clippy::too_many_arguments)]
    fn expand_body(
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

    // ---- outputs ----------------------------------------------------------------------------------------

    fn outputs(
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

/// Why a reference-made edge exists.
#[derive(Debug, Clone, Copy)]
enum EdgeKind {
    Reference,
    DependsOn,
}

/// A literal value written directly in the source (also lists and objects of literals), without evaluation.
fn literal(edit: &Expression) -> Option<hcl::Value> {
    match edit {
        Expression::String(text) => Some(hcl::Value::String(text.value().clone())),
        Expression::Bool(flag) => Some(hcl::Value::Bool(*flag.value())),
        Expression::Number(number) => Some(hcl::Value::Number(*number.value())),
        Expression::Null(_) => Some(hcl::Value::Null),
        Expression::Array(items) => items
            .iter()
            .map(literal)
            .collect::<Option<Vec<_>>>()
            .map(hcl::Value::Array),
        Expression::Object(object) => {
            let mut map = hcl::Map::new();
            for (key, value) in object.iter() {
                let key = match key {
                    hcl::edit::expr::ObjectKey::Ident(ident) => ident.as_str().to_owned(),
                    hcl::edit::expr::ObjectKey::Expression(Expression::String(text)) => {
                        text.value().clone()
                    }
                    hcl::edit::expr::ObjectKey::Expression(_) => return None,
                };
                map.insert(key, literal(value.expr())?);
            }
            Some(hcl::Value::Object(map))
        }
        _ => None,
    }
}

fn body_span(body: &EditBody) -> Range<usize> {
    body.span().unwrap_or(0..0)
}

fn format_number(number: f64) -> String {
    if number.fract() == 0.0 && number.abs() < 1e15 {
        format!("{}", number as i64)
    } else {
        format!("{number}")
    }
}

fn path_label(block: &EditBlock, position: usize) -> PathLabel {
    match block.labels.first() {
        Some(label) => PathLabel::Name(label_text(label).to_owned()),
        None => PathLabel::Index(position),
    }
}

fn path_text(step: &super::PathStep) -> String {
    match &step.label {
        PathLabel::Name(name) => name.clone(),
        PathLabel::Index(position) => format!("[{position}]"),
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

/// Edges for arguments that name another object of the same instance (`owner = "app"` → `role "app"`),
/// when the instance declares that object.
fn walk_sibling_references(
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
fn collect_nesting_edges(parent: &Address, body: &Body, edges: &mut Vec<GraphEdge>) {
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
