//! The `s3` engine schema: an S3-compatible object store (SeaweedFS underneath) with its buckets.
//!
//! The surface is S3's, not SeaweedFS's: credentials, region and buckets with the bucket features the S3
//! API defines (versioning, object lock). The engine choice only shows in `version`, which is SeaweedFS's.

use super::{host_export, version_argument};
use crate::schema::{
    ArgumentSchema as Arg, BlockSchema as Block, EngineSchema, ExportSchema as Export,
};
use crate::types::ValueType as T;

pub(super) fn schema() -> EngineSchema {
    EngineSchema {
        name: "s3",
        doc: r#"An S3-compatible object store, served by SeaweedFS 4.x (`weed mini`) from its upstream release.

kip starts one SeaweedFS process with its S3 gateway, filer and volume server, every listener bound to
127.0.0.1 and data under `.kip/`, waits until a real write succeeds, then converges the declared buckets.
Objects are data: kip never deletes them, and refuses to drop a non-empty bucket unless told to.

```hcl
s3 "blobs" {
  version = "4"

  bucket "uploads" {
    versioning = true
  }
}
```

Point any S3 SDK at `s3.blobs.endpoint` with `s3.blobs.access_key`, `s3.blobs.secret_key` and path-style
addressing."#,
        majors: vec![4],
        versioned: true,
        replace_on_new_major: false,
        instance: Block::named_object(
            "s3",
            "name",
            "An S3 store. The label names the instance: `s3 \"blobs\"` is addressed as `s3.blobs`.",
        )
        .arguments(vec![
            version_argument(
                "The SeaweedFS version (not an S3 API version): `\"4\"` resolves to the newest 4.x release the \
                 registry lists and is pinned in `kip.lock`; `\"4.48\"` names an exact one.",
            ),
            Arg::new(
                "port",
                T::Port,
                "S3 API port on 127.0.0.1. When unset, kip picks a free port once and keeps it in state. The \
                 store's internal listeners always get free ports.",
            ),
            Arg::new(
                "access_key",
                T::String,
                "Access key id of the store's one identity. When unset, kip generates one and keeps it in state.",
            ),
            Arg::new(
                "secret_key",
                T::String,
                "Secret access key of that identity. When unset, kip generates one and keeps it in state.",
            )
            .sensitive(),
            Arg::new("region", T::String, "Region reported to clients and used to sign requests.")
                .with_default("us-east-1"),
        ])
        .blocks(vec![bucket()])
        .exports(vec![
            Export::new("endpoint", "The S3 API endpoint, `http://127.0.0.1:PORT`, for an SDK's endpoint setting."),
            Export::new("url", "Same as `endpoint`, so `kip url` works alike for every engine."),
            host_export(),
            Export::new("port", "The S3 API port, given or allocated."),
            Export::new("access_key", "The access key id."),
            Export::new("secret_key", "The secret access key.").sensitive(),
            Export::new("region", "The region."),
        ]),
    }
}

fn bucket() -> Block {
    Block::named_object(
        "bucket",
        "name",
        "A bucket. Names follow S3's rules: 3 to 63 lower-case letters, digits, `-` and `.`.",
    )
    .arguments(vec![
        Arg::new(
            "versioning",
            T::Bool,
            "Keep every version of each object. Once enabled, S3 can only suspend versioning, not remove it: \
             setting it back to `false` suspends it.",
        )
        .with_default(false),
        Arg::new(
            "object_lock",
            T::Bool,
            "Enable S3 Object Lock, so objects can be made immutable with retention periods and legal holds. \
             S3 allows this only at bucket creation, and it turns versioning on.",
        )
        .with_default(false)
        .forces_replacement(),
        Arg::new(
            "force_destroy",
            T::Bool,
            "Allow kip to delete the bucket with its objects when it is removed from the config or replaced. \
             Without it, dropping a non-empty bucket fails.",
        )
        .with_default(false),
    ])
    .exports(vec![
        Export::new("name", "The bucket name."),
        Export::new("url", "Path-style URL of the bucket, `http://127.0.0.1:PORT/NAME`."),
    ])
}
