//! Decoding and checking: the front half of the pipeline, from parsed HCL to a [`Config`] and its [`Graph`].
//!
//! It works in passes over the `hcl::edit` tree (the only hcl-rs tree that keeps source spans): collect the
//! top-level declarations, resolve variables, evaluate locals, gather every instance's declared objects, then
//! validate each instance against its engine schema and the registry, resolve every reference, expand `count`
//! and `for_each`, and finally build the graph. Every pass reports all the problems it finds; a later pass skips
//! only what an earlier error made meaningless, so one run reports everything at once.
//!
//! Each pass has its own file: `variables`, `locals`, `instances` (declaration, `count` / `for_each` and the
//! per-instance driver), `validate` (the schema view and the registry version gate), `references`, `values`
//! (evaluating what is known before apply), `expand` (the decoded body of each expanded instance), `outputs` and
//! `edges` (nesting and same-instance references). This file holds the entry points, the `Checker` that carries
//! what the passes learn from one to the next and its `run` driver, the data the passes hand to each other, and
//! the checks every kind of block shares (labels, arguments, unique names, literal meta-arguments).

mod edges;
mod expand;
mod instances;
mod locals;
mod outputs;
mod references;
mod validate;
mod values;
mod variables;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::Path;

use hcl::edit::Span as _;
use hcl::edit::expr::Expression;
use hcl::edit::structure::{Block as EditBlock, BlockLabel, Body as EditBody, Structure};
use hcl::eval::Context;
use kip_registry::Registry;
use kip_schemas::{EngineSchema, did_you_mean};

use super::load::{LoadError, discover, read_all};
use super::refs::IndexKey;
use super::{Address, Config, Declared, PathLabel, Value};
use crate::diag::{Diagnostic, Diagnostics};
use crate::graph::Graph;
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
    /// Engines beyond the ones `kip-schemas` ships (a test's fake engine).
    pub extra_engines: Vec<&'static EngineSchema>,
    /// The engines this kip can run (those with a provider), when the caller knows: an instance of another one is
    /// checked, and warned about (`kip plan` refuses it).
    pub runnable: Option<Vec<&'static str>>,
}

impl CheckOptions<'_> {
    /// The engine whose block type is `name`.
    pub fn engine(&self, name: &str) -> Option<&'static EngineSchema> {
        kip_schemas::engine(name).or_else(|| {
            self.extra_engines
                .iter()
                .copied()
                .find(|engine| engine.name == name)
        })
    }
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
    // Large work gets transparent huge pages back before it is parsed (a no-op unless the program held them back).
    crate::huge_pages::allow_for_source(sources.iter().map(|(_, source)| source.text.len()).sum());
    let checked = check_sources(dir, sources, options);
    crate::huge_pages::allow_for(checked.graph.as_ref().map_or(0, Graph::len));
    Ok(checked)
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

fn body_span(body: &EditBody) -> Range<usize> {
    body.span().unwrap_or(0..0)
}

fn path_label(block: &EditBlock, position: usize) -> PathLabel {
    match block.labels.first() {
        Some(label) => PathLabel::Name(label_text(label).to_owned()),
        None => PathLabel::Index(position),
    }
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

/// Why a reference-made edge exists.
#[derive(Debug, Clone, Copy)]
enum EdgeKind {
    Reference,
    DependsOn,
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
                            _ => match self.options.engine(ident) {
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
}
