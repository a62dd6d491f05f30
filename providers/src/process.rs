//! The `process` engine: the user's own program (a web server, a worker, a migration) under the supervisor.
//!
//! It has no version, no data and no objects: it is a spawn spec built from the block. It runs as the user who ran
//! kip (it is their program) unless `run_as` says otherwise, in kip's environment, then the variables of
//! `env_file`, then `env` (whose values may read other instances: `postgres.main.database.shop.url`, resolved when
//! the process starts). A relative program is found against `working_dir`, a bare name on `PATH`. `restart = "no"`
//! makes it a job: apply waits for it to exit 0, and a job that succeeded does not run again until its
//! configuration changes. A `ready` block is its readiness probe; without one a server is ready once it has run
//! for [`NO_PROBE_SETTLE`] without exiting (a job: once started, apply then waits for its exit). It stops with
//! `stop_command` when it has one, else `stop_signal`, and gets `stop_timeout` before SIGKILL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kip_core::address::Address;
use kip_core::engine::{
    BoxFuture, Engine, EngineError, Exports, InstanceCtx, Probe, ProbeKind, RestartPolicy,
    SpawnSpec, StopCommand, StopSpec,
};
use kip_schemas::EngineSchema;
use serde::Deserialize;
use serde_json::{Value as Json, json};

/// How long a server without a `ready` block must run without exiting to count as ready: a program that exits at
/// once (a typo in an argument, a missing file) then fails the apply with its output, instead of passing as started
/// and crash-looping behind it.
pub const NO_PROBE_SETTLE: Duration = Duration::from_millis(100);

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
    pub env_file: Option<String>,
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

    /// The path of `env_file`, relative to the project directory.
    fn env_file(&self, ctx: &InstanceCtx) -> Option<PathBuf> {
        self.env_file
            .as_ref()
            .map(|file| ctx.project_dir.join(file))
    }

    /// kip's environment, then the variables of `env_file`, then `env`.
    fn environment(&self, ctx: &InstanceCtx) -> Result<BTreeMap<String, String>, EngineError> {
        let mut environment: BTreeMap<String, String> = std::env::vars().collect();
        if let Some(path) = self.env_file(ctx) {
            environment.extend(read_env_file(&path)?);
        }
        for (name, value) in self.env.iter().flatten() {
            environment.insert(name.clone(), env_text(value));
        }
        Ok(environment)
    }

    fn probe(&self, working_dir: &Path) -> Result<Probe, EngineError> {
        let Some(ready) = &self.ready else {
            let job = self.restart == "no";
            return Ok(Probe {
                kind: ProbeKind::None,
                initial_delay: if job { Duration::ZERO } else { NO_PROBE_SETTLE },
                interval: Duration::from_millis(250),
                timeout: Duration::from_secs(60),
                retries: None,
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
            retries: ready.retries,
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

    /// The instances every `wait_for` of which says `condition = "started"`.
    fn needs_only_started(&self, attributes: &kip_core::plan::Attributes) -> Vec<Address> {
        let Some(Json::Object(wait_for)) = attributes.get("wait_for") else {
            return Vec::new();
        };
        let mut conditions: BTreeMap<Address, bool> = BTreeMap::new();
        for (label, block) in wait_for {
            let Ok(address) = Address::parse(label) else {
                continue;
            };
            let started = block.get("condition").and_then(Json::as_str) == Some("started");
            *conditions.entry(address.instance_address()).or_insert(true) &= started;
        }
        conditions
            .into_iter()
            .filter_map(|(address, only_started)| only_started.then_some(address))
            .collect()
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
            if let Some(path) = args.env_file(ctx) {
                read_env_file(&path)?;
            }
            Ok(())
        })
    }

    fn spawn_specs(&self, ctx: &InstanceCtx) -> Result<Vec<SpawnSpec>, EngineError> {
        let args: ProcessArgs = ctx.args()?;
        let working_dir = args.working_dir(ctx);
        let environment = args.environment(ctx)?;
        let program = args.program(&working_dir, &environment)?;
        let job = args.restart == "no";
        let stop_timeout = duration("stop_timeout", &args.stop_timeout)?.as_millis() as u64;
        let stop = match &args.stop_command {
            // The stop command replaces the signal; SIGKILL follows once stop_timeout ran out.
            Some(command) => StopSpec {
                command: Some(StopCommand {
                    command: command.clone(),
                    wait_ms: stop_timeout,
                }),
                signals: Vec::new(),
                // The user's program is stopped as it asks, also when kip deletes its instance's directories.
                discard: None,
            },
            None => StopSpec {
                command: None,
                signals: vec![(args.stop_signal.clone(), stop_timeout)],
                discard: None,
            },
        };
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
            // `0` is no limit: a budget no process spends.
            max_restarts: Some(if args.max_restarts == 0 {
                u32::MAX
            } else {
                args.max_restarts
            }),
            restart_delay_ms: Some(
                duration("restart_delay", &args.restart_delay)?.as_millis() as u64
            ),
            stop,
            log: ctx.log("process"),
            after: Vec::new(),
            reload: None,
            job,
            leaves: Vec::new(),
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

/// The variables of an env file: `NAME=value` lines, with `#` comments, blank lines, an optional `export ` in
/// front, and values optionally in single quotes (taken as written) or double quotes (with `\n`, `\t`, `\"` and
/// `\\` escapes). A line that is none of these is an error naming the file and the line.
pub fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        EngineError::with_source(
            format!("cannot read the env_file {}", path.display()),
            error,
        )
        .hint("`env_file` is relative to the directory of kip.hcl")
    })?;
    parse_env_file(&text).map_err(|(line, reason)| {
        EngineError::new(format!("{}:{line}: {reason}", path.display()))
            .hint("each line of an env_file is NAME=value, a # comment, or blank")
    })
}

/// [`read_env_file`] on a file's text; an error is the line number and what is wrong with it.
fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, (usize, String)> {
    let mut variables = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((name, value)) = line.split_once('=') else {
            return Err((number, format!("expected NAME=value, found {line:?}")));
        };
        let name = name.trim();
        let valid_name = name
            .chars()
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid_name {
            return Err((number, format!("{name:?} is not a variable name")));
        }
        let value = value.trim();
        let value = if let Some(rest) = value.strip_prefix('\'') {
            let Some((quoted, after)) = rest.split_once('\'') else {
                return Err((number, "the single quote is not closed".to_owned()));
            };
            check_after_quote(after).map_err(|reason| (number, reason))?;
            quoted.to_owned()
        } else if let Some(rest) = value.strip_prefix('"') {
            let mut unquoted = String::new();
            let mut chars = rest.chars();
            let mut closed = None;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = Some(chars.as_str());
                        break;
                    }
                    '\\' => match chars.next() {
                        Some('n') => unquoted.push('\n'),
                        Some('t') => unquoted.push('\t'),
                        Some(other) => unquoted.push(other),
                        None => break,
                    },
                    other => unquoted.push(other),
                }
            }
            let Some(after) = closed else {
                return Err((number, "the double quote is not closed".to_owned()));
            };
            check_after_quote(after).map_err(|reason| (number, reason))?;
            unquoted
        } else {
            // An unquoted value ends at a comment that follows a space.
            match value.find(" #") {
                Some(comment) => value[..comment].trim_end().to_owned(),
                None => value.to_owned(),
            }
        };
        variables.insert(name.to_owned(), value);
    }
    Ok(variables)
}

/// After a quoted value only a comment may follow.
fn check_after_quote(after: &str) -> Result<(), String> {
    let after = after.trim();
    if after.is_empty() || after.starts_with('#') {
        Ok(())
    } else {
        Err(format!("unexpected {after:?} after the quoted value"))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_env_file;

    #[test]
    fn env_files_read_names_values_quotes_and_comments() {
        let text = "# a comment\n\nPLAIN=value\nexport EXPORTED = spaced  \nSINGLE='a \\n b # not a comment'\n\
                    DOUBLE=\"line\\nnext \\\"q\\\"\" # comment\nEMPTY=\nTRAILING=x # comment\nURL=postgres://u:p@h/db?x=1\n";
        let variables = parse_env_file(text).unwrap();
        let get = |name: &str| variables.get(name).map(String::as_str);
        assert_eq!(get("PLAIN"), Some("value"));
        assert_eq!(get("EXPORTED"), Some("spaced"));
        assert_eq!(get("SINGLE"), Some("a \\n b # not a comment"));
        assert_eq!(get("DOUBLE"), Some("line\nnext \"q\""));
        assert_eq!(get("EMPTY"), Some(""));
        assert_eq!(get("TRAILING"), Some("x"));
        assert_eq!(get("URL"), Some("postgres://u:p@h/db?x=1"));
        assert_eq!(variables.len(), 7);
    }

    #[test]
    fn env_file_mistakes_name_their_line() {
        assert_eq!(parse_env_file("A=1\nno equals sign\n").unwrap_err().0, 2);
        assert_eq!(parse_env_file("1A=1\n").unwrap_err().0, 1);
        assert_eq!(parse_env_file("A='open\n").unwrap_err().0, 1);
        assert_eq!(parse_env_file("A=\"open\n").unwrap_err().0, 1);
        assert_eq!(parse_env_file("A='x' y\n").unwrap_err().0, 1);
        assert_eq!(parse_env_file("=x\n").unwrap_err().0, 1);
    }
}
