//! The `kip` binary: parses arguments, runs one command, renders its result, and exits with a typed code.
//!
//! This crate is the only one that prints or exits. Library errors arrive typed; they are rendered once here as
//! `error:`, `caused by:` and `hint:` lines.

mod commands;
mod logging;
mod progress;
mod render;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::render::{ColorChoice, Style};

/// mimalloc (2) rather than glibc's malloc: a plan of thousands of objects builds and drops many small maps, and with
/// glibc a third of a no-op plan of 1,000 roles went to `malloc`, `free` and page faults (62 → 33 ms; a plan of
/// 1,000 creates 20 → 11 ms; a process start costs the same).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// kip declares real engines (PostgreSQL, Valkey, MariaDB, NATS, S3, processes) in kip.hcl and makes them exist.
#[derive(Debug, Parser)]
#[command(
    name = "kip",
    version,
    about,
    propagate_version = true,
    max_term_width = 110
)]
pub struct Cli {
    /// Run as if kip was started in DIR.
    #[arg(short = 'C', long = "chdir", global = true, value_name = "DIR")]
    pub chdir: Option<PathBuf>,
    /// When to use colour: auto (on a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// More logging on stderr (-v info, -vv debug, -vvv trace); KIP_LOG=debug does the same.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

// The subcommands' arguments are built only for the one that runs (`defer`): building every subcommand's
// arguments and help took 0.3-0.7 ms of each `kip` command (BENCHMARKS.md, sixteenth stop). (A plain comment: clap
// would take a doc comment here as kip's own `about`.)
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Write a commented starter kip.hcl in the current directory.
    Init(commands::init::Args),
    /// Check the configuration: syntax, schemas, versions, references and cycles. Exits 1 on any error.
    #[command(visible_alias = "validate")]
    Lint(commands::lint::Args),
    /// Rewrite kip.hcl and *.kip.hcl files in the canonical format.
    Fmt(commands::fmt::Args),
    /// Print the schema of one engine, or of all of them.
    Schema(commands::schema::Args),
    /// Print the resource graph: instances, objects and what each depends on.
    Graph(commands::graph::Args),
    /// Work with the signed version registry.
    #[command(subcommand)]
    Registry(commands::registry::Command),
    /// Show what apply would change: `+` create, `~` update, `-/+` replace, `-` destroy.
    Plan(commands::plan::PlanArgs),
    /// Make the engines match the configuration.
    Apply(commands::apply::ApplyArgs),
    /// Converge structure (roles, databases, grants…) in running engines, without starting or restarting any.
    Sync(commands::apply::ApplyArgs),
    /// Stop every instance and delete its data.
    Destroy(commands::apply::DestroyArgs),
    /// Stop every engine of the project, keeping their data (`kip up` or `kip apply` starts them again).
    Down,
    /// List the engines' processes: state, pid, uptime, socket.
    Ps(commands::processes::PsArgs),
    /// Print the connection URL of an instance or object (postgres.main.database.shop).
    Url(commands::exports::UrlArgs),
    /// Print the engines' URLs as environment variables (DATABASE_URL, KIP_POSTGRES_MAIN_URL, …).
    Env(commands::exports::EnvArgs),
    /// Start every applied instance again after `kip down`, without planning or converging.
    Up(commands::processes::UpArgs),
    /// Print the last lines of an instance's log (postgres.main); -f keeps following it.
    Logs(commands::usage::LogsArgs),
    /// Run a command with the engines' environment (DATABASE_URL, …): kip run -- CMD ARGS…
    Run(commands::usage::RunArgs),
    /// Open the engine's own REPL (psql) on an instance or database.
    Connect(commands::usage::ConnectArgs),
    /// The per-project supervisor (started by apply).
    #[command(hide = true)]
    Supervisor(commands::processes::SupervisorArgs),
    /// Prepare the spare data directory of a template (started detached after a provisioning).
    #[command(hide = true)]
    PrepareSpare(commands::spare::Args),
    /// Make a spare account for the next new project (started detached after an apply took one, as root).
    #[command(hide = true)]
    PrepareAccount(commands::spare::AccountArgs),
    /// Resolve every declared engine and pin it in kip.lock.
    Lock(commands::lock::Args),
    /// Resolve every declared engine to a verified toolchain and print where it is.
    Resolve(commands::lock::ResolveArgs),
    /// Build a binary mirror: add engine archives and index them.
    #[command(subcommand)]
    Mirror(commands::mirror::Command),
    /// Manage kip's cache: `kip cache prune` removes the spare data directories prepared ahead of time.
    #[command(subcommand)]
    Cache(commands::cache::Command),
    /// Print a shell completion script.
    Completions(commands::completions::Args),
}

/// Exit codes are a contract (Terraform's): 0 success or no changes, 1 error, 2 changes present under
/// `--detailed-exitcode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    Failure,
    #[allow(dead_code)] // Plan's --detailed-exitcode arrives with plan.
    Changes,
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        ExitCode::from(match status {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Changes => 2,
        })
    }
}

/// Wraps `error` with a hint shown after it.
pub fn with_hint(error: impl Into<anyhow::Error>, hint: impl Into<String>) -> anyhow::Error {
    error.into().context(HintMarker(hint.into()))
}

#[derive(Debug)]
struct HintMarker(String);

impl std::fmt::Display for HintMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn main() -> ExitCode {
    // Small work runs faster without transparent huge pages (see `kip_core::huge_pages`): held back before the
    // first allocation, which would otherwise fault in the allocator's first huge page (a fifth of `kip --version`'s
    // CPU). The supervisor, which this binary also is, takes back what it was handed or started with.
    kip_core::huge_pages::hold_back();
    let cli = Cli::parse();
    let stderr_style = Style::for_stderr(cli.color);
    logging::init(cli.verbose, stderr_style.color);
    let result = run(cli);
    // Files a command wrote whose fsyncs run on their own threads (`kip_core::fsutil::sync_soon`) are durable before
    // it exits, also where no durable state write waited for them.
    let settled = kip_core::fsutil::settle();
    let result = result.and_then(|status| settled.map(|()| status).map_err(Into::into));
    commands::spare::launch_wanted();
    match result {
        Ok(status) => status.into(),
        Err(error) => {
            if is_broken_pipe(&error) {
                return ExitCode::SUCCESS;
            }
            let _ = std::io::stderr().write_all(render_error(&error, stderr_style).as_bytes());
            ExitStatus::Failure.into()
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitStatus> {
    let dir = match &cli.chdir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()
            .map_err(|error| anyhow::anyhow!("cannot read the current directory: {error}"))?,
    };
    let context = commands::Context {
        dir,
        color: cli.color,
    };
    match cli.command {
        Command::Init(args) => commands::init::run(&context, args),
        Command::Lint(args) => commands::lint::run(&context, args),
        Command::Fmt(args) => commands::fmt::run(&context, args),
        Command::Schema(args) => commands::schema::run(&context, args),
        Command::Graph(args) => commands::graph::run(&context, args),
        Command::Registry(command) => commands::registry::run(&context, command),
        Command::Plan(args) => commands::plan::plan(&context, args),
        Command::Apply(args) => commands::apply::apply(&context, args),
        Command::Sync(mut args) => {
            args.sync_only = true;
            commands::apply::apply(&context, args)
        }
        Command::Destroy(args) => commands::apply::destroy(&context, args),
        Command::Down => commands::processes::down(&context),
        Command::Ps(args) => commands::processes::ps(&context, args),
        Command::Url(args) => commands::exports::url(&context, args),
        Command::Env(args) => commands::exports::env(&context, args),
        Command::Up(args) => commands::processes::up(&context, args),
        Command::Logs(args) => commands::usage::logs(&context, args),
        Command::Run(args) => commands::usage::run(&context, args),
        Command::Connect(args) => commands::usage::connect(&context, args),
        Command::Supervisor(args) => commands::processes::supervisor(args),
        Command::PrepareSpare(args) => commands::spare::run(args),
        Command::PrepareAccount(args) => commands::spare::prepare_account(args),
        Command::Lock(args) => commands::lock::run(&context, args),
        Command::Resolve(args) => commands::lock::run_resolve(&context, args),
        Command::Mirror(command) => commands::mirror::run(&context, command),
        Command::Cache(command) => commands::cache::run(&context, command),
        Command::Completions(args) => commands::completions::run(args),
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `error: …`, then one `caused by: …` per source, then `hint: …` lines.
pub(crate) fn render_error(error: &anyhow::Error, style: Style) -> String {
    // A hint is attached as context; anyhow finds it at any depth of the chain.
    let hint = error
        .downcast_ref::<HintMarker>()
        .map(|hint| hint.0.clone());
    let mut messages: Vec<String> = error
        .chain()
        .map(|cause| cause.to_string())
        .filter(|message| Some(message) != hint.as_ref())
        .collect();
    messages.dedup();
    let mut out = String::new();
    let mut causes = messages.into_iter();
    if let Some(first) = causes.next() {
        out.push_str(&format!("{}: {first}\n", style.red("error")));
    }
    for cause in causes {
        out.push_str(&format!("  {} {cause}\n", style.bold("caused by:")));
    }
    if let Some(hint) = hint {
        out.push_str(&format!("  {} {hint}\n", style.green("hint:")));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }

    /// With the subcommands' arguments built late (`defer`), the doc comment of an `Args` struct flattened into
    /// several of them would become their description, the same for all; each keeps its own.
    #[test]
    fn every_subcommand_keeps_its_own_description() {
        let mut command = <super::Cli as clap::CommandFactory>::command();
        command.build();
        let mut seen = std::collections::BTreeMap::new();
        for subcommand in command.get_subcommands() {
            let name = subcommand.get_name();
            let about = subcommand
                .get_about()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(!about.is_empty(), "`kip {name}` has no description");
            if let Some(other) = seen.insert(about.clone(), name) {
                panic!("`kip {other}` and `kip {name}` share the description {about:?}");
            }
        }
        assert!(seen.len() > 20, "{seen:?}");
    }
}
