//! Templates shared by the engines that initialise a data directory once per version and copy it for every
//! instance (PostgreSQL's `initdb`, MariaDB's `mariadb-install-db`): what is generic about building, naming,
//! keeping and copying them. The engine says how to build one and how to tell a whole one; this module does the
//! rest.
//!
//! Concurrency: a template is built in a private temp dir under `.tmp/` while holding a per-template file lock, and
//! renamed into place when complete. Two kips never build the same template twice, and no reader ever sees half of
//! one: the final directory either does not exist or is complete. A crash leaves only a temp dir, which the next
//! builder removes once it holds the lock. The tools a killed kip started (initdb and the backends it runs) outlive
//! it and go on working in that temp dir: the next builder waits for them to finish before removing it (removing it
//! under them makes a backend abort and leave its shared memory), then lets the engine release what a killed tool
//! left behind ([`ensure`]'s `release`).
//!
//! Spares, as pg_tmp keeps them: after an instance is provisioned, the next instance's data directory is prepared
//! ahead of time, out of the user's way ([`take_wanted_spares`], [`prepare_spare`]: the CLI runs it in a detached,
//! low-priority `kip prepare-spare` once its command is done), as a copy of the template under
//! `.spares/<template name>.<slot>`; the next provisioning renames it into place instead of copying (a rename and a
//! chown walk, a few milliseconds, against tens to hundreds for the copy). Two spares per template bound the disk
//! they take, and let instances made one right after the other find one ready while the other is prepared. A spare is stamped with its template's identity (a hash of the template's bootstrap password, new at each
//! build), so a spare of a rebuilt template is never used. When the instance is on another filesystem than the
//! templates, no spare is claimed, waited for or prepared: the instance is copied as before. A spare is written back to disk (`syncfs`) before it is put in
//! place, so the instance that claims it never waits for its writeback at its own first fsync.
//!
//! A template is closed: its administrator has a bootstrap password only kip knows, kept in a file of the template
//! ([`BOOTSTRAP_FILE`]) that is never copied into an instance; the template is kip's own account's (mode 0700), so
//! no engine account can read that password or change what later instances are copied from.

use std::io;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kip_core::engine::RunAs;
use kip_core::runas::{RunAsError, SpareAccounts, chown_tree, ensure_reachable};

/// The file in a template holding its bootstrap password (never copied into an instance).
pub const BOOTSTRAP_FILE: &str = "kip-bootstrap";

/// What can go wrong building, reading or copying a template, each with what it was doing and on what.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "an earlier kip's template build still runs in {} after {waited:?} (process {})",
        path.display(),
        pids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
    )]
    Busy {
        path: PathBuf,
        pids: Vec<u32>,
        waited: std::time::Duration,
    },
    #[error(transparent)]
    RunAs(#[from] RunAsError),
}

impl TemplateError {
    /// What to do, for the `hint:` the CLI renders.
    pub fn hint(&self) -> Option<String> {
        match self {
            TemplateError::RunAs(error) => error.hint(),
            TemplateError::Io { .. } => None,
            TemplateError::Busy { .. } => Some(
                "a kip that was killed while building this template left its tools running; wait for them to end \
                 (or stop them) and run the command again"
                    .into(),
            ),
        }
    }
}

pub(crate) fn io_error(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> TemplateError {
    let path = path.into();
    move |source| TemplateError::Io {
        action,
        path,
        source,
    }
}

/// FNV-1a, 64 bits: a stable hash for names (std's hashers are not stable across releases).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A template's directory name: `<engine>-<version>`, plus a stable hash of `options` (the canonical text of what
/// the engine fixes at initialisation) when they are not the engine's defaults (`None`). The version is made safe
/// for a file name.
pub fn template_name(engine: &str, version: &str, options: Option<&str>) -> String {
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
    match options {
        None => format!("{engine}-{version}"),
        Some(canonical) => format!("{engine}-{version}-{:016x}", fnv1a(canonical.as_bytes())),
    }
}

/// Returns the template `name` under `templates_dir`, building it with `build` (into an empty private directory)
/// when there is none yet, or when `is_complete` says the one there is not whole (an earlier kip's).
///
/// `build` gets the work directory and must leave a whole template in it; this function renames it into place.
/// The shared parts of a build are [`seal`] (the template kip's own, its bootstrap password written).
///
/// `release` gets each leftover work directory of a killed builder once no process works in it any more, before it
/// is removed: the engine frees there what its killed tools could not (PostgreSQL: a shared-memory segment).
pub fn ensure<E: From<TemplateError>>(
    templates_dir: &Path,
    name: &str,
    is_complete: impl Fn(&Path) -> bool,
    release: impl Fn(&Path),
    build: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<PathBuf, E> {
    let target = templates_dir.join(name);
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
    let lock_file = open_lock(&lock_path)?;
    lock_file.lock().map_err(io_error("lock", &lock_path))?;
    if is_complete(&target) {
        return Ok(target);
    }
    // Holding the lock, anything left under this template's name is a crashed builder's garbage.
    remove_leftovers(&temp, name, &release)?;
    let work = temp.join(format!("{name}.{}", std::process::id()));
    std::fs::create_dir(&work).map_err(io_error("create", &work))?;
    let result = build(&work).and_then(|()| {
        if target.exists() {
            // A template of an earlier kip (not whole by today's rules): set aside, then removed.
            let stale = temp.join(format!("{name}.{}.stale", std::process::id()));
            std::fs::rename(&target, &stale)
                .map_err(io_error("move the old template to", &stale))?;
            let _ = std::fs::remove_dir_all(&stale);
        }
        std::fs::rename(&work, &target)
            .map_err(io_error("move the new template to", &target))
            .map_err(E::from)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&work);
    }
    result.map(|()| target)
}

/// Opens (creating it) the lock file at `path`, for `File::lock` / `try_lock`.
fn open_lock(path: &Path) -> Result<std::fs::File, TemplateError> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_error("open", path))
}

/// How long a builder waits for the tools of a killed one to finish (initdb takes well under a second here, and
/// mariadb-install-db a few).
const LEFTOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the work directories a killed builder of template `name` left in `temp`, each once no process works in
/// it any more and `release` has seen it.
fn remove_leftovers(temp: &Path, name: &str, release: &dyn Fn(&Path)) -> Result<(), TemplateError> {
    remove_leftovers_within(temp, name, release, LEFTOVER_WAIT)
}

fn remove_leftovers_within(
    temp: &Path,
    name: &str,
    release: &dyn Fn(&Path),
    limit: std::time::Duration,
) -> Result<(), TemplateError> {
    let prefix = format!("{name}.");
    let Ok(entries) = std::fs::read_dir(temp) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            wait_for_no_one_in(&path, limit)?;
            release(&path);
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    Ok(())
}

/// Waits until no process has its working directory in `dir` (or under it), for up to `limit`.
fn wait_for_no_one_in(dir: &Path, limit: std::time::Duration) -> Result<(), TemplateError> {
    let started = std::time::Instant::now();
    loop {
        let pids = kip_core::supervisor::working_in(dir);
        if pids.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= limit {
            return Err(TemplateError::Busy {
                path: dir.to_owned(),
                pids,
                waited: limit,
            });
        }
        tracing::debug!(dir = %dir.display(), ?pids, "waiting for a killed builder's tools to finish");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Prepares `work` for an engine's initialisation tool run as `run_as`: the directory given to that account, and
/// both the tool and the directory checked reachable by it (so that the error names the closed directory).
pub fn open_to_engine(
    work: &Path,
    tool: &Path,
    run_as: Option<&RunAs>,
) -> Result<(), TemplateError> {
    if let Some(run_as) = run_as {
        ensure_reachable(tool, run_as)?;
        chown_tree(work, run_as)?;
        ensure_reachable(work, run_as)?;
    }
    Ok(())
}

/// Ends a build: the whole template given back to kip's own account when it was built as `run_as` (no engine
/// account can then read the bootstrap password or change what later instances are copied from), mode 0700, and
/// `password` written to its [`BOOTSTRAP_FILE`] (0600).
pub fn seal(work: &Path, password: &str, run_as: Option<&RunAs>) -> Result<(), TemplateError> {
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

/// A new random bootstrap password (hex), for a template being built in `work`.
pub fn new_password(work: &Path) -> Result<String, TemplateError> {
    kip_core::engine::random_hex(16).map_err(|error| TemplateError::Io {
        action: "generate a password for",
        path: work.to_owned(),
        source: io::Error::other(error.to_string()),
    })
}

/// The bootstrap password of `template`: the administrator's password in every instance copied from it, until kip
/// sets the instance's own after its first start.
pub fn bootstrap_password(template: &Path) -> Result<String, TemplateError> {
    let path = template.join(BOOTSTRAP_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_error("read", &path))?;
    Ok(text.trim().to_owned())
}

/// What [`provision`] needs to know of an engine's data directories.
#[derive(Debug, Clone, Copy)]
pub struct DataDir<'a> {
    /// The engine's name, for errors ("PostgreSQL").
    pub engine: &'a str,
    /// A file every whole data directory has (`PG_VERSION`): its presence says the directory is provisioned.
    pub marker: &'a str,
    /// Top-level files of the template never copied: a running server's, and [`BOOTSTRAP_FILE`] (always skipped).
    pub not_copied: &'a [&'a str],
}

/// Creates the data dir `data_dir` as a copy of `template`, owned by `run_as` and mode 0700.
///
/// A data dir that already exists is left alone (this is idempotent). The copy is made next to `data_dir` and
/// renamed into place, so a crash never leaves half a data dir that a later run would mistake for a whole one.
/// `std::fs::copy` uses `copy_file_range`, which lets filesystems that can share extents do so.
///
/// `finish` asks for a spare of that variant (one the engine finished ahead of time, see [`SpareFinish`]): it is
/// taken when there is one, else a plain spare or a copy; the next spare prepared is of that variant. Returns
/// whether the data dir is such a finished spare (false for one that existed already, a plain spare or a copy).
pub fn provision(
    template: &Path,
    data_dir: &Path,
    kind: DataDir<'_>,
    run_as: Option<&RunAs>,
    finish: Option<&SpareFinish>,
) -> Result<bool, TemplateError> {
    if data_dir.join(kind.marker).exists() {
        return Ok(false);
    }
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(TemplateError::Io {
                    action: "use as a data directory",
                    path: data_dir.to_owned(),
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "it exists and is not a {} data directory (no {}); move it away",
                            kind.engine, kind.marker
                        ),
                    ),
                });
            }
            std::fs::remove_dir(data_dir).map_err(io_error("remove the empty", data_dir))?;
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(TemplateError::Io {
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
    let skipped = |name: &std::ffi::OsStr| {
        name == BOOTSTRAP_FILE || kind.not_copied.iter().any(|skipped| name == *skipped)
    };
    // A spare is renamed into place: one on another filesystem than the instance can never be, so it is neither
    // waited for nor prepared.
    let spares_usable = same_filesystem(template, parent);
    let variant = finish.map(|finish| finish.variant.as_str());
    let finished = spares_usable && variant.is_some() && claim_spare(template, variant, &work);
    let prepared = if finished || spares_usable && claim_spare(template, None, &work) {
        match run_as {
            // A spare prepared for this very account (the one whose provisioning asked for it) is its already.
            Some(run_as) if owned_by(&work, (run_as.uid, run_as.gid)) => Ok(()),
            Some(run_as) => chown_tree(&work, run_as).map_err(TemplateError::from),
            None => Ok(()),
        }
    } else {
        copy_tree(template, &work, owner, &skipped)
    };
    let result = prepared.and_then(|()| {
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error("set the mode of", &work))?;
        std::fs::rename(&work, data_dir)
            .map_err(io_error("move the new data directory to", data_dir))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&work);
        // Another kip provisioned it meanwhile (our rename found it there): theirs is as good as ours.
        if data_dir.join(kind.marker).exists() {
            return Ok(false);
        }
    } else if spares_usable {
        want_spare(template, kind, owner, finish);
    }
    result.map(|()| finished)
}

/// Whether the top of `dir` belongs to `owner` (uid, gid). A spare's tree is given to one owner as a whole when it
/// is prepared, in a directory only kip's own account can enter, so its top tells for all of it.
fn owned_by(dir: &Path, (uid, gid): (u32, u32)) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(dir)
        .is_ok_and(|metadata| metadata.uid() == uid && metadata.gid() == gid)
}

/// Whether `a` and `b` are on one filesystem (the same device), so that a rename between them works.
fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

/// How many spares a template keeps: two, so that instances made one after the other (a CI job, a benchmark) find
/// one ready while the other is being prepared. Each is a copy of the template (~40 MB for PostgreSQL).
const SPARES: usize = 2;

/// The name the spares of `template` of `variant` go by: the template's directory name, and `+<variant>` for a
/// finished variant. Their slots, lock and temp copies are named after it, so each variant has its own.
fn spare_key(template: &Path, variant: Option<&str>) -> Option<String> {
    let name = template.file_name()?.to_string_lossy();
    Some(match variant {
        None => name.into_owned(),
        Some(variant) => format!("{name}+{variant}"),
    })
}

/// Where the spares of `template` (of `variant`) are kept: `.spares/<key>.<slot>` beside it ([`spare_key`]).
fn spare_slots(template: &Path, variant: Option<&str>) -> Vec<PathBuf> {
    let (Some(templates_dir), Some(key)) = (template.parent(), spare_key(template, variant)) else {
        return Vec::new();
    };
    (0..SPARES)
        .map(|slot| templates_dir.join(".spares").join(format!("{key}.{slot}")))
        .collect()
}

/// The file in a spare holding its template's identity ([`template_stamp`]); removed when the spare is claimed.
const SPARE_STAMP: &str = "kip-spare";

/// The identity of a template's build: a hash of its bootstrap password, which each build draws anew. `None` for a
/// template without one (not whole): it gets no spare.
fn template_stamp(template: &Path) -> Option<String> {
    let password = std::fs::read(template.join(BOOTSTRAP_FILE)).ok()?;
    Some(format!("{:016x}", fnv1a(&password)))
}

/// Takes a spare of `template` (of `variant`) as `work` (a rename): true when there was one of this very template,
/// now in `work` without its stamp; false, with `work` absent, otherwise (no spare, another filesystem, a spare of
/// an earlier build, which is removed).
fn claim_spare(template: &Path, variant: Option<&str>, work: &Path) -> bool {
    let Some(stamp) = template_stamp(template) else {
        return false;
    };
    let slots = spare_slots(template, variant);
    let take = || {
        slots.iter().any(|spare| {
            // Two kips may race for a spare: the rename is atomic, so one gets it and the other finds nothing.
            if std::fs::rename(spare, work).is_err() {
                return false;
            }
            let stamp_file = work.join(SPARE_STAMP);
            let matches = std::fs::read_to_string(&stamp_file).is_ok_and(|found| found == stamp);
            if !matches || std::fs::remove_file(&stamp_file).is_err() {
                let _ = std::fs::remove_dir_all(work);
                return false;
            }
            tracing::debug!(spare = %spare.display(), "provisioned from the template's spare");
            true
        })
    };
    // While a preparer is at work (the previous command's), its copy is nearer done than a new one would be, and
    // two copies at once only slow each other down: its first spare is waited for, a bounded time.
    take() || wait_for_preparer(template, variant, take)
}

/// How long a provisioning waits for a spare being prepared before it copies the template itself.
const SPARE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// While a preparer of `template`'s spares holds its lock (at most [`SPARE_WAIT`]), tries `take` every 2 ms: true
/// as soon as it takes a spare (the preparer put the first one in place and goes on with the next), or when the
/// preparer is done and `take` then succeeds; false otherwise (no preparer ever ran, or it took too long).
fn wait_for_preparer(template: &Path, variant: Option<&str>, take: impl Fn() -> bool) -> bool {
    let (Some(templates_dir), Some(key)) = (template.parent(), spare_key(template, variant)) else {
        return false;
    };
    let lock_path = templates_dir
        .join(".locks")
        .join(format!("{key}.spare.lock"));
    // Not created here: without the file, no preparer ever ran.
    let Ok(lock_file) = std::fs::OpenOptions::new().write(true).open(&lock_path) else {
        return false;
    };
    let deadline = std::time::Instant::now() + SPARE_WAIT;
    loop {
        match lock_file.try_lock() {
            Ok(()) => return take(),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                if take() {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(_) => return false,
        }
    }
}

/// A spare to prepare once the command is done: a copy of `template` without the top-level files in `not_copied`
/// (and never its [`BOOTSTRAP_FILE`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpareRequest {
    pub template: PathBuf,
    pub not_copied: Vec<String>,
    /// The account (uid, gid) the provisioning that asked ran its engine as: the spare is given to it, since the
    /// next instance is most likely that project's again (a developer adding one, a CI job, a benchmark), which
    /// then takes it with a rename alone. Another account's provisioning gives it to that account when it claims
    /// it, as it gives any spare. An owner whose account is gone by then gives way to the next new project's
    /// ([`spare_owner`]).
    pub owner: Option<(u32, u32)>,
    /// The variant to prepare, when not a plain copy.
    pub finish: Option<SpareFinish>,
}

/// A variant of a template's spares that is more than a copy: the engine finishes each copy ahead of time with a
/// step of its own (PostgreSQL: a database made in it, so that a new instance's first database is a rename rather
/// than a `CREATE DATABASE` on the user's clock). Its spares are kept apart from the plain ones
/// (`<template>+<variant>.<slot>`), two of them as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpareFinish {
    /// The variant's name: ASCII letters, digits and `-` (part of file names). [`crate::spare_finisher`] knows
    /// the step by it.
    pub variant: String,
    /// The engine build the step runs with.
    pub toolchain: PathBuf,
}

/// The step that finishes a spare of a variant: gets the copy (stamped after it succeeds), the engine build, and
/// the account the copy belongs to (the step's tools run as it).
pub type Finisher = fn(&Path, &Path, Option<(u32, u32)>) -> Result<(), TemplateError>;

static WANTED_SPARES: Mutex<Vec<SpareRequest>> = Mutex::new(Vec::new());

/// Records that `template` should have a spare again, after a provisioning used or skipped it.
fn want_spare(
    template: &Path,
    kind: DataDir<'_>,
    owner: Option<(u32, u32)>,
    finish: Option<&SpareFinish>,
) {
    let request = SpareRequest {
        template: template.to_owned(),
        not_copied: kind
            .not_copied
            .iter()
            .map(|name| (*name).to_owned())
            .collect(),
        owner,
        finish: finish.cloned(),
    };
    let mut wanted = WANTED_SPARES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !wanted.contains(&request) {
        wanted.push(request);
    }
}

/// The spares this process's provisionings asked for, once each; the caller prepares them after its own work
/// (the CLI: a detached `kip prepare-spare` per request, so no command waits for a copy).
pub fn take_wanted_spares() -> Vec<SpareRequest> {
    std::mem::take(
        &mut *WANTED_SPARES
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

/// Removes every spare under `templates_dir`, and the partial copies of preparers that were killed, skipping a
/// template whose preparer is at work (it holds the spare lock). Templates stay. Returns how many spares were
/// removed and the bytes freed. `kip cache prune` runs it.
pub fn prune_spares(templates_dir: &Path) -> Result<(usize, u64), TemplateError> {
    let spares = templates_dir.join(".spares");
    let temp = templates_dir.join(".tmp");
    let locks = templates_dir.join(".locks");
    let mut names: Vec<String> = Vec::new();
    for directory in [&spares, &temp] {
        match std::fs::read_dir(directory) {
            Ok(entries) => names.extend(entries.flatten().filter_map(|entry| {
                let file = entry.file_name().to_string_lossy().into_owned();
                if *directory == spares {
                    // `<template>.<slot>`; an entry without a slot is an earlier kip's spare of that template.
                    Some(match file.rsplit_once('.') {
                        Some((name, slot)) if slot.bytes().all(|b| b.is_ascii_digit()) => {
                            name.to_owned()
                        }
                        _ => file,
                    })
                } else {
                    file.split_once(".spare.").map(|(name, _)| name.to_owned())
                }
            })),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(io_error("read", directory)(source)),
        }
    }
    names.sort();
    names.dedup();
    let (mut removed, mut freed) = (0, 0);
    for name in names {
        let lock_file = open_lock(&locks.join(format!("{name}.spare.lock")))?;
        if lock_file.try_lock().is_err() {
            continue;
        }
        let slot_prefix = format!("{name}.");
        for entry in std::fs::read_dir(&spares).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let slot = file.strip_prefix(&slot_prefix);
            if file == name || slot.is_some_and(|slot| slot.bytes().all(|b| b.is_ascii_digit())) {
                let spare = entry.path();
                freed += tree_bytes(&spare);
                std::fs::remove_dir_all(&spare).map_err(io_error("remove the spare", &spare))?;
                removed += 1;
            }
        }
        let prefix = format!("{name}.spare.");
        for entry in std::fs::read_dir(&temp).into_iter().flatten().flatten() {
            // A killed preparer's copy in which its engine's tool still works (a variant's step) is left to the
            // next preparer, which waits for the tool first.
            if entry.file_name().to_string_lossy().starts_with(&prefix)
                && kip_core::supervisor::working_in(&entry.path()).is_empty()
            {
                freed += tree_bytes(&entry.path());
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok((removed, freed))
}

/// The bytes of the regular files under `path` (0 when it cannot be read).
pub fn tree_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => tree_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |metadata| metadata.len()),
            _ => 0,
        })
        .sum()
}

/// [`prepare_spare`] at a lower CPU priority (nice 10): what the detached `kip prepare-spare` runs, so that a spare
/// being copied leaves the machine to whatever the user runs next.
pub fn prepare_spare_in_background(request: &SpareRequest) -> Result<bool, TemplateError> {
    let _ = rustix::process::setpriority_process(None, 10);
    prepare_spare(request)
}

/// Prepares the spare of `request.template` when it has none of its current build: a copy made under `.tmp/`,
/// stamped, then renamed into place. Returns whether it made one. One preparer per template at a time (a lock
/// taken without waiting: another one at work is as good); leftovers of a preparer that was killed are removed.
pub fn prepare_spare(request: &SpareRequest) -> Result<bool, TemplateError> {
    prepare_spare_with(request, crate::spare_finisher)
}

/// [`prepare_spare`], with the finishers `finishers` knows.
fn prepare_spare_with(
    request: &SpareRequest,
    finishers: fn(&str) -> Option<Finisher>,
) -> Result<bool, TemplateError> {
    let template = &request.template;
    let variant = request
        .finish
        .as_ref()
        .map(|finish| finish.variant.as_str());
    let finisher = match variant {
        None => None,
        Some(variant) => match finishers(variant) {
            Some(finisher) => Some(finisher),
            None => return Ok(false),
        },
    };
    let slots = spare_slots(template, variant);
    let (Some(stamp), Some(templates_dir), Some(name)) = (
        template_stamp(template),
        template.parent(),
        spare_key(template, variant),
    ) else {
        return Ok(false);
    };
    let locks = templates_dir.join(".locks");
    let temp = templates_dir.join(".tmp");
    let spares = templates_dir.join(".spares");
    for directory in [&locks, &temp, &spares] {
        std::fs::create_dir_all(directory).map_err(io_error("create", directory))?;
    }
    std::fs::set_permissions(&spares, std::fs::Permissions::from_mode(0o700))
        .map_err(io_error("set the mode of", &spares))?;
    let lock_file = open_lock(&locks.join(format!("{name}.spare.lock")))?;
    if lock_file.try_lock().is_err() {
        return Ok(false);
    }
    let prefix = format!("{name}.spare.");
    for entry in std::fs::read_dir(&temp)
        .map_err(io_error("read", &temp))?
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            // A variant's step a killed preparer started (PostgreSQL in single-user mode) outlives it: removing the
            // copy under it could make it abort and leave what it holds (a shared-memory segment).
            wait_for_no_one_in(&entry.path(), LEFTOVER_WAIT)?;
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let skipped = |file: &std::ffi::OsStr| {
        file == BOOTSTRAP_FILE
            || request
                .not_copied
                .iter()
                .any(|skipped| file == skipped.as_str())
    };
    let current = |spare: &Path| {
        std::fs::read_to_string(spare.join(SPARE_STAMP)).is_ok_and(|found| found == stamp)
    };
    // Fill every empty slot, looking again after each copy: one may have been claimed meanwhile. Bounded, should
    // instances be claimed as fast as they are made.
    let mut made = false;
    for _ in 0..SPARES * 2 {
        let Some(spare) = slots.iter().find(|spare| !current(spare)) else {
            break;
        };
        let work = temp.join(format!("{prefix}{}", std::process::id()));
        let Some(owner) = spare_owner(request.owner, templates_dir) else {
            tracing::debug!(
                "no account to prepare a spare of {} for",
                template.display()
            );
            return Ok(made);
        };
        let copied = copy_tree(template, &work, owner, &skipped).and_then(|()| {
            if let (Some(finish), Some(finisher)) = (&request.finish, finisher) {
                // The step runs as the owner, whose account may have gone during the copy.
                let owner = match spare_owner(owner, templates_dir) {
                    Some(now) if now == owner => owner,
                    Some(Some((uid, gid))) => {
                        let run_as = RunAs {
                            user: format!("uid {uid}"),
                            uid,
                            gid,
                        };
                        chown_tree(&work, &run_as)?;
                        Some((uid, gid))
                    }
                    _ => {
                        return Err(TemplateError::Io {
                            action: "find an account to prepare a spare as, for",
                            path: work.clone(),
                            source: io::Error::other(
                                "the account it was for is gone, and no spare account waits",
                            ),
                        });
                    }
                };
                finisher(&work, &finish.toolchain, owner)?;
            }
            let stamp_file = work.join(SPARE_STAMP);
            std::fs::write(&stamp_file, &stamp).map_err(io_error("write", &stamp_file))?;
            std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700))
                .map_err(io_error("set the mode of", &work))?;
            // Written back before it can be claimed: otherwise the next instance's first fsync (PostgreSQL's
            // CREATE DATABASE, a journal commit on ext4) would wait for this copy's 40 MB as well.
            let directory = std::fs::File::open(&work).map_err(io_error("open", &work))?;
            rustix::fs::syncfs(&directory).map_err(|error| TemplateError::Io {
                action: "write back",
                path: work.clone(),
                source: error.into(),
            })?;
            if spare.exists() {
                // A spare of an earlier build of the template.
                std::fs::remove_dir_all(spare).map_err(io_error("remove the old spare", spare))?;
            }
            std::fs::rename(&work, spare).map_err(io_error("move the new spare to", spare))
        });
        if let Err(error) = copied {
            let _ = std::fs::remove_dir_all(&work);
            return Err(error);
        }
        made = true;
    }
    Ok(made)
}

/// How long a preparer whose asking account is gone waits for another preparer to make the next new project's
/// spare account.
const SPARE_ACCOUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whom a spare of a template in `templates_dir` is prepared for: `requested` (the account whose provisioning asked)
/// while it has an account. When that account was deleted meanwhile (its project destroyed right after the apply
/// that asked: a CI job's last step, a benchmark's loop), PostgreSQL's step could not run as it ("could not look
/// up effective user ID"), and its copy would belong to no one: the spare goes to the spare account the next new
/// project takes ([`SpareAccounts::waiting`], kept in the cache that holds the templates, `<cache>/templates`),
/// made now when none waits. `None` when there is no such account; `Some(None)` when kip gives spares to no
/// account (not root).
fn spare_owner(requested: Option<(u32, u32)>, templates_dir: &Path) -> Option<Option<(u32, u32)>> {
    let Some((uid, _)) = requested else {
        return Some(None);
    };
    if matches!(kip_core::runas::lookup_uid(uid), Ok(Some(_))) {
        return Some(requested);
    }
    // Only where spare accounts are kept at all (as root, unless they are turned off).
    let accounts = SpareAccounts::in_cache(templates_dir.parent()?);
    if !accounts.dir().exists() {
        return None;
    }
    let deadline = std::time::Instant::now() + SPARE_ACCOUNT_WAIT;
    let waiting = loop {
        if let Some(waiting) = accounts.waiting() {
            break waiting;
        }
        // None waits: the next new project's is made now (unless spare accounts are turned off). The apply that
        // took the last one starts its preparer only once it is done, and may itself be waiting for this very
        // spare; a preparer already at work (`prepare` then returns at once) is waited for.
        if kip_core::runas::spare_accounts_off() {
            return None;
        }
        if let Err(error) = accounts.prepare() {
            tracing::debug!("cannot make a spare account: {error}");
            return None;
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    tracing::debug!(
        "the account of uid {uid} is gone: the spare goes to uid {}, the next new project's",
        waiting.0
    );
    Some(Some(waiting))
}

/// Copies a directory tree keeping modes, recreating symlinks, and giving everything to `owner` when set. Top-level
/// entries for which `skipped` says so are left out.
pub fn copy_tree(
    from: &Path,
    to: &Path,
    owner: Option<(u32, u32)>,
    skipped: &dyn Fn(&std::ffi::OsStr) -> bool,
) -> Result<(), TemplateError> {
    copy_level(from, to, owner, Some(skipped))
}

fn copy_level(
    from: &Path,
    to: &Path,
    owner: Option<(u32, u32)>,
    skipped: Option<&dyn Fn(&std::ffi::OsStr) -> bool>,
) -> Result<(), TemplateError> {
    let metadata = std::fs::metadata(from).map_err(io_error("read", from))?;
    std::fs::create_dir(to).map_err(io_error("create", to))?;
    std::fs::set_permissions(to, metadata.permissions())
        .map_err(io_error("set the mode of", to))?;
    chown(to, owner)?;
    for entry in std::fs::read_dir(from).map_err(io_error("read", from))? {
        let entry = entry.map_err(io_error("read", from))?;
        let name = entry.file_name();
        if skipped.is_some_and(|skipped| skipped(&name)) {
            continue;
        }
        let source = entry.path();
        let destination = to.join(&name);
        let file_type = entry.file_type().map_err(io_error("read", &source))?;
        if file_type.is_dir() {
            copy_level(&source, &destination, owner, None)?;
        } else if file_type.is_symlink() {
            let link = std::fs::read_link(&source).map_err(io_error("read the link", &source))?;
            std::os::unix::fs::symlink(&link, &destination)
                .map_err(io_error("create the link", &destination))?;
            chown(&destination, owner)?;
        } else {
            std::fs::copy(&source, &destination).map_err(io_error("copy", &source))?;
            chown(&destination, owner)?;
        }
    }
    Ok(())
}

/// Gives `path` (not following a symlink) to `owner`, when set.
pub fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), TemplateError> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(io_error("change the owner of", path))?;
    }
    Ok(())
}

/// The last `lines` non-empty lines of a tool's output (stdout then stderr), for an error.
pub fn output_tail(output: &std::process::Output, lines: usize) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leftover_is_removed_only_once_the_tools_working_in_it_are_gone() {
        let temp = tempfile::tempdir().unwrap();
        let leftover = temp.path().join("postgres-16.4242");
        std::fs::create_dir_all(leftover.join("base")).unwrap();
        // A killed builder's tool, still at work in the leftover (its working directory a level down).
        let mut tool = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(leftover.join("base"))
            .spawn()
            .unwrap();
        assert_eq!(kip_core::supervisor::working_in(&leftover), [tool.id()]);
        let busy = wait_for_no_one_in(&leftover, std::time::Duration::from_millis(50)).unwrap_err();
        assert!(
            busy.to_string().contains(&tool.id().to_string()) && busy.hint().is_some(),
            "{busy}"
        );
        let released = std::cell::Cell::new(0);
        assert!(
            remove_leftovers_within(
                temp.path(),
                "postgres-16",
                &|_| released.set(released.get() + 1),
                std::time::Duration::from_millis(50)
            )
            .is_err()
        );
        assert!(leftover.is_dir(), "nothing is removed under a running tool");
        assert_eq!(released.get(), 0);
        tool.kill().unwrap();
        tool.wait().unwrap();
        remove_leftovers_within(
            temp.path(),
            "postgres-16",
            &|path| {
                assert_eq!(path, leftover);
                released.set(released.get() + 1);
            },
            std::time::Duration::from_millis(50),
        )
        .unwrap();
        assert!(!leftover.exists());
        assert_eq!(
            released.get(),
            1,
            "the engine saw the leftover before its removal"
        );
    }

    #[test]
    fn names_are_stable_and_safe() {
        assert_eq!(
            template_name("postgres", "16.14.0", None),
            "postgres-16.14.0"
        );
        assert_eq!(template_name("postgres", "../x", None), "postgres-.._x");
        let named = template_name("mariadb", "10.11.19", Some("a=1"));
        assert!(named.starts_with("mariadb-10.11.19-"), "{named}");
        assert_eq!(named, template_name("mariadb", "10.11.19", Some("a=1")));
        assert_ne!(named, template_name("mariadb", "10.11.19", Some("a=2")));
    }

    #[test]
    fn provision_copies_all_but_the_bootstrap_and_skipped_files() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("template");
        std::fs::create_dir_all(template.join("sub")).unwrap();
        std::fs::write(template.join("MARK"), "1").unwrap();
        std::fs::write(template.join("sub/file"), "data").unwrap();
        std::fs::write(template.join("server.pid"), "1").unwrap();
        std::fs::write(template.join(BOOTSTRAP_FILE), "secret").unwrap();
        let data = dir.path().join("instance/data");
        let kind = DataDir {
            engine: "Test",
            marker: "MARK",
            not_copied: &["server.pid"],
        };
        provision(&template, &data, kind, None, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(data.join("sub/file")).unwrap(),
            "data"
        );
        assert!(!data.join("server.pid").exists());
        assert!(!data.join(BOOTSTRAP_FILE).exists());
        // Idempotent, and a foreign directory is refused.
        provision(&template, &data, kind, None, None).unwrap();
        let foreign = dir.path().join("foreign");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("x"), "").unwrap();
        assert!(provision(&template, &foreign, kind, None, None).is_err());
    }

    /// A template `name` under `templates`: a marker, a file in a subdirectory, a server's pid file (not copied)
    /// and its bootstrap password (its first build).
    fn test_template(templates: &Path, name: &str) -> (PathBuf, DataDir<'static>) {
        let template = templates.join(name);
        std::fs::create_dir_all(template.join("sub")).unwrap();
        std::fs::write(template.join("MARK"), "1").unwrap();
        std::fs::write(template.join("sub/file"), "data").unwrap();
        std::fs::write(template.join("server.pid"), "1").unwrap();
        std::fs::write(template.join(BOOTSTRAP_FILE), "first build").unwrap();
        let kind = DataDir {
            engine: "Test",
            marker: "MARK",
            not_copied: &["server.pid"],
        };
        (template, kind)
    }

    /// The tests that take the process's spare requests, one at a time (each takes all of them).
    static SPARE_REQUESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// As root: a spare is prepared for the account whose provisioning asked for it, which then takes it as it
    /// is; another account's provisioning gives the whole tree to itself.
    #[test]
    fn a_spare_is_given_to_the_account_that_asked_and_taken_by_another_with_a_chown() {
        use std::os::unix::fs::MetadataExt as _;
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let _one_at_a_time = SPARE_REQUESTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("templates");
        let (template, kind) = test_template(&templates, "owned-1");
        let account = |uid: u32| RunAs {
            user: format!("u{uid}"),
            uid,
            gid: uid,
        };
        let owners = |dir: &Path| -> Vec<(u32, u32)> {
            [dir.to_owned(), dir.join("sub"), dir.join("sub/file")]
                .iter()
                .map(|path| {
                    let metadata = std::fs::symlink_metadata(path).unwrap();
                    (metadata.uid(), metadata.gid())
                })
                .collect()
        };
        provision(
            &template,
            &dir.path().join("one"),
            kind,
            Some(&account(65534)),
            None,
        )
        .unwrap();
        let wanted: Vec<SpareRequest> = take_wanted_spares()
            .into_iter()
            .filter(|request| request.template == template)
            .collect();
        assert_eq!(wanted.len(), 1);
        assert_eq!(wanted[0].owner, Some((65534, 65534)));
        assert!(prepare_spare(&wanted[0]).unwrap());
        let spare = templates.join(".spares/owned-1.0");
        assert_eq!(owners(&spare), [(65534, 65534); 3]);
        let two = dir.path().join("two");
        provision(&template, &two, kind, Some(&account(65534)), None).unwrap();
        assert_eq!(owners(&two), [(65534, 65534); 3]);
        let three = dir.path().join("three");
        provision(&template, &three, kind, Some(&account(4242)), None).unwrap();
        assert_eq!(owners(&three), [(4242, 4242); 3]);
        let _ = take_wanted_spares();
    }

    #[test]
    fn a_spare_is_renamed_into_place_once_and_only_for_its_own_build() {
        let _one_at_a_time = SPARE_REQUESTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("templates");
        let (template, kind) = test_template(&templates, "test-1");
        // Other tests provision too: only this template's requests count.
        let wanted_here = || -> Vec<SpareRequest> {
            take_wanted_spares()
                .into_iter()
                .filter(|request| request.template == template)
                .collect()
        };

        // No spare yet: a copy, and a spare is asked for.
        provision(&template, &dir.path().join("one"), kind, None, None).unwrap();
        let wanted = wanted_here();
        assert_eq!(
            wanted,
            vec![SpareRequest {
                template: template.clone(),
                not_copied: vec!["server.pid".into()],
                owner: None,
                finish: None,
            }]
        );
        assert!(prepare_spare(&wanted[0]).unwrap(), "the spares are made");
        assert!(!prepare_spare(&wanted[0]).unwrap(), "and only once");
        let spares = [
            templates.join(".spares/test-1.0"),
            templates.join(".spares/test-1.1"),
        ];
        for spare in &spares {
            assert!(spare.join(SPARE_STAMP).is_file());
            assert!(!spare.join(BOOTSTRAP_FILE).exists());
            assert!(!spare.join("server.pid").exists());
        }

        // The next instances take them: each spare once, the data dir whole, without the stamp.
        std::fs::write(spares[0].join("sub/file"), "from the spare").unwrap();
        let two = dir.path().join("two");
        provision(&template, &two, kind, None, None).unwrap();
        assert!(!spares[0].exists() && spares[1].exists());
        assert_eq!(
            std::fs::read_to_string(two.join("sub/file")).unwrap(),
            "from the spare"
        );
        assert!(!two.join(SPARE_STAMP).exists());
        assert_eq!(wanted_here().len(), 1, "another spare is asked for");
        provision(&template, &dir.path().join("two-b"), kind, None, None).unwrap();
        assert!(!spares[1].exists());

        // Spares of an earlier build of the template are never used, and are removed.
        assert!(prepare_spare(&wanted[0]).unwrap());
        std::fs::write(spares[0].join("sub/file"), "stale").unwrap();
        std::fs::write(spares[1].join("sub/file"), "stale").unwrap();
        std::fs::write(template.join(BOOTSTRAP_FILE), "second build").unwrap();
        let three = dir.path().join("three");
        provision(&template, &three, kind, None, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(three.join("sub/file")).unwrap(),
            "data"
        );
        assert!(!spares[0].exists() && !spares[1].exists());
        // A preparer killed halfway left a temp copy: the next one removes it.
        let leftover = templates.join(".tmp/test-1.spare.999999");
        std::fs::create_dir_all(&leftover).unwrap();
        assert!(prepare_spare(&wanted[0]).unwrap());
        assert!(!leftover.exists());
        assert_eq!(
            std::fs::read_to_string(spares[1].join(SPARE_STAMP)).unwrap(),
            template_stamp(&template).unwrap()
        );

        // A prune removes the spare and a killed preparer's copy, and leaves the template.
        std::fs::create_dir_all(&leftover).unwrap();
        std::fs::write(leftover.join("half"), "12345").unwrap();
        let (removed, freed) = prune_spares(&templates).unwrap();
        assert_eq!(removed, 2);
        assert!(freed >= 5, "{freed}");
        assert!(!spares[0].exists() && !spares[1].exists() && !leftover.exists());
        assert!(template.join("MARK").is_file());
        assert_eq!(prune_spares(&templates).unwrap(), (0, 0));
    }

    /// A test variant's step: leaves a file naming the toolchain it was given; fails for a toolchain named "fail".
    fn finish_for_test(
        copy: &Path,
        toolchain: &Path,
        _owner: Option<(u32, u32)>,
    ) -> Result<(), TemplateError> {
        if toolchain.ends_with("fail") {
            return Err(io_error("finish", copy)(io::Error::other(
                "the step failed",
            )));
        }
        std::fs::write(
            copy.join("FINISHED"),
            toolchain.to_string_lossy().as_bytes(),
        )
        .map_err(io_error("write", copy))
    }

    fn test_finishers(variant: &str) -> Option<Finisher> {
        (variant == "extra").then_some(finish_for_test as Finisher)
    }

    #[test]
    fn a_variant_s_spares_are_finished_kept_apart_and_taken_only_when_asked_for() {
        let _one_at_a_time = SPARE_REQUESTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("templates");
        let (template, kind) = test_template(&templates, "test-2");
        let finish = SpareFinish {
            variant: "extra".into(),
            toolchain: dir.path().join("build"),
        };
        let wanted_here = || -> Vec<SpareRequest> {
            take_wanted_spares()
                .into_iter()
                .filter(|request| request.template == template)
                .collect()
        };

        // No spare of the variant yet: a copy (not finished), and the variant is asked for.
        let one = dir.path().join("one");
        assert!(!provision(&template, &one, kind, None, Some(&finish)).unwrap());
        assert!(one.join("MARK").is_file() && !one.join("FINISHED").exists());
        let wanted = wanted_here();
        assert_eq!(wanted.len(), 1);
        assert_eq!(wanted[0].finish.as_ref(), Some(&finish));

        // Prepared and finished, apart from the plain spares.
        assert!(prepare_spare_with(&wanted[0], test_finishers).unwrap());
        let spares = [
            templates.join(".spares/test-2+extra.0"),
            templates.join(".spares/test-2+extra.1"),
        ];
        for spare in &spares {
            assert!(spare.join(SPARE_STAMP).is_file(), "{}", spare.display());
            assert!(spare.join("FINISHED").is_file());
        }
        assert!(!templates.join(".spares/test-2.0").exists());

        // A provisioning that does not ask for the variant never takes its spares; one that does, does.
        let plain = dir.path().join("plain");
        assert!(!provision(&template, &plain, kind, None, None).unwrap());
        assert!(!plain.join("FINISHED").exists());
        assert!(spares[0].exists() && spares[1].exists());
        let two = dir.path().join("two");
        assert!(provision(&template, &two, kind, None, Some(&finish)).unwrap());
        assert_eq!(
            std::fs::read_to_string(two.join("FINISHED")).unwrap(),
            finish.toolchain.to_string_lossy()
        );
        assert!(!two.join(SPARE_STAMP).exists());
        assert!(!spares[0].exists());
        // Asked for again: the plain spare by the plain provisioning, the variant by the other.
        let mut asked: Vec<Option<SpareFinish>> = wanted_here()
            .into_iter()
            .map(|request| request.finish)
            .collect();
        asked.sort_by_key(Option::is_some);
        assert_eq!(asked, [None, Some(finish.clone())]);

        // A step that fails leaves no spare and no temp copy, and says why.
        let failing = SpareRequest {
            finish: Some(SpareFinish {
                variant: "extra".into(),
                toolchain: dir.path().join("fail"),
            }),
            ..wanted[0].clone()
        };
        let error = prepare_spare_with(&failing, test_finishers).unwrap_err();
        assert!(error.to_string().contains("cannot finish"), "{error}");
        assert!(!spares[0].exists());
        let temp_left: Vec<_> = std::fs::read_dir(templates.join(".tmp"))
            .unwrap()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().contains(".spare."))
            .collect();
        assert!(temp_left.is_empty(), "{temp_left:?}");
        // A variant this kip does not know is not prepared.
        let unknown = SpareRequest {
            finish: Some(SpareFinish {
                variant: "other".into(),
                toolchain: dir.path().join("build"),
            }),
            ..wanted[0].clone()
        };
        assert!(!prepare_spare_with(&unknown, test_finishers).unwrap());

        // A prune removes the variant's spares too.
        let (removed, _) = prune_spares(&templates).unwrap();
        assert_eq!(removed, 1);
        assert!(!spares[1].exists());
    }

    #[test]
    fn an_instance_on_another_filesystem_is_copied_and_asks_for_no_spare() {
        let _one_at_a_time = SPARE_REQUESTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let Ok(elsewhere) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        if same_filesystem(dir.path(), elsewhere.path()) {
            return;
        }
        let template = dir.path().join("templates/test-2");
        std::fs::create_dir_all(&template).unwrap();
        std::fs::write(template.join("MARK"), "1").unwrap();
        std::fs::write(template.join(BOOTSTRAP_FILE), "build").unwrap();
        let kind = DataDir {
            engine: "Test",
            marker: "MARK",
            not_copied: &[],
        };
        provision(&template, &elsewhere.path().join("data"), kind, None, None).unwrap();
        assert!(elsewhere.path().join("data/MARK").is_file());
        assert!(
            !take_wanted_spares()
                .iter()
                .any(|request| request.template == template),
            "a spare that could never be renamed into place is not asked for"
        );
    }
}
