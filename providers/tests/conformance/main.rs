//! Every engine through the conformance suite (one module per engine), with the real supervisor and the real
//! servers from the test mirror served over loopback HTTP, checked with each engine's own client (tokio-postgres,
//! the `redis` crate) through the instance's exports.

#[path = "../../../core/tests/support/http.rs"]
mod http;

use std::path::PathBuf;
use std::sync::OnceLock;

use kip_conformance::{Fixture, Setup};

/// The test mirror that `scripts/test-mirror.sh` builds.
fn test_mirror() -> PathBuf {
    let dir = std::env::var_os("KIP_TEST_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache")
                });
            cache.join("kip/test-mirror")
        });
    assert!(
        dir.join("index.json").exists(),
        "the test mirror is missing at {}: run scripts/test-mirror.sh",
        dir.display()
    );
    dir
}

/// One toolchain store and template cache for the tests of this binary (reachable by the engines' account).
fn cache() -> PathBuf {
    static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = CACHE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        dir
    });
    dir.path().to_path_buf()
}

/// Runs the suite on `fixture` with every registered engine, the test mirror served over loopback HTTP, and this
/// binary's shared cache.
fn conform(fixture: &dyn Fixture) {
    let server = http::TestServer::serve(&test_mirror());
    let setup = Setup::daemon(kip_providers::engines())
        .with_mirror(server.base_url())
        .with_cache(cache());
    kip_conformance::run(fixture, &setup);
}

mod mariadb;
mod nats;
mod postgres;
mod s3;
mod valkey;

/// Every engine kip registers, every argument its schema documents: each reaches the provider's typed view. A
/// new engine or a new argument is covered without touching this test.
#[test]
fn every_documented_argument_reaches_the_providers_typed_view() {
    let engines = kip_providers::engines();
    let names: Vec<&str> = engines.names().collect();
    assert!(
        names.contains(&"postgres") && names.contains(&"process"),
        "{names:?}"
    );
    for name in names {
        let engine = engines.get(name).unwrap();
        kip_conformance::check_schema(engine.as_ref())
            .unwrap_or_else(|error| panic!("{name}: {error}"));
    }
}
