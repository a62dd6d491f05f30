//! S3 (SeaweedFS) end to end through the real `kip` binary and the real `weed` build from the test mirror,
//! checked with rusty-s3 (signed requests sent with reqwest) and, where the machine has it, boto3 with exactly
//! the variables `kip env` gives: bucket names S3 rejects, a declared port in use, a failed start's log tail, a
//! killed engine, a non-empty bucket and `force_destroy`, every listener on loopback on a port kip assigned, and
//! another local user polling the S3 port and every other listener through the first start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kip_providers::s3::client::S3Client;

use crate::apply::Stack;
use crate::support::{HostilePoller, free_port, pid_of, wait_gone};

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
    let run = crate::support::lint_reports(
        &stack,
        &[
            "kip.hcl:3:10",
            "holds only lower-case letters, digits, `-` and `.`, not 'B'",
            "kip.hcl:4:10",
            "cannot start with `kip-ready-`",
            "kip.hcl:5:10",
            "shaped like an IP address",
        ],
    );
    assert!(!run.stderr.contains("kip.hcl:6:"), "{}", run.stderr);
    let apply = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.snapshot());
    assert!(!stack.project.path().join(".kip/state.json").exists());
}

#[test]
fn a_declared_port_in_use_is_refused_before_spawning() {
    let holder = std::net::TcpListener::bind(("127.0.0.1", crate::support::free_port())).unwrap();
    let port = holder.local_addr().unwrap().port();
    let stack = Stack::new(&format!(
        "s3 \"store\" {{\n  version = \"4\"\n  port    = {port}\n}}\n"
    ));
    crate::support::refuses_taken_port(&stack, port);
    drop(holder);
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        env_of(&stack)["AWS_ENDPOINT_URL_S3"],
        format!("http://127.0.0.1:{port}")
    );
}

/// One of SeaweedFS's internal ports (the master's, whose metadata directory weed names after it) taken by another
/// program while the store is down: the next apply gives it up for a new free one, says so, and the objects stay;
/// the other program keeps its port.
#[test]
fn an_internal_port_taken_while_down_is_given_up_and_the_objects_stay() {
    let stack = Stack::new("s3 \"store\" {\n  version = \"4\"\n  bucket \"keep\" {}\n}\n");
    stack.ok(&["apply", "--auto-approve"]);
    block_on(client(&stack).put_object("keep", "a/b.txt", "kept")).unwrap();
    stack.ok(&["down"]);
    let master = state_ports(&stack, "s3.store")["master"];
    let holder = crate::support::hold_freed_port(master);
    let run = stack.ok(&["apply", "--auto-approve"]);
    let moved = state_ports(&stack, "s3.store")["master"];
    assert_ne!(moved, master);
    assert!(
        run.stderr
            .contains(&crate::support::moved_port_line(master, "master", moved)),
        "{}",
        run.snapshot()
    );
    let s3 = client(&stack);
    let read = s3.get_object_retrying("keep", "a/b.txt", Duration::from_secs(10));
    assert_eq!(block_on(read).unwrap(), "kept");
    if holder.is_some() {
        assert!(std::net::TcpStream::connect(("127.0.0.1", master)).is_ok());
    }
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    drop(holder);
}

/// weed refusing to start (its filer store made unusable while the store was down): the apply fails, and the
/// error quotes weed's own log; once repaired, the next apply starts it.
#[test]
fn a_failed_start_reports_the_engines_log_tail() {
    let stack = Stack::new("s3 \"store\" {\n  version = \"4\"\n}\n");
    stack.ok(&["apply", "--auto-approve"]);
    stack.ok(&["down"]);
    let data = stack.project.path().join(".kip/run/s3.store/data");
    let store = data.join("filerldb2");
    let saved = data.join("filerldb2.saved");
    std::fs::rename(&store, &saved).unwrap();
    std::fs::write(&store, "not a directory").unwrap();
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("`s3.store` exited before it was ready")
            && run.stderr.contains("weed.log:")
            && run.stderr.contains("github.com/seaweedfs/seaweedfs"),
        "the error quotes weed's log\n{}",
        run.stderr
    );
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&saved, &store).unwrap();
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}

/// Another account's file at one of the instance's gRPC socket paths in /tmp (weed names them after its ports, and
/// another kip's instance may have had that port while this one was down): `kip apply` gives that port up for a
/// new one, as it does a port another program listens on, says so and keeps the new one in state; the file stays,
/// since kip removes only its engine account's files there. The data stays, the plan after it is empty, and
/// `kip down` leaves none of the instance's own sockets behind.
#[test]
fn another_accounts_file_at_a_socket_path_moves_the_port_and_is_left_alone() {
    if uid_of("self") != 0 {
        return;
    }
    /// Removes the planted file however the test ends.
    struct Planted(PathBuf);
    impl Drop for Planted {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let stack = Stack::new("s3 \"store\" {\n  version = \"4\"\n  bucket \"keep\" {}\n}\n");
    stack.ok(&["apply", "--auto-approve"]);
    let s3 = client(&stack);
    block_on(s3.put_object("keep", "a/b.txt", "kept")).unwrap();
    stack.ok(&["down"]);
    let before = state_ports(&stack, "s3.store");
    let sockets = kip_providers::s3::config::grpc_sockets(&before);
    let left: Vec<&PathBuf> = sockets.iter().filter(|socket| socket.exists()).collect();
    assert!(left.is_empty(), "left in /tmp after down: {left:?}");
    let from = before["volume-grpc"];
    let planted = Planted(PathBuf::from(format!(
        "/tmp/seaweedfs-volume-grpc-{from}.sock"
    )));
    assert!(sockets.contains(&planted.0), "{sockets:?}");
    std::fs::write(&planted.0, "theirs").unwrap();
    std::os::unix::fs::chown(&planted.0, Some(65534), Some(65534)).unwrap();

    let apply = stack.ok(&["apply", "--auto-approve"]);
    let after = state_ports(&stack, "s3.store");
    let to = after["volume-grpc"];
    assert_ne!(to, from);
    assert!(
        apply
            .stderr
            .contains(&crate::support::moved_port_line(from, "volume-grpc", to)),
        "{}",
        apply.snapshot()
    );
    // Only that port moved; the S3 API keeps its address.
    let mut unmoved = after.clone();
    unmoved.insert("volume-grpc".to_owned(), from);
    assert_eq!(unmoved, before);
    assert_eq!(std::fs::read_to_string(&planted.0).unwrap(), "theirs");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&planted.0).unwrap());
    assert_eq!(owner, 65534);
    let read = s3.get_object_retrying("keep", "a/b.txt", Duration::from_secs(10));
    assert_eq!(block_on(read).unwrap(), "kept");
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);

    stack.ok(&["down"]);
    let sockets = kip_providers::s3::config::grpc_sockets(&after);
    let left: Vec<&PathBuf> = sockets.iter().filter(|socket| socket.exists()).collect();
    assert!(left.is_empty(), "left in /tmp after down: {left:?}");
    assert_eq!(std::fs::read_to_string(&planted.0).unwrap(), "theirs");
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

/// The supervisor SIGKILLed, and then weed: the next kip's supervisor finds weed gone, and the destroy that follows
/// (which spawns nothing) leaves none of weed's sockets in /tmp.
#[test]
fn a_destroy_after_the_supervisor_and_weed_were_killed_leaves_no_socket() {
    let stack = Stack::new("s3 \"store\" {\n  version = \"4\"\n}\n");
    stack.ok(&["apply", "--auto-approve"]);
    let sockets = kip_providers::s3::config::grpc_sockets(&state_ports(&stack, "s3.store"));
    assert!(
        sockets.iter().any(|socket| socket.exists()),
        "weed serves gRPC on {sockets:?}"
    );
    let weed = pid_of(&stack, "s3.store");
    let supervisor: u32 = std::fs::read_to_string(stack.project.path().join(".kip/supervisor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for pid in [supervisor, weed] {
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        wait_gone(pid, Duration::from_secs(10));
    }
    stack.ok(&["destroy", "--auto-approve"]);
    let left: Vec<&PathBuf> = sockets.iter().filter(|socket| socket.exists()).collect();
    assert!(left.is_empty(), "left in /tmp after destroy: {left:?}");
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
    try_listeners_of(pid).unwrap_or_else(|| panic!("cannot read the sockets of process {pid}"))
}

/// [`listeners_of`], or `None` when the process is gone (or going) while it is read.
fn try_listeners_of(pid: u32) -> Option<Vec<(String, u16)>> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
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
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A: LISTEN), inode.
            if fields.len() < 10 || fields[3] != "0A" || !inodes.contains(&fields[9].to_owned()) {
                continue;
            }
            let (address, port) = fields[1].split_once(':')?;
            let address = match address {
                "0100007F" => "127.0.0.1".to_owned(),
                other => format!("{table}:{other}"),
            };
            listeners.push((address, u16::from_str_radix(port, 16).ok()?));
        }
    }
    Some(listeners)
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
    // weed's own logs go to the instance's log directory (its TMPDIR), not the machine's /tmp.
    let logs: Vec<String> = std::fs::read_dir(stack.project.path().join(".kip/logs/s3.store"))
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        logs.iter()
            .any(|name| name.starts_with("weed.") && name.contains(".log.INFO.")),
        "{logs:?}"
    );
    // Data and metadata under the instance's data directory, the engine account's.
    let data = stack.project.path().join(".kip/run/s3.store/data");
    for entry in [
        "filerldb2",
        "s3-identity.json",
        "security.toml",
        "tls-ca.pem",
        "tls-cert.pem",
        "tls-key.pem",
    ] {
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
    let uid = uid_of(&pid.to_string());
    for private in [
        "s3-identity.json",
        "tls-key.pem",
        "tls-cert.pem",
        "tls-ca.pem",
    ] {
        let metadata = std::fs::metadata(data.join(private)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777,
            0o600,
            "{private}"
        );
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&metadata),
            uid,
            "{private} is weed's account's"
        );
    }
    if uid_of("self") == 0 {
        assert_ne!(uid, 0, "weed does not run as root");
    }
    // weed serves its gRPC servers on sockets in /tmp too (it has no option for where): a destroy, which kills it
    // without its stop command, leaves none of them behind.
    let ports = state_ports(&stack, "s3.store");
    let sockets = kip_providers::s3::config::grpc_sockets(&ports);
    assert!(
        sockets.iter().any(|socket| socket.exists()),
        "weed serves gRPC on {sockets:?}"
    );
    stack.ok(&["destroy", "--auto-approve"]);
    let left: Vec<&PathBuf> = sockets.iter().filter(|socket| socket.exists()).collect();
    assert!(left.is_empty(), "left in /tmp after destroy: {left:?}");
}

/// `nobody` with curl: anonymous requests (list buckets, create a bucket, put an object) and the same requests
/// signed with a key and secret it made up, to the S3 port. Any 2xx answer is a way in.
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

/// `nobody` with curl at every other port `weed` listens on, as `dir/ports` lists them at the time (see
/// [`PortWatcher`]): the master's HTTP API (`/cluster/status`, `/dir/assign`, `/col/delete`) in plain HTTP,
/// HTTP/2 without TLS as a gRPC client speaks it, and TLS without a client certificate. Only a TLS server's
/// refusal of plain HTTP (400) or no answer at all (000) is not a way in.
fn internal_poller(dir: &std::path::Path) -> HostilePoller {
    let ports = dir.join("ports");
    HostilePoller::start(dir, |output| {
        // $1: what, $2: the answers that are refusals, the rest: curl's arguments.
        format!(
            "internal() {{ what=$1; refused=$2; shift 2; \
             code=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 2 \"$@\"); \
             case \" $refused \" in *\" $code \"*) ;; *) echo GOT-IN-$what >>'{output}';; esac; \
             echo \"$what $code\" >>'{output}'; }}; \
             for p in $(cat '{ports}' 2>/dev/null); do \
             for path in /cluster/status /dir/assign '/col/delete?collection=private'; do \
             internal INTERNAL-PLAIN '000 400' \"http://127.0.0.1:$p$path\"; \
             internal INTERNAL-TLS-NO-CERT 000 -k \"https://127.0.0.1:$p$path\"; done; \
             internal INTERNAL-H2C 000 --http2-prior-knowledge \"http://127.0.0.1:$p/\"; done; \
             sleep 0.01; ",
            output = output.display(),
            ports = ports.display(),
        )
    })
}

/// Watches, as root, for the `weed` of the data directory `data_dir` and writes the ports it listens on but
/// `except` to `dir/ports` (world-readable) as they come up, so the poller tries each listener from its first
/// moment, before kip's state names it.
struct PortWatcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::collections::BTreeSet<u16>>>,
}

impl PortWatcher {
    fn start(dir: &std::path::Path, data_dir: PathBuf, except: u16) -> PortWatcher {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let file = dir.join("ports");
        let thread = std::thread::spawn(move || {
            let needle = format!("-dir={}", data_dir.display());
            let mut seen = std::collections::BTreeSet::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                for pid in weed_pids(&needle) {
                    for (_, port) in try_listeners_of(pid).unwrap_or_default() {
                        if port != except && seen.insert(port) {
                            let list: Vec<String> = seen.iter().map(u16::to_string).collect();
                            let temporary = file.with_extension("new");
                            std::fs::write(&temporary, list.join(" ")).unwrap();
                            std::fs::set_permissions(
                                &temporary,
                                std::os::unix::fs::PermissionsExt::from_mode(0o644),
                            )
                            .unwrap();
                            std::fs::rename(&temporary, &file).unwrap();
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        });
        PortWatcher {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops it and returns every port it saw.
    fn finish(mut self) -> std::collections::BTreeSet<u16> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for PortWatcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The processes whose command line holds `needle`.
fn weed_pids(needle: &str) -> Vec<u32> {
    crate::support::all_pids()
        .into_iter()
        .filter(|&pid| {
            crate::support::cmdline(pid)
                .iter()
                .any(|arg| arg.contains(needle))
        })
        .collect()
}

/// Polls through a first start, and through a first start whose kip is SIGKILLed while it starts the engine:
/// no request without the identity ever succeeds, and no other listener of `weed` (the master's HTTP API, the
/// gRPC servers) answers that account at all. Then each of those listeners, by name, refuses that account
/// whatever it speaks, while it answers kip's own certificate.
#[test]
fn another_local_user_polling_during_the_first_start_never_gets_in() {
    let port = free_port();
    let stack = Stack::new(&format!(
        "s3 \"store\" {{\n  version = \"4\"\n  port    = {port}\n}}\n"
    ));
    let (watch, watch_internal) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&watch, &watch_internal] {
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
    }
    let data = stack.project.path().join(".kip/run/s3.store/data");
    let watcher = PortWatcher::start(watch_internal.path(), data.clone(), port);
    let poller = poller(watch.path(), port);
    let internal_poller = internal_poller(watch_internal.path());
    std::thread::sleep(Duration::from_millis(200));
    crate::support::kill_when_logged(
        stack.command(&["apply", "--auto-approve"]),
        "s3.store: starting",
    );
    stack.ok(&["destroy", "--auto-approve"]);
    stack.ok(&["apply", "--auto-approve"]);
    std::thread::sleep(Duration::from_millis(300));
    let seen = format!("{}{}", poller.finish(), internal_poller.finish());
    let watched = watcher.finish();
    assert!(!seen.contains("GOT-IN"), "another user got in:\n{seen}");
    for refused in [
        "ANONYMOUS-LIST 403",
        "ANONYMOUS-PUT 403",
        "SIGNED-CREATE 403",
        "INTERNAL-PLAIN 400",
        "INTERNAL-TLS-NO-CERT 000",
        "INTERNAL-H2C 000",
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
    // Every listener but the S3 API's, by name, as the instance now has them: plain HTTP gets a TLS server's
    // refusal, HTTP/2 without TLS (a gRPC client's way in) and TLS without a client certificate get no answer.
    let ports = state_ports(&stack, "s3.store");
    let internal: Vec<(&String, u16)> = ports
        .iter()
        .filter(|(name, _)| name.as_str() != "s3")
        .map(|(name, port)| (name, *port))
        .collect();
    assert_eq!(internal.len(), 9, "{ports:?}");
    for (name, port) in &internal {
        assert!(
            watched.contains(port),
            "the poller tried {name} ({port}) through the first start: {watched:?}"
        );
        for (what, arguments, refusals) in [
            (
                "master API in plain HTTP",
                format!("http://127.0.0.1:{port}/cluster/status"),
                &["400", "000"][..],
            ),
            (
                "bucket drop in plain HTTP",
                format!("'http://127.0.0.1:{port}/col/delete?collection=private'"),
                &["400", "000"][..],
            ),
            (
                "volume assignment in plain HTTP",
                format!("http://127.0.0.1:{port}/dir/assign"),
                &["400", "000"][..],
            ),
            (
                "gRPC's HTTP/2 without TLS",
                format!("--http2-prior-knowledge http://127.0.0.1:{port}/"),
                &["000"][..],
            ),
            (
                "TLS without a client certificate",
                format!("-k 'https://127.0.0.1:{port}/col/delete?collection=private'"),
                &["000"][..],
            ),
        ] {
            let code = as_nobody_curl(&arguments);
            assert!(
                refusals.contains(&code.as_str()),
                "{name} ({port}), {what}: {code}"
            );
        }
    }
    // SeaweedFS also serves its gRPC servers on unix sockets in /tmp: the engine account's, and not writable by
    // others, so that account cannot connect to them either.
    let sockets = kip_providers::s3::config::grpc_sockets(&ports);
    let existing: Vec<&PathBuf> = sockets.iter().filter(|path| path.exists()).collect();
    assert!(!existing.is_empty(), "weed serves gRPC on {sockets:?}");
    for socket in existing {
        let code = as_nobody_curl(&format!(
            "--unix-socket '{}' --http2-prior-knowledge http://localhost/",
            socket.display()
        ));
        assert_eq!(code, "000", "{}", socket.display());
    }
    // The handshake is what fails without a certificate (curl: 35, a TLS error, or the connection closed under
    // it: 55 or 56 as TLS 1.3 reports the refusal after the client's side is done), and the master answers the
    // instance's own.
    let master = ports["master"];
    let (status, handshake) =
        as_nobody_curl_error(&format!("-k https://127.0.0.1:{master}/cluster/status"));
    assert!(
        [35, 55, 56].contains(&status),
        "curl exited {status}: {handshake}"
    );
    let with_certificate = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg("--cacert")
        .arg(data.join("tls-ca.pem"))
        .arg("--cert")
        .arg(data.join("tls-cert.pem"))
        .arg("--key")
        .arg(data.join("tls-key.pem"))
        .arg(format!("https://127.0.0.1:{master}/cluster/status"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&with_certificate.stdout), "200");
    assert_eq!(block_on(s3.versions("private", 10)).unwrap().len(), 1);
    assert_eq!(
        block_on(s3.get_object("private", "secret.txt")).unwrap(),
        "kip's"
    );
}

/// `curl` run as `nobody` (its arguments as one shell line): the status, stdout and stderr.
fn curl_as_nobody(arguments: &str) -> std::process::Output {
    crate::support::as_nobody(&format!("curl --max-time 5 {arguments}"))
}

/// The HTTP status curl run as `nobody` gets (`000` for none).
fn as_nobody_curl(arguments: &str) -> String {
    let output = curl_as_nobody(&format!("-s -o /dev/null -w '%{{http_code}}' {arguments}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// How curl run as `nobody` failed: its exit status and what it said.
fn as_nobody_curl_error(arguments: &str) -> (i32, String) {
    let output = curl_as_nobody(&format!("-sS -o /dev/null {arguments}"));
    assert!(!output.status.success(), "curl {arguments} succeeded");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
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
