//! S3 (SeaweedFS) end to end through the real `kip` binary and the real `weed` build from the test mirror,
//! checked with rusty-s3 (signed requests sent with reqwest) and, where the machine has it, boto3 with exactly
//! the variables `kip env` gives: bucket names S3 rejects, a declared port in use, a failed start's log tail, a
//! killed engine, a non-empty bucket and `force_destroy`, every listener on loopback on a port kip assigned, and
//! another local user polling the S3 port through the first start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kip_providers::s3::client::S3Client;

use crate::apply::Stack;
use crate::support::{HostilePoller, free_port, pid_of};

/// Runs `future` on a runtime of its own (the tests are plain threads).
pub(crate) fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// What `kip env --format json` gives.
fn env_of(stack: &Stack) -> BTreeMap<String, String> {
    let run = stack.ok(&["env", "--format", "json"]);
    serde_json::from_str(&run.stdout).unwrap_or_else(|error| panic!("{error}: {}", run.stdout))
}

/// A client of the store from `kip env`'s AWS variables.
pub(crate) fn client(stack: &Stack) -> S3Client {
    let env = env_of(stack);
    S3Client::new(
        &env["AWS_ENDPOINT_URL_S3"],
        &env["AWS_REGION"],
        &env["AWS_ACCESS_KEY_ID"],
        &env["AWS_SECRET_ACCESS_KEY"],
    )
    .unwrap()
}

/// The ports kip keeps in state for `instance`, by name.
fn state_ports(stack: &Stack, instance: &str) -> BTreeMap<String, u16> {
    let state: serde_json::Value =
        serde_json::from_str(&stack.project.read(".kip/state.json")).unwrap();
    serde_json::from_value(state["instances"][instance]["ports"].clone())
        .unwrap_or_else(|error| panic!("{error}: {state:#}"))
}

#[test]
fn bucket_names_s3_would_refuse_are_lint_errors_with_their_spans() {
    let stack = Stack::new(concat!(
        "s3 \"store\" {\n",
        "  version = \"4\"\n",
        "  bucket \"Bad_Name\" {}\n",
        "  bucket \"kip-ready-mine\" {}\n",
        "  bucket \"192.168.0.1\" {}\n",
        "  bucket \"fine-name\" {}\n",
        "}\n",
    ));
    let run = stack.kip(&["lint"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    for expected in [
        "kip.hcl:3:10",
        "holds only lower-case letters, digits, `-` and `.`, not 'B'",
        "kip.hcl:4:10",
        "cannot start with `kip-ready-`",
        "kip.hcl:5:10",
        "shaped like an IP address",
    ] {
        assert!(run.stderr.contains(expected), "{expected}\n{}", run.stderr);
    }
    assert!(!run.stderr.contains("kip.hcl:6:"), "{}", run.stderr);
    let apply = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.snapshot());
    assert!(!stack.project.path().join(".kip/state.json").exists());
}

#[test]
fn a_declared_port_in_use_is_refused_before_spawning() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let stack = Stack::new(&format!(
        "s3 \"store\" {{\n  version = \"4\"\n  port    = {port}\n}}\n"
    ));
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr
            .contains(&format!("declares port {port}, which is already in use")),
        "{}",
        run.stderr
    );
    let ps = stack.ok(&["ps", "--json"]);
    assert_eq!(ps.stdout.trim(), "[]", "nothing was spawned");
    drop(holder);
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        env_of(&stack)["AWS_ENDPOINT_URL_S3"],
        format!("http://127.0.0.1:{port}")
    );
}

/// One of SeaweedFS's internal ports taken by another program while the store is down: the start fails, and the
/// error quotes `weed`'s own words from its log.
#[test]
fn a_failed_start_reports_the_engines_log_tail() {
    let stack = Stack::new("s3 \"store\" {\n  version = \"4\"\n}\n");
    stack.ok(&["apply", "--auto-approve"]);
    stack.ok(&["down"]);
    let master = state_ports(&stack, "s3.store")["master"];
    let holder = std::net::TcpListener::bind(("127.0.0.1", master)).unwrap();
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(run.stderr.contains("s3.store"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("port {master} for Master")),
        "the error quotes weed's log\n{}",
        run.stderr
    );
    drop(holder);
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}

#[test]
fn a_killed_engine_is_restarted_with_its_data() {
    let stack = Stack::new(
        "s3 \"store\" {\n  version = \"4\"\n  bucket \"keep\" {\n    versioning = true\n  }\n}\n",
    );
    stack.ok(&["apply", "--auto-approve"]);
    let s3 = client(&stack);
    block_on(s3.put_object("keep", "a/b.txt", "kept")).unwrap();
    let before = pid_of(&stack, "s3.store");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &before.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    stack.ok(&["apply", "--auto-approve"]);
    let after = pid_of(&stack, "s3.store");
    assert_ne!(before, after, "a new weed process runs");
    // Retried as SDKs do: the supervisor restarted weed as soon as it was killed, and once its S3 port accepts it
    // counts as running, while it may still be loading the volume (a 500 for a moment).
    let read = s3.get_object_retrying("keep", "a/b.txt", Duration::from_secs(10));
    assert_eq!(block_on(read).unwrap(), "kept");
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}

#[test]
fn a_non_empty_bucket_is_dropped_only_with_force_destroy() {
    let config = |full: &str| {
        format!("s3 \"store\" {{\n  version = \"4\"\n  bucket \"keep\" {{}}\n{full}}}\n")
    };
    let full = "  bucket \"full\" {\n    versioning = true\n  }\n";
    let stack = Stack::new(&config(full));
    stack.ok(&["apply", "--auto-approve"]);
    let s3 = client(&stack);
    block_on(async {
        s3.put_object("full", "doc.txt", "one").await?;
        s3.put_object("full", "doc.txt", "two").await?;
        s3.delete_object("full", "doc.txt").await
    })
    .unwrap();

    // Removed from the configuration: refused, the bucket and its versions kept.
    stack.project.write("kip.hcl", config(""));
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    for expected in ["bucket \"full\" is not empty", "force_destroy = true"] {
        assert!(run.stderr.contains(expected), "{expected}\n{}", run.stderr);
    }
    assert_eq!(block_on(s3.versions("full", 10)).unwrap().len(), 3);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 2);

    // Told to: every version goes with it.
    stack.project.write(
        "kip.hcl",
        config("  bucket \"full\" {\n    versioning    = true\n    force_destroy = true\n  }\n"),
    );
    stack.ok(&["apply", "--auto-approve"]);
    stack.project.write("kip.hcl", config(""));
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(block_on(s3.bucket_state("full")).unwrap(), None);
    assert!(block_on(s3.bucket_state("keep")).unwrap().is_some());
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}

/// The TCP sockets `pid` listens on, as (address, port), from /proc/<pid>/net/tcp{,6} and its fds.
fn listeners_of(pid: u32) -> Vec<(String, u16)> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let mut listeners = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A: LISTEN), inode.
            if fields.len() < 10 || fields[3] != "0A" || !inodes.contains(&fields[9].to_owned()) {
                continue;
            }
            let (address, port) = fields[1].split_once(':').unwrap();
            let address = match address {
                "0100007F" => "127.0.0.1".to_owned(),
                other => format!("{table}:{other}"),
            };
            listeners.push((address, u16::from_str_radix(port, 16).unwrap()));
        }
    }
    listeners
}

/// The real uid of a process (`self` for this one).
fn uid_of(pid: &str) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn every_listener_is_on_loopback_on_a_port_kip_assigned() {
    let port = free_port();
    let stack = Stack::new(&format!(
        "s3 \"store\" {{\n  version = \"4\"\n  port    = {port}\n  bucket \"photos\" {{}}\n}}\n"
    ));
    stack.ok(&["apply", "--auto-approve"]);
    let assigned: Vec<u16> = state_ports(&stack, "s3.store")
        .into_values()
        .chain([port])
        .collect();
    assert_eq!(
        assigned.len(),
        10,
        "master, volume, filer, S3, admin and their gRPC twins: {assigned:?}"
    );
    let pid = pid_of(&stack, "s3.store");
    let listeners = listeners_of(pid);
    assert!(!listeners.is_empty(), "the listeners are readable");
    for (address, listening) in &listeners {
        assert_eq!(address, "127.0.0.1", "{listeners:?}");
        assert!(
            assigned.contains(listening),
            "port {listening} is not one kip assigned ({assigned:?}): {listeners:?}"
        );
    }
    // No other process of the instance (weed runs alone).
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    assert_eq!(children.trim(), "", "weed started no other process");
    // Data and metadata under the instance's data directory, the engine account's.
    let data = stack.project.path().join(".kip/run/s3.store/data");
    for entry in ["filerldb2", "s3-identity.json", "security.toml"] {
        assert!(
            data.join(entry).exists(),
            "{entry} is in {}",
            data.display()
        );
    }
    let security = std::fs::metadata(data.join("security.toml")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&security.permissions()) & 0o777,
        0o600
    );
    let identity = std::fs::metadata(data.join("s3-identity.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&identity.permissions()) & 0o777,
        0o600
    );
    let uid = uid_of(&pid.to_string());
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&identity),
        uid,
        "the identity file is weed's account's"
    );
    if uid_of("self") == 0 {
        assert_ne!(uid, 0, "weed does not run as root");
    }
}

/// `nobody` with curl: anonymous requests (list buckets, create a bucket, put an object) and the same requests
/// signed with a key and secret it made up. Any 2xx answer is a way in.
fn poller(dir: &std::path::Path, port: u16) -> HostilePoller {
    HostilePoller::start(dir, |output| {
        let output = output.display();
        let attempt = |name: &str, arguments: &str| {
            format!(
                "code=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 2 {arguments}); \
                 case $code in 2*) echo GOT-IN-{name} >>'{output}';; esac; echo \"{name} $code\" >>'{output}'; "
            )
        };
        let base = format!("http://127.0.0.1:{port}");
        let signed = "--aws-sigv4 aws:amz:us-east-1:s3 --user AKIAMADEUP:not-the-secret";
        [
            attempt("ANONYMOUS-LIST", &format!("{base}/")),
            attempt("ANONYMOUS-CREATE", &format!("-X PUT {base}/mine")),
            attempt(
                "ANONYMOUS-PUT",
                &format!("-X PUT --data x {base}/mine/object"),
            ),
            attempt("SIGNED-LIST", &format!("{signed} {base}/")),
            attempt("SIGNED-CREATE", &format!("{signed} -X PUT {base}/mine")),
            attempt(
                "SIGNED-PUT",
                &format!("{signed} -X PUT --data x {base}/mine/object"),
            ),
        ]
        .concat()
    })
}

/// Polls through a first start, and through a first start whose kip is SIGKILLed while it starts the engine:
/// no request without the identity ever succeeds. Then SeaweedFS's filer and volume server refuse that account
/// over HTTP too.
#[test]
fn another_local_user_polling_during_the_first_start_never_gets_in() {
    use std::io::BufRead as _;
    let port = free_port();
    let stack = Stack::new(&format!(
        "s3 \"store\" {{\n  version = \"4\"\n  port    = {port}\n}}\n"
    ));
    let watch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        watch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let poller = poller(watch.path(), port);
    std::thread::sleep(Duration::from_millis(200));
    let mut apply = stack.command(&["apply", "--auto-approve"]);
    apply
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = apply.spawn().unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines() {
        if line.unwrap().contains("s3.store: starting") {
            child.kill().unwrap();
            break;
        }
    }
    let _ = child.wait();
    stack.ok(&["destroy", "--auto-approve"]);
    stack.ok(&["apply", "--auto-approve"]);
    std::thread::sleep(Duration::from_millis(300));
    let seen = poller.finish();
    assert!(!seen.contains("GOT-IN"), "another user got in:\n{seen}");
    for refused in [
        "ANONYMOUS-LIST 403",
        "ANONYMOUS-PUT 403",
        "SIGNED-CREATE 403",
    ] {
        assert!(
            seen.contains(refused),
            "the poller never reached the store to be refused ({refused}):\n{seen}"
        );
    }
    // kip's own identity works.
    let s3 = client(&stack);
    block_on(async {
        s3.create_bucket("private", false).await?;
        s3.put_object("private", "secret.txt", "kip's").await
    })
    .unwrap();
    // Around the S3 API, SeaweedFS's own HTTP listeners refuse the same account without the JWT only weed holds.
    let ports = state_ports(&stack, "s3.store");
    let (filer, volume) = (ports["filer"], ports["volume"]);
    for (what, arguments) in [
        (
            "filer read",
            format!("http://127.0.0.1:{filer}/buckets/private/secret.txt"),
        ),
        (
            "filer write",
            format!("-X PUT --data x http://127.0.0.1:{filer}/buckets/private/evil.txt"),
        ),
        (
            "volume write",
            format!("-F file=@/etc/hostname http://127.0.0.1:{volume}/1,0123456789"),
        ),
    ] {
        let code = as_nobody_curl(&arguments);
        assert_eq!(code, "401", "{what}: {arguments}");
    }
    assert_eq!(block_on(s3.versions("private", 10)).unwrap().len(), 1);
}

/// The HTTP status curl run as `nobody` gets.
fn as_nobody_curl(arguments: &str) -> String {
    let output = std::process::Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 {arguments}"
        ))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The venv `scripts/test.sh` installs boto3 into (the user's cache dir, kept between runs).
fn boto3_python() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    let python = cache.join("kip/venv/bin/python");
    python.exists().then_some(python)
}

/// boto3 given exactly `kip env`'s variables (nothing else, not even HOME) lists, puts and gets: the endpoint,
/// keys and region work for the AWS SDKs as they are.
#[test]
fn boto3_works_with_exactly_the_variables_kip_env_gives() {
    let Some(python) = boto3_python() else {
        eprintln!("no boto3 venv in the user's cache dir: scripts/test.sh makes it");
        return;
    };
    let stack = Stack::new(
        "s3 \"store\" {\n  version = \"4\"\n  region  = \"eu-central-1\"\n  bucket \"uploads\" {}\n}\n",
    );
    stack.ok(&["apply", "--auto-approve"]);
    let env = env_of(&stack);
    let aws: Vec<&String> = env.keys().filter(|name| name.starts_with("AWS_")).collect();
    assert_eq!(
        aws,
        [
            "AWS_ACCESS_KEY_ID",
            "AWS_ENDPOINT_URL_S3",
            "AWS_REGION",
            "AWS_SECRET_ACCESS_KEY"
        ]
    );
    let script = r#"
import boto3
s3 = boto3.client("s3")
assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["uploads"], s3.list_buckets()
s3.put_object(Bucket="uploads", Key="hello.txt", Body=b"from boto3")
print(s3.get_object(Bucket="uploads", Key="hello.txt")["Body"].read().decode())
"#;
    let output = std::process::Command::new(python)
        .args(["-c", script])
        .env_clear()
        .envs(&env)
        .current_dir(stack.project.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "from boto3");
    assert_eq!(
        block_on(client(&stack).get_object("uploads", "hello.txt")).unwrap(),
        "from boto3"
    );
}
