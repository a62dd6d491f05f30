//! What another local user, or a secret in the caller's environment, can get at: tests that play the attacker.

use crate::apply::Stack;
use crate::support::{HostilePoller, free_port, pid_of};

/// The environment of a live process, from /proc (the tests run as root, so any process's).
fn environment_of(pid: u32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    bytes
        .split(|byte| *byte == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| String::from_utf8_lossy(entry).into_owned())
        .collect()
}

#[test]
fn a_secret_in_the_callers_environment_never_reaches_an_engine() {
    let stack = Stack::new(
        r#"postgres "main" {
  version = "16"
}

process "app" {
  command = ["sleep", "300"]
  env     = { FROM_CONFIG = "yes" }
}
"#,
    );
    let mut apply = stack.command(&["apply", "--auto-approve"]);
    apply.env("CLOUD_SECRET_TOKEN", "s3cr3t-t0k3n");
    let run = stack.project.run_with(apply);
    assert_eq!(run.code, 0, "{}", run.snapshot());

    let postgres = environment_of(pid_of(&stack, "postgres.main"));
    assert!(!postgres.is_empty(), "the server's environment is readable");
    assert!(
        !postgres.iter().any(|entry| entry.contains("s3cr3t-t0k3n")),
        "the server got the caller's secret: {postgres:?}"
    );
    let supervisor_pid: u32 = stack
        .project
        .read(".kip/supervisor.pid")
        .trim()
        .parse()
        .unwrap();
    let supervisor = environment_of(supervisor_pid);
    assert!(
        !supervisor
            .iter()
            .any(|entry| entry.contains("s3cr3t-t0k3n")),
        "the supervisor kept the caller's secret: {supervisor:?}"
    );
    // A process block is the user's own program: kip's environment plus `env`, as documented.
    let app = environment_of(pid_of(&stack, "process.app"));
    assert!(
        app.contains(&"CLOUD_SECRET_TOKEN=s3cr3t-t0k3n".to_owned()),
        "{app:?}"
    );
    assert!(app.contains(&"FROM_CONFIG=yes".to_owned()), "{app:?}");
}

/// `nobody` trying to connect as the superuser without a password over the instance's TCP port and its unix socket.
fn poller(dir: &std::path::Path, port: u16, socket_dir: &std::path::Path) -> HostilePoller {
    HostilePoller::start(dir, |output| {
        format!(
            "psql 'host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=1' -Atc 'select 1' \
               >/dev/null 2>>'{output}' && echo GOT-IN-OVER-TCP >>'{output}'; \
             psql 'host={socket} port=5432 user=postgres dbname=postgres connect_timeout=1' -Atc 'select 1' \
               >/dev/null 2>>'{output}' && echo GOT-IN-OVER-THE-SOCKET >>'{output}';",
            output = output.display(),
            socket = socket_dir.display(),
        )
    })
}

#[test]
fn another_local_user_polling_the_socket_and_port_never_gets_in() {
    let port = free_port();
    let stack = Stack::new(&format!(
        "postgres \"main\" {{\n  version = \"16\"\n  port    = {port}\n}}\n"
    ));
    let watch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        watch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let socket_dir = stack.project.path().join(".kip/run/postgres.main/run");
    let poller = poller(watch.path(), port, &socket_dir);
    // Let it poll before the server exists, through the first start, and after.
    std::thread::sleep(std::time::Duration::from_millis(300));
    stack.ok(&["apply", "--auto-approve"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let seen = poller.finish();
    assert!(!seen.contains("GOT-IN"), "another user got in:\n{seen}");
    assert!(
        seen.contains("password") || seen.contains("Permission denied"),
        "the poller reached the server and was refused:\n{seen}"
    );
    // The socket directory is the engine account's alone.
    let mode = std::fs::metadata(&socket_dir).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
    assert_eq!(stack.sql("postgres.main", "SELECT 1"), [["1"]]);
}

#[test]
fn a_kip_killed_during_the_first_start_leaves_no_open_window() {
    let port = free_port();
    let stack = Stack::new(&format!(
        "postgres \"main\" {{\n  version = \"16\"\n  port    = {port}\n}}\n"
    ));
    let watch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        watch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let socket_dir = stack.project.path().join(".kip/run/postgres.main/run");
    let poller = poller(watch.path(), port, &socket_dir);
    for moment in ["postgres.main: provisioning", "postgres.main: starting"] {
        crate::support::kill_when_logged(stack.command(&["apply", "--auto-approve"]), moment);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // And the moment the server's socket appears in a first start: it runs with the template's bootstrap password
    // until kip sets the instance's own, and kip dies in between. (The socket is named after the declared port.)
    stack.ok(&["apply", "--auto-approve"]);
    stack.ok(&["destroy", "--auto-approve"]);
    crate::support::kill_when_exists(
        stack.command(&["apply", "--auto-approve"]),
        &socket_dir.join(format!(".s.PGSQL.{port}")),
    );
    // The supervisor finishes the start kip left: the next apply meets a server that runs ready, with the bootstrap
    // password still in place (it must not try the instance's own password on it, nor fail).
    crate::support::settled(&stack, "postgres.main");
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    let seen = poller.finish();
    assert!(!seen.contains("GOT-IN"), "another user got in:\n{seen}");
    assert_eq!(stack.sql("postgres.main", "SELECT 1"), [["1"]]);
}

#[test]
fn a_password_changed_behind_kips_back_is_drift_and_apply_makes_kip_url_work_again() {
    let stack = Stack::new(
        "postgres \"main\" {\n  version = \"16\"\n  role \"app\" { login = true }\n  database \"shop\" { owner = \"app\" }\n}\n",
    );
    stack.ok(&["apply", "--auto-approve"]);
    stack.sql(
        "postgres.main",
        "ALTER ROLE app PASSWORD 'changed-by-someone'",
    );
    let plan = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.snapshot());
    assert!(
        plan.stdout.contains("~ postgres.main.role.app (role)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("password_works = false -> true"),
        "{}",
        plan.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        stack.sql("postgres.main.database.shop", "SELECT current_user"),
        [["app"]]
    );
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}

#[test]
fn a_lost_state_never_opens_access_and_says_how_to_recover() {
    let stack = Stack::new("postgres \"main\" {\n  version = \"16\"\n}\n");
    stack.ok(&["apply", "--auto-approve"]);
    let url = stack.url("postgres.main");
    let hba_path = stack
        .project
        .path()
        .join(".kip/run/postgres.main/data/pg_hba.conf");
    let hba = std::fs::read_to_string(&hba_path).unwrap();
    std::fs::remove_file(stack.project.path().join(".kip/state.json")).unwrap();

    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("kip has no credentials for"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("state.json.backup"),
        "says how to recover\n{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&hba_path).unwrap(),
        hba,
        "the access rules are untouched"
    );
    assert!(!hba.contains("trust"), "{hba}");
    // The server still asks for the password it had, and that password still works.
    let without_password = url.replacen(
        &format!(
            ":{}@",
            url.split(':').nth(2).unwrap().split('@').next().unwrap()
        ),
        "@",
        1,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let refused = runtime.block_on(async {
        without_password
            .parse::<tokio_postgres::Config>()
            .unwrap()
            .connect(tokio_postgres::NoTls)
            .await
            .is_err()
    });
    assert!(refused, "no password, no session");
    let works = runtime.block_on(async {
        url.parse::<tokio_postgres::Config>()
            .unwrap()
            .connect(tokio_postgres::NoTls)
            .await
            .is_ok()
    });
    assert!(works, "the old password still works");

    // The way back the hint names: the backup.
    std::fs::copy(
        stack.project.path().join(".kip/state.json.backup"),
        stack.project.path().join(".kip/state.json"),
    )
    .unwrap();
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}

#[test]
fn instances_whose_labels_flatten_alike_never_share_a_place_and_one_goes_alone() {
    let stack = Stack::new(
        r#"postgres "main" {
  for_each = { "a b" = 1, "a-b" = 2, "a_b" = 3 }
  version  = "16"
  database "shop" {}
}
"#,
    );
    stack.ok(&["apply", "--auto-approve"]);
    let state: serde_json::Value =
        serde_json::from_str(&stack.project.read(".kip/state.json")).unwrap();
    let instances = state["instances"].as_object().unwrap();
    assert_eq!(instances.len(), 3);
    let mut data_dirs: Vec<&str> = instances
        .values()
        .map(|instance| instance["data_dir"].as_str().unwrap())
        .collect();
    data_dirs.sort();
    data_dirs.dedup();
    assert_eq!(data_dirs.len(), 3, "{data_dirs:?}");
    for key in ["a b", "a-b", "a_b"] {
        let address = format!("postgres.main[{key:?}].database.shop");
        stack.sql(
            &address,
            &format!("CREATE TABLE mine (v text); INSERT INTO mine VALUES ('{key}')"),
        );
    }
    // Destroying one leaves the others' data where it was.
    stack.ok(&["destroy", "--auto-approve", "postgres.main[\"a b\"]"]);
    for key in ["a-b", "a_b"] {
        let address = format!("postgres.main[{key:?}].database.shop");
        assert_eq!(stack.sql(&address, "SELECT v FROM mine"), [[key]]);
    }
}

#[test]
fn a_port_added_changed_or_removed_restarts_the_instance_and_is_served_as_said() {
    let config = |port: Option<u16>| match port {
        Some(port) => format!("postgres \"main\" {{\n  version = \"16\"\n  port    = {port}\n}}\n"),
        None => "postgres \"main\" {\n  version = \"16\"\n}\n".to_owned(),
    };
    let listens = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    let stack = Stack::new(&config(None));
    stack.ok(&["apply", "--auto-approve"]);

    let first = free_port();
    stack.project.write("kip.hcl", config(Some(first)));
    let plan = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.snapshot());
    assert!(
        plan.stdout.contains(&format!("port = null -> {first}")),
        "{}",
        plan.stdout
    );
    let run = stack.ok(&["apply", "--auto-approve"]);
    assert!(run.stderr.contains("restarting"), "{}", run.stderr);
    assert!(listens(first));
    assert!(
        stack
            .url("postgres.main")
            .contains(&format!("@127.0.0.1:{first}/"))
    );
    assert_eq!(stack.sql("postgres.main", "SELECT 1"), [["1"]]);

    let second = free_port();
    stack.project.write("kip.hcl", config(Some(second)));
    stack.ok(&["apply", "--auto-approve"]);
    assert!(listens(second) && !listens(first));
    assert_eq!(stack.sql("postgres.main", "SELECT 1"), [["1"]]);

    stack.project.write("kip.hcl", config(None));
    stack.ok(&["apply", "--auto-approve"]);
    assert!(!listens(second), "nothing claims a port that is not served");
    assert!(
        stack.url("postgres.main").contains("host="),
        "back on the socket"
    );
    assert_eq!(stack.sql("postgres.main", "SELECT 1"), [["1"]]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}

#[test]
fn the_engines_of_one_project_cannot_read_another_projects_data() {
    let one = Stack::new("postgres \"main\" {\n  version = \"16\"\n}\n");
    let two = Stack::new("postgres \"main\" {\n  version = \"16\"\n}\n");
    one.ok(&["apply", "--auto-approve"]);
    two.ok(&["apply", "--auto-approve"]);
    let account = |stack: &Stack| {
        let state: serde_json::Value =
            serde_json::from_str(&stack.project.read(".kip/state.json")).unwrap();
        let run_as = &state["instances"]["postgres.main"]["run_as"];
        (
            run_as["user"].as_str().unwrap().to_owned(),
            state["instances"]["postgres.main"]["data_dir"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    };
    let (user_one, data_one) = account(&one);
    let (user_two, data_two) = account(&two);
    assert_ne!(user_one, user_two, "one account per project");
    assert_eq!(pid_owner(pid_of(&one, "postgres.main")), user_one);
    // Each project's account can read its own data directory, and not the other's.
    let can_read = |user: &str, dir: &str| {
        std::process::Command::new("setpriv")
            .args([
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--clear-groups",
                "ls",
                dir,
            ])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(can_read(&user_one, &data_one));
    assert!(
        !can_read(&user_one, &data_two),
        "{user_one} reads {data_two}"
    );
    assert!(
        !can_read(&user_two, &data_one),
        "{user_two} reads {data_one}"
    );
    // The template both were copied from is kip's own: no engine account reads it (its bootstrap password
    // included) or changes what later instances start from; the bootstrap password is not copied, and opens
    // neither instance.
    let templates = one.project.cache_dir().join("templates");
    let template = std::fs::read_dir(&templates)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.join("PG_VERSION").exists())
        .expect("a template");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(&template).unwrap().uid(), 0);
    assert!(
        !can_read(&user_one, &template.to_string_lossy()),
        "{user_one} reads the template"
    );
    for data in [&data_one, &data_two] {
        assert!(!std::path::Path::new(data).join("kip-bootstrap").exists());
    }
    let bootstrap = std::fs::read_to_string(template.join("kip-bootstrap")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for stack in [&one, &two] {
        let url = stack.url("postgres.main");
        let password = url.split(':').nth(2).unwrap().split('@').next().unwrap();
        let with_bootstrap = url.replacen(password, bootstrap.trim(), 1);
        let refused = runtime.block_on(async {
            with_bootstrap
                .parse::<tokio_postgres::Config>()
                .unwrap()
                .connect(tokio_postgres::NoTls)
                .await
                .is_err()
        });
        assert!(refused, "the bootstrap password opens an applied instance");
    }
    // The account goes with the project.
    one.ok(&["destroy", "--auto-approve"]);
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !passwd
            .lines()
            .any(|line| line.starts_with(&format!("{user_one}:")))
    );
}

/// The account name a process runs as, from /proc and /etc/passwd.
fn pid_owner(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .unwrap();
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.get(2) == Some(&uid.to_string().as_str())).then(|| fields[0].to_owned())
        })
        .unwrap()
}

/// The spare accounts in `cache` (their names), as the registry lists them.
pub(crate) fn spare_accounts(cache: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(cache.join("accounts/spare"))
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (up to 60 s) for a spare account in `cache` other than `not`, made by the detached preparer.
fn wait_for_spare_account(cache: &std::path::Path, not: &[&str]) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(name) = spare_accounts(cache)
            .into_iter()
            .find(|name| !not.contains(&name.as_str()))
        {
            return name;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no spare account was made in {} within 60 s",
            cache.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn in_passwd(name: &str) -> bool {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .any(|line| line.split(':').next() == Some(name))
}

/// Deletes the spare accounts of a test's cache however the test ends (`kip cache prune`).
pub(crate) struct PruneOnDrop<'a>(pub(crate) &'a Stack, pub(crate) std::path::PathBuf);

impl Drop for PruneOnDrop<'_> {
    fn drop(&mut self) {
        let mut prune = self.0.command(&["cache", "prune"]);
        prune.env("KIP_CACHE_DIR", &self.1);
        let _ = prune.output();
    }
}

#[test]
fn a_new_project_takes_an_account_made_ahead_of_time_and_never_one_a_planted_file_names() {
    if !crate::support::is_root() {
        return;
    }
    let config = "postgres \"main\" {\n  version = \"16\"\n}\n";
    let one = Stack::new(config);
    let two = Stack::new(config);
    let three = Stack::new(config);
    let cache = one.project.cache_dir();
    let _prune = PruneOnDrop(&one, cache.clone());
    let on_cache = |stack: &Stack, args: &[&str]| {
        let mut command = stack.command(args);
        command
            .env("KIP_CACHE_DIR", &cache)
            .env_remove("KIP_SPARE_ACCOUNTS");
        let run = stack.project.run_with(command);
        assert_eq!(run.code, 0, "{}", run.snapshot());
        run
    };
    let apply = |stack: &Stack| on_cache(stack, &["apply", "--auto-approve"]);
    let account_of = |stack: &Stack| {
        let state: serde_json::Value =
            serde_json::from_str(&stack.project.read(".kip/state.json")).unwrap();
        state["instances"]["postgres.main"]["run_as"]["user"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // The first project makes its own account; after it, a detached preparer makes one for the next project.
    apply(&one);
    let first = account_of(&one);
    let spare = wait_for_spare_account(&cache, &[]);
    assert_ne!(spare, first);
    assert!(in_passwd(&spare));

    // Another account planted a file naming the first project's account in the next project's .kip/: ignored.
    let planted = two.project.path().join(".kip/account");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(&planted, format!("{first}\n")).unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    apply(&two);
    let second = account_of(&two);
    assert_eq!(second, spare, "the new project took the spare account");
    assert_eq!(pid_owner(pid_of(&two, "postgres.main")), spare);
    assert_eq!(two.project.read(".kip/account").trim(), spare);
    assert!(!spare_accounts(&cache).contains(&spare), "taken once");

    // kip's own file naming an account kip does not make (root): ignored too.
    let named_root = three.project.path().join(".kip/account");
    std::fs::create_dir_all(named_root.parent().unwrap()).unwrap();
    std::fs::write(&named_root, "root\n").unwrap();
    apply(&three);
    let third = account_of(&three);
    assert!(third.starts_with("kip-"), "{third}");
    assert!(third != first && third != second);
    assert_eq!(pid_owner(pid_of(&three, "postgres.main")), third);

    // The account the second project took goes with it; the spare made after it goes with a prune.
    let next = wait_for_spare_account(&cache, &[spare.as_str(), third.as_str()]);
    on_cache(&two, &["destroy", "--auto-approve"]);
    assert!(!in_passwd(&second), "`{second}` outlived its project");
    assert!(!planted.exists());
    for stack in [&one, &three] {
        on_cache(stack, &["destroy", "--auto-approve"]);
    }
    assert!(!in_passwd(&first) && !in_passwd(&third));
    let run = on_cache(&one, &["cache", "prune"]);
    assert!(
        run.stdout.contains("Deleted 1 spare account"),
        "{}",
        run.stdout
    );
    assert!(
        !in_passwd(&next),
        "the spare account `{next}` outlived the prune"
    );
}

#[test]
fn a_spare_account_preparer_killed_at_any_moment_leaves_no_account_behind() {
    if !crate::support::is_root() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let accounts = cache.path().join("accounts");
    let prepare = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kip"));
        command.arg("prepare-account").arg(&accounts);
        command
    };
    // Names a killed preparer left in pending/: each may or may not have become an account.
    let mut left = std::collections::BTreeSet::new();
    for delay_ms in [0, 1, 2, 3, 4, 6, 8, 10, 12, 16] {
        let mut child = prepare().spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        left.extend(
            std::fs::read_dir(accounts.join("pending"))
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|entry| entry.file_name().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        );
    }
    // The next preparer deletes what the killed ones left, and leaves exactly one spare.
    assert!(prepare().status().unwrap().success());
    let spares = spare_accounts(cache.path());
    assert_eq!(spares.len(), 1, "{spares:?}");
    assert!(in_passwd(&spares[0]));
    for name in &left {
        assert!(
            !in_passwd(name),
            "a killed preparer's `{name}` outlived the next preparer"
        );
    }
    assert_eq!(
        std::fs::read_dir(accounts.join("pending")).unwrap().count(),
        0
    );
    // Another preparer leaves the one spare alone.
    assert!(prepare().status().unwrap().success());
    assert_eq!(spare_accounts(cache.path()), spares);
    let prune = std::process::Command::new(env!("CARGO_BIN_EXE_kip"))
        .args(["cache", "prune"])
        .env("KIP_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    assert!(prune.status.success());
    assert!(!in_passwd(&spares[0]), "the spare outlived the prune");
}

/// `kip cache prune` of a bare cache dir however the test ends: the spare accounts made in it go.
struct PruneCacheOnDrop<'a>(&'a std::path::Path);

impl Drop for PruneCacheOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_kip"))
            .args(["cache", "prune"])
            .env("KIP_CACHE_DIR", self.0)
            .output();
    }
}

/// The preparers' lock held for a moment by something that is not making a spare (as a child a preparer forked for
/// `useradd` holds it until its exec, also after the preparer was killed): the next preparer waits for it and makes
/// the spare, rather than leaving none. Held here by `flock(1)` for 300 ms.
#[test]
fn a_preparer_waits_for_a_lock_held_for_a_moment_and_makes_the_spare() {
    if !crate::support::is_root() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let _prune = PruneCacheOnDrop(cache.path());
    let accounts = cache.path().join("accounts");
    std::fs::create_dir_all(&accounts).unwrap();
    let lock = accounts.join(".lock");
    let mut holder = std::process::Command::new("flock")
        .arg(&lock)
        .args(["sleep", "0.3"])
        .spawn()
        .unwrap();
    let held = || {
        !std::process::Command::new("flock")
            .arg("--nonblock")
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !held() {
        assert!(
            std::time::Instant::now() < deadline,
            "flock never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let prepared = std::process::Command::new(env!("CARGO_BIN_EXE_kip"))
        .arg("prepare-account")
        .arg(&accounts)
        .status()
        .unwrap();
    let _ = holder.wait();
    assert!(prepared.success());
    let spares = spare_accounts(cache.path());
    assert_eq!(spares.len(), 1, "{spares:?}");
    assert!(in_passwd(&spares[0]));
}

/// The claim a kip that took a spare account leaves in the spares' `taken/`, when it was killed before the
/// project's record of the account was durable.
fn claim(cache: &std::path::Path, name: &str) -> std::path::PathBuf {
    cache.join("accounts/taken").join(name)
}

#[test]
fn a_spare_account_taken_by_a_killed_kip_goes_unless_its_project_recorded_it() {
    if !crate::support::is_root() {
        return;
    }
    let config = "valkey \"cache\" {\n  version = \"9\"\n}\n";
    let one = Stack::new(config);
    let two = Stack::new(config);
    let cache = one.project.cache_dir();
    let _prune = PruneOnDrop(&one, cache.clone());
    // The test makes the spares itself (KIP_SPARE_ACCOUNTS=0 keeps kip's detached preparers away).
    let prepare = || {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_kip"))
            .arg("prepare-account")
            .arg(cache.join("accounts"))
            .status()
            .unwrap();
        assert!(status.success());
    };
    let on_cache = |stack: &Stack, args: &[&str]| {
        let mut command = stack.command(args);
        command.env("KIP_CACHE_DIR", &cache);
        command
    };
    let ok = |stack: &Stack, args: &[&str]| {
        let run = stack.project.run_with(on_cache(stack, args));
        assert_eq!(run.code, 0, "{}", run.snapshot());
    };
    let account_of = |stack: &Stack| {
        let state: serde_json::Value =
            serde_json::from_str(&stack.project.read(".kip/state.json")).unwrap();
        state["instances"]["valkey.cache"]["run_as"]["user"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Killed right after the project recorded the account it took, before the record was made durable: the claim
    // it leaves is settled by the next preparer, and the account stays the project's.
    prepare();
    let first = spare_accounts(&cache).remove(0);
    crate::support::kill_when_logged(
        on_cache(&one, &["apply", "--auto-approve", "-v"]),
        "an account made ahead of time",
    );
    assert_eq!(one.project.read(".kip/account").trim(), first);
    assert!(
        claim(&cache, &first).exists(),
        "the killed kip's claim is left"
    );
    prepare();
    assert!(
        in_passwd(&first),
        "`{first}` was deleted under the project that records it"
    );
    assert!(!claim(&cache, &first).exists(), "the claim was settled");
    ok(&one, &["apply", "--auto-approve"]);
    assert_eq!(account_of(&one), first);
    assert_eq!(pid_owner(pid_of(&one, "valkey.cache")), first);

    // Killed after it took the spare, before its project recorded it: the claim as that kill leaves it (moved to
    // taken/, naming the project, unlocked). While a taker holds its lock it is a taker at work, and stays.
    let second = spare_accounts(&cache).remove(0);
    assert_ne!(second, first);
    std::fs::rename(
        cache.join("accounts/spare").join(&second),
        claim(&cache, &second),
    )
    .unwrap();
    std::fs::write(
        claim(&cache, &second),
        two.project.path().as_os_str().as_encoded_bytes(),
    )
    .unwrap();
    let held = std::fs::File::open(claim(&cache, &second)).unwrap();
    held.lock().unwrap();
    prepare();
    assert!(in_passwd(&second) && claim(&cache, &second).exists());
    drop(held);
    // Another test's fork may hold a copy of the descriptor (and so the lock) until it execs, and userdel may wait
    // for another test's account tools: a preparer that finds the claim still locked leaves it to the next one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        prepare();
        if !in_passwd(&second) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{second}`, which no project records, outlived the preparers"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!claim(&cache, &second).exists());
    // The preparer made the next spare, and the second project takes it.
    let third = spare_accounts(&cache).remove(0);
    ok(&two, &["apply", "--auto-approve"]);
    assert_eq!(account_of(&two), third);
    assert_eq!(two.project.read(".kip/account").trim(), third);
    assert!(
        std::fs::read_dir(cache.join("accounts/taken"))
            .unwrap()
            .next()
            .is_none(),
        "a finished apply leaves no claim"
    );

    for stack in [&one, &two] {
        ok(stack, &["destroy", "--auto-approve"]);
    }
    assert!(!in_passwd(&first) && !in_passwd(&third));
}

/// The ELF header's type and whether a program header asks for an interpreter (the dynamic loader).
fn elf_type_and_interpreter(path: &str) -> (u16, bool) {
    let bytes = std::fs::read(path).unwrap();
    let u16_at = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    assert_eq!(&bytes[..4], b"\x7fELF", "{path} is an ELF file");
    assert_eq!(bytes[4], 2, "{path} is a 64-bit ELF file");
    let (offset, size, count) = (u64_at(0x20) as usize, u16_at(0x36) as usize, u16_at(0x38));
    const PT_INTERP: u32 = 3;
    let interpreter = (0..count as usize).any(|index| u32_at(offset + index * size) == PT_INTERP);
    (u16_at(0x10), interpreter)
}

/// kip and its supervisor run as root and are loaded at a random address: position-independent executables
/// (`ET_DYN`), also linked statically (`.cargo/config.toml`), where no dynamic loader is asked for.
#[test]
fn kip_and_its_supervisor_are_position_independent() {
    const ET_DYN: u16 = 3;
    let kip = env!("CARGO_BIN_EXE_kip");
    let supervisor = env!("CARGO_BIN_EXE_kip-supervisor");
    for binary in [kip, supervisor] {
        let (kind, interpreter) = elf_type_and_interpreter(binary);
        assert_eq!(kind, ET_DYN, "{binary} is not position-independent");
        // Linked statically unless RUSTFLAGS replaced the config's flags (they reach this test too).
        if cfg!(target_feature = "crt-static") {
            assert!(!interpreter, "{binary} asks for a dynamic loader");
        }
    }
}
