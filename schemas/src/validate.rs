//! Validation of a decoded block body against a [`BlockSchema`].
//!
//! This crate never sees HCL: the core decodes `kip.hcl`, hands over a [`BodyView`] (names, labels, value
//! shapes and byte spans) and renders the [`Problem`]s it gets back as diagnostics. Validation reports every
//! problem in one pass, each with the tightest span available, a constant summary from [`summary`] and a
//! detail that says what to do. It knows no meta-arguments: the caller strips those before calling.

use crate::schema::{ArgumentSchema, BlockSchema};
use crate::suggest::did_you_mean;
use crate::types::{MismatchKind, PathStep, ValueType, quoted_list};
use crate::version::Version;

/// Byte range in a source file; opaque to this crate, carried through to problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub const fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// What a value looks like once decoded, as far as type checking cares.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Shape {
    String(String),
    Number(f64),
    Bool(bool),
    Null,
    List(Vec<Shape>),
    Object(Vec<(String, Shape)>),
    /// An expression whose value is only known later (a reference, a function call): never a type error.
    Unknown,
}

impl Shape {
    /// The kind name used in "got …" messages: `string`, `number`, `bool`, `null`, `list`, `object`, `unknown`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Shape::String(_) => "string",
            Shape::Number(_) => "number",
            Shape::Bool(_) => "bool",
            Shape::Null => "null",
            Shape::List(_) => "list",
            Shape::Object(_) => "object",
            Shape::Unknown => "unknown",
        }
    }

    /// The shape of a JSON value, e.g. a schema default (used to check defaults against their types).
    pub fn from_json(value: &serde_json::Value) -> Shape {
        match value {
            serde_json::Value::Null => Shape::Null,
            serde_json::Value::Bool(flag) => Shape::Bool(*flag),
            serde_json::Value::Number(number) => Shape::Number(number.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(text) => Shape::String(text.clone()),
            serde_json::Value::Array(items) => {
                Shape::List(items.iter().map(Shape::from_json).collect())
            }
            serde_json::Value::Object(map) => Shape::Object(
                map.iter()
                    .map(|(key, value)| (key.clone(), Shape::from_json(value)))
                    .collect(),
            ),
        }
    }
}

/// `name = value` inside a body.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AttributeView {
    pub name: String,
    pub name_span: Span,
    pub value_span: Span,
    pub shape: Shape,
}

/// `ident "label" … { body }` inside a body.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BlockView {
    pub ident: String,
    pub ident_span: Span,
    pub labels: Vec<(String, Span)>,
    pub body: BodyView,
    /// The whole block, from its ident to its closing brace.
    pub span: Span,
}

/// The inside of a block: its attributes and nested blocks, in source order.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct BodyView {
    pub span: Span,
    pub attributes: Vec<AttributeView>,
    pub blocks: Vec<BlockView>,
}

/// One thing wrong with a body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub span: Span,
    /// One of the constants in [`summary`], so callers and tests can match on it.
    pub summary: &'static str,
    /// Why, and what to do about it.
    pub detail: String,
}

/// The constant summaries of [`Problem`]s.
pub mod summary {
    pub const UNSUPPORTED_ARGUMENT: &str = "Unsupported argument";
    pub const UNSUPPORTED_BLOCK_TYPE: &str = "Unsupported block type";
    pub const MISSING_REQUIRED_ARGUMENT: &str = "Missing required argument";
    pub const INCORRECT_ATTRIBUTE_VALUE_TYPE: &str = "Incorrect attribute value type";
    pub const INVALID_VALUE: &str = "Invalid value";
    pub const WRONG_NUMBER_OF_LABELS: &str = "Wrong number of labels";
    pub const DUPLICATE_BLOCK: &str = "Duplicate block";
    pub const DUPLICATE_ARGUMENT: &str = "Duplicate argument";
    pub const CONFLICTING_ARGUMENTS: &str = "Conflicting arguments";
    pub const ARGUMENT_REQUIRES_NEWER_VERSION: &str = "Argument requires a newer engine version";
    pub const BLOCK_REQUIRES_NEWER_VERSION: &str = "Block requires a newer engine version";
    pub const ARGUMENT_NOT_SUPPORTED_YET: &str = "Argument not supported yet";
}

/// Validates `body` (the inside of a block described by `schema`), recursively.
///
/// `declared` is the instance's declared engine version (`None` when unknown or unversioned: then no version
/// gates apply). Problems come back ordered by where they start in the source. A missing required argument of
/// `body` itself points at `body.span`; inside nested blocks it points at the nested block's ident.
pub fn validate_body(
    schema: &BlockSchema,
    body: &BodyView,
    declared: Option<&Version>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_body(schema, body, declared, body.span, &mut problems);
    problems.sort_by_key(|problem| (problem.span.start, problem.span.end));
    problems
}

/// Validates a whole block: its labels and version gate as well as its body (see [`validate_body`]).
pub fn validate_block(
    schema: &BlockSchema,
    block: &BlockView,
    declared: Option<&Version>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_block_header(schema, block, declared, &mut problems);
    check_body(
        schema,
        &block.body,
        declared,
        block.ident_span,
        &mut problems,
    );
    problems.sort_by_key(|problem| (problem.span.start, problem.span.end));
    problems
}

fn check_body(
    schema: &BlockSchema,
    body: &BodyView,
    declared: Option<&Version>,
    missing_span: Span,
    problems: &mut Vec<Problem>,
) {
    let mut seen_arguments: Vec<&str> = Vec::new();
    for attribute in &body.attributes {
        if seen_arguments.contains(&attribute.name.as_str()) {
            problems.push(Problem {
                span: attribute.name_span,
                summary: summary::DUPLICATE_ARGUMENT,
                detail: format!(
                    "The argument \"{}\" is set more than once in this {} block. Remove all but one.",
                    attribute.name, schema.name
                ),
            });
            continue;
        }
        seen_arguments.push(&attribute.name);
        match schema.argument(&attribute.name) {
            None => problems.push(unsupported_argument(schema, attribute)),
            Some(argument) => check_attribute(argument, attribute, declared, problems),
        }
    }

    // (block type, labels) of the blocks seen so far: a set, so that a body of thousands of roles stays linear.
    let mut seen_blocks: foldhash::HashSet<(&str, Vec<&str>)> = foldhash::HashSet::default();
    for block in &body.blocks {
        let Some(child) = schema.block(&block.ident) else {
            problems.push(unsupported_block(schema, block));
            continue;
        };
        let labels_ok = check_block_header(child, block, declared, problems);
        if labels_ok {
            check_duplicate_block(schema, child, block, &mut seen_blocks, problems);
        }
        check_body(child, &block.body, declared, block.ident_span, problems);
    }

    for argument in schema.arguments.iter().filter(|argument| argument.required) {
        if !body
            .attributes
            .iter()
            .any(|attribute| attribute.name == argument.name)
        {
            problems.push(Problem {
                span: missing_span,
                summary: summary::MISSING_REQUIRED_ARGUMENT,
                detail: format!(
                    "{} block needs the argument \"{}\" ({}). Add {} = <{}>.",
                    a_block(schema.name, true),
                    argument.name,
                    argument.ty,
                    argument.name,
                    argument.ty
                ),
            });
        }
    }

    for group in &schema.exactly_one_of {
        check_exactly_one_of(schema, group, body, missing_span, problems);
    }
}

/// Checks an argument that the schema knows: its version gate, then its value.
fn check_attribute(
    argument: &ArgumentSchema,
    attribute: &AttributeView,
    declared: Option<&Version>,
    problems: &mut Vec<Problem>,
) {
    if let (Some(declared), Some(since)) = (declared, &argument.since)
        && !declared.satisfies(since)
    {
        problems.push(Problem {
            span: attribute.name_span,
            summary: summary::ARGUMENT_REQUIRES_NEWER_VERSION,
            detail: format!(
                "The argument \"{}\" requires engine version >= {since} (declared {declared}). \
                 Set version to {since} or later, or remove the argument.",
                argument.name
            ),
        });
    }
    if attribute.shape == Shape::Null && !argument.required {
        // null means "unset" for an optional argument.
        return;
    }
    if let Some(reason) = argument.not_yet {
        problems.push(Problem {
            span: attribute.name_span,
            summary: summary::ARGUMENT_NOT_SUPPORTED_YET,
            detail: format!(
                "kip describes \"{}\" but cannot honour it yet: {reason}. Remove it; kip would otherwise run \
                 without it.",
                argument.name
            ),
        });
    }
    if let Err(mismatch) = argument.ty.check(&attribute.shape) {
        let location = format_path(argument.name, &mismatch.path);
        let (summary, detail) = match mismatch.kind {
            MismatchKind::Type { expected, found } => {
                let wanted = match &argument.ty {
                    ValueType::Port => "a TCP port (a whole number from 1 to 65535)".to_owned(),
                    ValueType::Count => "a whole number from 0 to 4294967295".to_owned(),
                    other => other.to_string(),
                };
                let mut detail = format!(
                    "\"{}\" must be {wanted}, got {found}{location}.",
                    argument.name
                );
                if matches!(expected, ValueType::Duration) {
                    detail.push_str(
                        " Write a duration as a string with a unit, such as \"5s\" or \"250ms\".",
                    );
                } else if matches!(expected, ValueType::Size) {
                    detail.push_str(" Write a size as a string with a unit, such as \"64mb\", or as a number of bytes.");
                }
                (summary::INCORRECT_ATTRIBUTE_VALUE_TYPE, detail)
            }
            MismatchKind::Invalid { expected, found } => {
                let detail = match &expected {
                    ValueType::Enum(allowed) => {
                        let mut detail = format!(
                            "\"{}\" must be one of {}, got {found}{location}.",
                            argument.name,
                            quoted_list(allowed)
                        );
                        let unquoted = found.trim_matches('"');
                        if let Some(suggestion) = did_you_mean(unquoted, allowed.iter().copied()) {
                            detail.push_str(&format!(" Did you mean \"{suggestion}\"?"));
                        }
                        detail
                    }
                    ValueType::Duration => format!(
                        "\"{}\" must be a duration such as \"30s\", \"250ms\" or \"1h30m\" \
                         (units ms, s, m, h, d), got {found}{location}.",
                        argument.name
                    ),
                    ValueType::Size => format!(
                        "\"{}\" must be a size such as \"64mb\", \"512kb\" or \"2gb\" (units b, kb, mb, gb, tb, \
                         any case, 1kb = 1024 bytes) or a whole number of bytes, got {found}{location}.",
                        argument.name
                    ),
                    ValueType::Port => format!(
                        "\"{}\" must be a TCP port, a whole number from 1 to 65535, got {found}{location}.",
                        argument.name
                    ),
                    ValueType::Count => format!(
                        "\"{}\" must be a whole number from 0 to 4294967295, got {found}{location}.",
                        argument.name
                    ),
                    other => format!(
                        "\"{}\" must be {other}, got {found}{location}.",
                        argument.name
                    ),
                };
                (summary::INVALID_VALUE, detail)
            }
        };
        problems.push(Problem {
            span: attribute.value_span,
            summary,
            detail,
        });
    } else if let Some(reason) = argument
        .value_check
        .and_then(|check| check.check(&attribute.shape))
    {
        problems.push(Problem {
            span: attribute.value_span,
            summary: summary::INVALID_VALUE,
            detail: format!("\"{}\": {reason}", argument.name),
        });
    }
}

/// ` at settings["x"][1]`, or nothing when the value itself is at fault.
fn format_path(name: &str, path: &[PathStep]) -> String {
    if path.is_empty() {
        return String::new();
    }
    let mut text = format!(" at {name}");
    for step in path {
        match step {
            PathStep::Index(index) => text.push_str(&format!("[{index}]")),
            PathStep::Key(key) => text.push_str(&format!("[{key:?}]")),
        }
    }
    text
}

/// Checks a known nested block's labels and version gate. Returns whether the label count was right
/// (duplicate detection only makes sense then).
fn check_block_header(
    schema: &BlockSchema,
    block: &BlockView,
    declared: Option<&Version>,
    problems: &mut Vec<Problem>,
) -> bool {
    if let (Some(declared), Some(since)) = (declared, &schema.since)
        && !declared.satisfies(since)
    {
        problems.push(Problem {
            span: block.ident_span,
            summary: summary::BLOCK_REQUIRES_NEWER_VERSION,
            detail: format!(
                "The {} block requires engine version >= {since} (declared {declared}). \
                 Set version to {since} or later, or remove the block.",
                schema.name
            ),
        });
    }

    let expected = schema.labels.len();
    let got = block.labels.len();
    if got != expected {
        let span = if got > expected {
            block.labels[expected].1.to(block.labels[got - 1].1)
        } else {
            block.ident_span
        };
        let needs = match expected {
            0 => "takes no labels".to_owned(),
            1 => format!("needs 1 label ({})", schema.labels[0]),
            _ => format!("needs {expected} labels ({})", schema.labels.join(", ")),
        };
        let example = example_header(schema);
        problems.push(Problem {
            span,
            summary: summary::WRONG_NUMBER_OF_LABELS,
            detail: format!(
                "{} block {needs}, got {got}. Write it as {example} {{ … }}.",
                a_block(schema.name, true)
            ),
        });
        return false;
    }

    for ((label, span), label_name) in block.labels.iter().zip(&schema.labels) {
        if label.contains('\0') {
            problems.push(Problem {
                span: *span,
                summary: summary::INVALID_VALUE,
                detail: format!(
                    "The {label_name} label of {} block contains a NUL character, which no engine accepts in a name.",
                    a_block(schema.name, false)
                ),
            });
        }
        if let Some(reason) = schema.label_check.and_then(|check| check.check(label)) {
            problems.push(Problem {
                span: *span,
                summary: summary::INVALID_VALUE,
                detail: format!(
                    "The {label_name} label of {} block is not a name the engine accepts: {reason}",
                    a_block(schema.name, false)
                ),
            });
        }
        if let Some(max) = schema.max_label_bytes
            && label.len() > max
        {
            problems.push(Problem {
                span: *span,
                summary: summary::INVALID_VALUE,
                detail: format!(
                    "The {label_name} label of {} block is {} bytes long; the engine allows at most {max} \
                     (longer names would be cut short by the engine and collide). Use a shorter name.",
                    a_block(schema.name, false),
                    label.len()
                ),
            });
        }
        if label.trim().is_empty() {
            problems.push(Problem {
                span: *span,
                summary: summary::INVALID_VALUE,
                detail: format!(
                    "The {label_name} label of {} block must not be empty.",
                    a_block(schema.name, false)
                ),
            });
        }
    }
    true
}

fn check_duplicate_block<'a>(
    parent: &BlockSchema,
    schema: &BlockSchema,
    block: &'a BlockView,
    seen: &mut foldhash::HashSet<(&'a str, Vec<&'a str>)>,
    problems: &mut Vec<Problem>,
) {
    let header_span = block
        .labels
        .last()
        .map_or(block.ident_span, |(_, span)| block.ident_span.to(*span));
    if !schema.repeatable {
        if !seen.insert((block.ident.as_str(), Vec::new())) {
            problems.push(Problem {
                span: header_span,
                summary: summary::DUPLICATE_BLOCK,
                detail: format!(
                    "Only one {} block is allowed in {} block. Merge them into one.",
                    schema.name,
                    a_block(parent.name, false)
                ),
            });
        }
        return;
    }
    if schema.labels.is_empty() {
        return;
    }
    let mine: Vec<&str> = block
        .labels
        .iter()
        .map(|(label, _)| label.as_str())
        .collect();
    if !seen.insert((block.ident.as_str(), mine)) {
        let written = block
            .labels
            .iter()
            .map(|(label, _)| format!("{label:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        problems.push(Problem {
            span: header_span,
            summary: summary::DUPLICATE_BLOCK,
            detail: format!(
                "{} {written} is declared more than once in this {} block. Rename or remove one of them.",
                schema.name, parent.name
            ),
        });
    }
}

fn check_exactly_one_of(
    schema: &BlockSchema,
    group: &[&'static str],
    body: &BodyView,
    missing_span: Span,
    problems: &mut Vec<Problem>,
) {
    let mut present: Vec<&AttributeView> = Vec::new();
    for attribute in &body.attributes {
        let in_group = group.contains(&attribute.name.as_str());
        let set = attribute.shape != Shape::Null;
        let already = present.iter().any(|other| other.name == attribute.name);
        if in_group && set && !already {
            present.push(attribute);
        }
    }
    let choices = quoted_list(group);
    match present.as_slice() {
        [] => problems.push(Problem {
            span: missing_span,
            summary: summary::MISSING_REQUIRED_ARGUMENT,
            detail: format!(
                "{} block needs exactly one of {choices}. Add one of them.",
                a_block(schema.name, true)
            ),
        }),
        [_] => {}
        [first, rest @ ..] => {
            for extra in rest {
                problems.push(Problem {
                    span: extra.name_span,
                    summary: summary::CONFLICTING_ARGUMENTS,
                    detail: format!(
                        "\"{}\" cannot be set together with \"{}\": {} block takes exactly one of {choices}. \
                         Keep one of them.",
                        extra.name,
                        first.name,
                        a_block(schema.name, false)
                    ),
                });
            }
        }
    }
}

fn unsupported_argument(schema: &BlockSchema, attribute: &AttributeView) -> Problem {
    let name = attribute.name.as_str();
    let mut detail = format!("An argument named \"{name}\" is not expected here.");
    if let Some(block) = schema.block(name) {
        detail = format!(
            "\"{name}\" is a block, not an argument: write {} {{ … }} instead.",
            example_header(block)
        );
    } else if let Some(suggestion) =
        did_you_mean(name, schema.arguments.iter().map(|argument| argument.name))
    {
        detail.push_str(&format!(" Did you mean \"{suggestion}\"?"));
    } else if schema.arguments.is_empty() {
        detail.push_str(&format!(
            " {} block takes no arguments.",
            a_block(schema.name, true)
        ));
    } else {
        let expected: Vec<&str> = schema
            .arguments
            .iter()
            .map(|argument| argument.name)
            .collect();
        detail.push_str(&format!(
            " {} block accepts {}.",
            a_block(schema.name, true),
            quoted_list(&expected)
        ));
    }
    Problem {
        span: attribute.name_span,
        summary: summary::UNSUPPORTED_ARGUMENT,
        detail,
    }
}

fn unsupported_block(schema: &BlockSchema, block: &BlockView) -> Problem {
    let ident = block.ident.as_str();
    let mut detail = format!("Blocks of type \"{ident}\" are not expected here.");
    if let Some(argument) = schema.argument(ident) {
        let placeholder = match argument.ty {
            ValueType::Map(_) => "{ … }",
            ValueType::List(_) => "[ … ]",
            _ => "…",
        };
        detail = format!(
            "\"{ident}\" is an argument, not a block: write {ident} = {placeholder} instead."
        );
    } else if let Some(suggestion) =
        did_you_mean(ident, schema.blocks.iter().map(|child| child.name))
    {
        detail.push_str(&format!(" Did you mean \"{suggestion}\"?"));
    } else if schema.blocks.is_empty() {
        detail.push_str(&format!(
            " {} block takes no nested blocks.",
            a_block(schema.name, true)
        ));
    } else {
        let expected: Vec<&str> = schema.blocks.iter().map(|child| child.name).collect();
        detail.push_str(&format!(
            " {} block accepts blocks {}.",
            a_block(schema.name, true),
            quoted_list(&expected)
        ));
    }
    Problem {
        span: block.ident_span,
        summary: summary::UNSUPPORTED_BLOCK_TYPE,
        detail,
    }
}

/// `role "<name>"`, the way a block header is written.
fn example_header(schema: &BlockSchema) -> String {
    let mut header = schema.name.to_owned();
    for label in &schema.labels {
        header.push_str(&format!(" \"<{label}>\""));
    }
    header
}

/// "a role", "an extension", "an s3": the article as the name is read aloud, capitalised at a sentence start.
fn a_block(name: &str, sentence_start: bool) -> String {
    let vowel_sound = name.starts_with(['a', 'e', 'i', 'o']) || name.starts_with("s3");
    let article = match (vowel_sound, sentence_start) {
        (true, true) => "An",
        (true, false) => "an",
        (false, true) => "A",
        (false, false) => "a",
    };
    format!("{article} {name}")
}
