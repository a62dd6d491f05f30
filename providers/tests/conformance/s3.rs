//! S3 (SeaweedFS 4) through the conformance suite, checked with rusty-s3 (signed requests sent with reqwest)
//! through the instance's exports: endpoint, access key, secret and region.

use kip_conformance::Fixture;
use kip_core::address::Address;
use kip_core::engine::Exports;
use kip_providers::s3::client::{BucketState, S3Client};

/// A store with a versioned bucket, a plain one and a scratch one that the pruned configuration drops.
struct S3Fixture;

fn s3_main() -> Address {
    Address::instance("s3", "main", None)
}

fn config_with(scratch: bool) -> String {
    let scratch = if scratch {
        "  bucket \"scratch\" {}\n"
    } else {
        ""
    };
    format!(
        r#"s3 "main" {{
  version = "4"
  region  = "eu-west-1"

  bucket "docs" {{
    versioning = true
  }}
  bucket "media" {{}}
{scratch}}}
"#
    )
}

/// Runs `future` on a runtime of its own: the suite calls the fixture from plain threads.
fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

fn client(exports: &Exports) -> Result<S3Client, String> {
    let text = |name: &str| {
        exports
            .get(name)
            .and_then(|value| value.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("no {name} export"))
    };
    S3Client::new(
        &text("endpoint")?,
        &text("region")?,
        &text("access_key")?,
        &text("secret_key")?,
    )
    .map_err(|error| error.to_string())
}

fn state(client: &S3Client, bucket: &str) -> Result<Option<BucketState>, String> {
    block_on(client.bucket_state(bucket)).map_err(|error| error.to_string())
}

impl Fixture for S3Fixture {
    fn engine(&self) -> &'static str {
        "s3"
    }

    fn version(&self) -> Option<String> {
        Some("4".to_owned())
    }

    fn config(&self) -> String {
        config_with(true)
    }

    fn pruned(&self) -> (String, Address) {
        (
            config_with(false),
            s3_main().named_child("bucket", "scratch"),
        )
    }

    fn check_objects(&self, exports: &Exports) -> Result<(), String> {
        let client = client(exports)?;
        let versioned = BucketState {
            versioning: true,
            object_lock: false,
        };
        let plain = BucketState {
            versioning: false,
            object_lock: false,
        };
        for (bucket, want) in [("docs", versioned), ("media", plain)] {
            let have = state(&client, bucket)?;
            if have != Some(want) {
                return Err(format!(
                    "bucket {bucket}: expected {want:?}, SeaweedFS has {have:?}"
                ));
            }
        }
        Ok(())
    }

    fn write_data(&self, exports: &Exports) -> Result<(), String> {
        let client = client(exports)?;
        block_on(client.put_object("docs", "conformance/kept.txt", "kept"))
            .map_err(|error| error.to_string())
    }

    fn read_data(&self, exports: &Exports) -> Result<bool, String> {
        let client = client(exports)?;
        // Retried as SDKs do: right after a SIGKILL the supervisor restarts weed, which serves once its S3 port
        // accepts, and answers 500 for an object whose volume it is still loading.
        let budget = std::time::Duration::from_secs(10);
        let body = block_on(client.get_object_retrying("docs", "conformance/kept.txt", budget))
            .map_err(|error| error.to_string())?;
        Ok(body == "kept")
    }

    fn drift(&self, exports: &Exports) -> Result<Vec<(Address, String)>, String> {
        let client = client(exports)?;
        block_on(async {
            client.set_versioning("docs", false).await?;
            client.delete_bucket("media").await
        })
        .map_err(|error| error.to_string())?;
        let mut expected = vec![(
            s3_main().named_child("bucket", "docs"),
            "versioning".to_owned(),
        )];
        // A deleted bucket is created again: every attribute of it is planned.
        for attribute in ["force_destroy", "object_lock", "versioning"] {
            expected.push((
                s3_main().named_child("bucket", "media"),
                attribute.to_owned(),
            ));
        }
        Ok(expected)
    }
}

#[test]
fn s3_conforms() {
    crate::conform(&S3Fixture);
}
