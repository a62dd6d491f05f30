//! Values that read other instances: `env = { DATABASE_URL = postgres.main.database.shop.url }`.
//!
//! The checker leaves such an expression deferred (it made a graph edge of it). Here it is evaluated against the
//! exports of the instances that exist: during plan, the instances applied and unchanged by this plan; during
//! apply, every instance applied so far (the graph makes the referenced one come first). An expression that
//! reads an instance not in [`Scope`] is *unknown* — the plan shows `(known after apply)`. A value computed from
//! a sensitive export (a URL with a password) is sensitive wherever it goes.

use std::collections::{BTreeMap, BTreeSet};

use hcl::eval::{Context, Evaluate as _};
use kip_schemas::{BlockSchema, EngineSchema};

use crate::address::{Address, IndexKey, PathLabel};
use crate::config::refs::{self, RawReference, Step};
use crate::config::{Config, Instance, Value};
use crate::engine::Exports;

/// What evaluating a deferred value gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluated {
    Known {
        value: serde_json::Value,
        sensitive: bool,
    },
    /// It reads an instance whose exports are not known yet.
    Unknown { sensitive: bool },
}

/// An expression could not be evaluated although everything it reads is known.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot evaluate `{expression}`: {reason}")]
pub struct EvaluationError {
    pub expression: String,
    pub reason: String,
}

/// The exports of the instances that exist, as the values references read.
#[derive(Debug, Default, Clone)]
pub struct Scope {
    /// Engine name → instance name → exports tree (or a map by key / list by index for expanded instances).
    engines: BTreeMap<String, hcl::Map<String, hcl::Value>>,
    available: BTreeSet<Address>,
}

impl Scope {
    pub fn new() -> Scope {
        Scope::default()
    }

    /// Whether the exports of `instance` are in the scope.
    pub fn has(&self, instance: &Address) -> bool {
        self.available.contains(instance)
    }

    /// Adds an instance's exports and its objects' (`postgres.main.database.shop.url`).
    pub fn add_instance(
        &mut self,
        instance: &Address,
        exports: Exports,
        objects: impl IntoIterator<Item = (Address, Exports)>,
    ) {
        let mut tree = exports_value(exports);
        for (object, exports) in objects {
            insert_object(&mut tree, &object.path, exports_value(exports));
        }
        let names = self.engines.entry(instance.engine.clone()).or_default();
        match &instance.key {
            None => {
                names.insert(instance.name.clone(), tree);
            }
            Some(key) => {
                let slot = names
                    .entry(instance.name.clone())
                    .or_insert_with(|| hcl::Value::Object(hcl::Map::new()));
                if let hcl::Value::Object(by_key) = slot {
                    let key = match key {
                        IndexKey::Number(number) => number.to_string(),
                        IndexKey::String(text) => text.clone(),
                    };
                    by_key.insert(key, tree);
                }
            }
        }
        self.available.insert(instance.instance_address());
    }

    /// Evaluates `expression`, written in `instance` (for `count.index` and `each.*`), against this scope.
    pub fn evaluate(
        &self,
        config: &Config,
        expression: &hcl::Expression,
        instance: Option<&Instance>,
    ) -> Result<Evaluated, EvaluationError> {
        let mut reads = Reads::default();
        collect_reads(config, expression, &mut reads, 0);
        let sensitive = reads.sensitive;
        if reads
            .instances
            .iter()
            .any(|read| !self.available.contains(read))
        {
            return Ok(Evaluated::Unknown { sensitive });
        }
        let context = self.context(config, instance);
        let value = expression
            .evaluate(&context)
            .map_err(|errors| EvaluationError {
                expression: hcl::format::to_string(expression).unwrap_or_default(),
                reason: errors.to_string(),
            })?;
        let value = serde_json::to_value(&value).map_err(|error| EvaluationError {
            expression: hcl::format::to_string(expression).unwrap_or_default(),
            reason: error.to_string(),
        })?;
        Ok(Evaluated::Known { value, sensitive })
    }

    fn context(&self, config: &Config, instance: Option<&Instance>) -> Context<'static> {
        let mut context = Context::new();
        crate::config::declare_functions(&mut context);
        let vars: hcl::Map<String, hcl::Value> = config
            .variables
            .iter()
            .map(|variable| (variable.name.clone(), variable.value.clone()))
            .collect();
        context.declare_var("var", hcl::Value::Object(vars));
        let mut locals = hcl::Map::new();
        let mut deferred = Vec::new();
        for (name, value) in &config.locals {
            match value {
                Value::Known(value) => {
                    locals.insert(name.clone(), value.clone());
                }
                Value::Deferred(expression) => deferred.push((name, expression)),
            }
        }
        for (engine, names) in &self.engines {
            context.declare_var(engine.clone(), hcl::Value::Object(names.clone()));
        }
        // Locals that read engines, in rounds: each round settles those whose inputs are settled.
        for _ in 0..=deferred.len() {
            context.declare_var("local", hcl::Value::Object(locals.clone()));
            let mut progress = false;
            deferred.retain(|(name, expression)| match expression.evaluate(&context) {
                Ok(value) => {
                    locals.insert((*name).clone(), value);
                    progress = true;
                    false
                }
                Err(_) => true,
            });
            if !progress {
                break;
            }
        }
        context.declare_var("local", hcl::Value::Object(locals));
        if let Some(instance) = instance {
            match &instance.address.key {
                Some(IndexKey::Number(index)) => {
                    let mut count = hcl::Map::new();
                    count.insert("index".to_owned(), hcl::Value::from(*index));
                    context.declare_var("count", hcl::Value::Object(count));
                }
                Some(IndexKey::String(key)) => {
                    let mut each = hcl::Map::new();
                    each.insert("key".to_owned(), hcl::Value::from(key.clone()));
                    each.insert(
                        "value".to_owned(),
                        instance.each_value.clone().unwrap_or(hcl::Value::Null),
                    );
                    context.declare_var("each", hcl::Value::Object(each));
                }
                None => {}
            }
        }
        context
    }
}

/// The instances an expression reads (through locals too), and whether anything it reads is sensitive.
#[derive(Debug, Default)]
struct Reads {
    instances: BTreeSet<Address>,
    sensitive: bool,
}

/// The instance addresses an expression reads.
pub fn instances_read(config: &Config, expression: &hcl::Expression) -> BTreeSet<Address> {
    let mut reads = Reads::default();
    collect_reads(config, expression, &mut reads, 0);
    reads.instances
}

fn collect_reads(config: &Config, expression: &hcl::Expression, reads: &mut Reads, depth: usize) {
    let edit = hcl::edit::expr::Expression::from(expression.clone());
    for reference in refs::collect(&edit) {
        if reference.root == "local" {
            // A local that reads engines reads them for whoever reads it (locals cannot form cycles).
            if let (Some(Step::Attr(name)), true) = (reference.steps.first(), depth < 32)
                && let Some(Value::Deferred(inner)) = config.locals.get(name)
            {
                collect_reads(config, inner, reads, depth + 1);
            }
            continue;
        }
        let Some(engine) = config.engine_schema(&reference.root) else {
            continue;
        };
        read_reference(config, engine, &reference, reads);
    }
}

/// Records what one engine reference reads: the instances (every one of them for a splat or computed index)
/// and whether the value it reaches is, or contains, a sensitive export.
fn read_reference(
    config: &Config,
    engine: &'static EngineSchema,
    reference: &RawReference,
    reads: &mut Reads,
) {
    let mut steps = reference.steps.iter().peekable();
    let Some(Step::Attr(name)) = steps.next() else {
        return;
    };
    let declared: Vec<&Instance> = config
        .instances
        .iter()
        .filter(|instance| instance.engine.name == engine.name && instance.address.name == *name)
        .collect();
    let keyed = declared
        .iter()
        .any(|instance| instance.address.key.is_some());
    let chosen: Vec<&Instance> = match steps.peek() {
        Some(Step::Index(Some(key))) if keyed => {
            steps.next();
            declared
                .into_iter()
                .filter(|instance| match (&instance.address.key, key) {
                    (Some(IndexKey::Number(n)), IndexKey::String(text)) => {
                        text.parse::<u64>().ok() == Some(*n)
                    }
                    (Some(have), want) => have == want,
                    (None, _) => false,
                })
                .collect()
        }
        Some(Step::Index(_) | Step::Splat) if keyed => {
            steps.next();
            declared
        }
        _ => declared,
    };
    for instance in &chosen {
        reads.instances.insert(instance.address.clone());
    }
    // Walk objects, then the export.
    let mut schema: &BlockSchema = &engine.instance;
    loop {
        match steps.next() {
            None => {
                // The whole node: sensitive if anything it exports is.
                reads.sensitive |= any_sensitive(schema);
                return;
            }
            Some(Step::Attr(attr)) => {
                if let Some(child) = schema
                    .blocks
                    .iter()
                    .find(|child| child.name == attr && child.object)
                {
                    // Skip the label (or position) and go on inside the object's schema.
                    steps.next();
                    schema = child;
                    continue;
                }
                reads.sensitive |= schema.export(attr).is_some_and(|export| export.sensitive);
                return;
            }
            Some(_) => {
                reads.sensitive |= any_sensitive(schema);
                return;
            }
        }
    }
}

fn any_sensitive(schema: &BlockSchema) -> bool {
    schema.exports.iter().any(|export| export.sensitive)
        || schema
            .blocks
            .iter()
            .filter(|block| block.object)
            .any(any_sensitive)
}

fn exports_value(exports: Exports) -> hcl::Value {
    let map: hcl::Map<String, hcl::Value> = exports
        .into_iter()
        .map(|(name, value)| (name, json_to_hcl(value)))
        .collect();
    hcl::Value::Object(map)
}

/// Puts an object's exports at its path in the instance's tree: `database` → `shop` → exports.
fn insert_object(tree: &mut hcl::Value, path: &[crate::address::PathStep], value: hcl::Value) {
    let Some((step, rest)) = path.split_first() else {
        if let (hcl::Value::Object(target), hcl::Value::Object(source)) = (tree, value) {
            target.extend(source);
        }
        return;
    };
    let hcl::Value::Object(map) = tree else {
        return;
    };
    let kind = map
        .entry(step.kind.clone())
        .or_insert_with(|| hcl::Value::Object(hcl::Map::new()));
    let hcl::Value::Object(by_label) = kind else {
        return;
    };
    let label = match &step.label {
        PathLabel::Name(name) => name.clone(),
        PathLabel::Index(index) => index.to_string(),
    };
    let slot = by_label
        .entry(label)
        .or_insert_with(|| hcl::Value::Object(hcl::Map::new()));
    insert_object(slot, rest, value);
}

fn json_to_hcl(value: serde_json::Value) -> hcl::Value {
    match value {
        serde_json::Value::Null => hcl::Value::Null,
        serde_json::Value::Bool(flag) => hcl::Value::Bool(flag),
        serde_json::Value::Number(number) => match number.as_i64() {
            Some(integer) => hcl::Value::from(integer),
            None => number
                .as_f64()
                .and_then(hcl::Number::from_f64)
                .map_or(hcl::Value::Null, hcl::Value::Number),
        },
        serde_json::Value::String(text) => hcl::Value::String(text),
        serde_json::Value::Array(items) => {
            hcl::Value::Array(items.into_iter().map(json_to_hcl).collect())
        }
        serde_json::Value::Object(map) => hcl::Value::Object(
            map.into_iter()
                .map(|(key, value)| (key, json_to_hcl(value)))
                .collect(),
        ),
    }
}
