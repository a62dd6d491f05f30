//! MariaDB end to end through the real `kip` binary and the real `mariadbd` build from the test mirror, checked
//! with `mysql_async` through the URLs `kip url` prints: apply, users and grants, live and restarting settings as
//! the plan announces them, an engine killed from outside, a database with tables kept, names MariaDB would refuse,
//! a port in use, a failed start's log, and other local accounts polling a first start without ever getting in.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable as _;

use crate::apply::Stack;
use crate::support::{
    HostilePoller, free_port, kill_when_exists, kill_when_logged, pid_of, test_mirror,
};
use crate::valkey::owner_of;

/// Runs `statements` through `url` as `kip url` printed it, and returns the rows of the last one as text.
fn query(url: &str, statements: &[&str]) -> Result<Vec<Vec<String>>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let opts = mysql_async::Opts::from_url(url).map_err(|e| format!("{url}: {e}"))?;
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let mut rows = Vec::new();
        for statement in statements {
            let result: Vec<mysql_async::Row> = conn
                .query(*statement)
                .await
                .map_err(|e| format!("{statement}: {e}"))?;
            rows = result
                .into_iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| {
                            row.get_opt::<Option<String>, _>(i)
                                .and_then(Result::ok)
                                .flatten()
                                .unwrap_or_default()
                        })
                        .collect()
                })
                .collect();
        }
        let _ = conn.disconnect().await;
        Ok(rows)
    })
}

pub(crate) fn sql(url: &str, statements: &[&str]) -> Vec<Vec<String>> {
    query(url, statements).unwrap_or_else(|error| panic!("{error}"))
}

fn config(settings: &str, extra: &str) -> String {
    format!(
        r#"mariadb "main" {{
  version  = "10.11"
  settings = {{ {settings} }}

  database "shop" {{}}
{extra}
  user "app" {{
    grant {{
      on         = "shop.*"
      privileges = ["SELECT", "INSERT", "CREATE"]
    }}
  }}
}}
"#
    )
}

/// Waits until `kip ps` shows `name` ready with another pid than `old`.
fn restarted(stack: &Stack, name: &str, old: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = stack.ok(&["ps", "--json"]);
        let processes: serde_json::Value = serde_json::from_str(&ps.stdout).unwrap();
        let found = processes.as_array().unwrap().iter().find_map(|process| {
            (process["name"] == name && process["state"]["kind"] == "ready")
                .then(|| process["pid"].as_u64())
                .flatten()
        });
        if let Some(pid) = found
            && pid as u32 != old
        {
            return pid as u32;
        }
        assert!(
            Instant::now() < deadline,
            "{name} was not restarted:\n{}",
            ps.stdout
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mariadb_end_to_end() {
    let stack = Stack::new(&config("max_connections = 100", ""));
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);

    // `kip url` works with mysql_async as it is: the socket, root, its password.
    let url = stack.url("mariadb.main");
    assert!(
        url.starts_with("mysql://root:") && url.contains("?socket="),
        "{url}"
    );
    assert_eq!(
        sql(&url, &["SELECT @@skip_networking, @@max_connections"]),
        [["1", "100"]]
    );
    // Only root, MariaDB's locked definer and the declared user exist: the template's open accounts are gone.
    assert_eq!(
        sql(
            &url,
            &["SELECT CONCAT(User, '@', Host) FROM mysql.global_priv ORDER BY 1"]
        ),
        [
            ["app@localhost"],
            ["mariadb.sys@localhost"],
            ["root@localhost"]
        ]
    );
    // The user logs in with its own URL and may do what its grant says, and no more.
    let app = stack.url("mariadb.main.user.app");
    sql(
        &app,
        &[
            "CREATE TABLE shop.orders (id INT PRIMARY KEY) ENGINE = InnoDB",
            "INSERT INTO shop.orders VALUES (1), (2)",
        ],
    );
    let refused = query(&app, &["DELETE FROM shop.orders"]).unwrap_err();
    assert!(refused.contains("denied"), "{refused}");
    let database = stack.url("mariadb.main.database.shop");
    assert_eq!(sql(&database, &["SELECT COUNT(*) FROM orders"]), [["2"]]);

    // As kip's unprivileged account; its data and configuration are that account's alone, and the template's
    // bootstrap password was never copied into the instance.
    let pid = pid_of(&stack, "mariadb.main");
    assert_ne!(owner_of(pid), "root");
    let instance_dir = stack.project.path().join(".kip/run/mariadb.main");
    for (path, mode) in [("data", 0o700), ("run", 0o700), ("data/kip.cnf", 0o600)] {
        let metadata = std::fs::metadata(instance_dir.join(path)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777,
            mode,
            "{path}"
        );
    }
    assert!(!instance_dir.join("data/kip-bootstrap").exists());

    // A dynamic setting: applied live, the same process.
    stack
        .project
        .write("kip.hcl", config("max_connections = 150", ""));
    let plan = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.snapshot());
    assert!(
        plan.stdout.contains("# applied live, without a restart")
            && !plan.stdout.contains("restarts the instance"),
        "{}",
        plan.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        pid_of(&stack, "mariadb.main"),
        pid,
        "max_connections restarted MariaDB"
    );
    assert_eq!(sql(&url, &["SELECT @@max_connections"]), [["150"]]);

    // A setting MariaDB reads only at start: the plan says it restarts, and it does, data kept.
    stack.project.write(
        "kip.hcl",
        config("max_connections = 150, back_log = 70", ""),
    );
    let plan = stack.kip(&["plan"]);
    assert!(
        plan.stdout.contains("# restarts the instance") && plan.stdout.contains("forces a restart"),
        "{}",
        plan.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    let pid = pid_of(&stack, "mariadb.main");
    assert_eq!(sql(&url, &["SELECT @@back_log"]), [["70"]]);
    assert_eq!(sql(&database, &["SELECT COUNT(*) FROM orders"]), [["2"]]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);

    // Killed from outside: the supervisor starts it again, with its data (InnoDB recovers).
    sql(&database, &["INSERT INTO orders VALUES (3)"]);
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let again = restarted(&stack, "mariadb.main", pid);
    assert_ne!(again, pid);
    assert_eq!(sql(&database, &["SELECT COUNT(*) FROM orders"]), [["3"]]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);

    // A database that holds tables is never dropped: the apply says why, the data stays.
    let without_shop =
        config("max_connections = 150, back_log = 70", "").replace("  database \"shop\" {}\n", "");
    stack.project.write("kip.hcl", &without_shop);
    let refused = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(refused.code, 1, "{}", refused.snapshot());
    assert!(
        refused
            .stderr
            .contains("database \"shop\" is not empty (1 tables)")
            && refused.stderr.contains("hint:"),
        "{}",
        refused.stderr
    );
    assert_eq!(sql(&database, &["SELECT COUNT(*) FROM orders"]), [["3"]]);

    // Destroy leaves no process, no socket, no directory.
    stack.ok(&["destroy", "--auto-approve"]);
    assert!(!Path::new(&format!("/proc/{again}")).exists());
    assert!(!instance_dir.exists(), "the instance's directory is left");
}

#[test]
fn names_and_settings_mariadb_would_refuse_are_lint_errors_with_their_spans() {
    let long = "d".repeat(65);
    let stack = Stack::new(&format!(
        "mariadb \"main\" {{\n  version  = \"10.11\"\n  settings = {{ socket = \"/tmp/x\" }}\n  database \"{long}\" {{}}\n  database \"mysql\" {{}}\n  user \"root\" {{}}\n  user \"app\" {{\n    grant {{\n      on         = \"shop\"\n      privileges = [\"SELECT (a)\"]\n    }}\n  }}\n}}\n"
    ));
    crate::support::lint_reports(
        &stack,
        &[
            "kip.hcl:3:14",
            "kip sets `socket` itself",
            "kip.hcl:4:12",
            "at most 64 characters; this one has 65",
            "kip.hcl:5:12",
            "`mysql` is MariaDB's own database",
            "kip.hcl:6:8",
            "`root` is the instance's own account",
            "kip.hcl:9:20",
            "\"shop\" is not a grant target",
            "kip.hcl:10:20",
            "\"SELECT (a)\" is not a privilege name",
        ],
    );
    let apply = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.snapshot());
    assert!(!stack.project.path().join(".kip/state.json").exists());
}

#[test]
fn a_taken_port_is_refused_before_spawning_and_a_free_one_is_served_on_loopback() {
    let holder = std::net::TcpListener::bind(("127.0.0.1", crate::support::free_port())).unwrap();
    let port = holder.local_addr().unwrap().port();
    let stack = Stack::new(&format!(
        "mariadb \"main\" {{\n  version = \"10.11\"\n  port    = {port}\n}}\n"
    ));
    crate::support::refuses_taken_port(&stack, port);
    drop(holder);
    stack.ok(&["apply", "--auto-approve"]);
    let url = stack.url("mariadb.main");
    assert!(url.ends_with(&format!("@127.0.0.1:{port}/")), "{url}");
    assert_eq!(
        sql(&url, &["SELECT @@bind_address, @@port, @@skip_networking"]),
        [["127.0.0.1".to_owned(), port.to_string(), "0".to_owned()]]
    );
}

#[test]
fn a_failed_start_reports_the_servers_log() {
    let stack = Stack::new(
        "mariadb \"main\" {\n  version  = \"10.11\"\n  settings = { no_such_option = 1 }\n}\n",
    );
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("mariadb.main")
            && run.stderr.contains("unknown variable 'no_such_option"),
        "the error quotes MariaDB's log\n{}",
        run.stderr
    );
    // Fixing it repairs it.
    stack
        .project
        .write("kip.hcl", "mariadb \"main\" {\n  version = \"10.11\"\n}\n");
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(sql(&stack.url("mariadb.main"), &["SELECT 1"]), [["1"]]);
}

/// The MariaDB client from the test mirror's build, unpacked where every account can run it.
fn client() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let archive = std::fs::read_dir(test_mirror().join("mariadb"))
        .unwrap()
        .flatten()
        .flat_map(|version| {
            std::fs::read_dir(version.path().join("x86_64-unknown-linux-gnu")).unwrap()
        })
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.to_string_lossy().ends_with(".tar.gz"))
        .expect("the test mirror holds a MariaDB build");
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(dir.path())
        .arg("bin/mariadb")
        .status()
        .unwrap();
    assert!(status.success());
    let binary = dir.path().join("bin/mariadb");
    (dir, binary)
}

/// Connection attempts as root without a password, with the empty password, and as the polling account's own
/// name (MariaDB's `unix_socket` login), over the socket and over TCP; `GOT-IN` when one got in.
fn attempts(client: &Path, socket: &Path, port: u16, user: &str, output: &Path) -> String {
    let client = client.display();
    let socket = socket.display();
    let output = output.display();
    let mut script = String::new();
    for (how, target) in [
        ("SOCKET", format!("--socket='{socket}' --protocol=socket")),
        (
            "TCP",
            format!("--host=127.0.0.1 --port={port} --protocol=tcp"),
        ),
    ] {
        for (who, credentials) in [
            ("ROOT", "--user=root".to_owned()),
            ("ROOT-EMPTY", "--user=root --password=".to_owned()),
            ("OWN-ACCOUNT", format!("--user={user}")),
        ] {
            script.push_str(&format!(
                "{client} --no-defaults --connect-timeout=1 {target} {credentials} -e 'SELECT 1' >/dev/null 2>>'{output}' \
                 && echo GOT-IN-AS-{who}-OVER-{how} >>'{output}'; "
            ));
        }
    }
    script
}

/// The engine's account of a project (`kip-…`), from the owner of its running server: its name, uid and gid.
fn engine_account(stack: &Stack) -> (String, String, String) {
    let owner = owner_of(pid_of(stack, "mariadb.main"));
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields[0] == owner)
                .then(|| (owner.clone(), fields[2].to_owned(), fields[3].to_owned()))
        })
        .unwrap()
}

/// Another local account (`nobody`) and the engine's own account poll the socket and the port with the MariaDB
/// client, without a password, through first starts from the template, also first starts whose kip is killed
/// midway: never does a session open, while the server does answer them (`Access denied`).
#[test]
fn other_local_accounts_polling_a_first_start_never_get_in() {
    let (_client_dir, client) = client();
    let port = free_port();
    // A Valkey beside it keeps the project, and so its engine account, through MariaDB's destroys: kip deletes the
    // account with the project's last instance, and useradd hands a freed uid to the next account at once (another
    // test's, whose userdel would then find this test's poller running as it).
    let stack = Stack::new(&format!(
        "mariadb \"main\" {{\n  version = \"10.11\"\n  port    = {port}\n}}\n\nvalkey \"keep\" {{\n  version = \"8\"\n}}\n"
    ));
    // The first apply makes the engine's account (and the template); the polled first starts come after.
    stack.ok(&["apply", "--auto-approve"]);
    let (account, uid, gid) = engine_account(&stack);
    let destroy = || stack.ok(&["destroy", "mariadb.main", "--auto-approve"]);
    destroy();
    let socket = stack
        .project
        .path()
        .join(".kip/run/mariadb.main/run/mariadb.sock");
    let watch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        watch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let nobody_dir = watch.path().join("nobody");
    let engine_dir = watch.path().join("engine");
    for dir in [&nobody_dir, &engine_dir] {
        std::fs::create_dir(dir).unwrap();
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    }
    let nobody = HostilePoller::start(&nobody_dir, |output| {
        attempts(&client, &socket, port, "nobody", output)
    });
    let engine = HostilePoller::start_as((&uid, &gid), &engine_dir, |output| {
        attempts(&client, &socket, port, &account, output)
    });
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..2 {
        stack.ok(&["apply", "--auto-approve"]);
        destroy();
    }
    // First starts whose kip is SIGKILLed at each moment (provisioning, starting, the socket appearing): the
    // server is left with the bootstrap password, and the next apply still gets in and secures it.
    for moment in ["mariadb.main: provisioning", "mariadb.main: starting"] {
        kill_when_logged(stack.command(&["apply", "--auto-approve"]), moment);
        crate::support::settled(&stack, "mariadb.main");
    }
    stack.ok(&["apply", "--auto-approve"]);
    destroy();
    kill_when_exists(stack.command(&["apply", "--auto-approve"]), &socket);
    crate::support::settled(&stack, "mariadb.main");
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    std::thread::sleep(Duration::from_millis(300));
    let seen_by_nobody = nobody.finish();
    let seen_by_engine = engine.finish();
    for (who, seen) in [
        ("nobody", &seen_by_nobody),
        ("the engine's account", &seen_by_engine),
    ] {
        assert!(!seen.contains("GOT-IN"), "{who} got in:\n{seen}");
        assert!(
            seen.contains("Access denied"),
            "{who} never reached the server to be refused:\n{seen}"
        );
    }
    // The engine's account reaches the socket (nobody cannot: the run directory is 0700), and is refused there too.
    assert!(
        seen_by_engine.contains(&format!("Access denied for user '{account}'@'localhost'")),
        "{seen_by_engine}"
    );
    assert_eq!(sql(&stack.url("mariadb.main"), &["SELECT 1"]), [["1"]]);
    assert_eq!(
        engine_account(&stack),
        (account, uid, gid),
        "the same account throughout"
    );
}

/// A declared root password changes live (the same process): the old one stops working, the new one works, also
/// after a restart.
#[test]
fn a_new_root_password_is_applied_live() {
    let config = |password: &str, back_log: u32| {
        format!(
            "mariadb \"main\" {{\n  version       = \"10.11\"\n  root_password = \"{password}\"\n  settings      = {{ back_log = {back_log} }}\n}}\n"
        )
    };
    let stack = Stack::new(&config("first pass/word", 80));
    stack.ok(&["apply", "--auto-approve"]);
    let old_url = stack.url("mariadb.main");
    assert!(
        old_url.starts_with("mysql://root:first%20pass%2Fword@"),
        "{old_url}"
    );
    let pid = pid_of(&stack, "mariadb.main");
    stack.project.write("kip.hcl", config("second", 80));
    let plan = stack.kip(&["plan"]);
    assert!(
        plan.stdout.contains("# applied live, without a restart"),
        "{}",
        plan.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(pid_of(&stack, "mariadb.main"), pid);
    let denied = query(&old_url, &["SELECT 1"]).unwrap_err();
    assert!(denied.contains("Access denied"), "{denied}");
    let url = stack.url("mariadb.main");
    assert_eq!(sql(&url, &["SELECT 1"]), [["1"]]);
    stack.project.write("kip.hcl", config("second", 90));
    stack.ok(&["apply", "--auto-approve"]);
    assert_ne!(pid_of(&stack, "mariadb.main"), pid);
    assert_eq!(sql(&url, &["SELECT @@back_log"]), [["90"]]);
}

/// A state lost while the server runs: kip has no password for it and opens nothing to get one; it says how to
/// recover. Once the server is stopped, the next apply gives root a new password offline and keeps the data.
#[test]
fn a_lost_state_never_opens_access_and_says_how_to_recover() {
    let stack =
        Stack::new("mariadb \"main\" {\n  version = \"10.11\"\n  database \"shop\" {}\n}\n");
    stack.ok(&["apply", "--auto-approve"]);
    let url = stack.url("mariadb.main");
    sql(
        &url,
        &[
            "CREATE TABLE shop.kept (id INT) ENGINE = InnoDB",
            "INSERT INTO shop.kept VALUES (7)",
        ],
    );
    let state = stack.project.path().join(".kip/state.json");
    let saved = std::fs::read(&state).unwrap();
    std::fs::remove_file(&state).unwrap();
    let _ = std::fs::remove_file(stack.project.path().join(".kip/state.json.backup"));
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr
            .contains("kip's state no longer knows this instance"),
        "{}",
        run.stderr
    );
    // The old password (kip's, before the state was lost) still works: nothing was reset.
    assert_eq!(sql(&url, &["SELECT id FROM shop.kept"]), [["7"]]);
    // Stopped (with the state put back to stop it), then lost again: root gets a new password, offline.
    std::fs::write(&state, saved).unwrap();
    stack.ok(&["down"]);
    std::fs::remove_file(&state).unwrap();
    let _ = std::fs::remove_file(stack.project.path().join(".kip/state.json.backup"));
    stack.ok(&["apply", "--auto-approve"]);
    let new_url = stack.url("mariadb.main");
    assert_ne!(new_url, url);
    assert!(
        query(&url, &["SELECT 1"]).is_err(),
        "the lost password still works"
    );
    assert_eq!(sql(&new_url, &["SELECT id FROM shop.kept"]), [["7"]]);
}

/// kip.cnf's fsync runs beside the server's first start, so a power loss can leave it empty while the state
/// survives; a server started on an empty one would listen on the network with the defaults. The next start
/// renders it again first: unix socket only, and the same login works.
#[test]
fn a_config_a_power_loss_left_empty_is_rendered_again_before_the_next_start() {
    let stack = Stack::new("mariadb \"main\" {\n  version = \"10.11\"\n}\n");
    stack.ok(&["apply", "--auto-approve"]);
    let url = stack.url("mariadb.main");
    stack.ok(&["down"]);
    let cnf = stack
        .project
        .path()
        .join(".kip/run/mariadb.main/data/kip.cnf");
    let rendered = std::fs::read_to_string(&cnf).unwrap();
    assert!(rendered.contains("skip-networking"), "{rendered}");
    std::fs::write(&cnf, "").unwrap();
    stack.ok(&["up"]);
    assert_eq!(std::fs::read_to_string(&cnf).unwrap(), rendered);
    assert_eq!(sql(&url, &["SELECT 1"]), [["1"]]);
}

/// Hostile names: a database and a user whose names hold quotes, a backtick, a dot, spaces, unicode and shell
/// metacharacters converge, log in through their exported url, plan nothing more, and are pruned.
#[test]
fn hostile_names_converge_log_in_and_are_pruned() {
    let database = "it's a `db`. ü $(x)";
    let user = "o'neil \"x\"; ü";
    let hcl_quote = |text: &str| {
        text.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace("${", "$${")
    };
    let config = |objects: bool| {
        let objects = if objects {
            format!(
                "  database \"{}\" {{}}\n  user \"{}\" {{}}\n",
                hcl_quote(database),
                hcl_quote(user)
            )
        } else {
            String::new()
        };
        format!("mariadb \"main\" {{\n  version = \"10.11\"\n{objects}}}\n")
    };
    let stack = Stack::new(&config(true));
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    let root = stack.url("mariadb.main");
    let escaped = |text: &str| text.replace('\'', "''");
    assert_eq!(
        sql(
            &root,
            &[&format!(
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{}'",
                escaped(database)
            )]
        ),
        [["1".to_owned()]]
    );
    let address = format!("mariadb.main.user[\"{}\"]", hcl_quote(user));
    let as_user = stack.url(&address);
    assert_eq!(
        sql(&as_user, &["SELECT CURRENT_USER()"]),
        [[format!("{user}@localhost")]]
    );
    stack.project.write("kip.hcl", config(false));
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        sql(
            &root,
            &[&format!(
                "SELECT (SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{}') + \
                 (SELECT COUNT(*) FROM mysql.user WHERE User = '{}')",
                escaped(database),
                escaped(user)
            )]
        ),
        [["0".to_owned()]]
    );
}
