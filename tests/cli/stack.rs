//! The example stacks in one `kip apply` each, through the real binary.
//!
//! - The quickstart (examples/quickstart): PostgreSQL and Valkey start in parallel, the migration job runs once the
//!   database is ready and not again, the web server starts once the migration succeeded and answers with what the
//!   migration wrote, `kip ps` shows the tree in dependency order, the next plan is empty, and destroy (the guard)
//!   takes everything down.
//! - All six engines (examples/all-engines): PostgreSQL, Valkey, MariaDB, NATS and S3 start in parallel, the app
//!   that references all five starts once they are ready and reaches each of them, each engine's own client works
//!   with what `kip env` and `kip url` give, and the next plan is empty.
//! - Every other engine added beside a running PostgreSQL goes ahead of its refresh, through each engine's whole
//!   lifecycle, and the next plan (which refreshes each of them) is empty.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use crate::apply::Stack;
use crate::support::free_port;

fn example(example: &str, name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(example)
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn http_get(port: u16, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// Where `needle` first appears in `text`, for ordering the step lines.
fn at(text: &str, needle: &str) -> usize {
    text.find(needle)
        .unwrap_or_else(|| panic!("`{needle}` is not in:\n{text}"))
}

#[test]
fn the_quickstart_stack_comes_up_in_one_apply() {
    if std::process::Command::new("psql")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "the quickstart's migration needs psql (apt-get install postgresql-client; scripts/test.sh does)"
        );
    }
    let stack = Stack::new(&example("quickstart", "kip.hcl"));
    stack
        .project
        .write("web.py", example("quickstart", "web.py"));
    let migrate = stack
        .project
        .write("migrate.sh", example("quickstart", "migrate.sh"));
    std::fs::set_permissions(&migrate, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let var = format!("web_port={port}");

    let run = stack.ok(&["apply", "--auto-approve", "--var", &var]);
    let steps = &run.stderr;
    // The database and the cache come up side by side; the job after the database, the web server last.
    assert!(
        at(steps, "valkey.cache: resolving") < at(steps, "postgres.main: ready")
            && at(steps, "postgres.main: resolving") < at(steps, "valkey.cache: ready"),
        "postgres.main and valkey.cache start in parallel:\n{steps}"
    );
    assert!(at(steps, "postgres.main: ready") < at(steps, "process.migrate: ready"));
    assert!(at(steps, "process.migrate: ready") < at(steps, "process.web: provisioning"));
    assert!(at(steps, "valkey.cache: ready") < at(steps, "process.web: provisioning"));

    // The migration wrote its table; the web server reads it through the URL kip gave it.
    let rows = stack.sql(
        "postgres.main.database.shop",
        "SELECT count(*) FROM products",
    );
    assert_eq!(rows, vec![vec!["2".to_owned()]]);
    let answer = http_get(port, "/");
    assert!(
        answer.starts_with("HTTP/1.0 200")
            && answer.contains("kip mug")
            && answer.contains("\"cache\": true"),
        "{answer}"
    );
    assert!(http_get(port, "/healthz").ends_with("ok\n"));

    // kip ps: a tree in dependency order.
    let ps = stack.ok(&["ps"]).stdout;
    let line = |name: &str| {
        ps.lines()
            .position(|line| line.contains(name))
            .unwrap_or_else(|| panic!("`kip ps` lists {name}:\n{ps}"))
    };
    assert!(line("postgres.main") < line("process.migrate"), "{ps}");
    assert!(line("process.migrate") < line("process.web"), "{ps}");
    let web = &ps.lines().nth(line("process.web")).unwrap();
    assert!(
        web.contains("└─ process.web")
            && web.contains("ready")
            && web.contains(&format!(":{port}/healthz"))
            && web.contains("(also after postgres.main, valkey.cache)"),
        "process.web hangs under the job it waited for, ready, with its address and its other dependencies:\n{ps}"
    );
    assert!(
        ps.lines()
            .nth(line("process.migrate"))
            .unwrap()
            .contains("succeeded"),
        "{ps}"
    );

    // kip env: the conventional variables the schemas name, beside the KIP_… ones.
    let env = stack.ok(&["env", "--format", "json"]).stdout;
    let env: serde_json::Value = serde_json::from_str(&env).unwrap();
    assert_eq!(
        env["DATABASE_URL"], env["KIP_POSTGRES_MAIN_DATABASE_SHOP_URL"],
        "DATABASE_URL is the first database's url, not the instance's:\n{env:#}"
    );
    assert_eq!(env["REDIS_URL"], env["KIP_VALKEY_CACHE_URL"], "{env:#}");

    // Nothing to do next time, and the job does not run again.
    let plan = stack.kip(&["plan", "--detailed-exitcode", "--var", &var]);
    assert_eq!(plan.code, 0, "{}", plan.snapshot());
    let again = stack.ok(&["apply", "--auto-approve", "--var", &var]);
    assert!(again.stdout.contains("No changes."), "{}", again.snapshot());
    let log = stack.ok(&["logs", "process.migrate"]).stdout;
    assert_eq!(
        log.matches("migrated: products is ready").count(),
        1,
        "{log}"
    );
}

#[test]
fn all_six_engines_come_up_in_one_apply() {
    let stack = Stack::new(&example("all-engines", "kip.hcl"));
    stack
        .project
        .write("app.py", example("all-engines", "app.py"));
    let port = free_port();
    let var = format!("app_port={port}");

    let run = stack.ok(&["apply", "--auto-approve", "--var", &var]);
    let steps = &run.stderr;
    let engines = [
        "postgres.main",
        "valkey.cache",
        "mariadb.legacy",
        "nats.bus",
        "s3.blobs",
    ];
    // Independent engines side by side: every one begins before any is ready; the app after all of them.
    let first_ready = engines
        .iter()
        .map(|engine| at(steps, &format!("{engine}: ready")))
        .min()
        .unwrap();
    for engine in engines {
        assert!(
            at(steps, &format!("{engine}: resolving")) < first_ready,
            "{engine} began only after another engine was ready:\n{steps}"
        );
        assert!(
            at(steps, &format!("{engine}: ready")) < at(steps, "process.app: provisioning"),
            "the app started before {engine} was ready:\n{steps}"
        );
    }

    // The app reaches every engine with what kip put in its environment.
    let answer = http_get(port, "/");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let report: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|error| panic!("{error}: {answer}"));
    for (engine, expected) in [
        ("postgres", "PostgreSQL answered"),
        ("valkey", "PING answered PONG"),
        ("mariadb", "MariaDB 10.11"),
        ("nats", "PING answered PONG"),
        ("s3", "refused an unsigned request with 403"),
    ] {
        let said = report[engine].as_str().unwrap_or_default();
        assert!(said.contains(expected), "{engine}: {said}\n{report:#}");
    }

    // Each engine's own client, with what `kip env` and `kip url` give.
    assert_eq!(
        stack.sql("postgres.main.database.shop", "SELECT current_user"),
        vec![vec!["app".to_owned()]]
    );
    let env = stack
        .ok(&["env", "--format", "json"])
        .stdout
        .replace("[PROJECT]", stack.project.path().to_str().unwrap());
    let env: serde_json::Value = serde_json::from_str(&env).unwrap();
    let pong: String = redis::cmd("PING")
        .query(&mut crate::valkey::connect(
            env["REDIS_URL"].as_str().unwrap(),
        ))
        .unwrap();
    assert_eq!(pong, "PONG");
    let billing = stack.url("mariadb.legacy.user.billing");
    assert_eq!(
        crate::mariadb::sql(&billing, &["SELECT CURRENT_USER()"]),
        vec![vec!["billing@localhost".to_owned()]]
    );
    let (nats_url, token) = crate::nats::env(&stack);
    let stream = crate::nats::runtime().block_on(async {
        let js = async_nats::jetstream::new(crate::nats::connect(&nats_url, &token).await);
        let mut stream = js.get_stream("ORDERS").await.unwrap();
        stream.info().await.unwrap().config.subjects.clone()
    });
    assert_eq!(stream, vec!["orders.>".to_owned()]);
    let s3 = crate::s3::client(&stack);
    crate::s3::block_on(async {
        s3.put_object("uploads", "hello.txt", "from the stack test")
            .await
            .unwrap();
        assert_eq!(
            s3.get_object("uploads", "hello.txt").await.unwrap(),
            "from the stack test"
        );
    });

    // Nothing to do next time.
    let plan = stack.kip(&["plan", "--detailed-exitcode", "--var", &var]);
    assert_eq!(plan.code, 0, "{}", plan.snapshot());
}

#[test]
fn every_engine_added_beside_a_running_one_goes_ahead_of_the_refresh() {
    let stack = Stack::new("postgres \"main\" {\n  version = \"16\"\n}\n");
    stack.ok(&["apply", "--auto-approve"]);

    // The example's engines without its app (which references them all), and a process of its own. `main` gains
    // a role and a database: it is planned with refresh and applied beside them.
    let engines = example("all-engines", "kip.hcl");
    let engines = &engines[..engines.find("process \"app\"").unwrap()];
    stack.project.write(
        "kip.hcl",
        format!("{engines}process \"job\" {{\n  command = [\"sleep\", \"600\"]\n}}\n"),
    );
    let mut command = stack.command(&["apply", "--auto-approve"]);
    // Forced: by default an instance goes ahead only while the read-ahead still reads, which a test cannot time.
    command
        .env("KIP_LOG", "debug")
        .env("KIP_APPLY_AHEAD", "always");
    let run = stack.project.run_with(command);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(
        run.stderr.contains(
            "go ahead of the refresh instances=valkey.cache, mariadb.legacy, nats.bus, s3.blobs, process.job"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains("Apply complete! Resources: 14 added"),
        "{}",
        run.stdout
    );
    let plan = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.snapshot());
    assert_eq!(
        stack.sql("postgres.main.database.shop", "SELECT current_user"),
        vec![vec!["app".to_owned()]]
    );

    // Never: the same addition waits for the whole plan.
    stack.project.write(
        "kip.hcl",
        format!("{engines}valkey \"second\" {{\n  version = \"9\"\n}}\n"),
    );
    let mut command = stack.command(&["apply", "--auto-approve"]);
    command
        .env("KIP_LOG", "debug")
        .env("KIP_APPLY_AHEAD", "never");
    let run = stack.project.run_with(command);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(!run.stderr.contains("go ahead"), "{}", run.stderr);

    // A value kip does not know is refused before anything is planned, with the values it knows.
    stack.project.write(
        "kip.hcl",
        format!("{engines}valkey \"third\" {{\n  version = \"9\"\n}}\n"),
    );
    let mut command = stack.command(&["apply", "--auto-approve"]);
    command.env("KIP_APPLY_AHEAD", "sometimes");
    let run = stack.project.run_with(command);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("KIP_APPLY_AHEAD is \"sometimes\"")
            && run.stderr.contains("auto (the default), always or never"),
        "{}",
        run.stderr
    );
    let ps = stack.ok(&["ps", "--json"]);
    assert!(!ps.stdout.contains("valkey.third"), "{}", ps.stdout);
}
