//! Running engines as an unprivileged account when kip itself runs as root.
//!
//! CI jobs and containers usually run as root, and some engines (PostgreSQL first of all) refuse to. So when kip's
//! effective uid is 0 it starts engines as another account: `run_as` from the config, else `KIP_RUN_AS`, else the
//! project's own system account, `kip-<hash of the project directory>`, created on first use and removed when the
//! project's last instance is destroyed. One account per project is what keeps the engines of one project from
//! reading another's data directories (each is 0700, its account's). When kip is not root it runs engines as
//! itself: it could not switch users anyway, and its projects are its own.
//!
//! Accounts are looked up in `/etc/passwd`, parsed here (no libc), then through `getent` so that accounts from
//! LDAP or sssd are found too. Switching users only helps if the account can reach its files, so
//! [`ensure_reachable`] checks every directory on the way to a data dir and says what to do when one is closed,
//! instead of silently opening up the user's home directory.
//!
//! The spawned process has only the account's primary group: the standard library drops supplementary groups when
//! a root process switches uid, so the reachability check ignores them on purpose.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::engine::RunAs;

/// The account the provider library's own tests run engines as (kip itself uses [`project_account`]).
pub const DEFAULT_ACCOUNT: &str = "kip";

/// The account the engines of the project in `project_dir` run as when kip runs as root: the one the project took
/// from the spares made ahead of time ([`SpareAccounts`]), recorded in `.kip/account`; else `kip-` and 8 hex
/// digits of a hash of the directory (system account names stay short), which kip creates on first use.
pub fn project_account(project_dir: &Path) -> String {
    recorded_account(&project_dir.join(".kip")).unwrap_or_else(|| derived_account(project_dir))
}

fn derived_account(project_dir: &Path) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(project_dir.to_string_lossy().as_bytes());
    format!("kip-{}", hex(&digest[..4]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The file in a project's `.kip/` that names the account it took from the spares.
const ACCOUNT_FILE: &str = "account";

/// Whether `name` has the form of an account kip makes: `kip-` and 8 lowercase hex digits. Nothing else is ever
/// taken from a file, created or removed as a project's account.
fn is_kip_account(name: &str) -> bool {
    name.strip_prefix("kip-").is_some_and(|digits| {
        digits.len() == 8
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The account recorded in `kip_dir`, believed only when kip's own user wrote it: a plain file owned by the
/// effective uid that no one else may write, in a `.kip/` of the effective uid that other accounts may not write
/// (else another account could have linked or moved a file of kip's there), naming an account of kip's form.
/// Anything else (a file another account planted in a project directory it could write to, a name such as
/// `root`) is ignored, and the project gets its own account as if there were no file.
fn recorded_account(kip_dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let path = kip_dir.join(ACCOUNT_FILE);
    let metadata = std::fs::symlink_metadata(&path).ok()?;
    let euid = rustix::process::geteuid().as_raw();
    // The directory may be group-writable (a umask of 002): its group is the effective user's.
    let owned = |metadata: &std::fs::Metadata, mask: u32| {
        metadata.uid() == euid && metadata.mode() & mask == 0
    };
    let dir_private =
        std::fs::symlink_metadata(kip_dir).is_ok_and(|dir| dir.is_dir() && owned(&dir, 0o002));
    if !metadata.is_file() || !owned(&metadata, 0o022) || !dir_private {
        tracing::warn!(
            "ignoring {}: it is not a file that only kip's own user may write",
            path.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let name = text.trim();
    if !is_kip_account(name) {
        tracing::warn!(
            "ignoring {}: `{name}` is not an account kip makes",
            path.display()
        );
        return None;
    }
    Some(name.to_owned())
}

/// Why kip cannot run engines as the account it should.
#[derive(Debug, thiserror::Error)]
pub enum RunAsError {
    #[error(
        "run_as names the account `{wanted}`, but kip runs as `{current}` (uid {uid}); only root can start engines \
         as another account"
    )]
    NotRoot {
        wanted: String,
        current: String,
        uid: u32,
    },
    #[error("the account `{user}` (from {origin}) does not exist")]
    UnknownUser { user: String, origin: &'static str },
    #[error("cannot create the account `{user}`: {reason}")]
    CreateUser { user: String, reason: String },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the account `{user}` cannot reach {}: {} is mode {mode:04o} owned by uid {owner}:{group}, which does not \
         let `{user}` traverse it",
        path.display(),
        blocking.display()
    )]
    Unreachable {
        user: String,
        path: PathBuf,
        blocking: PathBuf,
        mode: u32,
        owner: u32,
        group: u32,
    },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot give {} to the account `{user}`", path.display())]
    Chown {
        user: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl RunAsError {
    /// What the user can do about it, for the `hint:` line the CLI renders.
    pub fn hint(&self) -> Option<String> {
        match self {
            RunAsError::NotRoot { .. } => Some(
                "remove run_as to run engines as yourself, or run kip as root (CI, containers)"
                    .into(),
            ),
            RunAsError::UnknownUser { user, .. } if user != DEFAULT_ACCOUNT => Some(format!(
                "create it (useradd --system {user}), or set KIP_RUN_AS to an existing account such as nobody"
            )),
            RunAsError::UnknownUser { .. } | RunAsError::CreateUser { .. } => {
                Some("set KIP_RUN_AS to an existing unprivileged account, such as nobody".into())
            }
            RunAsError::Unreachable { user, blocking, .. } => Some(format!(
                "put the project (or KIP_CACHE_DIR) somewhere `{user}` can reach, e.g. under /var/lib or /tmp; or \
                 let it through with `chmod o+x {}`; or set KIP_RUN_AS to an account that can reach it",
                blocking.display()
            )),
            RunAsError::Read { .. } | RunAsError::Io { .. } | RunAsError::Chown { .. } => None,
        }
    }
}

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

impl PasswdEntry {
    pub fn run_as(&self) -> RunAs {
        RunAs {
            user: self.name.clone(),
            uid: self.uid,
            gid: self.gid,
        }
    }
}

/// Parses `passwd(5)` text (`name:password:uid:gid:gecos:home:shell`), skipping comments, NIS `+`/`-` lines and
/// malformed lines rather than failing on them: one odd line must not hide every account.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines().filter_map(parse_passwd_line).collect()
}

fn parse_passwd_line(line: &str) -> Option<PasswdEntry> {
    let line = line.trim_end_matches('\r');
    if line.is_empty() || line.starts_with('#') || line.starts_with('+') || line.starts_with('-') {
        return None;
    }
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() < 7 || fields[0].is_empty() {
        return None;
    }
    Some(PasswdEntry {
        name: fields[0].to_owned(),
        uid: fields[2].parse().ok()?,
        gid: fields[3].parse().ok()?,
        home: fields[5].to_owned(),
        shell: fields[6].to_owned(),
    })
}

/// Looks an account up by name: `/etc/passwd` first, then `getent passwd` (accounts from LDAP, sssd, systemd).
pub fn lookup_user(name: &str) -> Result<Option<PasswdEntry>, RunAsError> {
    lookup_user_with(
        Path::new("/etc/passwd"),
        name,
        |entry| entry.name == name,
        Some(name.to_owned()),
    )
}

/// Looks an account up by name in `/etc/passwd` only.
fn lookup_local_user(name: &str) -> Result<Option<PasswdEntry>, RunAsError> {
    lookup_user_with(
        Path::new("/etc/passwd"),
        name,
        |entry| entry.name == name,
        None,
    )
}

/// Looks an account up by uid, the same way as [`lookup_user`].
pub fn lookup_uid(uid: u32) -> Result<Option<PasswdEntry>, RunAsError> {
    lookup_user_with(
        Path::new("/etc/passwd"),
        &uid.to_string(),
        |entry| entry.uid == uid,
        Some(uid.to_string()),
    )
}

fn lookup_user_with(
    passwd: &Path,
    key: &str,
    matches: impl Fn(&PasswdEntry) -> bool,
    getent_key: Option<String>,
) -> Result<Option<PasswdEntry>, RunAsError> {
    match std::fs::read_to_string(passwd) {
        Ok(text) => {
            if let Some(entry) = parse_passwd(&text).into_iter().find(|entry| matches(entry)) {
                return Ok(Some(entry));
            }
        }
        // A system without /etc/passwd (some minimal containers) still has getent, maybe.
        Err(source) if source.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RunAsError::Read {
                path: passwd.to_owned(),
                source,
            });
        }
    }
    let Some(getent_key) = getent_key else {
        return Ok(None);
    };
    tracing::trace!(key, "not in {}, asking getent", passwd.display());
    let output = match Command::new("getent")
        .arg("passwd")
        .arg(&getent_key)
        .output()
    {
        Ok(output) if output.status.success() => output,
        // Missing getent, or exit 2 (no such key): the account does not exist as far as we can tell.
        _ => return Ok(None),
    };
    Ok(parse_passwd(&String::from_utf8_lossy(&output.stdout))
        .into_iter()
        .find(|entry| matches(entry)))
}

/// Decides which account engines run as.
///
/// Returns `None` when no switch is needed: kip is not root (engines run as kip's own user), or the account
/// resolved to is kip's own uid. When kip is root: `configured` (the config's `run_as`), else `env_kip_run_as`
/// (`KIP_RUN_AS`), else `default_account` (the project's, [`project_account`]), which is created when missing. A configured or `KIP_RUN_AS` account
/// that does not exist is an error; kip only creates its own.
///
/// When kip is not root, a configured account other than kip's own user is an error (it cannot switch), while a
/// different `KIP_RUN_AS` is only a warning: an environment variable set for a whole CI image should not break
/// the jobs that happen to run unprivileged.
pub fn resolve_run_as(
    configured: Option<&str>,
    env_kip_run_as: Option<&str>,
    default_account: &str,
) -> Result<Option<RunAs>, RunAsError> {
    let configured = configured.map(str::trim).filter(|name| !name.is_empty());
    let env_kip_run_as = env_kip_run_as
        .map(str::trim)
        .filter(|name| !name.is_empty());
    let euid = rustix::process::geteuid().as_raw();
    if euid != 0 {
        let current = lookup_uid(euid)?
            .map(|entry| entry.name)
            .unwrap_or_else(|| euid.to_string());
        if let Some(wanted) = configured
            && wanted != current
        {
            return Err(RunAsError::NotRoot {
                wanted: wanted.to_owned(),
                current,
                uid: euid,
            });
        }
        if let Some(wanted) = env_kip_run_as
            && wanted != current
        {
            tracing::warn!(
                "KIP_RUN_AS={wanted} is ignored: kip runs as `{current}`, not root, so engines run as `{current}`"
            );
        }
        return Ok(None);
    }
    let (name, origin) = match (configured, env_kip_run_as) {
        (Some(name), _) => (name, "run_as"),
        (None, Some(name)) => (name, "KIP_RUN_AS"),
        (None, None) => (default_account, "the default"),
    };
    let _one_at_a_time = one_at_a_time();
    // kip's own account is looked for in /etc/passwd alone, where useradd puts it: asking getent too (a process,
    // ~2 ms) for an account no directory service has is what a new project paid. Should one have it after all,
    // useradd refuses the name and the lookup after that failure asks getent.
    let found = if origin == "the default" {
        lookup_local_user(name)?
    } else {
        lookup_user(name)?
    };
    let entry = match found {
        Some(entry) => entry,
        None if origin == "the default" => create_default_account(name)?,
        None => {
            return Err(RunAsError::UnknownUser {
                user: name.to_owned(),
                origin,
            });
        }
    };
    if entry.uid == euid {
        return Ok(None);
    }
    Ok(Some(entry.run_as()))
}

/// The instances of one apply resolve at once: one of them creates (or takes) the account, the others find it.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    CREATING.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Gives the project in `project_dir` its own account before its first instance resolves one, when kip runs as
/// root and the engines run as the project's account (neither `run_as` nor `KIP_RUN_AS`): a spare one made ahead
/// of time when `spares` holds one, recorded in `.kip/account`; else nothing here, and [`resolve_run_as`] creates
/// the project's account. Either way the project had none, so a spare is wanted for the next new project
/// ([`take_wanted_spare_accounts`]). The record is written without an fsync, on the way to ready; the apply makes
/// it durable with the state: its fsync runs beside the engine's start ([`crate::fsutil::sync_soon`]), and
/// [`sync_recorded_accounts`] waits for it.
pub fn take_project_account(project_dir: &Path, spares: &SpareAccounts) -> Result<(), RunAsError> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Ok(());
    }
    let _one_at_a_time = one_at_a_time();
    if lookup_local_user(&project_account(project_dir))?.is_some() {
        return Ok(());
    }
    want_spare_account(spares);
    let Some((entry, claim)) = spares.take(project_dir) else {
        return Ok(());
    };
    let kip_dir = project_dir.join(".kip");
    let path = kip_dir.join(ACCOUNT_FILE);
    let recorded = std::fs::create_dir_all(&kip_dir)
        .and_then(|()| {
            crate::fsutil::write_private_unsynced(
                &path,
                format!("{}\n", entry.name).as_bytes(),
                None,
            )
        })
        .and_then(|()| crate::fsutil::sync_soon(&path));
    match recorded {
        Ok(()) => {
            tracing::info!(
                "the engines of this project run as `{}` (uid {}), an account made ahead of time; set KIP_RUN_AS or \
                 run_as to use another",
                entry.name,
                entry.uid
            );
            UNSYNCED_RECORDS
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .push((path, claim));
            Ok(())
        }
        Err(source) => {
            // Not recorded, not used: the project makes its own, and the spare goes.
            delete_account(&entry.name);
            claim.release();
            Err(RunAsError::Io {
                action: "write",
                path,
                source,
            })
        }
    }
}

static UNSYNCED_RECORDS: std::sync::Mutex<Vec<(PathBuf, Claim)>> =
    std::sync::Mutex::new(Vec::new());

/// Waits until the `.kip/account` files [`take_project_account`] wrote are durable (their fsyncs, started when
/// they were written, are settled), then lets go of the spares' claims: the record is now what keeps the account.
pub fn sync_recorded_accounts() -> Result<(), RunAsError> {
    let records = std::mem::take(
        &mut *UNSYNCED_RECORDS
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()),
    );
    let Some((first, _)) = records.first() else {
        return Ok(());
    };
    crate::fsutil::settle().map_err(|source| RunAsError::Io {
        action: "write",
        path: first.clone(),
        source,
    })?;
    for (_, claim) in records {
        claim.release();
    }
    Ok(())
}

/// A spare account taken by this process and not yet durably recorded by its project: `taken/<name>` among the
/// spares, naming the project, under an exclusive `flock` for as long as this process holds it. A taker killed
/// before its record was durable leaves the file unlocked, and the next preparer or prune deletes the account
/// unless the project's `.kip/account` names it ([`SpareAccounts::remove_abandoned`]): an account no record
/// names is never left behind.
#[derive(Debug)]
struct Claim {
    path: PathBuf,
    // Holds the lock; closed (and so unlocked) only after the file is removed.
    _file: std::fs::File,
}

impl Claim {
    /// Lets go: the file removed while still locked, so that no one finds it unlocked and in place.
    fn release(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether spare accounts are turned off (`KIP_SPARE_ACCOUNTS=0`): no account is made ahead of time, by the
/// detached `kip prepare-account` or by a spare's preparer.
pub fn spare_accounts_off() -> bool {
    std::env::var_os("KIP_SPARE_ACCOUNTS").is_some_and(|value| value == "0")
}

/// System accounts made ahead of time, so that the first apply of a new project as root takes one instead of
/// waiting for `useradd` (8–25 ms here: it fsyncs the four account files a dozen times). They are kept in the cache
/// (`accounts/spare/<name>`, an empty file per account, written once the account exists); a project takes one by
/// moving its file to `taken/` under a lock, which only one taker can do, records its name in `.kip/account`, and
/// removes the claim once the record is durable (a taker killed in between leaves a claim the next preparer
/// settles: [`Claim`]). At most one waits at a time: a detached `kip prepare-account` makes the next after a command
/// took one. `kip cache prune` deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpareAccounts {
    dir: PathBuf,
}

impl SpareAccounts {
    /// The spare accounts kept in the cache `cache`.
    pub fn in_cache(cache: &Path) -> SpareAccounts {
        SpareAccounts {
            dir: cache.join("accounts"),
        }
    }

    /// Where they are kept (the argument of `kip prepare-account`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn at(dir: &Path) -> SpareAccounts {
        SpareAccounts {
            dir: dir.to_owned(),
        }
    }

    fn names_in(&self, kind: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.join(kind)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| is_kip_account(name))
            .collect()
    }

    /// The account the next new project would take (the first spare whose account exists), as (uid, gid); `None`
    /// when none waits. For a spare data directory whose own account was deleted while it was prepared.
    pub fn waiting(&self) -> Option<(u32, u32)> {
        self.names_in("spare").into_iter().find_map(|name| {
            lookup_local_user(&name)
                .ok()
                .flatten()
                .filter(|entry| entry.uid != 0)
                .map(|entry| (entry.uid, entry.gid))
        })
    }

    /// Takes a spare account for the project in `project_dir`: its file locked, made to name the project and moved
    /// to `taken/` (by this taker alone), and the account still there, unprivileged. The claim stays locked until
    /// the project's record of the account is durable ([`Claim`]).
    fn take(&self, project_dir: &Path) -> Option<(PasswdEntry, Claim)> {
        use std::io::Write as _;
        let names = self.names_in("spare");
        if names.is_empty() {
            return None;
        }
        let taken = self.dir.join("taken");
        if let Err(error) = make_private_dir(&taken) {
            tracing::debug!("cannot make {}: {error}", taken.display());
            return None;
        }
        for name in names {
            let spare = self.dir.join("spare").join(&name);
            let Ok(mut file) = std::fs::OpenOptions::new().write(true).open(&spare) else {
                continue;
            };
            // Another taker has it (its rename below fails for every later one).
            if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_err()
            {
                continue;
            }
            let named = file
                .set_len(0)
                .and_then(|()| file.write_all(project_dir.as_os_str().as_encoded_bytes()));
            let path = taken.join(&name);
            if named.is_err() || std::fs::rename(&spare, &path).is_err() {
                continue;
            }
            let claim = Claim { path, _file: file };
            match lookup_local_user(&name) {
                Ok(Some(entry)) if entry.uid != 0 => return Some((entry, claim)),
                _ => {
                    tracing::debug!("the spare account `{name}` is gone");
                    claim.release();
                }
            }
        }
        None
    }

    /// Notes that the project in `project_dir` runs its engines as its own account `name` (`users/<name>/`, a file
    /// per project naming its directory), so that a prune can tell an account whose projects are all gone
    /// ([`SpareAccounts::prune`]). Written once per project and account, without an fsync (a note lost to a power
    /// loss only keeps an account longer); a failure is logged, never fatal.
    pub fn note_user(&self, name: &str, project_dir: &Path) {
        if !is_kip_account(name) || rustix::process::geteuid().as_raw() != 0 {
            return;
        }
        let digest =
            <sha2::Sha256 as sha2::Digest>::digest(project_dir.as_os_str().as_encoded_bytes());
        let users = self.dir.join("users").join(name);
        let note = users.join(hex(&digest[..8]));
        if note.exists() {
            return;
        }
        let written = make_private_dir(&self.dir.join("users"))
            .and_then(|()| make_private_dir(&users))
            .and_then(|()| {
                crate::fsutil::write_private_unsynced(
                    &note,
                    project_dir.as_os_str().as_encoded_bytes(),
                    None,
                )
            });
        if let Err(error) = written {
            tracing::debug!("cannot note {}: {error}", note.display());
        }
    }

    /// Deletes the accounts noted in `users/` whose projects are all gone (no `.kip/` left, or one that names another
    /// account now) and that no process runs as (called with the lock held). Returns how many it deleted.
    fn remove_unused(&self) -> usize {
        use std::os::unix::ffi::OsStringExt as _;
        let users = self.dir.join("users");
        let Ok(entries) = std::fs::read_dir(&users) else {
            return 0;
        };
        let mut removed = 0;
        for name in entries
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| is_kip_account(name))
        {
            let notes = users.join(&name);
            let projects: Vec<PathBuf> = std::fs::read_dir(&notes)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter_map(|entry| std::fs::read(entry.path()).ok())
                        .map(|bytes| PathBuf::from(std::ffi::OsString::from_vec(bytes)))
                        .collect()
                })
                .unwrap_or_default();
            let in_use = projects
                .iter()
                .any(|project| project.join(".kip").is_dir() && project_account(project) == name);
            if in_use {
                continue;
            }
            match lookup_local_user(&name) {
                Ok(Some(entry)) if entry.uid != 0 => {
                    if crate::supervisor::running_as(entry.uid) {
                        continue;
                    }
                    delete_account(&name);
                    if matches!(lookup_local_user(&name), Ok(None)) {
                        removed += 1;
                        let _ = std::fs::remove_dir_all(&notes);
                    }
                }
                Ok(None) => {
                    let _ = std::fs::remove_dir_all(&notes);
                }
                _ => {}
            }
        }
        removed
    }

    /// Deletes the accounts that takers killed before their project durably recorded them left in `taken/` (an
    /// unlocked file whose project's `.kip/account` does not name it); a claim still locked is a taker at work.
    fn remove_abandoned(&self) {
        use std::os::unix::ffi::OsStringExt as _;
        use std::os::unix::fs::MetadataExt as _;
        for name in self.names_in("taken") {
            let path = self.dir.join("taken").join(&name);
            let Ok(file) = std::fs::File::open(&path) else {
                continue;
            };
            if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_err()
            {
                continue;
            }
            // A taker that finished between the open and the lock removed the file: nothing left to do.
            let same = match (file.metadata(), std::fs::metadata(&path)) {
                (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
                _ => false,
            };
            if !same {
                continue;
            }
            let project = std::fs::read(&path).unwrap_or_default();
            let recorded = !project.is_empty()
                && recorded_account(
                    &Path::new(&std::ffi::OsString::from_vec(project)).join(".kip"),
                )
                .as_deref()
                    == Some(name.as_str());
            if !recorded && matches!(lookup_local_user(&name), Ok(Some(_))) {
                tracing::debug!(
                    "deleting `{name}`: taken by a kip that was killed before its project recorded it"
                );
                delete_account(&name);
            }
            let _ = std::fs::remove_file(&path);
        }
    }

    /// The preparers' lock: held while one makes an account and while a prune deletes them.
    fn lock(&self, wait: bool) -> io::Result<Option<std::fs::File>> {
        use std::os::unix::fs::OpenOptionsExt as _;
        for kind in ["spare", "pending"] {
            make_private_dir(&self.dir.join(kind))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join(".lock"))?;
        let operation = if wait {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::NonBlockingLockExclusive
        };
        match rustix::fs::flock(&file, operation) {
            Ok(()) => Ok(Some(file)),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(errno) => Err(errno.into()),
        }
    }

    /// [`SpareAccounts::lock`] without blocking, tried again until `limit` has passed. The lock can be held for a
    /// moment by a process that is not a preparer at work: a child that a preparer forked to run `useradd` shares
    /// the lock from the fork to its exec, also when the preparer was killed meanwhile. A preparer that gave up at
    /// once then made no spare, though no other preparer was making one.
    fn lock_within(&self, limit: std::time::Duration) -> io::Result<Option<std::fs::File>> {
        let started = std::time::Instant::now();
        loop {
            if let Some(file) = self.lock(false)? {
                return Ok(Some(file));
            }
            if started.elapsed() >= limit {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Makes one spare account, unless one is waiting already or another preparer is at it (as root only). An
    /// account is named in `pending/` before `useradd` and moved to `spare/` once it exists, so that a preparer
    /// killed halfway leaves a name the next one (or a prune) deletes, never an account no one knows of.
    pub fn prepare(&self) -> Result<(), RunAsError> {
        if rustix::process::geteuid().as_raw() != 0 {
            return Ok(());
        }
        let io_error = |source| RunAsError::Io {
            action: "prepare a spare account in",
            path: self.dir.clone(),
            source,
        };
        let Some(_lock) = self.lock_within(PREPARER_LOCK_WAIT).map_err(io_error)? else {
            return Ok(());
        };
        self.remove_pending();
        self.remove_abandoned();
        let mut waiting = false;
        for name in self.names_in("spare") {
            if lookup_local_user(&name)?.is_some() {
                waiting = true;
            } else {
                let _ = std::fs::remove_file(self.dir.join("spare").join(&name));
            }
        }
        if waiting {
            return Ok(());
        }
        let name = loop {
            let mut bytes = [0u8; 4];
            getrandom::getrandom(&mut bytes)
                .map_err(|error| io_error(io::Error::other(error.to_string())))?;
            let name = format!("kip-{}", hex(&bytes));
            if lookup_user(&name)?.is_none() {
                break name;
            }
        };
        let pending = self.dir.join("pending").join(&name);
        std::fs::write(&pending, b"").map_err(io_error)?;
        create_default_account(&name)?;
        std::fs::rename(&pending, self.dir.join("spare").join(&name)).map_err(io_error)?;
        tracing::debug!("made the spare account `{name}`");
        Ok(())
    }

    /// Deletes the accounts whose preparer was killed before it was done (called with the lock held).
    /// The `useradd` a killed preparer started goes on without it: waited for (up to 10 s) before the account is
    /// looked for, so that it cannot create the account after it was found missing.
    fn remove_pending(&self) {
        for name in self.names_in("pending") {
            wait_for_account_tools(&name, std::time::Duration::from_secs(10));
            if matches!(lookup_local_user(&name), Ok(Some(_))) {
                delete_account(&name);
            }
            let _ = std::fs::remove_file(self.dir.join("pending").join(&name));
        }
    }

    /// Deletes every spare account and what killed preparers left, once a preparer at work is done, and the
    /// accounts of projects that are gone ([`SpareAccounts::note_user`]) (as root only). Returns how many spare
    /// accounts it deleted, and how many of gone projects.
    pub fn prune(&self) -> Result<(usize, usize), RunAsError> {
        if rustix::process::geteuid().as_raw() != 0 || !self.dir.exists() {
            return Ok((0, 0));
        }
        let Some(_lock) = self.lock(true).map_err(|source| RunAsError::Io {
            action: "lock",
            path: self.dir.clone(),
            source,
        })?
        else {
            return Ok((0, 0));
        };
        self.remove_pending();
        self.remove_abandoned();
        let unused = self.remove_unused();
        let mut removed = 0;
        for name in self.names_in("spare") {
            if std::fs::remove_file(self.dir.join("spare").join(&name)).is_ok()
                && lookup_local_user(&name)?.is_some()
            {
                delete_account(&name);
                removed += 1;
            }
        }
        Ok((removed, unused))
    }
}

/// Makes `dir` 0700, and its missing parents as any directory is made (the cache holding the accounts must stay
/// reachable for the engines' accounts).
fn make_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        made => made,
    }
}

/// Waits until no process creating or deleting the account `name` runs (`useradd`, `adduser`, `userdel`, `deluser`
/// with `name` among their arguments, from /proc), or `limit` passed.
fn wait_for_account_tools(name: &str, limit: std::time::Duration) {
    let started = std::time::Instant::now();
    while started.elapsed() < limit && account_tool_running(name) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn account_tool_running(name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            return false;
        };
        let mut args = cmdline.split(|&byte| byte == 0);
        let tool = args
            .next()
            .and_then(|program| program.rsplit(|&byte| byte == b'/').next())
            .unwrap_or_default();
        matches!(tool, b"useradd" | b"adduser" | b"userdel" | b"deluser")
            && args.any(|arg| arg == name.as_bytes())
    })
}

/// How long a preparer waits for the preparers' lock before it leaves the spare to the one holding it: longer than
/// a `useradd` takes on a busy machine, short enough that preparers wanting the lock at once never pile up.
const PREPARER_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

static WANTED_SPARE_ACCOUNTS: std::sync::Mutex<Vec<SpareAccounts>> =
    std::sync::Mutex::new(Vec::new());

fn want_spare_account(spares: &SpareAccounts) {
    let mut wanted = WANTED_SPARE_ACCOUNTS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    if !wanted.contains(spares) {
        wanted.push(spares.clone());
    }
}

/// The spare accounts this process's applies took or would have taken, once each: the caller makes the next one
/// after its own work (the CLI: a detached `kip prepare-account`, so no command waits for `useradd`).
pub fn take_wanted_spare_accounts() -> Vec<SpareAccounts> {
    std::mem::take(
        &mut *WANTED_SPARE_ACCOUNTS
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()),
    )
}

/// Creates kip's own system account: no home, no login shell. Tries `useradd` (most distributions), then
/// Debian's `adduser`, then BusyBox's `adduser` (Alpine).
fn create_default_account(name: &str) -> Result<PasswdEntry, RunAsError> {
    let shell = ["/usr/sbin/nologin", "/sbin/nologin"]
        .into_iter()
        .find(|shell| Path::new(shell).exists())
        .unwrap_or("/bin/false");
    let attempts: [(&str, Vec<&str>); 3] = [
        (
            "useradd",
            vec![
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                shell,
                name,
            ],
        ),
        (
            "adduser",
            vec![
                "--system",
                "--group",
                "--no-create-home",
                "--home",
                "/nonexistent",
                "--shell",
                shell,
                name,
            ],
        ),
        (
            "adduser",
            vec!["-S", "-D", "-H", "-h", "/nonexistent", "-s", shell, name],
        ),
    ];
    // Several kips (or tests) creating accounts at once contend for the lock on /etc/passwd: try a few times.
    for attempt in 0..20 {
        match try_create_account(name, &attempts) {
            Ok(entry) => return Ok(entry),
            Err(error) if attempt < 19 && error.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(50 + 25 * attempt));
            }
            Err(error) => return Err(error),
        }
    }
    unreachable!("the last attempt returns")
}

fn try_create_account(
    name: &str,
    attempts: &[(&str, Vec<&str>); 3],
) -> Result<PasswdEntry, RunAsError> {
    let mut failures = Vec::new();
    for (program, args) in attempts.iter() {
        let (program, args) = (*program, args);
        match Command::new(program).args(args).output() {
            Ok(output) if output.status.success() => {
                if let Some(entry) = lookup_user(name)? {
                    tracing::info!(
                        "created the system account `{name}` (uid {}) to run engines as, since kip runs as root; \
                         set KIP_RUN_AS or run_as to use another account",
                        entry.uid
                    );
                    return Ok(entry);
                }
                failures.push(format!(
                    "`{program}` succeeded but the account is still missing"
                ));
            }
            Ok(output) => {
                // Another kip may have created it at the same moment: then its useradd fails and that is fine.
                if let Some(entry) = lookup_user(name)? {
                    return Ok(entry);
                }
                let stderr = String::from_utf8_lossy(&output.stderr);
                failures.push(format!(
                    "`{program} {}` failed ({}): {}",
                    args.join(" "),
                    output.status,
                    stderr.trim()
                ));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                failures.push(format!("`{program}` is not installed"));
            }
            Err(error) => failures.push(format!("cannot run `{program}`: {error}")),
        }
    }
    Err(RunAsError::CreateUser {
        user: name.to_owned(),
        reason: failures.join("; "),
    })
}

/// Removes the project's own account (see [`project_account`]) once nothing of the project runs or stays: what kip
/// created for a project goes with it. Only kip's per-project accounts are ever removed, and only as root;
/// failures are logged (an account left behind owns nothing).
pub fn remove_project_account(project_dir: &Path) {
    if rustix::process::geteuid().as_raw() != 0 {
        return;
    }
    let name = project_account(project_dir);
    if matches!(lookup_local_user(&name), Ok(Some(_))) {
        delete_account(&name);
    }
    // The record goes with the account (kept while an account that could not be deleted still stands).
    if matches!(lookup_local_user(&name), Ok(None)) {
        let _ = std::fs::remove_file(project_dir.join(".kip").join(ACCOUNT_FILE));
    }
}

/// Deletes the account `name` (only ever one of kip's form), and what it owned in `/dev/shm`; logs a failure (an
/// account left behind owns nothing more).
fn delete_account(name: &str) {
    if !is_kip_account(name) {
        return;
    }
    let uid = lookup_local_user(name)
        .ok()
        .flatten()
        .map(|entry| entry.uid)
        // Never root's, whatever an account of kip's form was made with.
        .filter(|&uid| uid != 0);
    for attempt in 0..20u64 {
        // In the C locale, so that its messages are the ones looked for below.
        match Command::new("userdel")
            .arg(name)
            .env("LC_ALL", "C")
            .output()
        {
            Ok(output) if output.status.success() => {
                if let Some(uid) = uid {
                    remove_shared_memory_of(Path::new(SHARED_MEMORY_DIR), uid);
                }
                return;
            }
            // Another user tool holds the account files' lock, or a process still runs as the account (userdel's
            // exit status 8): the background preparation of a spare for it (PostgreSQL in single-user mode, well
            // under a second). Both end by themselves; tried again for up to ~6 s.
            Ok(output)
                if output.status.code() == Some(8)
                    || String::from_utf8_lossy(&output.stderr).contains("lock") =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50 + 25 * attempt));
            }
            Ok(output) => {
                tracing::warn!(
                    "cannot remove the account `{name}`: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                return;
            }
            Err(error) => {
                tracing::warn!("cannot run userdel for `{name}`: {error}");
                return;
            }
        }
    }
}

/// Where POSIX shared memory and semaphores live as files.
const SHARED_MEMORY_DIR: &str = "/dev/shm";

/// Removes the regular files directly in `dir` that `uid` owns: the POSIX shared memory and semaphores of an
/// account that was just deleted. An engine SIGKILLed before its instance was destroyed leaves them (PostgreSQL's
/// dynamic shared memory, `PostgreSQL.<n>`, which only the next start on the same data directory would remove);
/// nothing of the account runs any more (`userdel` refuses while anything does), and an account that later gets
/// the same uid must not find them readable. Symlinks and directories are left alone.
fn remove_shared_memory_of(dir: &Path, uid: u32) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let owned = std::fs::symlink_metadata(&path)
            .is_ok_and(|metadata| metadata.file_type().is_file() && metadata.uid() == uid);
        if owned && let Err(error) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), "cannot remove a deleted account's shared memory: {error}");
        }
    }
}

/// Checks that `run_as` can traverse every directory leading to `path` (and `path` itself when it exists), both
/// along the path as written and along its canonical form (symlinks resolved).
///
/// Only mode bits are considered (owner, primary group, other); ACLs are not. Directories that do not exist yet are
/// skipped: kip creates them with a mode that lets the account through.
pub fn ensure_reachable(path: &Path, run_as: &RunAs) -> Result<(), RunAsError> {
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|source| RunAsError::Read {
                path: PathBuf::from("."),
                source,
            })?
            .join(path)
    };
    let mut chains = vec![prefixes(&absolute)];
    if let Some(existing) = absolute.ancestors().find(|ancestor| ancestor.exists())
        && let Ok(canonical) = std::fs::canonicalize(existing)
    {
        chains.push(prefixes(&canonical));
    }
    for directory in chains.into_iter().flatten() {
        let metadata = match std::fs::metadata(&directory) {
            Ok(metadata) => metadata,
            Err(source) if source.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(RunAsError::Read {
                    path: directory,
                    source,
                });
            }
        };
        if !metadata.is_dir() {
            continue;
        }
        use std::os::unix::fs::MetadataExt as _;
        let (mode, owner, group) = (metadata.mode() & 0o7777, metadata.uid(), metadata.gid());
        if !can_traverse(mode, owner, group, run_as) {
            return Err(RunAsError::Unreachable {
                user: run_as.user.clone(),
                path: path.to_owned(),
                blocking: directory,
                mode,
                owner,
                group,
            });
        }
    }
    Ok(())
}

/// Every prefix of an absolute path, from `/` to the path itself, with `..` and `.` left as written (the kernel
/// checks each directory it walks through, so must we).
fn prefixes(path: &Path) -> Vec<PathBuf> {
    let mut current = PathBuf::new();
    let mut out = Vec::new();
    for component in path.components() {
        current.push(component.as_os_str());
        if !matches!(component, Component::CurDir) {
            out.push(current.clone());
        }
    }
    out
}

/// The kernel's rule for search (x) permission on a directory: the owner's bits if the account owns it, else the
/// group's if it is the account's (primary) group, else the others' bits. Root passes everything.
fn can_traverse(mode: u32, owner: u32, group: u32, run_as: &RunAs) -> bool {
    if run_as.uid == 0 {
        return true;
    }
    if owner == run_as.uid {
        mode & 0o100 != 0
    } else if group == run_as.gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// Gives `path` and everything under it to `run_as` (uid and primary group), without following symlinks.
pub fn chown_tree(path: &Path, run_as: &RunAs) -> Result<(), RunAsError> {
    let fail = |path: &Path, source: io::Error| RunAsError::Chown {
        user: run_as.user.clone(),
        path: path.to_owned(),
        source,
    };
    std::os::unix::fs::lchown(path, Some(run_as.uid), Some(run_as.gid))
        .map_err(|source| fail(path, source))?;
    let metadata = std::fs::symlink_metadata(path).map_err(|source| fail(path, source))?;
    if !metadata.is_dir() {
        return Ok(());
    }
    let mut pending = vec![path.to_owned()];
    while let Some(directory) = pending.pop() {
        let entries = std::fs::read_dir(&directory).map_err(|source| fail(&directory, source))?;
        for entry in entries {
            let entry = entry.map_err(|source| fail(&directory, source))?;
            let child = entry.path();
            std::os::unix::fs::lchown(&child, Some(run_as.uid), Some(run_as.gid))
                .map_err(|source| fail(&child, source))?;
            if entry
                .file_type()
                .map_err(|source| fail(&child, source))?
                .is_dir()
            {
                pending.push(child);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A project's note names its directory byte for byte, whatever the name holds (quotes, spaces, unicode, shell
    /// metacharacters): a prune keeps the account while that project's `.kip/` names it, and drops the note once the
    /// project is gone (here the account itself does not exist, so nothing is deleted). As root only: only root
    /// notes accounts.
    #[test]
    fn a_note_names_a_hostile_project_directory_and_goes_with_the_project() {
        if rustix::process::geteuid().as_raw() != 0 {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let project = root.path().join("pro ject \"q\" 'x' ü $(id) ;&|*");
        std::fs::create_dir_all(project.join(".kip")).unwrap();
        let name = derived_account(&project);
        assert!(lookup_local_user(&name).unwrap().is_none(), "{name} exists");
        let spares = SpareAccounts::in_cache(&root.path().join("cache"));
        spares.note_user(&name, &project);
        let notes = spares.dir().join("users").join(&name);
        let noted: Vec<Vec<u8>> = std::fs::read_dir(&notes)
            .unwrap()
            .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
            .collect();
        assert_eq!(noted, [project.as_os_str().as_encoded_bytes()]);
        assert_eq!(spares.remove_unused(), 0);
        assert!(notes.exists(), "kept while the project names the account");
        std::fs::remove_dir_all(&project).unwrap();
        assert_eq!(spares.remove_unused(), 0);
        assert!(!notes.exists(), "dropped with the project");
    }

    /// A deleted account's files in the shared-memory directory go; its symlinks and directories, and every other
    /// account's file, stay.
    #[test]
    fn a_deleted_accounts_shared_memory_goes_and_nothing_else() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        let own = std::fs::metadata(dir.path()).unwrap().uid();
        std::fs::write(dir.path().join("PostgreSQL.1234"), b"segment").unwrap();
        std::fs::write(dir.path().join("sem.lock"), b"semaphore").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        // Another account's file, where the test may give one away (as root).
        let theirs = dir.path().join("PostgreSQL.5678");
        std::fs::write(&theirs, b"theirs").unwrap();
        let given_away = std::os::unix::fs::chown(&theirs, Some(own + 1), None).is_ok();
        remove_shared_memory_of(dir.path(), own);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        if given_away {
            assert_eq!(left, ["PostgreSQL.5678", "link", "sub"]);
        } else {
            assert_eq!(left, ["link", "sub"]);
        }
        assert!(outside.path().exists(), "the symlink's target stays");
    }

    #[test]
    fn a_project_s_recorded_account_is_believed_only_from_kip_s_own_private_file_and_of_kip_s_form()
    {
        let project = tempfile::tempdir().unwrap();
        let derived = derived_account(project.path());
        assert!(is_kip_account(&derived), "{derived}");
        assert_eq!(project_account(project.path()), derived, "nothing recorded");
        let kip_dir = project.path().join(".kip");
        std::fs::create_dir(&kip_dir).unwrap();
        let file = kip_dir.join(ACCOUNT_FILE);
        std::fs::write(&file, "kip-0badcafe\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(project_account(project.path()), "kip-0badcafe");
        // Writable by others: anyone could have put any name there.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(project_account(project.path()), derived);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        // kip's own file in a .kip/ others may write: it could have been linked or moved there.
        std::fs::set_permissions(&kip_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(project_account(project.path()), derived);
        std::fs::set_permissions(&kip_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(project_account(project.path()), "kip-0badcafe");
        for name in [
            "root",
            "kip",
            "kip-0BADCAFE",
            "kip-0badcafe0",
            "kip-0badcaf",
            "kip-0badcafe x",
            "kip-../etc",
            "",
        ] {
            std::fs::write(&file, name).unwrap();
            assert_eq!(project_account(project.path()), derived, "{name:?}");
        }
        // A symlink to a file kip would believe is not the file itself.
        let elsewhere = project.path().join("elsewhere");
        std::fs::write(&elsewhere, "kip-0badcafe").unwrap();
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        assert_eq!(project_account(project.path()), derived);
    }

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin

+nisuser::::::
broken line
baduid:x:notanumber:5:::/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\r
kip:x:998:997::/nonexistent:/usr/sbin/nologin
";

    #[test]
    fn passwd_parsing_keeps_good_lines_and_skips_the_rest() {
        let entries = parse_passwd(PASSWD);
        let names: Vec<&str> = entries.iter().map(|entry| entry.name.as_str()).collect();
        assert_eq!(names, ["root", "daemon", "nobody", "kip"]);
        let nobody = &entries[2];
        assert_eq!((nobody.uid, nobody.gid), (65534, 65534));
        assert_eq!(
            nobody.shell, "/usr/sbin/nologin",
            "a CRLF line ending is not part of the shell"
        );
        assert_eq!(
            entries[3].run_as(),
            RunAs {
                user: "kip".into(),
                uid: 998,
                gid: 997
            }
        );
    }

    #[test]
    fn lookup_reads_the_given_file_without_getent() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, PASSWD).unwrap();
        let found = lookup_user_with(&passwd, "kip", |entry| entry.name == "kip", None).unwrap();
        assert_eq!(found.map(|entry| entry.uid), Some(998));
        let missing =
            lookup_user_with(&passwd, "ghost", |entry| entry.name == "ghost", None).unwrap();
        assert_eq!(missing, None);
    }

    #[test]
    fn traversal_follows_owner_group_other_bits() {
        let account = RunAs {
            user: "someone".into(),
            uid: 1000,
            gid: 1000,
        };
        assert!(can_traverse(0o755, 0, 0, &account));
        assert!(can_traverse(0o711, 0, 0, &account));
        assert!(!can_traverse(0o700, 0, 0, &account));
        assert!(!can_traverse(0o750, 0, 0, &account));
        assert!(can_traverse(0o750, 0, 1000, &account), "group member");
        assert!(can_traverse(0o700, 1000, 0, &account), "owner");
        assert!(
            !can_traverse(0o607, 1000, 0, &account),
            "the owner's bits win over the others'"
        );
        assert!(can_traverse(
            0o000,
            5,
            5,
            &RunAs {
                user: "root".into(),
                uid: 0,
                gid: 0
            }
        ));
    }

    #[test]
    fn a_closed_ancestor_is_named_with_a_hint() {
        let me = rustix::process::geteuid().as_raw();
        let my_gid = rustix::process::getegid().as_raw();
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let closed = root.path().join("closed");
        let data = closed.join("project/.kip/data");
        std::fs::create_dir_all(&data).unwrap();
        for directory in [&closed.join("project/.kip"), &closed.join("project")] {
            std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();

        // Someone else (not the owner, not in the group) is stopped at `closed`, even for paths not created yet.
        let stranger = RunAs {
            user: "stranger".into(),
            uid: me.wrapping_add(4242),
            gid: my_gid.wrapping_add(4242),
        };
        // The temp dir's own ancestors (e.g. /tmp) must be open for this test to mean anything.
        if ensure_reachable(root.path(), &stranger).is_ok() {
            for target in [data.clone(), data.join("not/yet/created")] {
                let error = ensure_reachable(&target, &stranger).unwrap_err();
                match &error {
                    RunAsError::Unreachable { blocking, mode, .. } => {
                        assert_eq!(blocking, &closed);
                        assert_eq!(*mode, 0o700);
                    }
                    other => panic!("unexpected error: {other}"),
                }
                assert!(error.to_string().contains("cannot reach"), "{error}");
                assert!(error.hint().unwrap().contains("/var/lib or /tmp"));
            }
            // o+x is enough to traverse, no read permission needed.
            std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
            ensure_reachable(&data, &stranger).unwrap();
            std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        }

        // The owner gets through its own 0700 directory.
        let owner = RunAs {
            user: "me".into(),
            uid: me,
            gid: my_gid,
        };
        ensure_reachable(&data, &owner).unwrap();
    }

    #[test]
    fn chown_tree_to_ourselves_walks_everything() {
        let me = RunAs {
            user: "me".into(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        };
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/b")).unwrap();
        std::fs::write(root.path().join("a/b/file"), "x").unwrap();
        std::os::unix::fs::symlink("/nonexistent/target", root.path().join("a/dangling")).unwrap();
        chown_tree(root.path(), &me).unwrap();
    }

    #[test]
    fn prefixes_start_at_the_root() {
        assert_eq!(
            prefixes(Path::new("/var/lib/kip")),
            [
                Path::new("/"),
                Path::new("/var"),
                Path::new("/var/lib"),
                Path::new("/var/lib/kip")
            ]
        );
    }
}
