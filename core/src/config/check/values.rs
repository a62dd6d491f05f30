//! Evaluating what is known before apply: literals, variables, known locals, `count.index` and `each.*`.
//!
//! Every pass that needs a value comes here, so that an expression is judged evaluable (or deferred to apply,
//! when it reads an engine) in one place and evaluated against one context. A value that does not depend on the
//! instance key is evaluated once, cached by file and span, so a failure is reported once, not once per pass.

use std::collections::BTreeSet;

use hcl::edit::expr::Expression;
use hcl::eval::{Context, Evaluate};
use kip_schemas::did_you_mean;

use super::{Checker, span_of};
use crate::config::eval;
use crate::config::refs::{self, IndexKey, Step};
use crate::source::FileId;

/// What an expression needs before it can be evaluated.
#[derive(Debug, Default, Clone, Copy)]
struct Needs {
    /// Reads an engine attribute or a local that does: known only at apply.
    runtime: bool,
    /// Reads `count.index` or `each.*`: known per expanded instance.
    iteration: bool,
}

impl Checker<'_> {
    /// Evaluates an expression that needs no engine; errors become diagnostics.
    pub(super) fn evaluate(
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
        let base = self.base_context.take().expect("just built");
        let value = self.evaluate_iterated(file, edit, expr, iteration, &base);
        self.base_context = Some(base);
        value
    }

    /// The value of a local's expression, in a context that holds only the locals it reads (`reads`), settled
    /// already: a chain of n locals costs O(n), not a context of every local so far for each one.
    pub(super) fn evaluate_local(
        &mut self,
        file: FileId,
        edit: &Expression,
        expr: &hcl::Expression,
        reads: &BTreeSet<&str>,
    ) -> Option<hcl::Value> {
        let mut context = Context::new();
        eval::declare_functions(&mut context);
        context.declare_var("var", hcl::Value::Object(self.context_values.vars.clone()));
        let locals: hcl::Map<String, hcl::Value> = reads
            .iter()
            .filter_map(|name| {
                let value = self.context_values.locals.get(*name)?;
                Some(((*name).to_owned(), value.clone()))
            })
            .collect();
        context.declare_var("local", hcl::Value::Object(locals));
        self.evaluate_iterated(file, edit, expr, None, &context)
    }

    fn evaluate_iterated(
        &mut self,
        file: FileId,
        edit: &Expression,
        expr: &hcl::Expression,
        iteration: Option<(&Option<IndexKey>, &Option<hcl::Value>)>,
        base: &Context<'static>,
    ) -> Option<hcl::Value> {
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

    /// The value of an expression if it is known before apply; `None` when it reads an engine, or depends on
    /// the instance key and no key is given, or failed to evaluate (reported once).
    pub(super) fn known_value(
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
