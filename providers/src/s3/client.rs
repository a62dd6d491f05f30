//! Signed S3 requests to the instance: rusty-s3 signs them (SigV4, presigned for a minute), reqwest sends them
//! over loopback. rusty-s3 has no action for the bucket sub-resources kip needs (`?versioning`, `?object-lock`,
//! `?versions`), so those are its plain bucket actions with the sub-resource added to the signed query, and
//! their small XML answers are read by [`xml`]. [`MasterClient`] asks SeaweedFS's master, over mutual TLS, where
//! volumes are.
//!

use std::time::Duration;

use reqwest::Url;
use rusty_s3::actions::ObjectIdentifier;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::S3Error;
use super::tls::TlsFiles;

/// How long a signed URL is valid: the request is sent at once.
const SIGNED_FOR: Duration = Duration::from_secs(60);
/// S3's namespace for request bodies.
const XML_NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
/// The most versions one `?versions` page or one DeleteObjects request holds.
const PAGE: usize = 1000;

/// A bucket's configuration as the S3 API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// Versioning `Enabled` (not `Suspended`, not never set).
    pub versioning: bool,
    pub object_lock: bool,
}

/// One version (or delete marker) of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub key: String,
    pub version_id: Option<String>,
}

/// A client of one instance's S3 API, with its identity.
#[derive(Debug, Clone)]
pub struct S3Client {
    http: reqwest::Client,
    endpoint: Url,
    region: String,
    credentials: Credentials,
}

impl S3Client {
    pub fn new(
        endpoint: &str,
        region: &str,
        access_key: &str,
        secret_key: &str,
    ) -> Result<S3Client, S3Error> {
        let parsed = Url::parse(endpoint).map_err(|error| S3Error::Endpoint {
            endpoint: endpoint.to_owned(),
            reason: error.to_string(),
        })?;
        // Plain HTTP on loopback: kip's builder, which loads no root certificates until a TLS handshake needs them.
        let http = loopback(kip_core::fetch::client_builder())
            .build()
            .map_err(S3Error::Client)?;
        Ok(S3Client {
            http,
            endpoint: parsed,
            region: region.to_owned(),
            credentials: Credentials::new(access_key, secret_key),
        })
    }

    fn bucket(&self, name: &str) -> Result<Bucket, S3Error> {
        Bucket::new(
            self.endpoint.clone(),
            UrlStyle::Path,
            name.to_owned(),
            self.region.clone(),
        )
        .map_err(|error| S3Error::Endpoint {
            endpoint: self.endpoint.to_string(),
            reason: format!("{error:?}"),
        })
    }

    /// Sends a signed request; a non-2xx answer is [`S3Error::Refused`] with S3's code and message.
    async fn send<'a, A: S3Action<'a>>(
        &self,
        action: A,
        body: Option<String>,
        headers: &[(&str, &str)],
        request: &str,
    ) -> Result<String, S3Error> {
        let url = action.sign(SIGNED_FOR);
        let method = match A::METHOD {
            rusty_s3::Method::Head => reqwest::Method::HEAD,
            rusty_s3::Method::Get => reqwest::Method::GET,
            rusty_s3::Method::Put => reqwest::Method::PUT,
            rusty_s3::Method::Post => reqwest::Method::POST,
            rusty_s3::Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self.http.request(method, url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(body) = body {
            builder = builder.body(body);
        }
        let send_error = |source| S3Error::Send {
            request: request.to_owned(),
            source,
        };
        let response = builder.send().await.map_err(send_error)?;
        let status = response.status();
        let text = response.text().await.map_err(send_error)?;
        if status.is_success() {
            return Ok(text);
        }
        Err(S3Error::Refused {
            request: request.to_owned(),
            status: status.as_u16(),
            code: xml::first(&text, "Code").unwrap_or_else(|| "NoCode".to_owned()),
            message: xml::first(&text, "Message").unwrap_or_default(),
        })
    }

    /// CreateBucket, with object lock when asked (S3 allows it only here). A bucket that exists already is
    /// fine: an apply that stopped half-way may have made it.
    pub async fn create_bucket(&self, name: &str, object_lock: bool) -> Result<(), S3Error> {
        let bucket = self.bucket(name)?;
        let mut action = bucket.create_bucket(&self.credentials);
        if object_lock {
            action
                .headers_mut()
                .insert("x-amz-bucket-object-lock-enabled", "true");
        }
        let body = action.body();
        let headers: &[(&str, &str)] = if object_lock {
            &[("x-amz-bucket-object-lock-enabled", "true")]
        } else {
            &[]
        };
        let request = format!("CreateBucket {name}");
        match self.send(action, Some(body), headers, &request).await {
            Err(error) if error.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
            other => other.map(drop),
        }
    }

    /// PutBucketVersioning: `Enabled`, or `Suspended` (S3 cannot turn versioning off once it was on).
    pub async fn set_versioning(&self, name: &str, enabled: bool) -> Result<(), S3Error> {
        let bucket = self.bucket(name)?;
        let status = if enabled { "Enabled" } else { "Suspended" };
        let mut action = bucket.create_bucket(&self.credentials);
        action.query_mut().insert("versioning", "");
        let body = format!(
            "<VersioningConfiguration xmlns=\"{XML_NS}\"><Status>{status}</Status></VersioningConfiguration>"
        );
        self.send(
            action,
            Some(body),
            &[],
            &format!("PutBucketVersioning {name} {status}"),
        )
        .await
        .map(drop)
    }

    /// A GET of a bucket sub-resource (`versioning`, `object-lock`, …) with extra query parameters.
    async fn get_sub_resource(
        &self,
        name: &str,
        resource: &str,
        query: &[(&str, &str)],
        request: &str,
    ) -> Result<String, S3Error> {
        let bucket = self.bucket(name)?;
        let mut action = bucket.get_object(Some(&self.credentials), "");
        action.query_mut().insert(resource.to_owned(), "");
        for (key, value) in query {
            action
                .query_mut()
                .insert((*key).to_owned(), (*value).to_owned());
        }
        self.send(action, None, &[], request).await
    }

    /// The bucket's versioning and object lock, or `None` when it does not exist.
    pub async fn bucket_state(&self, name: &str) -> Result<Option<BucketState>, S3Error> {
        let versioning = match self
            .get_sub_resource(
                name,
                "versioning",
                &[],
                &format!("GetBucketVersioning {name}"),
            )
            .await
        {
            Ok(answer) => xml::first(&answer, "Status").as_deref() == Some("Enabled"),
            Err(error) if error.code() == Some("NoSuchBucket") => return Ok(None),
            Err(error) => return Err(error),
        };
        let object_lock = match self
            .get_sub_resource(
                name,
                "object-lock",
                &[],
                &format!("GetObjectLockConfiguration {name}"),
            )
            .await
        {
            Ok(answer) => xml::first(&answer, "ObjectLockEnabled").as_deref() == Some("Enabled"),
            Err(error) if error.code() == Some("ObjectLockConfigurationNotFoundError") => false,
            Err(error) if error.code() == Some("NoSuchBucket") => return Ok(None),
            Err(error) => return Err(error),
        };
        Ok(Some(BucketState {
            versioning,
            object_lock,
        }))
    }

    /// Up to `limit` versions and delete markers of the bucket's objects (ListObjectVersions, first page).
    pub async fn versions(&self, name: &str, limit: usize) -> Result<Vec<Version>, S3Error> {
        let limit = limit.clamp(1, PAGE).to_string();
        let answer = self
            .get_sub_resource(
                name,
                "versions",
                &[("max-keys", &limit)],
                &format!("ListObjectVersions {name}"),
            )
            .await?;
        let mut versions = Vec::new();
        for tag in ["Version", "DeleteMarker"] {
            for element in xml::elements(&answer, tag) {
                if let Some(key) = xml::first(element, "Key") {
                    versions.push(Version {
                        key,
                        version_id: xml::first(element, "VersionId"),
                    });
                }
            }
        }
        Ok(versions)
    }

    /// Deletes every version and delete marker of every object of the bucket, a page at a time.
    pub async fn delete_all_versions(&self, name: &str) -> Result<(), S3Error> {
        loop {
            let versions = self.versions(name, PAGE).await?;
            if versions.is_empty() {
                return Ok(());
            }
            let identifiers: Vec<ObjectIdentifier> = versions
                .into_iter()
                .map(|version| ObjectIdentifier {
                    key: version.key,
                    version_id: version.version_id,
                })
                .collect();
            let bucket = self.bucket(name)?;
            let mut action = bucket.delete_objects(Some(&self.credentials), identifiers.iter());
            action.set_quiet(true);
            let url_action = action.clone();
            let (body, md5) = action.body_with_md5();
            let request = format!("DeleteObjects {name} ({} versions)", identifiers.len());
            let answer = self
                .send(url_action, Some(body), &[("content-md5", &md5)], &request)
                .await?;
            if let Some(code) = xml::elements(&answer, "Error")
                .first()
                .and_then(|error| xml::first(error, "Code"))
            {
                return Err(S3Error::Refused {
                    request,
                    status: 200,
                    code,
                    message: "an object version could not be deleted".to_owned(),
                });
            }
        }
    }

    pub async fn delete_bucket(&self, name: &str) -> Result<(), S3Error> {
        let bucket = self.bucket(name)?;
        let action = bucket.delete_bucket(&self.credentials);
        match self
            .send(action, None, &[], &format!("DeleteBucket {name}"))
            .await
        {
            Err(error) if error.code() == Some("NoSuchBucket") => Ok(()),
            other => other.map(drop),
        }
    }

    pub async fn put_object(&self, bucket: &str, key: &str, body: &str) -> Result<(), S3Error> {
        let bucket_handle = self.bucket(bucket)?;
        let action = bucket_handle.put_object(Some(&self.credentials), key);
        self.send(
            action,
            Some(body.to_owned()),
            &[],
            &format!("PutObject {bucket}/{key}"),
        )
        .await
        .map(drop)
    }

    pub async fn get_object(&self, bucket: &str, key: &str) -> Result<String, S3Error> {
        let bucket_handle = self.bucket(bucket)?;
        let action = bucket_handle.get_object(Some(&self.credentials), key);
        self.send(action, None, &[], &format!("GetObject {bucket}/{key}"))
            .await
    }

    /// GetObject retried on the answers S3 clients retry (500, 503), for up to `budget`, as the AWS SDKs' standard
    /// retry mode does: SeaweedFS answers 500 for an object whose volume it is still loading after a crash.
    pub async fn get_object_retrying(
        &self,
        bucket: &str,
        key: &str,
        budget: Duration,
    ) -> Result<String, S3Error> {
        let started = std::time::Instant::now();
        loop {
            match self.get_object(bucket, key).await {
                Err(S3Error::Refused { status, .. })
                    if matches!(status, 500 | 503) && started.elapsed() < budget =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), S3Error> {
        let bucket_handle = self.bucket(bucket)?;
        let action = bucket_handle.delete_object(Some(&self.credentials), key);
        self.send(action, None, &[], &format!("DeleteObject {bucket}/{key}"))
            .await
            .map(drop)
    }
}

/// `builder`, for the instance's loopback listeners.
fn loopback(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    builder
        // The instance is on loopback: a proxy from the environment would send its requests elsewhere.
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
}

/// A client of SeaweedFS's master HTTP API, which takes only TLS clients presenting the instance's certificate
/// ([`super::tls`]).
#[derive(Debug, Clone)]
pub struct MasterClient {
    http: reqwest::Client,
    url: String,
}

impl MasterClient {
    /// A client of the master on `port`, with the instance's TLS files: it trusts only the instance's CA and
    /// presents the instance's certificate.
    pub fn new(port: u16, tls: &TlsFiles) -> Result<MasterClient, S3Error> {
        let ca = reqwest::Certificate::from_pem(&tls.ca_pem()?).map_err(S3Error::MasterClient)?;
        let identity = reqwest::Identity::from_pem(&tls.client_identity_pem()?)
            .map_err(S3Error::MasterClient)?;
        // reqwest panics without a TLS provider.
        kip_core::fetch::install_tls_provider();
        let http = loopback(reqwest::Client::builder())
            .tls_certs_only([ca])
            .identity(identity)
            .build()
            .map_err(S3Error::MasterClient)?;
        Ok(MasterClient {
            http,
            url: format!("https://127.0.0.1:{port}"),
        })
    }

    /// Whether the master locates volume `volume`: its `/dir/lookup` answers with at least one location.
    pub async fn locates(&self, volume: u32) -> Result<bool, S3Error> {
        let request = format!("lookup of volume {volume} on the master");
        let send_error = |source| S3Error::Master {
            request: request.clone(),
            source,
        };
        let answer: serde_json::Value = self
            .http
            .get(format!("{}/dir/lookup?volumeId={volume}", self.url))
            .send()
            .await
            .map_err(send_error)?
            .json()
            .await
            .map_err(send_error)?;
        Ok(answer["locations"]
            .as_array()
            .is_some_and(|locations| !locations.is_empty()))
    }
}

/// Just enough XML for S3's answers: the text of elements by tag name, entities decoded. S3's answers are flat
/// documents of known shape, without CDATA or comments.
pub mod xml {
    /// The inner text of every `<tag>…</tag>` element, in document order (not nested in one another).
    pub fn elements<'a>(document: &'a str, tag: &str) -> Vec<&'a str> {
        let open = format!("<{tag}");
        let close = format!("</{tag}>");
        let mut found = Vec::new();
        let mut rest = document;
        while let Some(start) = rest.find(&open) {
            let after_name = &rest[start + open.len()..];
            // `<Tag>` or `<Tag attr="…">`, not `<TagLonger>`; `<Tag/>` is empty.
            let Some(end_of_open) = after_name.find('>') else {
                break;
            };
            let head = &after_name[..end_of_open];
            if !(head.is_empty() || head.starts_with(' ') || head == "/") {
                rest = after_name;
                continue;
            }
            let body = &after_name[end_of_open + 1..];
            if head.ends_with('/') {
                found.push("");
                rest = body;
                continue;
            }
            let Some(end) = body.find(&close) else {
                break;
            };
            found.push(&body[..end]);
            rest = &body[end + close.len()..];
        }
        found
    }

    /// The decoded text of the first `<tag>` element.
    pub fn first(document: &str, tag: &str) -> Option<String> {
        elements(document, tag).first().map(|text| unescape(text))
    }

    /// XML's five entities and numeric character references.
    pub fn unescape(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(amp) = rest.find('&') {
            out.push_str(&rest[..amp]);
            let after = &rest[amp + 1..];
            let Some(semi) = after.find(';') else {
                out.push_str(&rest[amp..]);
                return out;
            };
            let entity = &after[..semi];
            let decoded = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => entity
                    .strip_prefix("#x")
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    .or_else(|| entity.strip_prefix('#').and_then(|dec| dec.parse().ok()))
                    .and_then(char::from_u32),
            };
            match decoded {
                Some(character) => {
                    out.push(character);
                    rest = &after[semi + 1..];
                }
                None => {
                    out.push('&');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn reads_elements_and_entities() {
            let doc = concat!(
                r#"<ListVersionsResult xmlns="x">"#,
                "<Version><Key>a&amp;b</Key><VersionId>1</VersionId></Version>",
                "<VersionIdMarker/><DeleteMarker><Key>c&#x41;</Key></DeleteMarker>",
                "</ListVersionsResult>"
            );
            let versions = elements(doc, "Version");
            assert_eq!(versions.len(), 1);
            assert_eq!(first(versions[0], "Key").as_deref(), Some("a&b"));
            assert_eq!(first(doc, "VersionIdMarker").as_deref(), Some(""));
            let markers = elements(doc, "DeleteMarker");
            assert_eq!(first(markers[0], "Key").as_deref(), Some("cA"));
            assert_eq!(first(doc, "Missing"), None);
        }
    }
}
