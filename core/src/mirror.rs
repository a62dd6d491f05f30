//! Publishing a binary mirror: `kip mirror add` puts an archive into a mirror directory and records it in
//! `index.json`; `kip mirror index` rebuilds the index from the directory layout.
//!
//! The layout is `DIR/ENGINE/VERSION/PLATFORM/<archive>` with `DIR/index.json` beside it, urls relative to the
//! index, so the directory can be served as is by any static file server (or used as a local path). The index
//! is written atomically, so a reader never sees half an index, and its read-modify-write holds a file lock
//! (`DIR/.index.json.lock`), so two publishers into one mirror never lose each other's entries.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use kip_registry::mirror::{Artifact, MIRROR_FORMAT, MirrorError, MirrorIndex};
use sha2::{Digest as _, Sha256};

pub const INDEX_FILE: &str = "index.json";

/// The platform triple of the machine kip runs on, as mirrors name it.
pub fn host_platform() -> String {
    let arch = std::env::consts::ARCH;
    match std::env::consts::OS {
        "linux" => format!("{arch}-unknown-linux-gnu"),
        "macos" => format!("{arch}-apple-darwin"),
        other => format!("{arch}-unknown-{other}"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a mirror index", path.display())]
    Index {
        path: PathBuf,
        #[source]
        source: MirrorError,
    },
    #[error("{} is not a .tar.gz or .tar.zst archive", path.display())]
    NotAnArchive { path: PathBuf },
    #[error(
        "the mirror already has {engine} {version} for {platform} with another archive (sha256 {existing})"
    )]
    Conflict {
        engine: String,
        version: String,
        platform: String,
        existing: String,
    },
    #[error("{value:?} is not a valid {what}: {why}")]
    InvalidName {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

impl PublishError {
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            PublishError::Conflict { .. } => {
                Some("a published version never changes; publish the new build under a new version")
            }
            PublishError::NotAnArchive { .. } => {
                Some("repackage it as tar.gz or tar.zst with bin/, lib/ and share/")
            }
            PublishError::Index { source, .. } => source.hint(),
            _ => None,
        }
    }
}

fn io<'p>(
    action: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> PublishError + 'p {
    move |source| PublishError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// SHA-256 (lowercase hex) and size of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 256 * 1024];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The index of `dir`, or an empty one when there is none yet.
pub fn read_index(dir: &Path) -> Result<MirrorIndex, PublishError> {
    let path = dir.join(INDEX_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            MirrorIndex::parse(&bytes).map_err(|source| PublishError::Index { path, source })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(MirrorIndex {
            format: MIRROR_FORMAT,
            engines: BTreeMap::new(),
        }),
        Err(source) => Err(PublishError::Io {
            action: "read",
            path,
            source,
        }),
    }
}

pub fn write_index(dir: &Path, index: &MirrorIndex) -> Result<(), PublishError> {
    let path = dir.join(INDEX_FILE);
    let mut text = serde_json::to_string_pretty(index).expect("an index serialises");
    text.push('\n');
    crate::fsutil::write_atomically(&path, text.as_bytes()).map_err(io("write", &path))
}

/// Holds the mirror's index lock until dropped; `dir` must exist.
fn lock_index(dir: &Path) -> Result<std::fs::File, PublishError> {
    let path = dir.join(format!(".{INDEX_FILE}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("open", &path))?;
    file.lock().map_err(io("lock", &path))?;
    Ok(file)
}

fn check_name(what: &'static str, value: &str) -> Result<(), PublishError> {
    let why = if value.is_empty() {
        Some("it is empty")
    } else if value.starts_with('.') || value.contains(['/', '\\']) {
        Some("it must not start with '.' or contain a path separator")
    } else {
        None
    };
    match why {
        Some(why) => Err(PublishError::InvalidName {
            what,
            value: value.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

fn archive_kind(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_str()?;
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Some("tar.gz")
    } else if name.ends_with(".tar.zst") {
        Some("tar.zst")
    } else {
        None
    }
}

/// Copies `archive` into the mirror at `dir` and records it in the index. Adding the same archive again is a
/// no-op; a different archive for the same engine, version and platform is refused.
pub fn add(
    dir: &Path,
    engine: &str,
    version: &str,
    platform: &str,
    archive: &Path,
) -> Result<Artifact, PublishError> {
    check_name("engine", engine)?;
    check_name("version", version)?;
    check_name("platform", platform)?;
    if archive_kind(archive).is_none() {
        return Err(PublishError::NotAnArchive {
            path: archive.to_path_buf(),
        });
    }
    let (sha256, size) = sha256_file(archive).map_err(io("read", archive))?;
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let _lock = lock_index(dir)?;
    let mut index = read_index(dir)?;
    if let Some(existing) = index.artifact(engine, version, platform) {
        if existing.sha256 == sha256 {
            return Ok(existing.clone());
        }
        return Err(PublishError::Conflict {
            engine: engine.to_owned(),
            version: version.to_owned(),
            platform: platform.to_owned(),
            existing: existing.sha256.clone(),
        });
    }
    let file_name = archive
        .file_name()
        .expect("an archive has a file name")
        .to_string_lossy()
        .into_owned();
    let relative = format!("{engine}/{version}/{platform}/{file_name}");
    let target = dir.join(&relative);
    let parent = target.parent().expect("the target has a parent");
    std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    let temp = parent.join(format!(".{file_name}.{}.partial", std::process::id()));
    std::fs::copy(archive, &temp).map_err(io("copy into", &temp))?;
    std::fs::rename(&temp, &target).map_err(io("write", &target))?;
    let artifact = Artifact {
        url: relative,
        sha256,
        size,
    };
    index
        .engines
        .entry(engine.to_owned())
        .or_default()
        .entry(version.to_owned())
        .or_default()
        .insert(platform.to_owned(), artifact.clone());
    write_index(dir, &index)?;
    Ok(artifact)
}

/// Rebuilds `DIR/index.json` from the archives found at `DIR/ENGINE/VERSION/PLATFORM/*.tar.{gz,zst}`.
pub fn rebuild_index(dir: &Path) -> Result<MirrorIndex, PublishError> {
    let _lock = if dir.is_dir() {
        Some(lock_index(dir)?)
    } else {
        None
    };
    let mut index = MirrorIndex {
        format: MIRROR_FORMAT,
        engines: BTreeMap::new(),
    };
    for engine in sorted_dirs(dir)? {
        for version in sorted_dirs(&dir.join(&engine))? {
            for platform in sorted_dirs(&dir.join(&engine).join(&version))? {
                let platform_dir = dir.join(&engine).join(&version).join(&platform);
                let mut archives: Vec<PathBuf> = std::fs::read_dir(&platform_dir)
                    .map_err(io("read", &platform_dir))?
                    .filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .filter(|path| archive_kind(path).is_some())
                    .collect();
                archives.sort();
                // One archive per platform: the first by name; others are ignored.
                let Some(archive) = archives.first() else {
                    continue;
                };
                let (sha256, size) = sha256_file(archive).map_err(io("read", archive))?;
                let name = archive
                    .file_name()
                    .expect("has a name")
                    .to_string_lossy()
                    .into_owned();
                index
                    .engines
                    .entry(engine.clone())
                    .or_default()
                    .entry(version.clone())
                    .or_default()
                    .insert(
                        platform.clone(),
                        Artifact {
                            url: format!("{engine}/{version}/{platform}/{name}"),
                            sha256,
                            size,
                        },
                    );
            }
        }
    }
    write_index(dir, &index)?;
    Ok(index)
}

fn sorted_dirs(dir: &Path) -> Result<Vec<String>, PublishError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io("read", dir))?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn archive(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(contents)
            .unwrap();
        path
    }

    #[test]
    fn add_records_hash_and_size_and_rebuild_agrees() {
        let work = tempfile::tempdir().unwrap();
        let mirror = work.path().join("mirror");
        let first = archive(work.path(), "pg.tar.gz", b"first");
        let artifact = add(
            &mirror,
            "postgres",
            "16.14.0",
            "x86_64-unknown-linux-gnu",
            &first,
        )
        .unwrap();
        assert_eq!(artifact.size, 5);
        assert_eq!(
            artifact.sha256,
            "a7937b64b8caa58f03721bb6bacf5c78cb235febe0e70b1b84cd99541461a08e"
        );
        assert_eq!(
            artifact.url,
            "postgres/16.14.0/x86_64-unknown-linux-gnu/pg.tar.gz"
        );
        // Again: a no-op. Another archive for the same slot: refused.
        assert_eq!(
            add(
                &mirror,
                "postgres",
                "16.14.0",
                "x86_64-unknown-linux-gnu",
                &first
            )
            .unwrap(),
            artifact
        );
        let other = archive(work.path(), "pg2.tar.gz", b"second");
        let refused = add(
            &mirror,
            "postgres",
            "16.14.0",
            "x86_64-unknown-linux-gnu",
            &other,
        )
        .unwrap_err();
        assert!(
            matches!(refused, PublishError::Conflict { .. }),
            "{refused}"
        );
        let index = read_index(&mirror).unwrap();
        assert_eq!(rebuild_index(&mirror).unwrap(), index);
    }

    #[test]
    fn refuses_what_is_not_an_archive_or_a_path_as_a_name() {
        let work = tempfile::tempdir().unwrap();
        let file = archive(work.path(), "pg.zip", b"x");
        assert!(matches!(
            add(work.path(), "postgres", "1", "p", &file),
            Err(PublishError::NotAnArchive { .. })
        ));
        let file = archive(work.path(), "pg.tar.gz", b"x");
        assert!(matches!(
            add(work.path(), "../x", "1", "p", &file),
            Err(PublishError::InvalidName { .. })
        ));
    }
}
