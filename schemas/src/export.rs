//! The two published surfaces of the schemas: JSON for tools, Markdown for people.
//!
//! Both are rendered from the same [`EngineSchema`] values that validation uses ("one source, both
//! surfaces"), and both are deterministic, so the generated pages under `docs/schemas/` can be checked in
//! and verified by a test.
//!
//! # JSON format (`format` 1)
//!
//! ```text
//! { "format": 1,
//!   "engines": [ { "name": "postgres", "doc": "…", "majors": [14, …], "versioned": true, "instance": BLOCK } ] }
//! BLOCK    = { "name", "doc", "labels": ["name"], "repeatable", "object", "since": "18" | null,
//!              "arguments": [ARGUMENT], "blocks": [BLOCK], "exports": [EXPORT], "exactly_one_of": [["http", …]],
//!              "max_label_bytes": 63 | null }
//! ARGUMENT = { "name", "doc", "type": "list(string)", "required", "default": <JSON> | null,
//!              "sensitive", "since": "18" | null, "forces_replacement", "not_yet": "why" | null }
//! EXPORT   = { "name", "doc", "sensitive" }
//! ```
//!
//! Types are their display names (`"map(scalar)"`, `"one of \"a\", \"b\""`), versions their declared
//! text, defaults the JSON value a user would write. Keys within an object are sorted. Adding a key is
//! compatible; removing or changing the meaning of one bumps `format`.

use serde_json::{Value, json};

use crate::schema::{ArgumentSchema, BlockSchema, EngineSchema, ExportSchema, first_paragraph};

/// The `format` number of [`to_json`] documents.
pub const JSON_FORMAT: u64 = 1;

/// The command that rewrites the checked-in reference pages.
pub const REGENERATE_DOCS: &str = "UPDATE_DOCS=1 cargo test -p kip-schemas --test docs";

/// All engines as one JSON document (see the module docs for its format).
pub fn to_json(engines: &[EngineSchema]) -> Value {
    json!({
        "format": JSON_FORMAT,
        "engines": engines.iter().map(engine_json).collect::<Vec<_>>(),
    })
}

fn engine_json(engine: &EngineSchema) -> Value {
    json!({
        "name": engine.name,
        "doc": engine.doc,
        "majors": engine.majors,
        "versioned": engine.versioned,
        "instance": block_json(&engine.instance),
    })
}

fn block_json(block: &BlockSchema) -> Value {
    json!({
        "name": block.name,
        "doc": block.doc,
        "labels": block.labels,
        "repeatable": block.repeatable,
        "object": block.object,
        "since": block.since.as_ref().map(ToString::to_string),
        "arguments": block.arguments.iter().map(argument_json).collect::<Vec<_>>(),
        "blocks": block.blocks.iter().map(block_json).collect::<Vec<_>>(),
        "exports": block.exports.iter().map(export_json).collect::<Vec<_>>(),
        "exactly_one_of": block.exactly_one_of,
        "max_label_bytes": block.max_label_bytes,
    })
}

fn argument_json(argument: &ArgumentSchema) -> Value {
    json!({
        "name": argument.name,
        "doc": argument.doc,
        "type": argument.ty.to_string(),
        "required": argument.required,
        "default": argument.default,
        "sensitive": argument.sensitive,
        "since": argument.since.as_ref().map(ToString::to_string),
        "forces_replacement": argument.forces_replacement,
        "not_yet": argument.not_yet,
    })
}

fn export_json(export: &ExportSchema) -> Value {
    json!({ "name": export.name, "doc": export.doc, "sensitive": export.sensitive, "env": export.env })
}

/// The reference page of one engine: its doc, supported majors, then the instance block and every nested
/// block in depth-first order, each with its arguments and exports.
pub fn to_markdown(engine: &EngineSchema) -> String {
    let mut page = String::new();
    page.push_str(&format!("# `{}`\n\n", engine.name));
    page.push_str(&generated_notice());
    page.push_str(engine.doc.trim());
    page.push_str("\n\n");
    if engine.versioned {
        page.push_str(&format!(
            "**Supported major versions:** {}.\n\n",
            majors_text(engine)
        ));
    } else {
        page.push_str("**Not versioned:** there is no `version` argument.\n\n");
    }
    let instance_address = format!("{}.<name>", engine.name);
    write_block(&mut page, &engine.instance, &[], &instance_address);
    page
}

/// `docs/schemas/README.md`: one line per engine, linking to its page.
pub fn markdown_index(engines: &[EngineSchema]) -> String {
    let mut page = String::from("# Engine reference\n\n");
    page.push_str(&generated_notice());
    page.push_str(
        "One page per engine kip can run: every argument, nested block and exported attribute you can use in \
         `kip.hcl`. `kip schema ENGINE --markdown` prints the same pages and `kip schema --json` the same \
         content for tools.\n\n",
    );
    page.push_str("| Engine | Major versions | Description |\n|---|---|---|\n");
    for engine in engines {
        let majors = if engine.versioned {
            majors_text(engine)
        } else {
            "not versioned".to_owned()
        };
        page.push_str(&format!(
            "| [`{name}`]({name}.md) | {majors} | {summary} |\n",
            name = engine.name,
            summary = table_cell(&engine.summary()),
        ));
    }
    page.push_str(
        "\nIn the tables, **required** arguments must be set; the others are optional, with kip's default \
         shown when there is one. Badges: `since N` (needs engine version N or later; `kip lint` rejects it on \
         older versions), `sensitive` (redacted in plan output), `forces replacement` (changing it later \
         recreates the object instead of updating it in place), **not supported yet** (described, but `kip lint` \
         refuses it until kip can honour it).\n",
    );
    page
}

fn generated_notice() -> String {
    format!(
        "<!-- Generated from the kip-schemas crate; do not edit by hand. Regenerate with `{REGENERATE_DOCS}`. -->\n\n"
    )
}

fn majors_text(engine: &EngineSchema) -> String {
    engine
        .majors
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes one block section, then its nested blocks. `path` holds the headers of the enclosing blocks;
/// `address` is how a reference to this block is written, when it has one.
fn write_block(page: &mut String, block: &BlockSchema, path: &[String], address: &str) {
    let header = block_header(block);
    let mut trail: Vec<String> = path.to_vec();
    trail.push(header);
    let heading = trail
        .iter()
        .map(|part| format!("`{part}`"))
        .collect::<Vec<_>>()
        .join(" › ");
    page.push_str(&format!("## {heading}\n\n"));
    page.push_str(block.doc.trim());
    page.push_str("\n\n");

    let mut facts = Vec::new();
    if let Some(since) = &block.since {
        facts.push(format!("`since {since}`"));
    }
    if !path.is_empty() {
        facts.push(if block.repeatable {
            "may appear more than once".to_owned()
        } else {
            "at most once".to_owned()
        });
    }
    if block.object {
        facts.push("declares an object (a node of the graph)".to_owned());
    }
    if let Some(max) = block.max_label_bytes {
        facts.push(format!("its name is at most {max} bytes"));
    }
    if !facts.is_empty() {
        page.push_str(&format!("{}.\n\n", capitalise(&facts.join(" · "))));
    }

    if block.arguments.is_empty() {
        page.push_str("No arguments.\n\n");
    } else {
        page.push_str(
            "| Argument | Type | Required / default | Description |\n|---|---|---|---|\n",
        );
        for argument in &block.arguments {
            page.push_str(&argument_row(argument));
        }
        page.push('\n');
    }
    for group in &block.exactly_one_of {
        let names = group
            .iter()
            .map(|name| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ");
        page.push_str(&format!("Exactly one of {names} must be set.\n\n"));
    }

    let addressable = block.object && !block.labels.is_empty();
    if !block.exports.is_empty() {
        if addressable {
            page.push_str(&format!(
                "Exports, referenced as `{address}.<attribute>`:\n\n"
            ));
        } else {
            page.push_str("Exports:\n\n");
        }
        page.push_str("| Attribute | Description |\n|---|---|\n");
        for export in &block.exports {
            let badge = if export.sensitive { "`sensitive` " } else { "" };
            let env = export
                .env
                .map(|name| format!(" `kip env` also sets `{name}`."))
                .unwrap_or_default();
            page.push_str(&format!(
                "| `{}` | {badge}{}{env} |\n",
                export.name,
                table_cell(export.doc)
            ));
        }
        page.push('\n');
    }

    for child in &block.blocks {
        let child_address = if addressable && child.object && !child.labels.is_empty() {
            let labels: String = child
                .labels
                .iter()
                .map(|label| format!(".<{label}>"))
                .collect();
            format!("{address}.{}{labels}", child.name)
        } else {
            String::new()
        };
        write_block(page, child, &trail, &child_address);
    }
}

fn argument_row(argument: &ArgumentSchema) -> String {
    let requirement = if argument.required {
        "**required**".to_owned()
    } else if let Some(default) = &argument.default {
        format!("default `{}`", table_cell(&default.to_string()))
    } else {
        "optional".to_owned()
    };
    let mut badges = Vec::new();
    if let Some(since) = &argument.since {
        badges.push(format!("`since {since}`"));
    }
    if argument.sensitive {
        badges.push("`sensitive`".to_owned());
    }
    if argument.forces_replacement {
        badges.push("`forces replacement`".to_owned());
    }
    if let Some(reason) = argument.not_yet {
        badges.push(format!("**not supported yet** ({reason})"));
    }
    let badges = if badges.is_empty() {
        String::new()
    } else {
        format!("{} ", badges.join(" "))
    };
    format!(
        "| `{}` | `{}` | {requirement} | {badges}{} |\n",
        argument.name,
        table_cell(&argument.ty.to_string()),
        table_cell(argument.doc)
    )
}

/// `role "<name>"`: the block as it is written in `kip.hcl`.
fn block_header(block: &BlockSchema) -> String {
    let mut header = block.name.to_owned();
    for label in &block.labels {
        header.push_str(&format!(" \"<{label}>\""));
    }
    header
}

/// Text safe inside a table cell: one line, pipes escaped.
fn table_cell(text: &str) -> String {
    first_paragraph(text).replace('|', "\\|")
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
