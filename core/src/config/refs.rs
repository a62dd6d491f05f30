//! Finding the references inside an expression: every traversal rooted at a name (`var.port`,
//! `postgres.main.database.shop.url`, `count.index`), with its span.
//!
//! References are what make the graph: a block that mentions `postgres.main.url` depends on `postgres.main`. The
//! names a `for` expression introduces (`[for name in var.names : upper(name)]`) are local to it and are not
//! references, so the walker keeps a scope of them.

use std::ops::Range;

use hcl::edit::Span;
use hcl::edit::expr::{Expression, ForExpr, Traversal, TraversalOperator};
use hcl::edit::template::ForTemplateExpr;
use hcl::edit::visit::{self, Visit};

/// One step after the root name of a traversal.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `.name`
    Attr(String),
    /// `[expr]`, holding the literal key when the index is a literal number or string.
    Index(Option<IndexKey>),
    /// `[*]` or `.*`
    Splat,
}

pub use crate::address::IndexKey;

/// A traversal rooted at a name, as written in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct RawReference {
    pub root: String,
    pub steps: Vec<Step>,
    /// The span of the whole traversal (root and steps).
    pub span: Range<usize>,
}

/// Collects every reference in `expr`, outermost first, skipping names bound by `for` expressions.
pub fn collect(expr: &Expression) -> Vec<RawReference> {
    let mut collector = Collector {
        scope: Vec::new(),
        found: Vec::new(),
    };
    collector.visit_expr(expr);
    collector.found
}

struct Collector {
    scope: Vec<String>,
    found: Vec<RawReference>,
}

impl Collector {
    fn record(&mut self, root: &str, steps: Vec<Step>, span: Option<Range<usize>>) {
        if self.scope.iter().any(|bound| bound == root) {
            return;
        }
        self.found.push(RawReference {
            root: root.to_owned(),
            steps,
            span: span.unwrap_or(0..0),
        });
    }

    fn with_scope(
        &mut self,
        names: impl IntoIterator<Item = String>,
        body: impl FnOnce(&mut Self),
    ) {
        let depth = self.scope.len();
        self.scope.extend(names);
        body(self);
        self.scope.truncate(depth);
    }
}

fn literal_index(expr: &Expression) -> Option<IndexKey> {
    match expr {
        Expression::Number(number) => number.value().as_u64().map(IndexKey::Number),
        Expression::String(string) => Some(IndexKey::String(string.value().clone())),
        _ => None,
    }
}

impl Visit for Collector {
    fn visit_expr(&mut self, expr: &Expression) {
        match expr {
            Expression::Variable(name) => self.record(name.as_str(), Vec::new(), name.span()),
            _ => visit::visit_expr(self, expr),
        }
    }

    fn visit_traversal(&mut self, traversal: &Traversal) {
        let Expression::Variable(root) = &traversal.expr else {
            // A traversal into a computed value (`func(x).name`): only the inner expressions can hold references.
            visit::visit_traversal(self, traversal);
            return;
        };
        let steps = traversal
            .operators
            .iter()
            .map(|operator| match operator.value() {
                TraversalOperator::GetAttr(name) => Step::Attr(name.as_str().to_owned()),
                TraversalOperator::Index(index) => Step::Index(literal_index(index)),
                TraversalOperator::LegacyIndex(index) => {
                    Step::Index(Some(IndexKey::Number(*index.value())))
                }
                TraversalOperator::AttrSplat(_) | TraversalOperator::FullSplat(_) => Step::Splat,
            })
            .collect();
        self.record(root.as_str(), steps, traversal.span());
        for operator in &traversal.operators {
            if let TraversalOperator::Index(index) = operator.value() {
                self.visit_expr(index);
            }
        }
    }

    fn visit_for_expr(&mut self, for_expr: &ForExpr) {
        self.visit_expr(&for_expr.intro.collection_expr);
        let names = for_expr
            .intro
            .key_var
            .iter()
            .chain(std::iter::once(&for_expr.intro.value_var))
            .map(|name| name.as_str().to_owned());
        self.with_scope(names.collect::<Vec<_>>(), |this| {
            if let Some(key) = &for_expr.key_expr {
                this.visit_expr(key);
            }
            this.visit_expr(&for_expr.value_expr);
            if let Some(cond) = &for_expr.cond {
                this.visit_expr(&cond.expr);
            }
        });
    }

    fn visit_for_template_expr(&mut self, for_expr: &ForTemplateExpr) {
        // hcl-edit's default walk skips the collection expression, which can hold references of its own.
        self.visit_expr(&for_expr.collection_expr);
        let names = for_expr
            .key_var
            .iter()
            .chain(std::iter::once(&for_expr.value_var))
            .map(|name| name.as_str().to_owned());
        self.with_scope(names.collect::<Vec<_>>(), |this| {
            this.visit_template(&for_expr.template)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(source: &str) -> Vec<(String, Vec<Step>)> {
        let expr = hcl::edit::parser::parse_expr(source).unwrap();
        collect(&expr)
            .into_iter()
            .map(|r| (r.root, r.steps))
            .collect()
    }

    fn attr(name: &str) -> Step {
        Step::Attr(name.into())
    }

    #[test]
    fn finds_traversals_templates_and_bare_names() {
        assert_eq!(
            refs(r#""${postgres.main.database.shop.url}?x=${var.x}""#),
            vec![
                (
                    "postgres".into(),
                    vec![attr("main"), attr("database"), attr("shop"), attr("url")]
                ),
                ("var".into(), vec![attr("x")]),
            ]
        );
        assert_eq!(
            refs("[valkey.cache]"),
            vec![("valkey".into(), vec![attr("cache")])]
        );
        assert_eq!(
            refs(r#"postgres.main["eu"].url"#),
            vec![(
                "postgres".into(),
                vec![
                    attr("main"),
                    Step::Index(Some(IndexKey::String("eu".into()))),
                    attr("url")
                ]
            )]
        );
        assert_eq!(refs("postgres.main[*].url")[0].1[1], Step::Splat);
    }

    #[test]
    fn names_bound_by_for_expressions_are_not_references() {
        assert_eq!(
            refs("[for name in var.names : upper(name) if name != local.skip]"),
            vec![
                ("var".into(), vec![attr("names")]),
                ("local".into(), vec![attr("skip")])
            ]
        );
        assert_eq!(
            refs(r#""%{ for k, v in var.m }${k}=${v}${local.sep}%{ endfor }""#),
            vec![
                ("var".into(), vec![attr("m")]),
                ("local".into(), vec![attr("sep")])
            ]
        );
    }

    #[test]
    fn index_expressions_are_walked_too() {
        assert_eq!(
            refs("postgres.main[var.i]"),
            vec![
                ("postgres".into(), vec![attr("main"), Step::Index(None)]),
                ("var".into(), vec![attr("i")])
            ]
        );
    }
}
