//! The value types an argument can declare, and the check of a decoded value against one.
//!
//! Types are deliberately few and HCL-shaped (`string`, `list(string)`, `map(scalar)`), plus the three
//! string formats engines are configured with all the time: enumerations, durations (`"5s"`) and sizes
//! (`"64mb"`). Their `Display` is the name users see in docs and errors, so one spelling serves both.

use std::fmt;
use std::time::Duration;

use crate::validate::Shape;

/// The type of an argument's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ValueType {
    String,
    Number,
    Bool,
    /// A string, a number or a bool: what engine configuration files accept as a setting value.
    Scalar,
    List(Box<ValueType>),
    /// An object whose keys are free and whose values all have the given type.
    Map(Box<ValueType>),
    /// A string that must be one of the listed values.
    Enum(Vec<&'static str>),
    /// A string such as `"5s"`, `"250ms"` or `"1h30m"`; see [`parse_duration`].
    Duration,
    /// A string such as `"64mb"` or `"8MB"`, or a whole number of bytes; see [`parse_size`].
    Size,
    /// A TCP port: a whole number from 1 to 65535.
    Port,
    /// A count: a whole number from 0 to 4294967295 (restarts, retries).
    Count,
    Any,
}

impl ValueType {
    /// `list(T)`, for schema tables that read better without the `Box`.
    pub fn list(item: ValueType) -> ValueType {
        ValueType::List(Box::new(item))
    }

    /// `map(T)`.
    pub fn map(value: ValueType) -> ValueType {
        ValueType::Map(Box::new(value))
    }

    /// Checks `shape` against this type. [`Shape::Unknown`] always passes: its value is only known later.
    pub fn check(&self, shape: &Shape) -> Result<(), Mismatch> {
        let mut path = Vec::new();
        check_at(self, shape, &mut path)
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueType::String => f.write_str("string"),
            ValueType::Number => f.write_str("number"),
            ValueType::Bool => f.write_str("bool"),
            ValueType::Scalar => f.write_str("scalar"),
            ValueType::List(item) => write!(f, "list({item})"),
            ValueType::Map(value) => write!(f, "map({value})"),
            ValueType::Enum(values) => {
                f.write_str("one of ")?;
                f.write_str(&quoted_list(values))
            }
            ValueType::Duration => f.write_str("duration"),
            ValueType::Size => f.write_str("size"),
            ValueType::Port => f.write_str("port"),
            ValueType::Count => f.write_str("count"),
            ValueType::Any => f.write_str("any"),
        }
    }
}

impl serde::Serialize for ValueType {
    /// Serialises as the display name, the same string the docs show.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One step into a nested value, for pointing at the offending element.
#[derive(Debug, Clone, PartialEq)]
pub enum PathStep {
    Index(usize),
    Key(String),
}

/// Why a value does not fit a type.
#[derive(Debug, Clone, PartialEq)]
pub enum MismatchKind {
    /// The value has the wrong kind: a string where a bool is expected. `found` is the shape's kind name.
    Type {
        expected: ValueType,
        found: &'static str,
    },
    /// The kind is right but the value is not allowed: an unknown enum value, a malformed duration or size.
    /// `found` is the value as HCL would write it (`"on-failure"`, `-1`).
    Invalid { expected: ValueType, found: String },
}

/// A value that does not fit its type, with the path to the offending element (empty for the value itself).
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub path: Vec<PathStep>,
    pub kind: MismatchKind,
}

fn check_at(ty: &ValueType, shape: &Shape, path: &mut Vec<PathStep>) -> Result<(), Mismatch> {
    let invalid = |path: &Vec<PathStep>, found: String| Mismatch {
        path: path.clone(),
        kind: MismatchKind::Invalid {
            expected: ty.clone(),
            found,
        },
    };
    match (ty, shape) {
        (_, Shape::Unknown) | (ValueType::Any, _) => Ok(()),
        (ValueType::String, Shape::String(_))
        | (ValueType::Number, Shape::Number(_))
        | (ValueType::Bool, Shape::Bool(_))
        | (ValueType::Scalar, Shape::String(_) | Shape::Number(_) | Shape::Bool(_)) => Ok(()),
        (ValueType::List(item_type), Shape::List(items)) => {
            for (index, item) in items.iter().enumerate() {
                path.push(PathStep::Index(index));
                check_at(item_type, item, path)?;
                path.pop();
            }
            Ok(())
        }
        (ValueType::Map(value_type), Shape::Object(entries)) => {
            for (key, value) in entries {
                path.push(PathStep::Key(key.clone()));
                check_at(value_type, value, path)?;
                path.pop();
            }
            Ok(())
        }
        (ValueType::Enum(allowed), Shape::String(text)) => {
            if allowed.contains(&text.as_str()) {
                Ok(())
            } else {
                Err(invalid(path, format!("{text:?}")))
            }
        }
        (ValueType::Duration, Shape::String(text)) => match parse_duration(text) {
            Some(_) => Ok(()),
            None => Err(invalid(path, format!("{text:?}"))),
        },
        (ValueType::Size, Shape::String(text)) => match parse_size(text) {
            Some(_) => Ok(()),
            None => Err(invalid(path, format!("{text:?}"))),
        },
        (ValueType::Port, Shape::Number(number)) => {
            if number.fract() == 0.0 && (1.0..=65535.0).contains(number) {
                Ok(())
            } else {
                Err(invalid(path, format_number(*number)))
            }
        }
        (ValueType::Count, Shape::Number(number)) => {
            if number.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(number) {
                Ok(())
            } else {
                Err(invalid(path, format_number(*number)))
            }
        }
        (ValueType::Size, Shape::Number(number)) => {
            if number.is_finite() && *number >= 0.0 && number.fract() == 0.0 {
                Ok(())
            } else {
                Err(invalid(path, format_number(*number)))
            }
        }
        _ => Err(Mismatch {
            path: path.clone(),
            kind: MismatchKind::Type {
                expected: ty.clone(),
                found: shape.kind_name(),
            },
        }),
    }
}

/// Parses a duration: one or more `<number><unit>` parts with units `ms`, `s`, `m`, `h`, `d`
/// (`"250ms"`, `"5s"`, `"1h30m"`, `"1.5s"`, `"7d"`). No spaces, no sign, a unit is required.
pub fn parse_duration(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let (amount, after_number) = split_number(rest)?;
        let unit_length = after_number
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after_number.len());
        let nanos_per_unit: f64 = match &after_number[..unit_length] {
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3_600e9,
            "d" => 86_400e9,
            _ => return None,
        };
        // Rounding per part keeps "1.5s" and "250ms" exact despite binary floating point.
        let part = (amount * nanos_per_unit).round();
        if !part.is_finite() || part > u64::MAX as f64 {
            return None;
        }
        total_nanos = total_nanos.checked_add(part as u128)?;
        rest = &after_number[unit_length..];
    }
    let seconds = u64::try_from(total_nanos / 1_000_000_000).ok()?;
    Some(Duration::new(seconds, (total_nanos % 1_000_000_000) as u32))
}

/// Parses a size in bytes: a number with an optional unit, case-insensitive, units powers of 1024:
/// `b`, `k`/`kb`/`kib`, `m`/`mb`/`mib`, `g`/`gb`/`gib`, `t`/`tb`/`tib` (`"64mb"`, `"8MB"`, `"1.5gb"`, `"4096"`).
/// One space between number and unit is allowed (`"128 MB"`).
pub fn parse_size(text: &str) -> Option<u64> {
    let (amount, unit) = split_number(text)?;
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let multiplier: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    let bytes = amount * multiplier as f64;
    if bytes > u64::MAX as f64 {
        return None;
    }
    Some(bytes as u64)
}

/// Splits a leading unsigned decimal (`12`, `1.5`) from the rest of the text.
fn split_number(text: &str) -> Option<(f64, &str)> {
    let integer_length = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if integer_length == 0 {
        return None;
    }
    let mut number_length = integer_length;
    if let Some(fraction) = text[integer_length..].strip_prefix('.') {
        let fraction_length = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if fraction_length == 0 {
            return None;
        }
        number_length += 1 + fraction_length;
    }
    let amount = text[..number_length].parse().ok()?;
    Some((amount, &text[number_length..]))
}

/// `"a", "b", "c"`: how enumerations and name lists appear in docs and errors.
pub(crate) fn quoted_list(values: &[&str]) -> String {
    values
        .iter()
        .map(|value| format!("{value:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A number the way a user would have written it: `16`, not `16.0`.
pub(crate) fn format_number(number: f64) -> String {
    if number.is_finite() && number.fract() == 0.0 && number.abs() < 1e15 {
        format!("{}", number as i64)
    } else {
        format!("{number}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names() {
        let cases = [
            (ValueType::String, "string"),
            (ValueType::Number, "number"),
            (ValueType::Bool, "bool"),
            (ValueType::Scalar, "scalar"),
            (ValueType::list(ValueType::String), "list(string)"),
            (ValueType::map(ValueType::Scalar), "map(scalar)"),
            (
                ValueType::map(ValueType::list(ValueType::Number)),
                "map(list(number))",
            ),
            (ValueType::Enum(vec!["a", "b"]), "one of \"a\", \"b\""),
            (ValueType::Duration, "duration"),
            (ValueType::Size, "size"),
            (ValueType::Any, "any"),
        ];
        for (ty, expected) in cases {
            assert_eq!(ty.to_string(), expected);
            assert_eq!(
                serde_json::to_value(&ty).unwrap(),
                serde_json::json!(expected)
            );
        }
    }

    #[test]
    fn durations() {
        let good = [
            ("250ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("1.5s", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("1h30m", Duration::from_secs(5400)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("0s", Duration::ZERO),
            ("1m30s500ms", Duration::from_millis(90_500)),
        ];
        for (text, expected) in good {
            assert_eq!(parse_duration(text), Some(expected), "{text}");
        }
        for text in [
            "", "5", "s", "5 s", "-5s", "5sec", "5S", "1h 30m", ".5s", "5.s", "5mb", "1w",
        ] {
            assert_eq!(parse_duration(text), None, "{text:?} should not parse");
        }
    }

    #[test]
    fn sizes() {
        let good = [
            ("64mb", 64 << 20),
            ("8MB", 8 << 20),
            ("128MB", 128 << 20),
            ("128 MB", 128 << 20),
            ("1gb", 1 << 30),
            ("1.5kb", 1536),
            ("512k", 512 << 10),
            ("2GiB", 2 << 30),
            ("4096", 4096),
            ("100b", 100),
            ("1tb", 1 << 40),
        ];
        for (text, expected) in good {
            assert_eq!(parse_size(text), Some(expected), "{text}");
        }
        for text in ["", "mb", "64 megs", "-1mb", "64  mb", "1pb", "64mb ", "1e3"] {
            assert_eq!(parse_size(text), None, "{text:?} should not parse");
        }
    }

    #[test]
    fn numbers_are_written_back_as_typed() {
        assert_eq!(format_number(16.0), "16");
        assert_eq!(format_number(-1.0), "-1");
        assert_eq!(format_number(1.5), "1.5");
    }
}
