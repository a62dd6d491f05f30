//! How the supervisor runs a PostgreSQL instance: the `postgres` server itself (no `pg_ctl`, so the supervisor
//! owns the process and its exit status), with everything else in the data dir's `kip.conf`.
//!
//! Readiness is the socket file appearing. PostgreSQL creates it a few milliseconds before it accepts sessions
//! (it answers "the database system is starting up" meanwhile), so [`super::Connector`] retries that one error.
//! Stopping is SIGINT (PostgreSQL's fast shutdown: sessions are ended, a checkpoint is written), then SIGQUIT
//! (immediate shutdown, crash recovery at the next start) and finally SIGKILL from the supervisor.

use std::path::Path;
use std::time::Duration;

use kip_core::engine::{Probe, ProbeKind, RestartPolicy, RunAs, SpawnSpec, StopSpec};

use super::DEFAULT_PORT;

/// The whole environment PostgreSQL's programs get ([`crate::shared::engine_environment`]): the locale, time zone
/// and messages come from the data directory's configuration, which initdb wrote.
pub use crate::shared::engine_environment;

/// The socket file of a server listening in `socket_dir` on `port`.
pub fn socket_path(socket_dir: &Path, port: Option<u16>) -> std::path::PathBuf {
    socket_dir.join(format!(".s.PGSQL.{}", port.unwrap_or(DEFAULT_PORT)))
}

/// The process of a PostgreSQL instance. `name` is the instance address (`postgres.main`); `socket_dir`, `port`
/// must match what [`super::write_config`] wrote into the data dir.
pub fn spawn_spec(
    name: &str,
    toolchain_root: &Path,
    data_dir: &Path,
    socket_dir: &Path,
    port: Option<u16>,
    log: &Path,
    run_as: Option<RunAs>,
) -> SpawnSpec {
    // The builds find their libraries through RUNPATH ($ORIGIN/../lib), which a caller's LD_LIBRARY_PATH would
    // override; the supervisor passes exactly this environment, so it is not there.
    let env = engine_environment();
    SpawnSpec {
        name: name.to_owned(),
        program: toolchain_root.join("bin").join("postgres"),
        args: vec!["-D".to_owned(), data_dir.to_string_lossy().into_owned()],
        env,
        cwd: data_dir.to_owned(),
        run_as,
        probe: Probe {
            kind: ProbeKind::Socket {
                path: socket_path(socket_dir, port),
            },
            initial_delay: Duration::ZERO,
            interval: Duration::from_millis(1),
            timeout: Duration::from_secs(30),
            retries: None,
        },
        restart: RestartPolicy::OnFailure,
        max_restarts: None,
        restart_delay_ms: None,
        stop: StopSpec {
            command: None,
            signals: vec![("SIGINT".to_owned(), 10_000), ("SIGQUIT".to_owned(), 5_000)],
            // An immediate shutdown: no checkpoint written into a data directory about to be deleted.
            discard: Some(("SIGQUIT".to_owned(), 5_000)),
        },
        log: log.to_owned(),
        after: Vec::new(),
        // PostgreSQL re-reads postgresql.conf and pg_hba.conf on SIGHUP.
        reload: Some("SIGHUP".to_owned()),
        job: false,
        leaves: Vec::new(),
        instance: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_server_on_its_data_dir_and_probes_its_socket() {
        let spec = spawn_spec(
            "postgres.main",
            Path::new("/cache/pg16"),
            Path::new("/p/.kip/data/main"),
            Path::new("/p/.kip/run/main"),
            None,
            Path::new("/p/.kip/logs/main.log"),
            None,
        );
        assert_eq!(spec.program, Path::new("/cache/pg16/bin/postgres"));
        assert_eq!(spec.args, ["-D", "/p/.kip/data/main"]);
        assert_eq!(
            spec.probe.kind,
            ProbeKind::Socket {
                path: "/p/.kip/run/main/.s.PGSQL.5432".into()
            }
        );
        assert_eq!(spec.stop.signals[0], ("SIGINT".to_owned(), 10_000));
        assert_eq!(spec.stop.discard, Some(("SIGQUIT".to_owned(), 5_000)));
        assert_eq!(
            spec.env.keys().collect::<Vec<_>>(),
            ["PATH"],
            "nothing of the caller's"
        );
    }
}
