//! The Valkey engine behind kip's [`Engine`] contract: `valkey-server` under the supervisor with a generated
//! config whose ACL file gives the `default` user its password before the first start (no moment of open
//! access), changes applied with `CONFIG SET` or a restart as Valkey allows (and as the plan says), and ACL users
//! refreshed in one round trip and converged from the plan.

use std::time::Duration;

use crate::shared::url_encode as encode;
use kip_core::address::Address;
use kip_core::engine::{
    BoxFuture, Engine, EngineError, Exports, InstanceCtx, Managed, Observed, Probe, ProbeKind,
    Reconfigure, RestartPolicy, SpawnSpec, StopSpec,
};
use kip_core::plan::{Action, Attributes, Change, Desired};
use kip_schemas::EngineSchema;
use serde_json::{Value as Json, json};

use super::acl;
use super::args::{InstanceArgs, UserArgs};
use super::client::{Connector, run};
use super::config;
use super::{ACL_FILE, CONFIG_FILE, SOCKET, VkError, io_error, password_hash};

/// The `valkey` engine.
#[derive(Debug, Default)]
pub struct Valkey;

/// The secret holding the `default` user's current password (declared or generated).
pub const DEFAULT_PASSWORD: &str = "password";
/// The secret generated user passwords derive from.
const USER_KEY: &str = "user-key";
/// The object kind of ACL users.
const USER: &str = "user";

/// Turns a provider error into the contract's, keeping it as the cause.
fn vk_error(context: &str, error: VkError) -> EngineError {
    EngineError::hinted(context, error)
}

/// The socket of an instance.
pub fn socket(ctx: &InstanceCtx) -> std::path::PathBuf {
    ctx.run_dir.join(SOCKET)
}

/// The password the `default` user should have: the declared one, else the one kip generated.
fn default_password(ctx: &InstanceCtx, args: &InstanceArgs) -> String {
    args.password
        .clone()
        .or_else(|| ctx.secrets.get(DEFAULT_PASSWORD).map(str::to_owned))
        .unwrap_or_default()
}

/// How kip reaches the instance: the password it set last, then a newly declared one.
fn connector(ctx: &InstanceCtx, args: &InstanceArgs) -> Connector {
    let mut passwords: Vec<String> = ctx
        .secrets
        .get(DEFAULT_PASSWORD)
        .map(str::to_owned)
        .into_iter()
        .collect();
    if let Some(declared) = &args.password
        && !passwords.contains(declared)
    {
        passwords.push(declared.clone());
    }
    Connector::new(&socket(ctx), passwords)
}

/// The password of a user kip generates one for: derived from a random key kept in the instance's state, so it
/// is known again even after a crash between setting the user and saving the state.
fn generated_user_password(ctx: &InstanceCtx, user: &str) -> String {
    let key = ctx.secrets.get(USER_KEY).unwrap_or_default();
    crate::shared::derived_password(key, "valkey user password", user)
}

/// A user's password: declared, else generated.
fn user_password(ctx: &InstanceCtx, name: &str, attributes: &Attributes) -> String {
    attributes
        .get("password")
        .and_then(Json::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| generated_user_password(ctx, name))
}

fn user_name(address: &Address) -> Result<&str, EngineError> {
    address
        .label()
        .ok_or_else(|| EngineError::new(format!("{address} has no user name")))
}

/// The URL of the instance for `user` (`None`: `default`), as the `redis` crate and `redis-cli -u` read it.
fn url(ctx: &InstanceCtx, args: &InstanceArgs, user: Option<&str>, password: &str) -> String {
    match args.port {
        Some(port) => format!(
            "redis://{}:{}@127.0.0.1:{port}",
            // `default` spelled out: redis-cli 7.0 does not read `redis://:password@…` as the default user.
            encode(user.unwrap_or("default")),
            encode(password)
        ),
        None => {
            let path: Vec<String> = socket(ctx)
                .to_string_lossy()
                .split('/')
                .map(encode)
                .collect();
            let user = user
                .map(|user| format!("user={}&", encode(user)))
                .unwrap_or_default();
            format!("unix://{}?{user}pass={}", path.join("/"), encode(password))
        }
    }
}

impl Valkey {
    fn write_config(ctx: &InstanceCtx, args: &InstanceArgs) -> Result<(), VkError> {
        let directives = config::directives(args, &ctx.data_dir, &ctx.run_dir)?;
        config::write_config_file(
            &ctx.data_dir.join(CONFIG_FILE),
            &config::render(&directives),
            ctx.run_as.as_ref(),
        )?;
        Ok(())
    }

    /// Sets users as the changes say (deletions included), then saves them to the ACL file and records the form
    /// Valkey reports their rules in.
    async fn set_users(ctx: &mut InstanceCtx, changes: &[Change]) -> Result<(), EngineError> {
        let args: InstanceArgs = ctx.args()?;
        let mut connection = connector(ctx, &args)
            .connect()
            .await
            .map_err(|error| vk_error("cannot connect to Valkey", error))?;
        let mut set = Vec::new();
        for change in changes.iter().filter(|change| change.kind == USER) {
            let name = user_name(&change.address)?.to_owned();
            match change.action {
                Action::Noop => {}
                Action::Delete => {
                    let mut command = redis::cmd("ACL");
                    command.arg("DELUSER").arg(&name);
                    run::<i64>(&mut connection, &command, &format!("ACL DELUSER {name}"))
                        .await
                        .map_err(|error| vk_error("cannot delete an ACL user", error))?;
                    ctx.secrets.remove(&acl::rules_key(&name));
                }
                Action::Create | Action::Update | Action::Replace => {
                    let user: UserArgs = change.after_as()?;
                    let password = user_password(
                        ctx,
                        &name,
                        change.after.as_ref().unwrap_or(&Attributes::new()),
                    );
                    let rules = acl::setuser_args(&name, &user, &password)
                        .map_err(|error| vk_error("cannot converge an ACL user", error))?;
                    let mut command = redis::cmd("ACL");
                    command.arg("SETUSER").arg(&rules);
                    // Shown without the password hash.
                    let shown = format!(
                        "ACL SETUSER {name} {}",
                        rules[1..]
                            .iter()
                            .filter(|rule| !rule.starts_with('#'))
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                    run::<()>(&mut connection, &command, &shown)
                        .await
                        .map_err(|error| vk_error("cannot converge an ACL user", error))?;
                    set.push(name);
                }
            }
        }
        save_users(ctx, &mut connection).await?;
        if !set.is_empty() {
            let mut pipe = redis::pipe();
            for name in &set {
                pipe.cmd("ACL").arg("GETUSER").arg(name);
            }
            let answers: Vec<redis::Value> =
                pipe.query_async(&mut connection).await.map_err(|error| {
                    vk_error(
                        "cannot read the ACL users",
                        VkError::refused("ACL GETUSER", error),
                    )
                })?;
            for (name, answer) in set.iter().zip(&answers) {
                if let Some(live) = acl::parse_getuser(answer)
                    .map_err(|error| vk_error("cannot read the ACL users", error))?
                {
                    ctx.secrets
                        .0
                        .insert(acl::rules_key(name), acl::rules_fingerprint(&live.commands));
                }
            }
        }
        Ok(())
    }
}

/// `ACL SAVE`, so a restart (kip's or the supervisor's after a crash) keeps the users; Valkey writes the file with
/// its umask's mode, and kip makes it private again (the data directory, 0700, already keeps others out).
async fn save_users(
    ctx: &InstanceCtx,
    connection: &mut redis::aio::MultiplexedConnection,
) -> Result<(), EngineError> {
    let mut save = redis::cmd("ACL");
    save.arg("SAVE");
    run::<()>(connection, &save, "ACL SAVE")
        .await
        .map_err(|error| vk_error("cannot save the ACL users", error))?;
    let path = ctx.data_dir.join(ACL_FILE);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io_error("set the mode of", &path))
        .map_err(|error| vk_error("cannot save the ACL users", error))
}

fn as_list(value: Option<&Json>) -> Json {
    match value {
        Some(Json::Array(items)) => Json::Array(items.clone()),
        _ => json!([]),
    }
}

impl Engine for Valkey {
    fn schema(&self) -> &'static EngineSchema {
        kip_schemas::engine("valkey").expect("kip-schemas describes valkey")
    }

    fn check_view(&self, node: &Desired) -> Result<(), EngineError> {
        let address = &node.address;
        let attributes = &node.attributes;
        match node.kind.as_str() {
            kip_core::plan::INSTANCE => {
                kip_core::engine::typed::<InstanceArgs>(address, attributes).map(drop)
            }
            USER => kip_core::engine::typed::<UserArgs>(address, attributes).map(drop),
            other => Err(EngineError::new(format!("valkey has no {other} objects"))),
        }
    }

    fn derive(&self, node: &mut Desired) {
        if node.kind == USER {
            let attributes = &mut node.attributes;
            // Unset means none, and Valkey can report none: a rule added behind kip's back is drift.
            for name in ["commands", "keys", "channels"] {
                let list = as_list(attributes.get(name));
                attributes.insert(name.into(), list);
            }
            attributes.insert("password_works".into(), json!(true));
        }
    }

    fn provision<'a>(&'a self, ctx: &'a mut InstanceCtx) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let args: InstanceArgs = ctx.args()?;
            let owner = ctx.run_as.as_ref().map(|run_as| (run_as.uid, run_as.gid));
            kip_core::fsutil::private_dir(&ctx.data_dir, owner)
                .map_err(io_error("create", &ctx.data_dir))
                .map_err(|error| vk_error("cannot create the data directory", error))?;
            if ctx.secrets.get(DEFAULT_PASSWORD).is_none() {
                let password = match &args.password {
                    Some(password) => password.clone(),
                    None => kip_core::engine::random_hex(16)?,
                };
                ctx.secrets.0.insert(DEFAULT_PASSWORD.into(), password);
            }
            ctx.secrets.get_or_generate(USER_KEY)?;
            Self::write_config(ctx, &args)
                .map_err(|error| vk_error("cannot write the Valkey configuration", error))?;
            // The default user's password exists before the first start; from then on the file is Valkey's. One
            // a killed kip wrote before it could save the password was never Valkey's, and is written again; so is
            // an empty one (a power loss before its fsync, which runs beside the start), which Valkey would read
            // as a default user without a password.
            let acl_file = ctx.data_dir.join(ACL_FILE);
            let missing = !std::fs::metadata(&acl_file).is_ok_and(|metadata| metadata.len() > 0);
            if ctx.provision_unfinished || missing {
                let line = format!(
                    "user default on #{} ~* &* +@all\n",
                    password_hash(&default_password(ctx, &args))
                );
                config::write_private(&acl_file, &line, ctx.run_as.as_ref())
                    .map_err(|error| vk_error("cannot write the Valkey ACL file", error))?;
            }
            Ok(())
        })
    }

    fn spawn_specs(&self, ctx: &InstanceCtx) -> Result<Vec<SpawnSpec>, EngineError> {
        let toolchain = ctx.toolchain()?;
        let name = SpawnSpec::name_for(&ctx.address, None);
        Ok(vec![SpawnSpec {
            name: name.clone(),
            instance: ctx.address.to_string(),
            program: toolchain.root.join("bin").join("valkey-server"),
            args: vec![
                ctx.data_dir
                    .join(CONFIG_FILE)
                    .to_string_lossy()
                    .into_owned(),
            ],
            // Nothing of the caller's environment: Valkey needs none of it.
            env: crate::shared::engine_environment(),
            cwd: ctx.data_dir.clone(),
            run_as: ctx.run_as.clone(),
            probe: Probe {
                kind: ProbeKind::Socket { path: socket(ctx) },
                initial_delay: Duration::ZERO,
                interval: Duration::from_millis(1),
                timeout: Duration::from_secs(60),
                retries: None,
            },
            restart: RestartPolicy::OnFailure,
            max_restarts: None,
            restart_delay_ms: None,
            // SIGTERM: Valkey flushes the append-only file and writes a snapshot when `save` rules exist.
            stop: StopSpec {
                command: None,
                signals: vec![("SIGTERM".to_owned(), 30_000)],
                // Its data goes right after: no final flush or snapshot to wait for.
                discard: Some(("SIGKILL".to_owned(), 0)),
            },
            log: ctx.log("valkey"),
            after: Vec::new(),
            reload: None,
            job: false,
            leaves: Vec::new(),
        }])
    }

    fn ready<'a>(&'a self, ctx: &'a InstanceCtx) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let args: InstanceArgs = ctx.args()?;
            connector(ctx, &args)
                .connect()
                .await
                .map_err(|error| vk_error("Valkey does not answer", error))?;
            Ok(())
        })
    }

    fn restart_because(&self, change: &Change) -> Option<Vec<String>> {
        let empty = Attributes::new();
        Some(config::restart_because(
            &change.changed_attributes(),
            change.before.as_ref().unwrap_or(&empty),
            change.after.as_ref().unwrap_or(&empty),
        ))
    }

    fn reconfigure<'a>(
        &'a self,
        ctx: &'a mut InstanceCtx,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<Reconfigure, EngineError>> {
        Box::pin(async move {
            let args: InstanceArgs = ctx.args()?;
            let before: Option<InstanceArgs> = change.before_as().ok();
            let changed = change.changed_attributes();
            // The attributes the plan restarts Valkey for (apply does, then); the others are set live.
            let restart = change.restart_because.clone().unwrap_or_default();
            let mut connection = connector(ctx, &args)
                .connect()
                .await
                .map_err(|error| vk_error("cannot connect to Valkey", error))?;
            // A new password for `default`, its rules kept; saved to the ACL file for the next start.
            let password = default_password(ctx, &args);
            if ctx.secrets.get(DEFAULT_PASSWORD) != Some(password.as_str()) {
                let mut command = redis::cmd("ACL");
                command
                    .arg("SETUSER")
                    .arg("default")
                    .arg("resetpass")
                    .arg(format!("#{}", password_hash(&password)));
                run::<()>(
                    &mut connection,
                    &command,
                    "ACL SETUSER default resetpass #…",
                )
                .await
                .map_err(|error| vk_error("cannot change the default user's password", error))?;
                save_users(ctx, &mut connection).await?;
                ctx.secrets.0.insert(DEFAULT_PASSWORD.into(), password);
            }
            // What Valkey takes live, in one atomic `CONFIG SET`.
            let directive = |attribute: &str| match attribute {
                "maxmemory_policy" => "maxmemory-policy".to_owned(),
                "io_threads" => "io-threads".to_owned(),
                other => other.to_owned(),
            };
            let live_attributes: Vec<String> = changed
                .iter()
                .filter(|name| !restart.contains(name))
                .map(|name| directive(name))
                .collect();
            let mut pairs: Vec<(String, String)> = config::live_values(&args)
                .map_err(|error| vk_error("cannot reconfigure Valkey", error))?
                .into_iter()
                .filter(|(name, _)| live_attributes.contains(name))
                .collect();
            if live_attributes.iter().any(|name| name == "settings") {
                pairs.extend(config::changed_live_settings(
                    before.as_ref().and_then(|before| before.settings.as_ref()),
                    args.settings.as_ref(),
                ));
            }
            if !pairs.is_empty() {
                let mut command = redis::cmd("CONFIG");
                command.arg("SET");
                for (name, value) in &pairs {
                    command.arg(name).arg(value);
                }
                let shown = format!(
                    "CONFIG SET {}",
                    pairs
                        .iter()
                        .map(|(name, value)| format!("{name} {}", config::quote(value)))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                if let Err(error) = run::<()>(&mut connection, &command, &shown).await {
                    // The file keeps what runs, so a restart does not stumble on the refused value.
                    if let Some(before) = &before {
                        let _ = Self::write_config(ctx, before);
                    }
                    return Err(vk_error("Valkey refused the new settings", error)
                        .hint("fix the value in kip.hcl; the server keeps running with its current settings"));
                }
            }
            Ok(if restart.is_empty() {
                Reconfigure::Done
            } else {
                Reconfigure::Restart
            })
        })
    }

    fn refresh<'a>(
        &'a self,
        ctx: &'a InstanceCtx,
        managed: &'a [Managed<'a>],
    ) -> BoxFuture<'a, Result<Vec<Observed>, EngineError>> {
        Box::pin(async move {
            let users: Vec<&Managed<'_>> =
                managed.iter().filter(|node| node.kind == USER).collect();
            let instance = managed.iter().find(|node| node.address.is_instance());
            if users.is_empty() && instance.is_none() {
                return Ok(Vec::new());
            }
            let args: InstanceArgs = ctx.args()?;
            let mut connection = connector(ctx, &args)
                .connect()
                .await
                .map_err(|error| vk_error("cannot connect to Valkey", error))?;
            // One round trip for the live settings and every user.
            let mut pipe = redis::pipe();
            pipe.cmd("CONFIG").arg("GET").arg(config::OBSERVED);
            for user in &users {
                pipe.cmd("ACL").arg("GETUSER").arg(user_name(user.address)?);
            }
            let answers: Vec<redis::Value> =
                pipe.query_async(&mut connection).await.map_err(|error| {
                    vk_error(
                        "cannot read the ACL users",
                        VkError::refused("ACL GETUSER", error),
                    )
                })?;
            let mut observed = Vec::new();
            let (settings, answers) = answers.split_first().ok_or_else(|| {
                vk_error(
                    "cannot read the live settings",
                    VkError::Unexpected {
                        command: "CONFIG GET".into(),
                        answer: "nothing".into(),
                    },
                )
            })?;
            if let Some(instance) = instance {
                let live = config::parse_config_get(settings);
                let applied = instance.applied.as_ref().unwrap_or(&instance.attributes);
                let drift = config::settings_drift(applied, &live);
                if !drift.is_empty() {
                    observed.push(Observed {
                        address: instance.address.clone(),
                        attributes: drift,
                    });
                }
            }
            for (user, answer) in users.iter().zip(answers) {
                let name = user_name(user.address)?;
                let Some(live) = acl::parse_getuser(answer)
                    .map_err(|error| vk_error("cannot read the ACL users", error))?
                else {
                    continue;
                };
                let password = user_password(ctx, name, user.attributes);
                let works = live.passwords == [password_hash(&password)];
                let recorded = ctx.secrets.get(&acl::rules_key(name));
                let commands = if recorded == Some(acl::rules_fingerprint(&live.commands).as_str())
                {
                    // The rules kip applied, in Valkey's words: what kip applied is what runs.
                    as_list(
                        user.applied
                            .as_ref()
                            .unwrap_or(&user.attributes)
                            .get("commands"),
                    )
                } else {
                    json!(live.command_rules())
                };
                let mut attributes = Attributes::new();
                attributes.insert("enabled".into(), json!(live.enabled));
                attributes.insert("password_works".into(), json!(works));
                attributes.insert("commands".into(), commands);
                attributes.insert("keys".into(), json!(live.keys));
                attributes.insert("channels".into(), json!(live.channels));
                observed.push(Observed {
                    address: user.address.clone(),
                    attributes,
                });
            }
            Ok(observed)
        })
    }

    fn converge<'a>(
        &'a self,
        ctx: &'a mut InstanceCtx,
        changes: &'a [Change],
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            if changes.iter().all(|change| change.kind != USER) {
                return Ok(());
            }
            Self::set_users(ctx, changes).await
        })
    }

    fn exports(&self, ctx: &InstanceCtx, object: Option<&Address>) -> Result<Exports, EngineError> {
        let args: InstanceArgs = ctx.args()?;
        let mut exports = Exports::new();
        match object {
            None => {
                let password = default_password(ctx, &args);
                exports.insert("url".into(), json!(url(ctx, &args, None, &password)));
                exports.insert("host".into(), json!("127.0.0.1"));
                exports.insert("port".into(), json!(args.port));
                exports.insert("socket".into(), json!(socket(ctx).to_string_lossy()));
                exports.insert("password".into(), json!(password));
            }
            Some(address) => {
                let name = user_name(address)?;
                let attributes = ctx
                    .objects
                    .get(address)
                    .map(|object| object.attributes.clone())
                    .unwrap_or_default();
                let password = user_password(ctx, name, &attributes);
                exports.insert("name".into(), json!(name));
                exports.insert("url".into(), json!(url(ctx, &args, Some(name), &password)));
                exports.insert("password".into(), json!(password));
            }
        }
        Ok(exports)
    }
}
