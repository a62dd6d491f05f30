//! The schema vocabulary: engines, blocks, arguments and exports, with their docs.
//!
//! One description per engine feeds three consumers: validation of `kip.hcl` bodies, the JSON emitted by
//! `kip schema --json`, and the generated Markdown reference. Keeping docs next to types means the reference
//! cannot drift from what `kip lint` accepts. The builder methods keep engine tables short and readable;
//! provider authors describing a new engine use the same builders.

use crate::types::ValueType;
use crate::version::Version;

/// One argument (`name = value`) a block accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct ArgumentSchema {
    pub name: &'static str,
    /// CommonMark, one paragraph; it becomes the description column of the reference table.
    pub doc: &'static str,
    pub ty: ValueType,
    pub required: bool,
    /// What kip uses when the argument is absent, as the JSON value users would write.
    pub default: Option<serde_json::Value>,
    /// Redacted in plan output and state listings.
    pub sensitive: bool,
    /// The engine version this argument exists since.
    pub since: Option<Version>,
    /// Changing it later needs a replace (`-/+`) instead of an in-place update.
    pub forces_replacement: bool,
    /// The value names another object of this kind in the same instance (`owner = "app"` names `role "app"`):
    /// when that object is declared, this block depends on it in the graph.
    pub refers_to: Option<&'static str>,
    /// Described, but kip cannot honour it yet: lint refuses it with this reason, so it is never silently
    /// ignored.
    pub not_yet: Option<&'static str>,
    /// Values of the right type the engine would still reject (a Valkey setting kip writes itself, a `save` rule
    /// that is not two numbers): answers why, for a lint error with the value's span. Unknown values (known only
    /// at apply) are not checked.
    pub value_check: Option<ValueCheck>,
}

/// A check of an argument's value beyond its type: `Some(why)` when the engine would reject it.
#[derive(Clone, Copy)]
pub struct ValueCheck(pub fn(&crate::validate::Shape) -> Option<String>);

impl ValueCheck {
    pub fn check(&self, value: &crate::validate::Shape) -> Option<String> {
        (self.0)(value)
    }
}

impl PartialEq for ValueCheck {
    fn eq(&self, other: &ValueCheck) -> bool {
        std::ptr::fn_addr_eq(self.0, other.0)
    }
}

impl std::fmt::Debug for ValueCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ValueCheck")
    }
}

impl ArgumentSchema {
    /// An optional argument without a default; refine with the builder methods below.
    pub fn new(name: &'static str, ty: ValueType, doc: &'static str) -> ArgumentSchema {
        ArgumentSchema {
            name,
            doc,
            ty,
            required: false,
            default: None,
            sensitive: false,
            since: None,
            forces_replacement: false,
            refers_to: None,
            not_yet: None,
            value_check: None,
        }
    }

    /// Refuses values the engine would reject; see [`ArgumentSchema::value_check`].
    pub fn value_check(
        mut self,
        check: fn(&crate::validate::Shape) -> Option<String>,
    ) -> ArgumentSchema {
        self.value_check = Some(ValueCheck(check));
        self
    }

    pub fn required(mut self) -> ArgumentSchema {
        self.required = true;
        self
    }

    pub fn with_default(mut self, value: impl Into<serde_json::Value>) -> ArgumentSchema {
        self.default = Some(value.into());
        self
    }

    pub fn sensitive(mut self) -> ArgumentSchema {
        self.sensitive = true;
        self
    }

    /// Gates the argument on an engine major version.
    pub fn since(mut self, major: u32) -> ArgumentSchema {
        self.since = Some(Version::from_major(major));
        self
    }

    pub fn forces_replacement(mut self) -> ArgumentSchema {
        self.forces_replacement = true;
        self
    }

    /// Marks the argument as described but not supported yet, with why (lint refuses it).
    pub fn not_yet(mut self, reason: &'static str) -> ArgumentSchema {
        self.not_yet = Some(reason);
        self
    }

    /// Marks the value as the name (or list of names) of a sibling object of `kind` in the same instance.
    pub fn refers_to(mut self, kind: &'static str) -> ArgumentSchema {
        self.refers_to = Some(kind);
        self
    }
}

/// An attribute other blocks may reference, such as `postgres.main.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSchema {
    pub name: &'static str,
    pub doc: &'static str,
    /// Holds or embeds a secret (a password, a URL with credentials): redacted wherever kip shows values.
    pub sensitive: bool,
    /// The conventional environment variable that `kip env` also sets from this export (`DATABASE_URL`,
    /// `AWS_ACCESS_KEY_ID`), beside its `KIP_<ADDRESS>_URL` names. When several blocks give one, the first
    /// instance in address order wins, and within an instance its objects before the instance itself.
    pub env: Option<&'static str>,
}

impl ExportSchema {
    pub fn new(name: &'static str, doc: &'static str) -> ExportSchema {
        ExportSchema {
            name,
            doc,
            sensitive: false,
            env: None,
        }
    }

    pub fn sensitive(mut self) -> ExportSchema {
        self.sensitive = true;
        self
    }

    /// Also exported by `kip env` as the conventional variable `name`.
    pub fn env(mut self, name: &'static str) -> ExportSchema {
        self.env = Some(name);
        self
    }
}

/// A block: an engine instance, an object inside it (`role "app"`), or a configuration sub-block (`ready`).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSchema {
    pub name: &'static str,
    /// CommonMark; may span paragraphs.
    pub doc: &'static str,
    /// Label names, e.g. `["name"]`; empty for an unlabelled block like `grant {}` or `ready {}`.
    pub labels: Vec<&'static str>,
    /// May appear more than once in its parent (with distinct labels when it has labels).
    pub repeatable: bool,
    /// Declares an engine object that becomes a graph node (role, database, bucket…), as opposed to a
    /// configuration sub-block such as a process `ready {}` probe.
    pub object: bool,
    pub since: Option<Version>,
    pub arguments: Vec<ArgumentSchema>,
    pub blocks: Vec<BlockSchema>,
    pub exports: Vec<ExportSchema>,
    /// Groups of arguments of which exactly one must be set, such as the probe kinds of `ready {}`.
    pub exactly_one_of: Vec<Vec<&'static str>>,
    /// The label is the address of another node (`wait_for "process.migrate"`): the checker resolves it like a
    /// reference, and the enclosing node depends on that node.
    pub label_is_reference: bool,
    /// The longest label the engine accepts, in bytes (PostgreSQL's names: 63).
    pub max_label_bytes: Option<usize>,
    /// Names the engine would reject (Valkey's user names cannot hold spaces): answers why, for a lint error with
    /// the label's span.
    pub label_check: Option<LabelCheck>,
}

/// A check of a block's label: `Some(why)` when the engine would reject it.
#[derive(Clone, Copy)]
pub struct LabelCheck(pub fn(&str) -> Option<String>);

impl LabelCheck {
    pub fn check(&self, label: &str) -> Option<String> {
        (self.0)(label)
    }
}

impl PartialEq for LabelCheck {
    fn eq(&self, other: &LabelCheck) -> bool {
        std::ptr::fn_addr_eq(self.0, other.0)
    }
}

impl std::fmt::Debug for LabelCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LabelCheck")
    }
}

impl BlockSchema {
    /// An unlabelled, non-repeatable configuration block with nothing in it yet.
    pub fn new(name: &'static str, doc: &'static str) -> BlockSchema {
        BlockSchema {
            name,
            doc,
            labels: Vec::new(),
            repeatable: false,
            object: false,
            since: None,
            arguments: Vec::new(),
            blocks: Vec::new(),
            exports: Vec::new(),
            exactly_one_of: Vec::new(),
            label_is_reference: false,
            max_label_bytes: None,
            label_check: None,
        }
    }

    /// Refuses labels the engine would reject; see [`BlockSchema::label_check`].
    pub fn label_check(mut self, check: fn(&str) -> Option<String>) -> BlockSchema {
        self.label_check = Some(LabelCheck(check));
        self
    }

    /// Caps the label's length in bytes, as the engine does for its names.
    pub fn max_label_bytes(mut self, max: usize) -> BlockSchema {
        self.max_label_bytes = Some(max);
        self
    }

    /// Marks the label as the address of another node; see [`BlockSchema::label_is_reference`].
    pub fn label_is_reference(mut self) -> BlockSchema {
        self.label_is_reference = true;
        self
    }

    /// A repeatable object block with one label, the common shape: `role "name" { … }`.
    pub fn named_object(name: &'static str, label: &'static str, doc: &'static str) -> BlockSchema {
        BlockSchema::new(name, doc)
            .labels(&[label])
            .repeatable()
            .object()
    }

    pub fn labels(mut self, labels: &[&'static str]) -> BlockSchema {
        self.labels = labels.to_vec();
        self
    }

    pub fn repeatable(mut self) -> BlockSchema {
        self.repeatable = true;
        self
    }

    pub fn object(mut self) -> BlockSchema {
        self.object = true;
        self
    }

    /// Gates the block on an engine major version.
    pub fn since(mut self, major: u32) -> BlockSchema {
        self.since = Some(Version::from_major(major));
        self
    }

    pub fn arguments(mut self, arguments: Vec<ArgumentSchema>) -> BlockSchema {
        self.arguments = arguments;
        self
    }

    pub fn blocks(mut self, blocks: Vec<BlockSchema>) -> BlockSchema {
        self.blocks = blocks;
        self
    }

    pub fn exports(mut self, exports: Vec<ExportSchema>) -> BlockSchema {
        self.exports = exports;
        self
    }

    pub fn exactly_one_of(mut self, group: &[&'static str]) -> BlockSchema {
        self.exactly_one_of.push(group.to_vec());
        self
    }

    /// The argument called `name`, if this block has one.
    pub fn argument(&self, name: &str) -> Option<&ArgumentSchema> {
        self.arguments.iter().find(|argument| argument.name == name)
    }

    /// The nested block type called `name`, if this block has one.
    pub fn block(&self, name: &str) -> Option<&BlockSchema> {
        self.blocks.iter().find(|block| block.name == name)
    }

    /// The export called `name`, if this block has one: what a reference like `postgres.main.url` resolves.
    pub fn export(&self, name: &str) -> Option<&ExportSchema> {
        self.exports.iter().find(|export| export.name == name)
    }
}

/// An engine kip can run, as declared by a top-level block type in `kip.hcl`.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSchema {
    /// The block type in `kip.hcl`: `"postgres"`, `"valkey"`, `"mariadb"`, `"nats"`, `"s3"`, `"process"`.
    pub name: &'static str,
    /// CommonMark: what the engine is and how kip runs it; the first paragraph is its one-line summary.
    pub doc: &'static str,
    /// Majors this kip can run; the signed registry may narrow that at run time.
    pub majors: Vec<u32>,
    /// `false` for `process`, which has no `version`.
    pub versioned: bool,
    /// A new major version needs a new data directory (the on-disk format changes between majors), so the plan
    /// replaces the instance (`-/+`) rather than restarting it.
    pub replace_on_new_major: bool,
    /// The instance block: labels `["name"]`, an object, with `version` among its arguments when versioned.
    pub instance: BlockSchema,
}

impl EngineSchema {
    /// The first paragraph of [`EngineSchema::doc`], on one line.
    pub fn summary(&self) -> String {
        first_paragraph(self.doc)
    }
}

pub(crate) fn first_paragraph(doc: &str) -> String {
    doc.split("\n\n")
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
