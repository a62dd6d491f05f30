//! The S3 engine behind kip's [`Engine`] contract: `weed mini` under the supervisor, its identity written before
//! the first start (anonymous requests are refused from the first moment), ready once a signed write succeeds,
//! and buckets refreshed and converged with signed S3 requests.

use std::time::{Duration, Instant};

use kip_core::address::Address;
use kip_core::engine::{
    BoxFuture, Engine, EngineError, Exports, InstanceCtx, Managed, Observed, Probe, ProbeKind,
    Reconfigure, RestartPolicy, RunAs, SpawnSpec, StopSpec,
};
use kip_core::plan::{Action, Attributes, Change, Desired};
use kip_schemas::EngineSchema;
use serde_json::json;

use super::args::{BucketArgs, InstanceArgs};
use super::client::{MasterClient, S3Client};
use super::config::{self, IDENTITY_FILE, SECURITY_FILE};
use super::tls::TlsFiles;
use super::{S3Error, io_error};

/// The `s3` engine.
#[derive(Debug, Default)]
pub struct S3;

/// The object kind of buckets.
const BUCKET: &str = "bucket";
/// The secrets holding the generated access key and secret (used when none is declared).
const ACCESS_KEY: &str = "access-key";
const SECRET_KEY: &str = "secret-key";
/// The secret the keys of SeaweedFS's internal JWTs derive from.
const INTERNAL_KEY: &str = "internal-key";
/// How long the ready step waits for a signed write to succeed.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause between two tries of the ready probe: a few loopback requests, cheap enough to try often.
const READY_POLL: Duration = Duration::from_millis(5);
/// The instance's own attributes that take a restart: what `weed` reads at start.
const RESTART_ATTRIBUTES: [&str; 3] = ["port", "access_key", "secret_key"];

/// Turns a provider error into the contract's, keeping it as the cause.
fn s3_error(context: &str, error: S3Error) -> EngineError {
    EngineError::hinted(context, error)
}

/// The access key id: declared, else the one kip generated.
fn access_key(ctx: &InstanceCtx, args: &InstanceArgs) -> String {
    args.access_key
        .clone()
        .or_else(|| ctx.secrets.get(ACCESS_KEY).map(str::to_owned))
        .unwrap_or_default()
}

/// The secret access key: declared, else the one kip generated.
fn secret_key(ctx: &InstanceCtx, args: &InstanceArgs) -> String {
    args.secret_key
        .clone()
        .or_else(|| ctx.secrets.get(SECRET_KEY).map(str::to_owned))
        .unwrap_or_default()
}

/// `http://127.0.0.1:PORT`: what the AWS SDKs take as an endpoint as it is (an IP address makes them use
/// path-style addressing).
fn endpoint(ctx: &InstanceCtx, args: &InstanceArgs) -> Option<String> {
    config::s3_port(ctx, args).map(|port| format!("http://127.0.0.1:{port}"))
}

/// A client of the instance with its identity.
fn client(ctx: &InstanceCtx) -> Result<S3Client, EngineError> {
    let args: InstanceArgs = ctx.args()?;
    let endpoint = endpoint(ctx, &args).ok_or_else(|| {
        EngineError::new(format!("{} has no S3 port yet", ctx.address))
            .hint("this is a bug in kip's s3 provider: provision assigns the port before a start")
    })?;
    S3Client::new(
        &endpoint,
        &args.region,
        &access_key(ctx, &args),
        &secret_key(ctx, &args),
    )
    .map_err(|error| s3_error("cannot set up the S3 client", error))
}

fn bucket_name(address: &Address) -> Result<&str, EngineError> {
    address
        .label()
        .ok_or_else(|| EngineError::new(format!("{address} has no bucket name")))
}

/// The data directory: created 0700 and the engine account's.
fn ensure_data_dir(ctx: &InstanceCtx) -> Result<(), S3Error> {
    let owner = ctx.run_as.as_ref().map(|run_as| (run_as.uid, run_as.gid));
    kip_core::fsutil::private_dir(&ctx.data_dir, owner).map_err(io_error("create", &ctx.data_dir))
}

/// The probe the ready step runs: a bucket of kip's own created, an object written in it and read back, both
/// removed. It proves what a user's first request needs: the S3 gateway takes the identity, the filer keeps
/// metadata and a volume server takes data. The read matters after a restart: the gateway learns where volumes
/// are from the master's stream of volume locations, and the probe's new volume comes in that stream after the
/// volumes the store already had, so once the probe reads back, existing objects read too.
async fn probe_write(client: &S3Client, bucket: &str) -> Result<(), S3Error> {
    const BODY: &str = "kip";
    client.create_bucket(bucket, false).await?;
    client.put_object(bucket, "probe", BODY).await?;
    let read = client.get_object(bucket, "probe").await?;
    if read != BODY {
        return Err(S3Error::Refused {
            request: format!("GetObject {bucket}/probe"),
            status: 200,
            code: "WrongBody".to_owned(),
            message: format!("read {read:?} back, wrote {BODY:?}"),
        });
    }
    client.delete_object(bucket, "probe").await?;
    client.delete_bucket(bucket).await
}

/// One try of the ready step: the volumes the store had on disk are loaded (after a crash the volume server checks
/// each one before it serves it, while a new volume for the probe is there at once), then the probe write.
/// `loading` keeps the volumes not seen loaded yet.
async fn ready_once(
    client: &S3Client,
    master: &MasterClient,
    loading: &mut Vec<u32>,
    bucket: &str,
) -> Result<(), S3Error> {
    while let Some(&volume) = loading.first() {
        if !master.locates(volume).await? {
            return Err(S3Error::NotLoaded { volume });
        }
        loading.remove(0);
    }
    probe_write(client, bucket).await
}

/// Drops a bucket: refused when it holds anything (any object version or delete marker) unless `force_destroy`,
/// which deletes every version first.
async fn drop_bucket(client: &S3Client, name: &str, force_destroy: bool) -> Result<(), S3Error> {
    if force_destroy {
        client.delete_all_versions(name).await?;
    } else if !client.versions(name, 1).await?.is_empty() {
        return Err(S3Error::NotEmpty {
            bucket: name.to_owned(),
        });
    }
    client.delete_bucket(name).await
}

/// Creates a bucket as declared: object lock only at creation (it turns versioning on by itself).
async fn create_bucket(client: &S3Client, name: &str, bucket: &BucketArgs) -> Result<(), S3Error> {
    client.create_bucket(name, bucket.object_lock).await?;
    if bucket.versioning && !bucket.object_lock {
        client.set_versioning(name, true).await?;
    }
    Ok(())
}

async fn converge_bucket(client: &S3Client, change: &Change) -> Result<(), EngineError> {
    let name = bucket_name(&change.address)?;
    let context = format!("cannot converge bucket {name:?}");
    let result = match change.action {
        Action::Noop => Ok(()),
        Action::Create => create_bucket(client, name, &change.after_as()?).await,
        Action::Update => {
            let after: BucketArgs = change.after_as()?;
            if change
                .changed_attributes()
                .iter()
                .any(|attribute| attribute == "versioning")
            {
                client.set_versioning(name, after.versioning).await
            } else {
                Ok(())
            }
        }
        Action::Replace => {
            // What the configuration says now decides whether the objects may go.
            let after: BucketArgs = change.after_as()?;
            match drop_bucket(client, name, after.force_destroy).await {
                Ok(()) => create_bucket(client, name, &after).await,
                Err(error) => Err(error),
            }
        }
        Action::Delete => {
            // Removed from the configuration: the attributes it was last applied with decide.
            let before: BucketArgs = change.before_as()?;
            drop_bucket(client, name, before.force_destroy).await
        }
    };
    result.map_err(|error| s3_error(&context, error))
}

impl Engine for S3 {
    fn schema(&self) -> &'static EngineSchema {
        kip_schemas::engine("s3").expect("kip-schemas describes s3")
    }

    fn check_view(&self, node: &Desired) -> Result<(), EngineError> {
        let address = &node.address;
        let attributes = &node.attributes;
        match node.kind.as_str() {
            kip_core::plan::INSTANCE => {
                kip_core::engine::typed::<InstanceArgs>(address, attributes).map(drop)
            }
            BUCKET => kip_core::engine::typed::<BucketArgs>(address, attributes).map(drop),
            other => Err(EngineError::new(format!("s3 has no {other} objects"))),
        }
    }

    fn derive(&self, node: &mut Desired) {
        // Object lock turns versioning on, and S3 reports it on: declared off, it would be drift forever.
        if node.kind == BUCKET && node.attributes.get("object_lock") == Some(&json!(true)) {
            node.attributes.insert("versioning".into(), json!(true));
        }
    }

    fn provision<'a>(&'a self, ctx: &'a mut InstanceCtx) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let args: InstanceArgs = ctx.args()?;
            ensure_data_dir(ctx)
                .map_err(|error| s3_error("cannot create the data directory", error))?;
            config::assign_ports(ctx, &args)?;
            if args.access_key.is_none() {
                ctx.secrets.get_or_generate(ACCESS_KEY)?;
            }
            if args.secret_key.is_none() {
                ctx.secrets.get_or_generate(SECRET_KEY)?;
            }
            let internal_key = ctx.secrets.get_or_generate(INTERNAL_KEY)?;
            // Before every start, so a changed key takes effect with the restart; and before the first one, so
            // the S3 gateway never runs without its identity, nor the filer and volume server without theirs.
            let owner = ctx.run_as.as_ref().map(|run_as| (run_as.uid, run_as.gid));
            // The CA and certificate every listener but the S3 API's requires of a client: made before the first
            // start (no listener is ever open without them) and again whenever one is missing.
            let tls = TlsFiles::in_dir(&ctx.data_dir);
            tls.ensure(owner)
                .map_err(|error| s3_error("cannot make SeaweedFS's TLS certificates", error))?;
            let files = [
                (
                    IDENTITY_FILE,
                    config::identity(&access_key(ctx, &args), &secret_key(ctx, &args)),
                ),
                (SECURITY_FILE, config::security(&internal_key, &tls)),
            ];
            for (name, contents) in files {
                let path = ctx.data_dir.join(name);
                kip_core::fsutil::write_private_if_changed(&path, contents.as_bytes(), owner)
                    .map_err(io_error("write", &path))
                    .map_err(|error| s3_error("cannot write SeaweedFS's configuration", error))?;
            }
            Ok(())
        })
    }

    /// SeaweedFS listens on unix sockets in /tmp too, named after its gRPC ports. The supervisor removes the
    /// instance's own (`leaves`) before each start; another account's file at one of those paths would stop weed,
    /// and is not kip's to remove: that port is given up for a new one.
    fn port_unusable(&self, ctx: &InstanceCtx, name: &str, port: u16) -> bool {
        config::grpc_socket_taken(name, port, RunAs::uid_or_own(ctx.run_as.as_ref()))
    }

    fn spawn_specs(&self, ctx: &InstanceCtx) -> Result<Vec<SpawnSpec>, EngineError> {
        let toolchain = ctx.toolchain()?;
        let args: InstanceArgs = ctx.args()?;
        let port = config::s3_port(ctx, &args).ok_or_else(|| {
            EngineError::new(format!("{} has no S3 port yet", ctx.address)).hint(
                "this is a bug in kip's s3 provider: provision assigns the port before a start",
            )
        })?;
        let data_dir = ctx.data_dir.to_string_lossy().into_owned();
        Ok(vec![SpawnSpec {
            name: SpawnSpec::name_for(&ctx.address, None),
            instance: ctx.address.to_string(),
            program: toolchain.root.join("bin").join("weed"),
            args: config::command_line(ctx, &args)?,
            // Nothing of the caller's environment; HOME is the data directory, so SeaweedFS reads no
            // `~/.seaweedfs/*.toml` of the account that runs it. TMPDIR is the instance's log directory: weed
            // writes its own logs (`weed.*.log.INFO`, …) to the temp dir, which would otherwise be the machine's
            // /tmp, left behind by every instance and readable there.
            env: {
                let mut env = crate::shared::engine_environment();
                env.insert("HOME".to_owned(), data_dir);
                env.insert(
                    "TMPDIR".to_owned(),
                    ctx.log_dir.to_string_lossy().into_owned(),
                );
                env
            },
            cwd: ctx.data_dir.clone(),
            run_as: ctx.run_as.clone(),
            // The S3 port accepting connections says the process got that far; the ready step then waits for a
            // signed write.
            probe: Probe {
                kind: ProbeKind::Tcp {
                    host: "127.0.0.1".to_owned(),
                    port,
                },
                initial_delay: Duration::ZERO,
                interval: Duration::from_millis(10),
                timeout: Duration::from_secs(60),
                retries: None,
            },
            restart: RestartPolicy::OnFailure,
            max_restarts: None,
            restart_delay_ms: None,
            stop: StopSpec {
                command: None,
                signals: vec![("SIGTERM".to_owned(), 15_000)],
                // Its data goes right after: no final flush or snapshot to wait for.
                discard: Some(("SIGKILL".to_owned(), 0)),
            },
            log: ctx.log("weed"),
            after: Vec::new(),
            reload: None,
            job: false,
            // weed leaves most of its gRPC sockets behind: the supervisor removes them before each start and once
            // weed is gone, however it went.
            leaves: config::grpc_sockets(&ctx.ports),
        }])
    }

    fn ready<'a>(&'a self, ctx: &'a InstanceCtx) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let client = client(ctx)?;
            let bucket = format!(
                "{}{}",
                kip_schemas::S3_PROBE_BUCKET_PREFIX,
                kip_core::engine::random_hex(8)?
            );
            let master_port = ctx.ports.get("master").copied().ok_or_else(|| {
                EngineError::new(format!("{} has no master port in its state", ctx.address))
                    .hint("run `kip apply` again: provisioning assigns it")
            })?;
            let master = MasterClient::new(master_port, &TlsFiles::in_dir(&ctx.data_dir)).map_err(
                |error| s3_error("cannot set up the client of SeaweedFS's master", error),
            )?;
            let mut loading = config::volumes_on_disk(&ctx.data_dir);
            let started = Instant::now();
            loop {
                let error = match ready_once(&client, &master, &mut loading, &bucket).await {
                    Ok(()) => return Ok(()),
                    Err(error) => error,
                };
                if started.elapsed() > READY_TIMEOUT {
                    let args: InstanceArgs = ctx.args()?;
                    return Err(s3_error(
                        &format!(
                            "SeaweedFS was not ready within {} s (the ready probe: every volume on disk \
                             loaded, then create bucket {bucket}, put an object in it and read it back, delete \
                             both, at {})",
                            READY_TIMEOUT.as_secs(),
                            endpoint(ctx, &args).unwrap_or_default()
                        ),
                        error,
                    )
                    .hint(format!(
                        "see the engine's log, {}",
                        ctx.log("weed").display()
                    )));
                }
                tokio::time::sleep(READY_POLL).await;
            }
        })
    }

    fn restart_because(&self, change: &Change) -> Option<Vec<String>> {
        Some(
            change
                .changed_attributes()
                .into_iter()
                .filter(|attribute| RESTART_ATTRIBUTES.contains(&attribute.as_str()))
                .collect(),
        )
    }

    fn reconfigure<'a>(
        &'a self,
        _ctx: &'a mut InstanceCtx,
        _change: &'a Change,
    ) -> BoxFuture<'a, Result<Reconfigure, EngineError>> {
        Box::pin(async move {
            // The region only signs requests and is exported: SeaweedFS takes any. What the plan restarts for,
            // apply restarts ([`Change::restarts`]).
            Ok(Reconfigure::Done)
        })
    }

    fn refresh<'a>(
        &'a self,
        ctx: &'a InstanceCtx,
        managed: &'a [Managed<'a>],
    ) -> BoxFuture<'a, Result<Vec<Observed>, EngineError>> {
        Box::pin(async move {
            let buckets: Vec<&Managed<'_>> =
                managed.iter().filter(|node| node.kind == BUCKET).collect();
            if buckets.is_empty() {
                return Ok(Vec::new());
            }
            let client = client(ctx)?;
            // S3 has no request for many buckets' configuration: one round of requests, all at once.
            let mut requests = tokio::task::JoinSet::new();
            for (index, bucket) in buckets.iter().enumerate() {
                let name = bucket_name(bucket.address)?.to_owned();
                let client = client.clone();
                requests.spawn(async move { (index, client.bucket_state(&name).await) });
            }
            let mut states = vec![None; buckets.len()];
            while let Some(joined) = requests.join_next().await {
                let (index, state) = joined.map_err(|error| {
                    EngineError::with_source("a bucket refresh did not finish", error)
                })?;
                states[index] =
                    state.map_err(|error| s3_error("cannot read the buckets", error))?;
            }
            Ok(buckets
                .iter()
                .zip(states)
                .filter_map(|(bucket, state)| {
                    // `force_destroy` is kip's alone: the state's value stands in for it.
                    state.map(|state| Observed {
                        address: bucket.address.clone(),
                        attributes: Attributes::from([
                            ("versioning".to_owned(), json!(state.versioning)),
                            ("object_lock".to_owned(), json!(state.object_lock)),
                        ]),
                    })
                })
                .collect())
        })
    }

    fn converge<'a>(
        &'a self,
        ctx: &'a mut InstanceCtx,
        changes: &'a [Change],
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let buckets: Vec<&Change> = changes
                .iter()
                .filter(|change| change.kind == BUCKET && change.action != Action::Noop)
                .collect();
            if buckets.is_empty() {
                return Ok(());
            }
            let client = client(ctx)?;
            for change in buckets {
                converge_bucket(&client, change).await?;
            }
            Ok(())
        })
    }

    fn exports(&self, ctx: &InstanceCtx, object: Option<&Address>) -> Result<Exports, EngineError> {
        let args: InstanceArgs = ctx.args()?;
        let endpoint = endpoint(ctx, &args);
        let mut exports = Exports::new();
        match object {
            None => {
                exports.insert("endpoint".into(), json!(endpoint));
                exports.insert("url".into(), json!(endpoint));
                exports.insert("host".into(), json!("127.0.0.1"));
                exports.insert("port".into(), json!(config::s3_port(ctx, &args)));
                exports.insert("access_key".into(), json!(access_key(ctx, &args)));
                exports.insert("secret_key".into(), json!(secret_key(ctx, &args)));
                exports.insert("region".into(), json!(args.region));
            }
            Some(address) => {
                let name = bucket_name(address)?;
                exports.insert("name".into(), json!(name));
                exports.insert(
                    "url".into(),
                    json!(endpoint.map(|endpoint| format!("{endpoint}/{name}"))),
                );
            }
        }
        Ok(exports)
    }
}
