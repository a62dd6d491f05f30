//! Quoting names and values into SQL text.
//!
//! kip builds DDL from names users write in kip.hcl (`role "app"`, `database "shop"`), and DDL cannot take bind
//! parameters, so every name and value goes through these helpers and nothing else is ever interpolated.
//! Identifiers are always double-quoted (so case and spaces survive exactly as written); literals are single-quoted,
//! switching to an `E'…'` string when they hold a backslash so that the result means the same thing whatever
//! `standard_conforming_strings` says. Text PostgreSQL could not store (a NUL byte) and names it would silently
//! truncate (over 63 bytes) are refused instead of drifting forever.

use super::PgError;

/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1 bytes); longer ones are truncated with a notice.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Double-quotes an identifier, doubling any `"` inside. Checks nothing: see [`ident`].
pub fn quote_ident(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for character in name.chars() {
        if character == '"' {
            quoted.push('"');
        }
        quoted.push(character);
    }
    quoted.push('"');
    quoted
}

/// Single-quotes a literal: `'` is doubled, and when the text holds a backslash it is written as `E'…'` with the
/// backslashes doubled, which reads the same under either setting of `standard_conforming_strings`. Checks
/// nothing: see [`literal`].
pub fn quote_literal(value: &str) -> String {
    let backslash = value.contains('\\');
    let mut quoted = String::with_capacity(value.len() + 3);
    if backslash {
        quoted.push('E');
    }
    quoted.push('\'');
    for character in value.chars() {
        match character {
            '\'' => quoted.push_str("''"),
            '\\' if backslash => quoted.push_str("\\\\"),
            other => quoted.push(other),
        }
    }
    quoted.push('\'');
    quoted
}

/// Checks that `name` is an identifier PostgreSQL stores as written, then quotes it. `kind` names what it is in
/// the error ("role", "database").
pub fn ident(kind: &'static str, name: &str) -> Result<String, PgError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        Some("it is longer than 63 bytes, and PostgreSQL would truncate it")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PgError::InvalidName {
            kind,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(quote_ident(name)),
    }
}

/// Checks that `value` can be a PostgreSQL text value, then quotes it. `what` names it in the error.
pub fn literal(what: &'static str, value: &str) -> Result<String, PgError> {
    if value.contains('\0') {
        return Err(PgError::InvalidName {
            kind: what,
            name: value.escape_default().to_string(),
            reason: "it contains a NUL byte",
        });
    }
    Ok(quote_literal(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted() {
        assert_eq!(quote_ident("app"), r#""app""#);
        assert_eq!(quote_ident("App"), r#""App""#);
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(
            quote_ident("a b; DROP TABLE x; --"),
            r#""a b; DROP TABLE x; --""#
        );
        assert_eq!(quote_ident("ünï 🐘"), "\"ünï 🐘\"");
        assert_eq!(quote_ident(r#""""#), r#""""""""#);
    }

    #[test]
    fn literals_double_quotes_and_escape_backslashes() {
        assert_eq!(quote_literal("plain"), "'plain'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"back\slash"), r"E'back\\slash'");
        assert_eq!(quote_literal(r"\' OR 1=1 --"), r"E'\\'' OR 1=1 --'");
        assert_eq!(quote_literal(""), "''");
    }

    #[test]
    fn names_postgres_would_mangle_are_refused() {
        assert!(ident("role", "").is_err());
        assert!(ident("role", "a\0b").is_err());
        assert!(ident("role", &"x".repeat(64)).is_err());
        assert_eq!(ident("role", &"x".repeat(63)).unwrap().len(), 65);
        // 63 bytes, not characters: 32 two-byte characters are too long.
        assert!(ident("role", &"é".repeat(32)).is_err());
        assert!(literal("password", "a\0").is_err());
    }
}
