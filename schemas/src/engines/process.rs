//! The `process` engine schema: any command kip should run, supervise and wait for.
//!
//! Two sub-blocks carry the orchestration: `ready {}` says how kip knows the process is up (one probe
//! kind), and `wait_for "ADDRESS" {}` says what must have happened to another node before it starts, with
//! the conditions process-compose users know (started, ready/healthy, completed successfully).

use crate::schema::{
    ArgumentSchema as Arg, BlockSchema as Block, EngineSchema, ExportSchema as Export,
};
use crate::types::ValueType as T;

pub(super) fn schema() -> EngineSchema {
    EngineSchema {
        name: "process",
        doc: r#"Any program kip should run next to the engines: a web server, a worker, a one-shot migration.

kip starts the command under its supervisor once everything it references or waits for is ready, captures
its output (`kip logs`), restarts it according to `restart`, and stops it with `stop_signal` (or
`stop_command`) on `kip down`. A `process` has no version: it runs what you give it.

```hcl
process "migrate" {
  command = ["./bin/migrate", "up"]
  env     = { DATABASE_URL = postgres.main.database.shop.url }
  restart = "no"
}

process "web" {
  command = ["./bin/web"]
  port    = 8080
  env     = { DATABASE_URL = postgres.main.database.shop.url, PORT = 8080 }

  wait_for "process.migrate" {
    condition = "succeeded"
  }

  ready {
    http = "http://127.0.0.1:8080/healthz"
  }
}
```"#,
        majors: Vec::new(),
        versioned: false,
        replace_on_new_major: false,
        instance: Block::named_object(
            "process",
            "name",
            "A supervised process. The label names it: `process \"web\"` is addressed as `process.web`.",
        )
        .arguments(vec![
            Arg::new(
                "command",
                T::list(T::String),
                "Program and arguments, run directly without a shell: `[\"./bin/web\", \"--port\", \"8080\"]`. \
                 Wrap it in `[\"sh\", \"-c\", \"…\"]` when you need one. A relative program is resolved against \
                 `working_dir`, then `PATH`.",
            )
            .required(),
            Arg::new(
                "working_dir",
                T::String,
                "Directory to run in, relative to the directory of `kip.hcl`; that directory when unset.",
            ),
            Arg::new(
                "env",
                T::map(T::Scalar),
                "Environment variables added to kip's own environment. Values are usually references \
                 (`postgres.main.url`); numbers and bools are passed as their text (`8080`, `true`).",
            ),
            Arg::new(
                "env_file",
                T::String,
                "A file of `NAME=value` lines (a `.env` file), relative to the directory of `kip.hcl`, read at \
                 each start: its variables are added to kip's environment, and `env` wins over them. `#` starts \
                 a comment line; `export ` in front of a line, and values in single or double quotes (with \
                 `\\n` escapes), are understood. A missing file or a line that is none of these fails the apply \
                 with the file and line. Changing the file's contents does not restart the process; \
                 `kip down` and `kip up` do.",
            ),
            Arg::new(
                "port",
                T::Port,
                "The TCP port the process listens on, if any. kip does not allocate it or pass it on: it is \
                 what `url`, `host` and `port` export, so other blocks can reference it.",
            ),
            Arg::new(
                "restart",
                T::Enum(vec!["no", "on_failure", "always"]),
                "When kip restarts the process after it exits: `\"no\"` (for one-shot jobs), `\"on_failure\"` \
                 (a non-zero exit or a signal), or `\"always\"`.",
            )
            .with_default("on_failure"),
            Arg::new(
                "max_restarts",
                T::Count,
                "Restarts in a row before kip gives up and reports the process as failed (`kip ps` shows \
                 `failed` with how its last run ended); `0` means no limit. The count resets once the process \
                 has stayed up for 30 s.",
            )
            .with_default(5),
            Arg::new(
                "restart_delay",
                T::Duration,
                "Pause before the first restart in a row; each further one waits twice as long as the one \
                 before, up to 10 s (or `restart_delay` when it is longer). `\"0s\"` waits 10 ms, so that a \
                 process that crashes at once never spins.",
            )
            .with_default("1s"),
            Arg::new(
                "stop_signal",
                T::Enum(vec!["SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL"]),
                "Signal sent to stop the process (to its whole process group).",
            )
            .with_default("SIGTERM"),
            Arg::new(
                "stop_command",
                T::list(T::String),
                "Command run to stop the process gracefully instead of sending `stop_signal`, e.g. \
                 `[\"./bin/web\", \"shutdown\"]`: without a shell, in `working_dir`, with the process's \
                 environment plus `KIP_STOP_PID` (the process's pid); its output goes to the process's log.",
            ),
            Arg::new(
                "stop_timeout",
                T::Duration,
                "How long the process gets to exit after `stop_signal` or `stop_command` before kip sends \
                 `SIGKILL`.",
            )
            .with_default("10s"),
        ])
        .blocks(vec![ready(), wait_for()])
        .exports(vec![
            Export::new("url", "`http://127.0.0.1:PORT`, when `port` is set."),
            Export::new("host", "`127.0.0.1`, the address other blocks should use to reach the process."),
            Export::new("port", "The port, when `port` is set."),
        ]),
    }
}

fn ready() -> Block {
    Block::new(
        "ready",
        "How kip knows the process is ready: exactly one probe kind (`http`, `tcp`, `exec`, `log_line` or \
         `socket`), tried every `interval` until it passes or `timeout` runs out; a `tcp`, `socket` or \
         `log_line` probe is also tried at once whenever the process writes output or a file appears where \
         its socket will be, so a server is seen ready as it starts listening. Until it passes, nothing \
         that depends on the process starts; if it never does, the apply fails and shows the process's \
         last log lines. Without a `ready` block a process counts as ready once it has run for 100 ms \
         without exiting (a job: once started).",
    )
    .arguments(vec![
        Arg::new("http", T::String, "URL to GET; ready on any 2xx or 3xx response: `\"http://127.0.0.1:8080/healthz\"`."),
        Arg::new("tcp", T::String, "`\"host:port\"` to connect to; ready once a connection is accepted: `\"127.0.0.1:8080\"`."),
        Arg::new("exec", T::list(T::String), "Command to run, without a shell; ready when it exits 0: `[\"./bin/check\"]`."),
        Arg::new(
            "log_line",
            T::String,
            "Regular expression matched against each line the process writes to stdout or stderr; ready at \
             the first match: `\"listening on\"`.",
        ),
        Arg::new("socket", T::String, "Path of a unix socket, relative to `working_dir`; ready once it accepts a connection."),
        Arg::new("initial_delay", T::Duration, "Wait before the first attempt.").with_default("0s"),
        Arg::new("interval", T::Duration, "Pause between attempts.").with_default("250ms"),
        Arg::new("timeout", T::Duration, "Total time the process gets to become ready.").with_default("60s"),
        Arg::new(
            "retries",
            T::Count,
            "Failed attempts allowed before giving up, on top of `timeout`: with `retries = 2` the probe \
             fails at the third failed attempt (or at `timeout`, whichever comes first). Only the attempts \
             made every `interval` count, not those made at once on the process's output. Only `timeout` \
             limits attempts when unset.",
        ),
    ])
    .exactly_one_of(&["http", "tcp", "exec", "log_line", "socket"])
}

fn wait_for() -> Block {
    Block::new(
        "wait_for",
        "Start this process only once another node reached a condition. The label is the node's address \
         (`\"postgres.main\"`, `\"process.migrate\"`). A reference or `depends_on` already waits until the \
         node is ready; `wait_for` is for the other conditions, most often waiting for a one-shot job to \
         succeed.",
    )
    .labels(&["address"])
    .label_is_reference()
    .repeatable()
    .arguments(vec![
        Arg::new(
            "condition",
            T::Enum(vec!["started", "ready", "succeeded"]),
            "`\"started\"`: the node's process was spawned (this one starts while the other still starts up; \
             if it then fails, this one keeps running). `\"ready\"`: its readiness probe passed (for an \
             engine: it accepts connections and its objects are converged). `\"succeeded\"`: it exited with \
             status 0 (for a process with `restart = \"no\"`). When several `wait_for` name the same \
             instance, the strongest condition counts. `\"started\"` decides even when this process also \
             references the node or lists it in `depends_on` (its exports are known once it was spawned): \
             use `\"ready\"` when the process needs the node to answer.",
        )
        .with_default("ready"),
    ])
}
