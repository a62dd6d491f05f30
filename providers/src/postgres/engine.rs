//! The PostgreSQL engine behind kip's [`Engine`] contract: a data directory copied from a per-version template whose
//! superuser has a bootstrap password only kip knows (so there is never a moment of open access) until kip sets
//! the instance's own right after its first start, the
//! `postgres` server under the supervisor, settings reloaded or restarted as PostgreSQL requires, and roles, databases, schemas, extensions and grants refreshed
//! ([`super::observe`]) and converged ([`super::converge`]) from the plan.

use kip_core::address::Address;
use kip_core::engine::{
    BoxFuture, Engine, EngineError, Exports, InstanceCtx, Managed, Observed, Reconfigure, RunAs,
    SpawnSpec,
};
use kip_core::plan::{Change, Desired};
use kip_schemas::EngineSchema;
use serde_json::{Value as Json, json};

use super::args::{InstanceArgs, RoleArgs};
use super::{Connector, InitOptions, Password, PgChange, PgError, ServerConfig, SettingsAction};

/// The `postgres` engine.
#[derive(Debug, Default)]
pub struct Postgres;

/// Turns a provider error into the contract's, keeping it as the cause and PostgreSQL's detail as the hint.
pub(super) fn pg_error(context: &str, error: PgError) -> EngineError {
    EngineError::hinted(context, error)
}

/// The secret holding the superuser's current password (configured or generated).
pub(super) const SUPERUSER_PASSWORD: &str = "password";
/// The secret generated roles' passwords derive from.
const ROLE_KEY: &str = "role-key";

/// The secret holding the template's bootstrap password, from provisioning until the first start is through.
const BOOTSTRAP_PASSWORD: &str = "bootstrap";

/// Set (in the instance's state, beside its secrets) while its data dir holds the database made ahead of time it
/// was provisioned with ([`super::PREMADE_DATABASE`]), until a converge used or dropped it.
const PREMADE: &str = "premade-database";

/// Whether the instance declares a database `CREATE DATABASE` would make from template1 as it is (no template,
/// the instance's own encoding and locale): one a database made ahead of time can be.
fn creates_plain_database(ctx: &InstanceCtx, args: &InstanceArgs) -> bool {
    use super::args::DatabaseArgs;
    let same = |wanted: &Option<String>, have: &str| {
        wanted
            .as_deref()
            .is_none_or(|wanted| wanted.eq_ignore_ascii_case(have))
    };
    ctx.objects.iter().any(|(address, object)| {
        object.kind == "database"
            && kip_core::engine::typed::<DatabaseArgs>(address, &object.attributes).is_ok_and(
                |database| {
                    database.template.is_none()
                        && same(&database.encoding, &args.encoding)
                        && same(&database.lc_collate, &args.locale)
                        && same(&database.lc_ctype, &args.locale)
                },
            )
    })
}

/// How kip reaches the instance: its socket, as the superuser with the password it has now. Before the first
/// start is through, that is the bootstrap password, or the instance's own if kip set it and stopped before saving.
pub(super) fn connector(ctx: &InstanceCtx, args: &InstanceArgs) -> Connector {
    let mut connector = Connector::new(&ctx.run_dir, args.port);
    connector.user = args.superuser.clone();
    let own = ctx
        .secrets
        .get(SUPERUSER_PASSWORD)
        .map(|password| Password::new(password.to_owned()));
    match ctx.secrets.get(BOOTSTRAP_PASSWORD) {
        Some(bootstrap) if !ctx.initialized => {
            connector.password = Some(Password::new(bootstrap.to_owned()));
            connector.fallback = own;
        }
        _ => connector.password = own,
    }
    connector
}

/// A session refused for its password before the instance's first start was through: the server on the data
/// directory is not one kip made (its state was lost, or restored from an older backup).
fn first_session_error(ctx: &InstanceCtx, context: &str, error: PgError) -> EngineError {
    let refused = matches!(&error, PgError::Connect { source, .. }
        if source.code().is_some_and(|code| code.code() == "28P01"));
    if refused && !ctx.initialized {
        return pg_error(
            context,
            PgError::NoCredentials {
                data_dir: ctx.data_dir.clone(),
            },
        );
    }
    pg_error(context, error)
}

/// The password of a role kip generates one for: derived from a random key kept in the instance's state from
/// its first provisioning, so it is known again even after a crash between creating the role and saving the
/// state, and unguessable from the configuration.
pub(super) fn generated_role_password(ctx: &InstanceCtx, role: &str) -> String {
    let key = ctx.secrets.get(ROLE_KEY).unwrap_or_default();
    crate::shared::derived_password(key, "role password", role)
}

/// The password of a declared role that has one: configured, else generated.
pub(super) fn role_password(ctx: &InstanceCtx, address: &Address) -> Option<String> {
    let object = ctx.objects.get(address)?;
    let args: RoleArgs = kip_core::engine::typed(address, &object.attributes).ok()?;
    let role = address.label()?;
    match args.password {
        Some(password) => Some(password),
        None if args.has_password => Some(generated_role_password(ctx, role)),
        None => None,
    }
}

fn sorted_strings(value: Option<&Json>) -> Vec<String> {
    let mut list = crate::shared::strings(value);
    list.sort();
    list.dedup();
    list
}

impl Postgres {
    /// SCRAM iterations for the superuser's verifier: few for a generated (random) password, PostgreSQL's
    /// default for a chosen one.
    fn iterations(args: &InstanceArgs) -> u32 {
        if args.password.is_some() {
            super::scram::CHOSEN_ITERATIONS
        } else {
            super::scram::GENERATED_ITERATIONS
        }
    }

    fn init_options(args: &InstanceArgs) -> InitOptions {
        InitOptions {
            superuser: args.superuser.clone(),
            encoding: args.encoding.clone(),
            locale: args.locale.clone(),
            locale_provider: args.locale_provider.clone(),
            data_checksums: args.data_checksums,
        }
    }

    fn write_config(ctx: &InstanceCtx, args: &InstanceArgs) -> Result<bool, EngineError> {
        let settings = args.server_settings();
        let config = ServerConfig {
            socket_dir: &ctx.run_dir,
            port: args.port,
            settings: &settings,
        };
        super::write_config(&ctx.data_dir, &config, ctx.run_as.as_ref())
            .map_err(|error| pg_error("cannot write the PostgreSQL configuration", error))
    }

    /// The access rules: `auth_method`, from the first start on (the password exists before it).
    fn write_hba(ctx: &InstanceCtx, args: &InstanceArgs) -> Result<bool, EngineError> {
        super::write_hba(&ctx.data_dir, args.auth_method, ctx.run_as.as_ref())
            .map_err(|error| pg_error("cannot write pg_hba.conf", error))
    }
}

impl Engine for Postgres {
    fn schema(&self) -> &'static EngineSchema {
        kip_schemas::engine("postgres").expect("kip-schemas describes postgres")
    }

    fn check_view(&self, node: &Desired) -> Result<(), EngineError> {
        use super::args::{DatabaseArgs, ExtensionArgs, GrantArgs, SchemaArgs};
        let address = &node.address;
        let attributes = &node.attributes;
        match node.kind.as_str() {
            kip_core::plan::INSTANCE => {
                kip_core::engine::typed::<InstanceArgs>(address, attributes).map(drop)
            }
            "role" => kip_core::engine::typed::<RoleArgs>(address, attributes).map(drop),
            "database" => kip_core::engine::typed::<DatabaseArgs>(address, attributes).map(drop),
            "schema" => kip_core::engine::typed::<SchemaArgs>(address, attributes).map(drop),
            "extension" => kip_core::engine::typed::<ExtensionArgs>(address, attributes).map(drop),
            "grant" => kip_core::engine::typed::<GrantArgs>(address, attributes).map(drop),
            other => Err(EngineError::new(format!("postgres has no {other} objects"))),
        }
    }

    fn derive(&self, node: &mut Desired) {
        let attributes = &mut node.attributes;
        match node.kind.as_str() {
            "role" => {
                let login = attributes
                    .get("login")
                    .and_then(Json::as_bool)
                    .unwrap_or(false);
                let configured = attributes.get("password").is_some_and(|p| !p.is_null());
                attributes.insert("has_password".into(), json!(login || configured));
                attributes.insert("password_works".into(), json!(login || configured));
                if let Some(groups) = attributes.get("member_of").filter(|v| !v.is_null()) {
                    let groups = sorted_strings(Some(groups));
                    attributes.insert("member_of".into(), json!(groups));
                }
            }
            "database" => {
                let extensions = sorted_strings(attributes.get("extensions"));
                attributes.insert("extensions".into(), json!(extensions));
                // `locale` is shorthand for both; an explicit one wins.
                if let Some(locale) = attributes.get("locale").filter(|v| !v.is_null()).cloned() {
                    for key in ["lc_collate", "lc_ctype"] {
                        if attributes.get(key).is_none_or(Json::is_null) {
                            attributes.insert(key.into(), locale.clone());
                        }
                    }
                }
                node.replace_on
                    .extend(["lc_collate".to_owned(), "lc_ctype".to_owned()]);
            }
            "schema" | "extension" if attributes.get("database").is_none_or(Json::is_null) => {
                let database = node.address.label_of("database").unwrap_or("postgres");
                attributes.insert("database".into(), json!(database));
            }
            "grant" => {
                let mut privileges: Vec<String> = sorted_strings(attributes.get("privileges"))
                    .into_iter()
                    .map(|p| p.to_ascii_uppercase())
                    .collect();
                privileges.sort();
                privileges.dedup();
                attributes.insert("privileges".into(), json!(privileges));
            }
            _ => {}
        }
    }

    fn provision<'a>(&'a self, ctx: &'a mut InstanceCtx) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let args: InstanceArgs = ctx.args()?;
            let toolchain = ctx.toolchain()?.clone();
            let template = super::ensure_template(
                &toolchain.root,
                &toolchain.version,
                &Self::init_options(&args),
                &ctx.templates,
                ctx.run_as.as_ref(),
            )
            .map_err(|error| pg_error("cannot prepare the PostgreSQL template", error))?;
            let existed = ctx.data_dir.join("PG_VERSION").is_file();
            // A new instance that will create a database takes a spare holding one made ahead of time.
            let premade = (!existed && creates_plain_database(ctx, &args))
                .then_some(toolchain.root.as_path());
            let premade = super::provision(&template, &ctx.data_dir, ctx.run_as.as_ref(), premade)
                .map_err(|error| pg_error("cannot create the data directory", error))?;
            // Marked also when a killed kip's provisioning made the data dir (no process ever ran on it): one made
            // ahead of time in it is kip's as well, and the converge finds out whether there is one.
            if premade || existed && ctx.provision_unfinished {
                ctx.secrets.0.insert(PREMADE.into(), "1".into());
            }
            if ctx.secrets.get(SUPERUSER_PASSWORD).is_none() {
                let password = match &args.password {
                    Some(password) => password.clone(),
                    None => kip_core::engine::random_hex(16)?,
                };
                ctx.secrets.0.insert(SUPERUSER_PASSWORD.into(), password);
            }
            if !ctx.initialized && ctx.secrets.get(BOOTSTRAP_PASSWORD).is_none() {
                if existed {
                    // A data directory kip's state does not account for (the state was lost, or kip stopped between
                    // copying it and saving): its superuser's password is unknown, so it gets the instance's own,
                    // offline. A server running on it makes this fail, and kip never opens access to get in.
                    let password = ctx.secrets.get(SUPERUSER_PASSWORD).unwrap_or_default();
                    let verifier = super::scram::verifier(password, Self::iterations(&args))?;
                    super::set_password_offline(
                        &toolchain.root,
                        &ctx.data_dir,
                        &args.superuser,
                        &verifier,
                        ctx.run_as.as_ref(),
                    )
                    .map_err(|error| pg_error("cannot secure the instance", error))?;
                } else {
                    // Until its first start is through, the instance's superuser has the template's bootstrap
                    // password (see `after_start`).
                    let bootstrap = super::bootstrap_password(&template).map_err(|error| {
                        pg_error("cannot prepare the PostgreSQL template", error)
                    })?;
                    ctx.secrets.0.insert(BOOTSTRAP_PASSWORD.into(), bootstrap);
                }
            }
            ctx.secrets.get_or_generate(ROLE_KEY)?;
            Self::write_config(ctx, &args)?;
            Self::write_hba(ctx, &args)?;
            Ok(())
        })
    }

    fn release(&self, ctx: &InstanceCtx) {
        super::shmem::release(&ctx.data_dir, RunAs::uid_or_own(ctx.run_as.as_ref()));
    }

    fn spawn_specs(&self, ctx: &InstanceCtx) -> Result<Vec<SpawnSpec>, EngineError> {
        let args: InstanceArgs = ctx.args()?;
        let toolchain = ctx.toolchain()?;
        let mut spec = super::spawn_spec(
            &SpawnSpec::name_for(&ctx.address, None),
            &toolchain.root,
            &ctx.data_dir,
            &ctx.run_dir,
            args.port,
            &ctx.log("postgres"),
            ctx.run_as.clone(),
        );
        spec.instance = ctx.address.to_string();
        Ok(vec![spec])
    }

    fn ready<'a>(&'a self, ctx: &'a InstanceCtx) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let args: InstanceArgs = ctx.args()?;
            let connector = connector(ctx, &args);
            // The connector waits out "the database system is starting up".
            let client = connector.connect("postgres").await.map_err(|error| {
                first_session_error(ctx, "PostgreSQL does not take sessions", error)
            })?;
            client.simple_query("SELECT 1").await.map_err(|error| {
                pg_error(
                    "PostgreSQL does not answer",
                    PgError::sql("postgres", "SELECT 1", error),
                )
            })?;
            // After-start (a first start only) goes on in this session rather than forking another backend.
            if !ctx.initialized {
                ctx.session.keep(client);
            }
            Ok(())
        })
    }

    /// The instance's own superuser password replaces the bootstrap password, as a kip-computed verifier (so the
    /// password never reaches the server), before anything else may use the instance.
    fn after_start<'a>(
        &'a self,
        ctx: &'a mut InstanceCtx,
    ) -> Option<BoxFuture<'a, Result<(), EngineError>>> {
        Some(Box::pin(async move {
            let args: InstanceArgs = ctx.args()?;
            let client = match ctx.session.take::<tokio_postgres::Client>() {
                Some(client) if !client.is_closed() => client,
                _ => connector(ctx, &args)
                    .connect("postgres")
                    .await
                    .map_err(|error| {
                        first_session_error(ctx, "cannot secure the new instance", error)
                    })?,
            };
            let password = ctx.secrets.get(SUPERUSER_PASSWORD).unwrap_or_default();
            let verifier = super::scram::verifier(password, Self::iterations(&args))?;
            let statement = format!(
                "ALTER ROLE {} PASSWORD {}",
                super::quote::ident("role", &args.superuser)
                    .map_err(|error| pg_error("cannot secure the new instance", error))?,
                super::quote::literal("password verifier", &verifier)
                    .map_err(|error| pg_error("cannot secure the new instance", error))?
            );
            client.batch_execute(&statement).await.map_err(|error| {
                pg_error(
                    "cannot secure the new instance",
                    PgError::sql("postgres", "ALTER ROLE … PASSWORD …", error),
                )
            })?;
            ctx.secrets.remove(BOOTSTRAP_PASSWORD);
            // The objects' converge, next, goes on in this session too.
            ctx.session.keep(client);
            Ok(())
        }))
    }

    fn reconfigure<'a>(
        &'a self,
        ctx: &'a mut InstanceCtx,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<Reconfigure, EngineError>> {
        Box::pin(async move {
            let args: InstanceArgs = ctx.args()?;
            let changed = change.changed_attributes();
            // A new superuser password, set with the one kip has now (before any other session of this kip is
            // open: converging ends sessions it does not know).
            if let Some(password) = &args.password
                && ctx.secrets.get(SUPERUSER_PASSWORD) != Some(password.as_str())
            {
                super::apply(
                    &connector(ctx, &args),
                    &[PgChange::SetPassword {
                        role: args.superuser.clone(),
                        password: Password::new(super::scram::verifier(
                            password,
                            super::scram::CHOSEN_ITERATIONS,
                        )?),
                    }],
                )
                .await
                .map_err(|error| pg_error("cannot change the superuser password", error))?;
                ctx.secrets
                    .0
                    .insert(SUPERUSER_PASSWORD.into(), password.clone());
            }
            if changed.iter().any(|name| name == "port") {
                return Ok(Reconfigure::Restart);
            }
            let client = connector(ctx, &args)
                .connect("postgres")
                .await
                .map_err(|e| pg_error("cannot connect", e))?;
            // What kip.hcl declares wins over `ALTER SYSTEM` made behind kip's back.
            let reset = super::config::reset_overrides(&client, &args.server_settings())
                .await
                .map_err(|e| {
                    pg_error("cannot reset the settings overridden with ALTER SYSTEM", e)
                })?;
            let mut action = super::settings_change(&client, &args.server_settings())
                .await
                .map_err(|e| pg_error("cannot read the server's settings", e))?;
            if reset {
                action = action.max(SettingsAction::Reload);
            }
            if changed.iter().any(|name| name == "auth_method") {
                action = action.max(SettingsAction::Reload);
            }
            match action {
                SettingsAction::None => Ok(Reconfigure::Done),
                SettingsAction::Reload => {
                    super::config::reload(&client)
                        .await
                        .map_err(|error| pg_error("cannot reload", error))?;
                    Ok(Reconfigure::Done)
                }
                SettingsAction::Restart => Ok(Reconfigure::Restart),
            }
        })
    }

    fn prefetch<'a>(
        &'a self,
        ctx: &'a InstanceCtx,
    ) -> BoxFuture<'a, Option<Box<dyn std::any::Any + Send>>> {
        Box::pin(async move {
            let args: InstanceArgs = ctx.args().ok()?;
            let ahead = super::observe::prefetch(&connector(ctx, &args)).await?;
            Some(Box::new(ahead) as Box<dyn std::any::Any + Send>)
        })
    }

    fn refresh<'a>(
        &'a self,
        ctx: &'a InstanceCtx,
        managed: &'a [Managed<'a>],
    ) -> BoxFuture<'a, Result<Vec<Observed>, EngineError>> {
        Box::pin(async move {
            let args: InstanceArgs = ctx.args()?;
            super::observe::refresh(ctx, &connector(ctx, &args), managed).await
        })
    }

    fn converge<'a>(
        &'a self,
        ctx: &'a mut InstanceCtx,
        changes: &'a [Change],
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let args: InstanceArgs = ctx.args()?;
            let batch = super::converge::statements(ctx, changes)?;
            if batch.is_empty() {
                return Ok(());
            }
            let applying = super::sql::Applying {
                // The first start's session, when this converge follows it.
                session: ctx.session.take::<tokio_postgres::Client>(),
                premade: ctx.secrets.get(PREMADE).is_some(),
            };
            super::sql::apply_with(&connector(ctx, &args), &batch, applying)
                .await
                .map_err(|error| pg_error("cannot converge PostgreSQL", error))?;
            // Renamed into a declared database, or dropped as of no use.
            ctx.secrets.remove(PREMADE);
            Ok(())
        })
    }

    fn exports(&self, ctx: &InstanceCtx, object: Option<&Address>) -> Result<Exports, EngineError> {
        super::exports::exports(ctx, object)
    }
}
