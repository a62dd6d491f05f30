//! Safe unpacking of engine archives (`.tar.gz`, `.tar.zst`) into a fresh directory.
//!
//! Engine archives come from mirrors that kip does not control, and their binaries are run afterwards, so an
//! archive must never write outside its unpack directory. Every entry is checked here, one by one, before
//! anything touches the disk; the `tar` crate is only used to parse headers, never to unpack.
//!
//! The rules, and why each one is enough:
//! - Entry paths are relative and have no `..` component, so they name a place under `dest`.
//! - No entry is created through a symlink: every parent of an entry must be a real directory. Symlinks are
//!   created as leaves and a directory is never replaced, so the parent chain of everything created stays
//!   physical.
//! - A symlink target is relative, its `..` components all come first, and there are no more of them than the
//!   link's depth under `dest`. The kernel applies those `..` to the link's real parent directory, so the
//!   climb stays inside `dest`; what follows only descends, through names that are themselves such links.
//!   (A `..` after a name is refused: `a/..` is not the directory holding `a` when `a` is a symlink, which is
//!   how chains of individually harmless links escape.)
//! - A hard link names a regular file already unpacked from this archive, found without following symlinks.
//! - Devices and fifos are refused; they have no place in a relocatable toolchain.
//!
//! On any error, `dest` (which `unpack` created) is removed with everything in it, so callers never see a
//! half-unpacked tree.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// The compressed archive formats a mirror may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    TarGz,
    TarZst,
}

impl ArchiveKind {
    /// The kind named by a file name's extension: `.tar.gz`, `.tgz` or `.tar.zst`.
    pub fn from_name(name: &str) -> Option<ArchiveKind> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Some(ArchiveKind::TarGz)
        } else if lower.ends_with(".tar.zst") {
            Some(ArchiveKind::TarZst)
        } else {
            None
        }
    }
}

/// What an unpack wrote: regular file entries and their total size, and links (symbolic and hard). An entry
/// that replaces an earlier one of the same name counts too.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub files: u64,
    pub bytes: u64,
    pub links: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot access {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("refusing archive {}: entry `{entry}` {reason}", archive.display())]
    Unsafe {
        archive: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("archive {} is corrupt or truncated", archive.display())]
    Corrupt {
        archive: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Read and write buffers are this large: archives are tens of megabytes, and small buffers cost a system
/// call (and a decompressor call) per few kilobytes.
const BUFFER_SIZE: usize = 256 * 1024;

/// Unpacks `archive` into `dest`, which must not exist yet (its parent must); `dest` is created.
///
/// Refuses, naming the entry, absolute paths, `..` components, symlinks that could leave `dest`, hard links
/// to anything but a file already unpacked, and device or fifo entries. On any error, `dest` is removed.
pub fn unpack(archive: &Path, kind: ArchiveKind, dest: &Path) -> Result<Unpacked, ArchiveError> {
    let file = fs::File::open(archive).map_err(|source| ArchiveError::Io {
        path: archive.to_path_buf(),
        source,
    })?;
    fs::create_dir(dest).map_err(|source| ArchiveError::Io {
        path: dest.to_path_buf(),
        source,
    })?;
    let reader = BufReader::with_capacity(BUFFER_SIZE, file);
    let result = match kind {
        ArchiveKind::TarGz => {
            unpack_tar(flate2::bufread::MultiGzDecoder::new(reader), archive, dest)
        }
        ArchiveKind::TarZst => unpack_tar(ZstdFrames::new(reader), archive, dest),
    };
    match result {
        Ok(unpacked) => {
            tracing::debug!(
                archive = %archive.display(),
                dest = %dest.display(),
                files = unpacked.files,
                bytes = unpacked.bytes,
                links = unpacked.links,
                "unpacked"
            );
            Ok(unpacked)
        }
        Err(error) => {
            if let Err(cleanup) = fs::remove_dir_all(dest) {
                tracing::warn!(dest = %dest.display(), %cleanup, "cannot remove a partly unpacked archive");
            }
            Err(error)
        }
    }
}

fn unpack_tar<R: Read>(decoder: R, archive: &Path, dest: &Path) -> Result<Unpacked, ArchiveError> {
    let corrupt = |source: io::Error| ArchiveError::Corrupt {
        archive: archive.to_path_buf(),
        source,
    };
    let mut tar = tar::Archive::new(decoder);
    let mut unpacker = Unpacker {
        archive,
        dest,
        real_dirs: HashSet::new(),
        buffer: vec![0; BUFFER_SIZE],
        unpacked: Unpacked::default(),
    };
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        unpacker.entry(&mut entry)?;
    }
    // The tar reader stops at the end-of-archive marker; reading the rest of the stream makes the
    // decompressor check its trailer (gzip's CRC and length, zstd's checksum), which is how a truncated or
    // damaged download shows up when the damage is past the last entry.
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(corrupt)?;
    Ok(unpacker.unpacked)
}

struct Unpacker<'a> {
    archive: &'a Path,
    dest: &'a Path,
    /// Paths (relative to `dest`) known to be real directories, so each is checked once, not once per entry.
    real_dirs: HashSet<PathBuf>,
    buffer: Vec<u8>,
    unpacked: Unpacked,
}

/// What the final component of an entry's path currently is on disk.
enum Existing {
    Nothing,
    Directory,
    /// A file or a symlink from an earlier entry of the same name: a later entry replaces it, as tar does.
    Replaceable,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ArchiveError> {
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        let entry_type = entry.header().entry_type();
        let components = self.entry_components(&raw_path, &name)?;
        if components.is_empty() {
            // `./` names `dest` itself, which already exists; anything else cannot be the root.
            if entry_type.is_dir() {
                return Ok(());
            }
            return Err(self.refuse(&name, "has an empty path"));
        }
        let relative: PathBuf = components.iter().collect();
        self.ensure_parents(&components, &name)?;
        let path = self.dest.join(&relative);

        match entry_type {
            tar::EntryType::Directory => match self.existing(&path, &name)? {
                Existing::Nothing => {
                    create_dir(&path)?;
                    self.real_dirs.insert(relative);
                }
                Existing::Directory => {
                    self.real_dirs.insert(relative);
                }
                Existing::Replaceable => {
                    return Err(self.refuse(&name, "turns a file or link into a directory"));
                }
            },
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.make_room(&path, &name)?;
                let mode = entry
                    .header()
                    .mode()
                    .map_err(|source| self.corrupt(source))?;
                self.write_file(entry, &path, &name, mode)?;
            }
            tar::EntryType::Symlink => {
                let target = self.link_target(entry, &name)?;
                self.check_symlink_target(&target, components.len() - 1, &name)?;
                self.make_room(&path, &name)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).map_err(
                    |source| ArchiveError::Io {
                        path: path.clone(),
                        source,
                    },
                )?;
                self.unpacked.links += 1;
            }
            tar::EntryType::Link => {
                let target = self.link_target(entry, &name)?;
                let target_path = self.hard_link_target(&target, &name)?;
                self.make_room(&path, &name)?;
                fs::hard_link(&target_path, &path).map_err(|source| ArchiveError::Io {
                    path: path.clone(),
                    source,
                })?;
                self.unpacked.links += 1;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(self.refuse(&name, "is a device"));
            }
            tar::EntryType::Fifo => return Err(self.refuse(&name, "is a fifo")),
            // Global PAX headers carry defaults (comments, times) that matter to nothing kip unpacks.
            tar::EntryType::XGlobalHeader => {}
            other => {
                return Err(self.refuse(
                    &name,
                    &format!(
                        "has an unsupported entry type `{}`",
                        other.as_byte().escape_ascii()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Splits an entry path into its normal components, refusing absolute paths and `..`.
    fn entry_components<'p>(
        &self,
        raw: &'p [u8],
        name: &str,
    ) -> Result<Vec<&'p OsStr>, ArchiveError> {
        if raw.first() == Some(&b'/') {
            return Err(self.refuse(name, "has an absolute path"));
        }
        let mut components = Vec::new();
        for component in raw.split(|byte| *byte == b'/') {
            match component {
                b"" | b"." => {}
                b".." => return Err(self.refuse(name, "has a `..` component")),
                normal => components.push(OsStr::from_bytes(normal)),
            }
        }
        Ok(components)
    }

    /// Creates the missing parents of an entry, and refuses when one of them exists but is not a real
    /// directory (a symlink, above all: writing through it could land anywhere).
    fn ensure_parents(&mut self, components: &[&OsStr], name: &str) -> Result<(), ArchiveError> {
        let mut relative = PathBuf::new();
        for component in &components[..components.len() - 1] {
            relative.push(component);
            if self.real_dirs.contains(&relative) {
                continue;
            }
            let path = self.dest.join(&relative);
            match self.existing(&path, name)? {
                Existing::Nothing => create_dir(&path)?,
                Existing::Directory => {}
                Existing::Replaceable => {
                    return Err(self.refuse(
                        name,
                        &format!(
                            "goes through `{}`, which is a file or a symlink",
                            relative.display()
                        ),
                    ));
                }
            }
            self.real_dirs.insert(relative.clone());
        }
        Ok(())
    }

    fn existing(&self, path: &Path, name: &str) -> Result<Existing, ArchiveError> {
        match fs::symlink_metadata(path) {
            Ok(metadata) if metadata.is_dir() => Ok(Existing::Directory),
            Ok(metadata) if metadata.is_file() || metadata.file_type().is_symlink() => {
                Ok(Existing::Replaceable)
            }
            Ok(_) => Err(self.refuse(
                name,
                "replaces something that is neither a file nor a directory",
            )),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Existing::Nothing),
            Err(source) => Err(ArchiveError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Removes an earlier file or symlink of the same name; refuses to replace a directory.
    fn make_room(&self, path: &Path, name: &str) -> Result<(), ArchiveError> {
        match self.existing(path, name)? {
            Existing::Nothing => Ok(()),
            Existing::Directory => Err(self.refuse(name, "replaces a directory")),
            Existing::Replaceable => fs::remove_file(path).map_err(|source| ArchiveError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        name: &str,
        mode: u32,
    ) -> Result<(), ArchiveError> {
        // Only the executable bit carries meaning for a toolchain; other bits (setuid, odd owner-only modes)
        // are normalised so that every unpack of the same archive looks the same, and stays removable.
        let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        let io_error = |source| ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(io_error)?;
        let expected = entry.size();
        let mut written: u64 = 0;
        loop {
            let read = match entry.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(self.corrupt(source)),
            };
            file.write_all(&self.buffer[..read]).map_err(io_error)?;
            written += read as u64;
        }
        if written != expected {
            return Err(self.corrupt(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("entry `{name}` ends after {written} of its {expected} bytes"),
            )));
        }
        self.unpacked.files += 1;
        self.unpacked.bytes += written;
        Ok(())
    }

    fn link_target<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        name: &str,
    ) -> Result<Vec<u8>, ArchiveError> {
        match entry.link_name_bytes() {
            Some(target) if !target.is_empty() => Ok(target.into_owned()),
            _ => Err(self.refuse(name, "is a link without a target")),
        }
    }

    /// Checks a symlink target against the rule in the module header: relative, `..` only at the start, and
    /// no more of them than `depth` (the number of directories between `dest` and the link).
    fn check_symlink_target(
        &self,
        target: &[u8],
        depth: usize,
        name: &str,
    ) -> Result<(), ArchiveError> {
        let shown = String::from_utf8_lossy(target);
        if target.first() == Some(&b'/') {
            return Err(self.refuse(name, &format!("is a symlink to an absolute path `{shown}`")));
        }
        let mut climbs = 0;
        let mut descended = false;
        for component in target.split(|byte| *byte == b'/') {
            match component {
                b"" | b"." => {}
                b".." if descended => {
                    return Err(self.refuse(
                        name,
                        &format!("is a symlink to `{shown}`, which has a `..` after a name"),
                    ));
                }
                b".." => {
                    climbs += 1;
                    if climbs > depth {
                        return Err(self.refuse(
                            name,
                            &format!(
                                "is a symlink to `{shown}`, which leaves the unpack directory"
                            ),
                        ));
                    }
                }
                _ => descended = true,
            }
        }
        Ok(())
    }

    /// A hard link's target is a path from the archive root; it must be a regular file unpacked earlier,
    /// reached through real directories only.
    fn hard_link_target(&self, target: &[u8], name: &str) -> Result<PathBuf, ArchiveError> {
        let shown = String::from_utf8_lossy(target);
        let refuse = |why: &str| self.refuse(name, &format!("is a hard link to `{shown}`, {why}"));
        if target.first() == Some(&b'/') {
            return Err(refuse("an absolute path"));
        }
        let mut path = self.dest.to_path_buf();
        let mut relative = PathBuf::new();
        let components: Vec<&[u8]> = target
            .split(|byte| *byte == b'/')
            .filter(|component| !matches!(*component, b"" | b"."))
            .collect();
        for (index, component) in components.iter().enumerate() {
            if *component == b".." {
                return Err(refuse("which leaves the unpack directory"));
            }
            path.push(OsStr::from_bytes(component));
            relative.push(OsStr::from_bytes(component));
            let last = index + 1 == components.len();
            if !last && !self.real_dirs.contains(&relative) {
                match fs::symlink_metadata(&path) {
                    Ok(metadata) if metadata.is_dir() => {}
                    _ => return Err(refuse("which is not a file unpacked from this archive")),
                }
            }
        }
        match fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_file() && !components.is_empty() => Ok(path),
            _ => Err(refuse("which is not a file unpacked from this archive")),
        }
    }

    fn refuse(&self, entry: &str, reason: &str) -> ArchiveError {
        ArchiveError::Unsafe {
            archive: self.archive.to_path_buf(),
            entry: entry.to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn corrupt(&self, source: io::Error) -> ArchiveError {
        ArchiveError::Corrupt {
            archive: self.archive.to_path_buf(),
            source,
        }
    }
}

fn create_dir(path: &Path) -> Result<(), ArchiveError> {
    // Directories are always 0755 (before the umask), whatever the archive says: kip must be able to
    // populate them now and remove them later.
    fs::create_dir(path).map_err(|source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A reader over every frame of a zstd stream, checking each frame's checksum when it has one.
///
/// ruzstd's `StreamingDecoder` reads a single frame; `zstd` and `pzstd` may write several (and skippable
/// frames), which all belong to the archive.
struct ZstdFrames<R: BufRead> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
    frames: u64,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(source: R) -> Self {
        ZstdFrames {
            source,
            decoder: FrameDecoder::new(),
            in_frame: false,
            frames: 0,
        }
    }

    /// Starts the next frame; `false` at the end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.source.fill_buf()?.is_empty() {
                if self.frames == 0 {
                    return Err(invalid_data("empty zstd stream"));
                }
                return Ok(false);
            }
            match self.decoder.reset(&mut self.source) {
                Ok(()) => {
                    self.in_frame = true;
                    self.frames += 1;
                    return Ok(true);
                }
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let length = u64::from(length);
                    let skipped = io::copy(&mut (&mut self.source).take(length), &mut io::sink())?;
                    if skipped != length {
                        return Err(invalid_data("zstd skippable frame is truncated"));
                    }
                    self.frames += 1;
                }
                Err(error) => return Err(invalid_data(error)),
            }
        }
    }

    fn end_frame(&mut self) -> io::Result<()> {
        self.in_frame = false;
        match (
            self.decoder.get_checksum_from_data(),
            self.decoder.get_calculated_checksum(),
        ) {
            (Some(stored), Some(computed)) if stored != computed => Err(invalid_data(format!(
                "zstd frame checksum mismatch: stored {stored:08x}, computed {computed:08x}"
            ))),
            _ => Ok(()),
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame && !self.next_frame()? {
                return Ok(0);
            }
            while self.decoder.can_collect() < buf.len() && !self.decoder.is_finished() {
                let wanted = buf.len() - self.decoder.can_collect();
                self.decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(wanted))
                    .map_err(invalid_data)?;
            }
            let read = self.decoder.read(buf)?;
            if read > 0 {
                return Ok(read);
            }
            if self.decoder.is_finished() {
                self.end_frame()?;
            }
        }
    }
}

fn invalid_data(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}
