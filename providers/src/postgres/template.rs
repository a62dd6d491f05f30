//! The templater: `initdb` once per PostgreSQL version (and init options) into a shared template, then a plain copy
//! of it for every new instance.
//!
//! `initdb` costs ~0.6 s here; copying its result costs ~0.17 s, so an instance starts from a copy. A template
//! depends on everything that is fixed at `initdb` time (the version, the superuser name, encoding, locale, locale
//! provider, checksums), so those are part of its name: `postgres-16.14.0` for kip's defaults,
//! `postgres-16.14.0-<hash>` otherwise.
//!
//! Building, locking, naming and copying are the shared [`crate::template`]'s; what is PostgreSQL's is here:
//! initdb's arguments, and the bootstrap password set offline in single-user mode.
//!
//! Templates are built with `--no-sync`: they are a cache, rebuilt by deleting them, and skipping the fsyncs keeps
//! the first apply fast. A template rejects every connection, and its superuser has a bootstrap password only kip
//! knows ([`ensure_template`]); each instance gets its own `pg_hba.conf` from [`super::config::write_hba`].

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kip_core::engine::RunAs;

use super::PgError;
use crate::template::{self as shared, BOOTSTRAP_FILE, DataDir};

/// What `initdb` fixes for the life of a cluster. The defaults are kip's: superuser `postgres`, UTF8, locale C.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InitOptions {
    pub superuser: String,
    pub encoding: String,
    pub locale: String,
    pub locale_provider: Option<String>,
    pub data_checksums: Option<bool>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            superuser: "postgres".into(),
            encoding: "UTF8".into(),
            locale: "C".into(),
            locale_provider: None,
            data_checksums: None,
        }
    }
}

impl InitOptions {
    /// The initdb arguments for these options, after `-D dir`.
    fn initdb_args(&self, major: u32) -> Vec<String> {
        let mut args = vec![
            format!("--username={}", self.superuser),
            // Nobody gets into a server born from a template until kip wrote its access rules and set its
            // superuser's password, offline, before its first start (see `set_password_offline`).
            "--auth=reject".into(),
            format!("--encoding={}", self.encoding),
            format!("--locale={}", self.locale),
        ];
        if let Some(provider) = &self.locale_provider {
            args.push(format!("--locale-provider={provider}"));
        }
        match self.data_checksums {
            Some(true) => args.push("--data-checksums".into()),
            // Off is the default before 18, and --no-data-checksums only exists from 18.
            Some(false) if major >= 18 => args.push("--no-data-checksums".into()),
            _ => {}
        }
        args.push("--no-sync".into());
        args.push("--no-instructions".into());
        args
    }

    /// The template's directory name: `postgres-<version>`, plus a stable hash when the options are not kip's
    /// defaults.
    pub fn template_name(&self, version: &str) -> String {
        if *self == InitOptions::default() {
            return shared::template_name("postgres", version, None);
        }
        let canonical = format!(
            "superuser={}\0encoding={}\0locale={}\0provider={}\0checksums={:?}",
            self.superuser,
            self.encoding,
            self.locale,
            self.locale_provider.as_deref().unwrap_or(""),
            self.data_checksums
        );
        shared::template_name("postgres", version, Some(&canonical))
    }
}

/// The major version of "16.14.0" (or "16", "16beta1").
pub fn major_of(version: &str) -> u32 {
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}

/// Returns the template for this version and these options, running `initdb` (as `run_as`) when there is none yet.
///
/// `toolchain_root` holds `bin/initdb`; `templates_dir` is shared by every project on the machine (the cache).
/// Both must be reachable by `run_as`, which is checked first so that the error says which directory is closed.
///
/// A template is built closed: `initdb --auth=reject`, then, offline, its superuser gets a random bootstrap
/// password (a kip-computed SCRAM verifier, so the password itself never reaches the server), kept in the
/// template's `kip-bootstrap` file. An instance's first start therefore already asks for a password that only kip
/// knows, and kip replaces it with the instance's own before anything else uses the instance. Built as `run_as`
/// (PostgreSQL refuses root), the template is then given back to kip's own account: no engine account can read the
/// bootstrap password or change what later instances are copied from.
pub fn ensure_template(
    toolchain_root: &Path,
    version: &str,
    options: &InitOptions,
    templates_dir: &Path,
    run_as: Option<&RunAs>,
) -> Result<PathBuf, PgError> {
    shared::ensure(
        templates_dir,
        &options.template_name(version),
        is_complete,
        super::shmem::release_left_in,
        |work| build(toolchain_root, version, options, work, run_as),
    )
}

/// Whether `template` is a whole template of this kip: initialised, with its bootstrap password.
fn is_complete(template: &Path) -> bool {
    template.join("PG_VERSION").is_file() && template.join(BOOTSTRAP_FILE).is_file()
}

/// The bootstrap password of `template`: the superuser's password in every instance copied from it, until kip
/// sets the instance's own after its first start.
pub fn bootstrap_password(template: &Path) -> Result<String, PgError> {
    Ok(shared::bootstrap_password(template)?)
}

/// initdb into `work`, the bootstrap password set offline, then the whole template kip's own and private.
fn build(
    toolchain_root: &Path,
    version: &str,
    options: &InitOptions,
    work: &Path,
    run_as: Option<&RunAs>,
) -> Result<(), PgError> {
    run_initdb(toolchain_root, version, options, work, run_as)?;
    let password = shared::new_password(work)?;
    let verifier =
        super::scram::verifier(&password, super::scram::GENERATED_ITERATIONS).map_err(|error| {
            shared::TemplateError::Io {
                action: "generate a password for",
                path: work.to_owned(),
                source: std::io::Error::other(error.to_string()),
            }
        })?;
    set_password_offline(toolchain_root, work, &options.superuser, &verifier, run_as)?;
    Ok(shared::seal(work, &password, run_as)?)
}

fn run_initdb(
    toolchain_root: &Path,
    version: &str,
    options: &InitOptions,
    work: &Path,
    run_as: Option<&RunAs>,
) -> Result<(), PgError> {
    let initdb = toolchain_root.join("bin").join("initdb");
    shared::open_to_engine(work, &initdb, run_as)?;
    let mut command = Command::new(&initdb);
    command
        .arg("-D")
        .arg(work)
        .args(options.initdb_args(major_of(version)))
        .current_dir(work)
        // Only what initdb needs: nothing of the caller's environment (its LD_LIBRARY_PATH would beat the builds'
        // RUNPATH, and its secrets have no business there).
        .env_clear()
        .envs(super::spawn::engine_environment())
        .stdin(Stdio::null());
    if let Some(run_as) = run_as {
        command.uid(run_as.uid).gid(run_as.gid);
    }
    let started = std::time::Instant::now();
    let output = command.output().map_err(|source| PgError::Run {
        program: initdb.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(PgError::Initdb {
            version: version.to_owned(),
            data_dir: work.to_owned(),
            status: output.status.to_string(),
            output: shared::output_tail(&output, 30),
        });
    }
    tracing::debug!(version, elapsed = ?started.elapsed(), "initdb built a template");
    Ok(())
}

/// Files of a template that are never copied: a running server's (kip's own bootstrap file is never copied either).
const NOT_COPIED: [&str; 2] = ["postmaster.pid", "postmaster.opts"];

/// Creates the data dir `data_dir` as a copy of `template`, owned by `run_as` and mode 0700 as PostgreSQL requires
/// (see [`shared::provision`]). With `premade`, a spare holding a database made ahead of time
/// ([`premade_database`]) is taken when there is one, and the next spare prepared holds one: returns whether the
/// data dir has it.
pub fn provision(
    template: &Path,
    data_dir: &Path,
    run_as: Option<&RunAs>,
    premade: Option<&Path>,
) -> Result<bool, PgError> {
    let kind = DataDir {
        engine: "PostgreSQL",
        marker: "PG_VERSION",
        not_copied: &NOT_COPIED,
    };
    let finish = premade.map(|toolchain| shared::SpareFinish {
        variant: PREMADE_VARIANT.to_owned(),
        toolchain: toolchain.to_owned(),
    });
    Ok(shared::provision(
        template,
        data_dir,
        kind,
        run_as,
        finish.as_ref(),
    )?)
}

/// The spare variant whose copies hold a database made ahead of time ([`premade_database`]).
pub const PREMADE_VARIANT: &str = "database";

/// The name of the database a spare of the [`PREMADE_VARIANT`] holds: the first database a new instance creates
/// is this one renamed (see [`super::apply`]).
pub const PREMADE_DATABASE: &str = "kip-premade";

/// Finishes a spare of the [`PREMADE_VARIANT`]: a database made in the copy `data_dir` in single-user mode, the
/// way `CREATE DATABASE` with no options makes it (from template1, owned by the superuser), but closed to
/// connections until it is renamed into a declared one. Runs as `owner` (uid, gid), whose copy it is.
pub fn premade_database(
    data_dir: &Path,
    toolchain_root: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), shared::TemplateError> {
    let name =
        super::quote::ident("database", PREMADE_DATABASE).map_err(premade_error(data_dir))?;
    run_single_user(
        toolchain_root,
        data_dir,
        &format!("CREATE DATABASE {name} ALLOW_CONNECTIONS false;"),
        "make a database ahead of time",
        owner,
    )
    .map_err(premade_error(data_dir))
}

fn premade_error(data_dir: &Path) -> impl FnOnce(PgError) -> shared::TemplateError {
    let path = data_dir.to_owned();
    move |error| shared::TemplateError::Io {
        action: "make a database ahead of time in",
        path,
        source: std::io::Error::other(error.to_string()),
    }
}

/// Sets the superuser's password in a data directory whose server does not run, in PostgreSQL's single-user mode
/// (which listens on nothing). `verifier` is a SCRAM-SHA-256 verifier (`SCRAM-SHA-256$…`), so the password itself
/// never reaches the server. A server running on the data directory makes this fail with
/// [`PgError::NoCredentials`].
pub fn set_password_offline(
    toolchain_root: &Path,
    data_dir: &Path,
    superuser: &str,
    verifier: &str,
    run_as: Option<&RunAs>,
) -> Result<(), PgError> {
    let role = super::quote::ident("role", superuser)?;
    let verifier = super::quote::literal("password verifier", verifier)?;
    run_single_user(
        toolchain_root,
        data_dir,
        &format!("ALTER ROLE {role} PASSWORD {verifier};"),
        "set the superuser's password",
        run_as.map(|run_as| (run_as.uid, run_as.gid)),
    )
}

/// Runs `statement` (one line; `what` it does, for errors) in PostgreSQL's single-user mode on `data_dir`, as
/// `account` (uid, gid) when given: the server listens on nothing, and no access rule applies. A server running on
/// the data directory makes this fail with [`PgError::NoCredentials`]; another failure quotes the end of
/// PostgreSQL's output.
fn run_single_user(
    toolchain_root: &Path,
    data_dir: &Path,
    statement: &str,
    what: &'static str,
    account: Option<(u32, u32)>,
) -> Result<(), PgError> {
    use std::io::Write as _;
    let postgres = toolchain_root.join("bin").join("postgres");
    let mut command = Command::new(&postgres);
    command
        .arg("--single")
        .arg("-D")
        .arg(data_dir)
        .args([
            "-c",
            "listen_addresses=",
            "-c",
            "unix_socket_directories=",
            "-c",
            "log_statement=none",
        ])
        .arg("postgres")
        .current_dir(data_dir)
        .env_clear()
        .envs(super::spawn::engine_environment())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = account {
        command.uid(uid).gid(gid);
    }
    let mut child = command.spawn().map_err(|source| PgError::Run {
        program: postgres.clone(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A failed write shows in the output below (the server exited first).
        let _ = writeln!(stdin, "{statement}");
    }
    let output = child.wait_with_output().map_err(|source| PgError::Run {
        program: postgres.clone(),
        source,
    })?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if output.status.success() && !text.contains("ERROR:") && !text.contains("FATAL:") {
        return Ok(());
    }
    if text.contains("postmaster.pid") || text.contains("is another postmaster") {
        // A server runs on it: one kip has no credentials for.
        return Err(PgError::NoCredentials {
            data_dir: data_dir.to_owned(),
        });
    }
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    Err(PgError::Offline {
        data_dir: data_dir.to_owned(),
        what,
        output: lines[lines.len().saturating_sub(10)..].join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_name_the_template_by_version_only() {
        assert_eq!(
            InitOptions::default().template_name("16.14.0"),
            "postgres-16.14.0"
        );
        let other = InitOptions {
            locale: "en_US.UTF-8".into(),
            ..InitOptions::default()
        };
        let name = other.template_name("16.14.0");
        assert!(name.starts_with("postgres-16.14.0-"), "{name}");
        assert_eq!(name, other.template_name("16.14.0"), "stable");
        assert_ne!(
            name,
            InitOptions {
                data_checksums: Some(true),
                ..InitOptions::default()
            }
            .template_name("16.14.0")
        );
        assert_eq!(
            InitOptions::default().template_name("../x"),
            "postgres-.._x"
        );
    }

    #[test]
    fn majors() {
        assert_eq!(major_of("16.14.0"), 16);
        assert_eq!(major_of("18beta1"), 18);
        assert_eq!(major_of("dev"), 0);
    }

    #[test]
    fn checksum_flags_depend_on_the_major() {
        let off = InitOptions {
            data_checksums: Some(false),
            ..InitOptions::default()
        };
        assert!(
            !off.initdb_args(16)
                .iter()
                .any(|arg| arg.contains("checksums"))
        );
        assert!(
            off.initdb_args(18)
                .contains(&"--no-data-checksums".to_owned())
        );
    }
}
