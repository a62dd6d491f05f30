//! One module per command. Each takes its clap arguments and the shared [`Context`], does its work through the
//! library crates, prints its result, and returns the exit status.

pub mod apply;
pub mod cache;
pub mod completions;
pub mod exports;
pub mod fmt;
pub mod graph;
pub mod init;
pub mod lint;
pub mod lock;
pub mod mirror;
pub mod plan;
pub mod processes;
pub mod project;
pub mod registry;
pub mod schema;
pub mod spare;
pub mod usage;

use std::io::Write as _;
use std::path::PathBuf;

use kip_core::config::{CheckOptions, Checked, check};

use crate::render::{self, ColorChoice, Style};
use crate::with_hint;

/// What every command may need: where the project is and how to print.
#[derive(Debug)]
pub struct Context {
    pub dir: PathBuf,
    pub color: ColorChoice,
}

// `--var name=value`, repeatable; shared by every command that reads the configuration. A plain comment, not a doc
// comment: clap takes an `Args` struct's doc comment as the `about` of the command it is flattened into, and with
// the subcommands' arguments built only when one is used (`defer` on `Command`) it would replace theirs.
#[derive(Debug, Clone, clap::Args)]
pub struct VarArgs {
    /// Set an input variable: --var name=value (repeatable). KIP_VAR_name=value in the environment does the same
    /// with lower precedence.
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
}

fn parse_var(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected NAME=VALUE, got {raw:?}")),
    }
}

/// The variables set in the environment as KIP_VAR_name.
fn env_vars() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(key, value)| {
            let key = key.into_string().ok()?;
            let name = key.strip_prefix("KIP_VAR_")?.to_owned();
            Some((name, value.into_string().ok()?))
        })
        .collect();
    vars.sort();
    vars
}

/// The directory that holds kip's own data for this user: the installed registry and its trust floor.
pub fn data_dir() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("KIP_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(data).join("kip"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/kip")),
        None => Err(with_hint(
            anyhow::anyhow!("cannot find a data directory: HOME is not set"),
            "set KIP_HOME to a directory kip may write to",
        )),
    }
}

/// The registry kip trusts now: the newest verified one of the embedded and the installed registry.
pub fn active_registry() -> anyhow::Result<kip_registry::ActiveRegistry> {
    let store = kip_registry::TrustStore::new(data_dir()?.join("registry"));
    store
        .active(time::OffsetDateTime::now_utc())
        .map_err(registry_error)
}

pub fn registry_error(error: kip_registry::RegistryError) -> anyhow::Error {
    match error.hint() {
        Some(hint) => with_hint(error, hint),
        None => error.into(),
    }
}

/// Loads and checks the configuration; prints its diagnostics (all of them) to stderr.
pub fn load_and_check(context: &Context, vars: &VarArgs) -> anyhow::Result<Checked> {
    let active = active_registry()?;
    let options = CheckOptions {
        registry: &active.registry,
        vars: vars.vars.clone(),
        env_vars: env_vars(),
        extra_engines: Vec::new(),
        runnable: Some(kip_providers::engines().names().collect()),
    };
    let checked = check(&context.dir, &options).map_err(|error| match error.hint() {
        Some(hint) => with_hint(error, hint),
        None => error.into(),
    })?;
    Ok(checked)
}

/// Prints diagnostics for people on stderr, followed by a one-line count when there are errors.
pub fn print_diagnostics(context: &Context, checked: &Checked) -> anyhow::Result<()> {
    let style = Style::for_stderr(context.color);
    let mut stderr = std::io::stderr().lock();
    for diagnostic in checked.diagnostics.iter() {
        writeln!(
            stderr,
            "{}",
            render::diagnostic(diagnostic, &checked.sources, style)
        )?;
    }
    Ok(())
}
