//! Locals settle in dependency order whatever order they are declared in, each once: a chain declared backwards
//! gets its values, a cycle is reported with every local that waits on it, and a local read by others keeps the
//! value it was given (the checker evaluates each one with only the locals it reads).

#[path = "support/check.rs"]
mod check;

use check::check;

#[test]
fn a_chain_declared_backwards_settles_with_every_value() {
    let length = 2_000;
    let mut text = String::from("variable \"base\" {\n  default = 1\n}\n\nlocals {\n");
    for index in (1..length).rev() {
        text.push_str(&format!("  l{index} = local.l{} + 1\n", index - 1));
    }
    text.push_str("  l0 = var.base\n}\n");
    let checked = check(&text);
    assert!(
        !checked.diagnostics.has_errors(),
        "{:?}",
        checked.diagnostics.iter().next()
    );
    let config = checked.config.expect("a config without errors");
    assert_eq!(config.locals.len(), length);
    let known = |name: &str| config.locals[name].known().cloned();
    assert_eq!(
        known(&format!("l{}", length - 1)),
        Some(hcl::Value::from(length as u64))
    );
    assert_eq!(known("l0"), Some(hcl::Value::from(1u64)));
}

#[test]
fn a_cycle_is_reported_with_the_locals_that_wait_on_it() {
    let checked = check("locals {\n  a = local.b\n  b = local.a\n  c = local.a\n  d = 1\n}\n");
    let cycles: Vec<String> = checked
        .diagnostics
        .iter()
        .filter(|diagnostic| diagnostic.summary == "Cycle in local values")
        .map(|diagnostic| diagnostic.detail.clone())
        .collect();
    assert_eq!(cycles.len(), 3, "{cycles:?}");
    assert!(cycles[0].contains("a, b, c"), "{cycles:?}");
}
