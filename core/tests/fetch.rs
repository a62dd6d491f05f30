//! Tests for `kip_core::fetch` against a real HTTP server on a loopback port (with injected faults) and
//! against local files: verification, retries, final errors, cleanup, and location resolution.

#[path = "support/http.rs"]
mod http;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use http::{Fault, TestServer};
use kip_core::fetch::{Expected, FetchError, Fetcher, Location, NoProgress, Progress, RetryPolicy};
use sha2::{Digest as _, Sha256};

const ARTIFACT: &str = "postgres/16.14.0/x86_64-unknown-linux-gnu/postgres.tar.gz";

/// A served directory holding one artifact of `size` pseudo-random bytes.
struct Mirror {
    dir: tempfile::TempDir,
    server: TestServer,
    body: Vec<u8>,
}

impl Mirror {
    fn new(size: usize) -> Mirror {
        let dir = tempfile::tempdir().unwrap();
        let body = pseudo_random(size);
        let path = dir.path().join("root").join(ARTIFACT);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &body).unwrap();
        std::fs::write(dir.path().join("root/index.json"), b"{\"format\": 1}").unwrap();
        let server = TestServer::serve(&dir.path().join("root"));
        Mirror { dir, server, body }
    }

    fn location(&self) -> Location {
        Location::parse(&self.server.url(ARTIFACT)).unwrap()
    }

    fn expected(&self) -> Expected {
        Expected {
            sha256: sha256(&self.body),
            size: Some(self.body.len() as u64),
        }
    }

    fn dest(&self) -> PathBuf {
        self.dir.path().join("download.part")
    }
}

fn pseudo_random(size: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Tiny backoff and timeout, so retry tests take milliseconds.
fn fast_policy(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial_backoff: Duration::from_millis(1),
        timeout: Duration::from_secs(5),
    }
}

fn fetcher(attempts: u32) -> Fetcher {
    Fetcher::new(fast_policy(attempts))
}

#[track_caller]
fn assert_gone(path: &Path) {
    assert!(
        std::fs::symlink_metadata(path).is_err(),
        "{} was left behind",
        path.display()
    );
}

#[derive(Default)]
struct Recorded {
    starts: Vec<(String, Option<u64>)>,
    advanced: u64,
    finishes: usize,
}

#[derive(Default)]
struct RecordingProgress(Mutex<Recorded>);

impl Progress for RecordingProgress {
    fn start(&self, label: &str, total: Option<u64>) {
        let mut recorded = self.0.lock().unwrap();
        recorded.starts.push((label.to_owned(), total));
        recorded.advanced = 0;
    }
    fn advance(&self, bytes: u64) {
        self.0.lock().unwrap().advanced += bytes;
    }
    fn finish(&self) {
        self.0.lock().unwrap().finishes += 1;
    }
}

#[tokio::test]
async fn good_download_verifies_in_one_attempt() {
    let mirror = Mirror::new(3 * 1024 * 1024 + 17);
    let progress = RecordingProgress::default();
    let downloaded = fetcher(4)
        .download(
            &mirror.location(),
            &mirror.dest(),
            &mirror.expected(),
            &progress,
        )
        .await
        .unwrap();
    assert_eq!(downloaded.attempts, 1);
    assert_eq!(downloaded.bytes, mirror.body.len() as u64);
    assert_eq!(std::fs::read(mirror.dest()).unwrap(), mirror.body);
    assert_eq!(mirror.server.requests(ARTIFACT), 1);
    let recorded = progress.0.lock().unwrap();
    assert_eq!(
        recorded.starts,
        vec![(mirror.server.url(ARTIFACT), Some(mirror.body.len() as u64))]
    );
    assert_eq!(recorded.advanced, mirror.body.len() as u64);
    assert_eq!(recorded.finishes, 1);
}

#[tokio::test]
async fn download_without_known_size_uses_content_length() {
    let mirror = Mirror::new(10_000);
    let expected = Expected {
        size: None,
        ..mirror.expected()
    };
    let downloaded = fetcher(1)
        .download(&mirror.location(), &mirror.dest(), &expected, &NoProgress)
        .await
        .unwrap();
    assert_eq!(downloaded.bytes, 10_000);
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let mirror = Mirror::new(50_000);
    mirror.server.fail(ARTIFACT, Fault::Status(500), 2);
    let downloaded = fetcher(4)
        .download(
            &mirror.location(),
            &mirror.dest(),
            &mirror.expected(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(downloaded.attempts, 3);
    assert_eq!(mirror.server.requests(ARTIFACT), 3);
    assert_eq!(std::fs::read(mirror.dest()).unwrap(), mirror.body);
}

#[tokio::test]
async fn too_many_requests_is_retried() {
    let mirror = Mirror::new(1_000);
    mirror.server.fail(ARTIFACT, Fault::Status(429), 1);
    let downloaded = fetcher(2)
        .download(
            &mirror.location(),
            &mirror.dest(),
            &mirror.expected(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(downloaded.attempts, 2);
}

#[tokio::test]
async fn server_errors_beyond_the_attempts_are_a_status_error() {
    let mirror = Mirror::new(1_000);
    mirror.server.fail_always(ARTIFACT, Fault::Status(503));
    let error = fetcher(3)
        .download(
            &mirror.location(),
            &mirror.dest(),
            &mirror.expected(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::Status { status, .. } if status.as_u16() == 503));
    assert_eq!(mirror.server.requests(ARTIFACT), 3);
    assert_gone(&mirror.dest());
}

#[tokio::test]
async fn not_found_is_final_and_names_the_url() {
    let mirror = Mirror::new(1_000);
    mirror.server.fail_always(ARTIFACT, Fault::Status(404));
    let error = fetcher(4)
        .download(
            &mirror.location(),
            &mirror.dest(),
            &mirror.expected(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{} answered HTTP 404 Not Found",
            mirror.server.url(ARTIFACT)
        )
    );
    assert!(error.hint().unwrap().contains("kip mirror index"));
    assert_eq!(mirror.server.requests(ARTIFACT), 1);
    assert_gone(&mirror.dest());
}

#[tokio::test]
async fn missing_file_on_the_server_is_a_404() {
    let mirror = Mirror::new(1_000);
    let location = Location::parse(&mirror.server.url("nothing/here.tar.gz")).unwrap();
    let error = fetcher(4)
        .download(&location, &mirror.dest(), &mirror.expected(), &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::Status { status, .. } if status.as_u16() == 404));
    assert_gone(&mirror.dest());
}

#[tokio::test]
async fn truncated_body_is_retried_then_reported() {
    let mirror = Mirror::new(200_000);
    mirror
        .server
        .fail_always(ARTIFACT, Fault::Truncate { sent: 70_000 });
    let error = fetcher(3)
        .download(
            &mirror.location(),
            &mirror.dest(),
            &mirror.expected(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    match &error {
        FetchError::Truncated {
            url,
            expected,
            received,
        } => {
            assert_eq!(url, &mirror.server.url(ARTIFACT));
            assert_eq!(*expected, 200_000);
            assert!(*received <= 70_000, "received {received}");
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert_eq!(mirror.server.requests(ARTIFACT), 3);
    assert_gone(&mirror.dest());
}

#[tokio::test]
async fn truncated_body_then_a_good_one_succeeds() {
    let mirror = Mirror::new(200_000);
    mirror
        .server
        .fail(ARTIFACT, Fault::Truncate { sent: 1_000 }, 1);
    let progress = RecordingProgress::default();
    let downloaded = fetcher(3)
        .download(
            &mirror.location(),
            &mirror.dest(),
            &mirror.expected(),
            &progress,
        )
        .await
        .unwrap();
    assert_eq!(downloaded.attempts, 2);
    assert_eq!(std::fs::read(mirror.dest()).unwrap(), mirror.body);
    let recorded = progress.0.lock().unwrap();
    assert_eq!(recorded.starts.len(), 2);
    assert_eq!(recorded.finishes, 2);
    assert_eq!(recorded.advanced, 200_000);
}

#[tokio::test]
async fn dropped_connection_is_retried() {
    let mirror = Mirror::new(1_000);
    mirror.server.fail(ARTIFACT, Fault::Drop, 2);
    let downloaded = fetcher(3)
        .download(
            &mirror.location(),
            &mirror.dest(),
            &mirror.expected(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(downloaded.attempts, 3);
}

#[tokio::test]
async fn hash_mismatch_is_final_names_both_hashes_and_keeps_nothing() {
    let mirror = Mirror::new(5_000);
    let wrong = "0".repeat(64);
    let expected = Expected {
        sha256: wrong.clone(),
        size: Some(5_000),
    };
    let error = fetcher(4)
        .download(&mirror.location(), &mirror.dest(), &expected, &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "sha256 mismatch for {}: expected {wrong}, computed {}",
            mirror.server.url(ARTIFACT),
            sha256(&mirror.body)
        )
    );
    assert!(
        error
            .hint()
            .unwrap()
            .contains("nothing was kept in the cache")
    );
    assert_eq!(mirror.server.requests(ARTIFACT), 1);
    assert_gone(&mirror.dest());
}

#[tokio::test]
async fn size_mismatch_is_final() {
    let mirror = Mirror::new(5_000);
    let expected = Expected {
        size: Some(4_000),
        ..mirror.expected()
    };
    let error = fetcher(4)
        .download(&mirror.location(), &mirror.dest(), &expected, &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            FetchError::SizeMismatch {
                expected: 4_000,
                found: 5_000,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(mirror.server.requests(ARTIFACT), 1);
    assert_gone(&mirror.dest());
}

#[tokio::test]
async fn malformed_expected_hash_is_refused_before_any_request() {
    let mirror = Mirror::new(100);
    let expected = Expected {
        sha256: "sha256:abc".to_owned(),
        size: None,
    };
    let error = fetcher(4)
        .download(&mirror.location(), &mirror.dest(), &expected, &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(error, FetchError::InvalidExpectedHash { .. }),
        "{error:?}"
    );
    assert_eq!(mirror.server.total_requests(), 0);
}

#[tokio::test]
async fn refused_connection_is_unreachable_after_all_attempts() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("download.part");
    let url = format!("http://127.0.0.1:{port}/postgres.tar.gz");
    let started = std::time::Instant::now();
    let error = fetcher(3)
        .download(
            &Location::parse(&url).unwrap(),
            &dest,
            &Expected {
                sha256: "a".repeat(64),
                size: None,
            },
            &NoProgress,
        )
        .await
        .unwrap_err();
    match &error {
        FetchError::Unreachable {
            url: named,
            attempts,
            ..
        } => {
            assert_eq!(named, &url);
            assert_eq!(*attempts, 3);
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        format!("cannot reach {url} (tried 3 times)")
    );
    assert!(error.hint().unwrap().contains("KIP_MIRROR"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_gone(&dest);
}

#[tokio::test]
async fn stalled_server_times_out_and_is_retried() {
    let mirror = Mirror::new(1_000);
    mirror
        .server
        .fail(ARTIFACT, Fault::Delay(Duration::from_secs(2)), 1);
    let policy = RetryPolicy {
        attempts: 2,
        initial_backoff: Duration::from_millis(1),
        timeout: Duration::from_millis(200),
    };
    let started = std::time::Instant::now();
    let downloaded = Fetcher::new(policy)
        .download(
            &mirror.location(),
            &mirror.dest(),
            &mirror.expected(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(downloaded.attempts, 2);
    assert!(started.elapsed() < Duration::from_millis(1_500));
}

#[tokio::test]
async fn get_reads_small_files_with_retries() {
    let mirror = Mirror::new(10);
    mirror.server.fail("index.json", Fault::Status(502), 1);
    let location = Location::parse(&mirror.server.base_url())
        .unwrap()
        .child("index.json")
        .unwrap();
    let body = fetcher(2).get(&location).await.unwrap();
    assert_eq!(body, b"{\"format\": 1}");
    assert_eq!(mirror.server.requests("index.json"), 2);
}

#[tokio::test]
async fn local_path_and_file_url_are_verified_copies() {
    let mirror = Mirror::new(2_500_000);
    let source = mirror.dir.path().join("root").join(ARTIFACT);
    let file_url = format!("file://{}", source.display());
    for location in [
        Location::parse(source.to_str().unwrap()).unwrap(),
        Location::parse(&file_url).unwrap(),
    ] {
        assert_eq!(location, Location::Path(source.clone()));
        let downloaded = fetcher(4)
            .download(&location, &mirror.dest(), &mirror.expected(), &NoProgress)
            .await
            .unwrap();
        assert_eq!(
            downloaded,
            kip_core::fetch::Downloaded {
                bytes: 2_500_000,
                attempts: 1
            }
        );
        assert_eq!(std::fs::read(mirror.dest()).unwrap(), mirror.body);
        std::fs::remove_file(mirror.dest()).unwrap();
    }
    assert_eq!(mirror.server.total_requests(), 0);

    let wrong = Expected {
        sha256: "f".repeat(64),
        size: None,
    };
    let error = fetcher(4)
        .download(
            &Location::Path(source.clone()),
            &mirror.dest(),
            &wrong,
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(
        error.to_string().starts_with(&format!(
            "sha256 mismatch for {}: expected ffff",
            source.display()
        )),
        "{error}"
    );
    assert_gone(&mirror.dest());

    let missing = mirror.dir.path().join("no-such.tar.gz");
    let error = fetcher(4)
        .download(
            &Location::Path(missing.clone()),
            &mirror.dest(),
            &mirror.expected(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("{} does not exist", missing.display())
    );
    assert_gone(&mirror.dest());

    let index = mirror.dir.path().join("root/index.json");
    let body = fetcher(1).get(&Location::Path(index)).await.unwrap();
    assert_eq!(body, b"{\"format\": 1}");
}

/// The lead runs downloads in parallel tasks: the futures must be `Send`.
#[test]
fn download_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let fetcher = fetcher(1);
    let location = Location::Path(PathBuf::from("/nonexistent"));
    let expected = Expected {
        sha256: "a".repeat(64),
        size: None,
    };
    let download = fetcher.download(
        &location,
        Path::new("/nonexistent.part"),
        &expected,
        &NoProgress,
    );
    assert_send(&download);
    assert_send(&fetcher.get(&location));
}

#[test]
fn location_parse() {
    let url = |text: &str| Location::Url(text.parse().unwrap());
    let path = |text: &str| Location::Path(PathBuf::from(text));
    assert_eq!(
        Location::parse("https://m.example/kip/").unwrap(),
        url("https://m.example/kip/")
    );
    assert_eq!(
        Location::parse("http://127.0.0.1:4711/i.json").unwrap(),
        url("http://127.0.0.1:4711/i.json")
    );
    assert_eq!(
        Location::parse("file:///srv/mirror/index.json").unwrap(),
        path("/srv/mirror/index.json")
    );
    assert_eq!(Location::parse("/srv/mirror").unwrap(), path("/srv/mirror"));
    assert_eq!(
        Location::parse("mirror/index.json").unwrap(),
        path("mirror/index.json")
    );
    assert_eq!(Location::parse("c:odd name").unwrap(), path("c:odd name"));
    for bad in [
        "",
        "ftp://m.example/x",
        "s3://bucket/x",
        "http://",
        "file://host/x",
    ] {
        let error = Location::parse(bad).unwrap_err();
        assert!(
            matches!(error, FetchError::InvalidLocation { .. }),
            "{bad}: {error:?}"
        );
        assert!(error.to_string().contains(&format!("`{bad}`")), "{error}");
    }
    assert_eq!(
        Location::parse("https://m.example/a b")
            .unwrap()
            .to_string(),
        "https://m.example/a%20b"
    );
    assert_eq!(path("/srv/m").to_string(), "/srv/m");
}

#[test]
fn location_join_resolves_against_the_index() {
    let index = Location::parse("https://m.example/kip/index.json").unwrap();
    let local = Location::parse("/srv/mirror/index.json").unwrap();
    let cases = [
        (
            &index,
            "postgres/16.14.0/pg.tar.gz",
            "https://m.example/kip/postgres/16.14.0/pg.tar.gz",
        ),
        (&index, "./pg.tar.gz", "https://m.example/kip/pg.tar.gz"),
        (
            &index,
            "../other/pg.tar.gz",
            "https://m.example/other/pg.tar.gz",
        ),
        (&index, "/abs/pg.tar.gz", "https://m.example/abs/pg.tar.gz"),
        (
            &index,
            "https://cdn.example/pg.tar.gz",
            "https://cdn.example/pg.tar.gz",
        ),
        (&index, "file:///opt/pg.tar.gz", "/opt/pg.tar.gz"),
        (
            &local,
            "postgres/16.14.0/pg.tar.gz",
            "/srv/mirror/postgres/16.14.0/pg.tar.gz",
        ),
        (&local, "/abs/pg.tar.gz", "/abs/pg.tar.gz"),
        (
            &local,
            "http://127.0.0.1:4711/pg.tar.gz",
            "http://127.0.0.1:4711/pg.tar.gz",
        ),
    ];
    for (base, entry, expected) in cases {
        assert_eq!(
            base.join(entry).unwrap().to_string(),
            expected,
            "{base} + {entry}"
        );
    }
    assert_eq!(
        Location::parse("index.json")
            .unwrap()
            .join("pg.tar.gz")
            .unwrap(),
        Location::Path(PathBuf::from("pg.tar.gz"))
    );
    assert!(index.join("").is_err());
    assert!(index.join("ftp://x/y").is_err());
}

#[test]
fn location_child_treats_the_location_as_a_directory() {
    for root in ["https://m.example/kip", "https://m.example/kip/"] {
        let child = Location::parse(root).unwrap().child("index.json").unwrap();
        assert_eq!(child.to_string(), "https://m.example/kip/index.json");
    }
    let child = Location::parse("/srv/mirror")
        .unwrap()
        .child("index.json")
        .unwrap();
    assert_eq!(
        child,
        Location::Path(PathBuf::from("/srv/mirror/index.json"))
    );
}
