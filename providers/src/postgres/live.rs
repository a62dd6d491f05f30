//! What a running PostgreSQL reports: the live side of the diff.
//!
//! Plain, serialisable data in BTreeMaps, so that two reads of an unchanged server are equal byte for byte and a
//! snapshot in state diffs cleanly. It holds what kip can declare and nothing else (no tables, no rows), and only
//! objects a user could have made: roles created by `initdb` (the bootstrap superuser and the predefined `pg_*`
//! roles, OIDs below 16384) and the databases `postgres`, `template0` and `template1` are left out, and so are the
//! `pg_*` and `information_schema` schemas.
//!
//! Grants are PostgreSQL's effective ACLs (a NULL ACL read as its default, so an owner holds its privileges),
//! grantee by grantee, for non-system roles; grants to PUBLIC are not listed. Grants "on tables" (and sequences,
//! functions) are a snapshot in PostgreSQL: `GRANT … ON ALL TABLES IN SCHEMA` covers the tables that exist at that
//! moment, not later ones. kip keeps that meaning and makes it checkable: [`ObjectGrants::held`] lists only the
//! privileges that *every* such object in the schema grants the role, so a table created afterwards without them
//! shows up as drift and the next apply grants again. A schema with no such objects holds every grant vacuously
//! ([`ObjectGrants::holds`]). kip sets no default privileges (`ALTER DEFAULT PRIVILEGES`): they depend on which role
//! creates the objects, which kip does not know.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Privileges a role holds on one object: privilege name as PostgreSQL spells it ("CONNECT", "SELECT") → whether
/// it holds it with the grant option.
pub type Privileges = BTreeMap<String, bool>;

/// Everything kip can declare, as the server has it now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    /// `server_version_num`, e.g. 160014.
    pub server_version: i32,
    pub roles: BTreeMap<String, LiveRole>,
    pub databases: BTreeMap<String, LiveDatabase>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRole {
    pub login: bool,
    pub superuser: bool,
    pub createdb: bool,
    pub createrole: bool,
    pub inherit: bool,
    pub replication: bool,
    pub bypassrls: bool,
    /// -1 for no limit.
    pub connection_limit: i32,
    /// In UTC as `2030-01-01T00:00:00Z` (whole seconds), or `infinity`; None when never set. PostgreSQL cannot
    /// reset it to None once set, only to `infinity`.
    pub valid_until: Option<String>,
    /// Whether a password is set. Its value cannot be read back (the server keeps a SCRAM verifier), but the
    /// verifier tells whether a given password is the one set.
    pub has_password: bool,
    /// The roles it is a member of.
    pub member_of: BTreeSet<String>,
    /// The stored password verifier (`SCRAM-SHA-256$…`), to check that the password kip hands out still works.
    #[serde(skip)]
    pub verifier: Verifier,
}

/// A role's stored verifier. Not part of what the role *is*: setting the same password twice stores two verifiers
/// (a new salt each time), so two reads of roles compare equal whatever their verifiers. Never serialised.
#[derive(Debug, Clone, Default, Eq)]
pub struct Verifier(pub Option<String>);

impl PartialEq for Verifier {
    fn eq(&self, _other: &Verifier) -> bool {
        true
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveDatabase {
    pub owner: String,
    pub encoding: String,
    pub lc_collate: String,
    pub lc_ctype: String,
    /// -1 for no limit.
    pub connection_limit: i32,
    pub allow_connections: bool,
    pub is_template: bool,
    /// Grants on the database itself (CREATE, CONNECT, TEMPORARY), by grantee.
    pub grants: BTreeMap<String, Privileges>,
    /// False when kip could not look inside (the database does not allow connections): `schemas` and `extensions`
    /// are then empty because they are unknown, not because they are absent.
    pub contents_read: bool,
    pub schemas: BTreeMap<String, LiveSchema>,
    pub extensions: BTreeMap<String, LiveExtension>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSchema {
    pub owner: String,
    /// Grants on the schema itself (USAGE, CREATE), by grantee.
    pub grants: BTreeMap<String, Privileges>,
    pub tables: ObjectGrants,
    pub sequences: ObjectGrants,
    pub functions: ObjectGrants,
}

/// Grants on all objects of one kind in a schema (see the module docs for why this is an intersection).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectGrants {
    /// How many such objects the schema has.
    pub objects: u64,
    /// By grantee: the privileges every one of those objects grants it, with the grant option when every one
    /// grants that too.
    pub held: BTreeMap<String, Privileges>,
}

impl ObjectGrants {
    /// Whether `role` holds all of `privileges` (with the grant option when asked) on every object; true when there
    /// are no objects.
    pub fn holds(&self, role: &str, privileges: &[&str], with_grant_option: bool) -> bool {
        self.objects == 0 || holds(self.held.get(role), privileges, with_grant_option)
    }
}

impl LiveDatabase {
    /// Whether `role` holds all of `privileges` on the database (with the grant option when asked).
    pub fn holds(&self, role: &str, privileges: &[&str], with_grant_option: bool) -> bool {
        holds(self.grants.get(role), privileges, with_grant_option)
    }
}

impl LiveSchema {
    /// Whether `role` holds all of `privileges` on the schema (with the grant option when asked).
    pub fn holds(&self, role: &str, privileges: &[&str], with_grant_option: bool) -> bool {
        holds(self.grants.get(role), privileges, with_grant_option)
    }
}

fn holds(held: Option<&Privileges>, privileges: &[&str], with_grant_option: bool) -> bool {
    let Some(held) = held else {
        return privileges.is_empty();
    };
    privileges.iter().all(|privilege| {
        held.get(*privilege)
            .is_some_and(|grantable| *grantable || !with_grant_option)
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveExtension {
    pub version: String,
    pub schema: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_grants_are_vacuous_without_objects() {
        let none = ObjectGrants::default();
        assert!(none.holds("app", &["SELECT"], true));
        let some = ObjectGrants {
            objects: 2,
            held: BTreeMap::from([(
                "app".to_owned(),
                Privileges::from([("SELECT".to_owned(), false)]),
            )]),
        };
        assert!(some.holds("app", &["SELECT"], false));
        assert!(!some.holds("app", &["SELECT"], true));
        assert!(!some.holds("app", &["SELECT", "INSERT"], false));
        assert!(!some.holds("other", &["SELECT"], false));
    }
}
