//! One report for a whole benchmark run: every row any benchmark prints (median, min and max of its runs, peak RSS
//! where measured), the comparisons the issues name (kip against Terraform, kip against each engine's own start)
//! with their ratios, and the machine and versions they were measured on. `kip-bench … --report FILE` writes it as
//! Markdown; `scripts/bench.sh` is the one command that runs everything and writes it.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Median, min and max of some durations.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: Duration,
    pub min: Duration,
    pub max: Duration,
    pub runs: usize,
}

impl Stats {
    pub fn of(times: &[Duration]) -> Stats {
        assert!(!times.is_empty(), "no runs");
        let mut sorted = times.to_vec();
        sorted.sort();
        Stats {
            median: sorted[sorted.len() / 2],
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            runs: sorted.len(),
        }
    }
}

/// How a comparison's ratio reads.
#[derive(Clone, Copy, Debug)]
pub enum Ratio {
    /// The other side's median over kip's: "kip is N× faster" (Terraform).
    Faster,
    /// kip's median over the other side's: "kip takes N× the floor" (an engine's own start).
    OfFloor,
    /// kip's median over the other side's, plainly: "N×" (10,000 objects against 1,000; kip against a cold path).
    Times,
}

/// A step of the Terraform-shaped workflow, for the side-by-side tables (kip's nearest command in brackets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `terraform init` (kip has none: its toolchains resolve during apply).
    Init,
    /// `terraform validate` [`kip lint`].
    Validate,
    /// `terraform plan` with no state [`kip plan`, no state].
    PlanEmpty,
    /// `terraform apply -auto-approve` [`kip apply --auto-approve`].
    Apply,
    /// `terraform plan` after the apply, refreshing everything [`kip plan`, which reads every live object].
    NoopPlan,
    /// `terraform destroy -auto-approve` [`kip destroy --auto-approve`].
    Destroy,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Init,
        Step::Validate,
        Step::PlanEmpty,
        Step::Apply,
        Step::NoopPlan,
        Step::Destroy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Init => "init",
            Step::Validate => "validate / lint",
            Step::PlanEmpty => "plan from empty state",
            Step::Apply => "apply",
            Step::NoopPlan => "no-op plan (refreshes everything)",
            Step::Destroy => "destroy",
        }
    }
}

/// One step measured at one size (objects or resources).
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub size: usize,
    pub step: Step,
    pub stats: Stats,
}

/// Puts kip's steps next to Terraform's of the same size and step, with the ratio and the target.
/// `with_targets`: the targets belong to this table (its shape is the one they were set for).
pub fn side_by_side(table: &str, kip: &[Measured], terraform: &[Measured], with_targets: bool) {
    for ours in kip {
        let Some(theirs) = terraform
            .iter()
            .find(|theirs| theirs.size == ours.size && theirs.step == ours.step)
        else {
            continue;
        };
        let target = match (with_targets, ours.step, ours.size) {
            (true, Step::Apply, 1_000) => "≥ 300× faster",
            (true, Step::NoopPlan, 1_000) => "≥ 200× faster",
            (true, Step::PlanEmpty, 1_000) => "≥ 150× faster",
            _ => "reported",
        };
        compare(
            table,
            &format!("{}, {} objects", ours.step.name(), thousands(ours.size)),
            ours.stats.median,
            ("Terraform 1.0.3", theirs.stats.median),
            Ratio::Faster,
            target,
        );
    }
}

/// 10000 → "10,000".
pub fn thousands(number: usize) -> String {
    let digits = number.to_string();
    let mut text = String::new();
    for (at, digit) in digits.chars().enumerate() {
        if at > 0 && (digits.len() - at).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

struct Row {
    section: String,
    label: String,
    stats: Stats,
    peak_rss_kib: Option<u64>,
}

struct Comparison {
    table: String,
    measure: String,
    kip: Duration,
    other: Duration,
    other_label: String,
    ratio: Ratio,
    target: String,
}

#[derive(Default)]
struct Report {
    section: String,
    rows: Vec<Row>,
    comparisons: Vec<Comparison>,
    notes: Vec<String>,
}

static REPORT: Mutex<Report> = Mutex::new(Report {
    section: String::new(),
    rows: Vec::new(),
    comparisons: Vec::new(),
    notes: Vec::new(),
});

fn report() -> std::sync::MutexGuard<'static, Report> {
    REPORT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn ms(duration: Duration) -> String {
    let millis = duration.as_secs_f64() * 1e3;
    if millis >= 100.0 {
        let whole = millis.round() as u64;
        if whole >= 10_000 {
            format!("{:.1} s", millis / 1e3)
        } else {
            format!("{whole} ms")
        }
    } else {
        format!("{millis:.1} ms")
    }
}

/// Starts a section of rows: printed now, and the heading of the rows that follow in the report.
pub fn header(title: &str) {
    println!("\n{title}");
    println!(
        "  {:<66} {:>9} {:>9} {:>9} {:>5}",
        "", "median", "min", "max", "runs"
    );
    report().section = title.to_owned();
}

/// One measured row: printed now and kept for the report.
pub fn row(label: &str, times: &[Duration]) -> Stats {
    row_with_rss(label, times, None)
}

/// A row with the peak RSS of the measured processes (the largest of the runs), in KiB.
pub fn row_with_rss(label: &str, times: &[Duration], peak_rss_kib: Option<u64>) -> Stats {
    let stats = Stats::of(times);
    let rss = peak_rss_kib.map_or(String::new(), |kib| format!("  peak RSS {}", mib(kib)));
    println!(
        "  {label:<66} {:>9} {:>9} {:>9} {:>5}{rss}",
        ms(stats.median),
        ms(stats.min),
        ms(stats.max),
        stats.runs
    );
    let mut report = report();
    let section = report.section.clone();
    report.rows.push(Row {
        section,
        label: label.trim().to_owned(),
        stats,
        peak_rss_kib,
    });
    stats
}

/// A comparison for the side-by-side tables: kip's median against another tool's or the engine's own.
pub fn compare(
    table: &str,
    measure: &str,
    kip: Duration,
    (other_label, other): (&str, Duration),
    ratio: Ratio,
    target: &str,
) {
    let comparison = Comparison {
        table: table.to_owned(),
        measure: measure.to_owned(),
        kip,
        other,
        other_label: other_label.to_owned(),
        ratio,
        target: target.to_owned(),
    };
    println!(
        "  [{table}] {measure}: kip {} vs {other_label} {}: {}",
        ms(kip),
        ms(other),
        ratio_text(&comparison)
    );
    report().comparisons.push(comparison);
}

/// A sentence for the report's notes (what bounds a number, what was left out).
pub fn note(text: &str) {
    println!("  note: {text}");
    report().notes.push(text.to_owned());
}

fn ratio_text(comparison: &Comparison) -> String {
    let (kip, other) = (comparison.kip.as_secs_f64(), comparison.other.as_secs_f64());
    match comparison.ratio {
        Ratio::Faster => {
            let ratio = other / kip.max(1e-9);
            if ratio >= 10.0 {
                format!("{ratio:.0}× faster")
            } else if ratio >= 1.0 {
                format!("{ratio:.1}× faster")
            } else {
                format!("{:.1}× slower", 1.0 / ratio.max(1e-9))
            }
        }
        Ratio::OfFloor => format!("{:.2}× the floor", kip / other.max(1e-9)),
        Ratio::Times => format!("{:.2}×", kip / other.max(1e-9)),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// What one whole process did: its wall time from spawn to exit, exit status and peak RSS.
pub struct Timed {
    pub elapsed: Duration,
    pub status: ExitStatus,
    /// The peak RSS in KiB, as `/usr/bin/time` reports it (`%M`, "Maximum resident set size" of `-v`).
    pub peak_rss_kib: Option<u64>,
    pub stdout: String,
    pub stderr: String,
}

/// The documented tool that measures a whole process's peak RSS: GNU time.
pub const TIME: &str = "/usr/bin/time";

/// `program` wrapped in `/usr/bin/time -f %M -o rss_file`, when GNU time is there: it writes the peak RSS (KiB) of
/// the program to `rss_file`. Its own fork and exec add ~3 ms to the wall time on the project's 2-core machine
/// (interleaved runs of `kip plan` with and without it): nothing beside Terraform's seconds, a fifth of a 15 ms kip
/// step, so kip's repeated steps are timed without it.
pub fn with_rss(program: &Path, rss_file: &Path) -> Command {
    if Path::new(TIME).is_file() {
        let mut command = Command::new(TIME);
        command.args(["-f", "%M", "-o"]).arg(rss_file).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// The peak RSS `/usr/bin/time` wrote to `rss_file` (then removed), if it did.
pub fn read_rss(rss_file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(rss_file).ok()?;
    let _ = std::fs::remove_file(rss_file);
    text.lines().rev().find_map(|line| line.trim().parse().ok())
}

/// Runs `program ARGS` to its end under `/usr/bin/time`, timed from spawn to exit, output captured.
pub fn timed(program: &Path, args: &[&str], configure: impl FnOnce(&mut Command)) -> Timed {
    use std::io::Read as _;
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let rss_file = std::env::temp_dir().join(format!(
        "kip-bench-rss-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut command = with_rss(program, &rss_file);
    command.args(args);
    configure(&mut command);
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = child.wait().expect("the process ran");
    let elapsed = started.elapsed();
    Timed {
        elapsed,
        status,
        peak_rss_kib: read_rss(&rss_file),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Reads divan's table (`cargo bench -p kip-bench --bench inprocess`, saved to a file) into rows of the report,
/// under `title`: each leaf bench with its median, fastest as min, slowest as max, and its sample count. Returns
/// how many rows it read.
pub fn divan_rows(title: &str, text: &str) -> usize {
    header(title);
    // Names by depth: a line's depth is where its name starts.
    let mut names: Vec<(usize, String)> = Vec::new();
    let mut count = 0;
    for line in text.lines() {
        // The tree's own `│` come before the name; the columns' after it.
        let Some(start) = line.find(|c: char| c.is_alphanumeric() || c == '_') else {
            continue;
        };
        let depth = line[..start].chars().count();
        let columns: Vec<&str> = line[start..].split('│').collect();
        if columns.len() < 5 {
            continue;
        }
        let rest = columns[0];
        let name = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        names.retain(|(at, _)| *at < depth);
        let fastest = rest[name.len()..].trim();
        let (Some(min), Some(max), Some(median), Some(samples)) = (
            parse_divan_time(fastest),
            parse_divan_time(columns[1].trim()),
            parse_divan_time(columns[2].trim()),
            columns[4].trim().parse::<usize>().ok(),
        ) else {
            names.push((depth, name));
            continue;
        };
        let mut path: Vec<&str> = names
            .iter()
            .map(|(_, name)| name.as_str())
            .skip(1)
            .collect();
        path.push(&name);
        let stats = Stats {
            median,
            min,
            max,
            runs: samples,
        };
        println!(
            "  {:<66} {:>9} {:>9} {:>9} {:>5}",
            path.join(" / "),
            ms(median),
            ms(min),
            ms(max),
            samples
        );
        let mut report = report();
        let section = report.section.clone();
        report.rows.push(Row {
            section,
            label: path.join(" / "),
            stats,
            peak_rss_kib: None,
        });
        count += 1;
    }
    count
}

/// "4.692 ms", "805.3 µs", "1.2 s", "45 ns" as divan prints them.
fn parse_divan_time(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_once(' ')?;
    let value: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "s" => value,
        "ms" => value * 1e-3,
        "µs" | "us" => value * 1e-6,
        "ns" => value * 1e-9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// The machine, as the report's heading: cores, memory, the scratch filesystem, kernel.
fn machine(scratch: &Path) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |cores| cores.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or("?".to_owned(), |kib| {
            format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0)
        });
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_default();
    let filesystem = mount_of(scratch);
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {memory} memory, scratch {} on {filesystem}, Linux {kernel}, load average at the end {load}",
        scratch.display()
    )
}

/// The filesystem type and device of the mount holding `path` (the longest mount point that prefixes it).
fn mount_of(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "?".to_owned();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() >= 3 && path.starts_with(fields[1]))
                .then(|| (fields[1].len(), format!("{} ({})", fields[2], fields[0])))
        })
        .max_by_key(|(length, _)| *length)
        .map_or("?".to_owned(), |(_, text)| text)
}

/// Writes the whole report as Markdown to `path`: the heading, the comparisons, every row, the notes.
pub fn write(path: &Path, versions: &[(String, String)], command: &str) {
    let report = report();
    let mut text = String::new();
    let _ = writeln!(text, "# kip benchmark report\n");
    let _ = writeln!(text, "- command: `{command}`");
    let _ = writeln!(text, "- machine: {}", machine(&std::env::temp_dir()));
    for (name, version) in versions {
        let _ = writeln!(text, "- {name}: {version}");
    }
    let mut tables: Vec<&str> = Vec::new();
    for comparison in &report.comparisons {
        if !tables.contains(&comparison.table.as_str()) {
            tables.push(&comparison.table);
        }
    }
    for table in tables {
        let _ = writeln!(text, "\n## {table}\n");
        let _ = writeln!(text, "| measure | kip | other | ratio | target |");
        let _ = writeln!(text, "|---|---:|---:|---:|---|");
        for comparison in report.comparisons.iter().filter(|c| c.table == table) {
            let _ = writeln!(
                text,
                "| {} | {} | {}: {} | {} | {} |",
                comparison.measure,
                ms(comparison.kip),
                comparison.other_label,
                ms(comparison.other),
                ratio_text(comparison),
                comparison.target
            );
        }
    }
    let _ = writeln!(text, "\n## Every measurement\n");
    let _ = writeln!(
        text,
        "| benchmark | case | median | min | max | runs | peak RSS |"
    );
    let _ = writeln!(text, "|---|---|---:|---:|---:|---:|---:|");
    for row in &report.rows {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.section.replace('|', "\\|"),
            row.label.replace('|', "\\|"),
            ms(row.stats.median),
            ms(row.stats.min),
            ms(row.stats.max),
            row.stats.runs,
            row.peak_rss_kib.map_or(String::new(), mib)
        );
    }
    if !report.notes.is_empty() {
        let _ = writeln!(text, "\n## Notes\n");
        for note in &report.notes {
            let _ = writeln!(text, "- {note}");
        }
    }
    std::fs::write(path, text)
        .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
    println!("\nreport written to {}", path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_the_middle_run() {
        let stats = Stats::of(&[
            Duration::from_millis(5),
            Duration::from_millis(1),
            Duration::from_millis(3),
        ]);
        assert_eq!(stats.median, Duration::from_millis(3));
        assert_eq!(stats.min, Duration::from_millis(1));
        assert_eq!(stats.max, Duration::from_millis(5));
    }

    #[test]
    fn a_timed_process_reports_its_status_and_memory() {
        let run = timed(
            Path::new("/bin/sh"),
            &["-c", "echo out; echo err >&2; exit 3"],
            |_| {},
        );
        assert_eq!(run.status.code(), Some(3));
        assert_eq!(run.stdout, "out\n");
        assert_eq!(run.stderr, "err\n");
        if Path::new(TIME).is_file() {
            assert!(
                run.peak_rss_kib.is_some_and(|kib| kib > 0),
                "a shell has a resident set"
            );
        }
    }

    #[test]
    fn divan_tables_become_rows() {
        let text = "\
inprocess        fastest       │ slowest       │ median        │ mean          │ samples │ iters
├─ front_half                  │               │               │               │         │
│  ├─ 1000       4.692 ms      │ 10.41 ms      │ 5.147 ms      │ 5.446 ms      │ 20      │ 20
│  ╰─ 10000      66.74 ms      │ 1.2 s         │ 68.23 ms      │ 69.65 ms      │ 20      │ 20
╰─ locals_chain                │               │               │               │         │
   ╰─ 1000       805.3 µs      │ 3.161 ms      │ 2.728 ms      │ 2.764 ms      │ 10      │ 10
";
        assert_eq!(divan_rows("in-process (divan)", text), 3);
        let report = report();
        let labels: Vec<&str> = report.rows.iter().map(|row| row.label.as_str()).collect();
        assert!(labels.contains(&"front_half / 10000"), "{labels:?}");
        assert!(labels.contains(&"locals_chain / 1000"), "{labels:?}");
        let row = report
            .rows
            .iter()
            .find(|row| row.label == "front_half / 10000")
            .unwrap();
        assert_eq!(row.stats.max, Duration::from_millis(1200));
        assert_eq!(row.stats.runs, 20);
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(100), "100");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(10_000), "10,000");
    }

    #[test]
    fn milliseconds_read_at_every_scale() {
        assert_eq!(ms(Duration::from_micros(5_300)), "5.3 ms");
        assert_eq!(ms(Duration::from_millis(1_234)), "1234 ms");
        assert_eq!(ms(Duration::from_secs(140)), "140.0 s");
    }
}
