//! Using what kip applied, with real PostgreSQL 16 from the test mirror: `kip logs` (tail, follow, truncation,
//! unknown addresses), `kip run` (the `kip env` variables, the command's exit code), `kip connect` (psql from
//! PATH, and the error when there is none) and `kip down` → `kip up`. Each test destroys what it started, also
//! when it fails.

use std::io::{BufRead as _, Write as _};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use crate::apply::Stack;
use crate::support::Project;

const CONFIG: &str = r#"postgres "main" {
  version = "16"
  role "app" { login = true }
  database "shop" { owner = "app" }
  grant {
    role       = "app"
    database   = "shop"
    privileges = ["ALL"]
  }
}
"#;

/// A project applied from the test mirror (served over loopback), destroyed when dropped.
fn applied() -> Stack {
    let stack = Stack::new(CONFIG);
    stack.ok(&["apply", "--auto-approve"]);
    stack
}

/// The first column of the first row `query` returns, over the URL `kip url` prints.
fn query(stack: &Stack, address: &str, query: &str) -> String {
    let rows = stack.sql(address, query);
    rows.first()
        .and_then(|row| row.first())
        .cloned()
        .unwrap_or_else(|| panic!("{query} returned no row"))
}

/// Kills a `kip logs -f` when dropped, also when an assertion fails.
struct Follower(std::process::Child);

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn logs_show_the_instance_log_and_follow_it() {
    let stack = applied();
    let run = stack.ok(&["logs", "postgres.main"]);
    assert!(
        run.stdout
            .contains("database system is ready to accept connections"),
        "{}",
        run.stdout
    );
    let run = stack.ok(&["logs", "postgres.main", "-n", "2"]);
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);
    // An object's address shows its instance's log.
    stack.ok(&["logs", "postgres.main.database.shop", "--lines", "1"]);

    let run = stack.kip(&["logs", "postgres.mian"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr
            .contains("error: postgres.mian has no log; known: postgres.main"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hint: did you mean `postgres.main`?"),
        "{}",
        run.stderr
    );

    // Follow: lines appended show up, and so do lines written after the log was truncated.
    let ps: serde_json::Value = serde_json::from_str(&stack.ok(&["ps", "--json"]).stdout).unwrap();
    let log = std::path::PathBuf::from(
        ps[0]["log"]
            .as_str()
            .unwrap()
            .replace("[PROJECT]", stack.project.path().to_str().unwrap()),
    );
    let mut follower = Follower(
        stack
            .command(&["logs", "postgres.main", "-f", "-n", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (lines, received) = mpsc::channel();
    let stdout = follower.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if lines.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let wait_for = |wanted: &str| loop {
        match received.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line == wanted => break,
            Ok(_) => continue,
            Err(error) => panic!("kip logs -f did not print {wanted:?}: {error}"),
        }
    };
    let append = |text: &str| {
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        file.write_all(text.as_bytes()).unwrap();
    };
    // The follower prints what is appended after it read the log's length, which a loaded machine may delay: a
    // marker appended before that is not printed, so markers are appended until one is.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    'printed: for marker in 1.. {
        append(&format!("kip-test: appended {marker}\n"));
        while let Ok(line) = received.recv_timeout(Duration::from_millis(200)) {
            if line.starts_with("kip-test: appended ") {
                break 'printed;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kip logs -f printed none of {marker} appended lines"
        );
    }
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    append("kip-test: after truncation\n");
    wait_for("kip-test: after truncation");
    drop(follower);
}

#[test]
fn run_passes_the_environment_and_the_exit_code() {
    let stack = applied();
    let url = stack.ok(&["url", "postgres.main.database.shop"]).stdout;
    // As a kip.hcl reference writes it, too.
    assert_eq!(
        stack.ok(&["url", "postgres.main.database.shop.url"]).stdout,
        url
    );
    let run = stack.ok(&["run", "--", "sh", "-c", "echo $DATABASE_URL"]);
    assert_eq!(run.stdout, url);
    assert!(url.starts_with("postgresql://app:"), "{url}");

    // Exactly what `kip env` prints.
    let env = stack.ok(&["env", "--format", "dotenv"]).stdout;
    let run = stack.ok(&["run", "env"]);
    for line in env.lines() {
        assert!(
            run.stdout.lines().any(|l| l == line),
            "{line} missing from\n{}",
            run.stdout
        );
    }
    assert!(env.contains("KIP_POSTGRES_MAIN_URL="), "{env}");

    assert_eq!(stack.kip(&["run", "--", "sh", "-c", "exit 3"]).code, 3);
    assert_eq!(
        stack.kip(&["run", "--", "sh", "-c", "kill -TERM $$"]).code,
        143
    );

    let run = stack.kip(&["run", "--", "kip-no-such-command"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr
            .contains("error: cannot run kip-no-such-command: no such command"),
        "{}",
        run.stderr
    );
    let run = stack.kip(&["run"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("error: kip run needs a command to run"),
        "{}",
        run.stderr
    );
}

#[test]
fn connect_runs_psql_or_says_why_it_cannot() {
    let stack = applied();
    let mut command = stack.command(&["connect", "postgres.main.database.shop"]);
    command.env("PATH", "/nonexistent");
    let run = stack.project.run_with(command);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr
            .contains("error: psql is not in the toolchain of postgres.main"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("nor on PATH"), "{}", run.stderr);
    assert!(
        run.stderr.contains("install the postgresql-client package"),
        "{}",
        run.stderr
    );

    assert!(
        std::path::Path::new("/usr/bin/psql").exists(),
        "this test needs psql on PATH: apt-get install postgresql-client"
    );
    let run = stack.kip_with_input(
        &["connect", "postgres.main.database.shop"],
        "select 40+2;\n",
    );
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(
        run.stdout.lines().any(|line| line.trim() == "42"),
        "{}",
        run.snapshot()
    );
    // Arguments after `--` go to psql; the database address connects as its owner.
    let run = stack.kip_with_input(
        &["connect", "postgres.main.database.shop", "--", "-tA"],
        "select current_database() || ' ' || current_user;\n",
    );
    assert_eq!(run.stdout.trim(), "shop app", "{}", run.snapshot());
    // psql's own exit code comes back: 3 for an error in a script run with ON_ERROR_STOP.
    let run = stack.kip_with_input(
        &["connect", "postgres.main", "--", "-v", "ON_ERROR_STOP=1"],
        "select * from no_such_table;\n",
    );
    assert_eq!(run.code, 3, "{}", run.snapshot());

    let run = stack.kip(&["connect", "postgres.mian"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("hint: did you mean `postgres.main`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn up_starts_the_instances_again_after_down() {
    let stack = applied();
    query(
        &stack,
        "postgres.main.database.shop",
        "CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2); SELECT 1",
    );
    let run = stack.ok(&["down"]);
    assert!(
        run.stdout.contains("Stopped every engine"),
        "{}",
        run.stdout
    );
    let run = stack.ok(&["ps"]);
    assert_eq!(run.stdout, "No engine of this project runs.\n");

    let run = stack.ok(&["up"]);
    assert!(
        run.stdout.contains("postgres.main: ready (pid "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("Started 1 instance(s)."),
        "{}",
        run.stdout
    );
    assert!(stack.ok(&["ps"]).stdout.contains("ready"));
    assert_eq!(
        query(
            &stack,
            "postgres.main.database.shop",
            "SELECT count(*)::text FROM orders"
        ),
        "2"
    );
    let run = stack.ok(&["up"]);
    assert!(
        run.stdout.contains("postgres.main: already running"),
        "{}",
        run.stdout
    );
    // Nothing was planned or converged: the next plan has nothing to do.
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}

#[test]
fn up_and_logs_with_nothing_applied() {
    let project = Project::with_config(CONFIG);
    let run = project.kip(&["up"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert_eq!(
        run.stdout,
        "Nothing is applied in this project: run `kip apply` first.\n"
    );
    let run = project.kip(&["logs", "postgres.main"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr
            .contains("error: postgres.main has no log; nothing is applied yet"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_directory_without_kip_hcl_is_not_a_project_and_nothing_is_written() {
    let project = crate::support::Project::new();
    for args in [
        &["plan"][..],
        &["apply", "--auto-approve"],
        &["sync"],
        &["destroy", "--auto-approve"],
        &["up"],
        &["down"],
        &["ps"],
        &["url", "postgres.main"],
        &["env"],
        &["logs", "postgres.main"],
        &["connect", "postgres.main"],
        &["run", "--", "true"],
        &["lock"],
        &["resolve"],
    ] {
        let run = project.kip(args);
        assert_eq!(run.code, 1, "kip {}\n{}", args.join(" "), run.snapshot());
        assert!(
            run.stderr.contains("no kip.hcl"),
            "kip {} says why\n{}",
            args.join(" "),
            run.stderr
        );
        let written: Vec<_> = std::fs::read_dir(project.path()).unwrap().collect();
        assert!(
            written.is_empty(),
            "kip {} wrote {written:?}",
            args.join(" ")
        );
    }
}
