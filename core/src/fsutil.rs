//! Small filesystem helpers shared by everything in the core that writes files users rely on.

use std::io::Write as _;
use std::path::Path;

/// Writes `contents` to `path` atomically: a temp file in the same directory, fsync, rename, then fsync the
/// directory, keeping the mode of a file it replaces. A reader sees the old file or the new one, never half of either; a crash leaves at most a stray
/// temp file.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
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
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        // Keep the mode of the file being replaced (a kip.hcl that is group-writable stays so).
        if let Ok(metadata) = std::fs::metadata(path) {
            std::fs::set_permissions(&temp, metadata.permissions())?;
        }
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}
