//! Where a project keeps its files: `.kip/` beside kip.hcl (state, supervisor socket, logs, and instance data
//! when the engines' account can reach it), the user's cache (toolchains, templates), and the `kip` binary that
//! runs the supervisor.

use std::path::{Path, PathBuf};

use crate::address::Address;
use crate::engine::RunAs;

#[derive(Debug, Clone)]
pub struct Project {
    /// The directory holding kip.hcl.
    pub dir: PathBuf,
    /// `dir/.kip`: state, supervisor socket, logs.
    pub kip_dir: PathBuf,
    /// The user's cache: the toolchain store and templates.
    pub cache: PathBuf,
    /// The `kip` binary, to start the supervisor with.
    pub kip_exe: PathBuf,
}

/// The directories of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceDirs {
    /// Holds the two below; destroy removes it.
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
}

impl Project {
    pub fn new(dir: &Path, cache: &Path, kip_exe: &Path) -> Project {
        Project {
            dir: dir.to_path_buf(),
            kip_dir: dir.join(".kip"),
            cache: cache.to_path_buf(),
            kip_exe: kip_exe.to_path_buf(),
        }
    }

    /// The shared template cache.
    pub fn templates(&self) -> PathBuf {
        self.cache.join("templates")
    }

    /// Where an instance's data and sockets go: under `.kip/run/<slug>/`, unless the account the engine runs as
    /// cannot reach it (a project in root's 0700 home), then under `/var/lib/kip/projects/<hash>/<slug>/`. Logs
    /// stay in `.kip/logs/<slug>/`. The slug is collision-free ([`Address::slug`]).
    pub fn instance_dirs(&self, address: &Address, run_as: Option<&RunAs>) -> InstanceDirs {
        let local = self.kip_dir.join("run");
        let root = match run_as {
            Some(run_as) if crate::runas::ensure_reachable(&self.kip_dir, run_as).is_err() => {
                let hash =
                    <sha2::Sha256 as sha2::Digest>::digest(self.dir.to_string_lossy().as_bytes());
                let digest = crate::mirror::hex(&hash[..8]);
                PathBuf::from("/var/lib/kip/projects").join(digest)
            }
            _ => local,
        };
        let slug = address.slug();
        let dir = root.join(&slug);
        InstanceDirs {
            data_dir: dir.join("data"),
            run_dir: dir.join("run"),
            log_dir: self.kip_dir.join("logs").join(&slug),
            dir,
        }
    }
}
