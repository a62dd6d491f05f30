//! Tests for `kip_core::archive`: good archives keep files, modes and links; every unsafe entry is refused
//! with its name and leaves nothing behind; damaged archives are reported as corrupt; and a property test
//! feeds arbitrary and mutated archives, checking for panics and for writes outside the unpack directory.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use kip_core::archive::{ArchiveError, ArchiveKind, Unpacked, unpack};
use proptest::prelude::*;
use tar::{EntryType, Header};

/// One entry, written with raw header bytes so that names the `tar` crate's builder would refuse can be
/// crafted.
#[derive(Debug, Clone)]
enum Entry {
    Dir(&'static str),
    File(&'static str, u32, Vec<u8>),
    Symlink(&'static str, &'static str),
    HardLink(&'static str, &'static str),
    Special(&'static str, EntryType),
    /// A name longer than the 100 bytes of a plain header (written as a GNU long-name entry).
    LongFile(String, Vec<u8>),
}

fn raw_header(name: &str, entry_type: EntryType, mode: u32, size: u64, link: &str) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(1_700_000_000);
    let old = header.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_cksum();
    header
}

fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        match entry {
            Entry::Dir(name) => builder
                .append(
                    &raw_header(name, EntryType::Directory, 0o755, 0, ""),
                    &[][..],
                )
                .unwrap(),
            Entry::File(name, mode, data) => builder
                .append(
                    &raw_header(name, EntryType::Regular, *mode, data.len() as u64, ""),
                    &data[..],
                )
                .unwrap(),
            Entry::Symlink(name, target) => builder
                .append(
                    &raw_header(name, EntryType::Symlink, 0o777, 0, target),
                    &[][..],
                )
                .unwrap(),
            Entry::HardLink(name, target) => builder
                .append(
                    &raw_header(name, EntryType::Link, 0o644, 0, target),
                    &[][..],
                )
                .unwrap(),
            Entry::Special(name, entry_type) => builder
                .append(&raw_header(name, *entry_type, 0o644, 0, ""), &[][..])
                .unwrap(),
            Entry::LongFile(name, data) => {
                let mut header = Header::new_gnu();
                header.set_entry_type(EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, name, &data[..]).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(bytes, ruzstd::encoding::CompressionLevel::Fastest)
}

fn compress(kind: ArchiveKind, tar: &[u8]) -> Vec<u8> {
    match kind {
        ArchiveKind::TarGz => gzip(tar),
        ArchiveKind::TarZst => zstd(tar),
    }
}

/// A scratch directory holding the archive; `dest` is `root/dest`, and nothing else may appear in `root`.
struct Scratch {
    root: tempfile::TempDir,
    archive: PathBuf,
}

impl Scratch {
    fn new(kind: ArchiveKind, compressed: &[u8]) -> Scratch {
        let root = tempfile::tempdir().unwrap();
        let name = match kind {
            ArchiveKind::TarGz => "engine.tar.gz",
            ArchiveKind::TarZst => "engine.tar.zst",
        };
        let archive = root.path().join(name);
        std::fs::write(&archive, compressed).unwrap();
        Scratch { root, archive }
    }

    fn dest(&self) -> PathBuf {
        self.root.path().join("dest")
    }

    fn unpack(&self, kind: ArchiveKind) -> Result<Unpacked, ArchiveError> {
        unpack(&self.archive, kind, &self.dest())
    }

    /// Names in `root`, sorted: only the archive, and `dest` after a success.
    fn root_listing(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

const KINDS: [ArchiveKind; 2] = [ArchiveKind::TarGz, ArchiveKind::TarZst];

fn toolchain() -> Vec<Entry> {
    vec![
        Entry::Dir("bin/"),
        Entry::File(
            "bin/postgres",
            0o755,
            b"#!/bin/sh\necho postgres\n".to_vec(),
        ),
        Entry::File("bin/pg_ctl", 0o775, vec![7; 70_000]),
        // No directory entry for lib/ or share/postgresql/: parents are created as needed.
        Entry::File("lib/libpq.so.5.16", 0o644, vec![1; 300_000]),
        Entry::Symlink("lib/libpq.so.5", "libpq.so.5.16"),
        Entry::Symlink("lib/libpq.so", "./libpq.so.5"),
        Entry::Symlink("bin/libpq-from-bin", "../lib/libpq.so"),
        Entry::Symlink("lib/self", "."),
        Entry::File(
            "share/postgresql/timezone/Europe/Paris",
            0o600,
            b"TZif".to_vec(),
        ),
        Entry::File("./share/empty", 0o644, Vec::new()),
        Entry::HardLink("bin/postmaster", "bin/postgres"),
        Entry::LongFile(
            format!("share/{}/long.sql", "deep/".repeat(30)),
            b"select 1;\n".to_vec(),
        ),
        // A duplicate name: the later entry wins, as with tar(1).
        Entry::File("share/postgresql/version", 0o644, b"15\n".to_vec()),
        Entry::File("share/postgresql/version", 0o644, b"16\n".to_vec()),
    ]
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn kind_from_name() {
    assert_eq!(
        ArchiveKind::from_name("pg-16.tar.gz"),
        Some(ArchiveKind::TarGz)
    );
    assert_eq!(
        ArchiveKind::from_name("pg-16.tgz"),
        Some(ArchiveKind::TarGz)
    );
    assert_eq!(
        ArchiveKind::from_name("pg-16.TAR.ZST"),
        Some(ArchiveKind::TarZst)
    );
    assert_eq!(ArchiveKind::from_name("pg-16.tar.xz"), None);
    assert_eq!(ArchiveKind::from_name("pg-16.zst"), None);
}

#[test]
fn good_archives_keep_files_modes_and_links() {
    for kind in KINDS {
        let scratch = Scratch::new(kind, &compress(kind, &tar_bytes(&toolchain())));
        let unpacked = scratch.unpack(kind).unwrap();
        let dest = scratch.dest();
        assert_eq!(
            unpacked,
            Unpacked {
                files: 8,
                bytes: 24 + 70_000 + 300_000 + 4 + 10 + 3 + 3,
                links: 5,
            },
            "{kind:?}"
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("bin/postgres")).unwrap(),
            "#!/bin/sh\necho postgres\n"
        );
        assert_eq!(mode(&dest.join("bin/postgres")), 0o755);
        assert_eq!(mode(&dest.join("bin/pg_ctl")), 0o755);
        assert_eq!(mode(&dest.join("lib/libpq.so.5.16")) & 0o111, 0);
        assert_eq!(
            std::fs::read_link(dest.join("lib/libpq.so.5")).unwrap(),
            Path::new("libpq.so.5.16")
        );
        assert_eq!(
            std::fs::read(dest.join("lib/libpq.so")).unwrap().len(),
            300_000
        );
        assert_eq!(
            std::fs::read(dest.join("bin/libpq-from-bin"))
                .unwrap()
                .len(),
            300_000
        );
        assert!(dest.join("lib/self/self/libpq.so.5.16").exists());
        assert_eq!(
            std::fs::read_to_string(dest.join("bin/postmaster")).unwrap(),
            "#!/bin/sh\necho postgres\n"
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("share/postgresql/version")).unwrap(),
            "16\n"
        );
        assert_eq!(std::fs::read(dest.join("share/empty")).unwrap(), b"");
        let long = dest.join(format!("share/{}/long.sql", "deep/".repeat(30)));
        assert_eq!(std::fs::read_to_string(long).unwrap(), "select 1;\n");
        assert_eq!(scratch.root_listing().len(), 2);
    }
}

#[test]
fn zstd_streams_with_several_frames_and_skippable_frames() {
    let tar = tar_bytes(&toolchain());
    let mut compressed = zstd(&tar[..10_000]);
    // A skippable frame: magic 0x184D2A5?, a little-endian length, then that many bytes.
    compressed.extend_from_slice(&0x184D_2A53u32.to_le_bytes());
    compressed.extend_from_slice(&5u32.to_le_bytes());
    compressed.extend_from_slice(b"kip!!");
    compressed.extend_from_slice(&zstd(&tar[10_000..]));
    let scratch = Scratch::new(ArchiveKind::TarZst, &compressed);
    let unpacked = scratch.unpack(ArchiveKind::TarZst).unwrap();
    assert_eq!(unpacked.files, 8);
}

#[test]
fn concatenated_gzip_members_are_one_archive() {
    let tar = tar_bytes(&toolchain());
    let mut compressed = gzip(&tar[..10_000]);
    compressed.extend_from_slice(&gzip(&tar[10_000..]));
    let scratch = Scratch::new(ArchiveKind::TarGz, &compressed);
    assert_eq!(scratch.unpack(ArchiveKind::TarGz).unwrap().files, 8);
}

/// Unpacks `entries` (after a harmless file, so that something must be cleaned up) and checks the refusal
/// names `entry` and says `reason`, and that nothing is left behind.
#[track_caller]
fn check_refused(entries: Vec<Entry>, entry: &str, reason: &str) {
    let mut all = vec![
        Entry::File("bin/postgres", 0o755, b"ok".to_vec()),
        Entry::Dir("lib/"),
    ];
    all.extend(entries);
    for kind in KINDS {
        let scratch = Scratch::new(kind, &compress(kind, &tar_bytes(&all)));
        let error = scratch.unpack(kind).unwrap_err();
        match &error {
            ArchiveError::Unsafe {
                archive,
                entry: named,
                reason: said,
            } => {
                assert_eq!(archive, &scratch.archive);
                assert_eq!(named, entry, "{error}");
                assert!(
                    said.contains(reason),
                    "`{said}` does not contain `{reason}`"
                );
            }
            other => panic!("expected Unsafe for `{entry}`, got {other:?}"),
        }
        assert!(
            error.to_string().starts_with("refusing archive ") && error.to_string().contains(entry),
            "{error}"
        );
        let archive_name = scratch
            .archive
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(
            scratch.root_listing(),
            vec![archive_name],
            "{kind:?}: left behind"
        );
    }
}

#[test]
fn absolute_paths_are_refused() {
    check_refused(
        vec![Entry::File("/tmp/kip-escape", 0o644, b"x".to_vec())],
        "/tmp/kip-escape",
        "absolute path",
    );
}

#[test]
fn dot_dot_components_are_refused() {
    check_refused(
        vec![Entry::File("../escape", 0o644, b"x".to_vec())],
        "../escape",
        "`..` component",
    );
    check_refused(
        vec![Entry::File("a/../../escape", 0o644, b"x".to_vec())],
        "a/../../escape",
        "`..` component",
    );
    check_refused(vec![Entry::Dir("lib/../..")], "lib/../..", "`..` component");
}

#[test]
fn symlinks_leaving_dest_are_refused() {
    check_refused(
        vec![Entry::Symlink("lib/passwd", "/etc/passwd")],
        "lib/passwd",
        "absolute path `/etc/passwd`",
    );
    check_refused(
        vec![Entry::Symlink("lib/x", "../../outside")],
        "lib/x",
        "leaves the unpack directory",
    );
    check_refused(
        vec![Entry::Symlink("top", "..")],
        "top",
        "leaves the unpack directory",
    );
}

#[test]
fn symlink_chains_cannot_escape() {
    // `lib/up` points at dest itself (allowed); `chain` would then climb out through it.
    check_refused(
        vec![
            Entry::Symlink("lib/up", ".."),
            Entry::Symlink("chain", "lib/up/../.."),
        ],
        "chain",
        "`..` after a name",
    );
    // Writing through a symlinked directory is refused, even when that link points inside.
    check_refused(
        vec![
            Entry::Symlink("lib/up", ".."),
            Entry::Symlink("lib/up/escape", "../outside"),
        ],
        "lib/up/escape",
        "goes through `lib/up`",
    );
    check_refused(
        vec![
            Entry::Symlink("lib/up", ".."),
            Entry::File("lib/up/file", 0o644, b"x".to_vec()),
        ],
        "lib/up/file",
        "goes through `lib/up`",
    );
}

#[test]
fn hard_links_outside_are_refused() {
    check_refused(
        vec![Entry::HardLink("lib/passwd", "../outside")],
        "lib/passwd",
        "leaves the unpack directory",
    );
    check_refused(
        vec![Entry::HardLink("lib/passwd", "/etc/passwd")],
        "lib/passwd",
        "absolute path",
    );
    // A hard link to a symlink would copy the symlink to another depth, where its `..` mean something else.
    check_refused(
        vec![
            Entry::Symlink("lib/up", ".."),
            Entry::HardLink("top", "lib/up"),
        ],
        "top",
        "not a file unpacked from this archive",
    );
    check_refused(
        vec![Entry::HardLink("lib/missing", "lib/nothing")],
        "lib/missing",
        "not a file unpacked from this archive",
    );
}

#[test]
fn devices_and_fifos_are_refused() {
    check_refused(
        vec![Entry::Special("dev/null", EntryType::Char)],
        "dev/null",
        "is a device",
    );
    check_refused(
        vec![Entry::Special("dev/sda", EntryType::Block)],
        "dev/sda",
        "is a device",
    );
    check_refused(
        vec![Entry::Special("run/pipe", EntryType::Fifo)],
        "run/pipe",
        "is a fifo",
    );
}

#[test]
fn replacing_a_directory_is_refused() {
    check_refused(
        vec![Entry::Symlink("lib", "bin")],
        "lib",
        "replaces a directory",
    );
}

#[test]
fn existing_dest_is_an_error_and_is_kept() {
    let scratch = Scratch::new(ArchiveKind::TarGz, &gzip(&tar_bytes(&toolchain())));
    std::fs::create_dir(scratch.dest()).unwrap();
    std::fs::write(scratch.dest().join("keep"), b"mine").unwrap();
    let error = scratch.unpack(ArchiveKind::TarGz).unwrap_err();
    assert!(
        matches!(&error, ArchiveError::Io { path, .. } if *path == scratch.dest()),
        "{error:?}"
    );
    assert_eq!(std::fs::read(scratch.dest().join("keep")).unwrap(), b"mine");
}

#[track_caller]
fn check_corrupt(kind: ArchiveKind, compressed: &[u8], what: &str) {
    let scratch = Scratch::new(kind, compressed);
    let error = scratch.unpack(kind).unwrap_err();
    assert!(
        matches!(&error, ArchiveError::Corrupt { archive, .. } if *archive == scratch.archive),
        "{what} ({kind:?}): {error:?}"
    );
    assert_eq!(
        scratch.root_listing().len(),
        1,
        "{what} ({kind:?}): left behind"
    );
}

#[test]
fn damaged_archives_are_corrupt() {
    let tar = tar_bytes(&toolchain());
    for kind in KINDS {
        let good = compress(kind, &tar);
        check_corrupt(kind, &good[..good.len() / 2], "truncated in the middle");
        check_corrupt(kind, &good[..good.len() - 3], "truncated at the end");
        check_corrupt(kind, b"", "empty");
        check_corrupt(kind, b"this is not an archive at all, just text", "garbage");
        // Valid compression around a tar cut in the middle of a file's data.
        check_corrupt(kind, &compress(kind, &tar[..20_000]), "tar cut mid-entry");
    }
    // A flipped byte in the gzip trailer (the CRC) is caught.
    let mut good = gzip(&tar);
    let crc = good.len() - 8;
    good[crc] ^= 0xff;
    check_corrupt(ArchiveKind::TarGz, &good, "bad crc");
    let error = {
        let scratch = Scratch::new(ArchiveKind::TarGz, b"garbage");
        scratch.unpack(ArchiveKind::TarGz).unwrap_err()
    };
    assert!(
        error.to_string().contains("is corrupt or truncated"),
        "{error}"
    );
}

/// Every symlink under `dest` that resolves at all resolves inside `dest`.
fn assert_links_stay_inside(dest: &Path) {
    let dest = dest.canonicalize().unwrap();
    let mut pending = vec![dest.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let file_type = entry.file_type().unwrap();
            if file_type.is_dir() {
                pending.push(entry.path());
            } else if file_type.is_symlink()
                && let Ok(resolved) = entry.path().canonicalize()
            {
                assert!(
                    resolved.starts_with(&dest),
                    "{} resolves to {}",
                    entry.path().display(),
                    resolved.display()
                );
            }
        }
    }
}

fn check_no_escape(kind: ArchiveKind, compressed: &[u8]) {
    let scratch = Scratch::new(kind, compressed);
    let result = scratch.unpack(kind);
    let listing = scratch.root_listing();
    match result {
        Ok(_) => {
            assert_eq!(listing.len(), 2, "{listing:?}");
            assert_links_stay_inside(&scratch.dest());
        }
        Err(_) => assert_eq!(listing.len(), 1, "{listing:?}"),
    }
}

/// A tar with every kind of entry, including hostile ones, for mutation.
fn hostile_tar() -> Vec<u8> {
    let mut entries = toolchain();
    entries.extend([
        Entry::Symlink("lib/up", ".."),
        Entry::Symlink("lib/z", "../lib/libpq.so"),
        Entry::HardLink("lib/hard", "lib/libpq.so.5.16"),
        Entry::File("share/tail", 0o644, b"tail".to_vec()),
    ]);
    tar_bytes(&entries)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        for kind in KINDS {
            check_no_escape(kind, &bytes);
            check_no_escape(kind, &compress(kind, &bytes));
        }
    }

    #[test]
    fn mutated_archives_never_escape(
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut tar = hostile_tar();
        // Mutate headers mostly: they sit in the first few kilobytes and between the entries' data.
        for (index, byte) in mutations {
            let at = index.index(tar.len());
            tar[at] = byte;
        }
        if truncate {
            tar.truncate(cut.index(tar.len()));
        }
        for kind in KINDS {
            check_no_escape(kind, &compress(kind, &tar));
        }
    }

    #[test]
    fn mutated_compressed_streams_never_panic(
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let tar = hostile_tar();
        for kind in KINDS {
            let mut compressed = compress(kind, &tar);
            for (index, byte) in &mutations {
                let at = index.index(compressed.len());
                compressed[at] = *byte;
            }
            check_no_escape(kind, &compressed);
        }
    }
}

/// Unpack time for an archive shaped like PostgreSQL's (~1,500 files, ~23 MB compressed). Ignored by
/// default because building the archive dominates; run with
/// `cargo test --release -p kip-core --test archive -- --ignored --nocapture`. With `TMPDIR=/dev/shm` it
/// measures kip's own cost; on a slow disk, the file system's (GNU tar is no faster there).
#[test]
#[ignore]
fn unpack_speed_on_a_postgres_sized_archive() {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut noise = |size: usize| -> Vec<u8> {
        // Half incompressible, half text-like: about the ratio of a real PostgreSQL archive (~3:1).
        (0..size)
            .map(|position| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if position % 4096 < 1400 {
                    state as u8
                } else {
                    b"select * from pg_;\n"[position % 19]
                }
            })
            .collect()
    };
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |name: String, mode: u32, data: Vec<u8>| {
        let mut header = Header::new_gnu();
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, name, &data[..]).unwrap();
    };
    for index in 0..6 {
        add(format!("bin/tool{index}"), 0o755, noise(6_000_000));
    }
    for index in 0..120 {
        add(
            format!("lib/postgresql/mod{index}.so"),
            0o755,
            noise(150_000),
        );
    }
    for index in 0..1_400 {
        add(
            format!("share/postgresql/part{}/file{index}.sql", index % 40),
            0o644,
            noise(9_000),
        );
    }
    let tar = builder.into_inner().unwrap();
    for kind in KINDS {
        let compressed = compress(kind, &tar);
        let scratch = Scratch::new(kind, &compressed);
        let started = std::time::Instant::now();
        let unpacked = scratch.unpack(kind).unwrap();
        let elapsed = started.elapsed();
        println!(
            "{kind:?}: {:.1} MB compressed, {:.1} MB in {} files unpacked in {elapsed:?}",
            compressed.len() as f64 / 1e6,
            unpacked.bytes as f64 / 1e6,
            unpacked.files,
        );
    }
}
