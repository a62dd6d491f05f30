//! Plan and apply end to end with real PostgreSQL (14 and 16) from the test mirror, served over loopback HTTP:
//! apply → connect with `kip url` and run SQL → no changes → drift made with SQL shows up and apply repairs it →
//! a database removed from the config is destroyed → a settings change → destroy leaves no process, socket or
//! lock. A guard destroys everything also when a step fails.

use std::path::PathBuf;

use crate::http::TestServer;
use crate::support::{Project, Run, test_mirror};

/// Runs kip with the mirror set; destroys whatever the project runs when dropped.
pub struct Stack {
    pub project: Project,
    pub server: TestServer,
}

impl Stack {
    pub fn new(config: &str) -> Stack {
        Stack {
            project: Project::with_config(config),
            server: TestServer::serve(&test_mirror()),
        }
    }

    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = self.project.command(args);
        command.env("KIP_MIRROR", self.server.base_url());
        command
    }

    pub fn kip(&self, args: &[&str]) -> Run {
        self.project.run_with(self.command(args))
    }

    /// Runs kip with `input` on its stdin.
    pub fn kip_with_input(&self, args: &[&str], input: &str) -> Run {
        Stack::run_with_input(self.command(args), input)
    }

    /// Runs `command` with `input` on its stdin.
    pub fn run_with_input(mut command: std::process::Command, input: &str) -> Run {
        use std::io::Write as _;
        use std::process::Stdio;
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn ok(&self, args: &[&str]) -> Run {
        let run = self.kip(args);
        assert_eq!(run.code, 0, "kip {}\n{}", args.join(" "), run.snapshot());
        run
    }

    pub fn url(&self, address: &str) -> String {
        let run = self.ok(&["url", address]);
        run.stdout
            .trim()
            .replace("[PROJECT]", self.project.path().to_str().unwrap())
    }

    pub fn sql(&self, address: &str, statements: &str) -> Vec<Vec<String>> {
        let url = self.url(address);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (client, connection) = url
                .parse::<tokio_postgres::Config>()
                .unwrap()
                .connect(tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let mut rows = Vec::new();
            for message in client.simple_query(statements).await.unwrap() {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                    rows.push(
                        (0..row.len())
                            .map(|i| row.get(i).unwrap_or("").to_owned())
                            .collect(),
                    );
                }
            }
            rows
        })
    }

    pub fn socket_dir(&self) -> PathBuf {
        let url = self.url("postgres.main");
        let host = url
            .split("host=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .replace("%2F", "/");
        PathBuf::from(host)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.kip(&["destroy", "--auto-approve"]);
    }
}

fn config(version: &str, work_mem: &str, extra: &str) -> String {
    format!(
        r#"postgres "main" {{
  version  = "{version}"
  settings = {{ work_mem = "{work_mem}" }}
  role "app" {{ login = true }}
  database "shop" {{
    owner      = "app"
    extensions = ["pgcrypto"]
  }}
{extra}  grant {{
    role       = "app"
    database   = "shop"
    privileges = ["ALL"]
  }}
}}
"#
    )
}

fn postgres_end_to_end(version: &str) {
    let stack = Stack::new(&config(version, "8MB", ""));
    let run = stack.ok(&["apply", "--auto-approve"]);
    assert!(
        run.stdout.contains("+ postgres.main (instance)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("Plan: 4 to add, 0 to change, 0 to destroy."),
        "{}",
        run.stdout
    );
    assert!(
        stack
            .project
            .read("kip.lock")
            .contains(&format!("engine \"postgres\" \"{version}\""))
    );

    // Connect with the database URL as the app role and use it.
    let rows = stack.sql(
        "postgres.main.database.shop",
        "CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2); \
         SELECT current_user, current_database(), count(*)::text, current_setting('work_mem') FROM orders",
    );
    assert_eq!(rows, [["app", "shop", "2", "8MB"]]);
    let rows = stack.sql(
        "postgres.main.database.shop",
        "SELECT extname FROM pg_extension WHERE extname = 'pgcrypto'",
    );
    assert_eq!(rows, [["pgcrypto"]]);
    let server_version = stack.sql("postgres.main", "SHOW server_version");
    assert!(
        server_version[0][0].starts_with(&format!("{version}.")),
        "{server_version:?}"
    );

    // Nothing to do.
    let run = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(run.stdout.contains("No changes."), "{}", run.stdout);

    // Drift made with SQL shows up, and apply repairs it.
    stack.sql("postgres.main", "ALTER ROLE app NOLOGIN");
    let run = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(run.code, 2, "{}", run.snapshot());
    assert!(
        run.stdout.contains("~ postgres.main.role.app (role)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("login = false -> true"),
        "{}",
        run.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    assert_eq!(
        stack.sql(
            "postgres.main.database.shop",
            "SELECT count(*)::text FROM orders"
        ),
        [["2"]],
        "data kept"
    );

    // A database removed from the config shows `-`, and apply drops it.
    stack
        .project
        .write("kip.hcl", config(version, "8MB", "  database \"old\" {}\n"));
    stack.ok(&["apply", "--auto-approve"]);
    stack.project.write("kip.hcl", config(version, "8MB", ""));
    let run = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stdout
            .contains("- postgres.main.database.old (database)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("Plan: 0 to add, 0 to change, 1 to destroy."),
        "{}",
        run.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    let databases = stack.sql(
        "postgres.main",
        "SELECT datname FROM pg_database WHERE datname IN ('old', 'shop')",
    );
    assert_eq!(databases, [["shop"]]);

    // A settings change is an in-place update that the running server picks up.
    stack.project.write("kip.hcl", config(version, "16MB", ""));
    let run = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stdout.contains("~ postgres.main (instance)"),
        "{}",
        run.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.sql("postgres.main", "SHOW work_mem"), [["16MB"]]);
    let env = stack.ok(&["env", "--format", "dotenv"]);
    assert!(
        env.stdout.contains("DATABASE_URL=postgresql://app:"),
        "{}",
        env.stdout
    );

    // Generated passwords live in the state only: never in a plan, kip's output, or any log.
    let passwords: Vec<String> = ["postgres.main", "postgres.main.database.shop"]
        .iter()
        .map(|address| {
            let url = stack.url(address);
            url.split_once("://")
                .unwrap()
                .1
                .split_once('@')
                .unwrap()
                .0
                .split_once(':')
                .unwrap()
                .1
                .to_owned()
        })
        .collect();
    assert!(passwords.iter().all(|p| p.len() >= 16), "{passwords:?}");
    stack.project.write(
        "kip.hcl",
        config(version, "16MB", "  role \"extra\" { login = true }\n"),
    );
    let mut printed = Vec::new();
    for args in [
        &["plan"][..],
        &["plan", "--json"],
        &["apply", "--auto-approve"],
    ] {
        let run = stack.kip(args);
        printed.push(run.stdout + &run.stderr);
    }
    // Every log under .kip/logs (the supervisor's, and each instance's directory of process logs).
    let mut directories = vec![stack.project.path().join(".kip/logs")];
    while let Some(directory) = directories.pop() {
        for entry in std::fs::read_dir(&directory).unwrap().flatten() {
            if entry.path().is_dir() {
                directories.push(entry.path());
            } else {
                printed.push(
                    String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).into_owned(),
                );
            }
        }
    }
    let extra = stack.url("postgres.main.role.extra");
    let extra_password = extra
        .split_once("://")
        .unwrap()
        .1
        .split_once('@')
        .unwrap()
        .0
        .split_once(':')
        .unwrap()
        .1;
    for password in passwords.iter().map(String::as_str).chain([extra_password]) {
        for text in &printed {
            assert!(
                !text.contains(password),
                "a generated password leaked:\n{text}"
            );
        }
    }
    let state_mode = std::fs::metadata(stack.project.path().join(".kip/state.json"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&state_mode) & 0o777,
        0o600
    );

    // Destroy leaves no process, socket or lock.
    let socket_dir = stack.socket_dir();
    assert!(socket_dir.join(".s.PGSQL.5432").exists());
    let ps = stack.ok(&["ps", "--json"]);
    let processes: serde_json::Value = serde_json::from_str(&ps.stdout).unwrap();
    let pid = processes[0]["pid"].as_u64().unwrap();
    stack.ok(&["destroy", "--auto-approve"]);
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists(),
        "postgres (pid {pid}) is gone"
    );
    assert!(
        !socket_dir.join(".s.PGSQL.5432").exists(),
        "the socket is gone"
    );
    assert!(
        !socket_dir.join(".s.PGSQL.5432.lock").exists(),
        "the socket lock is gone"
    );
    assert!(
        !stack.project.path().join(".kip/supervisor.sock").exists(),
        "the supervisor is gone"
    );
    let state: serde_json::Value =
        serde_json::from_str(&stack.project.read(".kip/state.json")).unwrap();
    assert_eq!(state["instances"], serde_json::json!({}));
}

#[test]
fn postgres_16_end_to_end() {
    postgres_end_to_end("16");
}

#[test]
fn postgres_14_end_to_end() {
    postgres_end_to_end("14");
}

#[test]
fn a_saved_plan_applies_exactly_and_is_refused_once_stale() {
    let stack = Stack::new(
        "postgres \"main\" {\n  version = \"16\"\n  role \"a\" {}\n}\n\npostgres \"other\" {\n  version = \"16\"\n}\n",
    );
    // A targeted plan covers one instance only.
    let run = stack.ok(&[
        "plan",
        "--target",
        "postgres.main.role.a",
        "--out",
        "main.plan",
    ]);
    assert!(
        run.stdout.contains("+ postgres.main (instance)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("+ postgres.main.role.a (role)"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("postgres.other"), "{}", run.stdout);
    assert!(run.stdout.contains("Plan: 2 to add"), "{}", run.stdout);
    let run = stack.ok(&["apply", "main.plan"]);
    assert!(
        run.stdout.contains("Apply complete! Resources: 2 added"),
        "{}",
        run.stdout
    );
    let ps = stack.ok(&["ps", "--json"]);
    assert!(
        !ps.stdout.contains("postgres.other"),
        "the other instance was not touched\n{}",
        ps.stdout
    );
    // The same plan again: the state moved on since, so it is refused.
    let run = stack.kip(&["apply", "main.plan"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("the state changed since"),
        "{}",
        run.stderr
    );
    // A plan made, then a configuration edit: refused too.
    stack.ok(&["plan", "--out", "all.plan"]);
    stack.project.write(
        "kip.hcl",
        "postgres \"main\" {\n  version = \"16\"\n  role \"a\" {}\n  role \"b\" {}\n}\n",
    );
    let run = stack.kip(&["apply", "all.plan"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("the configuration changed since"),
        "{}",
        run.stderr
    );
}

#[test]
fn sync_converges_only_running_engines_and_destroy_takes_one_instance() {
    let config = "postgres \"main\" {\n  version = \"16\"\n}\n\npostgres \"other\" {\n  version = \"16\"\n}\n";
    let stack = Stack::new(config);
    stack.ok(&["apply", "--auto-approve"]);
    stack.ok(&["down"]);
    // kip down stops PostgreSQL as usual: a fast shutdown, which writes its checkpoint.
    let main_log = stack.project.read(".kip/logs/postgres.main/postgres.log");
    assert!(
        main_log.contains("received fast shutdown request"),
        "{main_log}"
    );
    stack.project.write(
        "kip.hcl",
        config.replace(
            "  version = \"16\"\n}\n\npostgres \"other\"",
            "  version = \"16\"\n  role \"late\" {}\n}\n\npostgres \"other\"",
        ),
    );
    let run = stack.kip(&["sync", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr
            .contains("does not run, and kip sync never starts"),
        "{}",
        run.stderr
    );
    stack.ok(&["up"]);
    stack.ok(&["sync", "--auto-approve"]);
    assert_eq!(
        stack.sql(
            "postgres.main",
            "SELECT rolname FROM pg_roles WHERE rolname = 'late'"
        ),
        [["late"]]
    );

    let run = stack.kip(&["destroy", "postgres.othr", "--auto-approve"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("did you mean postgres.other?"),
        "{}",
        run.stderr
    );
    // Destroy deletes the data right after the stop, so PostgreSQL gets an immediate shutdown: no checkpoint is
    // written for nobody. What it logs from now on is read through a descriptor opened before the log is deleted.
    let mut other_log = std::fs::File::open(
        stack
            .project
            .path()
            .join(".kip/logs/postgres.other/postgres.log"),
    )
    .unwrap();
    std::io::Seek::seek(&mut other_log, std::io::SeekFrom::End(0)).unwrap();
    stack.ok(&["destroy", "postgres.other", "--auto-approve"]);
    assert!(
        !stack
            .project
            .path()
            .join(".kip/logs/postgres.other")
            .exists()
    );
    let mut said = String::new();
    std::io::Read::read_to_string(&mut other_log, &mut said).unwrap();
    assert!(
        said.contains("received immediate shutdown request"),
        "{said}"
    );
    assert!(!said.contains("received fast shutdown request"), "{said}");
    let ps = stack.ok(&["ps", "--json"]);
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&ps.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["postgres.main"], "only the other instance is gone");
    assert_eq!(stack.sql("postgres.main", "SELECT 1"), [["1"]]);
}

#[test]
fn prevent_destroy_restart_settings_json_plans_and_refresh_false() {
    let config = |buffers: &str, databases: &str| {
        format!(
            "postgres \"main\" {{\n  version  = \"16\"\n  settings = {{ shared_buffers = \"{buffers}\" }}\n{databases}}}\n"
        )
    };
    let keep = "  database \"keep\" {\n    prevent_destroy = true\n  }\n";
    let stack = Stack::new(&config("32MB", keep));
    stack.ok(&["apply", "--auto-approve"]);

    // A setting PostgreSQL reads only at start: apply restarts the server, and the value is live after.
    stack.project.write("kip.hcl", config("48MB", keep));
    let plan = stack.kip(&["plan", "--json", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.snapshot());
    let json: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(json["format_version"], "2.0");
    let change = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["action"] != "noop")
        .unwrap();
    assert_eq!(change["address"], "postgres.main");
    assert_eq!(change["action"], "update");
    assert_eq!(change["before"]["settings"]["shared_buffers"], "32MB");
    assert_eq!(change["after"]["settings"]["shared_buffers"], "48MB");
    // An unchanged object shows what exists: its before-values, which are its after-values.
    let kept = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "postgres.main.database.keep")
        .unwrap();
    assert_eq!(kept["action"], "noop");
    assert!(kept["before"].is_object(), "{kept}");
    assert_eq!(kept["before"], kept["after"]);
    // A saved plan is the same format.
    stack.ok(&["plan", "--out", "saved.plan"]);
    let saved: serde_json::Value = serde_json::from_str(&stack.project.read("saved.plan")).unwrap();
    let kept_saved = saved["plan"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "postgres.main.database.keep")
        .unwrap();
    assert!(kept_saved["before"].is_object(), "{kept_saved}");
    assert_eq!(kept_saved["before"], kept_saved["after"]);
    let run = stack.ok(&["apply", "--auto-approve"]);
    assert!(
        run.stderr.contains("postgres.main: restarting"),
        "{}",
        run.stderr
    );
    assert_eq!(
        stack.sql("postgres.main", "SHOW shared_buffers"),
        [["48MB"]]
    );

    // --refresh=false trusts the state: a role dropped behind kip's back does not show.
    stack.project.write(
        "kip.hcl",
        config("48MB", &format!("{keep}  role \"r\" {{}}\n")),
    );
    stack.ok(&["apply", "--auto-approve"]);
    stack.sql("postgres.main", "DROP ROLE r");
    assert_eq!(
        stack
            .kip(&["plan", "--refresh=false", "--detailed-exitcode"])
            .code,
        0
    );
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 2);
    stack.ok(&["apply", "--auto-approve"]);

    // Removing a database with prevent_destroy is refused by plan and apply, and the database stays.
    stack
        .project
        .write("kip.hcl", config("48MB", "  role \"r\" {}\n"));
    let run = stack.kip(&["plan"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr
            .contains("postgres.main.database.keep, which set prevent_destroy = true"),
        "{}",
        run.stderr
    );
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        stack.sql(
            "postgres.main",
            "SELECT datname FROM pg_database WHERE datname = 'keep'"
        ),
        [["keep"]]
    );
    // Unprotected first, it can go.
    let unprotected = "  database \"keep\" {\n    prevent_destroy = false\n  }\n  role \"r\" {}\n";
    stack.project.write("kip.hcl", config("48MB", unprotected));
    stack.ok(&["apply", "--auto-approve"]);
    stack
        .project
        .write("kip.hcl", config("48MB", "  role \"r\" {}\n"));
    stack.ok(&["apply", "--auto-approve"]);
    assert!(
        stack
            .sql(
                "postgres.main",
                "SELECT datname FROM pg_database WHERE datname = 'keep'"
            )
            .is_empty()
    );
}

#[test]
fn removing_a_grant_revokes_it_and_removing_the_last_extension_drops_it() {
    let with = "postgres \"main\" {\n  version = \"16\"\n  role \"reader\" {}\n  database \"shop\" {\n    extensions = [\"pgcrypto\"]\n  }\n  grant {\n    role       = \"reader\"\n    database   = \"shop\"\n    privileges = [\"CREATE\"]\n  }\n}\n";
    let without = "postgres \"main\" {\n  version = \"16\"\n  role \"reader\" {}\n  database \"shop\" {\n    extensions = []\n  }\n}\n";
    let stack = Stack::new(with);
    stack.ok(&["apply", "--auto-approve"]);
    let held = "SELECT has_database_privilege('reader', 'shop', 'CREATE')::text";
    assert_eq!(stack.sql("postgres.main", held), [["true"]]);
    stack.project.write("kip.hcl", without);
    let run = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(run.code, 2, "{}", run.snapshot());
    assert!(
        run.stdout.contains("- postgres.main.grant[0] (grant)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("extensions = [\"pgcrypto\"] -> []"),
        "{}",
        run.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.sql("postgres.main", held), [["false"]]);
    let extensions = stack.sql(
        "postgres.main.database.shop",
        "SELECT extname FROM pg_extension WHERE extname = 'pgcrypto'",
    );
    assert!(extensions.is_empty(), "{extensions:?}");
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}

#[test]
fn a_new_minor_restarts_in_place_and_a_new_major_replaces() {
    let instance = |version: &str| {
        format!("postgres \"main\" {{\n  version = \"{version}\"\n  database \"shop\" {{}}\n}}\n")
    };
    let stack = Stack::new(&instance("16.13"));
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        stack.sql("postgres.main", "SHOW server_version"),
        [["16.13"]]
    );
    stack.sql(
        "postgres.main.database.shop",
        "CREATE TABLE kept (v int); INSERT INTO kept VALUES (1)",
    );

    // A new minor: an in-place update, the server restarts on the new build with its data.
    stack.project.write("kip.hcl", instance("16.14"));
    let plan = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.snapshot());
    assert!(
        plan.stdout.contains("~ postgres.main (instance)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("version = \"16.13\" -> \"16.14\""),
        "{}",
        plan.stdout
    );
    assert!(
        !plan.stdout.contains("forces replacement"),
        "{}",
        plan.stdout
    );
    let run = stack.ok(&["apply", "--auto-approve"]);
    assert!(
        run.stderr.contains("postgres.main: restarting"),
        "{}",
        run.stderr
    );
    assert_eq!(
        stack.sql("postgres.main", "SHOW server_version"),
        [["16.14"]]
    );
    assert_eq!(
        stack.sql("postgres.main.database.shop", "SELECT v FROM kept"),
        [["1"]]
    );
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);

    // A new major: the on-disk format changes, so the plan replaces the instance and says why.
    stack.project.write("kip.hcl", instance("14"));
    let plan = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.snapshot());
    assert!(
        plan.stdout.contains("-/+ postgres.main (instance)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("major") && plan.stdout.contains("# forces replacement"),
        "{}",
        plan.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert!(stack.sql("postgres.main", "SHOW server_version")[0][0].starts_with("14."));
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}

/// The whole, stamped spares `cache` holds (`templates/.spares/<name>`).
fn stamped_spares(cache: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache.join("templates/.spares"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.join("kip-spare").is_file())
        .collect()
}

/// Waits up to 60 s for `cache` to hold `count` stamped spares (prepared in the background after an apply);
/// returns them.
fn wait_for_stamped_spares(cache: &std::path::Path, count: usize) -> Vec<PathBuf> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let spares = stamped_spares(cache);
        if spares.len() >= count {
            return spares;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{count} spares were not prepared within 60 s: {spares:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `kip ARGS` in `stack` with `cache` as its cache directory.
fn on_cache(stack: &Stack, cache: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut command = stack.command(args);
    command.env("KIP_CACHE_DIR", cache);
    command
}

/// `kip apply` of `stack` on the shared `cache`, with spares on and kip's debug log (which says where a data
/// directory came from); it must succeed.
fn apply_with_spares(stack: &Stack, cache: &std::path::Path) -> Run {
    let mut apply = on_cache(stack, cache, &["apply", "--auto-approve"]);
    apply.env("KIP_LOG", "debug").env_remove("KIP_SPARES");
    let run = stack.project.run_with(apply);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    run
}

#[test]
fn the_next_instance_is_renamed_from_a_spare_prepared_after_the_last_one() {
    use std::os::unix::fs::MetadataExt as _;
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    let config = "postgres \"main\" {\n  version = \"16\"\n  role \"app\" { login = true }\n}\n";
    let first = Stack::new(config);
    let mut apply = first.command(&["apply", "--auto-approve"]);
    apply.env_remove("KIP_SPARES");
    let run = first.project.run_with(apply);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let cache = first.project.cache_dir();
    let data_dir_of = |stack: &Stack| {
        std::fs::read_dir(stack.project.path().join(".kip/run"))
            .unwrap()
            .flatten()
            .map(|entry| entry.path().join("data"))
            .find(|path| path.join("PG_VERSION").is_file())
            .expect("the instance's data dir under .kip/run")
    };
    let first_account = std::fs::metadata(data_dir_of(&first).join("PG_VERSION"))
        .unwrap()
        .uid();
    // Prepared after the apply exited, by a detached `kip prepare-spare`, for the account of the project that asked
    // (the next instance is most likely that project's again, which then takes it with a rename alone), in kip's
    // own directory closed to every other account (that one included), with no bootstrap password in it.
    let spare = wait_for_stamped_spares(&cache, 1)
        .into_iter()
        .find(|spare| {
            spare
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("postgres-16"))
        })
        .expect("the PostgreSQL 16 template's spare");
    let metadata = std::fs::metadata(&spare).unwrap();
    assert_eq!(metadata.mode() & 0o777, 0o700);
    assert_eq!(metadata.uid(), first_account);
    assert_eq!(
        std::fs::metadata(spare.join("PG_VERSION")).unwrap().uid(),
        first_account
    );
    let spares_dir = spare.parent().unwrap();
    assert_eq!(std::fs::metadata(spares_dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(spares_dir).unwrap().uid(), me);
    assert!(!spare.join("kip-bootstrap").exists());
    assert!(spare.join("PG_VERSION").is_file());
    if me == 0 {
        // nobody, and the account the spare belongs to: neither can reach it.
        for uid in [65534, first_account] {
            let peek = std::process::Command::new("setpriv")
                .arg(format!("--reuid={uid}"))
                .args(["--regid=65534", "--clear-groups", "ls"])
                .arg(&spare)
                .output()
                .unwrap();
            assert!(!peek.status.success(), "uid {uid} lists the spare");
        }
    }

    // Another project on the same cache takes it: a rename, not a copy, and the instance is its own.
    let second = Stack::new(config);
    let run = apply_with_spares(&second, &cache);
    assert!(
        run.stderr.contains("provisioned from the template's spare"),
        "{}",
        run.stderr
    );
    let url = on_cache(&second, &cache, &["url", "postgres.main"]);
    assert_eq!(second.project.run_with(url).code, 0);
    let data_dir = data_dir_of(&second);
    assert!(
        !data_dir.join("kip-spare").exists(),
        "the stamp stays behind"
    );
    let owner = std::fs::metadata(data_dir.join("PG_VERSION"))
        .unwrap()
        .uid();
    if me == 0 {
        assert!(
            owner != 0 && owner != first_account,
            "the claimed data dir is given to this project's engine account"
        );
    }
    // And the spare is prepared again for the next one; `kip cache prune` removes both.
    wait_for_stamped_spares(&cache, 2);
    let pruned = second
        .project
        .run_with(on_cache(&second, &cache, &["cache", "prune"]));
    assert_eq!(pruned.code, 0, "{}", pruned.snapshot());
    assert!(
        pruned
            .stdout
            .starts_with("Removed 2 spare data directories ("),
        "{}",
        pruned.stdout
    );
    assert!(!spare.exists());
    assert!(
        cache.join("templates").read_dir().unwrap().count() > 0,
        "templates stay"
    );
    let destroy = on_cache(&second, &cache, &["destroy", "--auto-approve"]);
    assert_eq!(second.project.run_with(destroy).code, 0);
}

/// The spares of the PostgreSQL 16 template that hold a database made ahead of time (`<template>+database.<slot>`).
fn premade_spares(cache: &std::path::Path) -> Vec<PathBuf> {
    stamped_spares(cache)
        .into_iter()
        .filter(|spare| {
            spare.file_name().is_some_and(|name| {
                let name = name.to_string_lossy();
                name.starts_with("postgres-16") && name.contains("+database.")
            })
        })
        .collect()
}

/// Waits up to 60 s for a spare holding a database made ahead of time.
fn wait_for_premade_spare(cache: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while premade_spares(cache).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no spare with a database was prepared within 60 s: {:?}",
            stamped_spares(cache)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The databases of `postgres.main` in `stack`: name, owner, connection limit, whether it takes connections, and
/// encoding.
fn databases(stack: &Stack) -> Vec<Vec<String>> {
    stack.sql(
        "postgres.main",
        "SELECT datname, pg_get_userbyid(datdba), datconnlimit::text, datallowconn::text, \
         pg_encoding_to_char(encoding) FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1') \
         ORDER BY datname",
    )
}

/// A new instance that declares a database takes a spare whose database was made ahead of time (in the background,
/// after the previous apply), and its first database is that one renamed: the owner, connection limit and flags
/// declared, nothing of kip's left in pg_database or in the state, and a second plan finds nothing to do. A
/// database template1 cannot be copied into (another encoding) is still created.
#[test]
fn a_new_instance_s_first_database_is_the_one_its_spare_made_ahead_of_time() {
    let config = "postgres \"main\" {\n  version = \"16\"\n  role \"app\" { login = true }\n  \
                  database \"shop it's\" {\n    owner            = \"app\"\n    connection_limit = 7\n  }\n  \
                  database \"legacy\" { encoding = \"SQL_ASCII\" }\n}\n";
    let first = Stack::new(config);
    let mut apply = first.command(&["apply", "--auto-approve"]);
    apply.env_remove("KIP_SPARES");
    let run = first.project.run_with(apply);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let cache = first.project.cache_dir();
    wait_for_premade_spare(&cache);

    let second = Stack::new(config);
    let run = apply_with_spares(&second, &cache);
    assert!(
        run.stderr.contains("provisioned from the template's spare")
            && run.stderr.contains("+database."),
        "{}",
        run.stderr
    );
    assert_eq!(
        databases(&second),
        [
            ["legacy", "postgres", "-1", "true", "SQL_ASCII"],
            ["shop it's", "app", "7", "true", "UTF8"],
        ]
    );
    let state = std::fs::read_to_string(second.project.path().join(".kip/state.json")).unwrap();
    assert!(!state.contains("premade-database"), "{state}");
    let plan = second
        .project
        .run_with(on_cache(&second, &cache, &["plan", "--detailed-exitcode"]));
    assert_eq!(plan.code, 0, "{}", plan.snapshot());

    // A first converge that fails before the database is made (a role PostgreSQL refuses), then a configuration
    // without the database: the database made ahead of time is dropped, not left behind.
    wait_for_premade_spare(&cache);
    let broken = "postgres \"main\" {\n  version = \"16\"\n  role \"app\" { valid_until = \"someday\" }\n  \
                  database \"shop\" {}\n}\n";
    let third = Stack::new(broken);
    let mut apply = on_cache(&third, &cache, &["apply", "--auto-approve"]);
    apply.env("KIP_LOG", "debug").env_remove("KIP_SPARES");
    let run = third.project.run_with(apply);
    assert_ne!(run.code, 0, "{}", run.snapshot());
    assert!(run.stderr.contains("+database."), "{}", run.stderr);
    assert!(run.stderr.contains("someday"), "{}", run.snapshot());
    let state = std::fs::read_to_string(third.project.path().join(".kip/state.json")).unwrap();
    assert!(state.contains("premade-database"), "{state}");
    third.project.write(
        "kip.hcl",
        "postgres \"main\" {\n  version = \"16\"\n  role \"app\" {}\n}\n",
    );
    let run = third
        .project
        .run_with(on_cache(&third, &cache, &["apply", "--auto-approve"]));
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert_eq!(databases(&third), Vec::<Vec<String>>::new());
    let state = std::fs::read_to_string(third.project.path().join(".kip/state.json")).unwrap();
    assert!(!state.contains("premade-database"), "{state}");

    for stack in [&second, &third] {
        let destroy = on_cache(stack, &cache, &["destroy", "--auto-approve"]);
        assert_eq!(stack.project.run_with(destroy).code, 0);
    }
    // The preparers these applies started end with both slots filled (no single-user server left running).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while premade_spares(&cache).len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pruned = third
        .project
        .run_with(on_cache(&third, &cache, &["cache", "prune"]));
    assert_eq!(pruned.code, 0, "{}", pruned.snapshot());
}

/// The PostgreSQL 16 template in `cache` (built by an apply).
fn postgres_16_template(cache: &std::path::Path) -> PathBuf {
    std::fs::read_dir(cache.join("templates"))
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.is_dir()
                && path
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("postgres-16"))
        })
        .expect("the PostgreSQL 16 template in the cache")
}

/// A preparer SIGKILLed halfway through its copy leaves nothing anyone takes for a spare: its half copy stays under
/// `.tmp/`, unstamped and never renamed into place. The next apply copies the template itself (no "provisioned from
/// the template's spare"), its instance works, and the half copy is gone once the next preparer or `kip cache
/// prune` has run.
#[test]
fn a_preparer_killed_halfway_leaves_no_spare_and_its_half_copy_goes() {
    let config = "postgres \"main\" {\n  version = \"16\"\n}\n";
    // Spares off here (the Stack's default): the template is built, and nothing prepares a spare behind the test.
    let first = Stack::new(config);
    first.ok(&["apply", "--auto-approve"]);
    let cache = first.project.cache_dir();
    let template = postgres_16_template(&cache);
    let temp = cache.join("templates/.tmp");
    let half_copies = || {
        std::fs::read_dir(&temp)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().contains(".spare."))
            .count()
    };

    let mut preparer = first.command(&["prepare-spare"]);
    preparer
        .arg(&template)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    kill_when(preparer.spawn().unwrap(), "started its copy", || {
        (half_copies() > 0).then_some(())
    });
    assert_eq!(
        half_copies(),
        1,
        "the killed preparer's copy stays where it was"
    );
    assert_eq!(
        stamped_spares(&cache),
        Vec::<PathBuf>::new(),
        "no spare was put in place"
    );

    let second = Stack::new(config);
    let run = apply_with_spares(&second, &cache);
    assert!(
        !run.stderr.contains("provisioned from the template's spare"),
        "{}",
        run.stderr
    );
    let planned =
        second
            .project
            .run_with(on_cache(&second, &cache, &["plan", "--detailed-exitcode"]));
    assert_eq!(
        planned.code,
        0,
        "the instance answers: {}",
        planned.snapshot()
    );

    // The preparer that apply started clears the half copy before its own; prune takes whatever is left.
    wait_for_stamped_spares(&cache, 2);
    let prune = on_cache(&second, &cache, &["cache", "prune"]);
    assert_eq!(second.project.run_with(prune).code, 0);
    assert_eq!(half_copies(), 0, "a half copy outlived the prune");
    assert_eq!(stamped_spares(&cache), Vec::<PathBuf>::new());
    for stack in [&first, &second] {
        let destroy = on_cache(stack, &cache, &["destroy", "--auto-approve"]);
        assert_eq!(stack.project.run_with(destroy).code, 0);
    }
}

/// SIGKILLs `preparer` as soon as `moment` finds what it looks for (polled every millisecond, for up to 30 s), and
/// returns that; fails when the preparer ends first or the moment never comes (`what` names it).
fn kill_when<T>(
    mut preparer: std::process::Child,
    what: &str,
    mut moment: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let found = loop {
        if let Some(found) = moment() {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the preparer never {what}"
        );
        assert!(
            preparer.try_wait().unwrap().is_none(),
            "the preparer ended before it {what}, so it could not be killed then"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    preparer.kill().unwrap();
    preparer.wait().unwrap();
    found
}

/// The pids of PostgreSQL servers in single-user mode working under `dir` (their working directory is there).
fn single_user_servers_in(dir: &std::path::Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let single = cmdline
                .split(|byte| *byte == 0)
                .any(|arg| arg == b"--single");
            single
                && std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

/// A preparer SIGKILLed while PostgreSQL makes the database of a spare in single-user mode: that server outlives
/// it, and the next preparer waits for it to end before it removes the half-made copy (removing it under the
/// server could make it abort and leave its shared memory), then makes whole spares that the next instance with
/// a database takes. No server, copy or shared-memory segment is left behind.
#[test]
fn a_preparer_killed_while_making_a_spare_s_database_leaves_nothing_behind() {
    let config = "postgres \"main\" {\n  version = \"16\"\n  database \"shop\" {}\n}\n";
    // Spares off here: nothing prepares a spare behind the test.
    let first = Stack::new(config);
    first.ok(&["apply", "--auto-approve"]);
    let cache = first.project.cache_dir();
    let state: serde_json::Value =
        serde_json::from_str(&first.project.read(".kip/state.json")).unwrap();
    let instance = &state["instances"]["postgres.main"];
    let toolchain = instance["toolchain"].as_str().unwrap().to_owned();
    let data_dir = instance["data_dir"].as_str().unwrap().to_owned();
    let template = postgres_16_template(&cache);
    let temp = cache.join("templates/.tmp");
    let preparer = || {
        use std::os::unix::fs::MetadataExt as _;
        // As the instance's account, as apply asks it to (PostgreSQL refuses to run as root).
        let owner = std::fs::metadata(&data_dir).unwrap();
        let mut command = first.command(&["prepare-spare"]);
        command
            .arg(&template)
            .args(["--skip", "postmaster.pid", "--skip", "postmaster.opts"])
            .arg("--owner")
            .arg(format!("{}:{}", owner.uid(), owner.gid()))
            .args(["--finish", "database", "--toolchain", &toolchain])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        command.spawn().unwrap()
    };

    let server = kill_when(preparer(), "started PostgreSQL in single-user mode", || {
        let server = single_user_servers_in(&temp).first().copied()?;
        // While it runs, it listens on nothing, in a copy no other account can enter.
        let sockets: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{server}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .collect();
        assert!(
            sockets.is_empty(),
            "the single-user server holds {sockets:?}"
        );
        if let Ok(copy) = std::fs::read_link(format!("/proc/{server}/cwd")) {
            use std::os::unix::fs::MetadataExt as _;
            let mode = std::fs::metadata(&copy).map(|m| m.mode() & 0o777);
            assert!(
                mode.is_err() || mode.as_ref().is_ok_and(|mode| *mode == 0o700),
                "{mode:?}"
            );
        }
        Some(server)
    });
    assert!(
        premade_spares(&cache).is_empty(),
        "no spare was put in place"
    );

    // The next preparer clears what the killed one left, once its server is gone, and fills both slots.
    let next = preparer().wait_with_output().unwrap();
    assert!(
        next.status.success(),
        "{}",
        String::from_utf8_lossy(&next.stderr)
    );
    // Gone, or a zombie of ours (the test may be the subreaper the orphan was handed to).
    let state = std::fs::read_to_string(format!("/proc/{server}/stat")).unwrap_or_default();
    assert!(
        state.is_empty()
            || state
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
        "the killed preparer's server still runs: {state}"
    );
    assert_eq!(premade_spares(&cache).len(), 2);
    let leftovers: Vec<_> = std::fs::read_dir(&temp)
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(single_user_servers_in(&cache).is_empty());
    // Other tests' servers come and go meanwhile: only a segment the killed preparer's server made counts.
    let segments = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    let left: Vec<&str> = segments
        .lines()
        .skip(1)
        .filter(|line| line.split_whitespace().nth(4) == Some(server.to_string().as_str()))
        .collect();
    assert!(
        left.is_empty(),
        "a shared-memory segment was left: {left:?}"
    );

    // And the next instance with a database takes one.
    let second = Stack::new(config);
    let run = apply_with_spares(&second, &cache);
    assert!(run.stderr.contains("+database."), "{}", run.stderr);
    assert_eq!(
        databases(&second),
        [["shop", "postgres", "-1", "true", "UTF8"]]
    );
    wait_for_premade_spare(&cache);
    let prune = on_cache(&second, &cache, &["cache", "prune"]);
    assert_eq!(second.project.run_with(prune).code, 0);
    let destroy = on_cache(&second, &cache, &["destroy", "--auto-approve"]);
    assert_eq!(second.project.run_with(destroy).code, 0);
}

/// A spare asked for by an account that was deleted before its preparer ran PostgreSQL as it (the project destroyed
/// right after its apply, as a CI job's last step does): PostgreSQL cannot run as a uid without an account, so the
/// spare goes to the spare account the next new project takes, which then finds it its own; when none waits, the
/// preparer makes it. Where spare accounts are not kept at all, nothing is prepared for no one, and the preparer
/// leaves nothing behind.
#[test]
fn a_spare_asked_for_by_an_account_deleted_meanwhile_goes_to_the_next_new_projects_account() {
    use std::os::unix::fs::MetadataExt as _;
    if !crate::support::is_root() {
        return;
    }
    let config = "postgres \"main\" {\n  version = \"16\"\n  database \"shop\" {}\n}\n";
    // Spares off here: nothing prepares a spare behind the test.
    let first = Stack::new(config);
    first.ok(&["apply", "--auto-approve"]);
    let cache = first.project.cache_dir();
    let state: serde_json::Value =
        serde_json::from_str(&first.project.read(".kip/state.json")).unwrap();
    let toolchain = state["instances"]["postgres.main"]["toolchain"]
        .as_str()
        .unwrap()
        .to_owned();
    let template = postgres_16_template(&cache);
    // A uid no account has: the deleted account's.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let gone = (61000..65000u32)
        .find(|uid| {
            !passwd
                .lines()
                .any(|line| line.split(':').nth(2) == Some(uid.to_string().as_str()))
                && !std::process::Command::new("getent")
                    .args(["passwd", &uid.to_string()])
                    .output()
                    .is_ok_and(|output| output.status.success())
        })
        .unwrap();
    let prepare = |accounts_off: bool| {
        let mut command = first.command(&["prepare-spare"]);
        command
            .arg(&template)
            .args(["--skip", "postmaster.pid", "--skip", "postmaster.opts"])
            .arg("--owner")
            .arg(format!("{gone}:{gone}"))
            .args(["--finish", "database", "--toolchain", &toolchain]);
        if !accounts_off {
            command.env_remove("KIP_SPARE_ACCOUNTS");
        }
        first.project.run_with(command)
    };

    // Spare accounts are not kept in this cache (yet): nothing is made, and nothing is left.
    let run = prepare(true);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(premade_spares(&cache).is_empty());
    let temp = cache.join("templates/.tmp");
    assert_eq!(std::fs::read_dir(&temp).unwrap().count(), 0);

    // The spare account the next new project takes: the spares are its.
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_kip"))
        .arg("prepare-account")
        .arg(cache.join("accounts"))
        .status()
        .unwrap();
    assert!(made.success());
    let _prune = crate::security::PruneOnDrop(&first, cache.clone());
    let waiting = crate::security::spare_accounts(&cache).remove(0);
    let uid: u32 = passwd_uid(&waiting);
    let run = prepare(true);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let spares = premade_spares(&cache);
    assert_eq!(spares.len(), 2, "{}", run.snapshot());
    for spare in &spares {
        assert_eq!(std::fs::metadata(spare).unwrap().uid(), uid);
        assert_eq!(
            std::fs::metadata(spare.join("PG_VERSION")).unwrap().uid(),
            uid
        );
    }

    // The next new project takes that account and that spare, with its database made ahead of time.
    let second = Stack::new(config);
    let run = apply_with_spares(&second, &cache);
    assert!(run.stderr.contains("+database."), "{}", run.stderr);
    assert_eq!(second.project.read(".kip/account").trim(), waiting);
    assert_eq!(
        databases(&second),
        [["shop", "postgres", "-1", "true", "UTF8"]]
    );
    wait_for_no_preparer(&cache);

    // No spare account waits now (the second project took it, and kip's own preparer of the next is off here):
    // the spare's preparer makes the next new project's account itself, and gives the spare to it; unless spare
    // accounts are turned off (KIP_SPARE_ACCOUNTS=0, as the tests run kip), when it makes none and no spare.
    assert_eq!(
        crate::security::spare_accounts(&cache),
        Vec::<String>::new()
    );
    let emptied = premade_spares(&cache).remove(0);
    std::fs::remove_dir_all(&emptied).unwrap();
    let run = prepare(true);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert_eq!(
        crate::security::spare_accounts(&cache),
        Vec::<String>::new()
    );
    assert!(!emptied.exists());
    let run = prepare(false);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let made = crate::security::spare_accounts(&cache);
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(
        std::fs::metadata(&emptied).unwrap().uid(),
        passwd_uid(&made[0])
    );
    let destroy = on_cache(&second, &cache, &["destroy", "--auto-approve"]);
    assert_eq!(second.project.run_with(destroy).code, 0);
}

/// Waits (up to 60 s) until no `kip prepare-spare` of `cache` runs (the one an apply started in the background).
fn wait_for_no_preparer(cache: &std::path::Path) {
    let cache = cache.to_string_lossy().into_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while crate::support::all_pids().into_iter().any(|pid| {
        let cmdline = crate::support::cmdline(pid);
        cmdline.iter().any(|arg| arg == "prepare-spare")
            && cmdline.iter().any(|arg| arg.starts_with(&cache))
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "a preparer of {cache} ran for 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The uid of the account `name`, from /etc/passwd.
fn passwd_uid(name: &str) -> u32 {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name)).then(|| fields[2].parse().unwrap())
        })
        .unwrap()
}

/// Two `kip apply`s of the same change at once: each reads ahead before the state lock is its own, and the one that
/// waits for the lock must not plan from what it read before the other applied (the role would look missing, and
/// be created again). Exactly one of them adds the role; the other finds nothing to do, and so does a plan after.
#[test]
fn an_apply_that_waited_for_the_lock_plans_from_what_the_other_applied() {
    let config = "postgres \"main\" {\n  version = \"16\"\n  role \"a\" {}\n}\n";
    let stack = Stack::new(config);
    stack.ok(&["apply", "--auto-approve"]);
    for round in 0..3 {
        let role = format!("r{round}");
        stack.project.write(
            "kip.hcl",
            config.replace(
                "  role \"a\" {}\n",
                &format!("  role \"a\" {{}}\n  role \"{role}\" {{}}\n"),
            ),
        );
        let applies: Vec<std::process::Child> = (0..2)
            .map(|_| {
                let mut apply =
                    stack.command(&["apply", "--auto-approve", "--lock-timeout", "60s"]);
                apply
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                apply.spawn().unwrap()
            })
            .collect();
        let outputs: Vec<String> = applies
            .into_iter()
            .map(|apply| {
                let output = apply.wait_with_output().unwrap();
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
                assert!(output.status.success(), "{text}");
                text
            })
            .collect();
        let added = outputs
            .iter()
            .filter(|text| text.contains("Resources: 1 added"))
            .count();
        assert_eq!(added, 1, "round {round}: {outputs:#?}");
        assert!(
            outputs.iter().any(|text| text.contains("No changes.")),
            "round {round}: {outputs:#?}"
        );
        assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    }
}

/// `kip destroy` right after an apply, while the spare that apply asked for is being made as the project's account
/// (PostgreSQL in single-user mode): the account still goes with the project once that server is done.
#[test]
fn destroy_during_a_spare_s_preparation_still_removes_the_project_s_account() {
    if std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok()
        != Some(0)
    {
        return;
    }
    let config = "postgres \"main\" {\n  version = \"16\"\n  database \"shop\" {}\n}\n";
    let stack = Stack::new(config);
    let cache = stack.project.cache_dir();
    let run = apply_with_spares(&stack, &cache);
    assert!(
        run.stdout.contains("Resources: 2 added"),
        "{}",
        run.snapshot()
    );
    let state: serde_json::Value =
        serde_json::from_str(&stack.project.read(".kip/state.json")).unwrap();
    let account = state["instances"]["postgres.main"]["run_as"]["user"]
        .as_str()
        .expect("kip runs the engine as the project's account")
        .to_owned();
    let in_passwd = || {
        std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .lines()
            .any(|line| line.split(':').next() == Some(account.as_str()))
    };
    assert!(in_passwd());
    // Destroyed while the preparer's server runs as the account (or, on a fast disk, just after).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while single_user_servers_in(&cache).is_empty()
        && premade_spares(&cache).is_empty()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let destroy = on_cache(&stack, &cache, &["destroy", "--auto-approve"]);
    let run = stack.project.run_with(destroy);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(!in_passwd(), "the account `{account}` outlived its project");
    // Whatever the preparer made or left, a prune clears it once it is done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !single_user_servers_in(&cache).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let prune = on_cache(&stack, &cache, &["cache", "prune"]);
    assert_eq!(stack.project.run_with(prune).code, 0);
}

#[test]
fn a_new_instance_that_stands_alone_starts_beside_the_refresh_and_stays_when_the_plan_is_refused() {
    let main = |version: &str, protected: bool| {
        format!(
            "postgres \"main\" {{\n  version         = \"{version}\"\n  prevent_destroy = {protected}\n  role \"app\" {{}}\n}}\n"
        )
    };
    let added = "postgres \"added\" {\n  version = \"16\"\n  database \"shop\" {}\n}\n";
    let stack = Stack::new(&main("16", false));
    stack.ok(&["apply", "--auto-approve"]);

    // Approved in advance, `added` goes ahead while `main` is refreshed; the plan then replaces `main` (a new
    // major), which its new `prevent_destroy` refuses. The apply fails and says why, `main` is untouched, and
    // `added`, declared and started, stays in the state and answers.
    stack
        .project
        .write("kip.hcl", format!("{}{added}", main("14", true)));
    // Forced: by default an instance goes ahead only while the read-ahead of the running ones still reads, which
    // a test cannot time.
    let mut command = stack.command(&["apply", "--auto-approve"]);
    command
        .env("KIP_LOG", "debug")
        .env("KIP_APPLY_AHEAD", "always");
    let run = stack.project.run_with(command);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("ahead of the refresh") && run.stderr.contains("postgres.added"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("postgres.main, which set prevent_destroy = true"),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("Apply complete"), "{}", run.stdout);
    assert_eq!(
        stack.sql(
            "postgres.main",
            "SELECT current_setting('server_version_num')::int / 10000"
        ),
        [["16"]]
    );
    assert_eq!(
        stack.sql(
            "postgres.added",
            "SELECT datname FROM pg_database WHERE datname = 'shop'"
        ),
        [["shop"]]
    );

    // Back to what runs: nothing is left to do, `added` included; the state holds both, whole.
    stack
        .project
        .write("kip.hcl", format!("{}{added}", main("16", false)));
    let plan = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.snapshot());
    let ps = stack.ok(&["ps", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&ps.stdout).unwrap();
    let mut names: Vec<String> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["postgres.added", "postgres.main"]);

    // Without --auto-approve nothing starts before the plan is shown and accepted (forced or not).
    stack.project.write(
        "kip.hcl",
        format!(
            "{}{added}{}",
            main("16", false),
            added.replace("added", "third")
        ),
    );
    let mut command = stack.command(&["apply"]);
    command.env("KIP_APPLY_AHEAD", "always");
    let run = Stack::run_with_input(command, "no\n");
    assert_eq!(run.code, 1, "{}", run.snapshot());
    let ps = stack.ok(&["ps", "--json"]);
    assert!(!ps.stdout.contains("postgres.third"), "{}", ps.stdout);

    // kip SIGKILLed while an instance ahead is being provisioned, or started, with the refresh going on beside it:
    // the next apply finishes it from the state both walks shared, and then nothing is left to do.
    let mut config = format!("{}{added}", main("16", false));
    for (name, moment) in [("early", "provisioning"), ("late", "starting")] {
        config.push_str(&added.replace("added", name));
        stack.project.write("kip.hcl", &config);
        let mut command = stack.command(&["apply", "--auto-approve"]);
        command.env("KIP_APPLY_AHEAD", "always");
        crate::support::kill_when_logged(command, &format!("postgres.{name}: {moment}"));
        stack.ok(&["apply", "--auto-approve"]);
        let plan = stack.kip(&["plan", "--detailed-exitcode"]);
        assert_eq!(
            plan.code,
            0,
            "after a kill at {moment}: {}",
            plan.snapshot()
        );
        let address = format!("postgres.{name}");
        assert_eq!(
            stack.sql(
                &address,
                "SELECT datname FROM pg_database WHERE datname = 'shop'"
            ),
            [["shop"]]
        );
    }
}
