//! The commands that make engines exist and use them: `plan`, `apply`, `destroy`, `down`, `ps`, `url`, `env`,
//! and the hidden `supervisor` daemon entry point.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use kip_core::apply::{Applier, ApplyError, Engines, Planner, Project};
use kip_core::plan::{Action, Change, Plan};
use kip_core::state::{State, StateLock};

use super::{Context, VarArgs, load_and_check, print_diagnostics};
use crate::progress::Bar;
use crate::render::Style;
use crate::{ExitStatus, with_hint};

pub(crate) fn engines() -> Engines {
    let mut engines: Engines = BTreeMap::new();
    engines.insert("postgres", Box::new(kip_providers::postgres::Postgres));
    engines
}

pub(crate) fn project(context: &Context) -> anyhow::Result<Project> {
    let Some(cache) = kip_core::resolve::default_cache_dir() else {
        return Err(with_hint(
            anyhow::anyhow!("cannot find a cache directory"),
            "set KIP_CACHE_DIR",
        ));
    };
    let exe = std::env::current_exe()
        .map_err(|error| anyhow::anyhow!("cannot find the kip binary: {error}"))?;
    let dir = std::fs::canonicalize(&context.dir).unwrap_or_else(|_| context.dir.clone());
    Ok(Project::new(&dir, &cache, &exe))
}

fn apply_error(error: ApplyError) -> anyhow::Error {
    match error.hint() {
        Some(hint) => with_hint(error, hint),
        None => error.into(),
    }
}

pub(crate) fn state_error(error: kip_core::state::StateError) -> anyhow::Error {
    match error.hint() {
        Some(hint) => with_hint(error, hint),
        None => error.into(),
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Exit 0 when there is nothing to do, 2 when there are changes, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Print the plan as JSON (format_version 1.0).
    #[arg(long)]
    pub json: bool,
    /// Trust the state instead of asking the running engines what exists.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub refresh: bool,
    /// Save the plan to FILE; `kip apply FILE` then applies exactly it.
    #[arg(long = "out", short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Plan only this instance or object (and the instance it belongs to): postgres.main.database.shop.
    #[arg(long, value_name = "ADDRESS")]
    pub target: Vec<String>,
    #[command(flatten)]
    pub vars: VarArgs,
}

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
    /// A plan saved with `kip plan --out FILE`: apply exactly it (refused when the state or the configuration
    /// changed since).
    pub plan_file: Option<PathBuf>,
    #[command(flatten)]
    pub vars: VarArgs,
}

/// A saved plan: the plan, and a digest of the configuration it was made from.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PlanFile {
    format: u32,
    config_sha256: String,
    plan: Plan,
}

fn config_digest(sources: &kip_core::source::Sources) -> String {
    let mut text = String::new();
    for (_, file) in sources.iter() {
        text.push_str(&file.name);
        text.push('\0');
        text.push_str(&file.text);
        text.push('\0');
    }
    kip_core::mirror::hex(&<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()))
}

/// Keeps the changes of the targets, their objects, and the instance they belong to.
fn apply_targets(plan: &mut Plan, targets: &[String]) {
    if targets.is_empty() {
        return;
    }
    plan.changes.retain(|change| {
        targets.iter().any(|target| {
            change.address == *target
                || change.address.starts_with(&format!("{target}."))
                || (change.kind == "instance"
                    && target.starts_with(&format!("{}.", change.address)))
        })
    });
}

fn parse_duration(text: &str) -> Result<Duration, String> {
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

fn make_plan(
    context: &Context,
    vars: &VarArgs,
    refresh: bool,
) -> anyhow::Result<Option<(kip_core::config::Checked, Plan, Project, State)>> {
    let checked = load_and_check(context, vars)?;
    print_diagnostics(context, &checked)?;
    if checked.config.is_none() {
        return Ok(None);
    }
    let project = project(context)?;
    let state = State::read(&project.kip_dir).map_err(state_error)?;
    let engines = engines();
    let config = checked.config.as_ref().expect("checked above");
    let planner = Planner {
        project: &project,
        config,
        engines: &engines,
        state: &state,
        refresh,
    };
    let plan = runtime()?.block_on(planner.plan()).map_err(apply_error)?;
    Ok(Some((checked, plan, project, state)))
}

pub fn plan(context: &Context, args: PlanArgs) -> anyhow::Result<ExitStatus> {
    let Some((checked, mut plan, _, _)) = make_plan(context, &args.vars, args.refresh)? else {
        return Ok(ExitStatus::Failure);
    };
    apply_targets(&mut plan, &args.target);
    if let Some(out) = &args.out {
        let file = PlanFile {
            format: 1,
            config_sha256: config_digest(&checked.sources),
            plan: plan.clone(),
        };
        let path = context.dir.join(out);
        let mut text = serde_json::to_string_pretty(&file)?;
        text.push('\n');
        // The plan holds no secrets (passwords stay in the state).
        kip_core::fsutil::write_atomically(&path, text.as_bytes())
            .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", path.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let mut value = serde_json::to_value(&plan)?;
        redact_json(&mut value, &plan);
        writeln!(stdout, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        write!(
            stdout,
            "{}",
            render_plan(&plan, Style::for_stdout(context.color))
        )?;
    }
    if !plan.prevented().is_empty() {
        return Err(prevented(&plan));
    }
    Ok(if args.detailed_exitcode && plan.has_changes() {
        ExitStatus::Changes
    } else {
        ExitStatus::Success
    })
}

fn prevented(plan: &Plan) -> anyhow::Error {
    let names: Vec<&str> = plan
        .prevented()
        .iter()
        .map(|c| c.address.as_str())
        .collect();
    with_hint(
        anyhow::anyhow!(
            "the plan would destroy {}, which set prevent_destroy = true",
            names.join(", ")
        ),
        "remove prevent_destroy first if you really mean to destroy it",
    )
}

fn redact_json(value: &mut serde_json::Value, plan: &Plan) {
    let Some(changes) = value.get_mut("changes").and_then(|c| c.as_array_mut()) else {
        return;
    };
    for (json, change) in changes.iter_mut().zip(&plan.changes) {
        for side in ["before", "after"] {
            if let Some(map) = json.get_mut(side).and_then(|s| s.as_object_mut()) {
                for key in &change.sensitive {
                    if map.contains_key(key) {
                        map.insert(key.clone(), serde_json::json!("(sensitive)"));
                    }
                }
            }
        }
    }
}

fn show(value: Option<&serde_json::Value>, sensitive: bool) -> String {
    match value {
        _ if sensitive => "(sensitive)".to_owned(),
        None | Some(serde_json::Value::Null) => "null".to_owned(),
        Some(value) => value.to_string(),
    }
}

fn is_multiline(value: Option<&serde_json::Value>) -> bool {
    value
        .and_then(|v| v.as_str())
        .is_some_and(|text| text.contains('\n'))
}

/// Terraform's layout: one block per changing node with `+`, `~`, `-/+`, `-`, then the summary line.
pub fn render_plan(plan: &Plan, style: Style) -> String {
    let changing: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Noop)
        .collect();
    if changing.is_empty() {
        return "No changes. The engines match the configuration.\n".to_owned();
    }
    let mut out = String::from("kip will perform the following actions:\n\n");
    for change in changing {
        let symbol = change.action.symbol();
        let painted = match change.action {
            Action::Create => style.green(symbol),
            Action::Delete => style.red(symbol),
            _ => style.yellow(symbol),
        };
        out.push_str(&format!(
            "  {painted} {} ({})\n",
            style.bold(&change.address),
            change.kind
        ));
        let before = change.before.clone().unwrap_or_default();
        let after = change.after.clone().unwrap_or_default();
        let names: Vec<String> = match change.action {
            Action::Create => after.keys().cloned().collect(),
            Action::Delete => Vec::new(),
            _ => change.changed_attributes(),
        };
        let width = names.iter().map(String::len).max().unwrap_or(0);
        for name in names {
            let sensitive = change.sensitive.contains(&name);
            let forces = if change.replace_because.contains(&name) {
                "  # forces replacement"
            } else {
                ""
            };
            match change.action {
                Action::Create => out.push_str(&format!(
                    "      {name:<width$} = {}\n",
                    show(after.get(&name), sensitive)
                )),
                _ if is_multiline(before.get(&name)) || is_multiline(after.get(&name)) => {
                    out.push_str(&format!("      {name:<width$} = <<-{forces}\n"));
                    let old = before
                        .get(&name)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default();
                    let new = after
                        .get(&name)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default();
                    for line in similar::TextDiff::from_lines(old, new).iter_all_changes() {
                        let text = format!("{}{}", line.tag(), line.value().trim_end_matches('\n'));
                        let text = match line.tag() {
                            similar::ChangeTag::Delete => style.red(&text),
                            similar::ChangeTag::Insert => style.green(&text),
                            similar::ChangeTag::Equal => text,
                        };
                        out.push_str(&format!("          {text}\n"));
                    }
                }
                _ => out.push_str(&format!(
                    "      {name:<width$} = {} -> {}{forces}\n",
                    show(before.get(&name), sensitive),
                    show(after.get(&name), sensitive)
                )),
            }
        }
    }
    let summary = plan.summary();
    out.push_str(&format!(
        "\nPlan: {} to add, {} to change, {} to destroy.\n",
        summary.add, summary.change, summary.destroy
    ));
    out
}

struct Steps;

impl kip_core::apply::Report for Steps {
    fn step(&self, address: &str, what: &str) {
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

fn resolve_settings(project: &Project) -> kip_core::resolve::ResolveSettings {
    let engines = kip_schemas::engines().iter().map(|engine| engine.name);
    kip_core::resolve::ResolveSettings::from_env(engines, project.cache.join("store"))
}

pub fn apply(context: &Context, args: ApplyArgs) -> anyhow::Result<ExitStatus> {
    let project = project(context)?;
    let _lock = StateLock::acquire(&project.kip_dir, args.lock_timeout).map_err(state_error)?;
    let Some((checked, mut plan, project, mut state)) = make_plan(context, &args.vars, true)?
    else {
        return Ok(ExitStatus::Failure);
    };
    let saved = args.plan_file.is_some();
    if let Some(plan_file) = &args.plan_file {
        let path = context.dir.join(plan_file);
        let text = std::fs::read_to_string(&path)
            .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", path.display()))?;
        let file: PlanFile = serde_json::from_str(&text).map_err(|error| {
            with_hint(
                anyhow::anyhow!("{} is not a kip plan file: {error}", path.display()),
                "write one with `kip plan --out FILE`",
            )
        })?;
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
        if file.config_sha256 != config_digest(&checked.sources) {
            return Err(with_hint(
                anyhow::anyhow!(
                    "the configuration changed since {} was made",
                    path.display()
                ),
                "make a new plan with `kip plan --out FILE`",
            ));
        }
        plan = file.plan;
    }
    apply_targets(&mut plan, &args.target);
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
    let config = checked.config.as_ref().expect("checked");
    let graph = checked.graph.as_ref().expect("checked");
    let engines = engines();
    let bar = Bar::for_stderr();
    let applier = Applier {
        project: &project,
        config,
        graph,
        engines: &engines,
        resolve: resolve_settings(&project),
        locked: args.locked,
        progress: &bar,
        report: &Steps,
        run_as_env: std::env::var("KIP_RUN_AS").ok().filter(|v| !v.is_empty()),
        parallelism: args.parallelism,
        sync_only: args.sync_only,
    };
    applier.apply(&plan, &mut state).map_err(apply_error)?;
    let summary = plan.summary();
    writeln!(
        std::io::stdout().lock(),
        "\nApply complete! Resources: {} added, {} changed, {} destroyed.",
        summary.add,
        summary.change,
        summary.destroy
    )?;
    Ok(ExitStatus::Success)
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
}

/// Stops every instance, removes its data, and shuts the supervisor down.
pub fn destroy(context: &Context, args: DestroyArgs) -> anyhow::Result<ExitStatus> {
    let project = project(context)?;
    let _lock = StateLock::acquire(&project.kip_dir, args.lock_timeout).map_err(state_error)?;
    let mut state = State::read(&project.kip_dir).map_err(state_error)?;
    let mut addresses: Vec<String> = state.instances.keys().cloned().collect();
    if let Some(address) = &args.address {
        if !addresses.contains(address) {
            let hint =
                match kip_schemas::did_you_mean(address, addresses.iter().map(String::as_str)) {
                    Some(close) => format!("did you mean {close}?"),
                    None if addresses.is_empty() => "nothing is applied in this project".to_owned(),
                    None => format!("the applied instances are: {}", addresses.join(", ")),
                };
            return Err(with_hint(
                anyhow::anyhow!("{address} is not an applied instance"),
                hint,
            ));
        }
        addresses = vec![address.clone()];
    }
    let everything = args.address.is_none();
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
    runtime()?
        .block_on(async {
            if let Some(mut client) =
                kip_core::supervisor::Client::connect(&project.kip_dir).await?
            {
                for address in &addresses {
                    let _ = client.stop(address).await;
                }
                if everything {
                    client.shutdown().await?;
                }
            }
            Ok::<_, kip_core::supervisor::SupervisorError>(())
        })
        .map_err(|error| match error.hint() {
            Some(hint) => with_hint(error, hint),
            None => error.into(),
        })?;
    for address in &addresses {
        if let Some(saved) = state.instances.remove(address) {
            for dir in [Some(saved.data_dir), saved.socket_dir]
                .into_iter()
                .flatten()
            {
                if let Some(parent) = dir
                    .parent()
                    .filter(|p| p.ends_with(kip_core::apply::slug(address)))
                {
                    let _ = std::fs::remove_dir_all(parent);
                } else {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        state.write(&project.kip_dir).map_err(state_error)?;
    }
    writeln!(
        stdout,
        "Destroy complete! {} instance(s) destroyed.",
        addresses.len()
    )?;
    Ok(ExitStatus::Success)
}

/// Stops every engine (keeping their data); `kip apply` starts them again.
pub fn down(context: &Context) -> anyhow::Result<ExitStatus> {
    let project = project(context)?;
    let stopped = runtime()?.block_on(async {
        match kip_core::supervisor::Client::connect(&project.kip_dir).await? {
            Some(client) => client.shutdown().await.map(|()| true),
            None => Ok(false),
        }
    });
    let stopped =
        stopped.map_err(|error: kip_core::supervisor::SupervisorError| anyhow::anyhow!(error))?;
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

pub fn ps(context: &Context, args: PsArgs) -> anyhow::Result<ExitStatus> {
    let project = project(context)?;
    let processes = runtime()?.block_on(async {
        match kip_core::supervisor::Client::connect(&project.kip_dir).await? {
            Some(mut client) => client.status().await,
            None => Ok(Vec::new()),
        }
    });
    let processes =
        processes.map_err(|error: kip_core::supervisor::SupervisorError| anyhow::anyhow!(error))?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&processes)?)?;
        return Ok(ExitStatus::Success);
    }
    if processes.is_empty() {
        writeln!(stdout, "No engine of this project runs.")?;
        return Ok(ExitStatus::Success);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    writeln!(
        stdout,
        "{:<32} {:<10} {:>8} {:>10}  TARGET",
        "NAME", "STATE", "PID", "UPTIME"
    )?;
    for process in processes {
        let state = match &process.state {
            kip_core::supervisor::ProcessState::Starting => "starting".to_owned(),
            kip_core::supervisor::ProcessState::Ready => "ready".to_owned(),
            kip_core::supervisor::ProcessState::Restarting => "restarting".to_owned(),
            kip_core::supervisor::ProcessState::Exited { code, signal } => match (code, signal) {
                (Some(code), _) => format!("exited({code})"),
                (None, Some(signal)) => format!("killed({signal})"),
                _ => "exited".to_owned(),
            },
            kip_core::supervisor::ProcessState::Failed { .. } => "failed".to_owned(),
        };
        let uptime = process
            .started_at
            .map(|start| format!("{}s", now.saturating_sub(start) / 1000))
            .unwrap_or_default();
        let target = match &process.probe {
            kip_core::engine::ProbeKind::Socket { path } => path.display().to_string(),
            kip_core::engine::ProbeKind::Tcp { host, port } => format!("{host}:{port}"),
            kip_core::engine::ProbeKind::Http { url } => url.clone(),
            _ => String::new(),
        };
        let pid = process.pid.map(|pid| pid.to_string()).unwrap_or_default();
        writeln!(
            stdout,
            "{:<32} {:<10} {:>8} {:>10}  {target}",
            process.name, state, pid, uptime
        )?;
    }
    Ok(ExitStatus::Success)
}

#[derive(Debug, clap::Args)]
pub struct UrlArgs {
    /// An instance or object address: postgres.main, postgres.main.database.shop.
    pub address: String,
    #[command(flatten)]
    pub vars: VarArgs,
}

fn exports_of(
    context: &Context,
    address: &str,
    vars: &VarArgs,
) -> anyhow::Result<BTreeMap<String, String>> {
    let checked = load_and_check(context, vars)?;
    let Some(config) = checked.config.as_ref() else {
        print_diagnostics(context, &checked)?;
        return Err(anyhow::anyhow!("the configuration has errors"));
    };
    let project = project(context)?;
    let state = State::read(&project.kip_dir).map_err(state_error)?;
    let engines = engines();
    let Some(env) = kip_core::apply::instance_env(&project, config, &state, address) else {
        return Err(with_hint(
            anyhow::anyhow!("{address} does not run: it is not declared, or not applied yet"),
            "run `kip apply` first; `kip graph` lists the addresses",
        ));
    };
    let engine = engines
        .get(env.instance.engine.name)
        .expect("an applied instance has an engine");
    let object = (address != env.address).then_some(address);
    Ok(engine.exports(&env, object))
}

pub fn url(context: &Context, args: UrlArgs) -> anyhow::Result<ExitStatus> {
    let exports = exports_of(context, &args.address, &args.vars)?;
    writeln!(
        std::io::stdout().lock(),
        "{}",
        exports.get("url").cloned().unwrap_or_default()
    )?;
    Ok(ExitStatus::Success)
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EnvFormat {
    Shell,
    Dotenv,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct EnvArgs {
    #[arg(long, value_enum, default_value_t = EnvFormat::Shell)]
    pub format: EnvFormat,
    #[command(flatten)]
    pub vars: VarArgs,
}

/// `DATABASE_URL` (the first postgres database, or instance) and `KIP_<ENGINE>_<NAME>_URL` for every instance
/// and object kip runs.
pub fn env(context: &Context, args: EnvArgs) -> anyhow::Result<ExitStatus> {
    let checked = load_and_check(context, &args.vars)?;
    let Some(config) = checked.config.as_ref() else {
        print_diagnostics(context, &checked)?;
        return Ok(ExitStatus::Failure);
    };
    let project = project(context)?;
    let state = State::read(&project.kip_dir).map_err(state_error)?;
    let variables = super::usage::env_variables(&project, config, &state);
    let mut stdout = std::io::stdout().lock();
    match args.format {
        EnvFormat::Json => writeln!(stdout, "{}", serde_json::to_string_pretty(&variables)?)?,
        EnvFormat::Dotenv => {
            for (key, value) in &variables {
                writeln!(stdout, "{key}={value}")?;
            }
        }
        EnvFormat::Shell => {
            for (key, value) in &variables {
                writeln!(stdout, "export {key}='{}'", value.replace('\'', "'\\''"))?;
            }
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(kip_core::supervisor::run_daemon(&args.dir))
        .map_err(|error| anyhow::anyhow!(error))?;
    Ok(ExitStatus::Success)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use kip_core::plan::{Action, Change, Plan};
    use serde_json::json;

    use super::render_plan;
    use crate::render::Style;

    fn change(
        action: Action,
        before: serde_json::Value,
        after: serde_json::Value,
        sensitive: &[&str],
    ) -> Change {
        let map =
            |value: serde_json::Value| value.as_object().map(|m| m.clone().into_iter().collect());
        Change {
            address: "postgres.main.role.app".into(),
            engine: "postgres".into(),
            kind: "role".into(),
            action,
            before: map(before),
            after: map(after),
            replace_because: Vec::new(),
            sensitive: sensitive
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<BTreeSet<_>>(),
            prevent_destroy: false,
        }
    }

    #[test]
    fn multi_line_values_are_diffed_line_by_line_and_secrets_never_shown() {
        let plan = Plan {
            format_version: "1.0".into(),
            lineage: "l".into(),
            serial: 1,
            changes: vec![change(
                Action::Update,
                json!({ "comment": "one\ntwo\nthree\n", "password": "old-secret" }),
                json!({ "comment": "one\n2\nthree\n", "password": "new-secret" }),
                &["password"],
            )],
        };
        let text = render_plan(&plan, Style { color: false });
        assert!(text.contains("~ postgres.main.role.app (role)"), "{text}");
        assert!(text.contains("          -two\n          +2\n"), "{text}");
        assert!(
            text.contains("password = (sensitive) -> (sensitive)"),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
        assert!(
            text.contains("Plan: 0 to add, 1 to change, 0 to destroy."),
            "{text}"
        );
    }
}
