//! The NATS engine behind kip's [`Engine`] contract: `nats-server` under the supervisor with a generated config
//! on a loopback port (allocated once and kept in state when `port` is not declared) that requires the
//! instance's token from the first start, changes reloaded (SIGHUP, through the supervisor) or restarted as NATS
//! allows (and as the plan says), and streams and key-value buckets refreshed in one request and converged from
//! the plan.

use std::time::{Duration, Instant};

use kip_core::address::Address;
use kip_core::engine::{
    BoxFuture, Engine, EngineError, Exports, InstanceCtx, Managed, Observed, Probe, ProbeKind,
    Reconfigure, RestartPolicy, SpawnSpec, StopSpec,
};
use kip_core::plan::{Action, Attributes, Change, Desired};
use kip_schemas::EngineSchema;
use serde_json::json;

use super::args::{InstanceArgs, KvArgs, StreamArgs};
use super::client::Connector;
use super::config::{self, Rendered};
use super::jetstream::{self, KV, STREAM};
use super::{CONFIG_FILE, NatsError, STORE_DIR, io_error};

/// The `nats` engine.
#[derive(Debug, Default)]
pub struct Nats;

/// The secret holding the token kip generated (used when `token` is not declared).
pub const GENERATED_TOKEN: &str = "token";
/// The secret holding the token the config file holds now, and the one it held before (a reload may still be on
/// its way when kip connects next).
const CONFIG_TOKEN: &str = "config-token";
const PREVIOUS_TOKEN: &str = "previous-token";
/// The name of the client port in the instance's allocated ports.
pub const CLIENT_PORT: &str = "client";
/// How long JetStream may take to answer after the listener is up (it recovers its streams first).
const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// Turns a provider error into the contract's, keeping it as the cause.
fn nats_error(context: &str, error: NatsError) -> EngineError {
    EngineError::hinted(context, error)
}

/// The token clients need: the declared one, else the one kip generated.
fn token(ctx: &InstanceCtx, args: &InstanceArgs) -> String {
    args.token
        .clone()
        .or_else(|| ctx.secrets.get(GENERATED_TOKEN).map(str::to_owned))
        .unwrap_or_default()
}

/// The client port: the declared one, else the one allocated at the first provision.
fn client_port(ctx: &InstanceCtx, args: &InstanceArgs) -> Result<u16, EngineError> {
    args.port
        .or_else(|| ctx.ports.get(CLIENT_PORT).copied())
        .ok_or_else(|| {
            EngineError::new(format!("{} has no client port allocated yet", ctx.address))
                .hint("run `kip apply` to provision the instance")
        })
}

/// How kip reaches the instance: the token the configuration asks for, then the one it asked for before.
fn connector(ctx: &InstanceCtx, args: &InstanceArgs) -> Result<Connector, EngineError> {
    let mut tokens = vec![token(ctx, args)];
    for key in [PREVIOUS_TOKEN, GENERATED_TOKEN] {
        if let Some(other) = ctx.secrets.get(key)
            && !tokens.iter().any(|token| token == other)
        {
            tokens.push(other.to_owned());
        }
    }
    Ok(Connector {
        port: client_port(ctx, args)?,
        tokens,
    })
}

async fn connect(
    ctx: &InstanceCtx,
    args: &InstanceArgs,
) -> Result<async_nats::Client, EngineError> {
    connector(ctx, args)?
        .connect()
        .await
        .map_err(|error| nats_error("cannot connect to NATS", error))
}

fn label(address: &Address) -> Result<&str, EngineError> {
    address
        .label()
        .ok_or_else(|| EngineError::new(format!("{address} has no name")))
}

/// The stream that holds an object: the stream itself, or a bucket's `KV_<bucket>`.
fn stream_name(kind: &str, address: &Address) -> Result<String, EngineError> {
    let label = label(address)?;
    Ok(match kind {
        KV => jetstream::kv_stream(label),
        _ => label.to_owned(),
    })
}

/// The instance's data directory, private to the engine's account.
fn create_data_dir(ctx: &InstanceCtx) -> Result<(), NatsError> {
    kip_core::fsutil::private_dir(&ctx.data_dir, owner(ctx))
        .map_err(io_error("create", &ctx.data_dir))
}

fn owner(ctx: &InstanceCtx) -> Option<(u32, u32)> {
    ctx.run_as.as_ref().map(|run_as| (run_as.uid, run_as.gid))
}

/// `nats-server -t`: whether NATS reads the instance's configuration file; its own words when it does not.
async fn check_config(ctx: &InstanceCtx) -> Result<(), String> {
    let program = ctx
        .toolchain()
        .map_err(|error| error.to_string())?
        .root
        .join("bin")
        .join("nats-server");
    let output = tokio::process::Command::new(&program)
        .arg("-t")
        .arg("-c")
        .arg(ctx.data_dir.join(CONFIG_FILE))
        .env_clear()
        .output()
        .await
        .map_err(|error| format!("cannot run {}: {error}", program.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr);
    let said = said.trim();
    Err(if said.is_empty() {
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    } else {
        said.to_owned()
    })
}

impl Nats {
    /// Writes the config file, and records which token it holds (and which one it held before).
    fn write_config(ctx: &mut InstanceCtx, args: &InstanceArgs) -> Result<(), EngineError> {
        let token = token(ctx, args);
        let text = config::render(&Rendered {
            args,
            port: client_port(ctx, args)?,
            token: &token,
            store_dir: &ctx.data_dir.join(STORE_DIR),
        })
        .map_err(|error| nats_error("cannot write the NATS configuration", error))?;
        let path = ctx.data_dir.join(CONFIG_FILE);
        kip_core::fsutil::write_private_regenerated(&path, text.as_bytes(), owner(ctx))
            .map_err(io_error("write", &path))
            .map_err(|error| nats_error("cannot write the NATS configuration", error))?;
        if let Some(previous) = ctx.secrets.get(CONFIG_TOKEN).map(str::to_owned)
            && previous != token
        {
            ctx.secrets.0.insert(PREVIOUS_TOKEN.into(), previous);
        }
        ctx.secrets.0.insert(CONFIG_TOKEN.into(), token);
        Ok(())
    }

    /// Waits until JetStream answers for the account: it recovers its streams before it does.
    async fn jetstream_ready(client: &async_nats::Client) -> Result<(), EngineError> {
        let started = Instant::now();
        loop {
            match super::client::jetstream_answers(client).await {
                Ok(()) => return Ok(()),
                Err(error) if started.elapsed() > JETSTREAM_TIMEOUT => {
                    return Err(EngineError::with_source(
                        "JetStream does not answer (`$JS.API.INFO`)",
                        error,
                    )
                    .hint("see the instance's log with `kip logs`"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    async fn converge_objects(ctx: &InstanceCtx, changes: &[Change]) -> Result<(), EngineError> {
        let args: InstanceArgs = ctx.args()?;
        if !args.jetstream {
            return Err(EngineError::new(format!(
                "{} has `jetstream = false`: its streams and key-value buckets cannot be made or removed",
                ctx.address
            ))
            .hint("set `jetstream = true` (the default) in the nats block, or remove its stream and kv blocks"));
        }
        let js = async_nats::jetstream::new(connect(ctx, &args).await?);
        let failed = |error| nats_error("cannot converge JetStream", error);
        for change in changes.iter().filter(|c| c.kind == STREAM || c.kind == KV) {
            let name = stream_name(&change.kind, &change.address)?;
            let desired = || -> Result<async_nats::jetstream::stream::Config, EngineError> {
                let label = label(&change.address)?;
                match change.kind.as_str() {
                    KV => jetstream::kv_config(label, &change.after_as::<KvArgs>()?),
                    _ => jetstream::stream_config(label, &change.after_as::<StreamArgs>()?),
                }
                .map_err(failed)
            };
            match change.action {
                Action::Noop => {}
                Action::Delete => jetstream::delete(&js, &name).await.map_err(failed)?,
                Action::Replace => {
                    let config = desired()?;
                    jetstream::delete(&js, &name).await.map_err(failed)?;
                    jetstream::create_or_update(&js, &config)
                        .await
                        .map_err(failed)?;
                }
                Action::Create | Action::Update => {
                    jetstream::create_or_update(&js, &desired()?)
                        .await
                        .map_err(failed)?;
                }
            }
        }
        Ok(())
    }
}

impl Engine for Nats {
    fn schema(&self) -> &'static EngineSchema {
        kip_schemas::engine("nats").expect("kip-schemas describes nats")
    }

    fn check_view(&self, node: &Desired) -> Result<(), EngineError> {
        let address = &node.address;
        let attributes = &node.attributes;
        match node.kind.as_str() {
            kip_core::plan::INSTANCE => {
                kip_core::engine::typed::<InstanceArgs>(address, attributes).map(drop)
            }
            STREAM => kip_core::engine::typed::<StreamArgs>(address, attributes).map(drop),
            KV => kip_core::engine::typed::<KvArgs>(address, attributes).map(drop),
            other => Err(EngineError::new(format!("nats has no {other} objects"))),
        }
    }

    fn provision<'a>(&'a self, ctx: &'a mut InstanceCtx) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let args: InstanceArgs = ctx.args()?;
            create_data_dir(ctx)
                .map_err(|error| nats_error("cannot create the data directory", error))?;
            // Both before the first start, kept in state: the token the server requires from then on, and a
            // client port that stays the same (also the fallback when a declared `port` is removed later).
            ctx.secrets.get_or_generate(GENERATED_TOKEN)?;
            ctx.port(CLIENT_PORT)?;
            Self::write_config(ctx, &args)
        })
    }

    fn spawn_specs(&self, ctx: &InstanceCtx) -> Result<Vec<SpawnSpec>, EngineError> {
        let toolchain = ctx.toolchain()?;
        let args: InstanceArgs = ctx.args()?;
        Ok(vec![SpawnSpec {
            name: SpawnSpec::name_for(&ctx.address, None),
            instance: ctx.address.to_string(),
            program: toolchain.root.join("bin").join("nats-server"),
            args: vec![
                "-c".to_owned(),
                ctx.data_dir
                    .join(CONFIG_FILE)
                    .to_string_lossy()
                    .into_owned(),
            ],
            // Nothing of the caller's environment: NATS needs none of it.
            env: crate::shared::engine_environment(),
            cwd: ctx.data_dir.clone(),
            run_as: ctx.run_as.clone(),
            probe: Probe {
                kind: ProbeKind::Tcp {
                    host: "127.0.0.1".to_owned(),
                    port: client_port(ctx, &args)?,
                },
                initial_delay: Duration::ZERO,
                interval: Duration::from_millis(1),
                timeout: Duration::from_secs(60),
                retries: None,
            },
            restart: RestartPolicy::OnFailure,
            max_restarts: None,
            restart_delay_ms: None,
            // SIGTERM: NATS shuts down cleanly, JetStream flushing its stores.
            stop: StopSpec {
                command: None,
                signals: vec![("SIGTERM".to_owned(), 30_000)],
                // Its data goes right after: no final flush or snapshot to wait for.
                discard: Some(("SIGKILL".to_owned(), 0)),
            },
            log: ctx.log("nats"),
            after: Vec::new(),
            reload: Some("SIGHUP".to_owned()),
            job: false,
            leaves: Vec::new(),
        }])
    }

    /// The client port (declared or allocated: a port kept in state that something else took by now is refused
    /// as clearly as a declared one, instead of the probe passing against it) and the monitoring port.
    fn ports(&self, ctx: &InstanceCtx) -> Vec<u16> {
        let Ok(args) = ctx.args::<InstanceArgs>() else {
            return Vec::new();
        };
        client_port(ctx, &args)
            .ok()
            .into_iter()
            .chain(args.http_port)
            .collect()
    }

    fn ready<'a>(&'a self, ctx: &'a InstanceCtx) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let args: InstanceArgs = ctx.args()?;
            let client = connect(ctx, &args).await?;
            if args.jetstream {
                Self::jetstream_ready(&client).await?;
            }
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
            // The configuration was rewritten by provision; NATS reads it again on SIGHUP, or at the restart.
            // Either way it must read: a reload NATS refuses is only a line in its log, and a restart into a
            // configuration it refuses stops a server that ran. So the file is checked first, and put back as it
            // was when NATS refuses it.
            if change.changed_attributes().is_empty() {
                return Ok(Reconfigure::Done);
            }
            if let Err(refusal) = check_config(ctx).await {
                // Put the configuration the server runs with back, so that no later restart reads the refused one.
                let before = change.before_as::<InstanceArgs>()?;
                Self::write_config(ctx, &before)?;
                return Err(EngineError::new(format!("NATS refuses the new configuration: {refusal}"))
                    .hint("fix the value in kip.hcl; the server keeps running with its current configuration"));
            }
            // A reload; apply restarts instead when the plan says so ([`Change::restarts`]).
            Ok(Reconfigure::Reload)
        })
    }

    fn refresh<'a>(
        &'a self,
        ctx: &'a InstanceCtx,
        managed: &'a [Managed<'a>],
    ) -> BoxFuture<'a, Result<Vec<Observed>, EngineError>> {
        Box::pin(async move {
            let objects: Vec<&Managed<'_>> = managed
                .iter()
                .filter(|node| node.kind == STREAM || node.kind == KV)
                .collect();
            if objects.is_empty() {
                return Ok(Vec::new());
            }
            let args: InstanceArgs = ctx.args()?;
            if !args.jetstream {
                // Without JetStream there are no streams to see; converge says what the blocks need.
                return Ok(Vec::new());
            }
            let js = async_nats::jetstream::new(connect(ctx, &args).await?);
            let live = jetstream::list(&js)
                .await
                .map_err(|error| nats_error("cannot read the JetStream streams", error))?;
            let mut observed = Vec::new();
            for object in objects {
                let Some(config) = live.get(&stream_name(object.kind, object.address)?) else {
                    continue;
                };
                let base = object.applied.as_ref().unwrap_or(&object.attributes);
                let attributes =
                    jetstream::observed(object.kind, label(object.address)?, base, config)
                        .map_err(|error| nats_error("cannot read the JetStream streams", error))?;
                observed.push(Observed {
                    address: object.address.clone(),
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
            if changes
                .iter()
                .all(|change| change.kind != STREAM && change.kind != KV)
            {
                return Ok(());
            }
            Self::converge_objects(ctx, changes).await
        })
    }

    fn exports(&self, ctx: &InstanceCtx, object: Option<&Address>) -> Result<Exports, EngineError> {
        let mut exports = Exports::new();
        match object {
            None => {
                let args: InstanceArgs = ctx.args()?;
                let port = client_port(ctx, &args)?;
                exports.insert("url".into(), json!(format!("nats://127.0.0.1:{port}")));
                exports.insert("host".into(), json!("127.0.0.1"));
                exports.insert("port".into(), json!(port));
                exports.insert("token".into(), json!(token(ctx, &args)));
            }
            Some(address) => {
                exports.insert("name".into(), json!(label(address)?));
            }
        }
        Ok(exports)
    }
}
