//! The `process` engine: the user's own program (a web server, a worker, a migration) under the supervisor.
//!
//! It has no version, no data and no objects: it is a spawn spec built from the block. It runs as the user who ran
//! kip (it is their program) unless `run_as` says otherwise, in kip's environment plus `env` (whose values may
//! read other instances: `postgres.main.database.shop.url`, resolved when the process starts). A relative program
//! is found against `working_dir`, a bare name on `PATH`. `restart = "no"` makes it a job: apply waits for it to
//! exit 0, and a job that succeeded does not run again until its configuration changes. A `ready` block is its
//! readiness probe; without one it is ready once started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kip_core::address::Address;
use kip_core::engine::{
    BoxFuture, Engine, EngineError, Exports, InstanceCtx, Probe, ProbeKind, RestartPolicy,
    SpawnSpec, StopSpec,
};
use kip_schemas::EngineSchema;
use serde::Deserialize;
use serde_json::{Value as Json, json};

/// The `process` engine.
#[derive(Debug, Default)]
pub struct Process;

/// `process "name" { … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessArgs {
    #[serde(default)]
    pub run_as: Option<String>,
    pub command: Vec<String>,
    pub working_dir: Option<String>,
    pub env: Option<BTreeMap<String, Json>>,
    pub port: Option<u16>,
    pub restart: String,
    pub max_restarts: u32,
    pub restart_delay: String,
    pub stop_signal: String,
    pub stop_command: Option<Vec<String>>,
    pub stop_timeout: String,
    pub ready: Option<ReadyArgs>,
    /// Conditions on other nodes, by their address; the graph orders the start (see the module docs).
    pub wait_for: BTreeMap<String, WaitForArgs>,
}

/// `ready { … }`: exactly one probe kind, and its timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadyArgs {
    pub http: Option<String>,
    pub tcp: Option<String>,
    pub exec: Option<Vec<String>>,
    pub log_line: Option<String>,
    pub socket: Option<String>,
    pub initial_delay: String,
    pub interval: String,
    pub timeout: String,
    pub retries: Option<u32>,
}

/// `wait_for "ADDRESS" { … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitForArgs {
    pub condition: String,
}

fn duration(name: &str, text: &str) -> Result<Duration, EngineError> {
    kip_schemas::parse_duration(text)
        .ok_or_else(|| EngineError::new(format!("`{name}` = {text:?} is not a duration")))
}

/// The text of an `env` value: numbers and bools as written.
fn env_text(value: &Json) -> String {
    match value {
        Json::String(text) => text.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

impl ProcessArgs {
    fn working_dir(&self, ctx: &InstanceCtx) -> PathBuf {
        match &self.working_dir {
            Some(dir) => ctx.project_dir.join(dir),
            None => ctx.project_dir.clone(),
        }
    }

    /// kip's environment, then `env`.
    fn environment(&self) -> BTreeMap<String, String> {
        let mut environment: BTreeMap<String, String> = std::env::vars().collect();
        for (name, value) in self.env.iter().flatten() {
            environment.insert(name.clone(), env_text(value));
        }
        environment
    }

    fn probe(&self, working_dir: &Path) -> Result<Probe, EngineError> {
        let Some(ready) = &self.ready else {
            return Ok(Probe {
                kind: ProbeKind::None,
                initial_delay: Duration::ZERO,
                interval: Duration::from_millis(250),
                timeout: Duration::from_secs(60),
            });
        };
        let kind = if let Some(url) = &ready.http {
            ProbeKind::Http { url: url.clone() }
        } else if let Some(address) = &ready.tcp {
            let (host, port) = address.rsplit_once(':').ok_or_else(|| {
                EngineError::new(format!("`ready.tcp` = {address:?} is not host:port"))
            })?;
            let port = port.parse().map_err(|_| {
                EngineError::new(format!("`ready.tcp` = {address:?} has no valid port"))
            })?;
            ProbeKind::Tcp {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port,
            }
        } else if let Some(command) = &ready.exec {
            ProbeKind::Exec {
                command: command.clone(),
            }
        } else if let Some(pattern) = &ready.log_line {
            ProbeKind::LogLine {
                pattern: pattern.clone(),
            }
        } else if let Some(path) = &ready.socket {
            ProbeKind::Socket {
                path: working_dir.join(path),
            }
        } else {
            ProbeKind::None
        };
        Ok(Probe {
            kind,
            initial_delay: duration("ready.initial_delay", &ready.initial_delay)?,
            interval: duration("ready.interval", &ready.interval)?,
            timeout: duration("ready.timeout", &ready.timeout)?,
        })
    }

    /// The program: relative to `working_dir` when it has a `/`, else found on `PATH` (`env`'s, else kip's).
    fn program(
        &self,
        working_dir: &Path,
        environment: &BTreeMap<String, String>,
    ) -> Result<PathBuf, EngineError> {
        let Some(program) = self.command.first() else {
            return Err(
                EngineError::new("`command` is empty").hint("give the program and its arguments")
            );
        };
        if program.contains('/') {
            return Ok(working_dir.join(program));
        }
        let path = environment.get("PATH").cloned().unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| working_dir.join(dir).join(program))
            .find(|candidate| {
                std::fs::metadata(candidate).is_ok_and(|metadata| {
                    metadata.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o111 != 0
                })
            })
            .ok_or_else(|| {
                EngineError::new(format!("cannot find the program {program:?} on PATH"))
                    .hint("give its path (./bin/web), relative to working_dir, or add its directory to PATH")
            })
    }
}

impl Engine for Process {
    fn schema(&self) -> &'static EngineSchema {
        kip_schemas::engine("process").expect("kip-schemas describes process")
    }

    fn runs_as_caller(&self) -> bool {
        true
    }

    fn check_view(&self, node: &kip_core::plan::Desired) -> Result<(), EngineError> {
        kip_core::engine::typed::<ProcessArgs>(&node.address, &node.attributes).map(drop)
    }

    fn provision<'a>(&'a self, ctx: &'a mut InstanceCtx) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let args: ProcessArgs = ctx.args()?;
            let working_dir = args.working_dir(ctx);
            if !working_dir.is_dir() {
                return Err(EngineError::new(format!(
                    "the working directory {} does not exist",
                    working_dir.display()
                ))
                .hint("`working_dir` is relative to the directory of kip.hcl"));
            }
            Ok(())
        })
    }

    fn ports(&self, ctx: &InstanceCtx) -> Vec<u16> {
        ctx.args::<ProcessArgs>()
            .ok()
            .and_then(|args| args.port)
            .into_iter()
            .collect()
    }

    fn spawn_specs(&self, ctx: &InstanceCtx) -> Result<Vec<SpawnSpec>, EngineError> {
        let args: ProcessArgs = ctx.args()?;
        let working_dir = args.working_dir(ctx);
        let environment = args.environment();
        let program = args.program(&working_dir, &environment)?;
        let job = args.restart == "no";
        Ok(vec![SpawnSpec {
            name: SpawnSpec::name_for(&ctx.address, None),
            instance: ctx.address.to_string(),
            program,
            args: args.command[1..].to_vec(),
            env: environment,
            cwd: working_dir.clone(),
            run_as: ctx.run_as.clone(),
            probe: args.probe(&working_dir)?,
            restart: match args.restart.as_str() {
                "always" => RestartPolicy::Always,
                "no" => RestartPolicy::No,
                _ => RestartPolicy::OnFailure,
            },
            max_restarts: (args.max_restarts > 0).then_some(args.max_restarts),
            stop: StopSpec {
                signals: vec![(
                    args.stop_signal.clone(),
                    duration("stop_timeout", &args.stop_timeout)?.as_millis() as u64,
                )],
            },
            log: ctx.log("process"),
            after: Vec::new(),
            reload: None,
            job,
        }])
    }

    fn exports(
        &self,
        ctx: &InstanceCtx,
        _object: Option<&Address>,
    ) -> Result<Exports, EngineError> {
        let args: ProcessArgs = ctx.args()?;
        let mut exports = Exports::new();
        exports.insert("host".into(), json!("127.0.0.1"));
        if let Some(port) = args.port {
            exports.insert("url".into(), json!(format!("http://127.0.0.1:{port}")));
            exports.insert("port".into(), json!(port));
        } else {
            exports.insert("url".into(), Json::Null);
            exports.insert("port".into(), Json::Null);
        }
        Ok(exports)
    }
}
