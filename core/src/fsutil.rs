//! Small filesystem helpers shared by everything in the core that writes files users rely on.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;

/// Writes `contents` to `path` atomically: a temp file in the same directory, fsync, rename, then fsync the
/// directory, keeping the mode of a file it replaces. A reader sees the old file or the new one, never half of
/// either; a crash leaves at most a stray temp file.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write(path, contents, None, true)
}

/// [`write_atomically`] with the fsyncs handed to a thread ([`sync_soon`]): atomic at once, durable once
/// [`settle`] has run (every durable state write settles first). For a file whose fsync need not hold up what comes
/// next: kip.lock, written as an apply resolves a version, before the engine that uses it starts.
pub fn write_atomically_soon(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write(path, contents, None, false)?;
    sync_soon(path)
}

/// [`write_atomically`] without the fsyncs, for a file kip writes again before every use (an engine's
/// configuration, which every provisioning renders anew before a start): a reader still sees the old file or the
/// new one, also after kip is killed; a power loss that loses it is repaired by the next start.
pub fn write_regenerated(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write(path, contents, None, false)
}

/// [`write_atomically`] for a file only its owner may read (a secret, a config holding a password hash): the temp
/// file is created with mode 0600 and given to `owner` (uid, gid) before it is renamed into place, so the contents
/// are never readable by anyone else, not even for a moment.
pub fn write_private(
    path: &Path,
    contents: &[u8],
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    write(path, contents, Some(owner), true)
}

/// [`write_private`] without the fsyncs (see [`write_regenerated`]): atomic, and durable once [`sync_with_dir`] has
/// run.
pub fn write_private_unsynced(
    path: &Path,
    contents: &[u8],
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    write(path, contents, Some(owner), false)
}

/// Makes a file written without fsyncs durable: fsyncs it and the directory that holds it.
pub fn sync_with_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// [`write_private`] unless `path` already holds exactly `contents`, mode 0600 and `owner`'s: a configuration
/// rewritten before every start then costs a read, not a write and two fsyncs. Whether it wrote.
///
/// What it writes is durable soon rather than at once ([`sync_soon`]): the engine that reads it starts from the
/// page cache while the disk catches up, and the state that records it is durable only after it is ([`settle`]).
pub fn write_private_if_changed(
    path: &Path,
    contents: &[u8],
    owner: Option<(u32, u32)>,
) -> std::io::Result<bool> {
    let wrote = write_private_if_changed_as(path, contents, owner, false)?;
    if wrote {
        sync_soon(path)?;
    }
    Ok(wrote)
}

/// Fsyncs owed: files written without their fsyncs, each being made durable ([`sync_with_dir`]) on a thread of its
/// own, and the path it is for.
static OWED: Mutex<Vec<(PathBuf, JoinHandle<std::io::Result<()>>)>> = Mutex::new(Vec::new());

/// Makes `path` (written without fsyncs) durable on a thread of its own, so that what comes next (an engine's
/// start, which reads the file from the page cache) does not wait for the disk: an fsync of a file and of its
/// directory took 1.6-2.2 ms on the project's machines, a fifth of what kip adds to a Valkey's own start.
/// [`settle`] waits for it; the state's durable writes call [`settle`] first, so a file an engine needs (a Valkey's
/// ACL file with its default user's password) is durable before any state that says the engine was provisioned is,
/// and every `kip` command calls it before it exits. Where no thread can be started, syncs at once.
pub fn sync_soon(path: &Path) -> std::io::Result<()> {
    let owned = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("kip-sync".into())
        .spawn(move || sync_with_dir(&owned));
    match spawned {
        Ok(handle) => {
            OWED.lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .push((path.to_path_buf(), handle));
            Ok(())
        }
        Err(_) => sync_with_dir(path),
    }
}

/// Held while a [`settle`] joins what it took: another thread's settle waits for those too, instead of finding
/// nothing owed and returning while they still run.
static SETTLING: Mutex<()> = Mutex::new(());

/// Waits for every fsync [`sync_soon`] started; the first that failed is the error, naming its file. The queue is
/// not held while it waits: another instance's provisioning may owe its own fsync meanwhile.
pub fn settle() -> std::io::Result<()> {
    let _one_at_a_time = SETTLING.lock().unwrap_or_else(|poison| poison.into_inner());
    let owed = std::mem::take(&mut *OWED.lock().unwrap_or_else(|poison| poison.into_inner()));
    join_owed(owed)
}

fn join_owed(owed: Vec<(PathBuf, JoinHandle<std::io::Result<()>>)>) -> std::io::Result<()> {
    let mut first = None;
    for (path, handle) in owed {
        let result = handle
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the thread that synced it panicked")));
        if let Err(error) = result {
            first.get_or_insert_with(|| {
                std::io::Error::new(
                    error.kind(),
                    format!("cannot make {} durable: {error}", path.display()),
                )
            });
        }
    }
    first.map_or(Ok(()), Err)
}

/// [`write_private_if_changed`] without the fsyncs, for a private file rendered anew before every start (see
/// [`write_regenerated`]).
pub fn write_private_regenerated(
    path: &Path,
    contents: &[u8],
    owner: Option<(u32, u32)>,
) -> std::io::Result<bool> {
    write_private_if_changed_as(path, contents, owner, false)
}

fn write_private_if_changed_as(
    path: &Path,
    contents: &[u8],
    owner: Option<(u32, u32)>,
    durable: bool,
) -> std::io::Result<bool> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let same = std::fs::metadata(path).is_ok_and(|metadata| {
        metadata.permissions().mode() & 0o777 == 0o600
            && owner.is_none_or(|(uid, gid)| metadata.uid() == uid && metadata.gid() == gid)
    }) && std::fs::read(path).is_ok_and(|existing| existing == contents);
    if same {
        return Ok(false);
    }
    write(path, contents, Some(owner), durable)?;
    Ok(true)
}

/// Creates `dir` (and its parents) when missing, and makes it 0700 and `owner`'s: an instance's data directory.
/// Created with mode 0700 from the start, so it is never open for the moment between a `mkdir` with the umask's
/// mode and a `chmod`.
pub fn private_dir(dir: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// `private`: `None` keeps the replaced file's mode; `Some(owner)` makes it 0600 and `owner`'s. `durable`: fsync the
/// file before the rename and the directory after it.
fn write(
    path: &Path,
    contents: &[u8],
    private: Option<Option<(u32, u32)>>,
    durable: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let _ = std::fs::remove_file(&temp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        if private.is_some() {
            options.mode(0o600);
        }
        let mut file = options.open(&temp)?;
        match private {
            Some(owner) => {
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
                }
            }
            // Keep the mode of the file being replaced (a kip.hcl that is group-writable stays so).
            None => {
                if let Ok(metadata) = std::fs::metadata(path) {
                    file.set_permissions(std::fs::Permissions::from_mode(
                        metadata.permissions().mode(),
                    ))?;
                }
            }
        }
        file.write_all(contents)?;
        if durable {
            file.sync_all()?;
        }
        std::fs::rename(&temp, path)?;
        if durable {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;

    #[test]
    fn a_private_file_is_0600_from_the_start_and_replaces_a_wider_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.conf");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        write_private(&path, b"new", Some((uid, gid))).unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(metadata.mode() & 0o777, 0o600);
        assert_eq!((metadata.uid(), metadata.gid()), (uid, gid));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        // No temp file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_ordinary_rewrite_keeps_the_mode_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kip.hcl");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o664);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
    }

    #[test]
    fn an_unchanged_private_file_is_not_rewritten_but_a_widened_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kip.cnf");
        assert!(write_private_if_changed(&path, b"a", None).unwrap());
        assert!(!write_private_if_changed(&path, b"a", None).unwrap());
        // Someone opened it up: same contents, but it is written again, 0600.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(write_private_if_changed(&path, b"a", None).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(write_private_if_changed(&path, b"b", None).unwrap());
        settle().unwrap();
    }

    #[test]
    fn a_file_synced_soon_is_readable_at_once_and_settled_before_its_directory_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.acl");
        assert!(write_private_if_changed(&path, b"user default on #abc\n", None).unwrap());
        // Written: whoever reads it next (the engine starting) reads it whole, before its fsync ends.
        assert_eq!(std::fs::read(&path).unwrap(), b"user default on #abc\n");
        settle().unwrap();
        // Nothing is owed any more (another test's settle may have taken this one's: it waited for it all the same).
        settle().unwrap();
    }

    #[test]
    fn a_sync_that_failed_is_the_error_and_names_its_file() {
        let failing = std::thread::spawn(|| Err(std::io::Error::other("disk gone")));
        let passing = std::thread::spawn(|| Ok(()));
        let error = join_owed(vec![
            (PathBuf::from("/a/ok"), passing),
            (PathBuf::from("/b/users.acl"), failing),
        ])
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot make /b/users.acl durable: disk gone"
        );
        assert!(join_owed(Vec::new()).is_ok());
    }

    /// Two settles at once (two instances of an apply, or two tests): the one that finds the queue already taken
    /// waits for the fsyncs the other is joining, and never returns while one it owes still runs.
    #[test]
    fn a_settle_waits_for_the_fsyncs_another_settle_is_joining() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let synced = std::sync::Arc::new(AtomicBool::new(false));
        let path =
            PathBuf::from("/owed/by/a_settle_waits_for_the_fsyncs_another_settle_is_joining");
        let slow = {
            let synced = std::sync::Arc::clone(&synced);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(300));
                synced.store(true, Ordering::SeqCst);
                Ok(())
            })
        };
        let owed = || OWED.lock().unwrap().iter().any(|(owed, _)| *owed == path);
        OWED.lock().unwrap().push((path.clone(), slow));
        let first = std::thread::spawn(settle);
        while owed() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        settle().unwrap();
        assert!(
            synced.load(Ordering::SeqCst),
            "settle returned while an fsync it owed was still running"
        );
        first.join().unwrap().unwrap();
    }

    #[test]
    fn a_private_dir_is_0700_even_when_it_existed_wider() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b/data");
        private_dir(&data, None).unwrap();
        assert_eq!(std::fs::metadata(&data).unwrap().mode() & 0o777, 0o700);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&data, None).unwrap();
        assert_eq!(std::fs::metadata(&data).unwrap().mode() & 0o777, 0o700);
    }
}
