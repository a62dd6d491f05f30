//! `.kip/state.json`: what kip made exist, so the next plan can compare it with the configuration.
//!
//! It records, per instance (keyed by its typed address), the engine, the resolved version, where its data,
//! sockets and logs live, the secrets kip generated, the ports it allocated, its attributes and objects as last
//! applied (real values: the state is the one place secrets live, which is why it is 0600), and its lifecycle
//! flags. A format 1 state (kip 0.1) is migrated when read. Writes are atomic (temp file, fsync,
//! rename) with mode 0600, because generated secrets live only here. Every write bumps `serial`; `lineage` is
//! fixed when the state is first created, so a plan file can tell it is applied to the same state it was made
//! from. A [`StateLock`] keeps two kips from changing it at once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::address::Address;

pub const STATE_FORMAT: u32 = 2;
pub const STATE_FILE: &str = "state.json";
pub const LOCK_FILE: &str = "state.lock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub format_version: u32,
    pub serial: u64,
    pub lineage: String,
    #[serde(default)]
    pub instances: BTreeMap<Address, InstanceState>,
}

/// One instance kip made exist. `O` is how its objects are read: as they are, or skipped
/// ([`State::instances_without_objects`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceState<O = BTreeMap<Address, ObjectState>> {
    pub engine: String,
    /// The declared spec ("16") and the full version it resolved to ("16.14.0"); none for unversioned engines.
    #[serde(default)]
    pub spec: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    /// The toolchain the instance runs from.
    #[serde(default)]
    pub toolchain: Option<PathBuf>,
    /// The instance's own directory (holding `data/` and `run/`), removed by destroy.
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    /// The run-as account, when kip switched to one.
    #[serde(default)]
    pub run_as: Option<crate::engine::RunAs>,
    /// Generated secrets by name; never printed.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Loopback ports allocated to the instance, by name.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// The instance's own attributes as last applied, with real values.
    #[serde(default)]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// Which of them are sensitive.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub sensitive: BTreeSet<String>,
    /// Objects kip created or converged, with their attributes as last applied.
    #[serde(default)]
    pub objects: O,
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// The instances it depends on (they are destroyed after it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Address>,
    /// Remembered from the configuration, so that removing a protected block is refused, not obeyed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prevent_destroy: bool,
}

/// Where an instance is in its life, as explicit flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// The engine's after-start step ran (once in the life of an instance: it secures access).
    #[serde(default)]
    pub initialized: bool,
    /// A job that exited 0 with the attributes last applied: it does not run again until they change.
    #[serde(default)]
    pub succeeded: bool,
    /// The instance's first provisioning started and did not finish (its kip was killed before the state had
    /// what provisioning generated): what it wrote was never used by a process, and the next apply or `kip up`
    /// provisions it again as the first time ([`crate::engine::InstanceCtx::provision_unfinished`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provisioning: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectState {
    pub kind: String,
    pub attributes: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub sensitive: BTreeSet<String>,
    /// Remembered from the configuration, so that removing a protected block is refused, not obeyed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prevent_destroy: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a kip state file (line {line}, column {column})", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        column: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} has state format {found}; this kip reads format {STATE_FORMAT}", path.display())]
    Format { path: PathBuf, found: u32 },
    #[error("the state is locked by kip process {pid} (since {since}); gave up after {waited:?}")]
    Locked {
        pid: u32,
        since: String,
        waited: Duration,
    },
}

impl StateError {
    pub fn hint(&self) -> Option<String> {
        match self {
            StateError::Locked { .. } => Some(
                "another kip is changing this project; wait for it, or raise --lock-timeout. A lock whose process \
                 is gone is broken automatically"
                    .into(),
            ),
            StateError::Malformed { .. } => {
                Some("the state was edited by hand or damaged; restore it from .kip/state.json.backup".into())
            }
            StateError::Format { .. } => Some("upgrade kip to read this state".into()),
            StateError::Io { .. } => None,
        }
    }
}

/// What [`State::instances_without_objects`] read.
#[derive(Debug)]
pub struct InstancesRead {
    /// The state's serial and lineage: which state it was.
    pub version: (u64, String),
    pub instances: BTreeMap<Address, InstanceState<serde::de::IgnoredAny>>,
}

impl State {
    pub fn new() -> State {
        State {
            format_version: STATE_FORMAT,
            serial: 0,
            lineage: new_lineage(),
            instances: BTreeMap::new(),
        }
    }

    /// The instances of the state in `kip_dir` without their objects, which are skipped, never built: what it
    /// takes to reach the running instances, read in a fraction of the whole state's time. `None` when the state is
    /// missing, unreadable or of another format; [`State::read`] then says why.
    pub fn instances_without_objects(kip_dir: &Path) -> Option<InstancesRead> {
        #[derive(Deserialize)]
        struct Instances {
            format_version: u32,
            serial: u64,
            lineage: String,
            #[serde(default)]
            instances: BTreeMap<Address, InstanceState<serde::de::IgnoredAny>>,
        }
        let bytes = std::fs::read(kip_dir.join(STATE_FILE)).ok()?;
        let read: Instances = serde_json::from_slice(&bytes).ok()?;
        (read.format_version == STATE_FORMAT).then_some(InstancesRead {
            version: (read.serial, read.lineage),
            instances: read.instances,
        })
    }

    /// Reads the state in `kip_dir`; a missing file is a new, empty state.
    pub fn read(kip_dir: &Path) -> Result<State, StateError> {
        let path = kip_dir.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(State::new()),
            Err(source) => {
                return Err(StateError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        #[derive(Deserialize)]
        struct Probe {
            format_version: u32,
        }
        let malformed = |source: serde_json::Error| StateError::Malformed {
            path: path.clone(),
            line: source.line(),
            column: source.column(),
            source,
        };
        // Read as this format first: the version is looked at alone (a second pass over the whole file) only
        // when that fails or finds another version.
        let parsed = match serde_json::from_slice::<State>(&bytes) {
            Ok(state) if state.format_version == STATE_FORMAT => return Ok(state),
            parsed => parsed,
        };
        let probe: Probe = serde_json::from_slice(&bytes).map_err(malformed)?;
        if probe.format_version == 1 {
            let old: serde_json::Value = serde_json::from_slice(&bytes).map_err(malformed)?;
            return Ok(migrate::from_v1(old));
        }
        if probe.format_version != STATE_FORMAT {
            return Err(StateError::Format {
                path,
                found: probe.format_version,
            });
        }
        parsed.map_err(malformed)
    }

    /// Writes the state atomically with mode 0600, bumping the serial, keeping the previous file as a backup, and
    /// durably (fsynced, with its directory).
    pub fn write(&mut self, kip_dir: &Path) -> Result<(), StateError> {
        self.store(kip_dir, true)
    }

    /// [`State::write`] without the fsyncs, for the steps of an apply: atomic (a temp file renamed over the
    /// state), so any process reads either the old state or the new one, also after kip is killed; a power loss
    /// may keep an earlier one until [`State::sync`] has run, which apply does once at its end. On ext4 (its
    /// default `auto_da_alloc`) a file renamed over another is written out before the rename is, so even then it
    /// is never half-written.
    pub fn checkpoint(&mut self, kip_dir: &Path) -> Result<(), StateError> {
        self.store(kip_dir, false)
    }

    /// Makes what [`State::checkpoint`] wrote durable: fsyncs the state file and its directory.
    pub fn sync(kip_dir: &Path) -> Result<(), StateError> {
        let path = kip_dir.join(STATE_FILE);
        settle_owed(&path)?;
        crate::fsutil::sync_with_dir(&path).map_err(|source| StateError::Io {
            action: "sync",
            path,
            source,
        })
    }

    fn store(&mut self, kip_dir: &Path, durable: bool) -> Result<(), StateError> {
        self.serial += 1;
        let path = kip_dir.join(STATE_FILE);
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io {
                action,
                path,
                source,
            }
        };
        let mut text = serde_json::to_string_pretty(self).expect("state serialises");
        text.push('\n');
        let backup = kip_dir.join(format!("{STATE_FILE}.backup"));
        back_up(&path, &backup).map_err(io("back up", &backup))?;
        // Mode 0600, a temp file renamed over the state (its directory made first when there is none); fsynced
        // with its directory when `durable`.
        let write = if durable {
            settle_owed(&path)?;
            crate::fsutil::write_private
        } else {
            crate::fsutil::write_private_unsynced
        };
        write(&path, text.as_bytes(), None).map_err(io("write", &path))
    }
}

/// Keeps the state about to be replaced as `backup`: a hard link to it, renamed over the previous backup, rather
/// than a copy of its bytes (a truncate and a write of the old backup, at every step of an apply). The state file
/// is only ever replaced by a rename, never written in place, so the link keeps exactly the state as it was. Nothing
/// when there is no state yet (the first write); a copy ([`copy_to_backup`]) where the file system has no hard links.
fn back_up(path: &Path, backup: &Path) -> std::io::Result<()> {
    let temp = backup.with_file_name(format!(".{STATE_FILE}.backup.{}.tmp", std::process::id()));
    let linked = match std::fs::hard_link(path, &temp) {
        // Left by a killed kip that had this process's pid.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&temp)?;
            std::fs::hard_link(path, &temp)
        }
        linked => linked,
    };
    match linked {
        Ok(()) => std::fs::rename(&temp, backup).inspect_err(|_| {
            let _ = std::fs::remove_file(&temp);
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => copy_to_backup(path, backup),
    }
}

/// The backup as a copy of the state's bytes, written as every private file is (mode 0600, a temp file renamed into
/// place): a symlink at `backup` is replaced, never written through.
fn copy_to_backup(path: &Path, backup: &Path) -> std::io::Result<()> {
    crate::fsutil::write_private_unsynced(backup, &std::fs::read(path)?, None)
}

/// The files written for what the state records, whose fsyncs are still running ([`crate::fsutil::sync_soon`]),
/// made durable before the state is: a state that survives a power loss never names an instance whose files did not.
fn settle_owed(path: &Path) -> Result<(), StateError> {
    crate::fsutil::settle().map_err(|source| StateError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

mod migrate {
    //! Reading a format 1 state: string addresses, one log file, a socket dir, and the "hba.secured" marker in
    //! the secrets that format 2 keeps as a lifecycle flag.

    use super::*;

    pub(super) fn from_v1(old: serde_json::Value) -> State {
        let text = |value: &serde_json::Value, key: &str| {
            value.get(key).and_then(|v| v.as_str()).map(str::to_owned)
        };
        let mut state = State {
            format_version: STATE_FORMAT,
            serial: old.get("serial").and_then(|v| v.as_u64()).unwrap_or(0),
            lineage: text(&old, "lineage").unwrap_or_else(new_lineage),
            instances: BTreeMap::new(),
        };
        let Some(instances) = old.get("instances").and_then(|v| v.as_object()) else {
            return state;
        };
        for (address, saved) in instances {
            let Ok(address) = Address::parse(address) else {
                tracing::warn!("dropping the format 1 state entry {address:?}: not an address");
                continue;
            };
            let data_dir = PathBuf::from(text(saved, "data_dir").unwrap_or_default());
            let dir = data_dir.parent().map(Path::to_path_buf).unwrap_or_default();
            let mut secrets: BTreeMap<String, String> = saved
                .get("secrets")
                .cloned()
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            let initialized = secrets.remove("hba.secured").is_some();
            let mut objects = BTreeMap::new();
            if let Some(saved_objects) = saved.get("objects").and_then(|v| v.as_object()) {
                for (object, value) in saved_objects {
                    let (Ok(object), Ok(value)) = (
                        Address::parse(object),
                        serde_json::from_value::<ObjectState>(value.clone()),
                    ) else {
                        continue;
                    };
                    objects.insert(object, value);
                }
            }
            let log = PathBuf::from(text(saved, "log").unwrap_or_default());
            state.instances.insert(
                address,
                InstanceState {
                    engine: text(saved, "engine").unwrap_or_default(),
                    spec: text(saved, "spec"),
                    version: text(saved, "version"),
                    toolchain: text(saved, "toolchain").map(PathBuf::from),
                    dir,
                    run_dir: text(saved, "socket_dir")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| data_dir.with_extension("run")),
                    data_dir,
                    log_dir: log.parent().map(Path::to_path_buf).unwrap_or_default(),
                    run_as: saved
                        .get("run_as")
                        .cloned()
                        .and_then(|v| serde_json::from_value(v).ok()),
                    secrets,
                    ports: BTreeMap::new(),
                    attributes: saved
                        .get("attributes")
                        .cloned()
                        .and_then(|v| serde_json::from_value(v).ok())
                        .unwrap_or_default(),
                    sensitive: BTreeSet::new(),
                    objects,
                    lifecycle: Lifecycle {
                        initialized,
                        succeeded: false,
                        provisioning: false,
                    },
                    depends_on: Vec::new(),
                    prevent_destroy: false,
                },
            );
        }
        state
    }
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

fn new_lineage() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut random) = std::fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = random.read_exact(&mut bytes);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    bytes[..8]
        .iter_mut()
        .zip(nanos.to_le_bytes())
        .for_each(|(byte, time)| *byte ^= time);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// An exclusive lock on a project's state, held while a command may change it; released on drop. The lock file
/// names its holder, so a waiting kip can say who holds it, and can break the lock of a process that is gone.
#[derive(Debug)]
pub struct StateLock {
    file: std::fs::File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock, waiting up to `timeout` for another kip to release it.
    pub fn acquire(kip_dir: &Path, timeout: Duration) -> Result<StateLock, StateError> {
        let path = kip_dir.join(LOCK_FILE);
        std::fs::create_dir_all(kip_dir).map_err(|source| StateError::Io {
            action: "create",
            path: kip_dir.to_path_buf(),
            source,
        })?;
        let started = Instant::now();
        loop {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|source| StateError::Io {
                    action: "open",
                    path: path.clone(),
                    source,
                })?;
            // The kernel releases an flock when its holder dies, so a dead holder's lock breaks by itself; the
            // pid in the file is only for the message.
            match file.try_lock() {
                Ok(()) => {
                    let mut lock = StateLock { file, path };
                    lock.record_holder();
                    return Ok(lock);
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    if started.elapsed() >= timeout {
                        let (pid, since) = holder(&path);
                        return Err(StateError::Locked {
                            pid,
                            since,
                            waited: started.elapsed(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(StateError::Io {
                        action: "lock",
                        path,
                        source,
                    });
                }
            }
        }
    }

    /// Names the holder for a waiting kip's message. Not synced: the flock is the lock, the kernel releases it with
    /// its holder, and a record lost to a crash only makes that message say "an unknown time".
    fn record_holder(&mut self) {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let _ = self.file.set_len(0);
        let _ = (&self.file).write_all(format!("{} {since}\n", std::process::id()).as_bytes());
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

fn holder(path: &Path) -> (u32, String) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut parts = text.split_whitespace();
    let pid = parts.next().and_then(|pid| pid.parse().ok()).unwrap_or(0);
    let since = parts.next().map_or_else(
        || "an unknown time".to_owned(),
        |secs| format!("unix time {secs}"),
    );
    (pid, since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_atomic_private_and_bump_the_serial() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::read(dir.path()).unwrap();
        assert_eq!(state.serial, 0);
        let lineage = state.lineage.clone();
        state.write(dir.path()).unwrap();
        state.write(dir.path()).unwrap();
        let again = State::read(dir.path()).unwrap();
        assert_eq!(again.serial, 2);
        assert_eq!(again.lineage, lineage);
        let mode = std::fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    /// The backup is the state each write replaced, kept apart from it: writing, removing or editing the state in
    /// place afterwards leaves the backup as it was, and a stale temp link of a killed kip is no obstacle.
    #[test]
    fn the_backup_is_the_state_each_write_replaced_and_stays_apart_from_it() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join(format!("{STATE_FILE}.backup"));
        let mut state = State::read(dir.path()).unwrap();
        state.checkpoint(dir.path()).unwrap();
        assert!(
            !backup.exists(),
            "nothing to back up before the first write"
        );
        let first = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        std::fs::write(
            dir.path()
                .join(format!(".{STATE_FILE}.backup.{}.tmp", std::process::id())),
            "left by a killed kip",
        )
        .unwrap();
        state.checkpoint(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), first);
        let second = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        state.write(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), second);
        let path = dir.path().join(STATE_FILE);
        assert_ne!(
            std::fs::metadata(&path).unwrap().ino(),
            std::fs::metadata(&backup).unwrap().ino()
        );
        assert_eq!(std::fs::metadata(&backup).unwrap().mode() & 0o777, 0o600);
        std::fs::write(&path, "edited in place").unwrap();
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), second);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), second);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [format!("{STATE_FILE}.backup")], "no temp left");
    }

    /// A file outside `dir` that holds "untouched", and a symlink to it at `dir`'s backup path: (the file's
    /// directory, the file, the backup path).
    fn symlink_at_the_backup_path(dir: &Path) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        let backup = dir.join(format!("{STATE_FILE}.backup"));
        std::os::unix::fs::symlink(&target, &backup).unwrap();
        (outside, target, backup)
    }

    /// The symlink's target kept what it held, and a file of its own replaced the symlink.
    fn not_written_through(target: &Path, backup: &Path) {
        assert_eq!(std::fs::read_to_string(target).unwrap(), "untouched");
        assert!(std::fs::symlink_metadata(backup).unwrap().is_file());
    }

    /// A symlink put where the backup goes (or where its temp link goes) is replaced, never followed: the state and
    /// its secrets never reach the file it points to. (A copy to the backup path, as before, wrote through it.)
    #[test]
    fn a_symlink_at_the_backup_path_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::read(dir.path()).unwrap();
        state.checkpoint(dir.path()).unwrap();
        let (_outside, target, backup) = symlink_at_the_backup_path(dir.path());
        std::os::unix::fs::symlink(
            &target,
            dir.path()
                .join(format!(".{STATE_FILE}.backup.{}.tmp", std::process::id())),
        )
        .unwrap();
        state.checkpoint(dir.path()).unwrap();
        not_written_through(&target, &backup);
    }

    /// The copy taken where hard links fail replaces a symlink at the backup path too: the state and its secrets
    /// never reach the file it points to. (`std::fs::copy` to the backup path wrote through it.)
    #[test]
    fn the_backup_copied_where_links_fail_replaces_a_symlink_too() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (_outside, target, backup) = symlink_at_the_backup_path(dir.path());
        let path = dir.path().join(STATE_FILE);
        std::fs::write(&path, "{\"secret\": \"s3cr3t\"}").unwrap();
        copy_to_backup(&path, &backup).unwrap();
        not_written_through(&target, &backup);
        let metadata = std::fs::symlink_metadata(&backup).unwrap();
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&backup).unwrap(),
            "{\"secret\": \"s3cr3t\"}"
        );
    }

    #[test]
    fn malformed_state_names_the_position() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(STATE_FILE),
            "{\n  \"format_version\": 1,\n  \"serial\": x\n}",
        )
        .unwrap();
        let error = State::read(dir.path()).unwrap_err();
        assert!(
            matches!(error, StateError::Malformed { line: 3, .. }),
            "{error}"
        );
    }

    #[test]
    fn other_formats_are_migrated_or_refused_and_a_wrong_shape_is_placed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        std::fs::write(
            &path,
            r#"{"format_version": 1, "serial": 7, "lineage": "l", "instances": {}}"#,
        )
        .unwrap();
        let migrated = State::read(dir.path()).unwrap();
        assert_eq!(
            (migrated.format_version, migrated.serial),
            (STATE_FORMAT, 7)
        );

        std::fs::write(&path, r#"{"format_version": 3, "instances": {"a": [1]}}"#).unwrap();
        let error = State::read(dir.path()).unwrap_err();
        assert!(
            matches!(error, StateError::Format { found: 3, .. }),
            "{error}"
        );

        std::fs::write(
            &path,
            "{\n  \"format_version\": 2,\n  \"serial\": 1,\n  \"lineage\": \"l\",\n  \"instances\": 5\n}",
        )
        .unwrap();
        let error = State::read(dir.path()).unwrap_err();
        assert!(
            matches!(error, StateError::Malformed { line: 5, .. }),
            "{error}"
        );
    }

    #[test]
    fn a_second_lock_waits_then_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path(), Duration::ZERO).unwrap();
        let error = StateLock::acquire(dir.path(), Duration::from_millis(120)).unwrap_err();
        match error {
            StateError::Locked { pid, .. } => assert_eq!(pid, std::process::id()),
            other => panic!("{other}"),
        }
        drop(first);
        StateLock::acquire(dir.path(), Duration::ZERO).unwrap();
    }
}
