//! No input makes the decoder panic: arbitrary text, and text built from kip's own vocabulary (engines, blocks,
//! references, meta-arguments) glued together in random, mostly invalid ways, which reaches much deeper into the
//! checker than random bytes do.

use std::path::Path;

use kip_core::config::{CheckOptions, check_sources};
use kip_core::source::{SourceFile, Sources};
use proptest::prelude::*;

fn check_text(files: &[String]) {
    let registry = kip_registry::embedded().expect("the embedded registry verifies");
    let options = CheckOptions {
        registry,
        vars: vec![("n".into(), "2".into()), ("undeclared".into(), "x".into())],
        env_vars: vec![("v".into(), "16".into())],
        extra_engines: Vec::new(),
        runnable: None,
    };
    let mut sources = Sources::default();
    for (index, text) in files.iter().enumerate() {
        let name = if index == 0 {
            "kip.hcl".to_owned()
        } else {
            format!("f{index}.kip.hcl")
        };
        sources.add(SourceFile::new(name.clone(), name.into(), text.clone()));
    }
    let checked = check_sources(Path::new("."), sources, &options);
    for diagnostic in checked.diagnostics.iter() {
        let resolved = diagnostic.resolve(&checked.sources);
        assert!(!diagnostic.summary.is_empty() && !diagnostic.detail.is_empty());
        if let Some(position) = resolved.position {
            assert!(position.start.line >= 1 && position.start.column >= 1);
        }
    }
    if checked.config.is_some() {
        assert!(
            !checked.diagnostics.has_errors(),
            "a config is only returned without errors"
        );
    }
}

const HEADERS: &[&str] = &[
    "postgres \"main\" {",
    "valkey \"cache\" {",
    "process \"web\" {",
    "nats \"bus\" {",
    "s3 \"s\" {",
    "mariadb \"m\" {",
    "variable \"n\" {",
    "variable \"v\" {",
    "locals {",
    "output \"o\" {",
    "role \"app\" {",
    "database \"shop\" {",
    "grant {",
    "user \"u\" {",
    "bucket \"b\" {",
    "stream \"S\" {",
    "schema \"s\" {",
    "wait_for \"process.web\" {",
    "wait_for \"\" {",
    "ready {",
    "kv \"k\" {",
    "postgress \"x\" {",
    "postgres {",
    "role {",
];

const ATTRIBUTES: &[&str] = &[
    "version = \"16\"",
    "version = 19",
    "version = var.v",
    "version = \"16.x\"",
    "count = var.n",
    "count = -1",
    "for_each = [\"a\"]",
    "for_each = { a = 1 }",
    "depends_on = [postgres.main]",
    "depends_on = [process.web]",
    "depends_on = 3",
    "owner = \"app\"",
    "login = true",
    "login = \"yes\"",
    "extensions = [\"pgcrypto\"]",
    "command = [\"x\"]",
    "env = { A = postgres.main.url }",
    "env = { A = postgres.main[0].url }",
    "x = postgres.main[*].url",
    "value = postgres.main.database.shop.url",
    "a = local.a",
    "b = local.b",
    "a = local.b",
    "type = number",
    "type = list(string)",
    "type = strin",
    "default = 1",
    "default = [1, \"a\"]",
    "x = count.index",
    "y = each.key",
    "z = upper(\"a\")",
    "z = nope(1)",
    "w = \"${var.n}-${local.a}\"",
    "io_method = \"sync\"",
    "http = \"http://x\"",
    "settings = { a = 1 }",
    "maxmemory = \"64mb\"",
    "maxmemory = \"lots\"",
    "role = \"app\"",
    "database = \"shop\"",
    "privileges = [\"ALL\"]",
    "subjects = [\"a.>\"]",
    "condition = \"ready\"",
    "x = [for s in var.l : s]",
    "q = { for k, v in local.m : k => v }",
    "port = 0",
    "port = \"x\"",
    "u = postgres.main.role.app.password",
    "r = process.web.url",
];

/// A block with a header from `HEADERS`, attributes from `ATTRIBUTES`, and nested blocks, braces balanced, so
/// that most generated files parse and reach the checker.
fn block(depth: u32) -> BoxedStrategy<String> {
    let attributes = prop::collection::vec(prop::sample::select(ATTRIBUTES), 0..6);
    if depth == 0 {
        return (prop::sample::select(HEADERS), attributes)
            .prop_map(|(header, lines)| format!("{header}\n{}\n}}\n", lines.join("\n")))
            .boxed();
    }
    (
        prop::sample::select(HEADERS),
        attributes,
        prop::collection::vec(block(depth - 1), 0..3),
    )
        .prop_map(|(header, lines, children)| {
            format!("{header}\n{}\n{}}}\n", lines.join("\n"), children.concat())
        })
        .boxed()
}

fn piece_text() -> impl Strategy<Value = String> {
    prop::collection::vec(block(2), 0..6).prop_map(|blocks| blocks.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        check_text(&[text]);
    }

    #[test]
    fn kip_shaped_text_never_panics(first in piece_text(), second in piece_text()) {
        check_text(&[first, second]);
    }
}

#[test]
fn known_tricky_inputs() {
    for text in [
        "",
        "\n",
        "}",
        "postgres",
        "postgres \"\" {}",
        "postgres \"a\" \"b\" {}",
        "x = 1",
        "process \"p\" {\n  command = [\"a\"]\n  depends_on = [process.p]\n}\n",
        "locals {\n  a = local.a\n}\n",
        "variable \"v\" {\n  default = var.v\n}\n",
        "postgres \"m\" {\n  version = \"16\"\n  count = 100000000000\n}\n",
    ] {
        check_text(&[text.to_owned()]);
    }
}
