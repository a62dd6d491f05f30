//! Valkey end to end through the real `kip` binary and real `valkey-server` builds from the test mirror, checked
//! with the `redis` crate (and `redis-cli` where the machine has it): apply, `kip url`, live and restarting
//! changes as the plan announces them, a setting Valkey refuses, awkward user names, drift, another local user
//! polling during the first start, the engine's environment, and a destroy that leaves nothing.

use std::path::PathBuf;
use std::time::Duration;

use crate::apply::Stack;
use crate::support::{HostilePoller, free_port, kill_when_exists, kill_when_logged, pid_of};

/// A connection through a URL `kip url` printed.
pub(crate) fn connect(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(5)))
        .unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"))
}

/// The socket path in a URL `kip url` printed (the temp project's path needs no percent-decoding).
fn socket_of(url: &str) -> &str {
    url.strip_prefix("unix://")
        .and_then(|rest| rest.split('?').next())
        .unwrap()
}

/// The instance's socket asked `PING` by a client that sends no password: Valkey's refusal.
fn ping_without_password(url: &str) -> redis::RedisError {
    redis::cmd("PING")
        .query::<String>(&mut connect(&format!("unix://{}", socket_of(url))))
        .unwrap_err()
}

fn config_get(url: &str, name: &str) -> String {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query(&mut connect(url))
        .unwrap();
    pair.get(1).cloned().unwrap_or_default()
}

/// The account a process runs as.
pub(crate) fn owner_of(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.get(2) == Some(&uid.as_str())).then(|| fields[0].to_owned())
        })
        .unwrap_or(uid)
}

fn environment_of(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|byte| *byte == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| String::from_utf8_lossy(entry).into_owned())
        .collect()
}

/// A user name with quotes, dots, unicode, shell metacharacters and ACL's own prefixes (`>`, `~`, `&`, `#`): it
/// round-trips (Valkey refuses only spaces and NUL).
const AWKWARD: &str = r#">o'd"d.ü$(x)~&#;"#;

fn config(version: &str, maxmemory: &str, databases: u32, extra: &str) -> String {
    let awkward = AWKWARD.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"valkey "cache" {{
  version    = "{version}"
  maxmemory  = "{maxmemory}"
  databases  = {databases}
  appendonly = true
{extra}
  user "app" {{
    commands = ["+@all", "-flushall"]
    keys     = ["app:*"]
  }}
  user "{awkward}" {{
    commands = ["+ping", "+get"]
    keys     = ["*"]
  }}
}}
"#
    )
}

fn end_to_end(version: &str) {
    let stack = Stack::new(&config(version, "64mb", 16, ""));
    stack.ok(&["apply", "--auto-approve"]);

    // `kip url` works with the redis crate, and the data is there through it.
    let url = stack.url("valkey.cache");
    assert!(url.starts_with("unix://"), "{url}");
    let mut connection = connect(&url);
    redis::cmd("SET")
        .arg("app:greeting")
        .arg("hello")
        .query::<()>(&mut connection)
        .unwrap();
    let got: String = redis::cmd("GET")
        .arg("app:greeting")
        .query(&mut connection)
        .unwrap();
    assert_eq!(got, "hello");
    // The awkward user logs in with its own URL and may do what its rules say, and no more.
    let awkward_address = format!(
        "valkey.cache.user[{}]",
        serde_json::to_string(AWKWARD).unwrap()
    );
    let mut awkward = connect(&stack.url(&awkward_address));
    let pong: String = redis::cmd("PING").query(&mut awkward).unwrap();
    assert_eq!(pong, "PONG");
    let refused = redis::cmd("SET")
        .arg("x")
        .arg("y")
        .query::<()>(&mut awkward)
        .unwrap_err();
    assert_eq!(refused.code(), Some("NOPERM"), "{refused}");
    // Without a password, nothing.
    let denied = ping_without_password(&url);
    assert_eq!(denied.code(), Some("NOAUTH"), "{denied}");

    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    let pid = pid_of(&stack, "valkey.cache");
    // As kip's unprivileged account, never as root; its data and configuration are that account's alone.
    assert_ne!(owner_of(pid), "root");
    let instance_dir = stack.project.path().join(".kip/run/valkey.cache");
    for (path, mode) in [
        ("data", 0o700),
        ("run", 0o700),
        ("data/valkey.conf", 0o600),
        ("data/users.acl", 0o600),
    ] {
        let metadata = std::fs::metadata(instance_dir.join(path)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777,
            mode,
            "{path}"
        );
    }
    // No password in plaintext on disk outside the state: the ACL file holds hashes.
    let acl = std::fs::read_to_string(instance_dir.join("data/users.acl")).unwrap();
    let password = url.rsplit("pass=").next().unwrap();
    assert!(!acl.contains(password), "{acl}");

    // maxmemory: in place, live, the same process.
    stack
        .project
        .write("kip.hcl", config(version, "128mb", 16, ""));
    let plan = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.snapshot());
    assert!(
        plan.stdout.contains("# applied live, without a restart")
            && plan.stdout.contains("maxmemory = \"64mb\" -> \"128mb\"")
            && !plan.stdout.contains("restarts the instance")
            && !plan.stdout.contains("forces a restart"),
        "{}",
        plan.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        pid_of(&stack, "valkey.cache"),
        pid,
        "maxmemory restarted Valkey"
    );
    assert_eq!(config_get(&url, "maxmemory"), (128u64 << 20).to_string());

    // databases: Valkey cannot change it live; the plan says it restarts, and it does.
    stack
        .project
        .write("kip.hcl", config(version, "128mb", 32, ""));
    let plan = stack.kip(&["plan"]);
    assert!(
        plan.stdout.contains("# restarts the instance")
            && plan
                .stdout
                .contains("databases = 16 -> 32  # forces a restart"),
        "{}",
        plan.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    let restarted = pid_of(&stack, "valkey.cache");
    assert_ne!(restarted, pid, "databases did not restart Valkey");
    assert_eq!(config_get(&url, "databases"), "32");
    // The users and the data came through the restart.
    let got: String = redis::cmd("GET")
        .arg("app:greeting")
        .query(&mut connect(&url))
        .unwrap();
    assert_eq!(got, "hello");
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);

    // A setting Valkey refuses: the error quotes Valkey, and the server keeps running as it was.
    stack.project.write(
        "kip.hcl",
        config(version, "128mb", 32, "  settings   = { hz = \"lots\" }\n"),
    );
    let refused = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(refused.code, 1, "{}", refused.snapshot());
    assert!(
        refused
            .stderr
            .contains("Valkey refused `CONFIG SET hz \"lots\"`")
            && refused
                .stderr
                .contains("argument couldn't be parsed into an integer"),
        "{}",
        refused.stderr
    );
    assert_eq!(pid_of(&stack, "valkey.cache"), restarted);
    stack.project.write(
        "kip.hcl",
        config(version, "128mb", 32, "  settings   = { hz = 20 }\n"),
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(config_get(&url, "hz"), "20");
    assert_eq!(pid_of(&stack, "valkey.cache"), restarted);

    // A setting changed behind kip's back is drift, set back live.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("volatile-ttl")
        .query::<()>(&mut connect(&url))
        .unwrap();
    let plan = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.snapshot());
    assert!(
        plan.stdout
            .contains("maxmemory_policy = \"volatile-ttl\" -> \"noeviction\"")
            && plan.stdout.contains("# applied live, without a restart"),
        "{}",
        plan.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(config_get(&url, "maxmemory-policy"), "noeviction");
    assert_eq!(pid_of(&stack, "valkey.cache"), restarted);

    // Drift made with Valkey's own client: a user deleted, another one changed; planned, then repaired.
    let mut admin = connect(&url);
    redis::cmd("ACL")
        .arg("DELUSER")
        .arg(AWKWARD)
        .query::<i64>(&mut admin)
        .unwrap();
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg("app")
        .arg("+flushall")
        .arg(">stolen")
        .query::<()>(&mut admin)
        .unwrap();
    let plan = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.snapshot());
    assert!(
        plan.stdout.contains(&format!("+ {awkward_address} (user)"))
            && plan.stdout.contains("~ valkey.cache.user.app (user)")
            && plan.stdout.contains("password_works = false -> true"),
        "{}",
        plan.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    let pong: String = redis::cmd("PING")
        .query(&mut connect(&stack.url(&awkward_address)))
        .unwrap();
    assert_eq!(pong, "PONG");

    // A user removed from the configuration is deleted.
    let without_app = config(version, "128mb", 32, "  settings   = { hz = 20 }\n").replace(
        "  user \"app\" {\n    commands = [\"+@all\", \"-flushall\"]\n    keys     = [\"app:*\"]\n  }\n",
        "",
    );
    stack.project.write("kip.hcl", without_app);
    stack.ok(&["apply", "--auto-approve"]);
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query(&mut connect(&url))
        .unwrap();
    assert!(!users.contains(&"app".to_owned()), "{users:?}");

    // Destroy leaves no process, no directory, no socket.
    stack.ok(&["destroy", "--auto-approve"]);
    assert!(!std::path::Path::new(&format!("/proc/{restarted}")).exists());
    assert!(!PathBuf::from(socket_of(&url)).exists());
    assert!(
        !stack.project.path().join(".kip/run/valkey.cache").exists(),
        "the instance's directory is left"
    );
}

#[test]
fn valkey_8_end_to_end() {
    end_to_end("8");
}

#[test]
fn valkey_9_end_to_end() {
    end_to_end("9");
}

#[test]
fn names_and_values_valkey_would_refuse_are_lint_errors_with_their_spans() {
    let stack = Stack::new(concat!(
        "valkey \"cache\" {\n",
        "  version  = \"9\"\n",
        "  save     = [\"soon\"]\n",
        "  settings = { \"hz\\nport\" = 1 }\n",
        "  user \"has space\" {}\n",
        "  user \"default\" {}\n",
        "  user \"app\" {\n",
        "    keys = [\"a b\"]\n",
        "  }\n",
        "}\n",
    ));
    crate::support::lint_reports(
        &stack,
        &[
            "kip.hcl:3:14",
            "\"soon\" is not a rule of the form",
            "kip.hcl:4:14",
            "is not a Valkey directive name",
            "kip.hcl:5:8",
            "cannot contain spaces",
            "kip.hcl:6:8",
            "`default` is the user kip manages",
            "kip.hcl:8:12",
            "\"a b\" is empty or holds a space",
        ],
    );
    // Nothing ran.
    let plan = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(plan.code, 1, "{}", plan.snapshot());
    assert!(!stack.project.path().join(".kip/state.json").exists());
}

#[test]
fn a_tcp_port_is_served_on_loopback_with_the_password() {
    let port = free_port();
    let stack = Stack::new(&format!(
        "valkey \"cache\" {{\n  version = \"8\"\n  port    = {port}\n}}\n"
    ));
    stack.ok(&["apply", "--auto-approve"]);
    let url = stack.url("valkey.cache");
    assert!(
        url.starts_with("redis://default:") && url.ends_with(&format!("@127.0.0.1:{port}")),
        "{url}"
    );
    let pong: String = redis::cmd("PING").query(&mut connect(&url)).unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(config_get(&url, "bind"), "127.0.0.1");
    if let Ok(output) = std::process::Command::new("redis-cli")
        .args(["-u", &url, "--no-auth-warning", "PING"])
        .output()
    {
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "PONG");
    }
}

#[test]
fn a_secret_in_the_callers_environment_never_reaches_valkey() {
    let stack = Stack::new("valkey \"cache\" {\n  version = \"9\"\n}\n");
    let mut apply = stack.command(&["apply", "--auto-approve"]);
    apply.env("CLOUD_SECRET_TOKEN", "s3cr3t-t0k3n");
    let run = stack.project.run_with(apply);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let environment = environment_of(pid_of(&stack, "valkey.cache"));
    assert!(
        !environment.is_empty(),
        "the server's environment is readable"
    );
    assert!(
        !environment
            .iter()
            .any(|entry| entry.contains("s3cr3t-t0k3n")),
        "the server got the caller's secret: {environment:?}"
    );
}

/// `nobody` sending `PING` without credentials over the instance's TCP port and its unix socket with `redis-cli`.
fn poller(dir: &std::path::Path, port: u16, socket: &std::path::Path) -> HostilePoller {
    HostilePoller::start(dir, |output| {
        format!(
            "redis-cli -h 127.0.0.1 -p {port} PING 2>&1 | grep -q PONG && echo GOT-IN-OVER-TCP >>'{output}'; \
             redis-cli -h 127.0.0.1 -p {port} PING >>'{output}' 2>&1; \
             redis-cli -s '{socket}' PING 2>&1 | grep -q PONG && echo GOT-IN-OVER-THE-SOCKET >>'{output}'; \
             redis-cli -s '{socket}' PING >>'{output}' 2>&1;",
            output = output.display(),
            socket = socket.display(),
        )
    })
}

/// Polls through a first start, and through first starts whose kip is SIGKILLed at each moment (provisioning,
/// starting, the socket appearing): never a command runs without the password.
#[test]
fn another_local_user_polling_the_socket_and_port_never_gets_in() {
    if std::process::Command::new("redis-cli")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("redis-cli is not installed: the poller needs it");
        return;
    }
    let port = free_port();
    let stack = Stack::new(&format!(
        "valkey \"cache\" {{\n  version = \"8\"\n  port    = {port}\n}}\n"
    ));
    let watch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        watch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let socket = stack
        .project
        .path()
        .join(".kip/run/valkey.cache/run/valkey.sock");
    let poller = poller(watch.path(), port, &socket);
    std::thread::sleep(Duration::from_millis(300));
    for moment in ["valkey.cache: provisioning", "valkey.cache: starting"] {
        kill_when_logged(stack.command(&["apply", "--auto-approve"]), moment);
        std::thread::sleep(Duration::from_millis(200));
        // The kill lands wherever the apply has got to when the test reads the line, which can be past the start
        // request: whatever runs is stopped, so that the next apply has a start of its own to be killed at (the
        // instance keeps its state: an unfinished provisioning is still finished by the next apply).
        stack.ok(&["down"]);
    }
    // The moment the socket appears.
    stack.ok(&["destroy", "--auto-approve"]);
    kill_when_exists(stack.command(&["apply", "--auto-approve"]), &socket);
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    std::thread::sleep(Duration::from_millis(300));
    let seen = poller.finish();
    assert!(!seen.contains("GOT-IN"), "another user got in:\n{seen}");
    assert!(
        seen.contains("NOAUTH"),
        "the poller never reached the server over TCP to be refused:\n{seen}"
    );
    // The socket's directory is the engine account's alone: the poller cannot even reach the socket.
    let mode = std::fs::metadata(socket.parent().unwrap())
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
    let pong: String = redis::cmd("PING")
        .query(&mut connect(&stack.url("valkey.cache")))
        .unwrap();
    assert_eq!(pong, "PONG");
}

/// The declared password of `default` changes live (same process), the old one stops working, and a restart
/// keeps the new one (it is saved to the ACL file).
#[test]
fn a_new_password_is_applied_live_and_survives_a_restart() {
    let config = |password: &str, databases: u32| {
        format!(
            "valkey \"cache\" {{\n  version   = \"9\"\n  password  = \"{password}\"\n  databases = {databases}\n}}\n"
        )
    };
    let stack = Stack::new(&config("first pass/word", 16));
    stack.ok(&["apply", "--auto-approve"]);
    let old_url = stack.url("valkey.cache");
    assert!(old_url.ends_with("pass=first%20pass%2Fword"), "{old_url}");
    let pong: String = redis::cmd("PING").query(&mut connect(&old_url)).unwrap();
    assert_eq!(pong, "PONG");
    let pid = pid_of(&stack, "valkey.cache");

    stack.project.write("kip.hcl", config("second", 16));
    let plan = stack.kip(&["plan"]);
    assert!(
        plan.stdout.contains("# applied live, without a restart")
            && plan
                .stdout
                .contains("password = (sensitive) -> (sensitive)"),
        "{}",
        plan.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(pid_of(&stack, "valkey.cache"), pid);
    let new_url = stack.url("valkey.cache");
    let pong: String = redis::cmd("PING").query(&mut connect(&new_url)).unwrap();
    assert_eq!(pong, "PONG");
    let Err(refused) = redis::Client::open(old_url.as_str())
        .unwrap()
        .get_connection()
    else {
        panic!("the old password still works");
    };
    assert!(
        refused.kind() == redis::ErrorKind::AuthenticationFailed,
        "{refused}"
    );

    stack.project.write("kip.hcl", config("second", 8));
    stack.ok(&["apply", "--auto-approve"]);
    assert_ne!(pid_of(&stack, "valkey.cache"), pid);
    assert_eq!(config_get(&new_url, "databases"), "8");
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}

/// A value Valkey refuses in the config file, at the first start: the error quotes Valkey's own words from its
/// log. A directive kip sets itself is refused before anything runs.
#[test]
fn settings_valkey_or_kip_refuse_are_errors_that_say_why() {
    let stack =
        Stack::new("valkey \"cache\" {\n  version  = \"8\"\n  settings = { hz = \"lots\" }\n}\n");
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("FATAL CONFIG FILE ERROR")
            && run
                .stderr
                .contains("argument couldn't be parsed into an integer"),
        "{}",
        run.stderr
    );
    stack.project.write(
        "kip.hcl",
        "valkey \"cache\" {\n  version  = \"8\"\n  settings = { unixsocket = \"/tmp/elsewhere.sock\" }\n}\n",
    );
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("kip.hcl:3:14") && run.stderr.contains("kip sets `unixsocket` itself"),
        "{}",
        run.stderr
    );
    assert!(!std::path::Path::new("/tmp/elsewhere.sock").exists());
    stack.project.write(
        "kip.hcl",
        "valkey \"cache\" {\n  version  = \"8\"\n  settings = { hz = 50 }\n}\n",
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(config_get(&stack.url("valkey.cache"), "hz"), "50");
}

/// A lost state never opens the server: kip does not know the password any more, says how to recover, and the
/// server still refuses a connection without it.
#[test]
fn a_lost_state_never_opens_access_and_says_how_to_recover() {
    let stack = Stack::new("valkey \"cache\" {\n  version = \"9\"\n}\n");
    stack.ok(&["apply", "--auto-approve"]);
    let url = stack.url("valkey.cache");
    stack.ok(&["down"]);
    std::fs::remove_file(stack.project.path().join(".kip/state.json")).unwrap();
    let _ = std::fs::remove_file(stack.project.path().join(".kip/state.json.backup"));
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("password in kip's state does not work"),
        "{}",
        run.stderr
    );
    if std::path::Path::new(socket_of(&url)).exists() {
        let denied = ping_without_password(&url);
        assert_eq!(denied.code(), Some("NOAUTH"), "{denied}");
    }
    // The old URL (the password kip had) still works: nothing was reset.
    let pong: String = redis::cmd("PING").query(&mut connect(&url)).unwrap();
    assert_eq!(pong, "PONG");
}

/// The ACL file's fsync runs beside Valkey's first start, so a power loss can leave it empty while the state (made
/// durable after it, at the end of the apply) survives: Valkey reads an empty ACL file as a `default` user with no
/// password. The next start writes it again from the state first: the socket still asks for the password.
#[test]
fn an_acl_file_a_power_loss_left_empty_is_written_again_before_the_next_start() {
    let stack = Stack::new("valkey \"cache\" {\n  version = \"9\"\n}\n");
    stack.ok(&["apply", "--auto-approve"]);
    let url = stack.url("valkey.cache");
    stack.ok(&["down"]);
    let acl = stack
        .project
        .path()
        .join(".kip/run/valkey.cache/data/users.acl");
    std::fs::write(&acl, "").unwrap();
    stack.ok(&["up"]);
    let denied = ping_without_password(&url);
    assert_eq!(denied.code(), Some("NOAUTH"), "{denied}");
    let pong: String = redis::cmd("PING").query(&mut connect(&url)).unwrap();
    assert_eq!(pong, "PONG", "the password in the state works as before");
    assert!(
        std::fs::read_to_string(&acl)
            .unwrap()
            .starts_with("user default on #"),
        "written again"
    );
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}

/// A kip killed after its first provisioning wrote the ACL file and before the state had the password: the state
/// says the provisioning is unfinished and holds no password. The next `kip up` (and, the same way, `kip apply`)
/// provisions again as the first time, the ACL file gets the password that is now saved, and the instance works.
#[test]
fn a_first_provisioning_killed_before_its_password_was_saved_is_done_again() {
    let stack = Stack::new("valkey \"cache\" {\n  version = \"9\"\n}\n");
    stack.ok(&["apply", "--auto-approve"]);
    let old = stack.url("valkey.cache");
    stack.ok(&["down"]);
    let path = stack.project.path().join(".kip/state.json");
    let interrupt = || {
        let mut state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let entry = &mut state["instances"]["valkey.cache"];
        entry["secrets"] = serde_json::json!({});
        entry["lifecycle"] = serde_json::json!({ "provisioning": true });
        std::fs::write(&path, serde_json::to_string(&state).unwrap()).unwrap();
    };
    interrupt();
    stack.ok(&["up"]);
    let new = stack.url("valkey.cache");
    assert_ne!(new, old, "a new password");
    let pong: String = redis::cmd("PING").query(&mut connect(&new)).unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);

    stack.ok(&["down"]);
    interrupt();
    stack.ok(&["apply", "--auto-approve"]);
    let pong: String = redis::cmd("PING")
        .query(&mut connect(&stack.url("valkey.cache")))
        .unwrap();
    assert_eq!(pong, "PONG");
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}

/// kip.lock is written as the apply resolves a version, before the engine that uses it starts: a kip SIGKILLed at
/// the start leaves the pin in place (the version a finished apply would have pinned), and the next apply, which
/// finds the instance half made, keeps that pin and ends with nothing left to plan.
#[test]
fn a_kip_killed_at_the_start_has_already_pinned_the_version_in_kip_lock() {
    let stack = Stack::new("valkey \"cache\" {\n  version = \"9\"\n}\n");
    let lock = stack.project.path().join("kip.lock");
    assert!(!lock.exists());
    kill_when_logged(
        stack.command(&["apply", "--auto-approve"]),
        "valkey.cache: starting",
    );
    let pinned = std::fs::read_to_string(&lock).expect("kip.lock written before the start");
    assert!(pinned.contains("engine \"valkey\" \"9\""), "{pinned}");
    assert!(pinned.contains("sha256:"), "{pinned}");
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), pinned);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    let pong: String = redis::cmd("PING")
        .query(&mut connect(&stack.url("valkey.cache")))
        .unwrap();
    assert_eq!(pong, "PONG");
}
/// `kip connect` runs valkey-cli (or redis-cli) on the instance's socket, as `default` or as a user, with the
/// password in its environment.
#[test]
fn connect_runs_the_valkey_repl_as_the_address_says() {
    let stack = Stack::new(
        "valkey \"cache\" {\n  version = \"8\"\n  user \"reader\" {\n    commands = [\"+acl|whoami\", \"+get\"]\n    keys     = [\"*\"]\n  }\n}\n",
    );
    stack.ok(&["apply", "--auto-approve"]);
    let run = stack.kip_with_input(
        &["connect", "valkey.cache"],
        "SET greeting hello\nACL WHOAMI\n",
    );
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(
        run.stdout.contains("OK") && run.stdout.contains("default"),
        "{}",
        run.snapshot()
    );
    let run = stack.kip_with_input(
        &["connect", "valkey.cache.user.reader", "--", "--no-raw"],
        "ACL WHOAMI\nGET greeting\nSET x y\n",
    );
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(
        run.stdout.contains("reader")
            && run.stdout.contains("hello")
            && run.stdout.contains("NOPERM"),
        "{}",
        run.snapshot()
    );
}

/// Valkey 8 to 9 in place: the plan says it restarts (`restart_because` in JSON), the data and the users come
/// through, and the server is the new release.
#[test]
fn a_new_major_restarts_in_place_and_keeps_the_data_and_the_users() {
    let config = |version: &str| {
        format!(
            "valkey \"cache\" {{\n  version    = \"{version}\"\n  appendonly = true\n  user \"app\" {{\n    commands = [\"+@all\"]\n    keys     = [\"*\"]\n  }}\n}}\n"
        )
    };
    let stack = Stack::new(&config("8"));
    stack.ok(&["apply", "--auto-approve"]);
    let url = stack.url("valkey.cache");
    redis::cmd("SET")
        .arg("kept")
        .arg("yes")
        .query::<()>(&mut connect(&url))
        .unwrap();
    let pid = pid_of(&stack, "valkey.cache");

    stack.project.write("kip.hcl", config("9"));
    let plan = stack.kip(&["plan", "--json"]);
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let change = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|change| change["address"] == "valkey.cache")
        .unwrap();
    assert_eq!(change["action"], "update", "{change}");
    assert_eq!(
        change["restart_because"],
        serde_json::json!(["major", "version"]),
        "{change}"
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_ne!(pid_of(&stack, "valkey.cache"), pid);
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut connect(&url))
        .unwrap();
    assert!(info.contains("valkey_version:9."), "{info}");
    let kept: String = redis::cmd("GET")
        .arg("kept")
        .query(&mut connect(&stack.url("valkey.cache.user.app")))
        .unwrap();
    assert_eq!(kept, "yes");
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}
