//! The commands about running processes: `kip up` (start what is applied, as applied), `kip down` (stop
//! everything, keeping data), `kip ps` (what runs, instance by instance), and the hidden `kip supervisor` daemon.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use kip_core::address::Address;
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
        let engine_name = state.instances[&address].engine.clone();
        let Some(engine) = engines.get(&engine_name) else {
            writeln!(
                stdout,
                "{address}: skipped, this kip cannot run {engine_name} instances"
            )?;
            continue;
        };
        let outcome = runtime
            .block_on(lifecycle::bring_up_in(
                &project,
                &mut state,
                &address,
                engine.as_ref(),
                supervisor.as_mut(),
            ))
            .map_err(|error| {
                let hint = error.hint();
                hinted(error, hint).context(format!("{address} did not come up"))
            })?;
        match outcome {
            Up::Running => writeln!(stdout, "{address}: already running")?,
            Up::Done => writeln!(stdout, "{address}: succeeded before; not run again")?,
            Up::Started(pids, moved) => {
                for port in &moved {
                    writeln!(
                        stdout,
                        "{address}: {port}; what reads its address gets the new one at the next `kip apply`"
                    )?;
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

/// What runs, as a tree of the applied instances in dependency order: each instance under the one it waited for
/// last (the others it waits for are named after its address), its processes under it when it has several.
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
    for line in ps_lines(&state, &processes, now) {
        writeln!(stdout, "{line}")?;
    }
    Ok(ExitStatus::Success)
}

/// One row of `kip ps`: a tree prefix and a name, then the process's columns (none for an instance whose
/// processes are listed under it, or that runs nothing).
struct Row<'s> {
    prefix: String,
    name: String,
    process: Option<&'s ProcessStatus>,
    /// The instance is a job that succeeded with its configuration as applied.
    succeeded: bool,
    note: String,
}

/// The applied instances as a tree: each under the dependency that comes last in the dependency order (the one it
/// waited for last); the others it depends on are named in a note.
struct Tree<'s> {
    order: Vec<Address>,
    children: BTreeMap<Option<usize>, Vec<usize>>,
    others: Vec<Vec<String>>,
    succeeded: Vec<bool>,
    processes: &'s [ProcessStatus],
}

impl<'s> Tree<'s> {
    fn new(state: &State, processes: &'s [ProcessStatus]) -> Tree<'s> {
        let order = lifecycle::dependency_order(state);
        let mut children: BTreeMap<Option<usize>, Vec<usize>> = BTreeMap::new();
        let mut others = Vec::new();
        let mut succeeded = Vec::new();
        let mut depth: Vec<usize> = Vec::new();
        let position: BTreeMap<&Address, usize> = order
            .iter()
            .enumerate()
            .map(|(index, address)| (address, index))
            .collect();
        for (index, address) in order.iter().enumerate() {
            let saved = &state.instances[address];
            // Only dependencies placed before it: a state edited by hand (or damaged) may name the instance itself
            // or a cycle, and `kip ps` shows what runs rather than panic on it.
            let mut dependencies: Vec<usize> = saved
                .depends_on
                .iter()
                .filter_map(|dependency| position.get(dependency).copied())
                .filter(|dependency| *dependency < index)
                .collect();
            dependencies.sort_unstable();
            dependencies.dedup();
            // The parent is the dependency at the end of the longest chain (what it waited for last); the order
            // breaks ties. Dependencies come before their dependents in the order, so their depth is known.
            let parent = dependencies
                .iter()
                .copied()
                .max_by_key(|dependency| (depth[*dependency], *dependency));
            depth.push(parent.map_or(0, |parent| depth[parent] + 1));
            others.push(
                dependencies
                    .iter()
                    .filter(|dependency| Some(**dependency) != parent)
                    .map(|dependency| order[*dependency].to_string())
                    .collect(),
            );
            succeeded.push(saved.lifecycle.succeeded);
            children.entry(parent).or_default().push(index);
        }
        Tree {
            order,
            children,
            others,
            succeeded,
            processes,
        }
    }

    fn rows(&self) -> Vec<Row<'s>> {
        let mut rows = Vec::new();
        self.walk(None, "", &mut rows);
        // Processes of no applied instance (a state lost or edited) still show, at the end.
        for process in self.processes {
            if !self
                .order
                .iter()
                .any(|address| lifecycle::belongs_to(&process.name, address))
            {
                rows.push(Row {
                    prefix: String::new(),
                    name: process.name.clone(),
                    process: Some(process),
                    succeeded: false,
                    note: "(not in the state)".to_owned(),
                });
            }
        }
        rows
    }

    fn walk(&self, parent: Option<usize>, indent: &str, rows: &mut Vec<Row<'s>>) {
        let Some(list) = self.children.get(&parent) else {
            return;
        };
        for (at, &index) in list.iter().enumerate() {
            let (branch, below) = match parent {
                None => ("", String::new()),
                Some(_) if at + 1 == list.len() => ("└─ ", format!("{indent}   ")),
                Some(_) => ("├─ ", format!("{indent}│  ")),
            };
            let address = &self.order[index];
            let after = if self.others[index].is_empty() {
                String::new()
            } else {
                format!("(also after {})", self.others[index].join(", "))
            };
            let prefix = format!("{indent}{branch}");
            match lifecycle::processes_of(self.processes, address).as_slice() {
                [only] if only.name == address.to_string() => rows.push(Row {
                    prefix,
                    name: address.to_string(),
                    process: Some(only),
                    succeeded: self.succeeded[index],
                    note: after,
                }),
                several => {
                    let note = match (several.is_empty(), self.succeeded[index]) {
                        (true, true) => format!("succeeded {after}"),
                        (true, false) => format!("not running {after}"),
                        (false, _) => after,
                    };
                    rows.push(Row {
                        prefix,
                        name: address.to_string(),
                        process: None,
                        succeeded: self.succeeded[index],
                        note,
                    });
                    let inner = if self.children.contains_key(&Some(index)) {
                        format!("{below}│ ")
                    } else {
                        format!("{below}  ")
                    };
                    let own = format!("{address}/");
                    for process in several {
                        rows.push(Row {
                            prefix: format!("{inner}· "),
                            name: process
                                .name
                                .strip_prefix(&own)
                                .unwrap_or(&process.name)
                                .to_owned(),
                            process: Some(process),
                            succeeded: self.succeeded[index],
                            note: String::new(),
                        });
                    }
                }
            }
            self.walk(Some(index), &below, rows);
        }
    }
}

/// The lines `kip ps` prints (header first), for the state's instances and the supervisor's processes.
fn ps_lines(state: &State, processes: &[ProcessStatus], now_ms: u64) -> Vec<String> {
    let rows = Tree::new(state, processes).rows();
    let width = rows
        .iter()
        .map(|row| row.prefix.chars().count() + row.name.chars().count())
        .chain(std::iter::once(4))
        .max()
        .unwrap_or(4);
    let mut lines = vec![format!(
        "{:<width$}  {:<11} {:>8} {:>8} {:>8}  ADDRESS",
        "NAME", "STATE", "PID", "UPTIME", "RESTARTS"
    )];
    for row in rows {
        let label = format!("{}{}", row.prefix, row.name);
        let pad = width - label.chars().count();
        let Some(process) = row.process else {
            lines.push(
                format!("{label}{:pad$}  {}", "", row.note)
                    .trim_end()
                    .to_owned(),
            );
            continue;
        };
        let uptime = match (&process.state, process.started_at) {
            (ProcessState::Ready | ProcessState::Starting, Some(start)) => {
                uptime(now_ms.saturating_sub(start))
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
        lines.push(
            format!(
                "{label}{:pad$}  {:<11} {pid:>8} {uptime:>8} {:>8}  {target} {}",
                "",
                match process.state {
                    ProcessState::Exited { code: Some(0), .. } if row.succeeded => {
                        "succeeded".to_owned()
                    }
                    ref state => describe(state),
                },
                process.restarts,
                row.note
            )
            .trim_end()
            .to_owned(),
        );
        if let ProcessState::Failed { reason } = &process.state {
            lines.push(format!("{:width$}  └ {reason}", ""));
        }
    }
    lines
}

/// An uptime as people read it: `42s`, `5m12s`, `3h04m`, `2d03h`.
fn uptime(ms: u64) -> String {
    let seconds = ms / 1000;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3600..86400 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{:02}h", seconds / 86400, seconds % 86400 / 3600),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(instances: &[(&str, &[&str], bool)]) -> State {
        let instances: serde_json::Map<String, serde_json::Value> = instances
            .iter()
            .map(|(address, depends_on, succeeded)| {
                let engine = address.split('.').next().unwrap();
                (
                    (*address).to_owned(),
                    serde_json::json!({
                        "engine": engine, "dir": "/d", "data_dir": "/d/data", "run_dir": "/d/run",
                        "log_dir": "/d/log", "depends_on": depends_on,
                        "lifecycle": { "initialized": true, "succeeded": succeeded },
                    }),
                )
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "format_version": kip_core::state::STATE_FORMAT, "serial": 1, "lineage": "l",
            "instances": instances,
        }))
        .unwrap()
    }

    fn process(name: &str, pid: u32, probe: kip_core::engine::ProbeKind) -> ProcessStatus {
        ProcessStatus {
            name: name.to_owned(),
            pid: Some(pid),
            state: ProcessState::Ready,
            started_at: Some(1_000),
            restarts: 0,
            log: PathBuf::from("/d/log"),
            probe,
            instance: name.split('/').next().unwrap().to_owned(),
            start_time: None,
            adopted: false,
        }
    }

    #[test]
    fn ps_is_a_tree_in_dependency_order() {
        use kip_core::engine::ProbeKind;
        let state = state(&[
            ("postgres.main", &[], false),
            ("valkey.cache", &[], false),
            ("s3.store", &[], false),
            ("process.migrate", &["postgres.main"], true),
            (
                "process.web",
                &["postgres.main", "process.migrate", "valkey.cache"],
                false,
            ),
            ("process.worker", &["postgres.main"], false),
        ]);
        let mut failed = process("process.worker", 9, ProbeKind::None);
        failed.pid = None;
        failed.restarts = 3;
        failed.state = ProcessState::Failed {
            reason: "exited(1) 3 times".into(),
        };
        let processes = vec![
            process(
                "postgres.main",
                10,
                ProbeKind::Socket {
                    path: "/d/run/.s.PGSQL.5432".into(),
                },
            ),
            process(
                "valkey.cache",
                11,
                ProbeKind::Socket {
                    path: "/d/run/valkey.sock".into(),
                },
            ),
            process(
                "s3.store/master",
                12,
                ProbeKind::Tcp {
                    host: "127.0.0.1".into(),
                    port: 9333,
                },
            ),
            process("s3.store/volume", 13, ProbeKind::None),
            process(
                "process.web",
                14,
                ProbeKind::Http {
                    url: "http://127.0.0.1:8080/healthz".into(),
                },
            ),
            failed,
        ];
        let lines = ps_lines(&state, &processes, 3_726_000);
        let expected = [
            "NAME                STATE            PID   UPTIME RESTARTS  ADDRESS",
            "postgres.main       ready             10    1h02m        0  /d/run/.s.PGSQL.5432",
            "├─ process.migrate  succeeded",
            "│  └─ process.web   ready             14    1h02m        0  http://127.0.0.1:8080/healthz (also after postgres.main, valkey.cache)",
            "└─ process.worker   failed                               3",
            "                    └ exited(1) 3 times",
            "valkey.cache        ready             11    1h02m        0  /d/run/valkey.sock",
            "s3.store",
            "  · master          ready             12    1h02m        0  127.0.0.1:9333",
            "  · volume          ready             13    1h02m        0",
        ];
        assert_eq!(lines, expected, "\n{}", lines.join("\n"));
    }

    #[test]
    fn uptimes_read_as_people_say_them() {
        assert_eq!(uptime(42_000), "42s");
        assert_eq!(uptime(312_000), "5m12s");
        assert_eq!(uptime(3 * 3_600_000 + 240_000), "3h04m");
        assert_eq!(uptime(2 * 86_400_000 + 3 * 3_600_000), "2d03h");
    }

    /// A damaged state (an instance that depends on itself, two that depend on each other) lists every instance
    /// once and does not panic.
    #[test]
    fn a_state_with_a_dependency_cycle_is_listed_without_a_panic() {
        let state = state(&[
            ("process.a", &["process.a", "process.b"], false),
            ("process.b", &["process.a"], false),
        ]);
        let lines = ps_lines(&state, &[], 1_000);
        assert_eq!(
            lines
                .iter()
                .filter(|line| line.contains("process."))
                .count(),
            2,
            "{lines:#?}"
        );
    }
}
