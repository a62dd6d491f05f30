//! Finding and reading the configuration files of a project: `kip.hcl` and every sibling `*.kip.hcl`.
//!
//! Files are read in a stable order (kip.hcl first, then the others by name) so diagnostics and plans come out
//! the same on every machine.

use std::path::{Path, PathBuf};

use crate::source::{SourceFile, Sources};

pub const CONFIG_FILE: &str = "kip.hcl";
pub const CONFIG_SUFFIX: &str = ".kip.hcl";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no kip.hcl or *.kip.hcl in {}", dir.display())]
    NoConfig { dir: PathBuf },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LoadError {
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            LoadError::NoConfig { .. } => {
                Some("run `kip init` to write a starter kip.hcl, or pass --chdir DIR")
            }
            LoadError::Read { .. } => None,
        }
    }
}

/// The configuration files of `dir`, in load order.
pub fn discover(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read_error = |source| LoadError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut extra = Vec::new();
    let mut main = None;
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_file = entry
            .file_type()
            .map(|t| t.is_file() || t.is_symlink())
            .unwrap_or(false);
        if !is_file {
            continue;
        }
        if name == CONFIG_FILE {
            main = Some(entry.path());
        } else if name.ends_with(CONFIG_SUFFIX) && !name.starts_with('.') {
            extra.push(entry.path());
        }
    }
    extra.sort();
    let files: Vec<PathBuf> = main.into_iter().chain(extra).collect();
    if files.is_empty() {
        return Err(LoadError::NoConfig {
            dir: dir.to_path_buf(),
        });
    }
    Ok(files)
}

/// Reads every file into `sources`.
pub fn read_all(dir: &Path, files: &[PathBuf], sources: &mut Sources) -> Result<(), LoadError> {
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?;
        sources.add(SourceFile::new(
            Sources::display_name(dir, path),
            path.clone(),
            text,
        ));
    }
    Ok(())
}
