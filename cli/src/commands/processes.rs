//! The commands about running processes: `kip up` (start what is applied, as applied), `kip down` (stop
//! everything, keeping data), `kip ps` (what runs, instance by instance), and the hidden `kip supervisor` daemon.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use kip_core::apply::lifecycle::{self, Up};
use kip_core::state::{State, StateLock};
use kip_core::supervise::Supervisors as _;
use kip_core::supervisor::{ProcessState, ProcessStatus};

use super::project::{
    checked_config, engines, hinted, project, runtime, state_error, supervisor_error, supervisors,
};
use super::{Context, VarArgs};
use crate::ExitStatus;

/// How long `kip up` waits for a `kip apply` that holds the state lock.
const UP_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub vars: VarArgs,
}

/// Starts every applied instance the configuration still declares, dependencies first, without planning or
/// converging.
pub fn up(context: &Context, args: UpArgs) -> anyhow::Result<ExitStatus> {
    let Some(checked) = checked_config(context, &args.vars)? else {
        return Ok(ExitStatus::Failure);
    };
    let config = checked.config.as_ref().expect("checked");
    let project = project(context)?;
    let _lock = StateLock::acquire(&project.kip_dir, UP_LOCK_TIMEOUT).map_err(state_error)?;
    let mut state = State::read(&project.kip_dir).map_err(state_error)?;
    let mut stdout = std::io::stdout().lock();
    if state.instances.is_empty() {
        writeln!(
            stdout,
            "Nothing is applied in this project: run `kip apply` first."
        )?;
        return Ok(ExitStatus::Success);
    }
    let engines = engines();
    let supervisors = supervisors(&project);
    let mut supervisor = supervisors.connect();
    let runtime = runtime()?;
    let mut started = 0;
    for address in lifecycle::dependency_order(&state) {
        if config.instance(&address).is_none() {
            writeln!(
                stdout,
                "{address}: skipped, the configuration no longer declares it (`kip apply` destroys it)"
            )?;
            continue;
        }
        let saved = state.instances[&address].clone();
        let Some(engine) = engines.get(&saved.engine) else {
            writeln!(
                stdout,
                "{address}: skipped, this kip cannot run {} instances",
                saved.engine
            )?;
            continue;
        };
        let mut ctx = lifecycle::ctx_from_state(&project, &address, &saved);
        let outcome = runtime
            .block_on(lifecycle::bring_up(
                engine.as_ref(),
                &mut ctx,
                &saved,
                supervisor.as_mut(),
            ))
            .map_err(|error| {
                let hint = error.hint();
                hinted(error, hint).context(format!("{address} did not come up"))
            })?;
        match outcome {
            Up::Running => writeln!(stdout, "{address}: already running")?,
            Up::Done => writeln!(stdout, "{address}: succeeded before; not run again")?,
            Up::Started(pids) => {
                if let Some(entry) = state.instances.get_mut(&address) {
                    entry.lifecycle.initialized = ctx.initialized;
                    lifecycle::save_ctx(entry, &ctx);
                    entry.attributes = saved.attributes.clone();
                    state.write(&project.kip_dir).map_err(state_error)?;
                }
                started += 1;
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                writeln!(stdout, "{address}: ready (pid {})", pids.join(", "))?;
            }
        }
        stdout.flush()?;
    }
    for instance in &config.instances {
        if !state.instances.contains_key(&instance.address) {
            writeln!(
                stdout,
                "{}: skipped, not applied yet (`kip apply` creates it)",
                instance.address
            )?;
        }
    }
    writeln!(stdout, "Started {started} instance(s).")?;
    Ok(ExitStatus::Success)
}

/// Stops every engine (keeping their data), dependents first, then the supervisor; `kip up` or `kip apply`
/// starts them again.
pub fn down(context: &Context) -> anyhow::Result<ExitStatus> {
    let project = project(context)?;
    let state = State::read(&project.kip_dir).map_err(state_error)?;
    let runtime = runtime()?;
    let stopped = runtime
        .block_on(async {
            let Some(client) = supervisors(&project).adopt().await? else {
                return Ok(false);
            };
            let mut supervisor = supervisors(&project).connect();
            for address in lifecycle::dependency_order(&state).iter().rev() {
                if let Err(error) = lifecycle::stop(supervisor.as_mut(), address).await {
                    tracing::warn!("stopping {address}: {error}");
                }
            }
            // Whatever is left (processes of instances no longer in the state) goes with the supervisor.
            client.shutdown().await?;
            Ok(true)
        })
        .map_err(supervisor_error)?;
    let message = if stopped {
        "Stopped every engine of this project."
    } else {
        "No engine of this project runs."
    };
    writeln!(std::io::stdout().lock(), "{message}")?;
    Ok(ExitStatus::Success)
}

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    #[arg(long)]
    pub json: bool,
}

fn describe(state: &ProcessState) -> String {
    match state {
        ProcessState::Starting => "starting".to_owned(),
        ProcessState::Ready => "ready".to_owned(),
        ProcessState::Restarting => "restarting".to_owned(),
        ProcessState::Exited { code, signal } => match (code, signal) {
            (Some(code), _) => format!("exited({code})"),
            (None, Some(signal)) => format!("killed({signal})"),
            _ => "exited".to_owned(),
        },
        ProcessState::Failed { .. } => "failed".to_owned(),
    }
}

/// What runs, in dependency order of the instances, each instance's processes under it.
pub fn ps(context: &Context, args: PsArgs) -> anyhow::Result<ExitStatus> {
    let project = project(context)?;
    let processes = runtime()?
        .block_on(supervisors(&project).running())
        .map_err(supervisor_error)?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&processes)?)?;
        return Ok(ExitStatus::Success);
    }
    if processes.is_empty() {
        writeln!(stdout, "No engine of this project runs.")?;
        return Ok(ExitStatus::Success);
    }
    let state = State::read(&project.kip_dir).unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    writeln!(
        stdout,
        "{:<36} {:<11} {:>8} {:>9} {:>8}  ADDRESS",
        "NAME", "STATE", "PID", "UPTIME", "RESTARTS"
    )?;
    let mut shown: Vec<&ProcessStatus> = Vec::new();
    for address in lifecycle::dependency_order(&state) {
        shown.extend(lifecycle::processes_of(&processes, &address));
    }
    for process in &processes {
        if !shown.iter().any(|p| p.name == process.name) {
            shown.push(process);
        }
    }
    for process in shown {
        let uptime = match (&process.state, process.started_at) {
            (ProcessState::Ready | ProcessState::Starting, Some(start)) => {
                format!("{}s", now.saturating_sub(start) / 1000)
            }
            _ => String::new(),
        };
        let target = match &process.probe {
            kip_core::engine::ProbeKind::Socket { path } => path.display().to_string(),
            kip_core::engine::ProbeKind::Tcp { host, port } => format!("{host}:{port}"),
            kip_core::engine::ProbeKind::Http { url } => url.clone(),
            _ => String::new(),
        };
        let pid = process.pid.map(|pid| pid.to_string()).unwrap_or_default();
        writeln!(
            stdout,
            "{:<36} {:<11} {:>8} {:>9} {:>8}  {target}",
            process.name,
            describe(&process.state),
            pid,
            uptime,
            process.restarts
        )?;
        if let ProcessState::Failed { reason } = &process.state {
            writeln!(stdout, "  └ {reason}")?;
        }
    }
    Ok(ExitStatus::Success)
}

#[derive(Debug, clap::Args)]
pub struct SupervisorArgs {
    /// The project's .kip directory.
    #[arg(long)]
    pub dir: PathBuf,
}

/// The supervisor daemon (started by apply; not for people to run).
pub fn supervisor(args: SupervisorArgs) -> anyhow::Result<ExitStatus> {
    let runtime = runtime()?;
    runtime
        .block_on(kip_core::supervisor::run_daemon(&args.dir))
        .map_err(supervisor_error)?;
    Ok(ExitStatus::Success)
}
