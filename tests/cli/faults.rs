//! Faults during apply, with real PostgreSQL: a kip killed with SIGKILL at several points leaves a state the next
//! apply repairs (nothing duplicated or lost); an engine that fails to start reports its log tail while an
//! independent instance still comes up; a declared port already taken is refused before spawning; a second kip
//! waits for the state lock and then names its holder; and every other engine, SIGKILLed through its first apply
//! the same way, is repaired by the next apply and leaves no process behind after a destroy.

use std::io::Write as _;
use std::time::Duration;

use crate::apply::Stack;

const INSTANCES: &str = r#"postgres "bad" {
  version  = "16"
  settings = { shared_buffers = "lots" }
}

postgres "good" {
  version = "16"
  role "app" { login = true }
  database "shop" { owner = "app" }
}

postgres "after" {
  version    = "16"
  depends_on = [postgres.bad]
}
"#;

#[test]
fn a_failing_engine_reports_its_log_and_the_others_come_up() {
    let stack = Stack::new(INSTANCES);
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(run.stderr.contains("postgres.bad"), "{}", run.stderr);
    assert!(
        run.stderr.contains("shared_buffers"),
        "the error quotes PostgreSQL's log\n{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("skipped what depends on it: postgres.after"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("postgres.bad failed").count(),
        1,
        "reported once\n{}",
        run.stderr
    );
    // The independent instance is up and converged.
    assert_eq!(
        stack.sql("postgres.good.database.shop", "SELECT current_user"),
        [["app"]]
    );
    // Fixing the setting repairs it.
    stack
        .project
        .write("kip.hcl", INSTANCES.replace("\"lots\"", "\"64MB\""));
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.sql("postgres.bad", "SHOW shared_buffers"), [["64MB"]]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    assert_eq!(
        stack.sql("postgres.after", "SELECT 1"),
        [["1"]],
        "the skipped instance came up once its dependency did"
    );
}

#[test]
fn a_taken_port_is_refused_before_spawning() {
    let holder = std::net::TcpListener::bind(("127.0.0.1", crate::support::free_port())).unwrap();
    let port = holder.local_addr().unwrap().port();
    let stack = Stack::new(&format!(
        "postgres \"main\" {{\n  version = \"16\"\n  port    = {port}\n}}\n"
    ));
    crate::support::refuses_taken_port(&stack, port);
    // Once the port is free, the instance listens on it.
    drop(holder);
    stack.ok(&["apply", "--auto-approve"]);
    assert!(
        stack
            .url("postgres.main")
            .contains(&format!("@127.0.0.1:{port}/"))
    );
    assert_eq!(stack.sql("postgres.main", "SELECT 1"), [["1"]]);
}

/// The same refusal holds for every engine that takes a `port` (the contract's default reads it): Valkey, NATS
/// and a process, with the port held by another program.
#[test]
fn a_taken_port_is_refused_before_spawning_for_valkey_and_processes() {
    let holder = std::net::TcpListener::bind(("127.0.0.1", crate::support::free_port())).unwrap();
    let port = holder.local_addr().unwrap().port();
    for config in [
        format!("valkey \"cache\" {{\n  version = \"9\"\n  port    = {port}\n}}\n"),
        format!("nats \"bus\" {{\n  version = \"2\"\n  port    = {port}\n}}\n"),
        format!("process \"web\" {{\n  command = [\"sleep\", \"60\"]\n  port    = {port}\n}}\n"),
    ] {
        crate::support::refuses_taken_port(&Stack::new(&config), port);
    }
}

#[test]
fn a_second_kip_waits_for_the_lock_then_names_the_holder() {
    let stack = Stack::new("postgres \"main\" {\n  version = \"16\"\n}\n");
    let kip_dir = stack.project.path().join(".kip");
    std::fs::create_dir_all(&kip_dir).unwrap();
    let mut lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(kip_dir.join("state.lock"))
        .unwrap();
    lock.lock().unwrap();
    writeln!(lock, "{} 0", std::process::id()).unwrap();
    let started = std::time::Instant::now();
    let run = stack.kip(&["apply", "--auto-approve", "--lock-timeout", "300ms"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
    assert!(
        run.stderr
            .contains(&format!("locked by kip process {}", std::process::id())),
        "{}",
        run.stderr
    );
    assert!(!kip_dir.join("state.json").exists(), "nothing was changed");
    // Released: the next apply goes through.
    drop(lock);
    stack.ok(&["apply", "--auto-approve"]);
}

#[test]
fn sigkill_at_any_point_leaves_a_state_the_next_apply_repairs() {
    let config = "postgres \"main\" {\n  version = \"16\"\n  role \"app\" { login = true }\n  role \"reader\" {}\n  database \"shop\" {\n    owner      = \"app\"\n    extensions = [\"pgcrypto\"]\n  }\n}\n";
    let started = unix_now();
    let stack = Stack::new(config);
    // Warm the toolchain and template so the kills land in provisioning, spawning and converging.
    stack.ok(&["resolve"]);
    for delay in [20, 80, 150, 250, 400, 700] {
        apply_killed_after(&stack, delay);
        if delay == 250 {
            // Also a destroy killed half-way, now and then: the next apply must cope with that too.
            stack.project.write("kip.hcl", config);
        }
    }
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(
        run.code,
        0,
        "the apply after the kills repairs everything\n{}",
        run.snapshot()
    );
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    let roles = stack.sql(
        "postgres.main",
        "SELECT rolname FROM pg_roles WHERE rolname IN ('app', 'reader') ORDER BY 1",
    );
    assert_eq!(roles, [["app"], ["reader"]], "each role exactly once");
    assert_eq!(
        stack.sql("postgres.main.database.shop", "SELECT current_user"),
        [["app"]],
        "the app's password still works"
    );
    let ps = stack.ok(&["ps", "--json"]);
    let processes: serde_json::Value = serde_json::from_str(&ps.stdout).unwrap();
    assert_eq!(
        processes.as_array().unwrap().len(),
        1,
        "one postgres, not two\n{}",
        ps.stdout
    );
    // Kills that landed while the template was built (initdb and its standalone backends outlive the kip that
    // started them) leave no shared memory behind: the segment of the running postmaster is the account's only
    // one, and it is attached.
    let left = unattached_segments(&stack, started);
    assert!(left.is_empty(), "{}", left.join("\n"));
}

/// Now, in seconds since the epoch (as /proc/sysvipc/shm gives a segment's creation time).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The SysV segments of the account `postgres.main` of `stack` runs as that nothing is attached to, made at or after
/// `since` (a uid is given again once its account is deleted: a segment another test's account left under the same
/// uid earlier is not this test's).
fn unattached_segments(stack: &Stack, since: u64) -> Vec<String> {
    let state: serde_json::Value =
        serde_json::from_str(&stack.project.read(".kip/state.json")).unwrap();
    let data_dir = state["instances"]["postgres.main"]["data_dir"]
        .as_str()
        .unwrap();
    let account = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(data_dir).unwrap());
    std::fs::read_to_string("/proc/sysvipc/shm")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(7) == Some(&account.to_string().as_str())
                && fields.get(6) == Some(&"0")
                && fields
                    .get(13)
                    .and_then(|ctime| ctime.parse::<u64>().ok())
                    .is_some_and(|ctime| ctime >= since)
        })
        .map(|line| format!("a segment of the project's account ({account}), unattached: {line}"))
        .collect()
}

#[test]
fn a_template_build_killed_with_its_tools_leaves_no_shared_memory() {
    let started = unix_now();
    let stack = Stack::new("postgres \"main\" {\n  version = \"16\"\n}\n");
    stack.ok(&["resolve"]);
    let builds = stack.project.cache_dir().join("templates").join(".tmp");
    let mut apply = stack.command(&["apply", "--auto-approve"]);
    apply
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut apply = apply.spawn().unwrap();
    // Until initdb's standalone backend has named its segment in the build's postmaster.pid (line 7); then kip,
    // initdb and the backend are frozen together, and checked to be still at that point.
    let signal = |name: &str, pids: &[u32]| {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .args(pids.iter().map(u32::to_string))
            .status();
    };
    let named = || {
        std::fs::read_dir(&builds)
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|build| {
                let pid_file = build.path().join("postmaster.pid");
                let text = std::fs::read_to_string(&pid_file).ok()?;
                let line = text.lines().nth(6)?;
                (line.split_whitespace().count() == 2).then_some(pid_file)
            })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let frozen = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "initdb's backend never named its segment under {}",
            builds.display()
        );
        if named().is_some() {
            let mut frozen = vec![apply.id()];
            signal("STOP", &frozen);
            // initdb may start its next backend while the others are being stopped: until no new one shows up.
            loop {
                let new: Vec<u32> = pids_under(&builds)
                    .into_iter()
                    .filter(|pid| !frozen.contains(pid))
                    .collect();
                if new.is_empty() {
                    break;
                }
                signal("STOP", &new);
                frozen.extend(new);
            }
            if named().is_some() {
                break frozen;
            }
            signal("CONT", &frozen);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    // All at once (an OOM kill, a `kill -9` of the whole group): nobody cleans up. (Here the next build's directory
    // usually gets the freed inode of the leftover, and PostgreSQL, whose segment key is that inode, then removes the
    // stale segment itself; the engine's `release` of the leftover covers the builds where it does not.)
    signal("KILL", &frozen);
    let _ = apply.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !pids_under(&builds).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the build's tools outlived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        named().is_some(),
        "the killed backend left its postmaster.pid, which names its segment"
    );
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let left = unattached_segments(&stack, started);
    assert!(left.is_empty(), "{}", left.join("\n"));
}

#[test]
fn a_kip_killed_while_converging_never_makes_the_next_apply_fail() {
    use std::io::BufRead as _;
    let mut config = String::from("postgres \"main\" {\n  version = \"16\"\n");
    for index in 0..300 {
        config.push_str(&format!("  role \"r{index}\" {{ login = true }}\n"));
    }
    for index in 0..5 {
        config.push_str(&format!(
            "  database \"d{index}\" {{ owner = \"r{index}\" }}\n"
        ));
    }
    config.push_str("}\n");
    let stack = Stack::new(&config);
    for delay in [
        Duration::ZERO,
        Duration::from_millis(15),
        Duration::from_millis(40),
    ] {
        let mut apply = stack.command(&["apply", "--auto-approve"]);
        apply
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        let mut child = apply.spawn().unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        for line in stderr.lines() {
            if line.unwrap().contains("converging") {
                std::thread::sleep(delay);
                child.kill().unwrap();
                break;
            }
        }
        let _ = child.wait();
    }
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    assert_eq!(
        stack.sql(
            "postgres.main",
            "SELECT count(*)::text FROM pg_roles WHERE rolname ~ '^r[0-9]+$'"
        ),
        [["300"]]
    );
    assert_eq!(
        stack.sql(
            "postgres.main.database.d3",
            "SELECT current_database(), current_user"
        ),
        [["d3", "r3"]]
    );
}

/// A kip killed while its engine still starts leaves that start to the supervisor; the next apply joins it, instead
/// of finding the engine's own declared port taken (the process binds its port at once and listens only 1.5 s
/// later, so it is still starting when the second apply looks).
#[test]
fn an_apply_after_a_kip_killed_mid_start_joins_that_start() {
    let port = crate::support::free_port();
    let stack = Stack::new(&format!(
        r#"process "slow" {{
  command = ["python3", "-c", "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); time.sleep(1.5); s.listen(); time.sleep(1000)"]
  port    = {port}

  ready {{
    tcp = "127.0.0.1:{port}"
  }}
}}
"#
    ));
    // Killed once the process holds its port (it was spawned), while its probe still waits.
    let mut first = stack.command(&["apply", "--auto-approve"]);
    first
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut first = first.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the process never bound its port"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}

// ===============================================================================================================
// Every other engine, SIGKILLed the same way through its first apply.

/// The live processes (zombies aside) whose command line names `root`, or whose working directory is under it.
fn processes_under(root: &std::path::Path) -> Vec<String> {
    pids_under(root)
        .into_iter()
        .map(|pid| {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            format!(
                "{pid} (cwd {}): {}",
                cwd.display(),
                crate::support::cmdline(pid).join(" ")
            )
        })
        .collect()
}

/// The pids of [`processes_under`].
fn pids_under(root: &std::path::Path) -> Vec<u32> {
    let root_text = root.to_string_lossy();
    let working = kip_core::supervisor::working_in(root);
    crate::support::all_pids()
        .into_iter()
        .filter(|&pid| pid != std::process::id() && crate::support::alive(pid))
        .filter(|pid| {
            working.contains(pid)
                || crate::support::cmdline(*pid)
                    .join(" ")
                    .contains(&*root_text)
        })
        .collect()
}

/// Starts `kip apply --auto-approve` and SIGKILLs it `delay` milliseconds later.
fn apply_killed_after(stack: &Stack, delay: u64) {
    let mut command = stack.command(&["apply", "--auto-approve"]);
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = command.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(delay));
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills kip at several points of the first apply of `config` (toolchain already resolved, so the kills land in
/// building a template, provisioning, spawning, waiting for ready and converging), then checks that the next apply
/// repairs everything: the plan after it is empty, `kip ps` shows `processes` processes, and a destroy leaves no
/// process of the project or of a killed template build behind.
fn killed_at_any_point_of_a_first_apply(config: &str, processes: usize) {
    let stack = Stack::new(config);
    stack.ok(&["resolve"]);
    for delay in [15, 60, 150, 300, 600, 1000, 1600] {
        apply_killed_after(&stack, delay);
    }
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(
        run.code,
        0,
        "the apply after the kills repairs everything\n{}",
        run.snapshot()
    );
    let plan = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.snapshot());
    let ps = stack.ok(&["ps", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&ps.stdout).unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        processes,
        "one of each, not two\n{}",
        ps.stdout
    );
    stack.ok(&["destroy", "--auto-approve"]);
    let roots = [stack.project.path().to_owned(), stack.project.cache_dir()];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = roots
            .iter()
            .flat_map(|root| processes_under(root))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "processes outlived the destroy:\n{}",
            left.join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn mariadb_killed_at_any_point_of_a_first_apply_is_repaired_by_the_next() {
    killed_at_any_point_of_a_first_apply(
        "mariadb \"main\" {\n  version = \"10.11\"\n  database \"shop\" {}\n  user \"app\" {\n    grant {\n      on         = \"shop.*\"\n      privileges = [\"SELECT\"]\n    }\n  }\n}\n",
        1,
    );
}

#[test]
fn valkey_killed_at_any_point_of_a_first_apply_is_repaired_by_the_next() {
    killed_at_any_point_of_a_first_apply(
        "valkey \"cache\" {\n  version = \"9\"\n  user \"app\" {\n    commands = [\"+@read\"]\n    keys     = [\"app:*\"]\n  }\n}\n",
        1,
    );
}

#[test]
fn nats_killed_at_any_point_of_a_first_apply_is_repaired_by_the_next() {
    killed_at_any_point_of_a_first_apply(
        "nats \"bus\" {\n  version = \"2\"\n  stream \"ORDERS\" {\n    subjects = [\"orders.>\"]\n  }\n  kv \"sessions\" {}\n}\n",
        1,
    );
}

#[test]
fn s3_killed_at_any_point_of_a_first_apply_is_repaired_by_the_next() {
    killed_at_any_point_of_a_first_apply(
        "s3 \"store\" {\n  version = \"4\"\n  bucket \"keep\" {}\n}\n",
        1,
    );
}

#[test]
fn a_process_killed_at_any_point_of_a_first_apply_is_repaired_by_the_next() {
    killed_at_any_point_of_a_first_apply(
        "process \"web\" {\n  command = [\"python3\", \"-c\", \"import time; time.sleep(1000)\"]\n}\n",
        1,
    );
}

/// A project deleted without `kip destroy` (a removed checkout, a CI workspace wiped between jobs) leaves nothing
/// running: its supervisor sees that the lock file it holds was deleted with `.kip/`, stops the engine and the
/// process (with their discard sequences: their data is gone), and exits. Left alone, they would have run on for
/// ever, with no kip able to reach them. Then (as root) `kip cache prune` deletes the account kip made for the
/// project, and only that one: a project that still runs keeps its own.
#[test]
fn a_deleted_project_leaves_no_engine_or_supervisor_running() {
    let config = "valkey \"cache\" {\n  version = \"9\"\n}\n\nprocess \"worker\" {\n  command = [\"sleep\", \"600\"]\n}\n";
    let stack = Stack::new(config);
    stack.ok(&["apply", "--auto-approve"]);
    let pids = vec![
        crate::support::pid_of(&stack, "valkey.cache"),
        crate::support::pid_of(&stack, "process.worker"),
        stack
            .project
            .read(".kip/supervisor.pid")
            .trim()
            .parse()
            .unwrap(),
    ];
    let _restore = Restore {
        stack: &stack,
        config,
        pids: pids.clone(),
    };
    let owner = |stack: &Stack| {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(stack.project.path().join(".kip/run/valkey.cache"))
            .unwrap()
            .uid()
    };
    let account = owner(&stack);
    // Another project on the same cache, still there.
    let other = Stack::new("valkey \"cache\" {\n  version = \"9\"\n}\n");
    let on_the_cache = |args: &[&str]| {
        let mut command = other.command(args);
        command.env("KIP_CACHE_DIR", stack.project.cache_dir());
        other.project.run_with(command)
    };
    assert_eq!(on_the_cache(&["apply", "--auto-approve"]).code, 0);
    let others = owner(&other);

    std::fs::remove_dir_all(stack.project.path()).unwrap();
    for pid in pids {
        crate::support::wait_gone(pid, Duration::from_secs(15));
    }
    // Nothing of the project made again on the way out (the supervisor's table, written as each process stopped).
    assert!(!stack.project.path().exists());
    if crate::support::is_root() {
        // By name: a uid freed here may be given to another test's new account at once.
        let passwd = |key: String| {
            let output = std::process::Command::new("getent")
                .args(["passwd", &key])
                .output()
                .unwrap();
            let line = String::from_utf8_lossy(&output.stdout).into_owned();
            line.split(':').next().unwrap_or_default().to_owned()
        };
        let (account, others) = (passwd(account.to_string()), passwd(others.to_string()));
        let exists = |name: &String| !passwd(name.clone()).is_empty();
        assert!(account.starts_with("kip-") && others.starts_with("kip-") && account != others);
        let pruned = on_the_cache(&["cache", "prune"]);
        assert_eq!(pruned.code, 0, "{}", pruned.snapshot());
        assert!(
            pruned
                .stdout
                .contains("Deleted 1 account of projects that are gone"),
            "{}",
            pruned.stdout
        );
        assert!(!exists(&account), "the deleted project's account is gone");
        assert!(exists(&others), "the other project keeps its account");
    }
    let destroyed = on_the_cache(&["destroy", "--auto-approve"]);
    assert_eq!(destroyed.code, 0, "{}", destroyed.snapshot());
}

/// Before the stack's own destroy: the project's directory again, so that the destroy runs and removes the account
/// kip made for the project (as root), which the deleted project could not; and what a failed test left running,
/// killed.
struct Restore<'a> {
    stack: &'a Stack,
    config: &'a str,
    pids: Vec<u32>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        for &pid in &self.pids {
            if crate::support::alive(pid) {
                crate::support::sigkill(pid);
            }
        }
        let _ = std::fs::create_dir_all(self.stack.project.path());
        let _ = std::fs::write(self.stack.project.path().join("kip.hcl"), self.config);
    }
}

/// A project moved elsewhere is not gone: its supervisor and engines run on, and kip reaches them at the new path.
/// Nor can another local account make it look gone: it may not delete the project's `.kip/` or the lock file.
#[test]
fn a_moved_project_keeps_its_engines_running_and_no_other_account_can_stop_them() {
    let stack = Stack::new("process \"worker\" {\n  command = [\"sleep\", \"600\"]\n}\n");
    stack.ok(&["apply", "--auto-approve"]);
    let worker = crate::support::pid_of(&stack, "process.worker");
    let kip_dir = stack.project.path().join(".kip");
    if crate::support::is_root() {
        let attempt = format!(
            "rm -f '{lock}'; rm -rf '{dir}'",
            lock = kip_dir.join("supervisor.lock").display(),
            dir = kip_dir.display()
        );
        let refused = crate::support::as_nobody(&attempt);
        assert!(!refused.status.success(), "nobody's rm failed");
        assert!(kip_dir.join("supervisor.lock").exists());
    }
    let moved = stack.project.path().with_extension("moved");
    std::fs::rename(stack.project.path(), &moved).unwrap();
    // Two of the supervisor's checks.
    std::thread::sleep(Duration::from_secs(5));
    let alive = crate::support::alive(worker);
    std::fs::rename(&moved, stack.project.path()).unwrap();
    assert!(alive, "the worker runs on in the moved project");
    assert_eq!(crate::support::pid_of(&stack, "process.worker"), worker);
}
