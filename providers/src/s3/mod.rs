//! S3 through SeaweedFS: the engine-specific half of kip's `s3` provider, as a library the engine traits wrap.
//!
//! - [`args`]: the schema's blocks as typed values.
//! - [`config`]: the `weed mini` command line (every listener on a port kip assigned, bound to 127.0.0.1) and the
//!   identity file SeaweedFS's S3 gateway reads at start, written before the first start.
//! - [`client`]: signed S3 requests (rusty-s3 signs, reqwest sends): the readiness write, buckets, their
//!   versioning and object-lock configuration, and the versions a bucket holds.
//! - [`tls`]: the instance's private CA and certificate, with which every listener but the S3 API's takes only
//!   clients that present it (mutual TLS).
//! - [`engine`]: the [`Engine`](kip_core::engine::Engine) contract and the exports.
//!
//! Convergence owns structure, never data: objects are only ever deleted for a bucket declared `force_destroy`
//! that is being dropped.

pub mod args;
pub mod client;
pub mod config;
pub mod engine;
pub mod tls;

use std::path::PathBuf;

pub use engine::S3;

/// Everything that can go wrong in the S3 provider, each with what it was doing and on what.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the HTTP client for the S3 API")]
    Client(#[source] reqwest::Error),
    #[error("cannot make the instance's TLS certificates")]
    Certificate(#[source] rcgen::Error),
    #[error(
        "cannot set up the HTTPS client for SeaweedFS's master with the instance's certificate"
    )]
    MasterClient(#[source] reqwest::Error),
    #[error(
        "`{request}` did not reach SeaweedFS's master over TLS with the instance's certificate"
    )]
    Master {
        request: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{endpoint} is not a URL rusty-s3 can sign for: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("`{request}` did not reach the S3 API")]
    Send {
        request: String,
        #[source]
        source: reqwest::Error,
    },
    /// A request the S3 API answered with an error: its code and message are quoted.
    #[error("the S3 API refused `{request}`: {status} {code}: {message}")]
    Refused {
        request: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error(
        "bucket {bucket:?} is not empty, and kip drops a bucket with its objects only when told to"
    )]
    NotEmpty { bucket: String },
    /// A volume file on disk that SeaweedFS's master does not locate yet: the volume server is still loading it
    /// (after a crash it checks the volume's index first).
    #[error("SeaweedFS has not loaded volume {volume} from disk yet")]
    NotLoaded { volume: u32 },
}

impl S3Error {
    /// What to do, for the `hint:` the CLI renders.
    pub fn hint(&self) -> Option<String> {
        match self {
            S3Error::NotEmpty { bucket } => Some(format!(
                "empty the bucket first, or set `force_destroy = true` in bucket \"{bucket}\" (apply that, then \
                 remove or replace the bucket) to delete it with every object and version it holds"
            )),
            S3Error::Refused { code, .. } if is_auth_code(code) => Some(
                "the access key or secret in kip's state does not match what SeaweedFS was started with: restore \
                 the right .kip/state.json, or restart the instance (`kip down` then `kip apply`) so it reads the \
                 identity kip writes"
                    .to_owned(),
            ),
            _ => None,
        }
    }

    /// The S3 error code, when the API answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Whether an S3 error code says the credentials were refused.
fn is_auth_code(code: &str) -> bool {
    matches!(
        code,
        "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch"
    )
}

pub(crate) fn io_error(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> S3Error {
    let path = path.into();
    move |source| S3Error::Io {
        action,
        path,
        source,
    }
}

impl kip_core::engine::Hinted for S3Error {
    fn hint(&self) -> Option<String> {
        S3Error::hint(self)
    }
}
