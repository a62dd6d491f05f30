//! The trust store: where a registry newer than the embedded one is installed, and which registry is in force.
//!
//! The store is a directory chosen by the caller (the cli decides where it lives) holding at most one installed
//! registry, `registry.json`, and its signature, `registry.json.sig`. The registry compiled into kip is the floor:
//!
//! - [`TrustStore::active`] returns the installed registry when it verifies and is newer than the embedded one,
//!   the embedded one when nothing is installed or the installed one is not newer (kip was upgraded past it). An
//!   installed registry that fails verification is an error naming the file rather than a silent fallback, because
//!   falling back could quietly re-enable versions the newer registry dropped.
//! - [`TrustStore::install`] verifies a document against the newest registry trusted so far (embedded or installed)
//!   and only then writes it.
//!
//! Writes are atomic per file (temp file in the same directory, fsync, rename, fsync of the directory). The signature
//! is renamed into place before the document: on a first install a reader in between sees no document and uses the
//! embedded registry. Replacing an installed pair leaves a moment where a reader sees the new signature with the old
//! document and gets a "tampered" error; running the command again resolves it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use time::OffsetDateTime;

use crate::{Registry, RegistryError, TrustedKey, embedded, trusted_keys, verify, verify_signed};

/// File name of the installed registry document inside the store directory.
pub const DOCUMENT_FILE: &str = "registry.json";
/// File name of the installed registry's signature inside the store directory.
pub const SIGNATURE_FILE: &str = "registry.json.sig";

/// Where the registry in force came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Compiled into kip.
    Embedded,
    /// Installed in the trust store; the path of the document.
    Installed(PathBuf),
}

/// The registry in force, verified and current, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRegistry {
    pub registry: Registry,
    pub source: Source,
}

/// A trust-store directory and the trust anchors it is checked against.
#[derive(Debug, Clone)]
pub struct TrustStore {
    dir: PathBuf,
    keys: Vec<TrustedKey>,
    /// The floor registry; `None` means the one compiled into kip.
    base: Option<Registry>,
}

/// An installed document and its signature as read from disk, not yet verified.
struct InstalledFiles {
    document: Vec<u8>,
    signature: Option<Vec<u8>>,
}

impl TrustStore {
    /// A store in `dir`, trusting the compiled-in keys with the embedded registry as the floor. The directory need
    /// not exist until something is installed.
    pub fn new(dir: PathBuf) -> TrustStore {
        TrustStore {
            dir,
            keys: trusted_keys().to_vec(),
            base: None,
        }
    }

    /// A store with other trust anchors: `keys` instead of the compiled-in ones and `base` instead of the embedded
    /// registry. For tests and tools that work with their own signing key.
    pub fn with_anchors(dir: PathBuf, keys: Vec<TrustedKey>, base: Registry) -> TrustStore {
        TrustStore {
            dir,
            keys,
            base: Some(base),
        }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the installed document (which may not exist).
    pub fn document_path(&self) -> PathBuf {
        self.dir.join(DOCUMENT_FILE)
    }

    /// The path of the installed signature (which may not exist).
    pub fn signature_path(&self) -> PathBuf {
        self.dir.join(SIGNATURE_FILE)
    }

    /// The registry in force at `now`: the newest verified one among the embedded and the installed registry.
    pub fn active(&self, now: OffsetDateTime) -> Result<ActiveRegistry, RegistryError> {
        let base = self.base()?;
        let embedded_active = || -> Result<ActiveRegistry, RegistryError> {
            base.check_not_expired(now)?;
            Ok(ActiveRegistry {
                registry: base.clone(),
                source: Source::Embedded,
            })
        };
        let Some(files) = self.read_installed()? else {
            return embedded_active();
        };
        let installed = verify_signed(&files.document, files.signature.as_deref(), &self.keys)
            .map_err(|error| self.installed_invalid(error))?;
        if installed.serial <= base.serial {
            // kip was upgraded past the installed registry; the embedded one is at least as new.
            return embedded_active();
        }
        installed
            .check_not_expired(now)
            .map_err(|error| self.installed_invalid(error))?;
        Ok(ActiveRegistry {
            registry: installed,
            source: Source::Installed(self.document_path()),
        })
    }

    /// Verifies `document` and `signature` against the newest registry trusted so far and, when they pass, writes
    /// both into the store. Returns the installed registry.
    ///
    /// An installed registry that no longer verifies does not block a new install (installing is how it is
    /// repaired), and it does not count as trusted. A document with the same serial as the trusted one is accepted
    /// only when it says the same thing.
    pub fn install(
        &self,
        document: &[u8],
        signature: &[u8],
        now: OffsetDateTime,
    ) -> Result<Registry, RegistryError> {
        let base = self.base()?;
        let installed = self.read_installed()?.and_then(|files| {
            verify_signed(&files.document, files.signature.as_deref(), &self.keys).ok()
        });
        let trusted = match installed {
            Some(installed) if installed.serial > base.serial => installed,
            _ => base.clone(),
        };
        let registry = verify(
            document,
            Some(signature),
            &self.keys,
            now,
            Some(trusted.serial),
        )?;
        if registry.serial == trusted.serial && registry != trusted {
            return Err(RegistryError::SerialConflict {
                serial: registry.serial,
            });
        }

        fs::create_dir_all(&self.dir).map_err(|source| {
            RegistryError::io("create the trust store directory", self.dir.clone(), source)
        })?;
        let signature_temp = write_temp(&self.dir, SIGNATURE_FILE, signature)?;
        let document_temp = match write_temp(&self.dir, DOCUMENT_FILE, document) {
            Ok(path) => path,
            Err(error) => {
                let _ = fs::remove_file(&signature_temp);
                return Err(error);
            }
        };
        rename_into_place(&signature_temp, &self.signature_path(), &document_temp)?;
        rename_into_place(&document_temp, &self.document_path(), &document_temp)?;
        sync_dir(&self.dir)?;
        Ok(registry)
    }

    fn base(&self) -> Result<&Registry, RegistryError> {
        match &self.base {
            Some(base) => Ok(base),
            None => embedded(),
        }
    }

    fn read_installed(&self) -> Result<Option<InstalledFiles>, RegistryError> {
        let Some(document) = read_if_present(&self.document_path())? else {
            return Ok(None);
        };
        let signature = read_if_present(&self.signature_path())?;
        Ok(Some(InstalledFiles {
            document,
            signature,
        }))
    }

    fn installed_invalid(&self, error: RegistryError) -> RegistryError {
        RegistryError::InstalledInvalid {
            path: self.document_path(),
            signature_path: self.signature_path(),
            source: Box::new(error),
        }
    }
}

fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, RegistryError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RegistryError::io("read", path.to_owned(), source)),
    }
}

/// Writes `bytes` to a new temporary file next to the final `name` and flushes it to disk.
fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, RegistryError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(".{name}.{}.{unique}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    match result {
        Ok(()) => Ok(path),
        Err(source) => {
            let _ = fs::remove_file(&path);
            Err(RegistryError::io("write", path, source))
        }
    }
}

/// Renames `temp` to `target`; on failure removes both temporary files so nothing half-written stays behind.
fn rename_into_place(temp: &Path, target: &Path, other_temp: &Path) -> Result<(), RegistryError> {
    fs::rename(temp, target).map_err(|source| {
        let _ = fs::remove_file(temp);
        let _ = fs::remove_file(other_temp);
        RegistryError::io("replace", target.to_owned(), source)
    })
}

/// Flushes the directory entry changes (the renames) to disk, where the platform supports it.
fn sync_dir(dir: &Path) -> Result<(), RegistryError> {
    #[cfg(unix)]
    {
        fs::File::open(dir)
            .and_then(|handle| handle.sync_all())
            .map_err(|source| RegistryError::io("sync", dir.to_owned(), source))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{load_signing_key, sign};
    use ed25519_dalek::SigningKey;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2027-06-01 12:00 UTC);

    struct Fixture {
        _temp: tempfile::TempDir,
        store: TrustStore,
        signing_key: SigningKey,
        base: Registry,
    }

    fn document(serial: u64, expires: &str, postgres: &[u32]) -> Vec<u8> {
        let majors: Vec<String> = postgres.iter().map(u32::to_string).collect();
        format!(
            "{{\n  \"format\": 1,\n  \"serial\": {serial},\n  \"issued\": \"2026-11-23T00:00:00Z\",\n  \
             \"expires\": \"{expires}\",\n  \"engines\": {{ \"postgres\": {{ \"majors\": [{}] }} }}\n}}\n",
            majors.join(", ")
        )
        .into_bytes()
    }

    fn fixture() -> Fixture {
        let temp = tempfile::tempdir().unwrap();
        let (private_pem, public_pem) = crate::keygen();
        let signing_key = load_signing_key(&private_pem).unwrap();
        let keys = vec![TrustedKey::from_pem(&public_pem).unwrap()];
        let base = Registry::parse(&document(3, "2028-12-31T23:59:59Z", &[16, 17])).unwrap();
        let store = TrustStore::with_anchors(temp.path().join("trust"), keys, base.clone());
        Fixture {
            _temp: temp,
            store,
            signing_key,
            base,
        }
    }

    impl Fixture {
        fn install(&self, document: &[u8]) -> Result<Registry, RegistryError> {
            let signature = sign(document, &self.signing_key);
            self.store.install(document, signature.as_bytes(), NOW)
        }
    }

    #[test]
    fn nothing_installed_means_the_embedded_registry() {
        let fixture = fixture();
        let active = fixture.store.active(NOW).unwrap();
        assert_eq!(active.source, Source::Embedded);
        assert_eq!(active.registry, fixture.base);
    }

    #[test]
    fn a_newer_registry_installs_and_becomes_active() {
        let fixture = fixture();
        let newer = document(4, "2029-06-30T00:00:00Z", &[16, 17, 18]);
        let installed = fixture.install(&newer).unwrap();
        assert_eq!(installed.serial, 4);
        assert_eq!(fs::read(fixture.store.document_path()).unwrap(), newer);
        let signature = fs::read(fixture.store.signature_path()).unwrap();
        assert_eq!(signature, sign(&newer, &fixture.signing_key).into_bytes());

        let active = fixture.store.active(NOW).unwrap();
        assert_eq!(
            active.source,
            Source::Installed(fixture.store.document_path())
        );
        assert!(active.registry.supports("postgres", 18));

        // No temporary files are left behind.
        let mut names: Vec<String> = fs::read_dir(fixture.store.dir())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [DOCUMENT_FILE, SIGNATURE_FILE]);
    }

    #[test]
    fn install_refuses_rollback_below_the_embedded_floor() {
        let fixture = fixture();
        let error = fixture
            .install(&document(2, "2028-12-31T23:59:59Z", &[16]))
            .unwrap_err();
        assert!(
            matches!(
                error,
                RegistryError::Rollback {
                    serial: 2,
                    trusted: 3
                }
            ),
            "{error:?}"
        );
        assert!(!fixture.store.document_path().exists());
    }

    #[test]
    fn install_refuses_rollback_below_the_installed_registry() {
        let fixture = fixture();
        fixture
            .install(&document(6, "2028-12-31T23:59:59Z", &[17]))
            .unwrap();
        let error = fixture
            .install(&document(5, "2028-12-31T23:59:59Z", &[16, 17]))
            .unwrap_err();
        assert!(
            matches!(
                error,
                RegistryError::Rollback {
                    serial: 5,
                    trusted: 6
                }
            ),
            "{error:?}"
        );
        assert_eq!(fixture.store.active(NOW).unwrap().registry.serial, 6);
    }

    #[test]
    fn equal_serial_is_fine_only_for_the_same_registry() {
        let fixture = fixture();
        let same = serde_json::to_vec(&fixture.base).unwrap();
        assert_eq!(fixture.install(&same).unwrap(), fixture.base);
        let different = document(3, "2028-12-31T23:59:59Z", &[18]);
        let error = fixture.install(&different).unwrap_err();
        assert!(
            matches!(error, RegistryError::SerialConflict { serial: 3 }),
            "{error:?}"
        );
    }

    #[test]
    fn install_refuses_bad_signatures_and_tampered_documents() {
        let fixture = fixture();
        let newer = document(4, "2028-12-31T23:59:59Z", &[17]);
        let error = fixture.store.install(&newer, b"", NOW).unwrap_err();
        assert!(matches!(error, RegistryError::MalformedSignature { .. }));
        let signature = sign(&newer, &fixture.signing_key);
        let tampered = document(4, "2028-12-31T23:59:59Z", &[14]);
        let error = fixture
            .store
            .install(&tampered, signature.as_bytes(), NOW)
            .unwrap_err();
        assert!(matches!(error, RegistryError::Tampered { .. }));
        assert!(!fixture.store.dir().exists());
    }

    #[test]
    fn a_broken_installed_registry_is_an_error_naming_the_file() {
        let fixture = fixture();
        fixture
            .install(&document(4, "2028-12-31T23:59:59Z", &[17]))
            .unwrap();
        fs::write(
            fixture.store.document_path(),
            document(4, "2028-12-31T23:59:59Z", &[14]),
        )
        .unwrap();
        let error = fixture.store.active(NOW).unwrap_err();
        let RegistryError::InstalledInvalid { path, source, .. } = &error else {
            panic!("expected InstalledInvalid, got {error:?}");
        };
        assert_eq!(path, &fixture.store.document_path());
        assert!(matches!(**source, RegistryError::Tampered { .. }));
        assert_eq!(
            error.to_string(),
            format!("the installed registry {} is not usable", path.display())
        );
        let hint = error.hint().unwrap();
        assert!(hint.contains(&path.display().to_string()), "{hint}");
        assert!(hint.contains("kip registry update"), "{hint}");

        // Installing a good registry repairs the store.
        fixture
            .install(&document(5, "2028-12-31T23:59:59Z", &[17]))
            .unwrap();
        assert_eq!(fixture.store.active(NOW).unwrap().registry.serial, 5);
    }

    #[test]
    fn a_document_without_its_signature_is_unsigned() {
        let fixture = fixture();
        fixture
            .install(&document(4, "2028-12-31T23:59:59Z", &[17]))
            .unwrap();
        fs::remove_file(fixture.store.signature_path()).unwrap();
        let error = fixture.store.active(NOW).unwrap_err();
        let RegistryError::InstalledInvalid { source, .. } = &error else {
            panic!("expected InstalledInvalid, got {error:?}");
        };
        assert!(matches!(**source, RegistryError::Unsigned));
    }

    #[test]
    fn an_installed_registry_older_than_the_embedded_one_is_superseded() {
        let fixture = fixture();
        fixture
            .install(&document(5, "2028-12-31T23:59:59Z", &[17]))
            .unwrap();
        // kip is upgraded: its embedded registry now has serial 7.
        let upgraded_base =
            Registry::parse(&document(7, "2028-12-31T23:59:59Z", &[17, 18])).unwrap();
        let upgraded = TrustStore::with_anchors(
            fixture.store.dir().to_owned(),
            fixture.store.keys.clone(),
            upgraded_base.clone(),
        );
        let active = upgraded.active(NOW).unwrap();
        assert_eq!(active.source, Source::Embedded);
        assert_eq!(active.registry, upgraded_base);
    }

    #[test]
    fn expiry_is_checked_on_the_registry_in_force() {
        let fixture = fixture();
        let after_base = datetime!(2029-01-02 00:00 UTC);
        let error = fixture.store.active(after_base).unwrap_err();
        assert!(matches!(error, RegistryError::Expired { .. }), "{error:?}");

        // A newer installed registry that is still current replaces the expired embedded one.
        fixture
            .install(&document(4, "2030-01-01T00:00:00Z", &[17]))
            .unwrap();
        assert_eq!(fixture.store.active(after_base).unwrap().registry.serial, 4);

        // Once it expires too, the error names the installed file.
        let error = fixture
            .store
            .active(datetime!(2030-06-01 00:00 UTC))
            .unwrap_err();
        let RegistryError::InstalledInvalid { source, .. } = &error else {
            panic!("expected InstalledInvalid, got {error:?}");
        };
        assert!(matches!(**source, RegistryError::Expired { .. }));
    }

    #[test]
    fn the_default_store_uses_the_embedded_registry() {
        let temp = tempfile::tempdir().unwrap();
        let store = TrustStore::new(temp.path().to_owned());
        let active = store.active(datetime!(2026-12-01 00:00 UTC)).unwrap();
        assert_eq!(active.source, Source::Embedded);
        assert_eq!(&active.registry, embedded().unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn io_errors_carry_the_path() {
        let fixture = fixture();
        // A file where the store directory should be makes creating the directory fail.
        fs::create_dir_all(fixture.store.dir().parent().unwrap()).unwrap();
        fs::write(fixture.store.dir(), b"not a directory").unwrap();
        let error = fixture
            .install(&document(4, "2028-12-31T23:59:59Z", &[17]))
            .unwrap_err();
        let RegistryError::Io { path, .. } = &error else {
            panic!("expected Io, got {error:?}");
        };
        assert!(path.starts_with(fixture.store.dir()), "{}", path.display());
    }
}
