//! `kip registry …`: the signed version registry. `show` prints the one in force, `verify` checks a document and
//! its signature, `update` installs a newer one, and `keygen` / `sign` are for whoever publishes registries.
//!
//! Private keys never pass through kip's own files: `sign` reads the key the publisher points it at.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{Context, data_dir, registry_error};
use crate::{ExitStatus, with_hint};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show the registry in force: where it comes from, its serial, expiry and supported engine majors.
    Show {
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify a registry document against its detached signature and the trusted keys.
    Verify {
        /// The registry document (JSON).
        document: PathBuf,
        /// The signature file; DOCUMENT.sig by default.
        #[arg(long)]
        signature: Option<PathBuf>,
    },
    /// Verify a registry and install it as the one in force, if it is newer than what is trusted.
    Update {
        /// The registry document (JSON).
        document: PathBuf,
        /// The signature file; DOCUMENT.sig by default.
        #[arg(long)]
        signature: Option<PathBuf>,
    },
    /// Generate a new ed25519 signing key pair (PKCS#8 PEM private key, SPKI PEM public key).
    Keygen {
        /// Where to write the private key; the public key goes next to it as NAME.pub.pem.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a registry document with a private key, writing the detached signature.
    Sign {
        /// The private key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes it).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The registry document to sign.
        document: PathBuf,
        /// Where to write the signature; DOCUMENT.sig by default.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

pub fn run(context: &Context, command: Command) -> anyhow::Result<ExitStatus> {
    let now = time::OffsetDateTime::now_utc();
    let mut stdout = std::io::stdout().lock();
    match command {
        Command::Show { json } => {
            let active = super::active_registry()?;
            let registry = &active.registry;
            if json {
                let source = match &active.source {
                    kip_registry::Source::Embedded => serde_json::json!("embedded"),
                    kip_registry::Source::Installed(path) => {
                        serde_json::json!(path.display().to_string())
                    }
                };
                let value = serde_json::json!({ "source": source, "registry": registry });
                writeln!(stdout, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                let source = match &active.source {
                    kip_registry::Source::Embedded => "embedded in this kip".to_owned(),
                    kip_registry::Source::Installed(path) => {
                        format!("installed at {}", path.display())
                    }
                };
                writeln!(stdout, "source:  {source}")?;
                writeln!(stdout, "serial:  {}", registry.serial)?;
                writeln!(stdout, "issued:  {}", registry.issued)?;
                writeln!(stdout, "expires: {}", registry.expires)?;
                writeln!(stdout, "engines:")?;
                for (engine, entry) in &registry.engines {
                    let majors: Vec<String> = entry.majors.iter().map(u32::to_string).collect();
                    writeln!(stdout, "  {engine:<9} {}", majors.join(", "))?;
                }
            }
        }
        Command::Verify {
            document,
            signature,
        } => {
            let (document_bytes, signature_bytes, _) =
                read_pair(context, &document, signature.as_deref())?;
            let active = super::active_registry()?;
            let registry = kip_registry::verify(
                &document_bytes,
                signature_bytes.as_deref(),
                kip_registry::trusted_keys(),
                now,
                Some(active.registry.serial),
            )
            .map_err(registry_error)?;
            writeln!(
                stdout,
                "{}: valid, serial {}, expires {}, signed by a trusted key.",
                document.display(),
                registry.serial,
                registry.expires
            )?;
        }
        Command::Update {
            document,
            signature,
        } => {
            let (document_bytes, signature_bytes, signature_path) =
                read_pair(context, &document, signature.as_deref())?;
            let Some(signature_bytes) = signature_bytes else {
                return Err(registry_error(kip_registry::RegistryError::Unsigned)).map_err(
                    |error| error.context(format!("no signature at {}", signature_path.display())),
                );
            };
            let store = kip_registry::TrustStore::new(data_dir()?.join("registry"));
            let registry = store
                .install(&document_bytes, &signature_bytes, now)
                .map_err(registry_error)?;
            writeln!(
                stdout,
                "Installed registry serial {} (expires {}).",
                registry.serial, registry.expires
            )?;
        }
        Command::Keygen { out } => {
            let private = context.dir.join(&out);
            let public = public_path(&private);
            for path in [&private, &public] {
                if path.exists() {
                    return Err(with_hint(
                        anyhow::anyhow!("{} already exists", path.display()),
                        "keygen never overwrites a key; choose another --out",
                    ));
                }
            }
            let (private_pem, public_pem) = kip_registry::keygen();
            write_private(&private, private_pem.as_bytes())?;
            std::fs::write(&public, public_pem)
                .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", public.display()))?;
            writeln!(
                stdout,
                "Wrote {} (keep it secret) and {}.",
                private.display(),
                public.display()
            )?;
        }
        Command::Sign { key, document, out } => {
            let key_path = context.dir.join(&key);
            let pem = std::fs::read_to_string(&key_path)
                .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", key_path.display()))?;
            let signing_key = kip_registry::load_signing_key(&pem).map_err(registry_error)?;
            let document_path = context.dir.join(&document);
            let bytes = std::fs::read(&document_path).map_err(|error| {
                anyhow::anyhow!("cannot read {}: {error}", document_path.display())
            })?;
            // Refuse to sign what kip would refuse to load.
            kip_registry::Registry::parse(&bytes).map_err(registry_error)?;
            let signature = kip_registry::sign(&bytes, &signing_key);
            let out = out
                .map(|out| context.dir.join(out))
                .unwrap_or_else(|| signature_path(&document_path));
            std::fs::write(&out, signature)
                .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", out.display()))?;
            writeln!(stdout, "Wrote {}.", out.display())?;
        }
    }
    Ok(ExitStatus::Success)
}

fn signature_path(document: &Path) -> PathBuf {
    let mut name = document.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

fn public_path(private: &Path) -> PathBuf {
    let stem = private.to_string_lossy();
    let stem = stem.strip_suffix(".pem").unwrap_or(&stem);
    PathBuf::from(format!("{stem}.pub.pem"))
}

/// Reads a document and its signature; a missing signature file is `None` (refused later as unsigned).
fn read_pair(
    context: &Context,
    document: &Path,
    signature: Option<&Path>,
) -> anyhow::Result<(Vec<u8>, Option<Vec<u8>>, PathBuf)> {
    let document = context.dir.join(document);
    let bytes = std::fs::read(&document)
        .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", document.display()))?;
    let signature = signature
        .map(|path| context.dir.join(path))
        .unwrap_or_else(|| signature_path(&document));
    let signature_bytes = match std::fs::read(&signature) {
        Ok(bytes) => Some(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            return Err(anyhow::anyhow!(
                "cannot read {}: {error}",
                signature.display()
            ));
        }
    };
    Ok((bytes, signature_bytes, signature))
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", path.display()))?;
    file.write_all(contents)
        .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", path.display()))?;
    Ok(())
}
