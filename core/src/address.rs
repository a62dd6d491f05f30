//! Typed addresses of graph nodes: an engine instance (`postgres.main`, `postgres.main["eu"]`) or an object
//! declared inside one (`postgres.main.role.app`, `postgres.main.role["app.user"]`, `postgres.main.grant[0]`).
//!
//! An address is data from decode to state: its labels are whatever text the configuration gave them (dots,
//! quotes, spaces, unicode), and code reads them from the fields, never by splitting a string. The text form is
//! canonical and unambiguous — a label that is not a plain identifier is written as a quoted index
//! (`role["app.user"]`), as Terraform writes `for_each` keys — so it can serve as a map key in the state and be
//! typed on the command line; [`Address::parse`] is its exact inverse (a property test checks both directions).
//!
//! [`Address::slug`] names the instance's directories: readable, and collision-free whatever the labels, because
//! any address whose readable form loses information carries a hash of its canonical text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The key of a `count` (`[0]`) or `for_each` (`["eu"]`) instance, or an index in a reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IndexKey {
    Number(u64),
    String(String),
}

/// One level of nesting below an instance: the block type and its label, or its position for unlabelled blocks.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathStep {
    pub kind: String,
    pub label: PathLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathLabel {
    /// The block's label, exactly as written (`role "app.user"` → `app.user`).
    Name(String),
    /// The position among the unlabelled blocks of its kind (`grant {}` → 0, 1, …).
    Index(usize),
}

impl PathLabel {
    /// The label text; `None` for a positional (unlabelled) block.
    pub fn name(&self) -> Option<&str> {
        match self {
            PathLabel::Name(name) => Some(name),
            PathLabel::Index(_) => None,
        }
    }
}

/// The address of a graph node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    /// The engine's block type: `postgres`.
    pub engine: String,
    /// The instance's label: `main` (an identifier; the checker refuses others).
    pub name: String,
    pub key: Option<IndexKey>,
    pub path: Vec<PathStep>,
}

impl Address {
    pub fn instance(engine: &str, name: &str, key: Option<IndexKey>) -> Self {
        Address {
            engine: engine.to_owned(),
            name: name.to_owned(),
            key,
            path: Vec::new(),
        }
    }

    pub fn child(&self, kind: &str, label: PathLabel) -> Self {
        let mut child = self.clone();
        child.path.push(PathStep {
            kind: kind.to_owned(),
            label,
        });
        child
    }

    /// A child with a label: `postgres.main` + (`role`, `app`) → `postgres.main.role.app`.
    pub fn named_child(&self, kind: &str, label: &str) -> Self {
        self.child(kind, PathLabel::Name(label.to_owned()))
    }

    /// The address of the instance this node belongs to.
    pub fn instance_address(&self) -> Address {
        Address {
            path: Vec::new(),
            ..self.clone()
        }
    }

    pub fn is_instance(&self) -> bool {
        self.path.is_empty()
    }

    /// The object kind of the last step (`role`), or `None` for an instance.
    pub fn kind(&self) -> Option<&str> {
        self.path.last().map(|step| step.kind.as_str())
    }

    /// The label of the last step, when it has one: `postgres.main.role["app.user"]` → `app.user`.
    pub fn label(&self) -> Option<&str> {
        self.path.last().and_then(|step| step.label.name())
    }

    /// The label of the nearest step of `kind` on the path: the database a schema belongs to.
    pub fn label_of(&self, kind: &str) -> Option<&str> {
        self.path
            .iter()
            .rev()
            .find(|step| step.kind == kind)
            .and_then(|step| step.label.name())
    }

    /// The node that holds this one: an object's parent object or its instance; `None` for an instance.
    pub fn parent(&self) -> Option<Address> {
        if self.path.is_empty() {
            return None;
        }
        let mut parent = self.clone();
        parent.path.pop();
        Some(parent)
    }

    /// Whether `self` is `other` or lies below it.
    pub fn is_within(&self, other: &Address) -> bool {
        self.engine == other.engine
            && self.name == other.name
            && self.key == other.key
            && self.path.starts_with(&other.path)
    }

    /// A file-system name for the instance's directories: `postgres.main` for a plain address, and the readable
    /// part plus a hash of the canonical address whenever the readable part drops or changes anything
    /// (`postgres.main-eu+1f2e3d4c5b6a7988` for `postgres.main["eu"]`), so two addresses never share a directory.
    pub fn slug(&self) -> String {
        let canonical = self.to_string();
        let mut readable = String::new();
        for character in canonical.chars() {
            match character {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => readable.push(character),
                '[' => readable.push('-'),
                _ => {}
            }
        }
        if readable == canonical && !readable.starts_with('.') {
            return readable;
        }
        let digest = <sha2::Sha256 as sha2::Digest>::digest(canonical.as_bytes());
        let hash: String = digest[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        readable.truncate(80);
        // `+` never appears in a plain slug, so a hashed slug cannot be spelled by choosing a label.
        format!("{readable}+{hash}")
    }

    /// Parses the canonical text form (see the module documentation); the error says where and why not.
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        Parser::new(text).address()
    }
}

/// Whether `text` is written bare in an address: ASCII letters, digits, `_` and `-`, not starting with a digit
/// or `-`. Anything else is quoted.
pub fn is_plain_label(text: &str) -> bool {
    let mut characters = text.chars();
    let Some(first) = characters.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '_')
        && characters.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn write_quoted(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    // JSON string syntax: every character round-trips, control characters included.
    f.write_str(&serde_json::to_string(text).map_err(|_| fmt::Error)?)
}

impl fmt::Display for IndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexKey::Number(index) => write!(f, "[{index}]"),
            IndexKey::String(key) => {
                f.write_str("[")?;
                write_quoted(f, key)?;
                f.write_str("]")
            }
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.engine, self.name)?;
        if let Some(key) = &self.key {
            write!(f, "{key}")?;
        }
        for step in &self.path {
            write!(f, ".{}", step.kind)?;
            match &step.label {
                PathLabel::Name(name) if is_plain_label(name) => write!(f, ".{name}")?,
                PathLabel::Name(name) => {
                    f.write_str("[")?;
                    write_quoted(f, name)?;
                    f.write_str("]")?;
                }
                PathLabel::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Address::parse(text)
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Address::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Why a text is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an address: {reason} at character {}", position + 1)]
pub struct AddressError {
    pub text: String,
    /// The character offset of the problem.
    pub position: usize,
    pub reason: &'static str,
}

impl AddressError {
    pub fn hint(&self) -> &'static str {
        "addresses look like postgres.main, postgres.main.database.shop or postgres.main.role[\"app.user\"]; \
         quote a label that is not a plain name, and `kip graph` lists them all"
    }
}

struct Parser<'t> {
    text: &'t str,
    characters: Vec<char>,
    position: usize,
}

impl<'t> Parser<'t> {
    fn new(text: &'t str) -> Parser<'t> {
        Parser {
            text,
            characters: text.chars().collect(),
            position: 0,
        }
    }

    fn error(&self, reason: &'static str) -> AddressError {
        AddressError {
            text: self.text.to_owned(),
            position: self.position,
            reason,
        }
    }

    fn peek(&self) -> Option<char> {
        self.characters.get(self.position).copied()
    }

    fn eat(&mut self, expected: char) -> bool {
        if self.peek() == Some(expected) {
            self.position += 1;
            true
        } else {
            false
        }
    }

    fn identifier(&mut self) -> Result<String, AddressError> {
        let start = self.position;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.position += 1;
        }
        let word: String = self.characters[start..self.position].iter().collect();
        if !is_plain_label(&word) {
            self.position = start;
            return Err(self.error("expected a name (letters, digits, `_` or `-`)"));
        }
        Ok(word)
    }

    /// `[0]` or `["text"]`, after the `[`. An object label is quoted only when it is not plain; an instance key
    /// always is.
    fn index(&mut self, plain_is_bare: bool) -> Result<IndexKey, AddressError> {
        let key = if self.peek() == Some('"') {
            IndexKey::String(self.quoted(plain_is_bare)?)
        } else {
            let start = self.position;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.position += 1;
            }
            let digits: String = self.characters[start..self.position].iter().collect();
            let number = digits
                .parse::<u64>()
                .map_err(|_| self.error("expected a number or a quoted string in brackets"))?;
            // One spelling per number: `[01]` is not `[1]`.
            if digits.len() > 1 && digits.starts_with('0') {
                self.position = start;
                return Err(self.error("a number in brackets has no leading zero"));
            }
            IndexKey::Number(number)
        };
        if !self.eat(']') {
            return Err(self.error("expected `]`"));
        }
        Ok(key)
    }

    /// A JSON string starting at the current `"`.
    fn quoted(&mut self, plain_is_bare: bool) -> Result<String, AddressError> {
        let start = self.position;
        self.position += 1;
        let mut escaped = false;
        loop {
            let Some(character) = self.peek() else {
                self.position = start;
                return Err(self.error("a quoted label is not closed"));
            };
            self.position += 1;
            match character {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => break,
                _ => escaped = false,
            }
        }
        let literal: String = self.characters[start..self.position].iter().collect();
        let value: String = serde_json::from_str(&literal).map_err(|_| {
            self.position = start;
            self.error("a quoted label is not a valid string")
        })?;
        // One spelling per label: a plain label is never quoted, and escapes are JSON's own.
        if serde_json::to_string(&value).ok().as_deref() != Some(literal.as_str())
            || (plain_is_bare && is_plain_label(&value))
        {
            self.position = start;
            return Err(self.error(
                "a quoted label is written as kip writes it (plain names bare, JSON escapes)",
            ));
        }
        Ok(value)
    }

    fn address(mut self) -> Result<Address, AddressError> {
        let engine = self.identifier()?;
        if !self.eat('.') {
            return Err(self.error("expected `.` and the instance name after the engine"));
        }
        let name = self.identifier()?;
        let key = if self.eat('[') {
            Some(self.index(false)?)
        } else {
            None
        };
        let mut path = Vec::new();
        while self.peek().is_some() {
            if !self.eat('.') {
                return Err(self.error("expected `.`"));
            }
            let kind = self.identifier()?;
            let label = if self.eat('[') {
                match self.index(true)? {
                    IndexKey::Number(index) => PathLabel::Index(
                        usize::try_from(index).map_err(|_| self.error("the index is too large"))?,
                    ),
                    IndexKey::String(label) => PathLabel::Name(label),
                }
            } else if self.eat('.') {
                PathLabel::Name(self.identifier()?)
            } else {
                return Err(self.error("expected the object's label after its kind"));
            };
            path.push(PathStep { kind, label });
        }
        Ok(Address {
            engine,
            name,
            key,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn address(text: &str) -> Address {
        Address::parse(text).unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn awkward_labels_are_quoted_and_parse_back() {
        let base = Address::instance("postgres", "main", None);
        let cases = [
            ("app", "postgres.main.role.app"),
            ("app.user", r#"postgres.main.role["app.user"]"#),
            ("a b", r#"postgres.main.role["a b"]"#),
            (
                "it's \"quoted\"",
                r#"postgres.main.role["it's \"quoted\""]"#,
            ),
            ("ünï", r#"postgres.main.role["ünï"]"#),
            (
                "$(rm -rf /);`x`",
                r#"postgres.main.role["$(rm -rf /);`x`"]"#,
            ),
            ("0", r#"postgres.main.role["0"]"#),
            ("", r#"postgres.main.role[""]"#),
        ];
        for (label, text) in cases {
            let typed = base.named_child("role", label);
            assert_eq!(typed.to_string(), text);
            assert_eq!(address(text), typed);
            assert_eq!(typed.label(), Some(label));
        }
        let grant = base.child("grant", PathLabel::Index(3));
        assert_eq!(grant.to_string(), "postgres.main.grant[3]");
        assert_eq!(address("postgres.main.grant[3]"), grant);
        assert_eq!(
            address(r#"postgres.main["eu"].database.shop"#),
            Address::instance("postgres", "main", Some(IndexKey::String("eu".into())))
                .named_child("database", "shop")
        );
    }

    #[test]
    fn malformed_addresses_say_where() {
        for (text, position) in [
            ("postgres", 8),
            ("postgres.", 9),
            ("postgres.main.role", 18),
            ("postgres.main.role.app.user", 27),
            ("postgres.main.role[\"app", 19),
            ("postgres.main.role[\"app\"]", 19),
            ("postgres.main[01]", 14),
            ("postgres.main.role[x]", 19),
            ("9lives.main", 0),
        ] {
            let error = Address::parse(text).unwrap_err();
            assert_eq!(error.position, position, "{text}: {error}");
        }
    }

    #[test]
    fn slugs_are_readable_and_never_collide() {
        let plain = Address::instance("postgres", "main", None);
        assert_eq!(plain.slug(), "postgres.main");
        let keyed =
            |key: &str| Address::instance("postgres", "main", Some(IndexKey::String(key.into())));
        let slugs: std::collections::BTreeSet<String> =
            ["ab", "a b", "a-b", "a_b", "a.b", "ab\u{0}"]
                .iter()
                .map(|key| keyed(key).slug())
                .collect();
        assert_eq!(slugs.len(), 6, "{slugs:?}");
        assert!(keyed("eu").slug().starts_with("postgres.main-eu+"));
    }

    fn label() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z][a-z0-9_-]{0,6}",
            any::<String>(),
            "[ .\"'\\\\$`;()\\[\\]{}ü]{0,6}",
        ]
    }

    fn any_address() -> impl Strategy<Value = Address> {
        let key = prop_oneof![
            Just(None),
            any::<u64>().prop_map(|n| Some(IndexKey::Number(n))),
            label().prop_map(|s| Some(IndexKey::String(s))),
        ];
        let step = (
            "[a-z][a-z_]{0,5}",
            prop_oneof![
                label().prop_map(PathLabel::Name),
                (0usize..1000).prop_map(PathLabel::Index)
            ],
        )
            .prop_map(|(kind, label)| PathStep { kind, label });
        (
            "[a-z][a-z0-9_]{0,7}",
            "[a-zA-Z_][a-zA-Z0-9_-]{0,7}",
            key,
            proptest::collection::vec(step, 0..4),
        )
            .prop_map(|(engine, name, key, path)| Address {
                engine,
                name,
                key,
                path,
            })
    }

    proptest! {
        #[test]
        fn display_and_parse_are_inverse(address in any_address()) {
            let text = address.to_string();
            prop_assert_eq!(Address::parse(&text).unwrap(), address.clone());
            let json = serde_json::to_string(&address).unwrap();
            prop_assert_eq!(serde_json::from_str::<Address>(&json).unwrap(), address);
        }

        #[test]
        fn parse_never_panics_and_accepts_only_canonical_text(text in any::<String>()) {
            if let Ok(address) = Address::parse(&text) {
                prop_assert_eq!(address.to_string(), text);
            }
        }

        #[test]
        fn distinct_addresses_have_distinct_slugs(a in any_address(), b in any_address()) {
            let (a, b) = (a.instance_address(), b.instance_address());
            if a != b {
                prop_assert_ne!(a.slug(), b.slug());
            }
        }
    }
}
