//! The checked configuration: what `kip.hcl` (and its sibling `*.kip.hcl` files) declare, after decoding,
//! evaluation of variables and locals, expansion of `count` / `for_each`, and validation against the engines'
//! schemas and the signed registry.
//!
//! Raw HCL goes in, a [`Config`] comes out, or the diagnostics that say why not. Code that takes a `Config` can
//! rely on it: every instance names a known engine with a supported version, every argument is one its schema
//! declares, every reference points at something declared.

mod check;
mod eval;
mod load;
pub mod refs;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use kip_schemas::{EngineSchema, Version};

pub use crate::address::{Address, IndexKey, PathLabel, PathStep};
pub use check::{CheckOptions, Checked, check, check_sources};
pub use eval::declare_functions;
pub use load::{CONFIG_FILE, CONFIG_SUFFIX, LoadError, discover};

use crate::source::FileId;

/// Where something was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub file: FileId,
    pub span: Range<usize>,
}

/// An attribute value: known once variables and locals are evaluated, or deferred until apply because it
/// reads an attribute of an engine (`postgres.main.url`), which exists only once the engine runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Known(hcl::Value),
    Deferred(hcl::Expression),
}

impl Value {
    pub fn known(&self) -> Option<&hcl::Value> {
        match self {
            Value::Known(value) => Some(value),
            Value::Deferred(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attribute {
    pub value: Value,
    pub declared: Declared,
}

/// The decoded body of an instance or of a block inside it.
#[derive(Debug, Clone, Default)]
pub struct Body {
    pub attributes: BTreeMap<String, Attribute>,
    pub blocks: Vec<Block>,
}

/// A block inside an instance: an engine object (a graph node, with an address) or a configuration sub-block
/// such as a process's `ready {}` probe.
#[derive(Debug, Clone)]
pub struct Block {
    pub kind: String,
    pub label: Option<String>,
    /// Set when the schema marks this block as an engine object.
    pub address: Option<Address>,
    pub body: Body,
    /// `prevent_destroy = true`: refuse plans that would delete this object.
    pub prevent_destroy: bool,
    pub declared: Declared,
}

/// One engine instance, after `count` / `for_each` expansion.
#[derive(Debug, Clone)]
pub struct Instance {
    pub address: Address,
    pub engine: &'static EngineSchema,
    /// `each.value` of a `for_each` instance, for expressions evaluated during apply.
    pub each_value: Option<hcl::Value>,
    /// The declared version (`"16"`, `"16.14"`); `None` for unversioned engines such as `process`.
    pub version: Option<Version>,
    pub body: Body,
    pub run_as: Option<String>,
    pub prevent_destroy: bool,
    pub declared: Declared,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VariableType {
    String,
    Number,
    Bool,
    List(Box<VariableType>),
    Map(Box<VariableType>),
    Any,
}

impl fmt::Display for VariableType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VariableType::String => f.write_str("string"),
            VariableType::Number => f.write_str("number"),
            VariableType::Bool => f.write_str("bool"),
            VariableType::List(inner) => write!(f, "list({inner})"),
            VariableType::Map(inner) => write!(f, "map({inner})"),
            VariableType::Any => f.write_str("any"),
        }
    }
}

/// Where a variable's value came from, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueSource {
    Flag,
    Environment,
    Default,
}

#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub ty: VariableType,
    pub description: Option<String>,
    pub sensitive: bool,
    pub value: hcl::Value,
    pub source: ValueSource,
    pub declared: Declared,
}

#[derive(Debug, Clone)]
pub struct Output {
    pub name: String,
    pub value: Value,
    pub description: Option<String>,
    pub sensitive: bool,
    pub declared: Declared,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub variables: Vec<Variable>,
    pub locals: BTreeMap<String, Value>,
    pub instances: Vec<Instance>,
    pub outputs: Vec<Output>,
}

impl Config {
    /// The schema of the engine called `name`, when an instance of it is declared.
    pub fn engine_schema(&self, name: &str) -> Option<&'static EngineSchema> {
        self.instances
            .iter()
            .find(|instance| instance.engine.name == name)
            .map(|instance| instance.engine)
    }

    pub fn instance(&self, address: &Address) -> Option<&Instance> {
        self.instances
            .iter()
            .find(|instance| &instance.address == address)
    }
}
