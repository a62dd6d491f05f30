//! Fetching mirror files (index.json, engine archives) over http(s) or from a local path, verified.
//!
//! kip never runs a binary it has not verified, and a mirror is only as good as the network in front of it.
//! So a download streams into its destination while hashing, checks size and SHA-256 before reporting
//! success, removes the destination on any failure (nothing half-downloaded or unverified survives), and
//! retries the failures that are worth retrying (connection errors, timeouts, 5xx, 429, truncated bodies)
//! with exponential backoff. Client errors (4xx) and hash mismatches are final: retrying cannot fix them.
//!
//! Mirrors can also be plain directories (`KIP_MIRROR=/srv/mirror`, or a `file://` URL), so every operation
//! takes a [`Location`] and local files go through the same checks as downloads.

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{StatusCode, Url};
use sha2::{Digest as _, Sha256};

/// Where a file comes from: an http(s) URL, or a local path (a `file://` URL or a plain path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Url(Url),
    Path(PathBuf),
}

impl Location {
    /// Parses `https://…`, `http://…`, `file:///…` (becomes a path), an absolute path or a relative path.
    pub fn parse(text: &str) -> Result<Location, FetchError> {
        let invalid = |reason: String| FetchError::InvalidLocation {
            text: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(invalid("it is empty".to_owned()));
        }
        if !has_scheme(text) {
            return Ok(Location::Path(PathBuf::from(text)));
        }
        let url =
            Url::parse(text).map_err(|error| invalid(format!("it is not a valid URL: {error}")))?;
        Location::from_url(url).map_err(|reason| invalid(reason.to_owned()))
    }

    fn from_url(url: Url) -> Result<Location, &'static str> {
        match url.scheme() {
            "http" | "https" => Ok(Location::Url(url)),
            "file" => url
                .to_file_path()
                .map(Location::Path)
                .map_err(|()| "it is a file:// URL that does not name a local path"),
            _ => Err("only http://, https://, file:// and paths are supported"),
        }
    }

    /// Resolves an index entry's url against this location, taken as the address of the index file itself:
    /// a relative entry is relative to the index's directory; an absolute path stays on the same server (or
    /// is a local path when the index is local); an absolute URL stands on its own.
    pub fn join(&self, relative_or_absolute: &str) -> Result<Location, FetchError> {
        let entry = relative_or_absolute;
        let invalid = |reason: String| FetchError::InvalidLocation {
            text: entry.to_owned(),
            reason,
        };
        if entry.is_empty() {
            return Err(invalid("it is empty".to_owned()));
        }
        if has_scheme(entry) {
            return Location::parse(entry);
        }
        match self {
            Location::Url(base) => {
                let url = base.join(entry).map_err(|error| {
                    invalid(format!("it cannot be resolved against {base}: {error}"))
                })?;
                Location::from_url(url).map_err(|reason| invalid(reason.to_owned()))
            }
            Location::Path(base) => {
                let entry = Path::new(entry);
                if entry.is_absolute() {
                    Ok(Location::Path(entry.to_path_buf()))
                } else {
                    let directory = base.parent().unwrap_or(Path::new(""));
                    Ok(Location::Path(directory.join(entry)))
                }
            }
        }
    }

    /// The file `name` inside this location, taken as a directory (a mirror root, with or without a trailing
    /// slash): `https://m/kip` and `https://m/kip/` both give `https://m/kip/index.json`.
    pub fn child(&self, name: &str) -> Result<Location, FetchError> {
        match self {
            Location::Url(base) => {
                let mut directory = base.clone();
                if !directory.path().ends_with('/') {
                    directory.set_path(&format!("{}/", directory.path()));
                }
                Location::Url(directory).join(name)
            }
            Location::Path(base) => Ok(Location::Path(base.join(name))),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Url(url) => formatter.write_str(url.as_str()),
            Location::Path(path) => write!(formatter, "{}", path.display()),
        }
    }
}

/// `scheme://` at the start, with a scheme as RFC 3986 spells it. Anything else is a path, even with a colon.
fn has_scheme(text: &str) -> bool {
    match text.split_once("://") {
        Some((scheme, _)) => {
            let mut chars = scheme.chars();
            chars
                .next()
                .is_some_and(|first| first.is_ascii_alphabetic())
                && chars.all(|char| char.is_ascii_alphanumeric() || matches!(char, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// Progress of one transfer. `start` is called at the beginning of every attempt (bytes count from zero
/// again after a retry), `finish` at the end of every attempt, successful or not.
pub trait Progress: Send + Sync {
    fn start(&self, label: &str, total: Option<u64>);
    fn advance(&self, bytes: u64);
    fn finish(&self);
}

/// Reports nothing: for small files, tests, and output that is not a terminal.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _label: &str, _total: Option<u64>) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included.
    pub attempts: u32,
    /// The wait after the first failure; it doubles after each further one (capped at [`MAX_BACKOFF`]).
    pub initial_backoff: Duration,
    /// Both the connect timeout and the read idle timeout: a stalled mirror fails the attempt after this
    /// long without a byte, however large the file is.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(30),
        }
    }
}

/// The longest wait between two attempts, whatever the policy or a server's `Retry-After` asks for.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a download must turn out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Lowercase hex SHA-256, 64 digits.
    pub sha256: String,
    pub size: Option<u64>,
}

/// A verified download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub bytes: u64,
    /// How many attempts it took (1 for a local file).
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid location `{text}`: {reason}")]
    InvalidLocation { text: String, reason: String },
    #[error("invalid expected sha256 for {url}: `{sha256}` is not 64 hex digits")]
    InvalidExpectedHash { url: String, sha256: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: StatusCode },
    #[error("cannot reach {url} (tried {attempts} times)")]
    Unreachable {
        url: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    #[error("download of {url} was cut short: received {received} of {expected} bytes")]
    Truncated {
        url: String,
        expected: u64,
        received: u64,
    },
    #[error("sha256 mismatch for {url}: expected {expected}, computed {computed}")]
    HashMismatch {
        url: String,
        expected: String,
        computed: String,
    },
    #[error("size mismatch for {url}: expected {expected} bytes, found {found}")]
    SizeMismatch {
        url: String,
        expected: u64,
        found: u64,
    },
    #[error("{location} does not exist")]
    NotFound { location: String },
    #[error("cannot access {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the HTTP client")]
    Client {
        #[source]
        source: reqwest::Error,
    },
}

impl FetchError {
    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            FetchError::InvalidLocation { .. } => {
                "a mirror is an http(s):// URL, a file:// URL or a local path"
            }
            FetchError::InvalidExpectedHash { .. } => {
                "the mirror's index.json has a malformed sha256; tell the mirror's owner"
            }
            FetchError::HashMismatch { .. } | FetchError::SizeMismatch { .. } => {
                "the mirror serves a different file than its index says; nothing was kept in the cache — tell the mirror's owner"
            }
            FetchError::Unreachable { .. } => {
                "check KIP_MIRROR / the network; a pinned, cached toolchain keeps working offline"
            }
            FetchError::Truncated { .. } => {
                "the connection kept dropping mid-download; try again, or use a closer mirror"
            }
            FetchError::Status { status, .. } => match *status {
                StatusCode::NOT_FOUND | StatusCode::GONE => {
                    "the mirror's index lists a file the mirror does not serve; rebuild the index with `kip mirror index`, or tell the mirror's owner"
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    "the mirror refuses access; check KIP_MIRROR points at a mirror you may read"
                }
                status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
                    "the mirror kept failing after retries; try again later"
                }
                _ => return None,
            },
            FetchError::NotFound { .. } => {
                "check KIP_MIRROR; a local mirror must hold every file its index.json lists"
            }
            FetchError::Io { .. } | FetchError::Client { .. } => return None,
        };
        Some(hint.to_owned())
    }
}

/// Installs ring as the process's TLS crypto provider, which reqwest needs before it builds a client: it is built
/// without a default one (aws-lc is a slow C build). Every part of kip that builds a reqwest client (the fetcher,
/// HTTP probes, engines that speak HTTP) calls this first; another part of the process may have installed one
/// already, which is fine.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A builder for every HTTP client kip makes (the fetcher, HTTP probes, an engine's loopback API): the TLS provider
/// installed, and servers verified against the platform's root certificates as reqwest does, except that the roots
/// are loaded at the first TLS handshake instead of when the client is built. Loading them (the bundle and every
/// file of `SSL_CERT_DIR`) took 3-5 ms of each command that built a client, and most never speak TLS: a mirror, a
/// probe or an S3 API on loopback.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_tls_provider();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()));
    let builder = reqwest::Client::builder();
    match rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
    {
        Ok(config) => builder.tls_backend_preconfigured(
            config
                .dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(PlatformRoots::new(provider)))
                .with_no_client_auth(),
        ),
        // Not with ring's provider; reqwest's own set-up would load the roots at once.
        Err(_) => builder,
    }
}

/// The platform's verifier (rustls-platform-verifier, what reqwest uses), built at the first certificate to
/// verify. Signatures are checked with the provider's algorithms, which need no roots.
#[derive(Debug)]
struct PlatformRoots {
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
    verifier: std::sync::OnceLock<Result<rustls_platform_verifier::Verifier, rustls::Error>>,
}

impl PlatformRoots {
    fn new(provider: std::sync::Arc<rustls::crypto::CryptoProvider>) -> PlatformRoots {
        PlatformRoots {
            provider,
            verifier: std::sync::OnceLock::new(),
        }
    }

    fn verifier(&self) -> Result<&rustls_platform_verifier::Verifier, rustls::Error> {
        self.verifier
            .get_or_init(|| rustls_platform_verifier::Verifier::new(self.provider.clone()))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl rustls::client::danger::ServerCertVerifier for PlatformRoots {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Downloads with one shared HTTP client (connection pool, TLS set-up) and one retry policy. The client is built at
/// the first URL: a mirror that is a directory (the local mirror `kip mirror build` fills) never needs one.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: std::sync::OnceLock<reqwest::Client>,
    policy: RetryPolicy,
}

/// Local files are copied in pieces this large, yielding to the runtime between them.
const COPY_CHUNK: usize = 1024 * 1024;

impl Fetcher {
    pub fn new(policy: RetryPolicy) -> Fetcher {
        Fetcher {
            client: std::sync::OnceLock::new(),
            policy,
        }
    }

    /// The HTTP client, built on first use.
    fn client(&self) -> Result<&reqwest::Client, FetchError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let client = client_builder()
            .user_agent(concat!("kip/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.policy.timeout)
            .read_timeout(self.policy.timeout)
            .build()
            .map_err(|source| FetchError::Client { source })?;
        Ok(self.client.get_or_init(|| client))
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Reads a small file (such as index.json) into memory, with the same retries as [`Fetcher::download`].
    pub async fn get(&self, location: &Location) -> Result<Vec<u8>, FetchError> {
        match normalize(location) {
            Location::Path(path) => {
                std::fs::read(&path).map_err(|source| local_error(&path, source))
            }
            Location::Url(url) => {
                let mut output = Vec::new();
                self.with_retries(&url, &mut output, None, &NoProgress)
                    .await
                    .map(|_| output)
            }
        }
    }

    /// Streams `location` to `dest` (created or truncated; its parent must exist), hashing as it goes, and
    /// verifies size and sha256. On any failure `dest` is removed.
    pub async fn download(
        &self,
        location: &Location,
        dest: &Path,
        expected: &Expected,
        progress: &dyn Progress,
    ) -> Result<Downloaded, FetchError> {
        let location = normalize(location);
        let result = self
            .download_unchecked(&location, dest, expected, progress)
            .await;
        if result.is_err() {
            match std::fs::remove_file(dest) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(dest = %dest.display(), %error, "cannot remove a failed download")
                }
            }
        }
        result
    }

    async fn download_unchecked(
        &self,
        location: &Location,
        dest: &Path,
        expected: &Expected,
        progress: &dyn Progress,
    ) -> Result<Downloaded, FetchError> {
        let name = location.to_string();
        let expected_hash = expected.sha256.to_ascii_lowercase();
        if expected_hash.len() != 64 || !expected_hash.bytes().all(|byte| byte.is_ascii_hexdigit())
        {
            return Err(FetchError::InvalidExpectedHash {
                url: name,
                sha256: expected.sha256.clone(),
            });
        }
        let (bytes, computed, attempts) = match location {
            Location::Path(path) => {
                let (bytes, computed) = copy_local(path, dest, expected.size, progress).await?;
                (bytes, computed, 1)
            }
            Location::Url(url) => {
                let mut output = FileOutput {
                    path: dest,
                    writer: None,
                };
                let (bytes, computed, attempts) = self
                    .with_retries(url, &mut output, expected.size, progress)
                    .await?;
                output.close()?;
                (bytes, computed, attempts)
            }
        };
        if computed != expected_hash {
            return Err(FetchError::HashMismatch {
                url: name,
                expected: expected_hash,
                computed,
            });
        }
        tracing::debug!(location = %name, bytes, attempts, "downloaded and verified");
        Ok(Downloaded { bytes, attempts })
    }

    /// Runs attempts until one succeeds, a failure is final, or the policy's attempts are used up.
    /// Returns the size, the sha256 and the number of attempts.
    async fn with_retries(
        &self,
        url: &Url,
        output: &mut dyn Output,
        expected_size: Option<u64>,
        progress: &dyn Progress,
    ) -> Result<(u64, String, u32), FetchError> {
        let client = self.client()?;
        let attempts = self.policy.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            tracing::debug!(%url, attempt, "GET");
            progress.start(url.as_str(), expected_size);
            let result = self
                .attempt(client, url, output, expected_size, progress)
                .await;
            progress.finish();
            let (failure, retry_after) = match result {
                Ok((bytes, hash)) => return Ok((bytes, hash, attempt)),
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::Transient(failure, retry_after)) => (failure, retry_after),
            };
            if attempt >= attempts {
                tracing::warn!(%url, attempt, failure = %failure.describe(), "giving up");
                return Err(failure.into_error(url, attempt));
            }
            let doubling = 2u32.saturating_pow(attempt - 1);
            let backoff = self
                .policy
                .initial_backoff
                .saturating_mul(doubling)
                .max(retry_after.unwrap_or_default())
                .min(MAX_BACKOFF);
            tracing::warn!(
                %url,
                attempt,
                of = attempts,
                failure = %failure.describe(),
                backoff_ms = backoff.as_millis() as u64,
                "retrying"
            );
            tokio::time::sleep(backoff).await;
        }
    }

    async fn attempt(
        &self,
        client: &reqwest::Client,
        url: &Url,
        output: &mut dyn Output,
        expected_size: Option<u64>,
        progress: &dyn Progress,
    ) -> Result<(u64, String), Failure> {
        let mut response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|error| Failure::transient(Transient::Network(error)))?;
        let status = response.status();
        if !status.is_success() {
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                return Err(Failure::Transient(Transient::Status(status), retry_after));
            }
            return Err(Failure::Final(FetchError::Status {
                url: url.to_string(),
                status,
            }));
        }
        let content_length = response.content_length();
        if let (Some(declared), Some(expected)) = (content_length, expected_size)
            && declared != expected
        {
            return Err(Failure::Final(FetchError::SizeMismatch {
                url: url.to_string(),
                expected,
                found: declared,
            }));
        }
        let total = expected_size.or(content_length);
        output.begin().map_err(Failure::Final)?;
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    received += chunk.len() as u64;
                    if total.is_some_and(|total| received > total) {
                        return Err(Failure::Final(FetchError::SizeMismatch {
                            url: url.to_string(),
                            expected: total.unwrap_or_default(),
                            found: received,
                        }));
                    }
                    hasher.update(&chunk);
                    output.write(&chunk).map_err(Failure::Final)?;
                    progress.advance(chunk.len() as u64);
                }
                Ok(None) => break,
                Err(error) => {
                    return Err(Failure::transient(match total {
                        Some(expected) => Transient::Truncated { expected, received },
                        None => Transient::Network(error),
                    }));
                }
            }
        }
        if let Some(expected) = total
            && received < expected
        {
            return Err(Failure::transient(Transient::Truncated {
                expected,
                received,
            }));
        }
        Ok((received, hex(&hasher.finalize())))
    }
}

/// A `file://` URL handed in as [`Location::Url`] is still a local file.
fn normalize(location: &Location) -> Location {
    match location {
        Location::Url(url) if url.scheme() == "file" => match url.to_file_path() {
            Ok(path) => Location::Path(path),
            Err(()) => location.clone(),
        },
        other => other.clone(),
    }
}

fn local_error(path: &Path, source: io::Error) -> FetchError {
    if source.kind() == io::ErrorKind::NotFound {
        FetchError::NotFound {
            location: path.display().to_string(),
        }
    } else {
        FetchError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Copies a local file to `dest` with hashing; returns its size and sha256.
async fn copy_local(
    source: &Path,
    dest: &Path,
    expected_size: Option<u64>,
    progress: &dyn Progress,
) -> Result<(u64, String), FetchError> {
    let mut input = File::open(source).map_err(|error| local_error(source, error))?;
    let size = input
        .metadata()
        .map_err(|error| local_error(source, error))?
        .len();
    if let Some(expected) = expected_size
        && expected != size
    {
        return Err(FetchError::SizeMismatch {
            url: source.display().to_string(),
            expected,
            found: size,
        });
    }
    let mut output = FileOutput {
        path: dest,
        writer: None,
    };
    output.begin()?;
    progress.start(&source.display().to_string(), Some(size));
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; COPY_CHUNK];
    let mut copied: u64 = 0;
    let result = loop {
        let read = match input.read(&mut buffer) {
            Ok(0) => break Ok(()),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => break Err(local_error(source, error)),
        };
        hasher.update(&buffer[..read]);
        if let Err(error) = output.write(&buffer[..read]) {
            break Err(error);
        }
        copied += read as u64;
        progress.advance(read as u64);
        // A local copy is plain blocking file I/O; yielding between pieces keeps other tasks (a parallel
        // download, a progress bar) moving without needing a blocking thread.
        tokio::task::yield_now().await;
    };
    progress.finish();
    result?;
    output.close()?;
    if copied != size {
        // The file changed while it was being copied.
        return Err(FetchError::SizeMismatch {
            url: source.display().to_string(),
            expected: size,
            found: copied,
        });
    }
    Ok((copied, hex(&hasher.finalize())))
}

/// Where an attempt's bytes go: restarted from empty by `begin` at every attempt.
trait Output: Send {
    fn begin(&mut self) -> Result<(), FetchError>;
    fn write(&mut self, bytes: &[u8]) -> Result<(), FetchError>;
}

impl Output for Vec<u8> {
    fn begin(&mut self) -> Result<(), FetchError> {
        self.clear();
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), FetchError> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

struct FileOutput<'a> {
    path: &'a Path,
    writer: Option<BufWriter<File>>,
}

/// Writes to disk go through a buffer this large: network chunks are a few kilobytes each.
const WRITE_BUFFER: usize = 256 * 1024;

impl FileOutput<'_> {
    fn io_error(&self, source: io::Error) -> FetchError {
        FetchError::Io {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn close(&mut self) -> Result<(), FetchError> {
        if let Some(mut writer) = self.writer.take() {
            writer.flush().map_err(|error| self.io_error(error))?;
        }
        Ok(())
    }
}

impl Output for FileOutput<'_> {
    fn begin(&mut self) -> Result<(), FetchError> {
        self.writer = None;
        let file = File::create(self.path).map_err(|error| self.io_error(error))?;
        self.writer = Some(BufWriter::with_capacity(WRITE_BUFFER, file));
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), FetchError> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(self.io_error(io::Error::other("write before begin")));
        };
        match writer.write_all(bytes) {
            Ok(()) => Ok(()),
            Err(error) => Err(self.io_error(error)),
        }
    }
}

/// Why an attempt failed.
enum Failure {
    /// Retrying cannot help.
    Final(FetchError),
    /// Worth another attempt; a server may say how long to wait (`Retry-After`).
    Transient(Transient, Option<Duration>),
}

impl Failure {
    fn transient(failure: Transient) -> Failure {
        Failure::Transient(failure, None)
    }
}

enum Transient {
    Network(reqwest::Error),
    Status(StatusCode),
    Truncated { expected: u64, received: u64 },
}

impl Transient {
    fn describe(&self) -> String {
        match self {
            Transient::Network(error) => {
                let mut text = error.to_string();
                let mut source = std::error::Error::source(error);
                while let Some(cause) = source {
                    text.push_str(": ");
                    text.push_str(&cause.to_string());
                    source = cause.source();
                }
                text
            }
            Transient::Status(status) => format!("HTTP {status}"),
            Transient::Truncated { expected, received } => {
                format!("body cut short after {received} of {expected} bytes")
            }
        }
    }

    fn into_error(self, url: &Url, attempts: u32) -> FetchError {
        let url = url.to_string();
        match self {
            Transient::Network(source) => FetchError::Unreachable {
                url,
                attempts,
                source,
            },
            Transient::Status(status) => FetchError::Status { url, status },
            Transient::Truncated { expected, received } => FetchError::Truncated {
                url,
                expected,
                received,
            },
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory mirror is read without an HTTP client: building one loads the system's root certificates.
    #[tokio::test]
    async fn local_files_need_no_http_client() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("index.json");
        std::fs::write(&index, b"{}").unwrap();
        let fetcher = Fetcher::new(RetryPolicy::default());
        assert_eq!(fetcher.get(&Location::Path(index)).await.unwrap(), b"{}");
        assert!(fetcher.client.get().is_none());
    }

    /// The roots are loaded at the first certificate to verify, not before: planning the handshake (the schemes a
    /// client offers) needs none.
    #[test]
    fn the_platform_roots_wait_for_a_certificate() {
        install_tls_provider();
        let roots =
            PlatformRoots::new(std::sync::Arc::new(rustls::crypto::ring::default_provider()));
        use rustls::client::danger::ServerCertVerifier;
        assert!(!roots.supported_verify_schemes().is_empty());
        assert!(roots.verifier.get().is_none());
    }

    /// Loading the roots late does not mean trusting more: an https mirror whose certificate no root signs (a
    /// self-signed one, on loopback) is refused, and the error says why.
    #[tokio::test]
    async fn an_https_mirror_no_root_vouches_for_is_refused() {
        install_tls_provider();
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config = std::sync::Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(vec![certified.cert.der().clone()], key)
                .unwrap(),
        );
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            let mut connection = rustls::ServerConnection::new(config).unwrap();
            // The client aborts the handshake: that failure is the point.
            connection.complete_io(&mut tcp).is_err()
        });
        let fetcher = Fetcher::new(RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        });
        let url = format!("https://127.0.0.1:{port}/index.json");
        let error = fetcher
            .get(&Location::parse(&url).unwrap())
            .await
            .unwrap_err();
        let mut chain = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            chain.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        assert!(
            chain.contains("certificate") && chain.contains("UnknownIssuer"),
            "{chain}"
        );
        assert!(server.join().unwrap(), "the server saw the handshake fail");
    }
}
