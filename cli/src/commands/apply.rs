//! `kip apply` (and `kip sync`): plan, show, confirm, execute; or execute a saved plan as it was saved. And
//! `kip destroy [ADDR]`: stop instances and remove their data, dependents first.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use kip_core::address::Address;
use kip_core::apply::{Applier, Destroyer};
use kip_core::config::Checked;
use kip_core::plan::Summary;
use kip_core::planner::Prefetched;
use kip_core::project::Project;
use kip_core::state::{State, StateLock};

use super::plan::{
    PLAN_FILE_FORMAT, PlanFile, apply_targets, config_digest, plan_against, prevented, render_plan,
};
use super::project::{
    checked_config, config_and_graph, engines, parse_address, parse_duration, project,
    report_apply_error, runtime, state_error, supervisor_error, supervisors,
};
use super::{Context, VarArgs};
use crate::progress::Bar;
use crate::render::Style;
use crate::{ExitStatus, with_hint};

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Apply without asking for confirmation (CI).
    #[arg(long)]
    pub auto_approve: bool,
    /// Refuse to add or move a pin in kip.lock.
    #[arg(long)]
    pub locked: bool,
    /// How long to wait for another kip holding the state lock.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// How many instances apply at once.
    #[arg(long, default_value_t = 10)]
    pub parallelism: usize,
    /// Set by `kip sync`: converge structure only, never start or restart an engine.
    #[arg(skip)]
    pub sync_only: bool,
    /// Apply only this instance or object (and the instance it belongs to).
    #[arg(long, value_name = "ADDRESS")]
    pub target: Vec<String>,
    /// A plan saved with `kip plan --out FILE`: apply exactly it, without planning again (refused when the
    /// state or the configuration changed since).
    pub plan_file: Option<PathBuf>,
    #[command(flatten)]
    pub vars: VarArgs,
}

/// Prints what apply and destroy do, one line per step, on stderr.
pub(crate) struct Steps;

impl kip_core::apply::Report for Steps {
    fn step(&self, address: &Address, what: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{address}: {what}");
    }
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(with_hint(
            anyhow::anyhow!("kip asks before changing engines, and there is no terminal to ask on"),
            "pass --auto-approve to apply without asking (as CI does)",
        ));
    }
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{question}\n  Only 'yes' will be accepted: ")?;
    stdout.flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

/// Reads a saved plan and checks it still applies: same state (lineage and serial), same configuration.
fn saved_plan(
    context: &Context,
    path: &std::path::Path,
    checked: &kip_core::config::Checked,
    state: &mut State,
) -> anyhow::Result<kip_core::plan::Plan> {
    let path = context.dir.join(path);
    let text = std::fs::read_to_string(&path)
        .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", path.display()))?;
    let file: PlanFile = serde_json::from_str(&text).map_err(|error| {
        with_hint(
            anyhow::anyhow!("{} is not a kip plan file: {error}", path.display()),
            "write one with `kip plan --out FILE`",
        )
    })?;
    if file.format != PLAN_FILE_FORMAT {
        return Err(with_hint(
            anyhow::anyhow!(
                "{} is a plan file of format {}; this kip applies format {PLAN_FILE_FORMAT}",
                path.display(),
                file.format
            ),
            "make a new plan with `kip plan --out FILE`",
        ));
    }
    // A state that does not exist yet has no lineage to compare; it takes the plan's.
    if state.serial == 0 && file.plan.serial == 0 {
        state.lineage = file.plan.lineage.clone();
    }
    if file.plan.lineage != state.lineage || file.plan.serial != state.serial {
        return Err(with_hint(
            anyhow::anyhow!(
                "the state changed since {} was made (serial {} then, {} now)",
                path.display(),
                file.plan.serial,
                state.serial
            ),
            "make a new plan with `kip plan --out FILE`",
        ));
    }
    if file.config_sha256 != config_digest(checked) {
        return Err(with_hint(
            anyhow::anyhow!(
                "the configuration changed since {} was made",
                path.display()
            ),
            "make a new plan with `kip plan --out FILE`",
        ));
    }
    Ok(file.plan)
}

pub fn apply(context: &Context, args: ApplyArgs) -> anyhow::Result<ExitStatus> {
    // No project, no state lock: nothing is written where there is no kip.hcl.
    let project = project(context)?;
    // The engines read ahead for the plan as `kip plan` has them do, from the start and before the state lock is
    // ours; what they read is used only when the state is still the one they started from once it is (another
    // apply may have held the lock and changed what runs). A saved plan refreshes nothing.
    let prefetched = match &args.plan_file {
        None => kip_core::planner::prefetch(&project, &engines()),
        Some(_) => None,
    };
    let Some(checked) = checked_config(context, &args.vars)? else {
        return Ok(ExitStatus::Failure);
    };
    // Engines that no mirror has stop the apply here, before the state lock creates .kip/. The indexes of the
    // mirrors the walk will resolve against are fetched from now on, beside the plan (`resolve::prefetch_indexes`).
    let resolve = super::lock::settings_in(&project.cache);
    let mirrors = super::lock::check_sources_for(context, &checked, &resolve)?;
    kip_core::resolve::prefetch_indexes(&resolve, mirrors);
    let _lock = StateLock::acquire(&project.kip_dir, args.lock_timeout).map_err(state_error)?;
    let mut state = State::read(&project.kip_dir).map_err(state_error)?;
    let (config, graph) = config_and_graph(&checked);
    let engines = engines();
    let supervisors = supervisors(&project);
    let bar = Bar::for_stderr();
    let applier = Applier {
        project: &project,
        config,
        graph,
        engines: &engines,
        supervisors: &supervisors,
        resolve,
        locked: args.locked,
        progress: &bar,
        report: &Steps,
        run_as_env: std::env::var("KIP_RUN_AS").ok().filter(|v| !v.is_empty()),
        parallelism: args.parallelism,
        sync_only: args.sync_only,
    };
    let saved = args.plan_file.is_some();
    // Approved in advance, with nothing to choose: new instances that stand alone need no refresh to be planned,
    // so they start now, beside the plan's refresh of the others, when that refresh still has reads in flight. A
    // refresh that is quick, or already read ahead, leaves nothing to overlap: a second walk beside the plan would
    // only share the two cores with the new engine's own start (NATS, BENCHMARKS.md, eighth stop).
    let go_ahead = match ahead_setting()? {
        Some(always) => always,
        None => prefetched.as_ref().is_some_and(Prefetched::pending),
    };
    if args.auto_approve && !saved && !args.sync_only && args.target.is_empty() && go_ahead {
        let ahead = kip_core::apply::ahead_of_refresh(config, graph, &state);
        if !ahead.is_empty() {
            let ahead = Ahead {
                applier: &applier,
                checked: &checked,
                project: &project,
                instances: &ahead,
            };
            return ahead.apply(context, state, prefetched);
        }
    }
    let mut plan = match &args.plan_file {
        // A saved plan is applied as saved: nothing is planned or refreshed again.
        Some(path) => saved_plan(context, path, &checked, &mut state)?,
        None => {
            let prefetched = prefetched.filter(|prefetched| prefetched.started_from(&state));
            plan_against(&checked, true, &project, &state, prefetched.as_ref())?
        }
    };
    apply_targets(&mut plan, &args.target)?;
    let style = Style::for_stdout(context.color);
    write!(std::io::stdout().lock(), "{}", render_plan(&plan, style))?;
    if !plan.prevented().is_empty() {
        return Err(prevented(&plan));
    }
    if plan.has_changes()
        && !args.auto_approve
        && !saved
        && !confirm("\nDo you want to perform these actions?")?
    {
        writeln!(std::io::stdout().lock(), "Apply cancelled.")?;
        return Ok(ExitStatus::Failure);
    }
    if let Err(error) = applier.apply(&plan, &mut state) {
        return report_apply_error(context, error);
    }
    complete(plan.summary())
}

/// `KIP_APPLY_AHEAD`: `Some(true)` for `always`, `Some(false)` for `never`, `None` for `auto` (or unset).
fn ahead_setting() -> anyhow::Result<Option<bool>> {
    match std::env::var("KIP_APPLY_AHEAD") {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(value) => match value.as_str() {
            "" | "auto" => Ok(None),
            "always" => Ok(Some(true)),
            "never" => Ok(Some(false)),
            other => Err(with_hint(
                anyhow::anyhow!("KIP_APPLY_AHEAD is {other:?}, which kip does not know"),
                "set it to auto (the default), always or never",
            )),
        },
        Err(std::env::VarError::NotUnicode(_)) => Err(with_hint(
            anyhow::anyhow!("KIP_APPLY_AHEAD is not UTF-8"),
            "set it to auto (the default), always or never",
        )),
    }
}

fn complete(summary: Summary) -> anyhow::Result<ExitStatus> {
    writeln!(
        std::io::stdout().lock(),
        "\nApply complete! Resources: {} added, {} changed, {} destroyed.",
        summary.add,
        summary.change,
        summary.destroy
    )?;
    Ok(ExitStatus::Success)
}

/// An approved apply whose new, standalone instances go ahead of the plan's refresh
/// ([`kip_core::apply::ahead_of_refresh`]).
struct Ahead<'a> {
    applier: &'a Applier<'a>,
    checked: &'a Checked,
    project: &'a Project,
    instances: &'a [Address],
}

impl Ahead<'_> {
    /// The instances ahead are planned without refresh (nothing of theirs exists to read) and applied on a thread of
    /// their own, while this one plans the whole configuration with refresh, shows that plan, and applies the rest of
    /// it. Both walks share one state, saved after every step as always. Should the plan fail or be refused
    /// (`prevent_destroy`), what went ahead stays: it is declared, started and in the state, as an instance of a
    /// walk that stopped on another's failure would be.
    fn apply(
        &self,
        context: &Context,
        state: State,
        prefetched: Option<Prefetched>,
    ) -> anyhow::Result<ExitStatus> {
        let applier = self.applier;
        let names: Vec<String> = self.instances.iter().map(ToString::to_string).collect();
        tracing::debug!(instances = %names.join(", "), "new instances go ahead of the refresh");
        let planned_from = state.clone();
        let run = match applier.begin(state) {
            Ok(run) => run,
            Err(error) => return report_apply_error(context, error),
        };
        let (ahead, rest) = std::thread::scope(|scope| {
            let ahead = scope.spawn(|| -> anyhow::Result<()> {
                let mut plan =
                    plan_against(self.checked, false, self.project, &planned_from, None)?;
                plan.retain_targets(self.instances);
                applier.run(&plan, &run);
                Ok(())
            });
            let rest = (|| -> anyhow::Result<Summary> {
                // Asked here, not before the instances ahead go: it waits for the read-ahead's thread to have read
                // the state.
                let prefetched =
                    prefetched.filter(|prefetched| prefetched.started_from(&planned_from));
                let mut plan = plan_against(
                    self.checked,
                    true,
                    self.project,
                    &planned_from,
                    prefetched.as_ref(),
                )?;
                let style = Style::for_stdout(context.color);
                write!(std::io::stdout().lock(), "{}", render_plan(&plan, style))?;
                if !plan.prevented().is_empty() {
                    return Err(prevented(&plan));
                }
                let summary = plan.summary();
                plan.changes
                    .retain(|change| !self.instances.contains(&change.address.instance_address()));
                applier.run(&plan, &run);
                Ok(summary)
            })();
            let ahead = ahead.join().unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "kip's thread applying new instances panicked"
                ))
            });
            (ahead, rest)
        });
        let mut state = State::default();
        // What failed in either walk is reported whatever else went wrong: an instance ahead may have failed while
        // the plan did too.
        let failed = match applier.finish(run, &mut state) {
            Ok(()) => None,
            Err(error) => Some(report_apply_error(context, error)?),
        };
        // Then the plan's own error: the instances ahead were planned from the same configuration.
        let summary = rest?;
        ahead?;
        match failed {
            Some(status) => Ok(status),
            None => complete(summary),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct DestroyArgs {
    /// Destroy only this instance (postgres.main); every instance when absent.
    pub address: Option<String>,
    /// Destroy without asking for confirmation.
    #[arg(long)]
    pub auto_approve: bool,
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// How many instances are destroyed at once.
    #[arg(long, default_value_t = 10)]
    pub parallelism: usize,
}

/// Stops instances (dependents first), removes their data, and shuts the supervisor down when nothing is left.
pub fn destroy(context: &Context, args: DestroyArgs) -> anyhow::Result<ExitStatus> {
    let project = project(context)?;
    let _lock = StateLock::acquire(&project.kip_dir, args.lock_timeout).map_err(state_error)?;
    let mut state = State::read(&project.kip_dir).map_err(state_error)?;
    let applied: Vec<Address> = state.instances.keys().cloned().collect();
    let addresses = match &args.address {
        None => applied.clone(),
        Some(text) => {
            let address = parse_address(text)?;
            if !applied.contains(&address) {
                let names: Vec<String> = applied.iter().map(ToString::to_string).collect();
                let hint = match kip_schemas::did_you_mean(text, names.iter().map(String::as_str)) {
                    Some(close) => format!("did you mean {close}?"),
                    None if names.is_empty() => "nothing is applied in this project".to_owned(),
                    None => format!("the applied instances are: {}", names.join(", ")),
                };
                return Err(with_hint(
                    anyhow::anyhow!("{address} is not an applied instance"),
                    hint,
                ));
            }
            vec![address]
        }
    };
    let protected: Vec<String> = addresses
        .iter()
        .filter(|address| {
            state.instances.get(*address).is_some_and(|saved| {
                saved.prevent_destroy || saved.objects.values().any(|o| o.prevent_destroy)
            })
        })
        .map(ToString::to_string)
        .collect();
    if !protected.is_empty() {
        return Err(with_hint(
            anyhow::anyhow!(
                "{} set prevent_destroy = true (on the instance or an object in it)",
                protected.join(", ")
            ),
            "remove prevent_destroy and apply first if you really mean to destroy it",
        ));
    }
    let mut stdout = std::io::stdout().lock();
    if addresses.is_empty() {
        writeln!(stdout, "Nothing to destroy.")?;
    } else {
        for address in &addresses {
            writeln!(stdout, "  - {address}")?;
        }
        if !args.auto_approve && !confirm("\nDestroy these instances and their data?")? {
            writeln!(stdout, "Destroy cancelled.")?;
            return Ok(ExitStatus::Failure);
        }
    }
    let supervisors = supervisors(&project);
    let engines = engines();
    let destroyer = Destroyer {
        project: &project,
        engines: &engines,
        supervisors: &supervisors,
        report: &Steps,
        parallelism: args.parallelism,
    };
    if let Err(error) = destroyer.destroy(&addresses, &mut state) {
        return report_apply_error(context, error);
    }
    if state.instances.is_empty() {
        // Nothing of the project is left: neither is the account kip made for its engines.
        kip_core::runas::remove_project_account(&project.dir);
        runtime()?
            .block_on(async {
                if let Some(client) = supervisors.adopt().await? {
                    client.shutdown().await?;
                }
                Ok(())
            })
            .map_err(supervisor_error)?;
    }
    writeln!(
        stdout,
        "Destroy complete! {} instance(s) destroyed.",
        addresses.len()
    )?;
    Ok(ExitStatus::Success)
}
