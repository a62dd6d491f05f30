//! Resolve: from `version = "16"` to a verified toolchain on disk, pinned in kip.lock.
//!
//! For each declared engine version spec, in this order:
//! 1. `KIP_<ENGINE>_BINDIR` names a directory of binaries to use as they are (development).
//! 2. A kip.lock pin whose archive is already in the cache: done, without any network or index I/O.
//! 3. Otherwise the engine's mirror index (`KIP_<ENGINE>_MIRROR`, else `KIP_MIRROR`, else the local mirror in the
//!    cache dir that `kip mirror build` fills, when it lists the engine) says which full versions
//!    exist: the pin's version, or the newest one matching the spec (`16` → newest 16.x, `16.14` → newest
//!    16.14.x). The archive is downloaded, its sha256 checked against the pin (or the index for a new pin)
//!    before anything is unpacked, unpacked into a temp dir and renamed into the content-addressed store, so a
//!    crash never leaves half a toolchain. A per-artifact file lock makes two kips resolving the same artifact at
//!    once download it once.
//!
//! New pins record the hash of every platform the mirror offers for that version, so a team on several
//! platforms shares one kip.lock.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kip_registry::mirror::MirrorIndex;
use kip_schemas::Version;

use crate::archive::{self, ArchiveKind};
use crate::fetch::{Expected, FetchError, Fetcher, Location, Progress, RetryPolicy};
use crate::lock::{LockFile, Pin};

/// The local mirror's directory under the cache dir: where `kip mirror build` publishes by default, and what
/// resolution uses for an engine no configured mirror covers.
pub const LOCAL_MIRROR: &str = "mirror";

/// Where resolution looks, read once from the environment (or set by tests).
#[derive(Debug, Clone, Default)]
pub struct ResolveSettings {
    /// `KIP_MIRROR`: the default mirror (a URL or a local path; its root or its index.json).
    pub mirror: Option<String>,
    /// The local mirror (`<cache>/mirror`), used for an engine that neither `KIP_<ENGINE>_MIRROR` nor `KIP_MIRROR`
    /// covers, when its index lists that engine.
    pub local_mirror: Option<PathBuf>,
    /// `KIP_<ENGINE>_MIRROR`, by engine name.
    pub engine_mirrors: BTreeMap<String, String>,
    /// `KIP_<ENGINE>_BINDIR`, by engine name.
    pub bindirs: BTreeMap<String, PathBuf>,
    /// The platform triple to resolve for.
    pub platform: String,
    /// The content-addressed store of unpacked toolchains.
    pub store: PathBuf,
    /// The mirrors' indexes, shared by every resolver made from these settings and their clones.
    pub indexes: SharedIndexes,
}

/// The mirrors' indexes one command has fetched or is fetching, by mirror: every resolver made from one
/// [`ResolveSettings`] (the instances of an apply each resolve with their own) shares them, so a mirror's index is
/// fetched once per command, and [`prefetch_indexes`] can start that fetch while the command still checks
/// the configuration and plans. A fetch that failed is not kept: the next resolver that needs the index tries
/// again and reports its own error.
#[derive(Clone, Default)]
pub struct SharedIndexes(Arc<Mutex<HashMap<String, IndexCell>>>);

type IndexCell = Arc<tokio::sync::OnceCell<(Location, MirrorIndex)>>;

impl SharedIndexes {
    fn cell(&self, mirror: &str) -> IndexCell {
        let mut cells = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        Arc::clone(cells.entry(mirror.to_owned()).or_default())
    }
}

impl std::fmt::Debug for SharedIndexes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cells = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        f.debug_list()
            .entries(
                cells
                    .iter()
                    .filter(|(_, cell)| cell.initialized())
                    .map(|(mirror, _)| mirror),
            )
            .finish()
    }
}

impl ResolveSettings {
    /// Reads KIP_MIRROR, KIP_<ENGINE>_MIRROR and KIP_<ENGINE>_BINDIR for `engines`; the store and the local
    /// mirror are in `cache`.
    pub fn from_env<'a>(
        engines: impl IntoIterator<Item = &'a str>,
        cache: &Path,
    ) -> ResolveSettings {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let mut settings = ResolveSettings {
            mirror: var("KIP_MIRROR"),
            local_mirror: Some(cache.join(LOCAL_MIRROR)),
            platform: crate::mirror::host_platform(),
            store: cache.join("store"),
            ..ResolveSettings::default()
        };
        for engine in engines {
            let upper = engine.to_uppercase();
            if let Some(mirror) = var(&format!("KIP_{upper}_MIRROR")) {
                settings.engine_mirrors.insert(engine.to_owned(), mirror);
            }
            if let Some(bindir) = var(&format!("KIP_{upper}_BINDIR")) {
                settings
                    .bindirs
                    .insert(engine.to_owned(), PathBuf::from(bindir));
            }
        }
        settings
    }

    fn mirror_for(&self, engine: &str) -> Option<&str> {
        self.engine_mirrors
            .get(engine)
            .or(self.mirror.as_ref())
            .map(String::as_str)
    }

    /// The local mirror's index, when there is one (`None` when there is no local mirror or no index in it).
    fn local_index(&self) -> Result<Option<(PathBuf, MirrorIndex)>, ResolveError> {
        let Some(dir) = &self.local_mirror else {
            return Ok(None);
        };
        let path = dir.join(crate::mirror::INDEX_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ResolveError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        let index = MirrorIndex::parse(&bytes).map_err(|source| ResolveError::Index {
            location: path.display().to_string(),
            source: source.into(),
        })?;
        Ok(Some((dir.clone(), index)))
    }

    /// The mirror to ask for `engine`: the configured one, else the local mirror when it lists the engine for
    /// this platform.
    fn mirror_or_local(&self, engine: &str) -> Result<Option<String>, ResolveError> {
        if let Some(mirror) = self.mirror_for(engine) {
            return Ok(Some(mirror.to_owned()));
        }
        Ok(self.local_index()?.and_then(|(dir, index)| {
            index
                .engines
                .get(engine)
                .is_some_and(|versions| versions.values().any(|p| p.contains_key(&self.platform)))
                .then(|| dir.display().to_string())
        }))
    }

    fn no_mirror(&self, engines: Vec<String>) -> ResolveError {
        ResolveError::NoMirror {
            engines,
            local: self.local_mirror.clone(),
        }
    }
}

/// The default cache directory: `$KIP_CACHE_DIR`, else `$XDG_CACHE_HOME/kip`, else (for root) `/var/cache/kip`,
/// else `~/.cache/kip`.
///
/// Root's own cache would sit in its home, which is mode 0700: the unprivileged account that engines run as when
/// kip is root (PostgreSQL refuses root) could not reach the toolchains there.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    var("KIP_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|dir| dir.join("kip")))
        .or_else(|| {
            rustix::process::geteuid()
                .is_root()
                .then(|| PathBuf::from("/var/cache/kip"))
        })
        .or_else(|| var("HOME").map(|home| home.join(".cache/kip")))
}

/// One engine version spec to resolve.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Request {
    pub engine: String,
    pub spec: Version,
}

impl Request {
    pub fn spec_text(&self) -> String {
        self.spec.to_string()
    }
}

/// Whether existing pins are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// A pin wins; a missing pin is added.
    UseLock,
    /// Ignore the pins of these engines (all when empty) and take the newest matching version.
    Upgrade(Vec<String>),
}

impl Policy {
    fn keeps_pin(&self, engine: &str) -> bool {
        match self {
            Policy::UseLock => true,
            Policy::Upgrade(engines) => {
                !(engines.is_empty() || engines.iter().any(|e| e == engine))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolchainSource {
    /// `KIP_<ENGINE>_BINDIR`: used as is, unverified.
    Bindir,
    /// From the store; `downloaded` when this resolution fetched it.
    Store { sha256: String, downloaded: bool },
}

/// A verified toolchain on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    pub engine: String,
    pub spec: String,
    /// The full version ("16.14.0"); "dev" for a BINDIR toolchain.
    pub version: String,
    /// The unpacked archive (holding bin/, lib/, share/).
    pub root: PathBuf,
    pub bin: PathBuf,
    pub source: ToolchainSource,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "no mirror is configured for {}{}",
        and_list(engines),
        match local {
            Some(local) => format!(
                ", and the local mirror ({}) does not have {}",
                local.display(),
                if engines.len() == 1 { "it" } else { "them" }
            ),
            None => String::new(),
        }
    )]
    NoMirror {
        engines: Vec<String>,
        local: Option<PathBuf>,
    },
    #[error("KIP_{}_BINDIR points at {}, which is not a directory", engine.to_uppercase(), path.display())]
    Bindir { engine: String, path: PathBuf },
    #[error("cannot read the mirror index at {location}")]
    Index {
        location: String,
        #[source]
        source: IndexError,
    },
    #[error(
        "the mirror has no {engine} matching \"{spec}\" for {platform}; it has: {}",
        list_or_none(available)
    )]
    NoMatchingVersion {
        engine: String,
        spec: String,
        platform: String,
        available: Vec<String>,
    },
    #[error(
        "kip.lock pins {engine} {version}, but the mirror has no such build for {platform}; it has: {}",
        list_or_none(available)
    )]
    PinnedVersionMissing {
        engine: String,
        version: String,
        platform: String,
        available: Vec<String>,
    },
    #[error(
        "kip.lock pins {engine} {version} with sha256 {pinned}, but the mirror offers sha256 {offered}"
    )]
    PinMismatch {
        engine: String,
        version: String,
        pinned: String,
        offered: String,
    },
    #[error("cannot download {engine} {version}")]
    Fetch {
        engine: String,
        version: String,
        #[source]
        source: FetchError,
    },
    #[error("cannot unpack {engine} {version}")]
    Unpack {
        engine: String,
        version: String,
        #[source]
        source: archive::ArchiveError,
    },
    #[error("the mirror entry for {engine} {version} is not a .tar.gz or .tar.zst archive: {url}")]
    UnknownArchive {
        engine: String,
        version: String,
        url: String,
    },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why an index could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Format(#[from] kip_registry::mirror::MirrorError),
}

fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".to_owned()
    } else {
        items.join(", ")
    }
}

impl ResolveError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ResolveError::NoMirror { engines, .. } => Some(format!(
                "run `kip mirror build {}` to download {} with npm, pip or apt-get into the local mirror; or set \
                 KIP_MIRROR to a mirror's URL or directory (see docs/mirror.md)",
                engines.join(" "),
                if engines.len() == 1 { "it" } else { "them" }
            )),
            ResolveError::NoMatchingVersion { .. } => {
                Some("declare one of the versions the mirror has, or point KIP_MIRROR at a mirror that has it".into())
            }
            ResolveError::PinnedVersionMissing { .. } => {
                Some("the mirror dropped the pinned build; move the pin with `kip lock --upgrade ENGINE`".into())
            }
            ResolveError::PinMismatch { .. } => Some(
                "the mirror now serves a different build under the same version; do not trust it. If the change is \
                 expected, move the pin with `kip lock --upgrade ENGINE`"
                    .into(),
            ),
            ResolveError::Fetch { source, .. } => source.hint(),
            ResolveError::Index { source: IndexError::Fetch(source), .. } => source.hint(),
            ResolveError::Index { source: IndexError::Format(source), .. } => source.hint().map(str::to_owned),
            _ => None,
        }
    }
}

/// Resolves requests against the settings, fetching lazily: nothing touches the network until a request needs
/// the index or an archive.
pub struct Resolver<'p> {
    settings: ResolveSettings,
    progress: &'p dyn Progress,
    /// Builds its HTTP client at the first URL only.
    fetcher: Fetcher,
}

impl std::fmt::Debug for Resolver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<'p> Resolver<'p> {
    pub fn new(settings: ResolveSettings, progress: &'p dyn Progress) -> Self {
        Resolver {
            settings,
            progress,
            fetcher: Fetcher::new(RetryPolicy::default()),
        }
    }

    pub fn settings(&self) -> &ResolveSettings {
        &self.settings
    }

    /// The store path for an archive hash.
    pub fn store_path(&self, sha256: &str) -> PathBuf {
        self.settings.store.join(format!("sha256-{sha256}"))
    }

    /// Resolves one request, updating `lock` when a pin is added or moved.
    pub async fn resolve(
        &mut self,
        request: &Request,
        lock: &mut LockFile,
        policy: &Policy,
    ) -> Result<Toolchain, ResolveError> {
        let engine = request.engine.as_str();
        let spec = request.spec_text();
        if let Some(bindir) = self.settings.bindirs.get(engine) {
            if !bindir.is_dir() {
                return Err(ResolveError::Bindir {
                    engine: engine.to_owned(),
                    path: bindir.clone(),
                });
            }
            let root = bindir
                .parent()
                .map_or_else(|| bindir.clone(), Path::to_path_buf);
            return Ok(Toolchain {
                engine: engine.to_owned(),
                spec,
                version: "dev".to_owned(),
                root,
                bin: bindir.clone(),
                source: ToolchainSource::Bindir,
            });
        }
        let platform = self.settings.platform.clone();
        let pin = lock
            .pin(engine, &spec)
            .filter(|_| policy.keeps_pin(engine))
            .cloned();

        // A pinned, cached toolchain: no I/O beyond one stat.
        if let Some(pin) = &pin
            && let Some(hash) = pin.hashes.get(&platform)
        {
            let path = self.store_path(hash);
            if path.is_dir() {
                return Ok(self.toolchain(request, &pin.version, hash, path, false));
            }
        }

        let (index_location, index) = self.index(engine).await?;
        let versions = index.engines.get(engine);
        let available = |platform: &str| -> Vec<String> {
            let mut list: Vec<(Version, String)> = versions
                .into_iter()
                .flatten()
                .filter(|(_, platforms)| platforms.contains_key(platform))
                .filter_map(|(version, _)| {
                    Version::parse(version).map(|parsed| (parsed, version.clone()))
                })
                .collect();
            list.sort();
            list.into_iter().map(|(_, text)| text).collect()
        };
        let version = match &pin {
            Some(pin) => {
                if !versions.is_some_and(|v| {
                    v.get(&pin.version)
                        .is_some_and(|p| p.contains_key(&platform))
                }) {
                    return Err(ResolveError::PinnedVersionMissing {
                        engine: engine.to_owned(),
                        version: pin.version.clone(),
                        platform: platform.clone(),
                        available: available(&platform),
                    });
                }
                pin.version.clone()
            }
            None => {
                let newest = versions
                    .into_iter()
                    .flatten()
                    .filter(|(_, platforms)| platforms.contains_key(&platform))
                    .filter_map(|(text, _)| Version::parse(text).map(|parsed| (parsed, text)))
                    .filter(|(parsed, _)| matches_spec(parsed, &request.spec))
                    .max_by(|a, b| a.0.cmp(&b.0));
                match newest {
                    Some((_, text)) => text.clone(),
                    None => {
                        return Err(ResolveError::NoMatchingVersion {
                            engine: engine.to_owned(),
                            spec,
                            platform: platform.clone(),
                            available: available(&platform),
                        });
                    }
                }
            }
        };
        let platforms = &index.engines[engine][&version];
        let artifact = platforms[&platform].clone();
        let expected_hash = match pin.as_ref().and_then(|pin| pin.hashes.get(&platform)) {
            Some(pinned) if *pinned != artifact.sha256 => {
                return Err(ResolveError::PinMismatch {
                    engine: engine.to_owned(),
                    version: version.clone(),
                    pinned: pinned.clone(),
                    offered: artifact.sha256.clone(),
                });
            }
            Some(pinned) => pinned.clone(),
            None => artifact.sha256.clone(),
        };
        let new_pin = match pin {
            Some(mut pin) => {
                pin.hashes
                    .entry(platform.clone())
                    .or_insert_with(|| expected_hash.clone());
                pin
            }
            None => Pin {
                version: version.clone(),
                hashes: platforms
                    .iter()
                    .map(|(platform, a)| (platform.clone(), a.sha256.clone()))
                    .collect(),
            },
        };

        let location =
            index_location
                .join(&artifact.url)
                .map_err(|source| ResolveError::Fetch {
                    engine: engine.to_owned(),
                    version: version.clone(),
                    source,
                })?;
        let (path, downloaded) = self
            .ensure(
                engine,
                &version,
                &location,
                &artifact.url,
                &expected_hash,
                artifact.size,
            )
            .await?;
        lock.pins.insert((engine.to_owned(), spec), new_pin);
        Ok(self.toolchain(request, &version, &expected_hash, path, downloaded))
    }

    fn toolchain(
        &self,
        request: &Request,
        version: &str,
        hash: &str,
        root: PathBuf,
        downloaded: bool,
    ) -> Toolchain {
        Toolchain {
            engine: request.engine.clone(),
            spec: request.spec_text(),
            version: version.to_owned(),
            bin: root.join("bin"),
            root,
            source: ToolchainSource::Store {
                sha256: hash.to_owned(),
                downloaded,
            },
        }
    }

    /// The index of `engine`'s mirror, fetched once per command ([`SharedIndexes`]).
    async fn index(&self, engine: &str) -> Result<(Location, MirrorIndex), ResolveError> {
        let Some(mirror) = self.settings.mirror_or_local(engine)? else {
            return Err(self.settings.no_mirror(vec![engine.to_owned()]));
        };
        self.index_of(mirror).await
    }

    /// The index of `mirror`: fetched by this resolver, or by another made from the same settings (one that
    /// [`prefetch_indexes`] runs ahead), which this one then waits for instead of fetching its own.
    async fn index_of(&self, mirror: String) -> Result<(Location, MirrorIndex), ResolveError> {
        let cell = self.settings.indexes.cell(&mirror);
        cell.get_or_try_init(|| self.fetch_index(mirror))
            .await
            .cloned()
    }

    async fn fetch_index(&self, mirror: String) -> Result<(Location, MirrorIndex), ResolveError> {
        let index_error = |source: IndexError| ResolveError::Index {
            location: mirror.clone(),
            source,
        };
        let base = Location::parse(&mirror).map_err(|error| index_error(error.into()))?;
        let location = if mirror.ends_with(".json") {
            base
        } else {
            base.child(crate::mirror::INDEX_FILE)
                .map_err(|error| index_error(error.into()))?
        };
        let bytes = self.fetcher.get(&location).await;
        let bytes = bytes.map_err(|error| index_error(error.into()))?;
        let index = MirrorIndex::parse(&bytes).map_err(|error| ResolveError::Index {
            location: location.to_string(),
            source: error.into(),
        })?;
        Ok((location, index))
    }

    /// Makes sure the archive with `sha256` is unpacked in the store; returns its path and whether it was fetched.
    async fn ensure(
        &mut self,
        engine: &str,
        version: &str,
        location: &Location,
        url: &str,
        sha256: &str,
        size: u64,
    ) -> Result<(PathBuf, bool), ResolveError> {
        let target = self.store_path(sha256);
        if target.is_dir() {
            return Ok((target, false));
        }
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| ResolveError::Io {
                action,
                path,
                source,
            }
        };
        let Some(kind) = ArchiveKind::from_name(url) else {
            return Err(ResolveError::UnknownArchive {
                engine: engine.to_owned(),
                version: version.to_owned(),
                url: url.to_owned(),
            });
        };
        let store = self.settings.store.clone();
        let locks = store.join(".locks");
        let temp = store.join(".tmp");
        for dir in [&locks, &temp] {
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        }
        // One resolver per artifact at a time, across processes; the others wait, then find it done.
        let lock_path = locks.join(format!("sha256-{sha256}.lock"));
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        lock_file.lock().map_err(io("lock", &lock_path))?;
        if target.is_dir() {
            return Ok((target, false));
        }
        // Whatever a crashed resolver left for this artifact is garbage now that we hold its lock.
        remove_leftovers(&temp, sha256);
        let stem = format!("sha256-{sha256}.{}", std::process::id());
        let download = temp.join(format!("{stem}.archive"));
        let unpacked = temp.join(format!("{stem}.dir"));
        let label = format!("{engine} {version}");
        let fetched = {
            let progress = self.progress;
            let fetcher = &self.fetcher;
            let expected = Expected {
                sha256: sha256.to_owned(),
                size: Some(size),
            };
            tracing::debug!(%location, %label, "downloading");
            fetcher
                .download(location, &download, &expected, progress)
                .await
        };
        fetched.map_err(|source| ResolveError::Fetch {
            engine: engine.to_owned(),
            version: version.to_owned(),
            source,
        })?;
        let unpack = archive::unpack(&download, kind, &unpacked);
        let _ = std::fs::remove_file(&download);
        unpack.map_err(|source| ResolveError::Unpack {
            engine: engine.to_owned(),
            version: version.to_owned(),
            source,
        })?;
        if let Err(source) = std::fs::rename(&unpacked, &target) {
            let _ = std::fs::remove_dir_all(&unpacked);
            return Err(ResolveError::Io {
                action: "move into the store",
                path: target,
                source,
            });
        }
        Ok((target, true))
    }
}

fn remove_leftovers(temp: &Path, sha256: &str) {
    let prefix = format!("sha256-{sha256}.");
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// Fetches, on a thread of its own, the indexes of `mirrors` (what [`check_sources`] answered) into `settings`'
/// [`SharedIndexes`]: the fetch (an HTTP client, a request, the parse; 2-3 ms over loopback) overlaps what the
/// command does before its first resolve instead of following it. Nothing is fetched twice: a resolve that comes
/// first or later shares the same fetch. A local mirror (a path) is read when needed, on no thread of its own.
pub fn prefetch_indexes(settings: &ResolveSettings, mut mirrors: Vec<String>) {
    mirrors.retain(|mirror| mirror.contains("://"));
    if mirrors.is_empty() {
        return;
    }
    let settings = settings.clone();
    let spawned = std::thread::Builder::new()
        .name("kip-index".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let resolver = Resolver::new(settings, &crate::fetch::NoProgress);
            runtime.block_on(async {
                for mirror in mirrors {
                    if let Err(error) = resolver.index_of(mirror.clone()).await {
                        tracing::debug!("fetching the index of {mirror} ahead: {error}");
                    }
                }
            });
        });
    if let Err(error) = spawned {
        tracing::debug!("no thread to fetch the mirror indexes ahead: {error}");
    }
}

/// Checks, before anything is written, that every request can be resolved from somewhere: a
/// `KIP_<ENGINE>_BINDIR`, a pinned toolchain already in the store (kept under `policy`), a configured mirror, or
/// the local mirror. One error names every engine that has none of these, so one `kip mirror build` gets them all.
/// Answers the mirrors whose indexes the resolves will read (those of the requests no pinned toolchain in the
/// store answers), each once, for [`prefetch_indexes`].
pub fn check_sources(
    requests: &[Request],
    lock: &LockFile,
    policy: &Policy,
    settings: &ResolveSettings,
) -> Result<Vec<String>, ResolveError> {
    let mut seen: Vec<&str> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    let mut mirrors: Vec<String> = Vec::new();
    for request in requests {
        let engine = request.engine.as_str();
        if settings.bindirs.contains_key(engine) || seen.contains(&engine) {
            continue;
        }
        let cached = lock
            .pin(engine, &request.spec_text())
            .filter(|_| policy.keeps_pin(engine))
            .and_then(|pin| pin.hashes.get(&settings.platform))
            .is_some_and(|hash| settings.store.join(format!("sha256-{hash}")).is_dir());
        if cached {
            continue;
        }
        seen.push(engine);
        match settings.mirror_or_local(engine)? {
            None => missing.push(engine.to_owned()),
            Some(mirror) if !mirrors.contains(&mirror) => mirrors.push(mirror),
            Some(_) => {}
        }
    }
    if missing.is_empty() {
        Ok(mirrors)
    } else {
        Err(settings.no_mirror(missing))
    }
}

/// Does a full version match a spec? `16` matches every 16.x; `16.14` every 16.14.x; `16.14.2` only itself.
pub fn matches_spec(version: &Version, spec: &Version) -> bool {
    version.major == spec.major
        && spec
            .minor
            .is_none_or(|minor| version.minor.unwrap_or(0) == minor)
        && spec
            .patch
            .is_none_or(|patch| version.patch.unwrap_or(0) == patch)
}

/// The distinct engine version specs a configuration declares, in a stable order.
pub fn requests(config: &crate::config::Config) -> Vec<Request> {
    let mut requests: Vec<Request> = config
        .instances
        .iter()
        .filter_map(|instance| {
            instance.version.clone().map(|spec| Request {
                engine: instance.engine.name.to_owned(),
                spec,
            })
        })
        .collect();
    requests.sort();
    requests.dedup();
    requests
}

/// What `kip lock --check` and `--locked` compare: the pins the config needs that kip.lock lacks (or lacks for
/// this platform), and the pins it holds that the config no longer needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LockDrift {
    pub missing: Vec<(String, String)>,
    pub stale: Vec<(String, String)>,
}

impl LockDrift {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.stale.is_empty()
    }
}

pub fn lock_drift(
    requests: &[Request],
    lock: &LockFile,
    platform: &str,
    settings: &ResolveSettings,
) -> LockDrift {
    let mut drift = LockDrift::default();
    let wanted: Vec<(String, String)> = requests
        .iter()
        .filter(|request| !settings.bindirs.contains_key(&request.engine))
        .map(|request| (request.engine.clone(), request.spec_text()))
        .collect();
    for key in &wanted {
        if !lock
            .pins
            .get(key)
            .is_some_and(|pin| pin.hashes.contains_key(platform))
        {
            drift.missing.push(key.clone());
        }
    }
    for key in lock.pins.keys() {
        if !wanted.contains(key) && !settings.bindirs.contains_key(&key.0) {
            drift.stale.push(key.clone());
        }
    }
    drift
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_match_by_the_parts_they_name() {
        let v = |text: &str| Version::parse(text).unwrap();
        assert!(matches_spec(&v("16.14.0"), &v("16")));
        assert!(matches_spec(&v("16.14.0"), &v("16.14")));
        assert!(!matches_spec(&v("16.13.0"), &v("16.14")));
        assert!(!matches_spec(&v("17.0.0"), &v("16")));
        assert!(matches_spec(&v("16.14.2"), &v("16.14.2")));
        assert!(!matches_spec(&v("16.14.3"), &v("16.14.2")));
    }

    #[test]
    fn sources_are_checked_before_anything_runs() {
        let cache = tempfile::tempdir().unwrap();
        let platform = "x86_64-unknown-linux-gnu";
        let mut settings = ResolveSettings::from_env(std::iter::empty(), cache.path());
        settings.platform = platform.to_owned();
        // Whatever mirror the developer's environment names (KIP_MIRROR) is not this test's.
        settings.mirror = None;
        let request = |engine: &str, spec: &str| Request {
            engine: engine.to_owned(),
            spec: Version::parse(spec).unwrap(),
        };
        let requests = vec![
            request("alpha", "1"),
            request("beta", "2"),
            request("beta", "3"),
            request("gamma", "4"),
        ];
        let mut lock = LockFile::default();
        let missing =
            |lock: &LockFile, policy: &Policy, settings: &ResolveSettings| match check_sources(
                &requests, lock, policy, settings,
            ) {
                Ok(_) => Vec::new(),
                Err(ResolveError::NoMirror { engines, .. }) => engines,
                Err(other) => panic!("{other}"),
            };
        // Nothing anywhere: every engine, once, in order.
        assert_eq!(
            missing(&lock, &Policy::UseLock, &settings),
            ["alpha", "beta", "gamma"]
        );
        let error = check_sources(&requests, &lock, &Policy::UseLock, &settings).unwrap_err();
        assert!(
            error.to_string().contains("alpha, beta and gamma"),
            "{error}"
        );
        assert!(
            error
                .hint()
                .unwrap()
                .contains("`kip mirror build alpha beta gamma`")
        );

        // A pin whose toolchain is unpacked needs no mirror, unless an upgrade ignores the pin.
        let hash = "ab".repeat(32);
        std::fs::create_dir_all(settings.store.join(format!("sha256-{hash}"))).unwrap();
        lock.pins.insert(
            ("alpha".to_owned(), "1".to_owned()),
            crate::lock::Pin {
                version: "1.0.0".to_owned(),
                hashes: [(platform.to_owned(), hash)].into_iter().collect(),
            },
        );
        assert_eq!(
            missing(&lock, &Policy::UseLock, &settings),
            ["beta", "gamma"]
        );
        assert_eq!(
            missing(&lock, &Policy::Upgrade(Vec::new()), &settings),
            ["alpha", "beta", "gamma"]
        );

        // A BINDIR, a per-engine mirror, and the local mirror's index (for this platform only).
        settings
            .bindirs
            .insert("gamma".to_owned(), cache.path().to_path_buf());
        let local = cache.path().join(LOCAL_MIRROR);
        std::fs::create_dir_all(&local).unwrap();
        std::fs::write(
            local.join("index.json"),
            r#"{"format": 1, "engines": {"beta": {"2.0.0": {"x86_64-unknown-linux-gnu": {"url": "b.tar.gz", "sha256": "0000000000000000000000000000000000000000000000000000000000000000", "size": 1}}}, "alpha": {"1.0.0": {"aarch64-apple-darwin": {"url": "a.tar.gz", "sha256": "0000000000000000000000000000000000000000000000000000000000000000", "size": 1}}}}}"#,
        )
        .unwrap();
        assert_eq!(
            missing(&lock, &Policy::Upgrade(Vec::new()), &settings),
            ["alpha"]
        );
        settings
            .engine_mirrors
            .insert("alpha".to_owned(), "https://mirror.invalid/".to_owned());
        assert!(missing(&lock, &Policy::Upgrade(Vec::new()), &settings).is_empty());
        // What the resolves will read, each mirror once, for the apply to fetch ahead.
        assert_eq!(
            check_sources(&requests, &lock, &Policy::Upgrade(Vec::new()), &settings).unwrap(),
            [
                "https://mirror.invalid/".to_owned(),
                local.display().to_string()
            ]
        );
        // With alpha's toolchain pinned and unpacked, only beta's mirror is read.
        assert_eq!(
            check_sources(&requests, &lock, &Policy::UseLock, &settings).unwrap(),
            [local.display().to_string()]
        );

        // A broken local index is an error of its own, naming the file.
        settings.engine_mirrors.clear();
        std::fs::write(local.join("index.json"), "{").unwrap();
        let error =
            check_sources(&requests, &lock, &Policy::Upgrade(Vec::new()), &settings).unwrap_err();
        assert!(matches!(error, ResolveError::Index { .. }), "{error}");
        assert!(error.to_string().contains("index.json"), "{error}");
    }

    #[test]
    fn upgrade_policy_names_engines() {
        assert!(Policy::UseLock.keeps_pin("postgres"));
        assert!(!Policy::Upgrade(vec![]).keeps_pin("postgres"));
        assert!(!Policy::Upgrade(vec!["postgres".into()]).keeps_pin("postgres"));
        assert!(Policy::Upgrade(vec!["valkey".into()]).keeps_pin("postgres"));
    }
}
