//! What the configuration implies, node by node, built from the engine's schema rather than by the provider.
//!
//! Every argument the schema documents becomes an attribute of its node: the declared value, else the schema's
//! default, else `null`. Configuration sub-blocks (`ready {}`, `wait_for "x" {}`) become attributes holding
//! their own arguments the same way. `sensitive` and `forces_replacement` come from the schema too, so what the
//! plan redacts and what it replaces is the schema's word. A value that reads another instance is evaluated
//! against the [`Scope`] of instances that exist, or left unknown.
//!
//! Because the provider receives every attribute and reads them into structs that deny unknown fields, an
//! argument added to a schema but not to its provider fails that provider's tests instead of being dropped.

// Errors here carry resolve, supervisor and engine errors whole (with the log lines they quote); they are built once
// per failed instance, never in a loop, so boxing them would cost clarity for nothing.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;

use kip_schemas::BlockSchema;

use crate::address::Address;
use crate::config::{Body, Config, Instance, Value};
use crate::engine::Engine;
use crate::graph::Graph;
use crate::plan::{Attributes, Desired, INSTANCE};
use crate::references::{Evaluated, EvaluationError, Scope};

/// The attribute holding a versioned instance's declared version (`"16"`, `"16.14"`).
pub const VERSION: &str = "version";
/// The attribute holding a versioned instance's major version: a new major replaces the instance when the
/// engine's on-disk format changes between majors.
pub const MAJOR: &str = "major";
/// The attribute holding the account an instance runs as, when `run_as` is set.
pub const RUN_AS: &str = "run_as";

/// Why a node's desired attributes could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{address}: the value of `{attribute}` cannot be computed")]
pub struct DesiredError {
    pub address: Address,
    pub attribute: String,
    #[source]
    pub source: EvaluationError,
}

/// The desired nodes of `instance`: the instance itself, then its objects in declaration order.
pub fn desired_nodes(
    config: &Config,
    graph: &Graph,
    instance: &Instance,
    engine: &dyn Engine,
    scope: &Scope,
) -> Result<Vec<Desired>, DesiredError> {
    let schema = instance.engine;
    let builder = Builder {
        config,
        instance,
        scope,
    };
    let mut node = builder.node(
        &instance.address,
        INSTANCE,
        &schema.instance,
        &instance.body,
        &["version"],
    )?;
    if schema.versioned
        && let Some(version) = &instance.version
    {
        node.attributes.insert(
            VERSION.into(),
            serde_json::Value::String(version.to_string()),
        );
        node.attributes
            .insert(MAJOR.into(), serde_json::Value::from(version.major));
        if schema.replace_on_new_major {
            node.replace_on.insert(MAJOR.into());
        }
    }
    if let Some(run_as) = &instance.run_as {
        node.attributes
            .insert(RUN_AS.into(), serde_json::Value::String(run_as.clone()));
        // The data belongs to that account: another one needs a new data directory.
        node.replace_on.insert(RUN_AS.into());
    }
    node.prevent_destroy = instance.prevent_destroy;
    node.depends_on = instance_dependencies(graph, instance);
    engine.derive(&mut node);
    let mut nodes = vec![node];
    builder.objects(engine, &schema.instance, &instance.body, &mut nodes)?;
    Ok(nodes)
}

/// The other instances `instance` (or any of its objects) depends on, in address order.
pub fn instance_dependencies(graph: &Graph, instance: &Instance) -> Vec<Address> {
    let mut nodes = vec![instance.address.clone()];
    collect_object_addresses(&instance.body, &mut nodes);
    let mut instances = BTreeSet::new();
    for node in &nodes {
        for dependency in graph.dependencies(node) {
            let owner = dependency.address.instance_address();
            if owner != instance.address {
                instances.insert(owner);
            }
        }
    }
    instances.into_iter().collect()
}

fn collect_object_addresses(body: &Body, into: &mut Vec<Address>) {
    for block in &body.blocks {
        if let Some(address) = &block.address {
            into.push(address.clone());
        }
        collect_object_addresses(&block.body, into);
    }
}

struct Builder<'a> {
    config: &'a Config,
    instance: &'a Instance,
    scope: &'a Scope,
}

/// One attribute's value, and what is known about it.
struct Built {
    value: serde_json::Value,
    sensitive: bool,
    unknown: bool,
}

impl Builder<'_> {
    fn node(
        &self,
        address: &Address,
        kind: &str,
        schema: &BlockSchema,
        body: &Body,
        skip: &[&str],
    ) -> Result<Desired, DesiredError> {
        let mut node = Desired {
            address: address.clone(),
            engine: self.instance.engine.name.to_owned(),
            kind: kind.to_owned(),
            attributes: Attributes::new(),
            unknown: BTreeSet::new(),
            replace_on: BTreeSet::new(),
            sensitive: BTreeSet::new(),
            prevent_destroy: false,
            depends_on: Vec::new(),
        };
        let built = self.body(address, schema, body, skip)?;
        for (name, attribute) in built {
            if attribute.sensitive {
                node.sensitive.insert(name.clone());
            }
            if attribute.unknown {
                node.unknown.insert(name.clone());
            }
            node.attributes.insert(name, attribute.value);
        }
        for argument in &schema.arguments {
            if skip.contains(&argument.name) {
                continue;
            }
            if argument.sensitive {
                node.sensitive.insert(argument.name.to_owned());
            }
            if argument.forces_replacement {
                node.replace_on.insert(argument.name.to_owned());
            }
        }
        Ok(node)
    }

    /// The attributes of a body: every argument of its schema and every configuration sub-block.
    fn body(
        &self,
        address: &Address,
        schema: &BlockSchema,
        body: &Body,
        skip: &[&str],
    ) -> Result<Vec<(String, Built)>, DesiredError> {
        let mut attributes = Vec::new();
        for argument in &schema.arguments {
            if skip.contains(&argument.name) {
                continue;
            }
            let built = match body.attributes.get(argument.name) {
                Some(attribute) => self.value(address, argument.name, &attribute.value)?,
                None => Built {
                    value: argument.default.clone().unwrap_or(serde_json::Value::Null),
                    sensitive: false,
                    unknown: false,
                },
            };
            attributes.push((argument.name.to_owned(), built));
        }
        for child in schema.blocks.iter().filter(|child| !child.object) {
            let blocks: Vec<_> = body
                .blocks
                .iter()
                .filter(|block| block.kind == child.name)
                .collect();
            let mut sensitive = false;
            let mut unknown = false;
            let mut one =
                |block: &crate::config::Block| -> Result<serde_json::Value, DesiredError> {
                    let mut map = serde_json::Map::new();
                    for (name, built) in self.body(address, child, &block.body, &[])? {
                        sensitive |= built.sensitive;
                        unknown |= built.unknown;
                        map.insert(name, built.value);
                    }
                    Ok(serde_json::Value::Object(map))
                };
            let value = if !child.repeatable {
                match blocks.first() {
                    Some(block) => one(block)?,
                    None => serde_json::Value::Null,
                }
            } else if child.labels.is_empty() {
                serde_json::Value::Array(
                    blocks
                        .iter()
                        .map(|block| one(block))
                        .collect::<Result<_, _>>()?,
                )
            } else {
                let mut by_label = serde_json::Map::new();
                for block in &blocks {
                    by_label.insert(block.label.clone().unwrap_or_default(), one(block)?);
                }
                serde_json::Value::Object(by_label)
            };
            attributes.push((
                child.name.to_owned(),
                Built {
                    value,
                    sensitive,
                    unknown,
                },
            ));
        }
        Ok(attributes)
    }

    fn value(&self, address: &Address, name: &str, value: &Value) -> Result<Built, DesiredError> {
        match value {
            Value::Known(value) => Ok(Built {
                value: serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
                sensitive: false,
                unknown: false,
            }),
            Value::Deferred(expression) => {
                match self
                    .scope
                    .evaluate(self.config, expression, Some(self.instance))
                    .map_err(|source| DesiredError {
                        address: address.clone(),
                        attribute: name.to_owned(),
                        source,
                    })? {
                    Evaluated::Known { value, sensitive } => Ok(Built {
                        value,
                        sensitive,
                        unknown: false,
                    }),
                    Evaluated::Unknown { sensitive } => Ok(Built {
                        value: serde_json::Value::Null,
                        sensitive,
                        unknown: true,
                    }),
                }
            }
        }
    }

    fn objects(
        &self,
        engine: &dyn Engine,
        schema: &BlockSchema,
        body: &Body,
        nodes: &mut Vec<Desired>,
    ) -> Result<(), DesiredError> {
        for block in &body.blocks {
            let Some(child) = schema.block(&block.kind) else {
                continue;
            };
            let Some(address) = &block.address else {
                continue;
            };
            let mut node = self.node(address, &block.kind, child, &block.body, &[])?;
            node.prevent_destroy = block.prevent_destroy;
            engine.derive(&mut node);
            nodes.push(node);
            self.objects(engine, child, &block.body, nodes)?;
        }
        Ok(())
    }
}
