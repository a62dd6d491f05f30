//! The commands for using engines that kip already applied: `logs` (an instance's log, optionally followed),
//! `run` (a command with the engines' environment) and `connect` (the engine's own REPL).
//!
//! `run` and `connect` hand the terminal to a child process and exit with its code; kip ignores SIGINT and SIGQUIT
//! while the child runs, because the terminal sends them to the child as well and the child decides what they
//! mean (psql cancels a query on Ctrl-C).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kip_core::address::Address;

use kip_core::project::Project;
use kip_core::state::State;

use super::exports::{env_variables, exports_of};
use super::project::{engines, parse_address, project, runtime, state_error};
use super::{Context, VarArgs};
use crate::{ExitStatus, with_hint};

/// How often `kip logs --follow` looks for new lines.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);
/// How much of a log's end is read at a time when looking for its last lines.
const TAIL_CHUNK: u64 = 64 * 1024;

/// `error: {what}` plus a did-you-mean hint over `known` and the list of them.
fn unknown_address<'a>(
    what: String,
    address: &str,
    known: impl IntoIterator<Item = &'a str> + Clone,
) -> anyhow::Error {
    let listed: Vec<&str> = known.clone().into_iter().collect();
    let hint = match kip_schemas::did_you_mean(address, known) {
        Some(suggestion) => format!("did you mean `{suggestion}`?"),
        None => "`kip graph` lists the addresses; `kip apply` makes them run".to_owned(),
    };
    if listed.is_empty() {
        return with_hint(anyhow::anyhow!("{what}; nothing is applied yet"), hint);
    }
    with_hint(
        anyhow::anyhow!("{what}; known: {}", listed.join(", ")),
        hint,
    )
}

// ---------------------------------------------------------------------------------------------------------------
// kip logs

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// An instance address: postgres.main (an object address shows its instance's log).
    pub address: String,
    /// Keep printing lines as they are appended, until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// How many of the last lines to print first.
    #[arg(short = 'n', long, default_value_t = 100, value_name = "N")]
    pub lines: usize,
}

/// The log of every process the supervisor runs, and of every instance in the state (for when no supervisor
/// runs, after `kip down`), by name.
fn known_logs(project: &Project) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut logs: BTreeMap<String, PathBuf> = BTreeMap::new();
    // A supervisor that is stuck or gone only costs the live names: the state still knows every instance's log.
    let processes = runtime()?
        .block_on(async {
            match super::project::supervisors(project).adopt().await? {
                Some(mut client) => client.status().await,
                None => Ok(Vec::new()),
            }
        })
        .unwrap_or_default();
    for process in processes {
        logs.insert(process.name, process.log);
    }
    let state = State::read(&project.kip_dir).map_err(state_error)?;
    for (address, saved) in state.instances {
        // The log of the instance's main process, named like the instance.
        if let Ok(entries) = std::fs::read_dir(&saved.log_dir) {
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|e| e == "log"))
                .collect();
            files.sort();
            if let Some(first) = files.into_iter().next() {
                logs.entry(address.to_string()).or_insert(first);
            }
        }
    }
    Ok(logs)
}

pub fn logs(context: &Context, args: LogsArgs) -> anyhow::Result<ExitStatus> {
    let project = project(context)?;
    let logs = known_logs(&project)?;
    // An object address (postgres.main.database.shop) has no log of its own: its instance's log is meant.
    let path = logs.get(&args.address).or_else(|| {
        let instance = Address::parse(&args.address)
            .ok()?
            .instance_address()
            .to_string();
        logs.get(&instance)
    });
    let Some(path) = path else {
        return Err(unknown_address(
            format!("{} has no log", args.address),
            &args.address,
            logs.keys().map(String::as_str),
        ));
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(with_hint(
                anyhow::anyhow!(
                    "{} has no log yet: {} does not exist",
                    args.address,
                    path.display()
                ),
                "the log appears when the instance first starts: run `kip apply` or `kip up`",
            ));
        }
        Err(error) => {
            return Err(
                anyhow::Error::new(error).context(format!("cannot read {}", path.display()))
            );
        }
    };
    let read_error = |error: std::io::Error| {
        anyhow::Error::new(error).context(format!("cannot read {}", path.display()))
    };
    let (tail, mut offset) = last_lines(&mut file, args.lines).map_err(read_error)?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&tail)?;
    stdout.flush()?;
    if !args.follow {
        return Ok(ExitStatus::Success);
    }
    loop {
        std::thread::sleep(FOLLOW_INTERVAL);
        let length = match std::fs::metadata(path) {
            Ok(metadata) => {
                // A log replaced by another file (rotated, or the instance destroyed and applied again) is
                // followed from its start.
                let replaced = file.metadata().map_or(true, |open| {
                    std::os::unix::fs::MetadataExt::ino(&open)
                        != std::os::unix::fs::MetadataExt::ino(&metadata)
                });
                if replaced {
                    file = File::open(path).map_err(read_error)?;
                    offset = 0;
                }
                metadata.len()
            }
            // Gone for now (the instance is being destroyed): keep waiting for it to come back.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(read_error(error)),
        };
        if length < offset {
            writeln!(
                std::io::stderr().lock(),
                "kip: {} was truncated; following it from its start",
                path.display()
            )?;
            offset = 0;
        }
        if length > offset {
            file.seek(SeekFrom::Start(offset)).map_err(read_error)?;
            let mut chunk = Vec::new();
            (&mut file)
                .take(length - offset)
                .read_to_end(&mut chunk)
                .map_err(read_error)?;
            offset += chunk.len() as u64;
            stdout.write_all(&chunk)?;
            stdout.flush()?;
        }
    }
}

/// The bytes of the last `count` lines of `file` (the last one may lack its newline), and the file's length: the
/// offset that following starts from. Reads the file backwards in chunks, so a large log costs only its end.
fn last_lines(file: &mut File, count: usize) -> std::io::Result<(Vec<u8>, u64)> {
    let length = file.metadata()?.len();
    if count == 0 {
        return Ok((Vec::new(), length));
    }
    let mut start = length;
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let from = start.saturating_sub(TAIL_CHUNK);
        let mut chunk = vec![0; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        start = from;
        // The newline that ends the last line does not start a line.
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        let mut seen = 0;
        for (index, byte) in body.iter().enumerate().rev() {
            if *byte == b'\n' {
                seen += 1;
                if seen == count {
                    return Ok((tail[index + 1..].to_vec(), length));
                }
            }
        }
        if start == 0 {
            return Ok((tail, length));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// kip run and kip connect

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub vars: VarArgs,
    /// The command and its arguments: kip run -- CMD ARGS…
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD",
        value_parser = clap::value_parser!(OsString)
    )]
    pub command: Vec<OsString>,
}

pub fn run(context: &Context, args: RunArgs) -> anyhow::Result<ExitStatus> {
    let Some((program, arguments)) = args.command.split_first() else {
        return Err(with_hint(
            anyhow::anyhow!("kip run needs a command to run"),
            "kip run -- CMD ARGS…, for example: kip run -- sh -c 'echo $DATABASE_URL'",
        ));
    };
    let project = project(context)?;
    let state = State::read(&project.kip_dir).map_err(state_error)?;
    let variables = env_variables(&project, &state)?;
    if variables.is_empty() {
        writeln!(
            std::io::stderr().lock(),
            "warning: no instance is applied, so {} runs without DATABASE_URL; run `kip apply` first",
            Path::new(program).display()
        )?;
    }
    let mut command = std::process::Command::new(program);
    command.args(arguments).envs(&variables);
    run_child(command, &|error| spawn_error(program, error))
}

fn spawn_error(program: &std::ffi::OsStr, error: std::io::Error) -> anyhow::Error {
    let shown = Path::new(program).display().to_string();
    match error.kind() {
        std::io::ErrorKind::NotFound => with_hint(
            anyhow::anyhow!("cannot run {shown}: no such command"),
            "check its spelling, or give its path; PATH is searched for a bare name",
        ),
        std::io::ErrorKind::PermissionDenied => with_hint(
            anyhow::Error::new(error).context(format!("cannot run {shown}")),
            "is it executable? (chmod +x)",
        ),
        _ => anyhow::Error::new(error).context(format!("cannot run {shown}")),
    }
}

/// Runs `command` with kip's stdio and returns its exit status: its code, or 128 + the signal that ended it.
fn run_child(
    mut command: std::process::Command,
    on_spawn_error: &dyn Fn(std::io::Error) -> anyhow::Error,
) -> anyhow::Result<ExitStatus> {
    // The program is the user's: it gets the huge-page setting kip was started with (kip only waits from here).
    kip_core::huge_pages::restore();
    let runtime = runtime()?;
    let status = runtime.block_on(async {
        // Catching them replaces their default action (ending kip) for as long as kip lives; the child gets the
        // default back when it execs.
        use tokio::signal::unix::{SignalKind, signal};
        let _interrupt = signal(SignalKind::interrupt())?;
        let _quit = signal(SignalKind::quit())?;
        command
            .stdin(std::process::Stdio::inherit())
            .stdout(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::inherit());
        let mut child = tokio::process::Command::from(command)
            .spawn()
            .map_err(on_spawn_error)?;
        anyhow::Ok(child.wait().await?)
    })?;
    let code = match status.code() {
        Some(code) => code,
        None => 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0),
    };
    Ok(passthrough(code))
}

/// A child's exit code as kip's own. [`ExitStatus`] holds kip's contract (0, 1, 2); any other code of the child
/// ends kip here, with that code.
// TODO: an `ExitStatus::Child(u8)` variant in main.rs would keep this in the typed contract.
fn passthrough(code: i32) -> ExitStatus {
    match code {
        0 => ExitStatus::Success,
        1 => ExitStatus::Failure,
        2 => ExitStatus::Changes,
        code => {
            let _ = std::io::stdout().flush();
            std::process::exit(code)
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// An instance or object address: postgres.main, postgres.main.database.shop, valkey.cache.user.app.
    pub address: String,
    /// More arguments for the REPL, after `--`: kip connect postgres.main -- -c 'select 1'.
    #[arg(last = true, value_parser = clap::value_parser!(OsString))]
    pub extra: Vec<OsString>,
    #[command(flatten)]
    pub vars: VarArgs,
}

/// An engine's own REPL: the program, another that speaks the same protocol, and the package that provides one
/// on Debian and Ubuntu.
struct Repl {
    program: &'static str,
    alternative: Option<&'static str>,
    package: &'static str,
}

fn repl(engine: &str) -> Option<Repl> {
    match engine {
        "postgres" => Some(Repl {
            program: "psql",
            alternative: None,
            package: "postgresql-client",
        }),
        // valkey-cli ships with some Valkey builds; redis-cli speaks the same protocol.
        "valkey" => Some(Repl {
            program: "valkey-cli",
            alternative: Some("redis-cli"),
            package: "redis-tools",
        }),
        _ => None,
    }
}

/// `program` in the first of `dirs` that has it as an executable file.
fn find_program(program: &str, dirs: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    dirs.into_iter().map(|dir| dir.join(program)).find(|path| {
        std::fs::metadata(path).is_ok_and(|metadata| {
            metadata.is_file()
                && std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o111 != 0
        })
    })
}

pub fn connect(context: &Context, args: ConnectArgs) -> anyhow::Result<ExitStatus> {
    let address = parse_address(&args.address)?;
    let project = project(context)?;
    let state = State::read(&project.kip_dir).map_err(state_error)?;
    let instance = address.instance_address();
    let Some(saved) = state.instances.get(&instance) else {
        let known: Vec<String> = state.instances.keys().map(ToString::to_string).collect();
        return Err(unknown_address(
            format!("{address} is not an applied instance or database"),
            &args.address,
            known.iter().map(String::as_str),
        ));
    };
    let engine_name = saved.engine.clone();
    let Some(repl) = repl(&engine_name) else {
        return Err(anyhow::anyhow!(
            "kip connect does not know the REPL of {engine_name} instances yet"
        ));
    };
    let exports = exports_of(&project, &engines(), &state, &address)?;
    let text = |name: &str| {
        exports
            .get(name)
            .map(|value| match value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    let path_dirs = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let toolchain_bin = saved
        .toolchain
        .as_ref()
        .map(|root| root.join("bin"))
        .unwrap_or_default();
    let dirs: Vec<PathBuf> = std::iter::once(toolchain_bin.clone())
        .chain(path_dirs)
        .collect();
    let found = find_program(repl.program, dirs.iter().cloned()).or_else(|| {
        repl.alternative
            .and_then(|alternative| find_program(alternative, dirs.iter().cloned()))
    });
    let Some(program) = found else {
        return Err(with_hint(
            anyhow::anyhow!(
                "{} is not in the toolchain of {instance} ({}) nor on PATH",
                repl.program,
                toolchain_bin.display()
            ),
            format!(
                "kip's embedded {engine_name} builds carry the server only: install the {} package \
                 (apt-get install {}), or put {} on PATH",
                repl.package, repl.package, repl.program
            ),
        ));
    };
    // The password travels in the client's environment, never on its command line (where `ps` shows it).
    let mut command = std::process::Command::new(&program);
    if engine_name == "valkey" {
        // The socket or port are the instance's; the user (and password) the address's.
        let server = exports_of(&project, &engines(), &state, &instance)?;
        match server.get("port").and_then(serde_json::Value::as_u64) {
            Some(port) => command.args(["-h", "127.0.0.1", "-p", &port.to_string()]),
            None => command.arg("-s").arg(
                server
                    .get("socket")
                    .and_then(|s| s.as_str())
                    .unwrap_or_default(),
            ),
        };
        let user = text("name");
        command
            .arg("--user")
            .arg(if user.is_empty() { "default" } else { &user })
            .args(&args.extra)
            .env("REDISCLI_AUTH", text("password"));
        return run_child(command, &|error| spawn_error(program.as_os_str(), error));
    }
    let url = text("url");
    let (without_password, password) = split_password(&url);
    command
        .arg(without_password)
        .args(&args.extra)
        .env("PGPASSWORD", password);
    run_child(command, &|error| spawn_error(program.as_os_str(), error))
}

/// A libpq URL without its password, and the password (percent-decoded).
fn split_password(url: &str) -> (String, String) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), String::new());
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return (url.to_owned(), String::new());
    };
    let Some((user, password)) = userinfo.split_once(':') else {
        return (url.to_owned(), String::new());
    };
    let password = percent_encoding::percent_decode_str(password)
        .decode_utf8_lossy()
        .into_owned();
    (format!("{scheme}://{user}@{host}"), password)
}
