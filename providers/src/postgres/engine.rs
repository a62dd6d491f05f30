//! The PostgreSQL engine behind kip's [`Engine`] trait: what a `postgres` block means as nodes, how an instance
//! is provisioned (a copy of a per-version template), started, reconfigured, refreshed and converged.
//!
//! Objects are nodes with flat attributes the plan compares: a role's flags, a database's owner and
//! extensions, a schema's owner, a grant's privileges. Only attributes the configuration sets are compared, so
//! PostgreSQL's own defaults are never drift.

use std::collections::{BTreeMap, BTreeSet};

use kip_core::config::{Block, Body, Instance, Value};
use kip_core::engine::{BoxFuture, Engine, EngineError, InstanceEnv, Reconfigure, SpawnSpec};
use kip_core::plan::{Action, Attributes, Change, Desired, Existing};
use serde_json::{Value as Json, json};

use super::{
    AuthMethod, Connector, DatabaseSpec, GrantSpec, GrantTarget, InitOptions, Live, Password,
    PgChange, PgError, RoleAttributes, ServerConfig, SettingValue, SettingsAction,
};

/// The `postgres` engine.
#[derive(Debug, Default)]
pub struct Postgres;

fn pg_error(context: &str, error: PgError) -> EngineError {
    let hint = error.hint();
    let mut engine_error = EngineError::with_source(context.to_owned(), error);
    engine_error.hint = hint;
    engine_error
}

fn json_of(value: &Value) -> Result<Json, EngineError> {
    match value {
        Value::Known(value) => {
            serde_json::to_value(value).map_err(|e| EngineError::with_source("a value", e))
        }
        Value::Deferred(_) => Err(EngineError::new(
            "a postgres argument reads another engine's attribute; kip needs it known before apply",
        )),
    }
}

fn attributes(body: &Body, names: &[&str]) -> Result<Attributes, EngineError> {
    let mut attributes = Attributes::new();
    for name in names {
        if let Some(attribute) = body.attributes.get(*name) {
            attributes.insert((*name).to_owned(), json_of(&attribute.value)?);
        }
    }
    Ok(attributes)
}

fn string_list(value: Option<&Json>) -> Vec<String> {
    let mut list: Vec<String> = value
        .and_then(Json::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    list.sort();
    list.dedup();
    list
}

fn label(block: &Block) -> String {
    block.label.clone().unwrap_or_default()
}

fn superuser(instance: &Instance) -> String {
    instance
        .body
        .attributes
        .get("superuser")
        .and_then(|attribute| attribute.value.known())
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_else(|| "postgres".to_owned())
}

fn port(instance: &Instance) -> Option<u16> {
    instance
        .body
        .attributes
        .get("port")
        .and_then(|attribute| attribute.value.known())
        .and_then(|value| value.as_u64())
        .and_then(|port| u16::try_from(port).ok())
}

fn settings(instance: &Instance) -> BTreeMap<String, SettingValue> {
    let Some(hcl::Value::Object(map)) = instance
        .body
        .attributes
        .get("settings")
        .and_then(|a| a.value.known())
    else {
        return BTreeMap::new();
    };
    map.iter()
        .filter_map(|(name, value)| {
            let setting = match value {
                hcl::Value::Bool(flag) => SettingValue::Bool(*flag),
                hcl::Value::Number(number) => match number.as_i64() {
                    Some(integer) => SettingValue::Integer(integer),
                    None => SettingValue::Float(number.as_f64()?),
                },
                hcl::Value::String(text) => SettingValue::String(text.clone()),
                _ => return None,
            };
            Some((name.clone(), setting))
        })
        .collect()
}

fn random_secret() -> String {
    let mut bytes = [0u8; 18];
    if let Ok(mut random) = std::fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = random.read_exact(&mut bytes);
    }
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn role_secret(role: &str) -> String {
    format!("role.{role}.password")
}

/// The password of a role kip logs in as: the configured one, else one derived from the instance's own secret
/// (kept in state from provisioning on), so that it is known again even after a crash between creating the role
/// and saving the state.
fn role_password(env: &InstanceEnv, role: &str, configured: Option<&str>) -> String {
    match configured {
        Some(password) => password.to_owned(),
        None => {
            let secret = env
                .secrets
                .get("password")
                .map(String::as_str)
                .unwrap_or_default();
            let digest = <sha2::Sha256 as sha2::Digest>::digest(format!(
                "kip role password\0{secret}\0{role}"
            ));
            digest[..16]
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect()
        }
    }
}

/// The password of a declared role that logs in (or has a password), None for other roles.
fn login_role_password(env: &InstanceEnv, role: &str) -> Option<String> {
    let block = env
        .instance
        .body
        .blocks
        .iter()
        .find(|b| b.kind == "role" && b.label.as_deref() == Some(role))?;
    let known = |name: &str| {
        block
            .body
            .attributes
            .get(name)
            .and_then(|a| a.value.known())
    };
    let configured = known("password").and_then(|v| v.as_str().map(str::to_owned));
    let login = known("login")
        .and_then(hcl::Value::as_bool)
        .unwrap_or(false);
    (login || configured.is_some()).then(|| role_password(env, role, configured.as_deref()))
}

fn grant_target(attributes: &Attributes) -> Option<GrantTarget> {
    let database = attributes
        .get("database")
        .and_then(Json::as_str)
        .map(str::to_owned);
    let schema = attributes
        .get("schema")
        .and_then(Json::as_str)
        .map(str::to_owned);
    let on = attributes
        .get("on")
        .and_then(Json::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            if schema.is_some() && database.is_none() {
                "schema".into()
            } else {
                "database".into()
            }
        });
    let database = database.unwrap_or_else(|| "postgres".to_owned());
    let in_schema = || schema.clone().unwrap_or_else(|| "public".to_owned());
    Some(match on.as_str() {
        "database" => GrantTarget::Database { database },
        "schema" => GrantTarget::Schema {
            database,
            schema: in_schema(),
        },
        "tables" => GrantTarget::Tables {
            database,
            schema: in_schema(),
        },
        "sequences" => GrantTarget::Sequences {
            database,
            schema: in_schema(),
        },
        "functions" => GrantTarget::Functions {
            database,
            schema: in_schema(),
        },
        _ => return None,
    })
}

fn grant_spec(attributes: &Attributes) -> Result<GrantSpec, EngineError> {
    let target = grant_target(attributes)
        .ok_or_else(|| EngineError::new("a grant's `on` is not a known kind"))?;
    let privileges = target
        .normalize_privileges(&string_list(attributes.get("privileges")))
        .map_err(|error| pg_error("invalid grant", error))?;
    Ok(GrantSpec {
        role: attributes
            .get("role")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned(),
        target,
        privileges,
        with_grant_option: attributes
            .get("with_grant_option")
            .and_then(Json::as_bool)
            .unwrap_or(false),
    })
}

/// Whether the live server already grants what `spec` asks.
fn grant_held(live: &Live, spec: &GrantSpec) -> bool {
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
    match &spec.target {
        GrantTarget::Database { .. } => {
            database.holds(&spec.role, &privileges, spec.with_grant_option)
        }
        GrantTarget::Schema { .. } => {
            schema.is_some_and(|s| s.holds(&spec.role, &privileges, spec.with_grant_option))
        }
        GrantTarget::Tables { .. } => schema.is_some_and(|s| {
            s.tables
                .holds(&spec.role, &privileges, spec.with_grant_option)
        }),
        GrantTarget::Sequences { .. } => schema.is_some_and(|s| {
            s.sequences
                .holds(&spec.role, &privileges, spec.with_grant_option)
        }),
        GrantTarget::Functions { .. } => schema.is_some_and(|s| {
            s.functions
                .holds(&spec.role, &privileges, spec.with_grant_option)
        }),
    }
}

const ROLE_ATTRIBUTES: &[&str] = &[
    "login",
    "superuser",
    "createdb",
    "createrole",
    "inherit",
    "replication",
    "connection_limit",
    "valid_until",
];
const DATABASE_ATTRIBUTES: &[&str] = &[
    "owner",
    "encoding",
    "lc_collate",
    "lc_ctype",
    "connection_limit",
    "is_template",
    "allow_connections",
];

impl Postgres {
    fn connector(&self, env: &InstanceEnv) -> Connector {
        let mut connector = Connector::new(&env.run_dir, port(&env.instance));
        connector.user = superuser(&env.instance);
        connector.password = env
            .secrets
            .get("password")
            .map(|p| Password::new(p.clone()));
        connector
    }

    fn object_desired(
        &self,
        instance: &Instance,
        block: &Block,
        database: Option<&str>,
        out: &mut Vec<Desired>,
    ) -> Result<(), EngineError> {
        let Some(address) = &block.address else {
            return Ok(());
        };
        let mut node = Desired {
            address: address.to_string(),
            engine: "postgres".into(),
            kind: block.kind.clone(),
            attributes: Attributes::new(),
            replace_on: BTreeSet::new(),
            sensitive: BTreeSet::new(),
            prevent_destroy: block.prevent_destroy || instance.prevent_destroy,
        };
        match block.kind.as_str() {
            "role" => {
                node.attributes = attributes(&block.body, ROLE_ATTRIBUTES)?;
                if block.body.attributes.contains_key("member_of") {
                    let members = attributes(&block.body, &["member_of"])?;
                    node.attributes.insert(
                        "member_of".into(),
                        json!(string_list(members.get("member_of"))),
                    );
                }
                let login = node
                    .attributes
                    .get("login")
                    .and_then(Json::as_bool)
                    .unwrap_or(false);
                if login || block.body.attributes.contains_key("password") {
                    node.attributes.insert("has_password".into(), json!(true));
                }
            }
            "database" => {
                node.attributes = attributes(&block.body, DATABASE_ATTRIBUTES)?;
                if let Some(locale) = block.body.attributes.get("locale") {
                    let locale = json_of(&locale.value)?;
                    node.attributes
                        .entry("lc_collate".into())
                        .or_insert_with(|| locale.clone());
                    node.attributes.entry("lc_ctype".into()).or_insert(locale);
                }
                let extensions = attributes(&block.body, &["extensions"])?;
                node.attributes.insert(
                    "extensions".into(),
                    json!(string_list(extensions.get("extensions"))),
                );
                node.replace_on = ["encoding", "lc_collate", "lc_ctype"]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect();
                out.push(node);
                let name = label(block);
                for child in &block.body.blocks {
                    self.object_desired(instance, child, Some(&name), out)?;
                }
                return Ok(());
            }
            "schema" => {
                node.attributes = attributes(&block.body, &["owner"])?;
                let database = match database {
                    Some(database) => database.to_owned(),
                    None => attributes(&block.body, &["database"])?
                        .get("database")
                        .and_then(Json::as_str)
                        .unwrap_or("postgres")
                        .to_owned(),
                };
                node.attributes.insert("database".into(), json!(database));
                node.replace_on.insert("database".into());
            }
            "extension" => {
                node.attributes = attributes(&block.body, &["schema", "version"])?;
                node.attributes
                    .insert("database".into(), json!(database.unwrap_or("postgres")));
            }
            "grant" => {
                node.attributes = attributes(
                    &block.body,
                    &["role", "database", "schema", "on", "with_grant_option"],
                )?;
                let privileges = attributes(&block.body, &["privileges"])?;
                let mut list = string_list(privileges.get("privileges"));
                list.iter_mut().for_each(|p| *p = p.to_ascii_uppercase());
                node.attributes.insert("privileges".into(), json!(list));
            }
            _ => return Ok(()),
        }
        out.push(node);
        Ok(())
    }

    fn existing_of(
        &self,
        env: &InstanceEnv,
        live: &Live,
        address: &str,
        desired: Option<&Desired>,
    ) -> Option<Existing> {
        let instance = &env.instance;
        let parsed = find_block(&instance.body, address);
        let kind = address_kind(address)?;
        let name = address_name(address);
        let attributes: Attributes;
        match kind.as_str() {
            "role" => {
                let role = live.roles.get(&name)?;
                attributes = json_attributes(&json!({
                    "login": role.login, "superuser": role.superuser, "createdb": role.createdb,
                    "createrole": role.createrole, "inherit": role.inherit, "replication": role.replication,
                    "connection_limit": role.connection_limit, "valid_until": role.valid_until,
                    "member_of": role.member_of, "has_password": role.has_password,
                }));
            }
            "database" => {
                let database = live.databases.get(&name)?;
                attributes = json_attributes(&json!({
                    "owner": database.owner, "encoding": database.encoding, "lc_collate": database.lc_collate,
                    "lc_ctype": database.lc_ctype, "connection_limit": database.connection_limit,
                    "is_template": database.is_template, "allow_connections": database.allow_connections,
                    // plpgsql comes with every database (from template1); it is not kip's to manage.
                    "extensions": database.extensions.keys().filter(|name| *name != "plpgsql").collect::<Vec<_>>(),
                }));
            }
            "schema" | "extension" => {
                let database_name = desired
                    .and_then(|d| d.attributes.get("database"))
                    .and_then(Json::as_str)
                    .map(str::to_owned)
                    .or_else(|| database_of(address))?;
                let database = live.databases.get(&database_name)?;
                if kind == "schema" {
                    let schema = database.schemas.get(&name)?;
                    attributes = json_attributes(
                        &json!({ "owner": schema.owner, "database": database_name }),
                    );
                } else {
                    let extension = database.extensions.get(&name)?;
                    attributes = json_attributes(&json!({
                        "schema": extension.schema, "version": extension.version, "database": database_name,
                    }));
                }
            }
            "grant" => {
                let desired = desired?;
                let spec = grant_spec(&desired.attributes).ok()?;
                if !grant_held(live, &spec) {
                    return None;
                }
                attributes = desired.attributes.clone();
            }
            _ => return None,
        }
        Some(Existing {
            address: address.to_owned(),
            engine: "postgres".into(),
            kind,
            attributes,
            prevent_destroy: parsed.is_some_and(|block| block.prevent_destroy),
        })
    }
}

/// The databases whose insides kip manages (extensions, schemas, schema-level grants): only those need a
/// session of their own to refresh.
fn databases_with_contents(
    desired: &[Desired],
    managed: &BTreeMap<String, Attributes>,
) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for node in desired {
        match node.kind.as_str() {
            "database" => {
                let declares = node
                    .attributes
                    .get("extensions")
                    .and_then(Json::as_array)
                    .is_some_and(|list| !list.is_empty());
                if declares {
                    names.insert(address_name(&node.address));
                }
            }
            "schema" | "extension" => {
                if let Some(database) = node.attributes.get("database").and_then(Json::as_str) {
                    names.insert(database.to_owned());
                }
            }
            "grant" => {
                let on = node
                    .attributes
                    .get("on")
                    .and_then(Json::as_str)
                    .unwrap_or("database");
                if on != "database" {
                    let database = node
                        .attributes
                        .get("database")
                        .and_then(Json::as_str)
                        .unwrap_or("postgres");
                    names.insert(database.to_owned());
                }
            }
            _ => {}
        }
    }
    // Objects kip created inside databases before (schemas, extensions) stay visible after their blocks go.
    for (address, attributes) in managed {
        // A database that had extensions: look inside, so that removing the last one is seen.
        let had_extensions = attributes
            .get("extensions")
            .and_then(Json::as_array)
            .is_some_and(|l| !l.is_empty());
        if address_kind(address).as_deref() == Some("database") && had_extensions {
            names.insert(address_name(address));
        }
        if address_kind(address).is_some_and(|kind| kind == "schema" || kind == "extension")
            && let Some(database) = database_of(address)
        {
            names.insert(database);
        }
    }
    names
}

fn json_attributes(value: &Json) -> Attributes {
    value
        .as_object()
        .map(|map| map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn find_block<'a>(body: &'a Body, address: &str) -> Option<&'a Block> {
    for block in &body.blocks {
        if block
            .address
            .as_ref()
            .is_some_and(|a| a.to_string() == address)
        {
            return Some(block);
        }
        if let Some(found) = find_block(&block.body, address) {
            return Some(found);
        }
    }
    None
}

/// `postgres.main.database.shop.schema.s` → ("schema", "s"); the kind is the second-to-last dotted step.
fn address_kind(address: &str) -> Option<String> {
    let steps = address_steps(address);
    let (kind, _) = steps.last()?;
    Some(kind.clone())
}

fn address_name(address: &str) -> String {
    address_steps(address)
        .last()
        .map(|(_, name)| name.clone())
        .unwrap_or_default()
}

fn database_of(address: &str) -> Option<String> {
    address_steps(address)
        .into_iter()
        .find(|(kind, _)| kind == "database")
        .map(|(_, name)| name)
}

/// The (kind, label) steps after `ENGINE.NAME` of an address whose labels contain no dots.
fn address_steps(address: &str) -> Vec<(String, String)> {
    let parts: Vec<&str> = address.split('.').skip(2).collect();
    let mut steps = Vec::new();
    let mut index = 0;
    while index < parts.len() {
        let part = parts[index];
        if let Some((kind, rest)) = part.split_once('[') {
            steps.push((kind.to_owned(), rest.trim_end_matches(']').to_owned()));
            index += 1;
        } else if index + 1 < parts.len() {
            steps.push((part.to_owned(), parts[index + 1].to_owned()));
            index += 2;
        } else {
            break;
        }
    }
    steps
}

fn role_attributes(attributes: &Attributes, password: Option<Password>) -> RoleAttributes {
    let flag = |name: &str, default: bool| {
        attributes
            .get(name)
            .and_then(Json::as_bool)
            .unwrap_or(default)
    };
    RoleAttributes {
        login: flag("login", false),
        superuser: flag("superuser", false),
        createdb: flag("createdb", false),
        createrole: flag("createrole", false),
        inherit: flag("inherit", true),
        replication: flag("replication", false),
        bypassrls: false,
        connection_limit: attributes
            .get("connection_limit")
            .and_then(Json::as_i64)
            .unwrap_or(-1) as i32,
        valid_until: attributes
            .get("valid_until")
            .and_then(Json::as_str)
            .map(str::to_owned),
        password,
    }
}

impl Engine for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn desired(&self, instance: &Instance) -> Result<Vec<Desired>, EngineError> {
        let mut nodes = Vec::new();
        let mut attributes = Attributes::new();
        let major = instance.version.as_ref().map(|version| version.major);
        attributes.insert("major".into(), json!(major));
        attributes.insert("port".into(), json!(port(instance)));
        let settings: BTreeMap<String, Json> = match instance.body.attributes.get("settings") {
            Some(attribute) => {
                serde_json::from_value(json_of(&attribute.value)?).unwrap_or_default()
            }
            None => BTreeMap::new(),
        };
        attributes.insert("settings".into(), json!(settings));
        nodes.push(Desired {
            address: instance.address.to_string(),
            engine: "postgres".into(),
            kind: "instance".into(),
            attributes,
            replace_on: ["major".to_owned()].into(),
            sensitive: BTreeSet::new(),
            prevent_destroy: instance.prevent_destroy,
        });
        for block in &instance.body.blocks {
            self.object_desired(instance, block, None, &mut nodes)?;
        }
        Ok(nodes)
    }

    fn provision<'a>(&'a self, env: &'a mut InstanceEnv) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let options = InitOptions {
                superuser: superuser(&env.instance),
                ..InitOptions::default()
            };
            let template = super::ensure_template(
                &env.toolchain.root,
                &env.toolchain.version,
                &options,
                &env.templates,
                env.run_as.as_ref(),
            )
            .map_err(|error| pg_error("cannot prepare the PostgreSQL template", error))?;
            super::provision(&template, &env.data_dir, env.run_as.as_ref())
                .map_err(|error| pg_error("cannot create the data directory", error))?;
            let configured = env
                .instance
                .body
                .attributes
                .get("password")
                .and_then(|a| a.value.known())
                .and_then(|v| v.as_str().map(str::to_owned));
            let password = configured.unwrap_or_else(random_secret);
            env.secrets.entry("password".into()).or_insert(password);
            let settings = settings(&env.instance);
            let config = ServerConfig {
                socket_dir: &env.run_dir,
                port: port(&env.instance),
                settings: &settings,
            };
            super::write_config(&env.data_dir, &config, env.run_as.as_ref())
                .map_err(|error| pg_error("cannot write the PostgreSQL configuration", error))?;
            // Trust until the superuser has its password (set right after the start), then password auth.
            if !env.secrets.contains_key("hba.secured") {
                super::write_hba(&env.data_dir, AuthMethod::Trust, env.run_as.as_ref())
                    .map_err(|error| pg_error("cannot write pg_hba.conf", error))?;
            }
            Ok(())
        })
    }

    fn ports(&self, env: &InstanceEnv) -> Vec<u16> {
        port(&env.instance).into_iter().collect()
    }

    fn spawn_specs(&self, env: &InstanceEnv) -> Result<Vec<SpawnSpec>, EngineError> {
        Ok(vec![super::spawn_spec(
            &env.address,
            &env.toolchain.root,
            &env.data_dir,
            &env.run_dir,
            port(&env.instance),
            &env.log,
            env.run_as.clone(),
        )])
    }

    fn after_start<'a>(&'a self, env: &'a InstanceEnv) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            if env.secrets.contains_key("hba.secured") {
                return Ok(());
            }
            let connector = self.connector(env);
            let password = env.secrets.get("password").cloned().unwrap_or_default();
            let change = PgChange::SetPassword {
                role: superuser(&env.instance),
                password: Password::new(password),
            };
            super::apply(&connector, &[change])
                .await
                .map_err(|error| pg_error("cannot set the superuser password", error))?;
            super::write_hba(&env.data_dir, AuthMethod::ScramSha256, env.run_as.as_ref())
                .map_err(|error| pg_error("cannot write pg_hba.conf", error))?;
            let client = connector
                .connect("postgres")
                .await
                .map_err(|e| pg_error("cannot connect", e))?;
            super::config::reload(&client)
                .await
                .map_err(|error| pg_error("cannot reload", error))?;
            Ok(())
        })
    }

    fn reconfigure<'a>(
        &'a self,
        env: &'a InstanceEnv,
    ) -> BoxFuture<'a, Result<Reconfigure, EngineError>> {
        Box::pin(async move {
            let settings = settings(&env.instance);
            let config = ServerConfig {
                socket_dir: &env.run_dir,
                port: port(&env.instance),
                settings: &settings,
            };
            let changed = super::write_config(&env.data_dir, &config, env.run_as.as_ref())
                .map_err(|error| pg_error("cannot write the PostgreSQL configuration", error))?;
            if !changed {
                return Ok(Reconfigure::Nothing);
            }
            let client = self
                .connector(env)
                .connect("postgres")
                .await
                .map_err(|e| pg_error("cannot connect", e))?;
            match super::settings_change(&client, &settings)
                .await
                .map_err(|e| pg_error("cannot read settings", e))?
            {
                SettingsAction::None => Ok(Reconfigure::Nothing),
                SettingsAction::Reload => {
                    super::config::reload(&client)
                        .await
                        .map_err(|error| pg_error("cannot reload", error))?;
                    Ok(Reconfigure::Reloaded)
                }
                SettingsAction::Restart => Ok(Reconfigure::RestartNeeded),
            }
        })
    }

    fn refresh<'a>(
        &'a self,
        env: &'a InstanceEnv,
        managed: &'a BTreeMap<String, Attributes>,
    ) -> BoxFuture<'a, Result<BTreeMap<String, Existing>, EngineError>> {
        Box::pin(async move {
            let desired = self.desired(&env.instance)?;
            let contents = databases_with_contents(&desired, managed);
            let live = super::sql::read_live_of(&self.connector(env), Some(&contents))
                .await
                .map_err(|e| pg_error("cannot read PostgreSQL", e))?;
            let by_address: BTreeMap<&str, &Desired> =
                desired.iter().map(|d| (d.address.as_str(), d)).collect();
            let mut existing = BTreeMap::new();
            for address in managed.keys() {
                if let Some(node) = self.existing_of(
                    env,
                    &live,
                    address,
                    by_address.get(address.as_str()).copied(),
                ) {
                    existing.insert(address.clone(), node);
                }
            }
            Ok(existing)
        })
    }

    fn converge<'a>(
        &'a self,
        env: &'a mut InstanceEnv,
        changes: &'a [Change],
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let mut batch = Vec::new();
            for change in changes {
                let empty = Attributes::new();
                let after = change.after.as_ref().unwrap_or(&empty);
                let before = change.before.as_ref().unwrap_or(&empty);
                let name = address_name(&change.address);
                let deleting = matches!(change.action, Action::Delete | Action::Replace);
                // The database a schema or extension lives in (as last applied, for a delete).
                let current = if change.action == Action::Delete {
                    before
                } else {
                    after
                };
                let database = current
                    .get("database")
                    .and_then(Json::as_str)
                    .unwrap_or("postgres")
                    .to_owned();
                let creating = matches!(
                    change.action,
                    Action::Create | Action::Replace | Action::Update
                );
                match change.kind.as_str() {
                    "role" => {
                        if change.action == Action::Delete {
                            batch.push(PgChange::DropRole { name: name.clone() });
                            env.secrets.remove(&role_secret(&name));
                            continue;
                        }
                        let configured = find_block(&env.instance.body, &change.address)
                            .and_then(|block| block.body.attributes.get("password"))
                            .and_then(|a| a.value.known())
                            .and_then(|v| v.as_str().map(str::to_owned));
                        let wants_password = after
                            .get("has_password")
                            .and_then(Json::as_bool)
                            .unwrap_or(false);
                        let needs_password = wants_password
                            && (change.action == Action::Create
                                || before.get("has_password").and_then(Json::as_bool)
                                    != Some(true)
                                || configured.is_some());
                        let password = needs_password.then(|| {
                            Password::new(role_password(env, &name, configured.as_deref()))
                        });
                        let attributes = role_attributes(after, password);
                        batch.push(if change.action == Action::Create {
                            PgChange::CreateRole {
                                name: name.clone(),
                                attributes,
                            }
                        } else {
                            PgChange::AlterRole {
                                name: name.clone(),
                                attributes,
                            }
                        });
                        let wanted = string_list(after.get("member_of"));
                        let had = string_list(before.get("member_of"));
                        if after.contains_key("member_of") {
                            for group in wanted.iter().filter(|g| !had.contains(g)) {
                                batch.push(PgChange::GrantMembership {
                                    role: name.clone(),
                                    group: group.clone(),
                                });
                            }
                            for group in had.iter().filter(|g| !wanted.contains(g)) {
                                batch.push(PgChange::RevokeMembership {
                                    role: name.clone(),
                                    group: group.clone(),
                                });
                            }
                        }
                    }
                    "database" => {
                        if deleting {
                            batch.push(PgChange::DropDatabase {
                                name: name.clone(),
                                force: false,
                            });
                        }
                        let owner = after.get("owner").and_then(Json::as_str).map(str::to_owned);
                        if matches!(change.action, Action::Create | Action::Replace) {
                            let text = |key: &str| {
                                after.get(key).and_then(Json::as_str).map(str::to_owned)
                            };
                            batch.push(PgChange::CreateDatabase {
                                name: name.clone(),
                                spec: DatabaseSpec {
                                    owner: owner.clone(),
                                    encoding: text("encoding"),
                                    lc_collate: text("lc_collate"),
                                    lc_ctype: text("lc_ctype"),
                                    template: None,
                                    connection_limit: after
                                        .get("connection_limit")
                                        .and_then(Json::as_i64)
                                        .unwrap_or(-1)
                                        as i32,
                                    allow_connections: after
                                        .get("allow_connections")
                                        .and_then(Json::as_bool)
                                        .unwrap_or(true),
                                    is_template: after
                                        .get("is_template")
                                        .and_then(Json::as_bool)
                                        .unwrap_or(false),
                                },
                            });
                        } else if change.action == Action::Update {
                            batch.push(PgChange::AlterDatabase {
                                name: name.clone(),
                                owner,
                                connection_limit: after
                                    .get("connection_limit")
                                    .and_then(Json::as_i64)
                                    .map(|limit| limit as i32),
                                allow_connections: after
                                    .get("allow_connections")
                                    .and_then(Json::as_bool),
                                is_template: after.get("is_template").and_then(Json::as_bool),
                            });
                        }
                        if creating {
                            let wanted = string_list(after.get("extensions"));
                            let had = if change.action == Action::Update {
                                string_list(before.get("extensions"))
                            } else {
                                Vec::new()
                            };
                            for extension in wanted.iter().filter(|e| !had.contains(e)) {
                                batch.push(PgChange::CreateExtension {
                                    database: name.clone(),
                                    name: extension.clone(),
                                    schema: None,
                                    version: None,
                                });
                            }
                            for extension in had.iter().filter(|e| !wanted.contains(e)) {
                                batch.push(PgChange::DropExtension {
                                    database: name.clone(),
                                    name: extension.clone(),
                                });
                            }
                        }
                    }
                    "schema" => {
                        if deleting {
                            batch.push(PgChange::DropSchema {
                                database: database.clone(),
                                name: name.clone(),
                            });
                        }
                        if creating {
                            let owner =
                                after.get("owner").and_then(Json::as_str).map(str::to_owned);
                            batch.push(match (change.action, owner) {
                                (Action::Update, Some(owner)) => PgChange::AlterSchemaOwner {
                                    database,
                                    name: name.clone(),
                                    owner,
                                },
                                (_, owner) => PgChange::CreateSchema {
                                    database,
                                    name: name.clone(),
                                    owner,
                                },
                            });
                        }
                    }
                    "extension" => {
                        if deleting {
                            batch.push(PgChange::DropExtension {
                                database: database.clone(),
                                name: name.clone(),
                            });
                        }
                        if creating {
                            batch.push(PgChange::CreateExtension {
                                database,
                                name: name.clone(),
                                schema: after
                                    .get("schema")
                                    .and_then(Json::as_str)
                                    .map(str::to_owned),
                                version: after
                                    .get("version")
                                    .and_then(Json::as_str)
                                    .map(str::to_owned),
                            });
                        }
                    }
                    "grant" => {
                        if deleting && !before.is_empty() {
                            batch.push(PgChange::Revoke(grant_spec(before)?));
                        }
                        if creating {
                            batch.push(PgChange::Grant(grant_spec(after)?));
                        }
                    }
                    _ => {}
                }
            }
            if batch.is_empty() {
                return Ok(());
            }
            super::apply(&self.connector(env), &batch)
                .await
                .map_err(|error| pg_error("cannot converge PostgreSQL", error))
        })
    }

    fn exports(&self, env: &InstanceEnv, object: Option<&str>) -> BTreeMap<String, String> {
        let port = port(&env.instance);
        let socket = env.run_dir.display().to_string();
        let (user, password, database) = match object
            .and_then(|address| find_block(&env.instance.body, address))
        {
            Some(block) if block.kind == "database" => {
                let owner = block
                    .body
                    .attributes
                    .get("owner")
                    .and_then(|a| a.value.known())
                    .and_then(|v| v.as_str().map(str::to_owned));
                match owner.and_then(|owner| login_role_password(env, &owner).map(|p| (owner, p))) {
                    Some((owner, password)) => (owner, password, label(block)),
                    None => (
                        superuser(&env.instance),
                        env.secrets.get("password").cloned().unwrap_or_default(),
                        label(block),
                    ),
                }
            }
            Some(block) if block.kind == "role" => {
                let name = label(block);
                let password = login_role_password(env, &name).unwrap_or_default();
                (name, password, "postgres".to_owned())
            }
            _ => (
                superuser(&env.instance),
                env.secrets.get("password").cloned().unwrap_or_default(),
                "postgres".to_owned(),
            ),
        };
        let encode = |text: &str| -> String {
            text.bytes()
                .map(|byte| match byte {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (byte as char).to_string()
                    }
                    _ => format!("%{byte:02X}"),
                })
                .collect()
        };
        let url = match port {
            Some(port) => format!(
                "postgresql://{}:{}@127.0.0.1:{port}/{}",
                encode(&user),
                encode(&password),
                encode(&database)
            ),
            None => format!(
                "postgresql://{}:{}@/{}?host={}&port={}",
                encode(&user),
                encode(&password),
                encode(&database),
                encode(&socket),
                super::DEFAULT_PORT
            ),
        };
        let mut exports = BTreeMap::new();
        exports.insert("url".into(), url);
        exports.insert(
            "host".into(),
            if port.is_some() {
                "127.0.0.1".into()
            } else {
                socket.clone()
            },
        );
        exports.insert(
            "port".into(),
            port.unwrap_or(super::DEFAULT_PORT).to_string(),
        );
        exports.insert("socket".into(), socket);
        exports.insert("user".into(), user);
        exports.insert("password".into(), password);
        exports.insert("name".into(), database);
        exports
    }
}
