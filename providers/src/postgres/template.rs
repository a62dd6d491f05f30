//! The templater: `initdb` once per PostgreSQL version (and init options) into a shared template, then a plain copy
//! of it for every new instance.
//!
//! `initdb` costs ~0.6 s here; copying its result costs ~0.17 s, so an instance starts from a copy. A template
//! depends on everything that is fixed at `initdb` time (the version, the superuser name, encoding, locale, locale
//! provider, checksums), so those are part of its name: `postgres-16.14.0` for kip's defaults,
//! `postgres-16.14.0-<hash>` otherwise.
//!
//! Concurrency: a template is built in a private temp dir under `.tmp/` while holding a per-template file lock, and
//! renamed into place when complete. Two kips never `initdb` the same template twice, and no reader ever sees half
//! of one: the final directory either does not exist or is complete. A crash leaves only a temp dir, which the
//! next builder removes once it holds the lock.
//!
//! Templates are built with `--no-sync`: they are a cache, rebuilt by deleting them, and skipping the fsyncs keeps
//! the first apply fast. A template rejects every connection, and its superuser has a bootstrap password only kip
//! knows ([`ensure_template`]); each instance gets its own `pg_hba.conf` from [`super::config::write_hba`].

use std::io;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kip_core::engine::RunAs;
use kip_core::runas::{chown_tree, ensure_reachable};

use super::{PgError, io_error};

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
        let version: String = version
            .chars()
            .map(|character| {
                if character.is_ascii_alphanumeric() || character == '.' {
                    character
                } else {
                    '_'
                }
            })
            .collect();
        if *self == InitOptions::default() {
            return format!("postgres-{version}");
        }
        let canonical = format!(
            "superuser={}\0encoding={}\0locale={}\0provider={}\0checksums={:?}",
            self.superuser,
            self.encoding,
            self.locale,
            self.locale_provider.as_deref().unwrap_or(""),
            self.data_checksums
        );
        format!("postgres-{version}-{:016x}", fnv1a(canonical.as_bytes()))
    }
}

/// FNV-1a, 64 bits: a stable hash for names (std's hashers are not stable across releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The major version of "16.14.0" (or "16", "16beta1").
pub fn major_of(version: &str) -> u32 {
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}

/// The file in a template holding its bootstrap password (never copied into an instance).
const BOOTSTRAP_FILE: &str = "kip-bootstrap";

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
    let name = options.template_name(version);
    let target = templates_dir.join(&name);
    if is_complete(&target) {
        return Ok(target);
    }
    let locks = templates_dir.join(".locks");
    let temp = templates_dir.join(".tmp");
    for directory in [&locks, &temp] {
        std::fs::create_dir_all(directory).map_err(io_error("create", directory))?;
    }
    // One builder per template at a time, across processes; the others wait, then find it done.
    let lock_path = locks.join(format!("{name}.lock"));
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error("open", &lock_path))?;
    lock_file.lock().map_err(io_error("lock", &lock_path))?;
    if is_complete(&target) {
        return Ok(target);
    }
    // Holding the lock, anything left under this template's name is a crashed builder's garbage.
    remove_leftovers(&temp, &name);
    let work = temp.join(format!("{name}.{}", std::process::id()));
    std::fs::create_dir(&work).map_err(io_error("create", &work))?;
    let result = build(toolchain_root, version, options, &work, run_as).and_then(|()| {
        if target.exists() {
            // A template of an earlier kip (no bootstrap password): set aside, then removed.
            let stale = temp.join(format!("{name}.{}.stale", std::process::id()));
            std::fs::rename(&target, &stale)
                .map_err(io_error("move the old template to", &stale))?;
            let _ = std::fs::remove_dir_all(&stale);
        }
        std::fs::rename(&work, &target).map_err(io_error("move the new template to", &target))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&work);
    }
    result.map(|()| target)
}

/// Whether `template` is a whole template of this kip: initialised, with its bootstrap password.
fn is_complete(template: &Path) -> bool {
    template.join("PG_VERSION").is_file() && template.join(BOOTSTRAP_FILE).is_file()
}

/// The bootstrap password of `template`: the superuser's password in every instance copied from it, until kip
/// sets the instance's own after its first start.
pub fn bootstrap_password(template: &Path) -> Result<String, PgError> {
    let path = template.join(BOOTSTRAP_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
    Ok(text.trim().to_owned())
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
    let password = kip_core::engine::random_hex(16).map_err(|error| PgError::Io {
        action: "generate a password for",
        path: work.to_owned(),
        source: io::Error::other(error.to_string()),
    })?;
    let verifier =
        super::scram::verifier(&password, super::scram::GENERATED_ITERATIONS).map_err(|error| {
            PgError::Io {
                action: "generate a password for",
                path: work.to_owned(),
                source: io::Error::other(error.to_string()),
            }
        })?;
    set_password_offline(toolchain_root, work, &options.superuser, &verifier, run_as)?;
    if run_as.is_some() {
        let own = RunAs {
            user: "kip".into(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        };
        chown_tree(work, &own)?;
    }
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o700))
        .map_err(io_error("set the mode of", work))?;
    let path = work.join(BOOTSTRAP_FILE);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| {
            use std::io::Write as _;
            file.write_all(password.as_bytes())
        })
        .map_err(io_error("write", &path))
}

fn run_initdb(
    toolchain_root: &Path,
    version: &str,
    options: &InitOptions,
    work: &Path,
    run_as: Option<&RunAs>,
) -> Result<(), PgError> {
    let initdb = toolchain_root.join("bin").join("initdb");
    if let Some(run_as) = run_as {
        ensure_reachable(&initdb, run_as)?;
        chown_tree(work, run_as)?;
        ensure_reachable(work, run_as)?;
    }
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
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        return Err(PgError::Initdb {
            version: version.to_owned(),
            data_dir: work.to_owned(),
            status: output.status.to_string(),
            output: tail,
        });
    }
    tracing::debug!(version, elapsed = ?started.elapsed(), "initdb built a template");
    Ok(())
}

fn remove_leftovers(temp: &Path, name: &str) {
    let prefix = format!("{name}.");
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Files of a template that are never copied: a running server's, and kip's own.
const NOT_COPIED: [&str; 3] = ["postmaster.pid", "postmaster.opts", BOOTSTRAP_FILE];

/// Creates the data dir `data_dir` as a copy of `template`, owned by `run_as` and mode 0700 as PostgreSQL requires.
///
/// A data dir that already exists is left alone (this is idempotent). The copy is made next to `data_dir` and
/// renamed into place, so a crash never leaves half a data dir that a later run would mistake for a whole one.
/// `std::fs::copy` uses `copy_file_range`, which lets filesystems that can share extents do so; this one cannot,
/// so it is a plain copy.
pub fn provision(template: &Path, data_dir: &Path, run_as: Option<&RunAs>) -> Result<(), PgError> {
    if data_dir.join("PG_VERSION").is_file() {
        return Ok(());
    }
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(PgError::Io {
                    action: "use as a data directory",
                    path: data_dir.to_owned(),
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "it exists and is not a PostgreSQL data directory (no PG_VERSION); move it away",
                    ),
                });
            }
            std::fs::remove_dir(data_dir).map_err(io_error("remove the empty", data_dir))?;
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(PgError::Io {
                action: "read",
                path: data_dir.to_owned(),
                source,
            });
        }
    }
    let parent = data_dir
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    if let Some(run_as) = run_as {
        ensure_reachable(parent, run_as)?;
    }
    let file_name = data_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let work = parent.join(format!(".{file_name}.provision-{}", std::process::id()));
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(io_error("remove the leftover", &work))?;
    }
    let owner = run_as.map(|run_as| (run_as.uid, run_as.gid));
    let result = copy_tree(template, &work, owner, true).and_then(|()| {
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error("set the mode of", &work))?;
        std::fs::rename(&work, data_dir)
            .map_err(io_error("move the new data directory to", data_dir))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&work);
        // Another kip provisioned it meanwhile (our rename found it there): theirs is as good as ours.
        if data_dir.join("PG_VERSION").is_file() {
            return Ok(());
        }
    }
    result
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
    use std::io::Write as _;
    let postgres = toolchain_root.join("bin").join("postgres");
    let role = super::quote::ident("role", superuser)?;
    let verifier = super::quote::literal("password verifier", verifier)?;
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
    if let Some(run_as) = run_as {
        command.uid(run_as.uid).gid(run_as.gid);
    }
    let mut child = command.spawn().map_err(|source| PgError::Run {
        program: postgres.clone(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A failed write shows in the output below (the server exited first).
        let _ = writeln!(stdin, "ALTER ROLE {role} PASSWORD {verifier};");
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
        output: lines[lines.len().saturating_sub(10)..].join("\n"),
    })
}

/// Copies a directory tree keeping modes, recreating symlinks, and giving everything to `owner` when set.
fn copy_tree(from: &Path, to: &Path, owner: Option<(u32, u32)>, top: bool) -> Result<(), PgError> {
    let metadata = std::fs::metadata(from).map_err(io_error("read", from))?;
    std::fs::create_dir(to).map_err(io_error("create", to))?;
    std::fs::set_permissions(to, metadata.permissions())
        .map_err(io_error("set the mode of", to))?;
    chown(to, owner)?;
    for entry in std::fs::read_dir(from).map_err(io_error("read", from))? {
        let entry = entry.map_err(io_error("read", from))?;
        let name = entry.file_name();
        if top && NOT_COPIED.iter().any(|skipped| name == *skipped) {
            continue;
        }
        let source = entry.path();
        let destination = to.join(&name);
        let file_type = entry.file_type().map_err(io_error("read", &source))?;
        if file_type.is_dir() {
            copy_tree(&source, &destination, owner, false)?;
        } else if file_type.is_symlink() {
            let link = std::fs::read_link(&source).map_err(io_error("read the link", &source))?;
            std::os::unix::fs::symlink(&link, &destination)
                .map_err(io_error("create the link", &destination))?;
            chown(&destination, owner)?;
        } else {
            copy_file(&source, &destination)?;
            chown(&destination, owner)?;
        }
    }
    Ok(())
}

fn copy_file(source: &Path, destination: &Path) -> Result<(), PgError> {
    std::fs::copy(source, destination).map_err(io_error("copy", source))?;
    Ok(())
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), PgError> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(io_error("change the owner of", path))?;
    }
    Ok(())
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
