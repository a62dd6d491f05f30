//! `kip lock`: resolve every declared engine and pin it in kip.lock; `--upgrade` moves pins, `--check` only
//! says whether kip.lock is complete and current (the same check as `--locked` elsewhere, for CI).
//!
//! `kip resolve` is the resolve step that plan and apply run first, on its own: it prints each toolchain.

use std::io::Write as _;

use kip_core::config::Checked;
use kip_core::lock::{LOCK_FILE, LockFile};
use kip_core::resolve::{self, Policy, ResolveSettings, Resolver, ToolchainSource};

use super::{Context, VarArgs, load_and_check, print_diagnostics};
use crate::progress::Bar;
use crate::{ExitStatus, with_hint};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ignore existing pins and take the newest matching versions: of ENGINE only, or of every engine.
    #[arg(long, value_name = "ENGINE", num_args = 0..=1, default_missing_value = "")]
    pub upgrade: Option<String>,
    /// Change nothing: exit 1 when kip.lock lacks a pin the configuration needs or holds one it does not.
    #[arg(long, conflicts_with = "upgrade")]
    pub check: bool,
    #[command(flatten)]
    pub vars: VarArgs,
}

#[derive(Debug, clap::Args)]
pub struct ResolveArgs {
    /// Fail instead of adding or changing a pin in kip.lock.
    #[arg(long)]
    pub locked: bool,
    /// Print the toolchains as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub vars: VarArgs,
}

pub(crate) fn settings() -> anyhow::Result<ResolveSettings> {
    Ok(settings_in(&super::project::cache_dir()?))
}

/// The resolve settings of every command: every engine kip knows, the mirrors from the environment, `cache`'s store.
pub(crate) fn settings_in(cache: &std::path::Path) -> ResolveSettings {
    let engines = kip_schemas::engines().iter().map(|engine| engine.name);
    ResolveSettings::from_env(engines, cache)
}

fn resolve_error(error: resolve::ResolveError) -> anyhow::Error {
    match error.hint() {
        Some(hint) => with_hint(error, hint),
        None => error.into(),
    }
}

fn lock_error(error: kip_core::lock::LockError) -> anyhow::Error {
    match error.hint() {
        Some(hint) => with_hint(error, hint),
        None => error.into(),
    }
}

use super::project::runtime;

/// Fails, before anything is written, when an engine the configuration declares can be resolved from nowhere
/// (no mirror configured, and the local mirror lacks it): one message naming the `kip mirror build` that gets them.
fn check_sources(
    requests: &[resolve::Request],
    lock: &LockFile,
    policy: &Policy,
    settings: &ResolveSettings,
) -> anyhow::Result<Vec<String>> {
    resolve::check_sources(requests, lock, policy, settings).map_err(resolve_error)
}

/// [`check_sources`] for plan and apply, on the configuration they checked. A kip.lock that cannot be read fails
/// here, before a plan is shown: a drift check (`kip plan --detailed-exitcode`) must not pass on a lock that
/// `kip apply --locked` then refuses. Answers the mirrors whose indexes the resolves will read, for apply to fetch
/// ahead.
pub(crate) fn check_sources_for(
    context: &Context,
    checked: &Checked,
    settings: &ResolveSettings,
) -> anyhow::Result<Vec<String>> {
    let Some(config) = checked.config.as_ref() else {
        return Ok(Vec::new());
    };
    let lock = LockFile::read(&context.dir.join(LOCK_FILE)).map_err(lock_error)?;
    check_sources(
        &resolve::requests(config),
        &lock,
        &Policy::UseLock,
        settings,
    )
}

/// What both commands start from: the declared specs, kip.lock (and its path), and where to resolve.
type Prepared = (
    Vec<resolve::Request>,
    std::path::PathBuf,
    LockFile,
    ResolveSettings,
);

fn prepare(context: &Context, vars: &VarArgs) -> anyhow::Result<Option<Prepared>> {
    let checked = load_and_check(context, vars)?;
    print_diagnostics(context, &checked)?;
    let Some(config) = checked.config.as_ref() else {
        return Ok(None);
    };
    let requests = resolve::requests(config);
    let lock_path = context.dir.join(LOCK_FILE);
    let lock = LockFile::read(&lock_path).map_err(lock_error)?;
    Ok(Some((requests, lock_path, lock, settings()?)))
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<ExitStatus> {
    let Some((requests, lock_path, mut lock, settings)) = prepare(context, &args.vars)? else {
        return Ok(ExitStatus::Failure);
    };
    let mut stdout = std::io::stdout().lock();

    if args.check {
        let drift = resolve::lock_drift(&requests, &lock, &settings.platform, &settings);
        if drift.is_empty() {
            writeln!(stdout, "kip.lock is complete and current.")?;
            return Ok(ExitStatus::Success);
        }
        let mut stderr = std::io::stderr().lock();
        for (engine, spec) in &drift.missing {
            writeln!(
                stderr,
                "kip.lock lacks a pin for {engine} \"{spec}\" ({})",
                settings.platform
            )?;
        }
        for (engine, spec) in &drift.stale {
            writeln!(
                stderr,
                "kip.lock pins {engine} \"{spec}\", which the configuration no longer declares"
            )?;
        }
        writeln!(stderr, "hint: run `kip lock` and commit kip.lock")?;
        return Ok(ExitStatus::Failure);
    }

    let policy = match args.upgrade {
        None => Policy::UseLock,
        Some(engine) if engine.is_empty() => Policy::Upgrade(Vec::new()),
        Some(engine) => {
            if kip_schemas::engine(&engine).is_none() {
                return Err(with_hint(
                    anyhow::anyhow!("no engine named {engine:?}"),
                    "name an engine such as postgres",
                ));
            }
            Policy::Upgrade(vec![engine])
        }
    };
    check_sources(&requests, &lock, &policy, &settings)?;
    let before = lock.clone();
    let bar = Bar::for_stderr();
    let platform = settings.platform.clone();
    let mut resolver = Resolver::new(settings.clone(), &bar);
    let runtime = runtime()?;
    let mut lines = Vec::new();
    for request in &requests {
        let toolchain = runtime
            .block_on(resolver.resolve(request, &mut lock, &policy))
            .map_err(resolve_error)?;
        lines.push(describe(&toolchain));
    }
    // Pins for specs the configuration no longer declares go away, as Terraform drops unused providers.
    let drift = resolve::lock_drift(&requests, &lock, &platform, &settings);
    for key in &drift.stale {
        lock.pins.remove(key);
    }
    if lock != before || !lock_path.exists() {
        lock.write(&lock_path).map_err(lock_error)?;
    }
    for line in lines {
        writeln!(stdout, "{line}")?;
    }
    let verb = if lock == before {
        "is up to date"
    } else {
        "was written"
    };
    writeln!(
        stdout,
        "kip.lock {verb} ({} pin{}).",
        lock.pins.len(),
        if lock.pins.len() == 1 { "" } else { "s" }
    )?;
    Ok(ExitStatus::Success)
}

fn describe(toolchain: &resolve::Toolchain) -> String {
    let how = match &toolchain.source {
        ToolchainSource::Bindir => "from KIP_*_BINDIR".to_owned(),
        ToolchainSource::Store {
            downloaded: true, ..
        } => "downloaded and verified".to_owned(),
        ToolchainSource::Store {
            downloaded: false, ..
        } => "cached".to_owned(),
    };
    format!(
        "{} \"{}\" -> {} ({how})",
        toolchain.engine, toolchain.spec, toolchain.version
    )
}

pub fn run_resolve(context: &Context, args: ResolveArgs) -> anyhow::Result<ExitStatus> {
    let Some((requests, lock_path, mut lock, settings)) = prepare(context, &args.vars)? else {
        return Ok(ExitStatus::Failure);
    };
    if args.locked {
        let drift = resolve::lock_drift(&requests, &lock, &settings.platform, &settings);
        if !drift.missing.is_empty() {
            let names: Vec<String> = drift
                .missing
                .iter()
                .map(|(e, s)| format!("{e} \"{s}\""))
                .collect();
            return Err(with_hint(
                anyhow::anyhow!(
                    "kip.lock lacks a pin for {} and --locked forbids adding one",
                    names.join(", ")
                ),
                "run `kip lock` and commit kip.lock",
            ));
        }
    }
    check_sources(&requests, &lock, &Policy::UseLock, &settings)?;
    let before = lock.clone();
    let bar = Bar::for_stderr();
    let mut resolver = Resolver::new(settings, &bar);
    let runtime = runtime()?;
    let mut toolchains = Vec::new();
    for request in &requests {
        toolchains.push(
            runtime
                .block_on(resolver.resolve(request, &mut lock, &Policy::UseLock))
                .map_err(resolve_error)?,
        );
    }
    if lock != before {
        lock.write(&lock_path).map_err(lock_error)?;
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let json: Vec<serde_json::Value> = toolchains
            .iter()
            .map(|toolchain| {
                serde_json::json!({
                    "engine": toolchain.engine,
                    "spec": toolchain.spec,
                    "version": toolchain.version,
                    "root": toolchain.root,
                    "bin": toolchain.bin,
                    "downloaded": matches!(toolchain.source, ToolchainSource::Store { downloaded: true, .. }),
                })
            })
            .collect();
        writeln!(stdout, "{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        for toolchain in &toolchains {
            writeln!(
                stdout,
                "{}  {}",
                describe(toolchain),
                toolchain.root.display()
            )?;
        }
    }
    Ok(ExitStatus::Success)
}
