//! The changes kip can make to a PostgreSQL server, and the SQL each one becomes.
//!
//! A [`PgChange`] says what should be true afterwards, not which statement to run, so that applying it twice (or
//! after a crash half-way through) is harmless: creating a role that exists converges its attributes, dropping
//! what is gone does nothing, revoking on an object that is gone does nothing. [`super::apply`] orders them so
//! dependencies hold (roles before the databases they own, databases before their schemas, drops last) and
//! batches them into as few round trips as PostgreSQL allows.
//!
//! Nothing here can touch user data: drops are never `CASCADE` (dropping a schema that still holds tables fails
//! with PostgreSQL's own list of what is in it), and a role is dropped with `DROP ROLE` alone, never `DROP OWNED`.
//! Names and values pass through [`super::quote`]; privileges are checked against the keywords PostgreSQL accepts.

use std::fmt;

use super::PgError;
use super::quote::{ident, literal};

/// A password on its way to the server. Debug and the statements shown in errors print `(redacted)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(password: impl Into<String>) -> Password {
        Password(password.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Password(redacted)")
    }
}

/// A role's attributes as declared. Creating or altering sets every one of them, so the role ends up exactly so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAttributes {
    pub login: bool,
    pub superuser: bool,
    pub createdb: bool,
    pub createrole: bool,
    pub inherit: bool,
    pub replication: bool,
    pub bypassrls: bool,
    pub connection_limit: i32,
    /// A timestamp PostgreSQL accepts, or `infinity`. None leaves it as it is (PostgreSQL cannot unset it).
    pub valid_until: Option<String>,
    /// None leaves the password as it is.
    pub password: Option<Password>,
}

impl Default for RoleAttributes {
    /// PostgreSQL's defaults for `CREATE ROLE`, which are kip's too.
    fn default() -> Self {
        RoleAttributes {
            login: false,
            superuser: false,
            createdb: false,
            createrole: false,
            inherit: true,
            replication: false,
            bypassrls: false,
            connection_limit: -1,
            valid_until: None,
            password: None,
        }
    }
}

/// A database as declared. Encoding, locales and template only matter when it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSpec {
    /// None: the superuser kip connects as.
    pub owner: Option<String>,
    pub encoding: Option<String>,
    pub lc_collate: Option<String>,
    pub lc_ctype: Option<String>,
    /// None: `template1`, or `template0` when the encoding or a locale differs from template1's.
    pub template: Option<String>,
    pub connection_limit: i32,
    pub allow_connections: bool,
    pub is_template: bool,
}

impl Default for DatabaseSpec {
    fn default() -> Self {
        DatabaseSpec {
            owner: None,
            encoding: None,
            lc_collate: None,
            lc_ctype: None,
            template: None,
            connection_limit: -1,
            allow_connections: true,
            is_template: false,
        }
    }
}

/// What privileges are granted on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GrantTarget {
    Database {
        database: String,
    },
    Schema {
        database: String,
        schema: String,
    },
    /// Every table, view, materialized view and foreign table in the schema at the time of the apply.
    Tables {
        database: String,
        schema: String,
    },
    Sequences {
        database: String,
        schema: String,
    },
    /// Every function (plain, aggregate, window; not procedures) in the schema at the time of the apply.
    Functions {
        database: String,
        schema: String,
    },
}

impl GrantTarget {
    pub fn database(&self) -> &str {
        match self {
            GrantTarget::Database { database }
            | GrantTarget::Schema { database, .. }
            | GrantTarget::Tables { database, .. }
            | GrantTarget::Sequences { database, .. }
            | GrantTarget::Functions { database, .. } => database,
        }
    }

    pub fn schema(&self) -> Option<&str> {
        match self {
            GrantTarget::Database { .. } => None,
            GrantTarget::Schema { schema, .. }
            | GrantTarget::Tables { schema, .. }
            | GrantTarget::Sequences { schema, .. }
            | GrantTarget::Functions { schema, .. } => Some(schema),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            GrantTarget::Database { .. } => "a database",
            GrantTarget::Schema { .. } => "a schema",
            GrantTarget::Tables { .. } => "tables",
            GrantTarget::Sequences { .. } => "sequences",
            GrantTarget::Functions { .. } => "functions",
        }
    }

    /// The privileges PostgreSQL has for this kind of object; `ALL` means all of them. `server_version` is
    /// `server_version_num` (MAINTAIN on tables exists from 17).
    pub fn all_privileges(&self, server_version: i32) -> &'static [&'static str] {
        match self {
            GrantTarget::Database { .. } => &["CONNECT", "CREATE", "TEMPORARY"],
            GrantTarget::Schema { .. } => &["CREATE", "USAGE"],
            GrantTarget::Tables { .. } if server_version >= 170_000 => &[
                "DELETE",
                "INSERT",
                "MAINTAIN",
                "REFERENCES",
                "SELECT",
                "TRIGGER",
                "TRUNCATE",
                "UPDATE",
            ],
            GrantTarget::Tables { .. } => &[
                "DELETE",
                "INSERT",
                "REFERENCES",
                "SELECT",
                "TRIGGER",
                "TRUNCATE",
                "UPDATE",
            ],
            GrantTarget::Sequences { .. } => &["SELECT", "UPDATE", "USAGE"],
            GrantTarget::Functions { .. } => &["EXECUTE"],
        }
    }

    /// Privileges as written in kip.hcl, normalised to PostgreSQL's spelling (upper case, `TEMP` → `TEMPORARY`,
    /// `ALL PRIVILEGES` → `ALL`) and checked against this kind of object. The order is kept, duplicates dropped.
    pub fn normalize_privileges(&self, privileges: &[String]) -> Result<Vec<String>, PgError> {
        let mut normalized: Vec<String> = Vec::new();
        for privilege in privileges {
            let upper = privilege.trim().to_ascii_uppercase();
            let upper = match upper.as_str() {
                "TEMP" => "TEMPORARY".to_owned(),
                "ALL PRIVILEGES" => "ALL".to_owned(),
                _ => upper,
            };
            // MAINTAIN is checked by the server on versions before 17.
            let known = upper == "ALL"
                || upper == "MAINTAIN"
                || self.all_privileges(i32::MAX).contains(&upper.as_str());
            if !known {
                return Err(PgError::InvalidPrivilege {
                    privilege: privilege.clone(),
                    on: self.kind(),
                });
            }
            if !normalized.contains(&upper) {
                normalized.push(upper);
            }
        }
        if normalized.is_empty() {
            return Err(PgError::InvalidPrivilege {
                privilege: String::new(),
                on: self.kind(),
            });
        }
        Ok(normalized)
    }

    fn render_object(&self) -> Result<String, PgError> {
        Ok(match self {
            GrantTarget::Database { database } => {
                format!("DATABASE {}", ident("database", database)?)
            }
            GrantTarget::Schema { schema, .. } => format!("SCHEMA {}", ident("schema", schema)?),
            GrantTarget::Tables { schema, .. } => {
                format!("ALL TABLES IN SCHEMA {}", ident("schema", schema)?)
            }
            GrantTarget::Sequences { schema, .. } => {
                format!("ALL SEQUENCES IN SCHEMA {}", ident("schema", schema)?)
            }
            GrantTarget::Functions { schema, .. } => {
                format!("ALL FUNCTIONS IN SCHEMA {}", ident("schema", schema)?)
            }
        })
    }
}

/// Privileges for a role on a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantSpec {
    pub role: String,
    pub target: GrantTarget,
    /// As PostgreSQL names them (see [`GrantTarget::normalize_privileges`]); `ALL` for all of them.
    pub privileges: Vec<String>,
    /// On a grant: grant with the grant option. On a revoke: revoke only the grant option, keeping the privileges.
    pub with_grant_option: bool,
}

/// One change to a PostgreSQL server. Each says what should hold afterwards; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgChange {
    /// Creates the role, or, if it exists, sets its attributes.
    CreateRole {
        name: String,
        attributes: RoleAttributes,
    },
    /// Sets every attribute of the role, creating it if it is missing.
    AlterRole {
        name: String,
        attributes: RoleAttributes,
    },
    /// Sets only the password (the bootstrap superuser's, for instance).
    SetPassword {
        role: String,
        password: Password,
    },
    /// `DROP ROLE IF EXISTS`. Fails, with PostgreSQL's list, while the role still owns objects or holds privileges.
    DropRole {
        name: String,
    },
    /// Makes `role` a member of `group`.
    GrantMembership {
        role: String,
        group: String,
    },
    RevokeMembership {
        role: String,
        group: String,
    },
    /// Creates the database, or, if it exists, sets its owner, connection limit and flags.
    CreateDatabase {
        name: String,
        spec: DatabaseSpec,
    },
    /// Sets what is given; None leaves it.
    AlterDatabase {
        name: String,
        owner: Option<String>,
        connection_limit: Option<i32>,
        allow_connections: Option<bool>,
        is_template: Option<bool>,
    },
    /// `DROP DATABASE IF EXISTS` (clearing `is_template` first, as PostgreSQL requires). Waits up to 5 s for other
    /// sessions to leave; `force` ends them instead (PostgreSQL 13+ `WITH (FORCE)`).
    DropDatabase {
        name: String,
        force: bool,
    },
    /// Creates the schema if missing and gives it to `owner` (None: the database's owner).
    CreateSchema {
        database: String,
        name: String,
        owner: Option<String>,
    },
    /// Gives the schema to `owner`, creating it if missing.
    AlterSchemaOwner {
        database: String,
        name: String,
        owner: String,
    },
    /// `DROP SCHEMA IF EXISTS`, never `CASCADE`: fails while it holds objects.
    DropSchema {
        database: String,
        name: String,
    },
    /// `CREATE EXTENSION IF NOT EXISTS … CASCADE` (CASCADE installs the extensions it requires).
    CreateExtension {
        database: String,
        name: String,
        schema: Option<String>,
        version: Option<String>,
    },
    /// `ALTER EXTENSION … UPDATE [TO version]`, creating it if missing.
    UpdateExtension {
        database: String,
        name: String,
        version: Option<String>,
    },
    /// `DROP EXTENSION IF EXISTS`, never `CASCADE`: fails while user objects depend on it.
    DropExtension {
        database: String,
        name: String,
    },
    Grant(GrantSpec),
    Revoke(GrantSpec),
}

impl PgChange {
    /// The database whose connection the change runs on; None for cluster-wide changes.
    pub fn database(&self) -> Option<&str> {
        match self {
            PgChange::CreateSchema { database, .. }
            | PgChange::AlterSchemaOwner { database, .. }
            | PgChange::DropSchema { database, .. }
            | PgChange::CreateExtension { database, .. }
            | PgChange::UpdateExtension { database, .. }
            | PgChange::DropExtension { database, .. } => Some(database),
            PgChange::Grant(spec) | PgChange::Revoke(spec) => match &spec.target {
                GrantTarget::Database { .. } => None,
                target => Some(target.database()),
            },
            _ => None,
        }
    }
}

/// A statement, and how to show it (passwords redacted).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Sql {
    pub text: String,
    pub shown: Option<String>,
}

impl Sql {
    pub fn plain(text: String) -> Sql {
        Sql { text, shown: None }
    }

    pub fn shown(&self) -> &str {
        self.shown.as_deref().unwrap_or(&self.text)
    }
}

impl fmt::Debug for Sql {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.shown())
    }
}

/// `CREATE ROLE` / `ALTER ROLE` with every attribute.
pub(crate) fn role_statement(
    verb: &str,
    name: &str,
    attributes: &RoleAttributes,
) -> Result<Sql, PgError> {
    let flag = |on: bool, word: &str| {
        if on {
            word.to_owned()
        } else {
            format!("NO{word}")
        }
    };
    let mut text = format!(
        "{verb} ROLE {} WITH {} {} {} {} {} {} {} CONNECTION LIMIT {}",
        ident("role", name)?,
        flag(attributes.login, "LOGIN"),
        flag(attributes.superuser, "SUPERUSER"),
        flag(attributes.createdb, "CREATEDB"),
        flag(attributes.createrole, "CREATEROLE"),
        flag(attributes.inherit, "INHERIT"),
        flag(attributes.replication, "REPLICATION"),
        flag(attributes.bypassrls, "BYPASSRLS"),
        attributes.connection_limit
    );
    if let Some(valid_until) = &attributes.valid_until {
        text.push_str(&format!(
            " VALID UNTIL {}",
            literal("valid_until", valid_until)?
        ));
    }
    with_password(text, attributes.password.as_ref())
}

fn with_password(text: String, password: Option<&Password>) -> Result<Sql, PgError> {
    match password {
        None => Ok(Sql::plain(text)),
        Some(password) => Ok(Sql {
            shown: Some(format!("{text} PASSWORD '(redacted)'")),
            text: format!(
                "{text} PASSWORD {}",
                literal("password", password.expose())?
            ),
        }),
    }
}

pub(crate) fn set_password(role: &str, password: &Password) -> Result<Sql, PgError> {
    with_password(
        format!("ALTER ROLE {}", ident("role", role)?),
        Some(password),
    )
}

pub(crate) fn membership(grant: bool, role: &str, group: &str) -> Result<Sql, PgError> {
    let (group, role) = (ident("role", group)?, ident("role", role)?);
    Ok(Sql::plain(if grant {
        format!("GRANT {group} TO {role}")
    } else {
        format!("REVOKE {group} FROM {role}")
    }))
}

/// `CREATE DATABASE` with what is set; `template` already decided by the caller.
pub(crate) fn create_database(
    name: &str,
    spec: &DatabaseSpec,
    template: Option<&str>,
) -> Result<Sql, PgError> {
    let mut text = format!("CREATE DATABASE {}", ident("database", name)?);
    if let Some(owner) = &spec.owner {
        text.push_str(&format!(" OWNER {}", ident("role", owner)?));
    }
    if let Some(encoding) = &spec.encoding {
        text.push_str(&format!(" ENCODING {}", literal("encoding", encoding)?));
    }
    if let Some(collate) = &spec.lc_collate {
        text.push_str(&format!(" LC_COLLATE {}", literal("lc_collate", collate)?));
    }
    if let Some(ctype) = &spec.lc_ctype {
        text.push_str(&format!(" LC_CTYPE {}", literal("lc_ctype", ctype)?));
    }
    if let Some(template) = template {
        text.push_str(&format!(" TEMPLATE {}", ident("database", template)?));
    }
    text.push_str(&format!(
        " CONNECTION LIMIT {} ALLOW_CONNECTIONS {} IS_TEMPLATE {}",
        spec.connection_limit, spec.allow_connections, spec.is_template
    ));
    Ok(Sql::plain(text))
}

/// The `ALTER DATABASE` statements that give an existing database what `spec` sets after creation (owner,
/// connection limit, flags).
pub(crate) fn alter_database_to(name: &str, spec: &DatabaseSpec) -> Result<Vec<Sql>, PgError> {
    alter_database(
        name,
        spec.owner.as_deref(),
        Some(spec.connection_limit),
        Some(spec.allow_connections),
        Some(spec.is_template),
    )
}

/// The `ALTER DATABASE` statements for what is set.
pub(crate) fn alter_database(
    name: &str,
    owner: Option<&str>,
    connection_limit: Option<i32>,
    allow_connections: Option<bool>,
    is_template: Option<bool>,
) -> Result<Vec<Sql>, PgError> {
    let database = ident("database", name)?;
    let mut statements = Vec::new();
    if let Some(owner) = owner {
        statements.push(Sql::plain(format!(
            "ALTER DATABASE {database} OWNER TO {}",
            ident("role", owner)?
        )));
    }
    let mut options = Vec::new();
    if let Some(limit) = connection_limit {
        options.push(format!("CONNECTION LIMIT {limit}"));
    }
    if let Some(allow) = allow_connections {
        options.push(format!("ALLOW_CONNECTIONS {allow}"));
    }
    if let Some(template) = is_template {
        options.push(format!("IS_TEMPLATE {template}"));
    }
    if !options.is_empty() {
        statements.push(Sql::plain(format!(
            "ALTER DATABASE {database} WITH {}",
            options.join(" ")
        )));
    }
    Ok(statements)
}

pub(crate) fn drop_database(name: &str, force: bool) -> Result<Sql, PgError> {
    let force = if force { " WITH (FORCE)" } else { "" };
    Ok(Sql::plain(format!(
        "DROP DATABASE IF EXISTS {}{force}",
        ident("database", name)?
    )))
}

/// `CREATE SCHEMA IF NOT EXISTS` then `ALTER SCHEMA … OWNER TO`, so an existing schema converges too.
pub(crate) fn ensure_schema(name: &str, owner: &str) -> Result<Vec<Sql>, PgError> {
    let (schema, owner) = (ident("schema", name)?, ident("role", owner)?);
    Ok(vec![
        Sql::plain(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {owner}"
        )),
        Sql::plain(format!("ALTER SCHEMA {schema} OWNER TO {owner}")),
    ])
}

pub(crate) fn drop_schema(name: &str) -> Result<Sql, PgError> {
    Ok(Sql::plain(format!(
        "DROP SCHEMA IF EXISTS {}",
        ident("schema", name)?
    )))
}

pub(crate) fn create_extension(
    name: &str,
    schema: Option<&str>,
    version: Option<&str>,
) -> Result<Sql, PgError> {
    let mut text = format!(
        "CREATE EXTENSION IF NOT EXISTS {}",
        ident("extension", name)?
    );
    if let Some(schema) = schema {
        text.push_str(&format!(" SCHEMA {}", ident("schema", schema)?));
    }
    if let Some(version) = version {
        text.push_str(&format!(
            " VERSION {}",
            literal("extension version", version)?
        ));
    }
    text.push_str(" CASCADE");
    Ok(Sql::plain(text))
}

pub(crate) fn update_extension(name: &str, version: Option<&str>) -> Result<Sql, PgError> {
    let mut text = format!("ALTER EXTENSION {} UPDATE", ident("extension", name)?);
    if let Some(version) = version {
        text.push_str(&format!(" TO {}", literal("extension version", version)?));
    }
    Ok(Sql::plain(text))
}

pub(crate) fn drop_extension(name: &str) -> Result<Sql, PgError> {
    Ok(Sql::plain(format!(
        "DROP EXTENSION IF EXISTS {}",
        ident("extension", name)?
    )))
}

pub(crate) fn grant(spec: &GrantSpec, revoke: bool) -> Result<Sql, PgError> {
    let privileges = spec
        .target
        .normalize_privileges(&spec.privileges)?
        .join(", ");
    let object = spec.target.render_object()?;
    let role = ident("role", &spec.role)?;
    Ok(Sql::plain(match (revoke, spec.with_grant_option) {
        (false, false) => format!("GRANT {privileges} ON {object} TO {role}"),
        (false, true) => format!("GRANT {privileges} ON {object} TO {role} WITH GRANT OPTION"),
        (true, false) => format!("REVOKE {privileges} ON {object} FROM {role}"),
        (true, true) => format!("REVOKE GRANT OPTION FOR {privileges} ON {object} FROM {role}"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_statements_set_every_attribute_and_redact_the_password() {
        let attributes = RoleAttributes {
            login: true,
            password: Some(Password::new("s3cr'et")),
            valid_until: Some("2030-01-01T00:00:00Z".into()),
            ..RoleAttributes::default()
        };
        let sql = role_statement("CREATE", "app", &attributes).unwrap();
        assert_eq!(
            sql.text,
            "CREATE ROLE \"app\" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION NOBYPASSRLS \
             CONNECTION LIMIT -1 VALID UNTIL '2030-01-01T00:00:00Z' PASSWORD 's3cr''et'"
        );
        assert!(sql.shown().ends_with("PASSWORD '(redacted)'"));
        assert!(!format!("{sql:?} {attributes:?}").contains("s3cr"));
    }

    #[test]
    fn grants_render_per_target() {
        let spec = GrantSpec {
            role: "app".into(),
            target: GrantTarget::Tables {
                database: "shop".into(),
                schema: "public".into(),
            },
            privileges: vec!["select".into(), "Insert".into(), "SELECT".into()],
            with_grant_option: false,
        };
        assert_eq!(
            grant(&spec, false).unwrap().text,
            r#"GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA "public" TO "app""#
        );
        let spec = GrantSpec {
            target: GrantTarget::Database {
                database: "shop".into(),
            },
            privileges: vec!["temp".into(), "connect".into()],
            with_grant_option: true,
            ..spec
        };
        assert_eq!(
            grant(&spec, true).unwrap().text,
            r#"REVOKE GRANT OPTION FOR TEMPORARY, CONNECT ON DATABASE "shop" FROM "app""#
        );
    }

    #[test]
    fn privileges_are_keywords_from_a_list() {
        let database = GrantTarget::Database {
            database: "d".into(),
        };
        assert!(database.normalize_privileges(&["SELECT".into()]).is_err());
        assert!(
            database
                .normalize_privileges(&["CONNECT; DROP TABLE x".into()])
                .is_err()
        );
        assert!(database.normalize_privileges(&[]).is_err());
        assert_eq!(
            database
                .normalize_privileges(&["all privileges".into()])
                .unwrap(),
            ["ALL"]
        );
    }

    #[test]
    fn create_database_quotes_everything() {
        let spec = DatabaseSpec {
            owner: Some("o\"wner".into()),
            encoding: Some("UTF8".into()),
            ..DatabaseSpec::default()
        };
        assert_eq!(
            create_database("shop it's", &spec, Some("template0"))
                .unwrap()
                .text,
            "CREATE DATABASE \"shop it's\" OWNER \"o\"\"wner\" ENCODING 'UTF8' TEMPLATE \"template0\" CONNECTION \
             LIMIT -1 ALLOW_CONNECTIONS true IS_TEMPLATE false"
        );
    }
}
