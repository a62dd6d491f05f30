//! The only way names and values get into MariaDB's SQL text: identifiers in backticks (a backtick doubled), strings
//! in single quotes (a quote and a backslash escaped; kip's sessions turn `NO_BACKSLASH_ESCAPES` off, see
//! [`super::client`]), and NUL refused in both, since MariaDB cannot hold it in a name.

use super::MyError;

/// `name` as a quoted identifier: `` `shop` ``, `` `we``ird` ``.
pub fn ident(kind: &'static str, name: &str) -> Result<String, MyError> {
    check(kind, name)?;
    Ok(format!("`{}`", name.replace('`', "``")))
}

/// `value` as a string literal: `'it\'s'`.
pub fn literal(kind: &'static str, value: &str) -> Result<String, MyError> {
    if value.contains('\0') {
        return Err(MyError::InvalidName {
            kind,
            name: value.to_owned(),
            reason: "it holds a NUL character",
        });
    }
    Ok(format!(
        "'{}'",
        value.replace('\\', "\\\\").replace('\'', "\\'")
    ))
}

/// An account, `'name'@'host'`.
pub fn account(user: &str, host: &str) -> Result<String, MyError> {
    check("user", user)?;
    Ok(format!(
        "{}@{}",
        literal("user", user)?,
        literal("host", host)?
    ))
}

fn check(kind: &'static str, name: &str) -> Result<(), MyError> {
    if name.is_empty() {
        return Err(MyError::InvalidName {
            kind,
            name: name.to_owned(),
            reason: "it is empty",
        });
    }
    if name.contains('\0') {
        return Err(MyError::InvalidName {
            kind,
            name: name.to_owned(),
            reason: "it holds a NUL character",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(ident("database", "shop").unwrap(), "`shop`");
        assert_eq!(ident("database", "we`ird").unwrap(), "`we``ird`");
        assert!(ident("database", "").is_err());
        assert!(ident("database", "a\0b").is_err());
        assert_eq!(literal("host", "it's\\").unwrap(), "'it\\'s\\\\'");
        assert_eq!(account("app", "%").unwrap(), "'app'@'%'");
    }
}
