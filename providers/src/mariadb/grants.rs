//! Privilege targets and lists, as a `grant` block writes them and as MariaDB's `information_schema` reports them.
//!
//! A target is `*.*` (global), `shop.*` (a database) or `shop.orders` (a table), each part optionally in
//! backticks. MariaDB reports `ALL PRIVILEGES` as the privileges it stands for at that level; [`expand`] gives
//! them (measured against 10.11.19), so a declared `ALL PRIVILEGES` compares equal to what the server reports.

use std::collections::BTreeSet;

use super::MyError;
use super::quote::ident;

/// What a grant applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// `None` for `*.*`.
    pub database: Option<String>,
    /// `None` for `db.*` and `*.*`.
    pub table: Option<String>,
}

impl Target {
    /// Reads `on` (`*.*`, `shop.*`, `` `my-db`.`t` ``), by the schema's grammar (which lint checks first).
    pub fn parse(on: &str) -> Result<Target, MyError> {
        let (database, table) =
            kip_schemas::mariadb_grant_target(on).map_err(|reason| MyError::InvalidGrant {
                on: on.to_owned(),
                reason: reason.to_owned(),
            })?;
        Ok(Target { database, table })
    }

    /// The target in SQL: `*.*`, `` `shop`.* ``, `` `shop`.`orders` ``.
    pub fn sql(&self) -> Result<String, MyError> {
        Ok(match (&self.database, &self.table) {
            (None, _) => "*.*".to_owned(),
            (Some(database), None) => format!("{}.*", ident("database", database)?),
            (Some(database), Some(table)) => {
                format!(
                    "{}.{}",
                    ident("database", database)?,
                    ident("table", table)?
                )
            }
        })
    }

    /// The target as a `grant` block writes it, backticks only where needed.
    pub fn text(&self) -> String {
        let show = |name: &str| {
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
            {
                name.to_owned()
            } else {
                format!("`{}`", name.replace('`', "``"))
            }
        };
        match (&self.database, &self.table) {
            (None, _) => "*.*".to_owned(),
            (Some(database), None) => format!("{}.*", show(database)),
            (Some(database), Some(table)) => format!("{}.{}", show(database), show(table)),
        }
    }

    fn level(&self) -> &'static [&'static str] {
        match (&self.database, &self.table) {
            (None, _) => GLOBAL_ALL,
            (Some(_), None) => DATABASE_ALL,
            (Some(_), Some(_)) => TABLE_ALL,
        }
    }
}

/// What `ALL PRIVILEGES` stands for on `*.*`, in MariaDB 10.11.
const GLOBAL_ALL: &[&str] = &[
    "ALTER",
    "ALTER ROUTINE",
    "BINLOG ADMIN",
    "BINLOG MONITOR",
    "BINLOG REPLAY",
    "CONNECTION ADMIN",
    "CREATE",
    "CREATE ROUTINE",
    "CREATE TABLESPACE",
    "CREATE TEMPORARY TABLES",
    "CREATE USER",
    "CREATE VIEW",
    "DELETE",
    "DELETE HISTORY",
    "DROP",
    "EVENT",
    "EXECUTE",
    "FEDERATED ADMIN",
    "FILE",
    "INDEX",
    "INSERT",
    "LOCK TABLES",
    "PROCESS",
    "READ_ONLY ADMIN",
    "REFERENCES",
    "RELOAD",
    "REPLICATION MASTER ADMIN",
    "REPLICATION SLAVE",
    "REPLICATION SLAVE ADMIN",
    "SELECT",
    "SET USER",
    "SHOW DATABASES",
    "SHOW VIEW",
    "SHUTDOWN",
    "SLAVE MONITOR",
    "SUPER",
    "TRIGGER",
    "UPDATE",
];

/// What `ALL PRIVILEGES` stands for on `db.*`.
const DATABASE_ALL: &[&str] = &[
    "ALTER",
    "ALTER ROUTINE",
    "CREATE",
    "CREATE ROUTINE",
    "CREATE TEMPORARY TABLES",
    "CREATE VIEW",
    "DELETE",
    "DELETE HISTORY",
    "DROP",
    "EVENT",
    "EXECUTE",
    "INDEX",
    "INSERT",
    "LOCK TABLES",
    "REFERENCES",
    "SELECT",
    "SHOW VIEW",
    "TRIGGER",
    "UPDATE",
];

/// What `ALL PRIVILEGES` stands for on `db.table`.
const TABLE_ALL: &[&str] = &[
    "ALTER",
    "CREATE",
    "CREATE VIEW",
    "DELETE",
    "DELETE HISTORY",
    "DROP",
    "INDEX",
    "INSERT",
    "REFERENCES",
    "SELECT",
    "SHOW VIEW",
    "TRIGGER",
    "UPDATE",
];

/// A privilege as MariaDB names it: uppercase, single spaces, `ALL` spelled `ALL PRIVILEGES`, an alias by the
/// name MariaDB reports.
pub fn normalize(privilege: &str) -> String {
    let words: Vec<String> = privilege
        .split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect();
    match words.join(" ").as_str() {
        "ALL" => "ALL PRIVILEGES".to_owned(),
        "REPLICATION CLIENT" => "BINLOG MONITOR".to_owned(),
        other => other.to_owned(),
    }
}

/// The declared privileges, normalised, sorted, without duplicates.
pub fn normalize_all(privileges: &[String]) -> Vec<String> {
    let set: BTreeSet<String> = privileges.iter().map(|p| normalize(p)).collect();
    set.into_iter().collect()
}

/// Refuses a privilege that is not words of letters and `_` (it goes into SQL text as it is; lint checks the same).
pub fn check(on: &str, privilege: &str) -> Result<(), MyError> {
    match kip_schemas::mariadb_grant_privilege_problem(privilege) {
        Some(reason) => Err(MyError::InvalidGrant {
            on: on.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The privileges `privileges` stand for on `target`, as MariaDB reports them (`ALL PRIVILEGES` expanded,
/// `USAGE` dropped).
pub fn expand(target: &Target, privileges: &[String]) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for privilege in privileges.iter().map(|p| normalize(p)) {
        match privilege.as_str() {
            "ALL PRIVILEGES" => set.extend(target.level().iter().map(|p| (*p).to_owned())),
            "USAGE" => {}
            _ => {
                set.insert(privilege);
            }
        }
    }
    set
}

/// What the server reports, as a `grant` block would write it: `ALL PRIVILEGES` when it is all of the level.
pub fn collapse(target: &Target, live: &BTreeSet<String>) -> Vec<String> {
    let all: BTreeSet<String> = target.level().iter().map(|p| (*p).to_owned()).collect();
    if live == &all {
        vec!["ALL PRIVILEGES".to_owned()]
    } else {
        live.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let global = Target::parse("*.*").unwrap();
        assert_eq!(global.sql().unwrap(), "*.*");
        let shop = Target::parse("shop.*").unwrap();
        assert_eq!(shop.database.as_deref(), Some("shop"));
        assert_eq!(shop.sql().unwrap(), "`shop`.*");
        let table = Target::parse("`my.db`.`or``ders`").unwrap();
        assert_eq!(table.database.as_deref(), Some("my.db"));
        assert_eq!(table.table.as_deref(), Some("or`ders"));
        assert_eq!(table.text(), "`my.db`.`or``ders`");
        assert_eq!(Target::parse(&table.text()).unwrap(), table);
        for bad in ["shop", "*.orders", "shop.*x", "", "`a.*", "sh op.*"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn all_privileges_compare_with_what_mariadb_reports() {
        let shop = Target::parse("shop.*").unwrap();
        let all = expand(&shop, &["all".into()]);
        assert_eq!(all.len(), DATABASE_ALL.len());
        assert_eq!(collapse(&shop, &all), ["ALL PRIVILEGES"]);
        let some = expand(&shop, &["select".into(), "Insert".into()]);
        assert_eq!(collapse(&shop, &some), ["INSERT", "SELECT"]);
        assert!(check("shop.*", "SELECT (a)").is_err());
        assert!(check("shop.*", "SELECT; DROP").is_err());
        assert!(check("*.*", "read_only admin").is_ok());
    }
}
