//! Refresh: what exists of the managed databases, users and grants, and the server's character set and collation,
//! in four queries whatever their number (`information_schema.SCHEMATA`, `mysql.global_priv`, the three privilege
//! views in one `UNION ALL`, and the two server variables), as attributes under the names the plan compares.
//! Objects that do not exist are left out; attributes left unset in the configuration (a database's collation) are
//! not reported, so the server's choice is never drift.

use std::collections::{BTreeMap, BTreeSet};

use kip_core::address::Address;
use kip_core::engine::{EngineError, InstanceCtx, Managed, Observed};
use kip_core::plan::Attributes;
use mysql_async::prelude::Queryable as _;
use serde_json::{Value as Json, json};

use super::MyError;
use super::client::Connector;
use super::engine::{my_error, user_password};
use super::grants::{self, Target};

/// A database as `SCHEMATA` reports it: character set, collation.
type LiveDatabases = BTreeMap<String, (String, String)>;
/// A row of [`PRIVILEGES`]: grantee, database, table, privilege, grantable.
type PrivilegeRow = (String, Option<String>, Option<String>, String, String);
/// An account's privileges: by target, the privileges and whether any is grantable.
type LivePrivileges = BTreeMap<Target, (BTreeSet<String>, bool)>;

const DATABASES: &str = "SELECT SCHEMA_NAME, DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA";
const USERS: &str = "SELECT User, Host, Priv FROM mysql.global_priv";
const PRIVILEGES: &str = "SELECT GRANTEE, NULL, NULL, PRIVILEGE_TYPE, IS_GRANTABLE \
     FROM information_schema.USER_PRIVILEGES \
     UNION ALL SELECT GRANTEE, TABLE_SCHEMA, NULL, PRIVILEGE_TYPE, IS_GRANTABLE \
     FROM information_schema.SCHEMA_PRIVILEGES \
     UNION ALL SELECT GRANTEE, TABLE_SCHEMA, TABLE_NAME, PRIVILEGE_TYPE, IS_GRANTABLE \
     FROM information_schema.TABLE_PRIVILEGES";

const SERVER: &str = "SELECT @@GLOBAL.character_set_server, @@GLOBAL.collation_server";

/// What the server has, read once.
struct Live {
    databases: LiveDatabases,
    /// `(user, host)` → the account's `Priv` JSON.
    users: BTreeMap<(String, String), Json>,
    /// `'user'@'host'` → its privileges.
    privileges: BTreeMap<String, LivePrivileges>,
    /// The server's character set and collation as it runs (`SET GLOBAL` may have changed them).
    server: (String, String),
}

async fn read(connector: &Connector) -> Result<Live, MyError> {
    let mut conn = connector.connect().await?;
    let databases: Vec<(String, String, String)> = conn
        .query(DATABASES)
        .await
        .map_err(|error| MyError::sql(DATABASES, error))?;
    let users: Vec<(String, String, String)> = conn
        .query(USERS)
        .await
        .map_err(|error| MyError::sql(USERS, error))?;
    let rows: Vec<PrivilegeRow> = conn
        .query(PRIVILEGES)
        .await
        .map_err(|error| MyError::sql("SELECT … FROM information_schema.*_PRIVILEGES", error))?;
    let server: Option<(String, String)> = conn
        .query_first(SERVER)
        .await
        .map_err(|error| MyError::sql(SERVER, error))?;
    let _ = conn.disconnect().await;
    let mut privileges: BTreeMap<String, LivePrivileges> = BTreeMap::new();
    for (grantee, database, table, privilege, grantable) in rows {
        if privilege == "USAGE" {
            continue;
        }
        let entry = privileges
            .entry(grantee)
            .or_default()
            .entry(Target { database, table })
            .or_default();
        entry.0.insert(privilege);
        entry.1 |= grantable == "YES";
    }
    Ok(Live {
        databases: databases
            .into_iter()
            .map(|(name, charset, collation)| (name, (charset, collation)))
            .collect(),
        users: users
            .into_iter()
            .map(|(user, host, priv_json)| {
                let parsed = serde_json::from_str(&priv_json).unwrap_or(Json::Null);
                ((user, host), parsed)
            })
            .collect(),
        privileges,
        server: server.unwrap_or_default(),
    })
}

/// The grantee as `information_schema` writes it.
pub fn grantee(user: &str, host: &str) -> String {
    format!("'{user}'@'{host}'")
}

/// Reads what exists of `managed`.
pub async fn refresh(
    ctx: &InstanceCtx,
    connector: &Connector,
    managed: &[Managed<'_>],
) -> Result<Vec<Observed>, EngineError> {
    let live = read(connector)
        .await
        .map_err(|error| my_error("cannot read what exists in MariaDB", error))?;
    let hosts: BTreeMap<&Address, String> = managed
        .iter()
        .filter(|node| node.kind == "user")
        // The host kip created the account on, as `user` reads it: a changed host is a replacement, not drift.
        .map(|node| {
            (
                node.address,
                host_of(node.applied.unwrap_or(node.attributes)),
            )
        })
        .collect();
    let mut observed = Vec::new();
    for node in managed {
        let attributes = match node.kind {
            kip_core::plan::INSTANCE => server(&live, node),
            "database" => database(&live, node),
            "user" => user(ctx, &live, node, managed),
            "grant" => grant(&live, node, &hosts),
            _ => None,
        };
        if let Some(attributes) = attributes {
            observed.push(Observed {
                address: node.address.clone(),
                attributes,
            });
        }
    }
    Ok(observed)
}

pub(super) fn host_of(attributes: &Attributes) -> String {
    attributes
        .get("host")
        .and_then(Json::as_str)
        .unwrap_or("localhost")
        .to_owned()
}

fn object(value: Json) -> Attributes {
    match value {
        Json::Object(map) => map.into_iter().collect(),
        _ => Attributes::new(),
    }
}

fn is_set(attributes: &Attributes, name: &str) -> bool {
    attributes.get(name).is_some_and(|value| !value.is_null())
}

/// The instance's character set and collation, reported only when they differ from what kip applied (a
/// `SET GLOBAL` behind kip's back): drift, repaired by the restart the plan shows.
fn server(live: &Live, node: &Managed<'_>) -> Option<Attributes> {
    let (charset, collation) = &live.server;
    let attributes = charset_attributes(node, charset, collation);
    let applied = node.applied?;
    let drift: Attributes = attributes
        .into_iter()
        .filter(|(name, value)| applied.get(name) != Some(value))
        .collect();
    (!drift.is_empty()).then_some(drift)
}

fn database(live: &Live, node: &Managed<'_>) -> Option<Attributes> {
    let name = node.address.label()?;
    let (charset, collation) = live.databases.get(name)?;
    Some(charset_attributes(node, charset, collation))
}

/// `character_set` and `collation` as the server has them, for those the configuration sets, in kip's words when
/// they name the same.
fn charset_attributes(node: &Managed<'_>, charset: &str, collation: &str) -> Attributes {
    let source = node.applied.unwrap_or(node.attributes);
    let mut attributes = Attributes::new();
    for (attribute, live) in [("character_set", charset), ("collation", collation)] {
        if !is_set(node.attributes, attribute) {
            continue;
        }
        // What kip applied, in kip's words, when the server has that under its own name.
        let shown = match source.get(attribute).and_then(Json::as_str) {
            Some(applied) if same_charset_name(applied, live) => applied.to_owned(),
            _ => live.to_owned(),
        };
        attributes.insert(attribute.into(), json!(shown));
    }
    attributes
}

/// Whether a declared character set or collation name is the one MariaDB reports: names are case-insensitive,
/// and 10.11 reports `utf8` (and its collations) as `utf8mb3`.
pub fn same_charset_name(declared: &str, live: &str) -> bool {
    let declared = declared.to_ascii_lowercase();
    let declared = match declared.strip_prefix("utf8") {
        Some(rest) if !rest.starts_with("mb") => format!("utf8mb3{rest}"),
        _ => declared,
    };
    declared == live.to_ascii_lowercase()
}

fn user(
    ctx: &InstanceCtx,
    live: &Live,
    node: &Managed<'_>,
    managed: &[Managed<'_>],
) -> Option<Attributes> {
    let name = node.address.label()?;
    // The host kip created the account on (a changed host is a replacement the plan shows already).
    let source = node.applied.unwrap_or(node.attributes);
    let host = host_of(source);
    let account = live.users.get(&(name.to_owned(), host.clone()))?;
    let max_user_connections = account
        .get("max_user_connections")
        .and_then(Json::as_u64)
        .unwrap_or(0);
    // Whether the password kip hands out is the one the server checks: the one kip set last (a change in the
    // configuration is a change, not drift), else the one it is about to set.
    let expected = user_password(ctx, name, source);
    let works = account.get("plugin").and_then(Json::as_str) == Some("mysql_native_password")
        && account.get("authentication_string").and_then(Json::as_str)
            == Some(super::password::native_hash(&expected).as_str())
        && account.get("auth_or").is_none()
        && account.get("account_locked").and_then(Json::as_bool) != Some(true);
    // Privileges on targets that no grant of this user (declared, or applied before) names.
    let covered: BTreeSet<Target> = managed
        .iter()
        .filter(|other| {
            other.kind == "grant" && other.address.parent().as_ref() == Some(node.address)
        })
        .flat_map(|other| {
            [Some(&other.attributes), other.applied.as_ref()]
                .into_iter()
                .flatten()
                .filter_map(|attributes| attributes.get("on").and_then(Json::as_str))
                .filter_map(|on| Target::parse(on).ok())
                .collect::<Vec<_>>()
        })
        .collect();
    let undeclared: Vec<String> = live
        .privileges
        .get(&grantee(name, &host))
        .into_iter()
        .flat_map(|targets| targets.keys())
        .filter(|target| !covered.contains(target))
        .map(Target::text)
        .collect();
    Some(object(json!({
        "host": host,
        "max_user_connections": max_user_connections,
        "password_works": works,
        "undeclared_grants": undeclared,
    })))
}

fn grant(
    live: &Live,
    node: &Managed<'_>,
    hosts: &BTreeMap<&Address, String>,
) -> Option<Attributes> {
    let user_address = node.address.parent()?;
    let user = user_address.label()?;
    let host = hosts
        .get(&user_address)
        .cloned()
        .unwrap_or_else(|| "localhost".to_owned());
    let source = node.applied.unwrap_or(node.attributes);
    let on = source.get("on").and_then(Json::as_str)?;
    let target = Target::parse(on).ok()?;
    let (privileges, grantable) = live.privileges.get(&grantee(user, &host))?.get(&target)?;
    let declared = crate::shared::strings(source.get("privileges"));
    // What kip applied, in kip's words, when the server has exactly that.
    let shown = if &grants::expand(&target, &declared) == privileges {
        json!(grants::normalize_all(&declared))
    } else {
        json!(grants::collapse(&target, privileges))
    };
    Some(object(json!({
        "on": on,
        "privileges": shown,
        "with_grant_option": grantable,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charset_names_as_mariadb_reports_them() {
        assert!(same_charset_name("utf8", "utf8mb3"));
        assert!(same_charset_name("UTF8_general_ci", "utf8mb3_general_ci"));
        assert!(same_charset_name("utf8mb4", "utf8mb4"));
        assert!(!same_charset_name("utf8mb4", "utf8mb3"));
        assert!(!same_charset_name("latin1", "utf8mb4"));
    }
}
