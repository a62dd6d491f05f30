//! `process` blocks end to end: the real `kip` binary runs the user's own programs (small shell scripts and
//! `python3 -m http.server`, written into the test's project) under its supervisor, and each test checks what
//! the programs themselves saw or recorded: their environment, directory and arguments, the signals they caught,
//! when they started and stopped. Every test's guard destroys the project when dropped (also when an assertion
//! failed), then stops whatever of the project is still alive, found through `/proc`. Ports are free loopback
//! ports picked at run time, never fixed ones.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::support::{Project, Run, alive, free_port};

/// A project of processes; destroys it when dropped, and then stops anything of it that still runs.
struct Processes {
    project: Project,
}

impl Drop for Processes {
    fn drop(&mut self) {
        let _ = self.project.kip(&["destroy", "--auto-approve"]);
        stop_leftovers(self.project.path());
    }
}

impl Processes {
    fn new(config: &str) -> Processes {
        Processes {
            project: Project::with_config(config),
        }
    }

    fn path(&self) -> &Path {
        self.project.path()
    }

    /// Writes an executable shell script.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        self.executable(name, &format!("#!/bin/sh\n{body}"))
    }

    /// Writes an executable file.
    fn executable(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.project.write(name, contents);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        path
    }

    fn config(&self, config: &str) {
        self.project.write("kip.hcl", config);
    }

    fn kip(&self, args: &[&str]) -> Run {
        self.project.kip(args)
    }

    fn ok(&self, args: &[&str]) -> Run {
        let run = self.kip(args);
        assert_eq!(run.code, 0, "kip {}\n{}", args.join(" "), run.snapshot());
        run
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name))
            .unwrap_or_else(|error| panic!("reading {name}: {error}"))
    }

    /// `kip ps --json`.
    fn ps(&self) -> Vec<Json> {
        let run = self.ok(&["ps", "--json"]);
        serde_json::from_str(&run.stdout).unwrap_or_else(|error| {
            panic!("kip ps --json prints JSON: {error}\n{}", run.snapshot())
        })
    }

    fn status(&self, name: &str) -> Json {
        let processes = self.ps();
        processes
            .iter()
            .find(|process| process["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("kip ps lists {name}\n{processes:#?}"))
    }

    /// The pid of `name`, which must run ready.
    fn pid(&self, name: &str) -> u32 {
        let status = self.status(name);
        assert_eq!(status["state"]["kind"], "ready", "{status:#}");
        status["pid"].as_u64().unwrap() as u32
    }

    /// Waits until `ready` holds, up to `timeout`; panics with `what` otherwise.
    fn wait_until(&self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !ready() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Stops what a test left running under `root` (after its destroy): any process whose working directory is in
/// the project, or whose command line names the project's `.kip` directory (its supervisor).
fn stop_leftovers(root: &Path) {
    let own = std::process::id();
    let kip_dir = root.join(".kip").display().to_string();
    let working = kip_core::supervisor::working_in(root);
    for pid in crate::support::all_pids() {
        if pid == own {
            continue;
        }
        let in_project = working.contains(&pid);
        let supervisor = crate::support::cmdline(pid)
            .iter()
            .any(|arg| arg.contains(&kip_dir));
        if in_project || supervisor {
            eprintln!("process tests: stopping {pid}, left running");
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn kill9(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The nanosecond timestamps (`date +%s%N`) in a file, one a line.
fn timestamps(text: &str) -> Vec<u128> {
    text.lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// A `sh` loop that keeps a process alive and lets it react to signals between short sleeps.
const IDLE: &str = "while :; do sleep 0.05; done\n";

#[test]
fn every_argument_and_probe_kind_takes_effect() {
    let http_port = free_port();
    let tcp_port = free_port();
    let stack = Processes::new("");
    std::fs::create_dir_all(stack.path().join("www")).unwrap();
    std::fs::write(stack.path().join("www/health.txt"), "ok").unwrap();
    std::fs::create_dir_all(stack.path().join("work dir ü")).unwrap();
    stack.project.write(
        "vars.env",
        "# settings for the worker\nFROM_FILE='from the file'\nBOTH=file\nexport EXPORTED=\"yes\\tthen tab\"\n",
    );
    // Records what it was started with, then becomes ready (its exec probe looks for ready.flag) after a while:
    // apply must not return before that.
    stack.script(
        "work dir ü/worker.sh",
        &format!(
            "pwd > seen.txt\nenv | grep -E '^(API_URL|API_PORT|FROM_FILE|BOTH|EXPORTED|COUNT|FLAG)=' | sort >> seen.txt\n\
             sleep 0.3\ntouch ready.flag\n{IDLE}"
        ),
    );
    stack.script(
        "logger.sh",
        &format!("echo booting\nsleep 0.3\necho \"listening on port 42\"\n{IDLE}"),
    );
    stack.executable(
        "sock.py",
        "#!/usr/bin/env python3\nimport socket, time\ntime.sleep(0.3)\n\
         s = socket.socket(socket.AF_UNIX)\ns.bind('app.sock')\ns.listen()\nwhile True:\n    c, _ = s.accept()\n    c.close()\n",
    );
    stack.executable(
        "tcp.py",
        &format!(
            "#!/usr/bin/env python3\nimport socket, time\ntime.sleep(0.3)\n\
             s = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('127.0.0.1', {tcp_port}))\ns.listen()\nwhile True:\n    c, _ = s.accept()\n    c.close()\n"
        ),
    );
    stack.config(&format!(
        r#"process "api" {{
  command     = ["python3", "-m", "http.server", "{http_port}", "--bind", "127.0.0.1"]
  working_dir = "www"
  port        = {http_port}
  ready {{
    http = "http://127.0.0.1:{http_port}/health.txt"
  }}
}}

process "worker" {{
  command     = ["./worker.sh"]
  working_dir = "work dir ü"
  env_file    = "vars.env"
  env = {{
    API_URL  = process.api.url
    API_PORT = process.api.port
    BOTH     = "env wins"
    COUNT    = 3
    FLAG     = true
  }}
  ready {{
    exec     = ["test", "-f", "ready.flag"]
    interval = "50ms"
  }}
}}

process "logger" {{
  command = ["./logger.sh"]
  ready {{
    log_line = "listening on port [0-9]+"
  }}
}}

process "sock" {{
  command = ["./sock.py"]
  ready {{
    socket   = "app.sock"
    interval = "20ms"
  }}
}}

process "tcp" {{
  command = ["./tcp.py"]
  ready {{
    tcp           = "127.0.0.1:{tcp_port}"
    initial_delay = "100ms"
    interval      = "20ms"
    timeout       = "20s"
  }}
}}
"#
    ));
    stack.ok(&["apply", "--auto-approve"]);

    // Each probe held apply until what it checks was true.
    let body = std::fs::read_to_string(stack.path().join("www/health.txt")).unwrap();
    assert_eq!(body, "ok");
    let mut http = std::net::TcpStream::connect(("127.0.0.1", http_port)).unwrap();
    std::io::Write::write_all(
        &mut http,
        b"GET /health.txt HTTP/1.0\r\nHost: localhost\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut http, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(stack.path().join("work dir ü/ready.flag").exists());
    assert!(
        stack
            .read(".kip/logs/process.logger/process.log")
            .contains("listening on port 42")
    );
    std::os::unix::net::UnixStream::connect(stack.path().join("app.sock"))
        .expect("the socket probe passed, so the socket accepts connections");
    std::net::TcpStream::connect(("127.0.0.1", tcp_port))
        .expect("the tcp probe passed, so the port accepts connections");

    // The worker ran in its working_dir, with env_file's variables, env over them, and another block's exports.
    let seen = stack.read("work dir ü/seen.txt");
    let mut lines = seen.lines();
    assert_eq!(
        lines.next().unwrap(),
        stack.path().join("work dir ü").display().to_string()
    );
    let variables: Vec<&str> = lines.collect();
    assert_eq!(
        variables,
        [
            format!("API_PORT={http_port}").as_str(),
            format!("API_URL=http://127.0.0.1:{http_port}").as_str(),
            "BOTH=env wins",
            "COUNT=3",
            "EXPORTED=yes\tthen tab",
            "FLAG=true",
            "FROM_FILE=from the file",
        ],
        "{seen}"
    );
    for name in [
        "process.api",
        "process.worker",
        "process.logger",
        "process.sock",
        "process.tcp",
    ] {
        stack.pid(name);
    }
    // Nothing changed: nothing to do.
    let plan = stack.ok(&["plan", "--detailed-exitcode"]);
    assert!(plan.stdout.contains("No changes"), "{}", plan.snapshot());
}

#[test]
fn restart_on_failure_waits_restart_delay_doubling_until_the_budget_then_ps_says_failed() {
    let stack = Processes::new(
        r#"process "svc" {
  command       = ["./svc.sh"]
  restart       = "on_failure"
  max_restarts  = 2
  restart_delay = "400ms"
}
"#,
    );
    stack.script("svc.sh", &format!("date +%s%N >> starts.txt\n{IDLE}"));
    stack.ok(&["apply", "--auto-approve"]);
    let mut kills = Vec::new();
    let mut pid = stack.pid("process.svc");
    for restart in 1..=2u64 {
        kills.push(now_nanos());
        kill9(pid);
        stack.wait_until("the restart", Duration::from_secs(20), || {
            let status = stack.status("process.svc");
            status["state"]["kind"] == "ready" && status["restarts"] == restart
        });
        let next = stack.pid("process.svc");
        assert_ne!(next, pid);
        pid = next;
    }
    let starts = timestamps(&stack.read("starts.txt"));
    assert_eq!(starts.len(), 3, "{starts:?}");
    // 400 ms before the first restart, twice that before the second.
    let first = (starts[1] - kills[0]) / 1_000_000;
    let second = (starts[2] - kills[1]) / 1_000_000;
    assert!(
        (400..3_000).contains(&first),
        "first restart after {first} ms"
    );
    assert!(
        (800..4_000).contains(&second),
        "second restart after {second} ms"
    );

    // The budget is spent: the third SIGKILL leaves it failed, with the reason.
    kill9(pid);
    stack.wait_until("the failed state", Duration::from_secs(20), || {
        stack.status("process.svc")["state"]["kind"] == "failed"
    });
    let status = stack.status("process.svc");
    let reason = status["state"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("SIGKILL")
            && reason.contains("gave up after 2 restarts in a row (max_restarts = 2)"),
        "{reason}"
    );
    let ps = stack.ok(&["ps"]);
    assert!(ps.stdout.contains("failed"), "{}", ps.snapshot());
    assert!(ps.stdout.contains("max_restarts = 2"), "{}", ps.snapshot());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        timestamps(&stack.read("starts.txt")).len(),
        3,
        "no restart past the budget"
    );
    // apply starts it again.
    stack.ok(&["apply", "--auto-approve"]);
    stack.pid("process.svc");
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn stop_signal_stop_command_and_stop_timeout_take_effect() {
    let stack = Processes::new(
        r#"process "graceful" {
  command     = ["./graceful.sh"]
  stop_signal = "SIGUSR1"
}

process "commanded" {
  command      = ["./commanded.sh"]
  stop_command = ["sh", "-c", "echo \"$KIP_STOP_PID\" > stop-command.txt; kill -INT \"$KIP_STOP_PID\""]
}

process "stubborn" {
  command      = ["./stubborn.sh"]
  stop_timeout = "700ms"
}
"#,
    );
    stack.script(
        "graceful.sh",
        &format!("trap 'echo USR1 > graceful.txt; exit 0' USR1\n{IDLE}"),
    );
    stack.script(
        "commanded.sh",
        &format!("trap 'echo INT > commanded.txt; exit 0' INT\n{IDLE}"),
    );
    // Catches SIGTERM, says so, and carries on: only SIGKILL ends it.
    stack.script(
        "stubborn.sh",
        &format!("trap 'echo TERM >> stubborn.txt' TERM\n{IDLE}"),
    );
    stack.ok(&["apply", "--auto-approve"]);
    let commanded = stack.pid("process.commanded");
    let stubborn = stack.pid("process.stubborn");
    let started = Instant::now();
    stack.ok(&["down"]);
    let took = started.elapsed();
    assert_eq!(stack.read("graceful.txt").trim(), "USR1");
    assert_eq!(stack.read("stop-command.txt").trim(), commanded.to_string());
    assert_eq!(stack.read("commanded.txt").trim(), "INT");
    assert_eq!(stack.read("stubborn.txt").trim(), "TERM");
    assert!(!alive(stubborn), "SIGKILL followed stop_timeout");
    assert!(took >= Duration::from_millis(700), "down took {took:?}");
    let log = stack.read(".kip/logs/process.commanded/process.log");
    assert!(log.contains("running the stop command"), "{log}");
}

#[test]
fn a_job_that_succeeded_runs_again_only_when_its_configuration_changes() {
    let config = |greeting: &str| {
        format!(
            r#"process "migrate" {{
  command = ["./migrate.sh"]
  restart = "no"
  env     = {{ GREETING = "{greeting}" }}
}}

process "web" {{
  command = ["./web.sh"]
  wait_for "process.migrate" {{
    condition = "succeeded"
  }}
}}
"#
        )
    };
    let stack = Processes::new(&config("hello"));
    stack.script(
        "migrate.sh",
        "echo \"migrated $GREETING\" >> side-effect.txt\n",
    );
    stack.script(
        "web.sh",
        &format!("test -f side-effect.txt || exit 7\necho web >> web-starts.txt\n{IDLE}"),
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.read("side-effect.txt"), "migrated hello\n");
    assert_eq!(stack.status("process.migrate")["state"]["code"], 0);
    let web = stack.pid("process.web");

    // Applied again, through down and up, and after a supervisor restart: the job does not run again.
    let plan = stack.ok(&["plan", "--detailed-exitcode"]);
    assert!(plan.stdout.contains("No changes"), "{}", plan.snapshot());
    stack.ok(&["apply", "--auto-approve"]);
    stack.ok(&["down"]);
    let up = stack.ok(&["up"]);
    assert!(
        up.stdout.contains("process.migrate: succeeded before"),
        "{}",
        up.snapshot()
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.read("side-effect.txt"), "migrated hello\n");
    assert_ne!(stack.pid("process.web"), web, "web was started again by up");

    // Its configuration changed: planned as an update of that attribute, and run once more.
    stack.config(&config("again"));
    let plan = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.snapshot());
    assert!(
        plan.stdout.contains("~ process.migrate (instance)"),
        "{}",
        plan.snapshot()
    );
    assert!(
        plan.stdout
            .contains(r#"env = {"GREETING":"hello"} -> {"GREETING":"again"}"#),
        "{}",
        plan.snapshot()
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        stack.read("side-effect.txt"),
        "migrated hello\nmigrated again\n"
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        stack.read("side-effect.txt"),
        "migrated hello\nmigrated again\n"
    );
}

#[test]
fn a_failing_job_fails_the_apply_quotes_its_output_and_its_dependents_are_skipped_once() {
    let stack = Processes::new(
        r#"process "migrate" {
  command = ["./migrate.sh"]
  restart = "no"
}

process "web" {
  command = ["./web.sh"]
  wait_for "process.migrate" {
    condition = "succeeded"
  }
}

process "worker" {
  command    = ["./web.sh"]
  depends_on = [process.web]
}

process "independent" {
  command = ["sleep", "60"]
}
"#,
    );
    stack.script(
        "migrate.sh",
        "echo 'applying migration 0007'\necho 'ERROR: relation \"orders\" does not exist' >&2\nexit 3\n",
    );
    stack.script("web.sh", &format!("echo started >> web-ran.txt\n{IDLE}"));
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr
            .contains("the job `process.migrate` exited with code 3"),
        "{}",
        run.snapshot()
    );
    assert!(
        run.stderr.contains("| applying migration 0007"),
        "{}",
        run.snapshot()
    );
    assert!(
        run.stderr
            .contains(r#"| ERROR: relation "orders" does not exist"#),
        "{}",
        run.snapshot()
    );
    // One failure, its dependents named once as skipped, nothing of them run; the rest applied.
    assert_eq!(
        run.stderr.matches("error:").count(),
        1,
        "{}",
        run.snapshot()
    );
    assert_eq!(
        run.stderr.matches("process.web").count(),
        1,
        "{}",
        run.snapshot()
    );
    assert_eq!(
        run.stderr.matches("process.worker").count(),
        1,
        "{}",
        run.snapshot()
    );
    assert!(
        run.stderr
            .contains("skipped what depends on it: process.web, process.worker"),
        "{}",
        run.snapshot()
    );
    assert!(!stack.path().join("web-ran.txt").exists());
    stack.pid("process.independent");

    // Fixed, the next apply runs the job and starts what waited for it.
    stack.script("migrate.sh", "echo 'applying migration 0007'\n");
    stack.ok(&["apply", "--auto-approve"]);
    stack.pid("process.web");
    stack.pid("process.worker");
}

#[test]
fn a_missing_command_an_early_exit_and_a_probe_that_never_passes_are_clear_errors() {
    let port = free_port();
    let stack = Processes::new(&format!(
        r#"process "missing" {{
  command = ["./bin/does-not-exist", "--flag"]
}}

process "unknown" {{
  command = ["no-such-program-kip-test"]
}}

process "early" {{
  command = ["./early.sh"]
}}

process "never" {{
  command = ["./never.sh"]
  ready {{
    tcp      = "127.0.0.1:{port}"
    interval = "50ms"
    timeout  = "1s"
  }}
}}

process "retried" {{
  command = ["sleep", "60"]
  ready {{
    exec     = ["test", "-f", "never-there"]
    interval = "50ms"
    retries  = 2
  }}
}}

process "after_never" {{
  command    = ["sleep", "60"]
  depends_on = [process.never]
}}
"#
    ));
    stack.script(
        "early.sh",
        "echo 'config file /etc/app.toml not found' >&2\nexit 2\n",
    );
    stack.script(
        "never.sh",
        &format!("echo 'booting, but never listening'\n{IDLE}"),
    );
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    let stderr = &run.stderr;
    assert!(
        stderr.contains("error: process.missing failed")
            && stderr.contains("[PROJECT]/./bin/does-not-exist): No such file or directory"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: process.unknown failed")
            && stderr.contains(r#"cannot find the program "no-such-program-kip-test" on PATH"#),
        "{stderr}"
    );
    assert!(
        stderr.contains("`process.early` exited before it was ready (exited with code 2)")
            && stderr.contains("| config file /etc/app.toml not found"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "`process.never` did not become ready: its tcp (127.0.0.1:{port}) probe did not pass within"
        )) && stderr.contains("| booting, but never listening"),
        "{stderr}"
    );
    assert!(
        stderr.contains("its exec (`test -f never-there`) probe did not pass")
            && stderr.contains("3 checks failed (retries = 2)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("skipped what depends on it: process.after_never"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("process.after_never").count(), 1, "{stderr}");
    // Nothing of the failed ones is left running; ps says why each failed.
    for name in ["process.early", "process.never", "process.retried"] {
        let status = stack.status(name);
        assert_eq!(status["state"]["kind"], "failed", "{status:#}");
        assert!(status["pid"].is_null(), "{status:#}");
    }
}

#[test]
fn down_and_destroy_stop_a_dependent_before_what_it_uses() {
    let db_port = free_port();
    let stack = Processes::new(&format!(
        r#"process "db" {{
  command = ["./stopper.sh", "db"]
  port    = {db_port}
}}

process "web" {{
  command = ["./stopper.sh", "web"]
  env     = {{ DB_PORT = process.db.port }}
}}

process "edge" {{
  command = ["./stopper.sh", "edge"]
  wait_for "process.web" {{}}
}}
"#
    ));
    // On SIGTERM: record when it began stopping, take 300 ms to shut down, record when it finished.
    stack.script(
        "stopper.sh",
        &format!(
            "trap 'date +%s%N > \"$1.stopping\"; sleep 0.3; date +%s%N > \"$1.stopped\"; exit 0' TERM\n{IDLE}"
        ),
    );
    let order = |stack: &Processes| {
        let at = |file: &str| timestamps(&stack.read(file))[0];
        // Each began stopping only after what depends on it had stopped.
        assert!(
            at("edge.stopped") <= at("web.stopping"),
            "edge stopped before web"
        );
        assert!(
            at("web.stopped") <= at("db.stopping"),
            "web stopped before db"
        );
        for name in ["db", "web", "edge"] {
            for suffix in ["stopping", "stopped"] {
                std::fs::remove_file(stack.path().join(format!("{name}.{suffix}"))).unwrap();
            }
        }
    };
    stack.ok(&["apply", "--auto-approve"]);
    stack.ok(&["down"]);
    order(&stack);
    stack.ok(&["up"]);
    stack.pid("process.edge");
    let destroy = stack.ok(&["destroy", "--auto-approve"]);
    order(&stack);
    assert!(
        destroy.stdout.contains("3 instance(s) destroyed"),
        "{}",
        destroy.snapshot()
    );
    assert!(stack.ps().is_empty());
}

#[test]
fn a_changed_process_restarts_alone_and_its_unchanged_siblings_keep_their_pids() {
    let config = |argument: &str| {
        format!(
            r#"process "a" {{
  command = ["./serve.sh", "{argument}"]
}}

process "b" {{
  command = ["./serve.sh", "b"]
}}

process "reader" {{
  command = ["./serve.sh", "reader"]
  env     = {{ A_HOST = process.a.host }}
}}
"#
        )
    };
    let stack = Processes::new(&config("one"));
    stack.script(
        "serve.sh",
        &format!("echo \"$1\" >> \"starts-$1.txt\"\n{IDLE}"),
    );
    stack.ok(&["apply", "--auto-approve"]);
    let a = stack.pid("process.a");
    let b = stack.pid("process.b");
    let reader = stack.pid("process.reader");

    stack.config(&config("two"));
    let plan = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.snapshot());
    assert!(
        plan.stdout.contains("~ process.a (instance)"),
        "{}",
        plan.snapshot()
    );
    assert!(
        plan.stdout
            .contains(r#"command = ["./serve.sh","one"] -> ["./serve.sh","two"]"#),
        "{}",
        plan.snapshot()
    );
    assert!(!plan.stdout.contains("process.b"), "{}", plan.snapshot());
    stack.ok(&["apply", "--auto-approve"]);
    assert_ne!(stack.pid("process.a"), a, "the changed process restarted");
    assert!(!alive(a));
    assert_eq!(
        stack.pid("process.b"),
        b,
        "an unchanged sibling keeps its pid"
    );
    // What reads a's exports, which did not change, keeps running too.
    assert_eq!(stack.pid("process.reader"), reader);
    assert_eq!(stack.read("starts-reader.txt"), "reader\n");
    assert_eq!(stack.read("starts-two.txt"), "two\n");
}

/// Kills a `kip logs -f` child when dropped.
struct Follower(Child);

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn logs_follow_prints_the_lines_a_process_writes_later() {
    let stack = Processes::new(
        r#"process "ticker" {
  command = ["./ticker.sh"]
  ready {
    log_line = "tick 1$"
  }
}
"#,
    );
    stack.script(
        "ticker.sh",
        "n=0\nwhile :; do n=$((n+1)); echo \"tick $n\"; sleep 0.1; done\n",
    );
    stack.ok(&["apply", "--auto-approve"]);
    let mut command = stack
        .project
        .command(&["logs", "process.ticker", "-f", "-n", "1"]);
    command.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut follower = Follower(command.spawn().unwrap());
    let stdout = follower.0.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut ticks = Vec::new();
    while ticks.len() < 6 {
        let line = receiver
            .recv_timeout(Duration::from_secs(10))
            .expect("kip logs -f prints the new lines")
            .unwrap();
        if let Some(tick) = line.strip_prefix("tick ") {
            ticks.push(tick.parse::<u32>().unwrap());
        }
    }
    // Consecutive ticks, written after it started following.
    assert!(
        ticks.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{ticks:?}"
    );
    drop(follower);
}

#[test]
fn wait_for_an_unknown_node_or_in_a_cycle_is_a_lint_error_with_its_span() {
    let stack = Processes::new(
        r#"process "web" {
  command = ["./web"]
  wait_for "process.migrate" {
    condition = "succeeded"
  }
  wait_for "postgres.main" {}
  wait_for "process.web\"; rm -rf / #ü 🚀 $(x)" {}
}

process "migrate_job" {
  command = ["./migrate"]
  restart = "sometimes"
  stop_timeout = "soon"
  max_restarts = -1
  ready {
    exec    = ["./check"]
    retries = 2.5
  }
}
"#,
    );
    insta::assert_snapshot!("process_wait_for_unknown", stack.kip(&["lint"]).snapshot());

    stack.config(
        r#"process "a" {
  command = ["./a"]
  wait_for "process.c" {
    condition = "started"
  }
}

process "b" {
  command = ["./b"]
  wait_for "process.a" {}
}

process "c" {
  command = ["./c"]
  wait_for "process.b" {
    condition = "succeeded"
  }
}
"#,
    );
    insta::assert_snapshot!("process_wait_for_cycle", stack.kip(&["lint"]).snapshot());
}

#[test]
fn hostile_arguments_values_and_directories_reach_the_program_verbatim() {
    let stack = Processes::new("");
    let dir = "dir with spaces, 'quotes' & ünïcødé $(touch pwned)";
    std::fs::create_dir_all(stack.path().join(dir)).unwrap();
    stack.script(
        &format!("{dir}/show args.sh"),
        &format!(
            "for argument in \"$@\"; do printf '[%s]\\n' \"$argument\"; done > args.txt\n\
             printf '%s' \"$WEIRD\" > weird.txt\n{IDLE}"
        ),
    );
    let weird = r#"it's "quoted" $HOME `id` ; | & > < * ~ ü 🚀 \ back"#;
    let hcl_string = |text: &str| {
        text.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace("${", "$${")
    };
    stack.config(&format!(
        r#"process "weird" {{
  command     = ["./show args.sh", "a b", "$(touch pwned)", "'; rm -f kip.hcl; '", "ü🚀", ""]
  working_dir = "{}"
  env         = {{ WEIRD = "{}" }}
}}
"#,
        hcl_string(dir),
        hcl_string(weird)
    ));
    stack.ok(&["apply", "--auto-approve"]);
    stack.pid("process.weird");
    let args = stack.read(&format!("{dir}/args.txt"));
    assert_eq!(
        args, "[a b]\n[$(touch pwned)]\n['; rm -f kip.hcl; ']\n[ü🚀]\n[]\n",
        "{args}"
    );
    assert_eq!(stack.read(&format!("{dir}/weird.txt")), weird);
    assert!(!stack.path().join("pwned").exists());
    assert!(!stack.path().join(dir).join("pwned").exists());
    assert!(stack.path().join("kip.hcl").exists());
    let logs = stack.ok(&["logs", "process.weird"]);
    assert!(logs.stdout.contains("show args.sh"), "{}", logs.snapshot());
}

#[test]
fn a_bad_env_file_is_an_apply_error_naming_the_file_and_line() {
    let stack = Processes::new(
        r#"process "web" {
  command  = ["sleep", "60"]
  env_file = "app.env"
}
"#,
    );
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr
            .contains("cannot read the env_file [PROJECT]/app.env"),
        "{}",
        run.snapshot()
    );
    stack
        .project
        .write("app.env", "GOOD=1\nthis line is wrong\n");
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr
            .contains(r#"[PROJECT]/app.env:2: expected NAME=value, found "this line is wrong""#),
        "{}",
        run.snapshot()
    );
    stack.project.write("app.env", "GOOD=1\n");
    stack.ok(&["apply", "--auto-approve"]);
    stack.pid("process.web");
}

#[test]
fn wait_for_started_releases_a_process_once_its_dependency_spawned_and_ready_once_it_is_ready() {
    let stack = Processes::new(
        r#"process "slow" {
  command = ["./slow.sh"]
  ready {
    log_line = "^ready$"
    interval = "20ms"
  }
}

process "early" {
  command = ["./mark.sh", "early"]
  wait_for "process.slow" {
    condition = "started"
  }
}

process "late" {
  command = ["./mark.sh", "late"]
  wait_for "process.slow" {
    condition = "ready"
  }
}
"#,
    );
    // Ready 1.5 s after it starts; records when.
    stack.script(
        "slow.sh",
        &format!(
            "date +%s%N > slow.started\nsleep 1.5\ndate +%s%N > slow.ready\necho ready\n{IDLE}"
        ),
    );
    stack.script("mark.sh", &format!("date +%s%N > \"$1.started\"\n{IDLE}"));
    stack.ok(&["apply", "--auto-approve"]);
    let at = |file: &str| timestamps(&stack.read(file))[0];
    assert!(at("slow.started") <= at("early.started"));
    assert!(
        at("early.started") < at("slow.ready"),
        "`started` did not wait for readiness"
    );
    assert!(
        at("slow.ready") <= at("late.started"),
        "`ready` waited for it"
    );
    for name in ["process.slow", "process.early", "process.late"] {
        stack.pid(name);
    }
}

#[test]
fn wait_for_started_on_a_process_that_fails_later_keeps_what_already_started() {
    let stack = Processes::new(
        r#"process "flaky" {
  command = ["./flaky.sh"]
  ready {
    log_line = "never printed"
    timeout  = "1s"
  }
}

process "early" {
  command = ["sleep", "60"]
  wait_for "process.flaky" {
    condition = "started"
  }
}

process "late" {
  command = ["sleep", "60"]
  wait_for "process.flaky" {}
}
"#,
    );
    stack.script("flaky.sh", &format!("echo 'warming up'\n{IDLE}"));
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("error: process.flaky failed"),
        "{}",
        run.snapshot()
    );
    assert!(
        run.stderr
            .contains("skipped what depends on it: process.late"),
        "{}",
        run.snapshot()
    );
    let skipped = run
        .stderr
        .lines()
        .find(|line| line.contains("skipped"))
        .unwrap();
    assert!(!skipped.contains("process.early"), "{}", run.snapshot());
    assert!(
        !run.stderr.contains("error: process.early"),
        "{}",
        run.snapshot()
    );
    stack.pid("process.early");
}

#[test]
fn processes_with_awkward_for_each_keys_run_log_wait_and_stop_by_their_address() {
    let keys = [
        "a b",
        "it's \\\"q\\\"",
        "ü.🚀",
        "$(touch pwned);|&",
        "../up",
    ];
    let stack = Processes::new(&format!(
        r#"process "web" {{
  for_each = [{}]
  command  = ["./web.sh"]
  env      = {{ KEY = each.key }}
}}

process "after" {{
  command = ["./after.sh"]
  wait_for "process.web[\"a b\"]" {{}}
}}
"#,
        keys.iter()
            .map(|key| format!("\"{key}\""))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    // Appends its key to keys.txt; on SIGTERM records the stop order.
    stack.script(
        "web.sh",
        &format!(
            "printf '%s\\n' \"$KEY\" >> keys.txt\ntrap 'printf \"web %s\\n\" \"$KEY\" >> stops.txt; exit 0' TERM\n{IDLE}"
        ),
    );
    stack.script(
        "after.sh",
        &format!("trap 'sleep 0.2; echo after >> stops.txt; exit 0' TERM\n{IDLE}"),
    );
    stack.ok(&["apply", "--auto-approve"]);
    let mut seen: Vec<String> = stack.read("keys.txt").lines().map(str::to_owned).collect();
    seen.sort();
    let mut expected =
        ["a b", "it's \"q\"", "ü.🚀", "$(touch pwned);|&", "../up"].map(str::to_owned);
    expected.sort();
    assert_eq!(seen, expected);
    assert!(!stack.path().join("pwned").exists());
    for key in &expected {
        let address = format!(
            "process.web[\"{}\"]",
            key.replace('\\', "\\\\").replace('"', "\\\"")
        );
        stack.pid(&address);
        let logs = stack.ok(&["logs", &address]);
        assert!(
            logs.stdout.contains("starting"),
            "{address}\n{}",
            logs.snapshot()
        );
    }
    stack.pid("process.after");
    stack.ok(&["down"]);
    let stops = stack.read("stops.txt");
    let position = |line: &str| stops.lines().position(|l| l == line).unwrap();
    assert!(position("after") < position("web a b"), "{stops}");
    assert_eq!(stops.lines().count(), 6, "{stops}");
}

#[test]
fn restart_always_restarts_a_clean_exit_and_on_failure_does_not() {
    let stack = Processes::new(
        r#"process "always" {
  command       = ["./run.sh", "always"]
  restart       = "always"
  max_restarts  = 0
  restart_delay = "100ms"
}

process "on_failure" {
  command = ["./run.sh", "on_failure"]
}
"#,
    );
    // Up for 0.3 s (past the settle time of a process without a probe), then a clean exit.
    stack.script("run.sh", "echo run >> \"runs-$1.txt\"\nsleep 0.3\nexit 0\n");
    stack.ok(&["apply", "--auto-approve"]);
    stack.wait_until("three runs of `always`", Duration::from_secs(20), || {
        std::fs::read_to_string(stack.path().join("runs-always.txt"))
            .is_ok_and(|runs| runs.lines().count() >= 3)
    });
    stack.wait_until("on_failure to exit", Duration::from_secs(10), || {
        stack.status("process.on_failure")["state"]["kind"] == "exited"
    });
    let status = stack.status("process.on_failure");
    assert_eq!(status["state"]["code"], 0, "{status:#}");
    assert_eq!(status["restarts"], 0, "{status:#}");
    assert_eq!(stack.read("runs-on_failure.txt"), "run\n");
}

#[test]
fn env_reads_a_postgres_database_url_known_after_apply() {
    let stack = crate::apply::Stack::new(
        r#"postgres "main" {
  version = "16"
  role "app" { login = true }
  database "shop" { owner = "app" }
}

process "web" {
  command = ["./web.sh"]
  env     = { DATABASE_URL = postgres.main.database.shop.url }
}
"#,
    );
    let script = stack.project.write(
        "web.sh",
        format!("#!/bin/sh\nprintf '%s' \"$DATABASE_URL\" > url.txt\n{IDLE}"),
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let plan = stack.ok(&["plan"]);
    assert!(
        plan.stdout.contains("env           = (known after apply)"),
        "{}",
        plan.snapshot()
    );
    stack.ok(&["apply", "--auto-approve"]);
    let url = stack.project.read("url.txt");
    assert_eq!(url, stack.url("postgres.main.database.shop"));
    // The URL the process got works: a real client connects with it and reads the database's name.
    let rows = stack.sql("postgres.main.database.shop", "SELECT current_database()");
    assert_eq!(rows, [["shop"]]);
    let plan = stack.ok(&["plan", "--detailed-exitcode"]);
    assert!(plan.stdout.contains("No changes"), "{}", plan.snapshot());
}

/// `THP_enabled` of a `/proc/PID/status`: whether the process may get transparent huge pages.
fn thp_enabled(status: &str) -> bool {
    let line = status
        .lines()
        .find(|line| line.starts_with("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled line in {status:?}"));
    line.split_whitespace().nth(1) == Some("1")
}

/// Runs kip as `Project::command` would, but started with transparent huge pages disabled
/// (`prctl(PR_SET_THP_DISABLE)`, which a shell passes on to what it runs).
fn kip_with_huge_pages_disabled(project: &crate::support::Project, args: &[&str]) -> Run {
    let kip = project.command(args);
    let mut command = Command::new("python3");
    command
        .args([
            "-c",
            "import ctypes, os, sys\n\
             assert ctypes.CDLL(None).prctl(41, 1, 0, 0, 0) == 0\n\
             os.execv(sys.argv[1], sys.argv[1:])",
        ])
        .arg(kip.get_program())
        .args(kip.get_args())
        .current_dir(project.path());
    for (key, value) in kip.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    project.run_with(command)
}

/// kip holds transparent huge pages back for its own small work (`kip_core::huge_pages`), and the flag is inherited
/// by what a process starts: the user's processes, under the supervisor or through `kip run`, must still get the
/// setting the user's shell had, allowed or disabled, not kip's.
#[test]
fn processes_get_the_huge_page_setting_kip_was_started_with_not_kips_own() {
    const CONFIG: &str = r#"process "probe" {
  command = ["./probe.sh"]
  restart = "no"
}
"#;
    const PROBE: &str = "grep THP_enabled /proc/self/status > thp.txt\n";
    const RUN: [&str; 4] = ["run", "--", "grep", "THP_enabled"];
    let own = thp_enabled(&std::fs::read_to_string("/proc/self/status").unwrap());
    let inherited = Processes::new(CONFIG);
    inherited.script("probe.sh", PROBE);
    inherited.ok(&["apply", "--auto-approve"]);
    assert_eq!(thp_enabled(&inherited.read("thp.txt")), own);
    let run = inherited.ok(&[&RUN[..], &["/proc/self/status"]].concat());
    assert_eq!(thp_enabled(&run.stdout), own, "{}", run.snapshot());

    let disabled = Processes::new(CONFIG);
    disabled.script("probe.sh", PROBE);
    let run = kip_with_huge_pages_disabled(&disabled.project, &["apply", "--auto-approve"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(!thp_enabled(&disabled.read("thp.txt")));
    let run = kip_with_huge_pages_disabled(
        &disabled.project,
        &[&RUN[..], &["/proc/self/status"]].concat(),
    );
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(!thp_enabled(&run.stdout), "{}", run.snapshot());
}

/// A supervisor that was not handed kip's setting (`kip supervisor` started by hand, without
/// `KIP_INHERITED_HUGE_PAGES`) holds huge pages back like every kip command and must take back the setting it was
/// started with, so that what it runs gets the user's, not kip's.
#[test]
fn a_supervisor_started_by_hand_gives_its_processes_the_huge_page_setting_it_was_started_with() {
    /// Kills the hand-started supervisor however the test ends.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let processes = Processes::new(
        "process \"probe\" {\n  command = [\"./probe.sh\"]\n  restart = \"no\"\n}\n",
    );
    processes.script("probe.sh", "grep THP_enabled /proc/self/status > thp.txt\n");
    let kip_dir = processes.path().join(".kip");
    std::fs::create_dir_all(&kip_dir).unwrap();
    let mut by_hand =
        processes
            .project
            .command(&["supervisor", "--dir", kip_dir.to_str().unwrap()]);
    by_hand
        .env_remove(kip_core::huge_pages::HANDED_ON)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let supervisor = Stop(by_hand.spawn().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !kip_dir.join("supervisor.sock").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the supervisor started by hand never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    processes.ok(&["apply", "--auto-approve"]);
    let own = thp_enabled(&std::fs::read_to_string("/proc/self/status").unwrap());
    assert_eq!(thp_enabled(&processes.read("thp.txt")), own);
    // The apply used the supervisor started by hand, not one of its own.
    let status = std::fs::read_to_string(format!("/proc/{}/status", supervisor.0.id())).unwrap();
    assert!(
        !status.contains("State:\tZ"),
        "the supervisor started by hand exited"
    );
    assert_eq!(thp_enabled(&status), own);
}
