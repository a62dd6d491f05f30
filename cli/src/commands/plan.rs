//! `kip plan`: what apply would change, in Terraform's layout (or as JSON), optionally saved for `kip apply FILE`;
//! and the rendering of a plan that apply shows too.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use kip_core::config::Checked;
use kip_core::plan::{Action, Change, Plan, SENSITIVE_PREFIX};
use kip_core::planner::Planner;
use kip_core::project::Project;
use kip_core::state::State;

use super::project::{
    checked_config, config_and_graph, engines, hinted, parse_address, project, runtime,
    state_error, supervisors,
};
use super::{Context, VarArgs};
use crate::render::Style;
use crate::{ExitStatus, with_hint};

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Exit 0 when there is nothing to do, 2 when there are changes, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Print the plan as JSON (format_version 2.0, docs/plan-json.md).
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

/// A saved plan: the plan, and a digest of the configuration it was made from. It holds no secret (sensitive
/// values are fingerprints keyed by a key that was never stored).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct PlanFile {
    pub format: u32,
    pub config_sha256: String,
    pub plan: Plan,
}

pub(crate) const PLAN_FILE_FORMAT: u32 = 2;

/// A digest of everything the plan was computed from besides the state: the configuration files, and the value
/// of every variable (from --var, KIP_VAR_ or defaults). A saved plan is refused when it changed, so that a secret
/// apply reads from the configuration is the one the plan was made with.
pub(crate) fn config_digest(checked: &Checked) -> String {
    let mut text = String::new();
    for (_, file) in checked.sources.iter() {
        text.push_str(&file.name);
        text.push('\0');
        text.push_str(&file.text);
        text.push('\0');
    }
    if let Some(config) = &checked.config {
        for variable in &config.variables {
            text.push_str(&variable.name);
            text.push('\0');
            text.push_str(&serde_json::to_string(&variable.value).unwrap_or_default());
            text.push('\0');
        }
    }
    kip_core::mirror::hex(&<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()))
}

/// Keeps the changes of the targets, their objects, and the instances they belong to.
pub(crate) fn apply_targets(plan: &mut Plan, targets: &[String]) -> anyhow::Result<()> {
    let targets = targets
        .iter()
        .map(|target| parse_address(target))
        .collect::<anyhow::Result<Vec<_>>>()?;
    plan.retain_targets(&targets);
    Ok(())
}

/// Plans a checked configuration against the state.
pub(crate) fn plan_against(
    checked: &Checked,
    refresh: bool,
    project: &Project,
    state: &State,
    prefetched: Option<&kip_core::planner::Prefetched>,
) -> anyhow::Result<Plan> {
    let engines = engines();
    let (config, graph) = config_and_graph(checked);
    let supervisors = supervisors(project);
    let planner = Planner {
        project,
        config,
        graph,
        engines: &engines,
        state,
        supervisors: &supervisors,
        refresh,
        prefetched,
    };
    runtime()?.block_on(planner.plan()).map_err(|error| {
        let hint = error.hint();
        hinted(error, hint)
    })
}

pub fn plan(context: &Context, args: PlanArgs) -> anyhow::Result<ExitStatus> {
    // The engines' read-ahead (their sessions and first reads) starts first, on a thread of its own, and overlaps
    // what follows here. The configuration is checked and then the state read, on this thread. Reading the state on
    // a second thread while the configuration is checked was slower, at 100 objects and at 1,000 alike (`plan
    // --refresh=false`, 1,000 roles: 14-15 against 23-39 ms of CPU): the thread gets an allocator heap of its own,
    // whose first pages the kernel clears, and every node of the state it parsed is then freed from the other
    // thread (the read-ahead skips the objects, and builds little). A plan takes no lock; the state is only ever
    // replaced whole.
    // A missing project is reported after the configuration's own errors, as before.
    let project = project(context);
    let prefetched = match &project {
        Ok(project) if args.refresh => kip_core::planner::prefetch(project, &engines()),
        _ => None,
    };
    let Some(checked) = checked_config(context, &args.vars)? else {
        return Ok(ExitStatus::Failure);
    };
    super::lock::check_sources_for(context, &checked, &super::lock::settings()?)?;
    let project = project?;
    let state = State::read(&project.kip_dir).map_err(state_error)?;
    let mut plan = plan_against(
        &checked,
        args.refresh,
        &project,
        &state,
        prefetched.as_ref(),
    )?;
    apply_targets(&mut plan, &args.target)?;
    if let Some(out) = &args.out {
        let file = PlanFile {
            format: PLAN_FILE_FORMAT,
            config_sha256: config_digest(&checked),
            plan: plan.documented(),
        };
        let path = context.dir.join(out);
        let mut text = serde_json::to_string_pretty(&file)?;
        text.push('\n');
        kip_core::fsutil::write_atomically(&path, text.as_bytes())
            .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", path.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let mut value = serde_json::to_value(plan.documented())?;
        redact_json(&mut value);
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
    let status = if args.detailed_exitcode && plan.has_changes() {
        ExitStatus::Changes
    } else {
        ExitStatus::Success
    };
    // The process ends next, and its memory goes back whole: freeing the configuration, the state and the plan
    // node by node is work nobody waits for but the user.
    std::mem::forget((checked, state, plan));
    Ok(status)
}

pub(crate) fn prevented(plan: &Plan) -> anyhow::Error {
    let names: Vec<String> = plan
        .prevented()
        .iter()
        .map(|c| c.address.to_string())
        .collect();
    with_hint(
        anyhow::anyhow!(
            "the plan would destroy {}, which set prevent_destroy = true",
            names.join(", ")
        ),
        "remove prevent_destroy first if you really mean to destroy it",
    )
}

/// The JSON shows `"(sensitive)"` where the plan holds a fingerprint.
fn redact_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) if text.starts_with(SENSITIVE_PREFIX) => {
            *value = serde_json::json!("(sensitive)");
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        serde_json::Value::Object(map) => map.values_mut().for_each(redact_json),
        _ => {}
    }
}

fn show(change: &Change, name: &str, value: Option<&serde_json::Value>, after: bool) -> String {
    if after && change.after_unknown.contains(name) {
        return "(known after apply)".to_owned();
    }
    match value {
        _ if change.sensitive.contains(name) => "(sensitive)".to_owned(),
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
    let empty = kip_core::plan::Attributes::new();
    for change in changing {
        let symbol = change.action.symbol();
        let painted = match change.action {
            Action::Create => style.green(symbol),
            Action::Delete => style.red(symbol),
            _ => style.yellow(symbol),
        };
        let _ = writeln!(
            out,
            "  {painted} {} ({})",
            style.bold(&change.address.to_string()),
            change.kind
        );
        let before = change.before.as_ref().unwrap_or(&empty);
        let after = change.after.as_ref().unwrap_or(&empty);
        let changed;
        let names: Vec<&str> = match change.action {
            Action::Create => after
                .iter()
                .filter(|(name, value)| !value.is_null() || change.after_unknown.contains(*name))
                .map(|(name, _)| name.as_str())
                .collect(),
            Action::Delete => Vec::new(),
            _ => {
                changed = change.changed_attributes();
                changed.iter().map(String::as_str).collect()
            }
        };
        let width = names.iter().map(|name| name.len()).max().unwrap_or(0);
        match &change.restart_because {
            Some(because) if because.is_empty() => {
                out.push_str("      # applied live, without a restart\n");
            }
            Some(_) => out.push_str("      # restarts the instance\n"),
            None => {}
        }
        for name in names {
            let forces = if change.replace_because.iter().any(|n| n == name) {
                "  # forces replacement"
            } else if change
                .restart_because
                .as_ref()
                .is_some_and(|because| because.iter().any(|n| n == name))
            {
                "  # forces a restart"
            } else {
                ""
            };
            let sensitive = change.sensitive.contains(name);
            match change.action {
                Action::Create => {
                    let _ = writeln!(
                        out,
                        "      {name:<width$} = {}",
                        show(change, name, after.get(name), true)
                    );
                }
                _ if !sensitive
                    && (is_multiline(before.get(name)) || is_multiline(after.get(name))) =>
                {
                    let _ = writeln!(out, "      {name:<width$} = <<-{forces}");
                    let old = before
                        .get(name)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default();
                    let new = after.get(name).and_then(|v| v.as_str()).unwrap_or_default();
                    for line in similar::TextDiff::from_lines(old, new).iter_all_changes() {
                        let text = format!("{}{}", line.tag(), line.value().trim_end_matches('\n'));
                        let text = match line.tag() {
                            similar::ChangeTag::Delete => style.red(&text),
                            similar::ChangeTag::Insert => style.green(&text),
                            similar::ChangeTag::Equal => text,
                        };
                        let _ = writeln!(out, "          {text}");
                    }
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "      {name:<width$} = {} -> {}{forces}",
                        show(change, name, before.get(name), false),
                        show(change, name, after.get(name), true)
                    );
                }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use kip_core::address::Address;
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
            address: Address::instance("postgres", "main", None).named_child("role", "app"),
            engine: "postgres".into(),
            kind: "role".into(),
            action,
            before: map(before),
            after: map(after),
            after_unknown: BTreeSet::new(),
            replace_because: Vec::new(),
            restart_because: None,
            sensitive: sensitive.iter().map(|s| (*s).to_owned()).collect(),
            prevent_destroy: false,
            depends_on: Vec::new(),
        }
    }

    #[test]
    fn multi_line_values_are_diffed_line_by_line_and_secrets_never_shown() {
        let plan = Plan {
            format_version: "2.0".into(),
            lineage: "l".into(),
            serial: 1,
            changes: vec![change(
                Action::Update,
                json!({ "comment": "one\ntwo\nthree\n", "password": "sensitive:aaaa" }),
                json!({ "comment": "one\n2\nthree\n", "password": "sensitive:bbbb" }),
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
        assert!(!text.contains("aaaa") && !text.contains("bbbb"), "{text}");
        assert!(
            text.contains("Plan: 0 to add, 1 to change, 0 to destroy."),
            "{text}"
        );
    }

    #[test]
    fn unknown_values_are_known_after_apply() {
        let mut created = change(Action::Create, json!(null), json!({ "env": null }), &[]);
        created.after_unknown.insert("env".into());
        let plan = Plan {
            format_version: "2.0".into(),
            lineage: "l".into(),
            serial: 1,
            changes: vec![created],
        };
        let text = render_plan(&plan, Style { color: false });
        assert!(text.contains("env = (known after apply)"), "{text}");
    }
}
