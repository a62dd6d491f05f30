//! Refresh: what exists of the objects kip manages, read in one session on `postgres` plus one per database whose
//! insides kip manages (declared extensions, schemas, schema-level grants), and reported with the same attribute
//! names the plan compares. Objects that do not exist are left out; what PostgreSQL cannot report (a password) is
//! left out too, and the state's last applied value stands in.

use std::collections::BTreeSet;

use kip_core::engine::{EngineError, InstanceCtx, Managed, Observed};
use kip_core::plan::Attributes;
use serde_json::{Value as Json, json};

use super::args::{GrantArgs, InstanceArgs};
use super::converge::grant_spec;
use super::engine::{generated_role_password, pg_error};
use super::{Connector, GrantTarget, Live};

/// What [`prefetch`] read ahead for a plan: the instance's roles and databases, without any database's insides.
pub struct ReadAhead(Live);

/// Reads the roles and databases of a running instance ahead of its refresh (see `Engine::prefetch`), in one
/// session that does not wait for a server that is not there. `None` on any failure: refresh reads again and says
/// what failed.
pub async fn prefetch(connector: &Connector) -> Option<ReadAhead> {
    let mut connector = connector.clone();
    connector.startup_timeout = std::time::Duration::ZERO;
    let live = super::sql::read_live_of(&connector, Some(&BTreeSet::new()))
        .await
        .ok()?;
    Some(ReadAhead(live))
}

pub async fn refresh(
    ctx: &InstanceCtx,
    connector: &Connector,
    managed: &[Managed<'_>],
) -> Result<Vec<Observed>, EngineError> {
    let contents = databases_with_contents(managed);
    let live = match ctx.session.take::<ReadAhead>() {
        Some(ReadAhead(mut live)) => {
            super::sql::read_contents(connector, &mut live, Some(&contents))
                .await
                .map(|()| live)
        }
        None => super::sql::read_live_of(connector, Some(&contents)).await,
    }
    .map_err(|e| pg_error("cannot read PostgreSQL", e))?;
    let mut observed: Vec<Observed> = Vec::new();
    // The instance's declared settings, as the server has them: one overridden behind kip's back is drift.
    if let Some(instance) = managed.iter().find(|node| node.address.is_instance()) {
        let args: InstanceArgs = ctx.args()?;
        let declared = args.server_settings();
        if !declared.is_empty() {
            let client = connector
                .connect("postgres")
                .await
                .map_err(|e| pg_error("cannot read PostgreSQL", e))?;
            let drift = super::config::settings_drift(&client, &declared)
                .await
                .map_err(|e| pg_error("cannot read the server's settings", e))?;
            if !drift.is_empty() {
                let mut settings = instance
                    .attributes
                    .get("settings")
                    .and_then(Json::as_object)
                    .cloned()
                    .unwrap_or_default();
                let mut io_method = instance.attributes.get("io_method").cloned();
                for (name, value) in drift {
                    if name == "io_method" && !settings.contains_key(&name) {
                        io_method = Some(json!(value));
                    } else {
                        settings.insert(name, json!(value));
                    }
                }
                let mut attributes = Attributes::new();
                attributes.insert("settings".into(), Json::Object(settings));
                if let Some(io_method) = io_method {
                    attributes.insert("io_method".into(), io_method);
                }
                observed.push(Observed {
                    address: instance.address.clone(),
                    attributes,
                });
            }
        }
    }
    observed.extend(managed.iter().filter_map(|node| {
        observe(ctx, &live, node).map(|attributes| Observed {
            address: node.address.clone(),
            attributes,
        })
    }));
    Ok(observed)
}

fn text(attributes: &Attributes, name: &str) -> Option<String> {
    attributes
        .get(name)
        .and_then(Json::as_str)
        .map(str::to_owned)
}

fn object(value: Json) -> Attributes {
    value
        .as_object()
        .map(|map| map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// What the server has of one managed object, or `None` when it does not exist.
fn observe(ctx: &InstanceCtx, live: &Live, node: &Managed<'_>) -> Option<Attributes> {
    // Grants are unlabelled; every other object has a name.
    let name = node.address.label().unwrap_or_default().to_owned();
    match node.kind {
        "role" => {
            let role = live.roles.get(&name)?;
            // Built as a map directly: a refresh observes every role, and there may be thousands.
            let mut attributes: Attributes = [
                ("login", Json::Bool(role.login)),
                ("superuser", Json::Bool(role.superuser)),
                ("createdb", Json::Bool(role.createdb)),
                ("createrole", Json::Bool(role.createrole)),
                ("inherit", Json::Bool(role.inherit)),
                ("replication", Json::Bool(role.replication)),
                ("bypassrls", Json::Bool(role.bypassrls)),
                ("connection_limit", json!(role.connection_limit)),
                ("valid_until", json!(role.valid_until)),
                ("member_of", json!(role.member_of)),
                ("has_password", Json::Bool(role.has_password)),
            ]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
            // Whether the password kip hands out (kip url, kip env) is the one the server has.
            let expects_password = node
                .attributes
                .get("has_password")
                .and_then(Json::as_bool)
                .unwrap_or(false);
            if expects_password {
                // The password kip set last (a change in the configuration is a change, not drift), else the one
                // it is about to set.
                let source = node.applied.unwrap_or(node.attributes);
                let generated;
                let expected = match source.get("password").and_then(Json::as_str) {
                    Some(chosen) => chosen,
                    None => {
                        generated = generated_role_password(ctx, &name);
                        generated.as_str()
                    }
                };
                let works = role
                    .verifier
                    .0
                    .as_deref()
                    .is_some_and(|verifier| super::scram::verifies(verifier, expected));
                attributes.insert("password_works".into(), json!(works));
            }
            Some(attributes)
        }
        "database" => {
            let database = live.databases.get(&name)?;
            let mut attributes = object(json!({
                "owner": database.owner, "encoding": database.encoding, "lc_collate": database.lc_collate,
                "lc_ctype": database.lc_ctype, "connection_limit": database.connection_limit,
                "is_template": database.is_template, "allow_connections": database.allow_connections,
            }));
            if database.contents_read {
                // Only the extensions kip manages through this list: declared in it now, or when kip last applied
                // it. Others (a user's own, one a CASCADE pulled in, one declared as an `extension` block, the
                // plpgsql every database has) are not this attribute's, and never dropped by it.
                let listed = |attributes: Option<&Attributes>| -> Vec<String> {
                    attributes
                        .and_then(|a| a.get("extensions"))
                        .and_then(Json::as_array)
                        .map(|items| {
                            items
                                .iter()
                                .filter_map(|i| i.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let mut managed = listed(Some(node.attributes));
                managed.extend(listed(node.applied));
                let extensions: Vec<&String> = database
                    .extensions
                    .keys()
                    .filter(|name| managed.contains(name))
                    .collect();
                attributes.insert("extensions".into(), json!(extensions));
            }
            Some(attributes)
        }
        "schema" => {
            let database_name =
                text(node.attributes, "database").unwrap_or_else(|| "postgres".into());
            let schema = live.databases.get(&database_name)?.schemas.get(&name)?;
            Some(object(
                json!({ "owner": schema.owner, "database": database_name }),
            ))
        }
        "extension" => {
            let database_name =
                text(node.attributes, "database").unwrap_or_else(|| "postgres".into());
            let extension = live.databases.get(&database_name)?.extensions.get(&name)?;
            Some(object(json!({
                "schema": extension.schema, "version": extension.version, "database": database_name,
            })))
        }
        "grant" => {
            let args: GrantArgs = kip_core::engine::typed(node.address, node.attributes).ok()?;
            let spec = grant_spec(&args).ok()?;
            grant_held(live, &spec).then(|| node.attributes.clone())
        }
        _ => None,
    }
}

/// Whether the live server already grants what `spec` asks.
fn grant_held(live: &Live, spec: &super::GrantSpec) -> bool {
    let all: Vec<&str>;
    let privileges: Vec<&str> = if spec.privileges.iter().any(|p| p == "ALL") {
        all = spec.target.all_privileges(live.server_version).to_vec();
        all.clone()
    } else {
        spec.privileges.iter().map(String::as_str).collect()
    };
    let Some(database) = live.databases.get(spec.target.database()) else {
        return false;
    };
    let schema = spec
        .target
        .schema()
        .and_then(|name| database.schemas.get(name));
    let option = spec.with_grant_option;
    match &spec.target {
        GrantTarget::Database { .. } => database.holds(&spec.role, &privileges, option),
        GrantTarget::Schema { .. } => {
            schema.is_some_and(|s| s.holds(&spec.role, &privileges, option))
        }
        GrantTarget::Tables { .. } => {
            schema.is_some_and(|s| s.tables.holds(&spec.role, &privileges, option))
        }
        GrantTarget::Sequences { .. } => {
            schema.is_some_and(|s| s.sequences.holds(&spec.role, &privileges, option))
        }
        GrantTarget::Functions { .. } => {
            schema.is_some_and(|s| s.functions.holds(&spec.role, &privileges, option))
        }
    }
}

/// The databases whose insides kip manages: only those need a session of their own to refresh.
fn databases_with_contents(managed: &[Managed<'_>]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for node in managed {
        match node.kind {
            "database" => {
                // Declared extensions, or extensions kip created before (so removing the last one is seen).
                let has = |attributes: &Attributes| {
                    attributes
                        .get("extensions")
                        .and_then(Json::as_array)
                        .is_some_and(|list| !list.is_empty())
                };
                let has_extensions = has(node.attributes) || node.applied.is_some_and(has);
                if has_extensions && let Some(name) = node.address.label() {
                    names.insert(name.to_owned());
                }
            }
            "schema" | "extension" => {
                names
                    .insert(text(node.attributes, "database").unwrap_or_else(|| "postgres".into()));
            }
            "grant" => {
                let on = text(node.attributes, "on");
                let schema = text(node.attributes, "schema");
                let database = text(node.attributes, "database");
                let database_level = match on.as_deref() {
                    Some(on) => on == "database",
                    None => !(schema.is_some() && database.is_none()),
                };
                if !database_level {
                    names.insert(database.unwrap_or_else(|| "postgres".into()));
                }
            }
            _ => {}
        }
    }
    names
}
