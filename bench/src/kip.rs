//! Driving the real release `kip` binary from a benchmark, the way a developer runs it.
//!
//! A [`Harness`] owns a scratch directory (mode 0755: as root, kip runs PostgreSQL as an unprivileged account that
//! must reach it), a cache shared by every project of the run (so the toolchain and the initdb template are cached
//! as on a developer's machine), and the test mirror served on a loopback port. A [`Project`] is a directory with a
//! kip.hcl; dropping it runs `kip destroy --auto-approve`, so no engine outlives the benchmark, even one that
//! panics. A [`Run`] is timed from spawn to exit, and every line kip writes on stderr is stamped as it arrives,
//! which splits an apply into its steps (`postgres.main: provisioning`, `… starting`, …).

use std::io::{BufRead as _, BufReader, Read as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::TestServer;

/// The scratch directory, the shared cache and the mirror for one benchmark run. Removed when dropped.
pub struct Harness {
    pub kip: PathBuf,
    pub root: PathBuf,
    pub cache: PathBuf,
    home: PathBuf,
    server: TestServer,
    projects: std::cell::Cell<usize>,
}

/// Creates `path` (and its parents) with mode 0755.
pub fn open_dir(path: &Path) {
    std::fs::create_dir_all(path)
        .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|error| panic!("cannot chmod {}: {error}", path.display()));
}

/// The release `kip` binary: `KIP_BIN`, else the `kip` that the same `cargo build --release` put beside this
/// benchmark (wherever the target dir and the host's name place it).
fn kip_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KIP_BIN").filter(|value| !value.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .expect("the benchmark's own path")
        .with_file_name("kip")
}

impl Harness {
    /// A scratch root under the temp dir (`TMPDIR` picks the filesystem), the mirror at `mirror`.
    pub fn new(mirror: &Path) -> Harness {
        let kip = kip_binary();
        assert!(
            kip.is_file(),
            "no kip binary at {}: run `cargo build --release -p kip-cli`, or set KIP_BIN",
            kip.display()
        );
        let root = std::env::temp_dir().join(format!("kip-bench-apply-{}", std::process::id()));
        let cache = root.join("cache");
        let home = root.join("home");
        for dir in [&root, &cache, &home] {
            open_dir(dir);
        }
        Harness {
            kip,
            root,
            cache,
            home,
            server: TestServer::serve(mirror),
            projects: std::cell::Cell::new(0),
        }
    }

    /// A new project directory holding `config` as kip.hcl, using the shared cache.
    pub fn project(&self, config: &str) -> Project<'_> {
        let index = self.projects.get();
        self.projects.set(index + 1);
        let dir = self.root.join(format!("project-{index}"));
        open_dir(&dir);
        let project = Project {
            harness: self,
            dir,
            cache: self.cache.clone(),
            log: None,
        };
        project.write_config(config);
        project
    }

    /// How many requests the mirror answered so far.
    pub fn mirror_requests(&self) -> usize {
        self.server.total_requests()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // The account kip made ahead of the next new project (as root) goes with the cache it is kept in.
        let _ = Command::new(&self.kip)
            .args(["cache", "prune"])
            .env("KIP_HOME", &self.home)
            .env("KIP_CACHE_DIR", &self.cache)
            .output();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// One project: a directory with kip.hcl. Dropping it destroys whatever it runs and removes the directory.
pub struct Project<'h> {
    harness: &'h Harness,
    pub dir: PathBuf,
    cache: PathBuf,
    /// KIP_LOG for every command of this project (the supervisor inherits it and logs "ready after N ms").
    log: Option<&'static str>,
}

impl Project<'_> {
    fn rss_file(&self) -> PathBuf {
        self.dir.with_extension("rss")
    }

    /// Use `cache` (mode 0755) instead of the shared cache.
    pub fn with_cache(mut self, cache: PathBuf) -> Self {
        self.cache = cache;
        self
    }

    /// Run every command with `KIP_LOG=level`.
    pub fn with_log(mut self, level: &'static str) -> Self {
        self.log = Some(level);
        self
    }

    pub fn write_config(&self, config: &str) {
        let path = self.dir.join("kip.hcl");
        std::fs::write(&path, config)
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
    }

    /// The account the project's postgres.main runs as, from its state (kip picks one when run as root).
    pub fn run_as(&self) -> Option<kip_core::engine::RunAs> {
        let path = self.dir.join(".kip/state.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        let state: serde_json::Value = serde_json::from_str(&text).expect("the state is JSON");
        serde_json::from_value(state["instances"]["postgres.main"]["run_as"].clone()).ok()
    }

    /// The supervisor's log (`.kip/logs/supervisor.log`), empty when there is none.
    pub fn supervisor_log(&self) -> String {
        std::fs::read_to_string(self.dir.join(".kip/logs/supervisor.log")).unwrap_or_default()
    }

    /// `kip ARGS` in this project with a clean environment: the user's KIP_* and XDG_* are dropped, the cache,
    /// data dir and mirror are the harness's.
    fn command(&self, args: &[&str], rss: bool) -> Command {
        let mut command = if rss {
            crate::report::with_rss(&self.harness.kip, &self.rss_file())
        } else {
            Command::new(&self.harness.kip)
        };
        command.args(args).current_dir(&self.dir);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("KIP_") || key.starts_with("XDG_") || key == "NO_COLOR" {
                command.env_remove(key.as_ref());
            }
        }
        command
            .env("KIP_HOME", &self.harness.home)
            .env("KIP_CACHE_DIR", &self.cache)
            .env("KIP_MIRROR", self.harness.server.base_url())
            .env("NO_COLOR", "1");
        if let Some(level) = self.log {
            command.env("KIP_LOG", level);
        }
        // A cache of its own is removed right after its project: an account made ahead of time in it would be
        // left behind.
        if self.cache != self.harness.cache {
            command.env("KIP_SPARE_ACCOUNTS", "0");
        }
        command
    }

    /// Runs `kip ARGS`, timed from spawn to exit, stderr lines stamped on arrival.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_measured(args, false)
    }

    /// Runs `kip ARGS` as [`Project::run`] does, under `/usr/bin/time`, so that the [`Run`] has its peak RSS. The
    /// wrapper's own fork and exec are timed with it: ~3 ms here, a fifth of a 15 ms step. So the steps that
    /// change nothing are timed without it and measured for RSS once more, untimed; apply and destroy, which
    /// cannot run twice, are timed with it.
    pub fn run_with_rss(&self, args: &[&str]) -> Run {
        self.run_measured(args, true)
    }

    fn run_measured(&self, args: &[&str], rss: bool) -> Run {
        let mut command = self.command(args, rss);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", self.harness.kip.display()));
        let mut stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let out = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let err = std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .map(|line| (started.elapsed(), line))
                .collect::<Vec<_>>()
        });
        let status = child.wait().expect("kip ran");
        let elapsed = started.elapsed();
        let peak_rss_kib = rss
            .then(|| crate::report::read_rss(&self.rss_file()))
            .flatten();
        Run {
            args: args.join(" "),
            elapsed,
            code: status.code().unwrap_or(-1),
            peak_rss_kib,
            stdout: out.join().expect("stdout reader"),
            lines: err.join().expect("stderr reader"),
        }
    }

    /// Runs `kip ARGS` and asserts it exits with `code`.
    pub fn expect(&self, code: i32, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, code, "{}", run.describe());
        run
    }
}

impl Drop for Project<'_> {
    fn drop(&mut self) {
        if self.dir.join(".kip").exists() {
            let run = self.run(&["destroy", "--auto-approve"]);
            if run.code != 0 {
                eprintln!("warning: {}", run.describe());
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one kip command did, and when.
#[derive(Debug)]
pub struct Run {
    pub args: String,
    pub elapsed: Duration,
    pub code: i32,
    /// The process's peak RSS in KiB, from `/usr/bin/time`, for a [`Project::run_with_rss`].
    pub peak_rss_kib: Option<u64>,
    pub stdout: String,
    /// Every stderr line with the time since spawn at which it arrived.
    pub lines: Vec<(Duration, String)>,
}

impl Run {
    /// When the first stderr line containing `text` arrived.
    pub fn at(&self, text: &str) -> Option<Duration> {
        self.lines
            .iter()
            .find(|(_, line)| line.contains(text))
            .map(|(at, _)| *at)
    }

    /// The time between two stderr lines (by their text), or from spawn (`None`) / to exit (`None`).
    pub fn between(&self, from: Option<&str>, to: Option<&str>) -> Duration {
        let start = from.map_or(Some(Duration::ZERO), |text| self.at(text));
        let end = to.map_or(Some(self.elapsed), |text| self.at(text));
        match (start, end) {
            (Some(start), Some(end)) => end.saturating_sub(start),
            _ => panic!(
                "kip {}: no line {from:?} or {to:?}\n{}",
                self.args,
                self.describe()
            ),
        }
    }

    /// The `elapsed=…` field of the first stderr line containing `text` (kip's debug logs print `Duration`s).
    pub fn logged_elapsed(&self, text: &str) -> Option<Duration> {
        self.lines
            .iter()
            .find(|(_, line)| line.contains(text))
            .and_then(|(_, line)| field(line, "elapsed="))
            .and_then(parse_debug_duration)
    }

    pub fn describe(&self) -> String {
        let stderr: Vec<&str> = self.lines.iter().map(|(_, line)| line.as_str()).collect();
        format!(
            "kip {} exited {}\n--- stdout\n{}--- stderr\n{}",
            self.args,
            self.code,
            self.stdout,
            stderr.join("\n")
        )
    }
}

/// The value of `name…` in a log line, up to the next space.
pub fn field<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    let start = line.find(name)? + name.len();
    line[start..].split_whitespace().next()
}

/// A `Duration`'s Debug text: `343.43ms`, `1.49s`, `812µs`, `120ns`.
pub fn parse_debug_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "µs" | "us" => value / 1e6,
        "ns" => value / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_debug_durations_from_log_lines() {
        let line = "DEBUG kip_providers::postgres::sql: applied phase=Databases changes=1 elapsed=343.436227ms";
        assert_eq!(
            field(line, "elapsed=").and_then(parse_debug_duration),
            Some(Duration::from_secs_f64(0.343436227))
        );
        assert_eq!(
            parse_debug_duration("1.5s"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_debug_duration("812µs"),
            Some(Duration::from_micros(812))
        );
        assert_eq!(parse_debug_duration("soon"), None);
    }
}
