//! The MariaDB engine behind kip's [`Engine`] contract: a data directory copied from a per-version template whose
//! `root@localhost` has a bootstrap password only kip knows (so there is never a moment of open access) until kip
//! sets the instance's own right after its first start; `mariadbd` under the supervisor with `kip.cnf` as its only
//! option file; settings applied with `SET GLOBAL` or a restart as MariaDB allows (and as the plan says); and
//! databases, users and grants refreshed ([`super::observe`]) and converged ([`super::converge`]) from the plan.

use std::time::Duration;

use kip_core::address::Address;
use kip_core::engine::{
    BoxFuture, Engine, EngineError, Exports, InstanceCtx, Managed, Observed, Probe, ProbeKind,
    Reconfigure, RestartPolicy, SpawnSpec, StopSpec,
};
use kip_core::plan::{Attributes, Change, Desired};
use kip_schemas::EngineSchema;
use mysql_async::prelude::Queryable as _;
use serde_json::{Value as Json, json};

use super::args::{DatabaseArgs, GrantArgs, InstanceArgs, SettingValue, UserArgs};
use super::client::{Connector, is_access_denied};
use super::{CONFIG_FILE, MyError, SOCKET, config, io_error, template};
use crate::shared::url_encode as encode;

/// The `mariadb` engine.
#[derive(Debug, Default)]
pub struct MariaDb;

/// The secret holding root's current password (declared or generated).
pub const ROOT_PASSWORD: &str = "password";
/// The secret holding the template's bootstrap password, from provisioning until the first start is through.
const BOOTSTRAP_PASSWORD: &str = "bootstrap";
/// The secret generated user passwords derive from.
const USER_KEY: &str = "user-key";

/// Turns a provider error into the contract's, keeping it as the cause and what to do as the hint.
pub(super) fn my_error(context: &str, error: MyError) -> EngineError {
    EngineError::hinted(context, error)
}

/// The socket of an instance.
pub fn socket(ctx: &InstanceCtx) -> std::path::PathBuf {
    ctx.run_dir.join(SOCKET)
}

/// The password root should have: the declared one, else the one kip generated.
fn root_password(ctx: &InstanceCtx, args: &InstanceArgs) -> String {
    args.root_password
        .clone()
        .or_else(|| ctx.secrets.get(ROOT_PASSWORD).map(str::to_owned))
        .unwrap_or_default()
}

/// How kip reaches the instance: before the first start is through, with the bootstrap password (or the
/// instance's own, if kip set it and stopped before saving); then with the password it set last, or a newly
/// declared one.
fn connector(ctx: &InstanceCtx, args: &InstanceArgs) -> Connector {
    let mut passwords = Vec::new();
    if !ctx.initialized
        && let Some(bootstrap) = ctx.secrets.get(BOOTSTRAP_PASSWORD)
    {
        passwords.push(bootstrap.to_owned());
    }
    passwords.extend(ctx.secrets.get(ROOT_PASSWORD).map(str::to_owned));
    if let Some(declared) = &args.root_password
        && !passwords.contains(declared)
    {
        passwords.push(declared.clone());
    }
    Connector::new(&socket(ctx), passwords)
}

/// A session refused for its password before the instance's first start was through: the server on the data
/// directory is not one kip made.
fn first_session_error(ctx: &InstanceCtx, context: &str, error: MyError) -> EngineError {
    if let MyError::Connect { source, .. } = &error
        && is_access_denied(source)
        && !ctx.initialized
    {
        return my_error(
            context,
            MyError::NoCredentials {
                data_dir: ctx.data_dir.clone(),
            },
        );
    }
    my_error(context, error)
}

/// The password of a user kip generates one for: derived from a random key kept in the instance's state, so it
/// is known again even after a crash between creating the user and saving the state.
fn generated_user_password(ctx: &InstanceCtx, user: &str) -> String {
    let key = ctx.secrets.get(USER_KEY).unwrap_or_default();
    crate::shared::derived_password(key, "mariadb user password", user)
}

/// A user's password: declared, else generated.
pub(super) fn user_password(ctx: &InstanceCtx, name: &str, attributes: &Attributes) -> String {
    attributes
        .get("password")
        .and_then(Json::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| generated_user_password(ctx, name))
}

/// The URL of the instance as `user`, with `database` selected: over the unix socket, or over TCP on 127.0.0.1
/// when `port` is declared. MariaDB takes a loopback TCP client for `localhost` (without a DNS lookup), so the
/// `localhost` accounts, root's among them, log in either way.
fn url(
    ctx: &InstanceCtx,
    args: &InstanceArgs,
    user: &str,
    password: &str,
    database: Option<&str>,
) -> String {
    let database = database.map(encode).unwrap_or_default();
    let credentials = format!("{}:{}", encode(user), encode(password));
    match args.port {
        Some(port) => format!("mysql://{credentials}@127.0.0.1:{port}/{database}"),
        None => format!(
            "mysql://{credentials}@localhost/{database}?socket={}",
            encode(&socket(ctx).to_string_lossy())
        ),
    }
}

fn label(address: &Address) -> Result<&str, EngineError> {
    address
        .label()
        .ok_or_else(|| EngineError::new(format!("{address} has no name")))
}

/// A value for `SET GLOBAL`: a number as it is, a size (`256M`) in bytes (`SET` reads no suffix), text quoted.
fn set_global_value(value: &SettingValue) -> Result<String, MyError> {
    Ok(match value {
        SettingValue::Bool(_) | SettingValue::Integer(_) | SettingValue::Float(_) => {
            config::value_text(value)
        }
        SettingValue::String(text) => match size_in_bytes(text) {
            Some(bytes) => bytes.to_string(),
            // A number written as a string (`"12"`, `"0.5"`): `SET GLOBAL max_connections = '12'` is refused.
            None if is_plain_number(text) => text.trim().to_owned(),
            None => super::quote::literal("setting value", text)?,
        },
    })
}

/// Digits, with at most one `.` between digits.
fn is_plain_number(text: &str) -> bool {
    let text = text.trim();
    let mut parts = text.splitn(2, '.');
    let whole = parts.next().unwrap_or_default();
    let fraction = parts.next();
    !whole.is_empty()
        && whole.bytes().all(|byte| byte.is_ascii_digit())
        && fraction.is_none_or(|fraction| {
            !fraction.is_empty() && fraction.bytes().all(|byte| byte.is_ascii_digit())
        })
}

fn size_in_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let shift = match unit.to_ascii_uppercase().as_str() {
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

impl MariaDb {
    fn write_config(
        ctx: &InstanceCtx,
        args: &InstanceArgs,
        toolchain_root: &std::path::Path,
    ) -> Result<(), MyError> {
        let text = config::render(args, toolchain_root, &ctx.data_dir, &ctx.run_dir)?;
        let path = ctx.data_dir.join(CONFIG_FILE);
        kip_core::fsutil::write_private_if_changed(
            &path,
            text.as_bytes(),
            ctx.run_as.as_ref().map(|run_as| (run_as.uid, run_as.gid)),
        )
        .map(drop)
        .map_err(io_error("write", &path))
    }

    async fn session(ctx: &InstanceCtx, context: &str) -> Result<mysql_async::Conn, EngineError> {
        let args: InstanceArgs = ctx.args()?;
        connector(ctx, &args)
            .connect()
            .await
            .map_err(|error| my_error(context, error))
    }
}

impl Engine for MariaDb {
    fn schema(&self) -> &'static EngineSchema {
        kip_schemas::engine("mariadb").expect("kip-schemas describes mariadb")
    }

    fn check_view(&self, node: &Desired) -> Result<(), EngineError> {
        let address = &node.address;
        let attributes = &node.attributes;
        match node.kind.as_str() {
            kip_core::plan::INSTANCE => {
                kip_core::engine::typed::<InstanceArgs>(address, attributes).map(drop)
            }
            "database" => kip_core::engine::typed::<DatabaseArgs>(address, attributes).map(drop),
            "user" => kip_core::engine::typed::<UserArgs>(address, attributes).map(drop),
            "grant" => kip_core::engine::typed::<GrantArgs>(address, attributes).map(drop),
            other => Err(EngineError::new(format!("mariadb has no {other} objects"))),
        }
    }

    fn derive(&self, node: &mut Desired) {
        let attributes = &mut node.attributes;
        match node.kind.as_str() {
            "user" => {
                attributes.insert("password_works".into(), json!(true));
                attributes.insert("undeclared_grants".into(), json!([]));
            }
            "grant" => {
                let privileges = crate::shared::strings(attributes.get("privileges"));
                attributes.insert(
                    "privileges".into(),
                    json!(super::grants::normalize_all(&privileges)),
                );
            }
            _ => {}
        }
    }

    fn provision<'a>(&'a self, ctx: &'a mut InstanceCtx) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let args: InstanceArgs = ctx.args()?;
            let toolchain = ctx.toolchain()?.clone();
            let template = template::ensure_template(
                &toolchain.root,
                &toolchain.version,
                &ctx.templates,
                ctx.run_as.as_ref(),
            )
            .map_err(|error| my_error("cannot prepare the MariaDB template", error))?;
            let existed = ctx.data_dir.join(template::MARKER).is_file();
            template::provision(&template, &ctx.data_dir, ctx.run_as.as_ref())
                .map_err(|error| my_error("cannot create the data directory", error))?;
            if ctx.secrets.get(ROOT_PASSWORD).is_none() {
                let password = match &args.root_password {
                    Some(password) => password.clone(),
                    None => kip_core::engine::random_hex(16)?,
                };
                ctx.secrets.0.insert(ROOT_PASSWORD.into(), password);
            }
            if !ctx.initialized && ctx.secrets.get(BOOTSTRAP_PASSWORD).is_none() {
                if existed {
                    // A data directory kip's state does not account for (the state was lost, or kip stopped between
                    // copying it and saving): root's password is unknown, so it gets the instance's own, offline.
                    // A server running on it makes this fail, and kip never opens access to get in.
                    if std::os::unix::net::UnixStream::connect(socket(ctx)).is_ok() {
                        // A server answers on the instance's socket: no need to wait for its locks to say so.
                        return Err(my_error(
                            "cannot secure the instance",
                            MyError::NoCredentials {
                                data_dir: ctx.data_dir.clone(),
                            },
                        ));
                    }
                    let hash = super::password::native_hash(&root_password(ctx, &args));
                    template::set_root_offline(
                        &toolchain.root,
                        &ctx.data_dir,
                        &hash,
                        ctx.run_as.as_ref(),
                    )
                    .map_err(|error| my_error("cannot secure the instance", error))?;
                } else {
                    let bootstrap = template::bootstrap_password(&template)
                        .map_err(|error| my_error("cannot prepare the MariaDB template", error))?;
                    ctx.secrets.0.insert(BOOTSTRAP_PASSWORD.into(), bootstrap);
                }
            }
            ctx.secrets.get_or_generate(USER_KEY)?;
            Self::write_config(ctx, &args, &toolchain.root)
                .map_err(|error| my_error("cannot write the MariaDB configuration", error))
        })
    }

    fn spawn_specs(&self, ctx: &InstanceCtx) -> Result<Vec<SpawnSpec>, EngineError> {
        let toolchain = ctx.toolchain()?;
        let mut args = vec![format!(
            "--defaults-file={}",
            ctx.data_dir.join(CONFIG_FILE).display()
        )];
        if ctx.run_as.is_none() && rustix::process::geteuid().is_root() {
            // mariadbd refuses to run as root unless told to; kip runs it as its own account whenever it can.
            args.push("--user=root".to_owned());
        }
        Ok(vec![SpawnSpec {
            name: SpawnSpec::name_for(&ctx.address, None),
            instance: ctx.address.to_string(),
            program: toolchain.root.join("bin").join("mariadbd"),
            args,
            // Nothing of the caller's environment (its LD_LIBRARY_PATH, its MYSQL_* variables).
            env: crate::shared::engine_environment(),
            cwd: ctx.data_dir.clone(),
            run_as: ctx.run_as.clone(),
            probe: Probe {
                // MariaDB creates its socket once it takes connections; `ready` logs in for real.
                kind: ProbeKind::Socket { path: socket(ctx) },
                initial_delay: Duration::ZERO,
                interval: Duration::from_millis(1),
                timeout: Duration::from_secs(60),
                retries: None,
            },
            restart: RestartPolicy::OnFailure,
            max_restarts: None,
            restart_delay_ms: None,
            // SIGTERM: a clean shutdown (InnoDB flushes); a SIGKILL later is recovered from the redo log.
            stop: StopSpec {
                command: None,
                signals: vec![("SIGTERM".to_owned(), 60_000)],
                // Its data goes right after: no final flush or snapshot to wait for.
                discard: Some(("SIGKILL".to_owned(), 0)),
            },
            log: ctx.log("mariadb"),
            after: Vec::new(),
            reload: None,
            job: false,
            leaves: Vec::new(),
        }])
    }

    fn ready<'a>(&'a self, ctx: &'a InstanceCtx) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let args: InstanceArgs = ctx.args()?;
            let mut conn = connector(ctx, &args).connect().await.map_err(|error| {
                first_session_error(ctx, "MariaDB does not take sessions", error)
            })?;
            conn.query_drop("SELECT 1").await.map_err(|error| {
                my_error("MariaDB does not answer", MyError::sql("SELECT 1", error))
            })?;
            // After-start (a first start only) goes on in this session.
            if ctx.initialized {
                let _ = conn.disconnect().await;
            } else {
                ctx.session.keep(conn);
            }
            Ok(())
        })
    }

    /// The instance's own root password replaces the bootstrap password, as a hash (so the password never reaches
    /// the server), before anything else may use the instance.
    fn after_start<'a>(
        &'a self,
        ctx: &'a mut InstanceCtx,
    ) -> Option<BoxFuture<'a, Result<(), EngineError>>> {
        Some(Box::pin(async move {
            let args: InstanceArgs = ctx.args()?;
            // The ready step's session, unless the server dropped it since (killed and restarted in between).
            let kept = match ctx.session.take::<mysql_async::Conn>() {
                Some(mut conn) => {
                    let alive = conn.ping().await.is_ok();
                    alive.then_some(conn)
                }
                None => None,
            };
            let mut conn = match kept {
                Some(conn) => conn,
                None => connector(ctx, &args).connect().await.map_err(|error| {
                    first_session_error(ctx, "cannot secure the new instance", error)
                })?,
            };
            let password = root_password(ctx, &args);
            set_root_password(&mut conn, &password)
                .await
                .map_err(|error| my_error("cannot secure the new instance", error))?;
            let _ = conn.disconnect().await;
            ctx.secrets.0.insert(ROOT_PASSWORD.into(), password);
            ctx.secrets.remove(BOOTSTRAP_PASSWORD);
            Ok(())
        }))
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
            let mut conn = Self::session(ctx, "cannot connect to MariaDB").await?;
            let password = root_password(ctx, &args);
            if ctx.secrets.get(ROOT_PASSWORD) != Some(password.as_str()) {
                set_root_password(&mut conn, &password)
                    .await
                    .map_err(|error| my_error("cannot change root's password", error))?;
                ctx.secrets.0.insert(ROOT_PASSWORD.into(), password);
            }
            // Settings are set live unless the plan restarts MariaDB for them (apply does, then).
            if !change.restarts() {
                let changed = config::changed_settings(
                    before.as_ref().and_then(|before| before.settings.as_ref()),
                    args.settings.as_ref(),
                );
                for (name, value) in changed {
                    let value = set_global_value(&value)
                        .map_err(|error| my_error("cannot reconfigure MariaDB", error))?;
                    // `name` is letters, digits and `_` (checked by lint and by the config's render).
                    let statement = format!("SET GLOBAL {name} = {value}");
                    conn.query_drop(&statement).await.map_err(|error| {
                        my_error(
                            "MariaDB refused the new settings",
                            MyError::sql(statement.clone(), error),
                        )
                        .hint("fix the value in kip.hcl; the server keeps running with its current settings")
                    })?;
                }
            }
            let _ = conn.disconnect().await;
            Ok(Reconfigure::Done)
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
            if changes.iter().all(|change| change.address.is_instance()) {
                return Ok(());
            }
            let mut conn = Self::session(ctx, "cannot connect to MariaDB").await?;
            let result = super::converge::apply(ctx, &mut conn, changes).await;
            let _ = conn.disconnect().await;
            result
        })
    }

    fn exports(&self, ctx: &InstanceCtx, object: Option<&Address>) -> Result<Exports, EngineError> {
        let args: InstanceArgs = ctx.args()?;
        let root = root_password(ctx, &args);
        let mut exports = Exports::new();
        let Some(address) = object else {
            exports.insert("url".into(), json!(url(ctx, &args, "root", &root, None)));
            exports.insert("host".into(), json!("127.0.0.1"));
            exports.insert("port".into(), json!(args.port));
            exports.insert("socket".into(), json!(socket(ctx).to_string_lossy()));
            exports.insert("username".into(), json!("root"));
            exports.insert("password".into(), json!(root));
            return Ok(exports);
        };
        let kind = address.kind().unwrap_or_default();
        match kind {
            "database" => {
                let name = label(address)?;
                exports.insert("name".into(), json!(name));
                exports.insert(
                    "url".into(),
                    json!(url(ctx, &args, "root", &root, Some(name))),
                );
            }
            "user" => {
                let name = label(address)?;
                let attributes = ctx
                    .objects
                    .get(address)
                    .map(|object| object.attributes.clone())
                    .unwrap_or_default();
                let password = user_password(ctx, name, &attributes);
                exports.insert("name".into(), json!(name));
                exports.insert("url".into(), json!(url(ctx, &args, name, &password, None)));
                exports.insert("password".into(), json!(password));
            }
            _ => {}
        }
        Ok(exports)
    }
}

/// `ALTER USER root@localhost` to `password`, sent as its hash.
async fn set_root_password(conn: &mut mysql_async::Conn, password: &str) -> Result<(), MyError> {
    let hash = super::password::native_hash(password);
    let statement = format!(
        "ALTER USER 'root'@'localhost' IDENTIFIED BY PASSWORD {}",
        super::quote::literal("password hash", &hash)?
    );
    conn.query_drop(&statement).await.map_err(|error| {
        MyError::sql(
            "ALTER USER 'root'@'localhost' IDENTIFIED BY PASSWORD '…'",
            error,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_written_as_strings_are_set_unquoted_and_text_is_quoted() {
        let set = |text: &str| set_global_value(&SettingValue::String(text.to_owned())).unwrap();
        assert_eq!(set("12"), "12");
        assert_eq!(set("0.5"), "0.5");
        assert_eq!(set("64M"), (64u64 << 20).to_string());
        assert_eq!(set("1.2.3"), "'1.2.3'");
        assert_eq!(set("."), "'.'");
        assert_eq!(set("STRICT_ALL_TABLES"), "'STRICT_ALL_TABLES'");
    }

    #[test]
    fn sizes_for_set_global() {
        assert_eq!(size_in_bytes("256M"), Some(256 << 20));
        assert_eq!(size_in_bytes("1g"), Some(1 << 30));
        assert_eq!(size_in_bytes("STRICT_ALL_TABLES"), None);
        assert_eq!(size_in_bytes("12"), None);
        assert_eq!(
            set_global_value(&SettingValue::String("it's".into())).unwrap(),
            "'it\\'s'"
        );
        assert_eq!(set_global_value(&SettingValue::Bool(true)).unwrap(), "ON");
    }
}
