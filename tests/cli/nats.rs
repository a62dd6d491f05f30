//! NATS end to end through the real `kip` binary and the real `nats-server` from the test mirror, checked with
//! `async-nats`: the port allocated once and kept across down/up and re-apply (and given up for a new one when
//! another program took it), `kip env`, reloads and restarts as the plan announces them, a killed server restarted
//! with its data, names NATS would refuse, a setting NATS refuses at start, and another local user polling the port
//! during the first start.

use std::time::Duration;

use async_nats::jetstream;

use crate::apply::Stack;
use crate::support::pid_of;
use crate::support::{HostilePoller, free_port, kill_when_logged};

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `NATS_URL` and `NATS_TOKEN` as `kip env` gives them.
pub(crate) fn env(stack: &Stack) -> (String, String) {
    let env = stack.ok(&["env", "--format", "json"]).stdout;
    let env: serde_json::Value = serde_json::from_str(&env).unwrap();
    let text = |name: &str| {
        env[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in kip env:\n{env:#}"))
            .to_owned()
    };
    (text("NATS_URL"), text("NATS_TOKEN"))
}

pub(crate) async fn connect(url: &str, token: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_token(token.to_owned())
        .connect(url)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"))
}

/// The payloads of the messages of subject `subject` in `stream` (the last one), through `kip env`.
fn last_message(stack: &Stack, stream: &str, subject: &str) -> Option<String> {
    let (url, token) = env(stack);
    runtime().block_on(async {
        let js = jetstream::new(connect(&url, &token).await);
        let stream = js.get_stream(stream).await.ok()?;
        let message = stream.get_last_raw_message_by_subject(subject).await.ok()?;
        Some(String::from_utf8_lossy(&message.payload).into_owned())
    })
}

fn publish(stack: &Stack, subject: &str, payload: &'static str) {
    let (url, token) = env(stack);
    runtime().block_on(async {
        let js = jetstream::new(connect(&url, &token).await);
        js.publish(subject.to_owned(), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    });
}

fn max_payload(stack: &Stack) -> usize {
    let (url, token) = env(stack);
    runtime().block_on(async { connect(&url, &token).await.server_info().max_payload })
}

fn config(max_payload: &str, extra: &str) -> String {
    format!(
        r#"nats "bus" {{
  version     = "2"
  max_payload = "{max_payload}"
{extra}
  stream "ORDERS" {{
    subjects = ["orders.>"]
    max_age  = "7d"
  }}
  kv "sessions" {{
    history = 2
  }}
}}
"#
    )
}

/// Waits until the supervisor runs `name` again under another pid than `old`.
fn restarted(stack: &Stack, name: &str, old: u32) -> u32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ps = stack.ok(&["ps", "--json"]).stdout;
        let processes: serde_json::Value = serde_json::from_str(&ps).unwrap();
        let pid = processes.as_array().unwrap().iter().find_map(|process| {
            (process["name"] == name && process["state"]["kind"] == "ready")
                .then(|| process["pid"].as_u64())
                .flatten()
        });
        match pid {
            Some(pid) if pid as u32 != old => return pid as u32,
            _ if std::time::Instant::now() > deadline => panic!("{name} was not restarted:\n{ps}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn nats_end_to_end() {
    let stack = Stack::new(&config("1mb", ""));
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);

    // `kip env`: a URL async-nats takes as it is, with the token beside it; the port is one kip allocated.
    let (url, token) = env(&stack);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(url, format!("nats://127.0.0.1:{port}"));
    assert_eq!(stack.url("nats.bus"), url);
    publish(&stack, "orders.first", "kept");
    assert_eq!(
        last_message(&stack, "ORDERS", "orders.first").as_deref(),
        Some("kept")
    );
    // Without the token, or with another one, NATS refuses.
    runtime().block_on(async {
        for options in [
            async_nats::ConnectOptions::new(),
            async_nats::ConnectOptions::with_token("guess".into()),
        ] {
            let refused = options
                .connect(url.as_str())
                .await
                .expect_err("connected without the token");
            assert_eq!(
                refused.kind(),
                async_nats::ConnectErrorKind::AuthorizationViolation
            );
        }
    });
    // Why `url` does not carry the token: async-nats ignores credentials in a URL (nats.go and the `nats` CLI read
    // `nats://TOKEN@host`), so a URL with the token would work for some clients and fail for this one.
    runtime().block_on(async {
        let embedded = format!("nats://{token}@127.0.0.1:{port}");
        let refused = async_nats::connect(embedded.as_str())
            .await
            .expect_err("async-nats read the token from the URL: `url` could carry it");
        assert_eq!(
            refused.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation
        );
    });
    // The token lives in the config file, private to the engine's account; never on its command line.
    let pid = pid_of(&stack, "nats.bus");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(&token));
    let conf = find(stack.project.path(), "nats.conf").expect("a nats.conf");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&conf).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", conf.display());

    // max_payload: reloaded, the same process.
    stack.project.write("kip.hcl", config("2mb", ""));
    let plan = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.snapshot());
    assert!(
        plan.stdout.contains("# applied live, without a restart")
            && plan.stdout.contains("max_payload = \"1mb\" -> \"2mb\"")
            && !plan.stdout.contains("forces a restart"),
        "{}",
        plan.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        pid_of(&stack, "nats.bus"),
        pid,
        "max_payload restarted NATS"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while max_payload(&stack) != 2 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload did not take max_payload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);

    // A value NATS refuses, on the running server: the apply fails with NATS's words, the server keeps running
    // as it was, and the change is still planned.
    stack.project.write(
        "kip.hcl",
        config("2mb", "  settings = { write_deadline = \"banana\" }\n"),
    );
    let refused = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(refused.code, 1, "{}", refused.snapshot());
    assert!(
        refused.stderr.contains("error parsing write_deadline")
            && refused.stderr.contains("banana"),
        "{}",
        refused.stderr
    );
    assert_eq!(pid_of(&stack, "nats.bus"), pid);
    assert_eq!(max_payload(&stack), 2 << 20);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 2);
    // The refused configuration was put back: NATS killed now is restarted by the supervisor from the one it ran.
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let pid = restarted(&stack, "nats.bus", pid);
    assert_eq!(max_payload(&stack), 2 << 20);

    // A new token is reloaded too: the old one stops working, the new one works, the same process.
    stack.project.write(
        "kip.hcl",
        config("2mb", "  token = \"s3cret $tok\\\"en\"\n"),
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        pid_of(&stack, "nats.bus"),
        pid,
        "a new token restarted NATS"
    );
    let (_, new_token) = env(&stack);
    assert_eq!(new_token, "s3cret $tok\"en");
    runtime().block_on(async {
        connect(&url, &new_token).await;
        let old = async_nats::ConnectOptions::with_token(token.clone())
            .connect(url.as_str())
            .await;
        assert!(old.is_err(), "the generated token still works");
    });

    // The monitoring port: NATS cannot open it live; the plan says it restarts, and it does.
    let http_port = free_port();
    stack.project.write(
        "kip.hcl",
        config(
            "2mb",
            &format!("  token = \"s3cret $tok\\\"en\"\n  http_port = {http_port}\n"),
        ),
    );
    let plan = stack.kip(&["plan"]);
    assert!(
        plan.stdout.contains("# restarts the instance") && plan.stdout.contains("forces a restart"),
        "{}",
        plan.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_ne!(
        pid_of(&stack, "nats.bus"),
        pid,
        "http_port did not restart NATS"
    );
    let varz = http_get(http_port, "/varz");
    assert!(
        varz.starts_with("HTTP/1.0 200") || varz.starts_with("HTTP/1.1 200"),
        "{varz}"
    );
    assert_eq!(
        last_message(&stack, "ORDERS", "orders.first").as_deref(),
        Some("kept")
    );

    // The port allocated once stays the same across down/up and a re-apply.
    stack.ok(&["down"]);
    stack.ok(&["up"]);
    assert_eq!(env(&stack).0, url);
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(env(&stack).0, url);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    assert_eq!(
        last_message(&stack, "ORDERS", "orders.first").as_deref(),
        Some("kept")
    );

    // Killed from outside: the supervisor starts it again, with its data and on its port.
    let pid = pid_of(&stack, "nats.bus");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    restarted(&stack, "nats.bus", pid);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while last_message(&stack, "ORDERS", "orders.first").as_deref() != Some("kept") {
        assert!(
            std::time::Instant::now() < deadline,
            "the message is gone after a SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);

    // A bucket deleted behind kip's back is planned and made again.
    let (url, token) = env(&stack);
    runtime().block_on(async {
        let js = jetstream::new(connect(&url, &token).await);
        js.delete_stream("KV_sessions").await.unwrap();
    });
    let plan = stack.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.snapshot());
    assert!(
        plan.stdout.contains("+ nats.bus.kv.sessions"),
        "{}",
        plan.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);

    // Storage cannot change on a live stream: the plan replaces it.
    stack.project.write(
        "kip.hcl",
        config(
            "2mb",
            &format!("  token = \"s3cret $tok\\\"en\"\n  http_port = {http_port}\n"),
        )
        .replace(
            "max_age  = \"7d\"",
            "max_age  = \"7d\"\n    storage  = \"memory\"",
        ),
    );
    let plan = stack.kip(&["plan"]);
    assert!(
        plan.stdout.contains("-/+ nats.bus.stream.ORDERS")
            && plan.stdout.contains("# forces replacement"),
        "{}",
        plan.stdout
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    let storage = runtime().block_on(async {
        let js = jetstream::new(connect(&url, &token).await);
        let mut stream = js.get_stream("ORDERS").await.unwrap();
        stream.info().await.unwrap().config.storage
    });
    assert_eq!(storage, jetstream::stream::StorageType::Memory);
    stack.ok(&["destroy", "--auto-approve"]);
}

fn find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|file| file == name) {
            return Some(path);
        }
        if path.is_dir()
            && let Some(found) = find(&path, name)
        {
            return Some(found);
        }
    }
    None
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn names_and_values_nats_would_refuse_are_lint_errors_with_their_spans() {
    let stack = Stack::new(concat!(
        "nats \"bus\" {\n",
        "  version  = \"2\"\n",
        "  settings = { listen = \"0.0.0.0:4222\" }\n",
        "  stream \"has space\" {\n",
        "    subjects = [\"a.>\"]\n",
        "  }\n",
        "  stream \"orders.eu\" {\n",
        "    subjects = [\"b.>\"]\n",
        "    replicas = 3\n",
        "  }\n",
        "  kv \"bad.bucket\" {}\n",
        "  kv \"ok\" {\n",
        "    history = 65\n",
        "  }\n",
        "}\n",
    ));
    crate::support::lint_reports(
        &stack,
        &[
            "kip.hcl:3:14",
            "kip sets `listen` itself",
            "kip.hcl:4:10",
            "NATS stream names cannot contain ' '",
            "kip.hcl:7:10",
            "NATS stream names cannot contain '.'",
            "kip.hcl:9:16",
            "replicas need a NATS cluster",
            "kip.hcl:11:6",
            "\"bad.bucket\" is not a NATS bucket name",
            "kip.hcl:13:15",
            "65 is not a whole number from 1 to 64",
        ],
    );
    let apply = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(apply.code, 1, "{}", apply.snapshot());
    assert!(!stack.project.path().join(".kip/state.json").exists());
    assert!(
        !apply.stderr.contains("nats.bus: starting"),
        "{}",
        apply.stderr
    );
}

/// The port kip allocated and kept in state, taken by another program while the instance was down (any outgoing
/// connection may get a port of the ephemeral range): `kip up`, and `kip apply` the next time, give it up for a new
/// free one, say so, and keep the new one in state; the other program is left alone, the data stays, and the
/// plan after it is empty.
#[test]
fn a_kept_port_taken_while_down_is_given_up_for_a_new_one() {
    let stack = Stack::new(&config("1MB", ""));
    stack.ok(&["apply", "--auto-approve"]);
    let port = |stack: &Stack| -> u16 { env(stack).0.rsplit(':').next().unwrap().parse().unwrap() };
    let first = port(&stack);
    publish(&stack, "orders.one", "kept");
    stack.ok(&["down"]);
    let holder = crate::support::hold_freed_port(first);
    let up = stack.ok(&["up"]);
    let second = port(&stack);
    assert_ne!(second, first);
    assert!(
        up.stdout
            .contains(&crate::support::moved_port_line(first, "client", second)),
        "{}",
        up.snapshot()
    );
    assert_eq!(
        stack.ok(&["url", "nats.bus"]).stdout.trim(),
        format!("nats://127.0.0.1:{second}")
    );
    assert_eq!(
        last_message(&stack, "ORDERS", "orders.one").as_deref(),
        Some("kept")
    );
    // The other program still holds its port, untouched.
    if holder.is_some() {
        assert!(std::net::TcpStream::connect(("127.0.0.1", first)).is_ok());
    }
    stack.ok(&["plan", "--detailed-exitcode"]);

    // Taken again while down, and given up by an apply this time.
    stack.ok(&["down"]);
    let holder_two = crate::support::hold_freed_port(second);
    let apply = stack.ok(&["apply", "--auto-approve"]);
    let third = port(&stack);
    assert!(
        third != first && third != second,
        "{first} {second} {third}"
    );
    assert!(
        apply
            .stderr
            .contains(&crate::support::moved_port_line(second, "client", third)),
        "{}",
        apply.snapshot()
    );
    assert_eq!(
        last_message(&stack, "ORDERS", "orders.one").as_deref(),
        Some("kept")
    );
    stack.ok(&["plan", "--detailed-exitcode"]);
    drop((holder, holder_two));
}

/// A value NATS refuses in its config file: the start fails and the error quotes NATS's own words from its log;
/// once fixed, the next apply starts it.
#[test]
fn a_setting_nats_refuses_fails_the_start_with_its_log() {
    let stack = Stack::new(
        "nats \"bus\" {\n  version  = \"2\"\n  settings = { write_deadline = \"banana\" }\n}\n",
    );
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("error parsing write_deadline") && run.stderr.contains("banana"),
        "{}",
        run.stderr
    );
    stack.project.write(
        "kip.hcl",
        "nats \"bus\" {\n  version  = \"2\"\n  settings = { write_deadline = \"5s\" }\n}\n",
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
}

/// Streams need JetStream: with `jetstream = false` the apply says so instead of NATS's "no responders".
#[test]
fn streams_without_jetstream_are_an_error_that_says_why() {
    let stack = Stack::new(
        "nats \"bus\" {\n  version   = \"2\"\n  jetstream = false\n  stream \"ORDERS\" {\n    subjects = [\"orders.>\"]\n  }\n}\n",
    );
    let run = stack.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("has `jetstream = false`")
            && run.stderr.contains("set `jetstream = true`"),
        "{}",
        run.stderr
    );
}

/// `nobody` speaking NATS over the port without a token (bash's /dev/tcp): `CONNECT` then `PING`. NATS sends its
/// `INFO` to anyone; what matters is that the `PING` is answered with `-ERR 'Authorization Violation'`, never
/// `PONG`.
fn poller(dir: &std::path::Path, port: u16) -> HostilePoller {
    HostilePoller::start(dir, |output| {
        format!(
            "bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port} || exit 0; \
             printf \"CONNECT {{\\\"verbose\\\":false,\\\"pedantic\\\":false}}\\r\\nPING\\r\\n\" >&3; \
             timeout 1 cat <&3' 2>/dev/null | tr -d '\\r' | grep -v '^INFO' > '{output}.last'; \
             grep -q PONG '{output}.last' && echo GOT-IN >>'{output}'; \
             cat '{output}.last' >>'{output}';",
            output = output.display(),
        )
    })
}

/// Polls through first starts, also ones whose kip is SIGKILLed while provisioning and starting: never a `PING`
/// answered without the token.
#[test]
fn another_local_user_polling_the_port_never_gets_in() {
    let port = free_port();
    let stack = Stack::new(&format!(
        "nats \"bus\" {{\n  version = \"2\"\n  port    = {port}\n}}\n"
    ));
    let watch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        watch.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let poller = poller(watch.path(), port);
    std::thread::sleep(Duration::from_millis(300));
    for moment in ["nats.bus: provisioning", "nats.bus: starting"] {
        kill_when_logged(stack.command(&["apply", "--auto-approve"]), moment);
        std::thread::sleep(Duration::from_millis(200));
        // The kill lands wherever the apply has got to when the test reads the line, which can be past the start
        // request: whatever runs is stopped, so that the next apply has a start of its own to be killed at (the
        // instance keeps its state: an unfinished provisioning is still finished by the next apply).
        stack.ok(&["down"]);
    }
    stack.ok(&["destroy", "--auto-approve"]);
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(stack.kip(&["plan", "--detailed-exitcode"]).code, 0);
    std::thread::sleep(Duration::from_millis(500));
    let seen = poller.finish();
    assert!(!seen.contains("GOT-IN"), "another user got in:\n{seen}");
    assert!(
        seen.contains("Authorization Violation"),
        "the poller never reached the server to be refused:\n{seen}"
    );
}
