//! The persisted process table (`.kip/supervisor/table.json`): what a supervisor that was killed leaves for the next
//! one, so that the engines it ran are adopted rather than left running unsupervised.
//!
//! The daemon keeps one [`Record`] per supervised process and rewrites the whole file on every change: a spawn (its
//! pid and start time are on disk before the readiness probe runs, so a daemon killed during a start still knows
//! them), a state change, a restart, and a stop (the record goes once the process is gone, not before, so a daemon
//! killed during a stop leaves the process to the next one). Writes are atomic (a temp file exchanged with the
//! table) and the file is private (0600, in a 0700 directory): specs carry environment variables, which may hold
//! secrets.
//!
//! Writes are not fsynced, on purpose: the table describes processes that run now, and it is for a daemon that was
//! killed, whose writes the kernel keeps (a killed process loses nothing it wrote). What an fsync adds is survival
//! of a machine crash, after which none of the processes the table lists runs any more; it would cost two disk
//! flushes on the way to every process's start (before and after its spawn), for nothing. For the same reason the
//! new table takes the old one's place by an exchange rather than a rename over it, which ext4 makes flush.
//!
//! A record names a process by pid and start time (`/proc/PID/stat` field 22): a pid alone could have been reused
//! by an unrelated process since, which the next daemon must neither adopt nor signal.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::ProcessState;
use super::procfs::{self, Identity};
use crate::engine::SpawnSpec;

/// The format version of the table file; a file of another version is set aside, not misread.
const FORMAT_VERSION: u32 = 1;
/// The environment variable every spawned process gets, set to its run's id (daemon pid, sequence, spawn time):
/// the members of its process group inherit it, which tells them from the members of a later group that got the
/// same process group id.
pub(super) const RUN_ENV: &str = "KIP_SUPERVISOR_RUN";
/// The environment variable every spawned process gets, set to its name: a leftover worker of one process is not
/// taken for another's (see [`super::procfs::leftover_workers`]).
pub(super) const NAME_ENV: &str = "KIP_SUPERVISOR_NAME";

/// What the daemon persists about one supervised process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    pub name: String,
    /// Its start order among the daemon's processes (status order, and shutdown in reverse).
    pub sequence: u64,
    pub spec: SpawnSpec,
    /// The pid and process group id of the current run; none while no run is alive.
    pub pid: Option<u32>,
    /// The current run's start time in clock ticks since boot, from `/proc/PID/stat`.
    pub start_time: Option<u64>,
    /// The length of the log when the current run was spawned: a `log_line` probe resumed by the next daemon reads
    /// from there.
    #[serde(default)]
    pub log_offset: u64,
    /// The current run's id, which its processes inherit as [`RUN_ENV`]: the next daemon stops what is left of a
    /// group whose leader is gone only when every member carries it.
    #[serde(default)]
    pub run: Option<String>,
    pub state: ProcessState,
    pub restarts: u32,
    pub started_at: Option<u64>,
}

impl Record {
    /// Whether the run this record names is alive, gone, or its pid reused; `None` when it names no run.
    pub fn identify(&self) -> Option<Identity> {
        Some(procfs::identify(self.pid?, self.start_time?))
    }
}

#[derive(Serialize, Deserialize)]
struct TableFile {
    version: u32,
    /// The daemon that wrote it, for people reading the file.
    daemon_pid: u32,
    processes: Vec<Record>,
}

/// Why the table could not be read.
#[derive(Debug)]
pub(super) enum LoadError {
    /// The file could not be read (not a missing file: that is an empty table).
    Io(std::io::Error),
    /// The file is not a table this kip understands.
    Malformed(String),
}

/// Reads the table at `path`; a missing or empty file is an empty table.
pub(super) fn load(path: &Path) -> Result<Vec<Record>, LoadError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(LoadError::Io(error)),
    };
    // What a power loss can leave of a table written without an fsync ([`replace`]); no process it named runs.
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let file: TableFile =
        serde_json::from_slice(&bytes).map_err(|error| LoadError::Malformed(error.to_string()))?;
    if file.version != FORMAT_VERSION {
        return Err(LoadError::Malformed(format!(
            "format version {} (this kip reads {FORMAT_VERSION})",
            file.version
        )));
    }
    Ok(file.processes)
}

/// Whether the table at `path` calls for a supervisor: it names a process that is still alive (to adopt), or one
/// that is gone and left files outside its directories (`leaves`), which only a supervisor removes (a destroy after
/// the supervisor and its processes were killed would otherwise leave them).
pub(super) fn calls_for_a_supervisor(path: &Path) -> bool {
    load(path).is_ok_and(|records| {
        records.iter().any(|record| match record.identify() {
            Some(Identity::Alive) => true,
            _ => record
                .spec
                .leaves
                .iter()
                .any(|leaf| leaf.symlink_metadata().is_ok()),
        })
    })
}

/// The daemon's records and the file they are written to. Every change rewrites the file while holding the lock, so
/// that writes never interleave and the file always holds one consistent table.
pub(super) struct Store {
    path: PathBuf,
    records: Mutex<BTreeMap<u64, Record>>,
}

impl Store {
    /// A store that starts with `records` (the ones a new daemon adopts) and writes them at once, so that the
    /// records it drops (dead processes) leave the file too.
    pub fn new(path: PathBuf, records: impl IntoIterator<Item = Record>) -> Store {
        let store = Store {
            path,
            records: Mutex::new(
                records
                    .into_iter()
                    .map(|record| (record.sequence, record))
                    .collect(),
            ),
        };
        store.write(&store.lock());
        store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Record>> {
        // Every update is one insert or remove: a panic cannot leave the map half-updated.
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds or replaces the record of the process started as `record.sequence`, and writes the table.
    pub fn put(&self, record: Record) {
        let mut records = self.lock();
        if records.get(&record.sequence) == Some(&record) {
            return;
        }
        records.insert(record.sequence, record);
        self.write(&records);
    }

    /// Forgets the process started as `sequence` (it is gone), and writes the table.
    pub fn remove(&self, sequence: u64) {
        let mut records = self.lock();
        if records.remove(&sequence).is_some() {
            self.write(&records);
        }
    }

    /// Writes the table. A failure is logged, not returned: the processes run on either way, and refusing to
    /// supervise them because the disk is full would be worse than a table the next daemon cannot use.
    fn write(&self, records: &BTreeMap<u64, Record>) {
        let file = TableFile {
            version: FORMAT_VERSION,
            daemon_pid: std::process::id(),
            processes: records.values().cloned().collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).expect("a table always serialises");
        bytes.push(b'\n');
        if let Err(error) = write_private(&self.path, &bytes) {
            tracing::warn!(table = %self.path.display(), "cannot write the process table: {error}");
        }
    }
}

/// Sets a table that cannot be read aside (as `table.json.unreadable`), so that the next write does not destroy
/// what a person may want to look at.
pub(super) fn set_aside(path: &Path) {
    let aside = path.with_extension("json.unreadable");
    if let Err(error) = std::fs::rename(path, &aside) {
        tracing::warn!(table = %path.display(), "cannot set the unreadable process table aside: {error}");
    }
}

/// Puts the file at `temp` in the place of `path`, atomically: `path` names either the old table or the new one.
///
/// The two are exchanged and the old one, now at `temp`, unlinked. A rename over an existing file makes ext4 write
/// the new file's data out first (`auto_da_alloc`): 0.2-0.3 ms before every spawn and every answer that a process is
/// ready, measured; an exchange is not a replacement and costs a few microseconds. What the flush buys is a file
/// that survives a power loss with its contents, which the table does not need (the module's docs): after a
/// machine crash none of its processes runs, and a table a power loss left empty is read as an empty table.
/// Where there is no table yet, or the file system cannot exchange, a plain rename.
fn replace(temp: &Path, path: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, temp, CWD, path, RenameFlags::EXCHANGE) {
        Ok(()) => std::fs::remove_file(temp),
        Err(_) => std::fs::rename(temp, path),
    }
}

/// Writes `contents` to `path` atomically with mode 0600, creating its directory (not its parents) with mode 0700.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
    };
    let result = (|| {
        let mut file = match open() {
            // The table's own directory is made at the first write (and again should someone remove it), never its
            // parents: the last writes of a daemon whose project's `.kip/` was deleted fail, rather than make a
            // project directory with nothing but a table in it. Each later write is spared the `mkdir`.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                    Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => {
                        return Err(error);
                    }
                    _ => open()?,
                }
            }
            opened => opened?,
        };
        // A temp file left by a crash keeps its old mode through `open`: set it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(contents)?;
        replace(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;
    use std::time::Duration;

    use super::*;
    use crate::engine::{Probe, ProbeKind, RestartPolicy, StopSpec};

    fn record(sequence: u64, pid: Option<u32>, start_time: Option<u64>) -> Record {
        Record {
            name: format!("p{sequence}"),
            sequence,
            spec: SpawnSpec {
                name: format!("p{sequence}"),
                program: "/bin/true".into(),
                args: Vec::new(),
                env: BTreeMap::from([("SECRET".to_owned(), "hunter2".to_owned())]),
                cwd: "/".into(),
                run_as: None,
                probe: Probe {
                    kind: ProbeKind::None,
                    initial_delay: Duration::ZERO,
                    interval: Duration::from_millis(10),
                    timeout: Duration::from_secs(1),
                    retries: None,
                },
                restart: RestartPolicy::No,
                max_restarts: None,
                restart_delay_ms: None,
                stop: StopSpec::default(),
                log: "/tmp/p.log".into(),
                after: Vec::new(),
                reload: None,
                job: false,
                leaves: Vec::new(),
                instance: "test.main".to_owned(),
            },
            pid,
            start_time,
            log_offset: 12,
            run: Some("4242-3-1767225600000".to_owned()),
            state: ProcessState::Ready,
            restarts: 0,
            started_at: Some(1),
        }
    }

    #[test]
    fn the_table_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervisor/table.json");
        assert_eq!(load(&path).unwrap(), Vec::new());
        let own = procfs::stat(std::process::id()).unwrap().start_time;
        let store = Store::new(
            path.clone(),
            [record(3, Some(std::process::id()), Some(own))],
        );
        store.put(record(7, None, None));
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(metadata.mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[0], record(3, Some(std::process::id()), Some(own)));
        assert!(calls_for_a_supervisor(&path));

        store.remove(3);
        assert_eq!(load(&path).unwrap(), vec![record(7, None, None)]);
        assert!(!calls_for_a_supervisor(&path));

        // A reused pid (this process, with another start time) is not alive.
        store.put(record(8, Some(std::process::id()), Some(own + 1)));
        assert!(!calls_for_a_supervisor(&path));

        // A gone process whose file outside its directories is still there: a supervisor removes it.
        let leaf = dir.path().join("left.sock");
        let mut gone = record(9, Some(std::process::id()), Some(own + 1));
        gone.spec.leaves = vec![leaf.clone()];
        store.put(gone);
        assert!(!calls_for_a_supervisor(&path), "no file, no supervisor");
        std::fs::write(&leaf, "").unwrap();
        assert!(calls_for_a_supervisor(&path));

        std::fs::write(
            &path,
            b"{\"version\": 99, \"daemon_pid\": 1, \"processes\": []}",
        )
        .unwrap();
        assert!(matches!(load(&path), Err(LoadError::Malformed(reason)) if reason.contains("99")));
        set_aside(&path);
        assert!(!path.exists());
        assert!(dir.path().join("supervisor/table.json.unreadable").exists());
    }

    /// Each write puts a new file in the table's place (a reader that opened the old one keeps reading it whole)
    /// and leaves nothing else in the directory, a temp file a killed daemon left included; an empty table, what a
    /// power loss can leave of one, is an empty table rather than a malformed one.
    #[test]
    fn a_write_takes_the_old_tables_place_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervisor/table.json");
        let store = Store::new(path.clone(), [record(1, None, None)]);
        let old = std::fs::File::open(&path).unwrap();
        let old_inode = old.metadata().unwrap().ino();
        std::fs::write(
            path.with_file_name(format!(".table.json.{}.tmp", std::process::id())),
            "left by a killed daemon",
        )
        .unwrap();
        store.put(record(2, None, None));
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), old_inode);
        assert_eq!(
            std::io::read_to_string(old)
                .unwrap()
                .matches("\"sequence\"")
                .count(),
            1,
            "the old table, whole"
        );
        assert_eq!(load(&path).unwrap().len(), 2);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["table.json"]);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);

        std::fs::write(&path, "").unwrap();
        assert_eq!(load(&path).unwrap(), Vec::new());
    }

    /// A write makes the table's own directory when someone removed it, never its parents: a daemon whose project's
    /// `.kip/` was deleted does not make it again with its last writes.
    #[test]
    fn a_write_makes_the_tables_directory_but_never_its_parents() {
        let dir = tempfile::tempdir().unwrap();
        let kip_dir = dir.path().join(".kip");
        std::fs::create_dir(&kip_dir).unwrap();
        let path = kip_dir.join("supervisor/table.json");
        let store = Store::new(path.clone(), [record(1, None, None)]);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        store.put(record(2, None, None));
        assert_eq!(load(&path).unwrap().len(), 2);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        std::fs::remove_dir_all(&kip_dir).unwrap();
        store.put(record(3, None, None));
        assert!(!kip_dir.exists());
    }
}
