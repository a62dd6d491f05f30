//! What the commands that run engines share: the project's places, the engines registered by the providers, a
//! runtime, the supervisor, the checked configuration, and turning library errors into rendered ones (each with
//! its hint, and one block per failed instance).

use std::io::Write as _;
use std::time::Duration;

use kip_core::address::Address;
use kip_core::apply::ApplyError;
use kip_core::config::{Checked, Config};
use kip_core::engine::Engines;
use kip_core::graph::Graph;
use kip_core::project::Project;
use kip_core::supervise::DaemonSupervisors;

use super::{Context, VarArgs, load_and_check, print_diagnostics};
use crate::{ExitStatus, render::Style, with_hint};

pub(crate) fn engines() -> Engines {
    kip_providers::engines()
}

/// The project in the context's directory. A directory without kip.hcl is not a project: every command that works
/// on one says so, and writes nothing there (no `.kip/`).
pub(crate) fn project(context: &Context) -> anyhow::Result<Project> {
    kip_core::config::discover(&context.dir).map_err(|error| {
        let hint = error.hint().map(str::to_owned);
        hinted(error, hint)
    })?;
    let cache = cache_dir()?;
    let exe = std::env::current_exe()
        .map_err(|error| anyhow::anyhow!("cannot find the kip binary: {error}"))?;
    let dir = std::fs::canonicalize(&context.dir).unwrap_or_else(|_| context.dir.clone());
    Ok(Project::new(&dir, &cache, &exe))
}

/// kip's cache directory (`KIP_CACHE_DIR`, else the user's cache dir), or what to do when there is none.
pub(crate) fn cache_dir() -> anyhow::Result<std::path::PathBuf> {
    kip_core::resolve::default_cache_dir().ok_or_else(|| {
        with_hint(
            anyhow::anyhow!("cannot find a cache directory: HOME is not set"),
            "set KIP_CACHE_DIR to a directory kip may write to",
        )
    })
}

/// The project's supervisors, started as the `kip-supervisor` installed beside kip (the daemon alone, a third of
/// kip's resident code), or as `kip supervisor` when there is none.
pub(crate) fn supervisors(project: &Project) -> DaemonSupervisors {
    let daemon = project.kip_exe.with_file_name("kip-supervisor");
    let exe = if daemon.is_file() {
        daemon
    } else {
        project.kip_exe.clone()
    };
    DaemonSupervisors::new(project.kip_dir.clone(), exe)
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// An error with its hint attached for the renderer.
pub(crate) fn hinted(
    error: impl std::error::Error + Send + Sync + 'static,
    hint: Option<String>,
) -> anyhow::Error {
    match hint {
        Some(hint) => with_hint(error, hint),
        None => anyhow::Error::new(error),
    }
}

pub(crate) fn state_error(error: kip_core::state::StateError) -> anyhow::Error {
    let hint = error.hint();
    hinted(error, hint)
}

pub(crate) fn supervisor_error(error: kip_core::supervisor::SupervisorError) -> anyhow::Error {
    let hint = error.hint();
    hinted(error, hint)
}

/// Prints one `error:` block per failed instance and a line for what was skipped; other apply errors become the
/// command's error.
pub(crate) fn report_apply_error(
    context: &Context,
    error: ApplyError,
) -> anyhow::Result<ExitStatus> {
    let ApplyError::Failed { failures, skipped } = error else {
        let hint = error.hint();
        return Err(hinted(error, hint));
    };
    let style = Style::for_stderr(context.color);
    let mut stderr = std::io::stderr().lock();
    for failure in failures {
        let hint = failure.error.hint();
        let error = hinted(failure, hint);
        stderr.write_all(crate::render_error(&error, style).as_bytes())?;
    }
    if !skipped.is_empty() {
        let names: Vec<String> = skipped.iter().map(Address::to_string).collect();
        writeln!(
            stderr,
            "{} kip skipped what depends on it: {}",
            style.bold("note:"),
            names.join(", ")
        )?;
    }
    Ok(ExitStatus::Failure)
}

/// The checked configuration and graph, or `None` after printing why there are none.
pub(crate) fn checked_config(context: &Context, vars: &VarArgs) -> anyhow::Result<Option<Checked>> {
    let checked = load_and_check(context, vars)?;
    print_diagnostics(context, &checked)?;
    Ok(checked.config.is_some().then_some(checked))
}

/// The configuration and graph of a checked configuration.
pub(crate) fn config_and_graph(checked: &Checked) -> (&Config, &Graph) {
    (
        checked.config.as_ref().expect("checked"),
        checked
            .graph
            .as_ref()
            .expect("a checked configuration has a graph"),
    )
}

/// An address typed on the command line, with the parser's own error and hint.
pub(crate) fn parse_address(text: &str) -> anyhow::Result<Address> {
    Address::parse(text).map_err(|error| {
        let hint = error.hint().to_owned();
        with_hint(error, hint)
    })
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" | "" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        _ => Err(format!("{text:?} is not a duration like 30s or 500ms")),
    }
}
