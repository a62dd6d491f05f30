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

kip starts one SeaweedFS process (`weed mini`: master, volume server, filer and S3 gateway) with every
listener on a port kip assigns, bound to 127.0.0.1, and data under `.kip/`. The identity is in place before
the first start, so anonymous requests are refused from the first moment. kip waits until every volume already
on disk is loaded and a signed write succeeds (a bucket and an object of its own, removed at once), then
converges the declared buckets.
Objects are data: kip never deletes them, and refuses to drop a non-empty bucket unless told to.

On a machine shared with other accounts, no other account gets in, from the first start on: the S3 API takes
only signed requests, and every other listener (the master's, volume server's, filer's and admin server's HTTP,
every gRPC server) speaks only TLS and requires a client certificate from a CA kip makes for the instance before
its first start, kept in its data directory (0600, the engine account's; the CA's key is never written, and all
three files are made anew when one is missing). The filer and volume server also want a JWT only the store can
sign. The S3 API itself stays plain HTTP on 127.0.0.1.

```hcl
s3 "blobs" {
  version = "4"

  bucket "uploads" {
    versioning = true
  }
}
```

Point any S3 SDK at `s3.blobs.endpoint` with `s3.blobs.access_key`, `s3.blobs.secret_key` and path-style
addressing; `kip env` gives the variables the AWS CLI and SDKs read (`AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_REGION`)."#,
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
            Export::new("endpoint", "The S3 API endpoint, `http://127.0.0.1:PORT`, for an SDK's endpoint setting.")
                .env("AWS_ENDPOINT_URL_S3"),
            Export::new("url", "Same as `endpoint`, so `kip url` works alike for every engine."),
            host_export(),
            Export::new("port", "The S3 API port, given or allocated."),
            Export::new("access_key", "The access key id.").env("AWS_ACCESS_KEY_ID"),
            Export::new("secret_key", "The secret access key.")
                .sensitive()
                .env("AWS_SECRET_ACCESS_KEY"),
            Export::new("region", "The region.").env("AWS_REGION"),
        ]),
    }
}

fn bucket() -> Block {
    Block::named_object(
        "bucket",
        "name",
        "A bucket. Names follow S3's rules: 3 to 63 lower-case letters, digits, `-` and `.`, starting and ending \
         with a letter or digit, not shaped like an IP address; `kip-ready-` starts the names of kip's own \
         readiness probe, so declared buckets cannot.",
    )
    .label_check(bucket_name_problem)
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
             S3 allows this only at bucket creation, and it turns versioning on (so `versioning` is `true` \
             whatever is declared).",
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

/// The prefix of the bucket kip's readiness probe creates and removes: declared buckets cannot use it.
pub const PROBE_BUCKET_PREFIX: &str = "kip-ready-";

/// Why S3 (or kip's probe) would refuse `name` as a bucket name, following the S3 naming rules for general
/// purpose buckets.
pub fn bucket_name_problem(name: &str) -> Option<String> {
    if !(3..=63).contains(&name.len()) {
        return Some(format!(
            "a bucket name has 3 to 63 characters, this one has {}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return Some(format!(
            "a bucket name holds only lower-case letters, digits, `-` and `.`, not {bad:?}"
        ));
    }
    let alphanumeric =
        |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !alphanumeric(name.chars().next()) || !alphanumeric(name.chars().last()) {
        return Some("a bucket name starts and ends with a letter or a digit".to_owned());
    }
    if name.contains("..") {
        return Some("a bucket name cannot hold two periods in a row".to_owned());
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Some("a bucket name cannot be shaped like an IP address".to_owned());
    }
    for prefix in ["xn--", "sthree-", "amzn-s3-demo-", PROBE_BUCKET_PREFIX] {
        if name.starts_with(prefix) {
            return Some(format!("a bucket name cannot start with `{prefix}`"));
        }
    }
    for suffix in ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"] {
        if name.ends_with(suffix) {
            return Some(format!("a bucket name cannot end with `{suffix}`"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::bucket_name_problem;

    #[test]
    fn bucket_names_follow_s3_rules() {
        for good in ["abc", "my-bucket.v2", "a1b", &"x".repeat(63)] {
            assert_eq!(bucket_name_problem(good), None, "{good}");
        }
        for bad in [
            "ab",
            "Upper",
            "under_score",
            "-dash",
            "dot.",
            "a..b",
            "192.168.1.1",
            "xn--abc",
            "kip-ready-x",
            "name-s3alias",
            &"x".repeat(64),
        ] {
            assert!(bucket_name_problem(bad).is_some(), "{bad}");
        }
    }
}
