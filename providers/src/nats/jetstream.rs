//! Streams and key-value buckets as JetStream stream configurations: built from the attributes, read back from
//! the server (every stream in one `STREAM.LIST` request), compared in the attributes' own terms (so drift names
//! exactly the attributes that differ), and converged with `STREAM.CREATE`, `STREAM.UPDATE` and `STREAM.DELETE`.
//!
//! A bucket is the stream `KV_<bucket>` with the key-value conventions every NATS client reads (subjects
//! `$KV.<bucket>.>`, one value per key per `history` step, roll-ups allowed, direct gets, new writes refused at a
//! limit rather than old values dropped); kip writes that configuration itself, since the conventions are part of
//! the wire format, not of a client library.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::{Config, DiscardPolicy, Info, RetentionPolicy, StorageType};
use kip_core::plan::Attributes;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::NatsError;
use super::args::{KvArgs, StreamArgs, bytes, duration, duration_text};

/// The object kind of streams.
pub const STREAM: &str = "stream";
/// The object kind of key-value buckets.
pub const KV: &str = "kv";

/// The window in which a bucket stores a repeated write once, as NATS clients create buckets (or the bucket's
/// `ttl` when that is shorter: NATS refuses a window longer than the messages live).
const KV_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The stream that holds a bucket.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

fn limit(what: &str, size: Option<&super::args::Size>) -> Result<i64, NatsError> {
    match size {
        None => Ok(-1),
        Some(size) => i64::try_from(bytes(what, size)?).map_err(|_| NatsError::Invalid {
            what: what.to_owned(),
            reason: "too large".into(),
        }),
    }
}

fn message_limit(what: &str, size: Option<&super::args::Size>) -> Result<i32, NatsError> {
    i32::try_from(limit(what, size)?).map_err(|_| NatsError::Invalid {
        what: what.to_owned(),
        reason: "larger than NATS's largest message (2 GiB)".into(),
    })
}

fn storage(name: &str) -> StorageType {
    match name {
        "memory" => StorageType::Memory,
        _ => StorageType::File,
    }
}

/// The configuration of stream `name` as its block declares it.
pub fn stream_config(name: &str, args: &StreamArgs) -> Result<Config, NatsError> {
    let max_age = args
        .max_age
        .as_deref()
        .map(|text| duration("max_age", text))
        .transpose()?
        .unwrap_or_default();
    Ok(Config {
        name: name.to_owned(),
        subjects: args.subjects.clone(),
        description: args.description.clone(),
        retention: match args.retention.as_str() {
            "interest" => RetentionPolicy::Interest,
            "workqueue" => RetentionPolicy::WorkQueue,
            _ => RetentionPolicy::Limits,
        },
        storage: storage(&args.storage),
        max_messages: args.max_msgs,
        max_messages_per_subject: args.max_msgs_per_subject,
        max_bytes: limit("max_bytes", args.max_bytes.as_ref())?,
        max_age,
        max_message_size: message_limit("max_msg_size", args.max_msg_size.as_ref())?,
        discard: match args.discard.as_str() {
            "new" => DiscardPolicy::New,
            _ => DiscardPolicy::Old,
        },
        duplicate_window: duration("duplicate_window", &args.duplicate_window)?,
        num_replicas: usize::try_from(args.replicas).unwrap_or(usize::MAX),
        ..Config::default()
    })
}

/// The configuration of the stream that holds bucket `bucket`, as its block declares it.
pub fn kv_config(bucket: &str, args: &KvArgs) -> Result<Config, NatsError> {
    let max_age = args
        .ttl
        .as_deref()
        .map(|text| duration("ttl", text))
        .transpose()?
        .unwrap_or_default();
    let duplicate_window = if max_age.is_zero() {
        KV_DUPLICATE_WINDOW
    } else {
        max_age.min(KV_DUPLICATE_WINDOW)
    };
    Ok(Config {
        name: kv_stream(bucket),
        subjects: vec![format!("$KV.{bucket}.>")],
        description: args.description.clone(),
        retention: RetentionPolicy::Limits,
        storage: storage(&args.storage),
        max_messages: -1,
        max_messages_per_subject: args.history,
        max_bytes: limit("max_bytes", args.max_bytes.as_ref())?,
        max_age,
        max_message_size: message_limit("max_value_size", args.max_value_size.as_ref())?,
        discard: DiscardPolicy::New,
        duplicate_window,
        num_replicas: usize::try_from(args.replicas).unwrap_or(usize::MAX),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Config::default()
    })
}

/// The configuration `kind` `label` should have, from its attributes.
pub fn desired_config(
    kind: &str,
    label: &str,
    attributes: &Attributes,
) -> Result<Config, NatsError> {
    let object = Json::Object(
        attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let unreadable = |error: serde_json::Error| NatsError::Invalid {
        what: format!("{kind} {label:?}"),
        reason: error.to_string(),
    };
    match kind {
        KV => kv_config(label, &serde_json::from_value(object).map_err(unreadable)?),
        _ => stream_config(label, &serde_json::from_value(object).map_err(unreadable)?),
    }
}

/// A limit NATS reports as `-1` (or `0`) for none: `null`, as an unset argument.
fn optional_limit(value: i64) -> Json {
    if value > 0 { json!(value) } else { Json::Null }
}

fn optional_duration(value: Duration) -> Json {
    if value.is_zero() {
        Json::Null
    } else {
        json!(duration_text(value))
    }
}

fn description(config: &Config) -> Json {
    match config.description.as_deref() {
        None | Some("") => Json::Null,
        Some(text) => json!(text),
    }
}

fn storage_name(config: &Config) -> Json {
    json!(match config.storage {
        StorageType::Memory => "memory",
        StorageType::File => "file",
    })
}

/// A configuration in the terms of kind's attributes, with the defaults NATS fills in made explicit, so that what
/// kip asked for and what NATS reports compare equal when they mean the same.
pub fn attributes_of(kind: &str, config: &Config) -> BTreeMap<&'static str, Json> {
    let count = |value: i64| json!(if value > 0 { value } else { -1 });
    let replicas = json!(config.num_replicas.max(1));
    match kind {
        KV => BTreeMap::from([
            ("description", description(config)),
            ("history", json!(config.max_messages_per_subject.max(1))),
            ("ttl", optional_duration(config.max_age)),
            ("max_bytes", optional_limit(config.max_bytes)),
            (
                "max_value_size",
                optional_limit(config.max_message_size.into()),
            ),
            ("storage", storage_name(config)),
            ("replicas", replicas),
        ]),
        _ => BTreeMap::from([
            ("subjects", json!(config.subjects)),
            ("description", description(config)),
            (
                "retention",
                json!(match config.retention {
                    RetentionPolicy::Limits => "limits",
                    RetentionPolicy::Interest => "interest",
                    RetentionPolicy::WorkQueue => "workqueue",
                }),
            ),
            ("storage", storage_name(config)),
            ("max_msgs", count(config.max_messages)),
            (
                "max_msgs_per_subject",
                count(config.max_messages_per_subject),
            ),
            ("max_bytes", optional_limit(config.max_bytes)),
            ("max_age", optional_duration(config.max_age)),
            (
                "max_msg_size",
                optional_limit(config.max_message_size.into()),
            ),
            (
                "discard",
                json!(match config.discard {
                    DiscardPolicy::Old => "old",
                    DiscardPolicy::New => "new",
                }),
            ),
            (
                "duplicate_window",
                json!(duration_text(config.duplicate_window)),
            ),
            ("replicas", replicas),
        ]),
    }
}

/// What the plan compares for an object NATS has: its `base` attributes (as last applied, or declared), with
/// each attribute whose live value means something else replaced by the live value.
pub fn observed(
    kind: &str,
    label: &str,
    base: &Attributes,
    live: &Config,
) -> Result<Attributes, NatsError> {
    let expected = attributes_of(kind, &desired_config(kind, label, base)?);
    let mut attributes = base.clone();
    for (name, value) in attributes_of(kind, live) {
        if expected.get(name) != Some(&value) {
            attributes.insert(name.to_owned(), value);
        }
    }
    Ok(attributes)
}

/// A page of `STREAM.LIST`.
#[derive(Debug, Deserialize)]
struct StreamPage {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    streams: Option<Vec<Info>>,
}

/// Every stream of the account with its configuration, by name: one request (a page holds 256 streams).
pub async fn list(js: &Context) -> Result<BTreeMap<String, Config>, NatsError> {
    let mut streams = BTreeMap::new();
    loop {
        let page: Response<StreamPage> = js
            .request("STREAM.LIST", &json!({ "offset": streams.len() }))
            .await
            .map_err(|error| NatsError::refused("the stream list", error))?;
        let page = match page {
            Response::Ok(page) => page,
            Response::Err { error } => return Err(NatsError::refused("the stream list", error)),
        };
        let infos = page.streams.unwrap_or_default();
        let empty = infos.is_empty();
        for info in infos {
            streams.insert(info.config.name.clone(), info.config);
        }
        if empty || streams.len() >= page.total {
            return Ok(streams);
        }
    }
}

/// Sends a JetStream API request; answers NATS's error code when it refused.
async fn request(
    js: &Context,
    subject: String,
    body: &impl serde::Serialize,
) -> Result<Result<(), async_nats::jetstream::Error>, NatsError> {
    let answer: Response<Json> = js
        .request(subject.clone(), body)
        .await
        .map_err(|error| NatsError::refused(format!("`{subject}`"), error))?;
    Ok(match answer {
        Response::Ok(_) => Ok(()),
        Response::Err { error } => Err(error),
    })
}

/// Creates the stream, or updates it when it exists (kip stopped after creating it, before saving its state).
pub async fn create_or_update(js: &Context, config: &Config) -> Result<(), NatsError> {
    let name = &config.name;
    match request(js, format!("STREAM.UPDATE.{name}"), config).await? {
        Ok(()) => Ok(()),
        Err(error) if error.error_code() == ErrorCode::STREAM_NOT_FOUND => {
            request(js, format!("STREAM.CREATE.{name}"), config)
                .await?
                .map_err(|error| NatsError::refused(format!("to create stream {name:?}"), error))
        }
        Err(error) => Err(NatsError::refused(
            format!("to update stream {name:?}"),
            error,
        )),
    }
}

/// Deletes the stream (with its messages: the object was removed from the configuration, or is replaced), if it
/// exists.
pub async fn delete(js: &Context, name: &str) -> Result<(), NatsError> {
    match request(js, format!("STREAM.DELETE.{name}"), &json!({})).await? {
        Ok(()) => Ok(()),
        Err(error) if error.error_code() == ErrorCode::STREAM_NOT_FOUND => Ok(()),
        Err(error) => Err(NatsError::refused(
            format!("to delete stream {name:?}"),
            error,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(value: Json) -> Attributes {
        serde_json::from_value(value).unwrap()
    }

    fn stream() -> Attributes {
        attrs(
            json!({"subjects": ["orders.>"], "description": null, "retention": "limits",
            "storage": "file", "max_msgs": -1, "max_msgs_per_subject": -1, "max_bytes": "1gb",
            "max_age": "7d", "max_msg_size": null, "discard": "old", "duplicate_window": "2m", "replicas": 1}),
        )
    }

    #[test]
    fn what_nats_reports_for_what_kip_asked_is_no_drift() {
        let base = stream();
        let mut live = desired_config(STREAM, "ORDERS", &base).unwrap();
        // NATS fills in its own spellings of "none".
        live.max_message_size = -1;
        live.max_consumers = -1;
        assert_eq!(observed(STREAM, "ORDERS", &base, &live).unwrap(), base);
        live.max_messages = 10;
        live.max_age = Duration::from_secs(3600);
        let seen = observed(STREAM, "ORDERS", &base, &live).unwrap();
        assert_eq!(seen["max_msgs"], json!(10));
        assert_eq!(seen["max_age"], json!("1h"));
        assert_eq!(seen["max_bytes"], json!("1gb"));
    }

    #[test]
    fn a_bucket_is_a_stream_with_the_key_value_conventions() {
        let base = attrs(
            json!({"description": "x", "history": 5, "ttl": "30s", "max_bytes": null,
            "max_value_size": "1kb", "storage": "memory", "replicas": 1}),
        );
        let config = desired_config(KV, "sessions", &base).unwrap();
        assert_eq!(config.name, "KV_sessions");
        assert_eq!(config.subjects, ["$KV.sessions.>"]);
        assert_eq!(config.duplicate_window, Duration::from_secs(30));
        assert!(config.allow_rollup && config.deny_delete && config.allow_direct);
        assert_eq!(observed(KV, "sessions", &base, &config).unwrap(), base);
        let mut live = config;
        live.max_messages_per_subject = 2;
        assert_eq!(
            observed(KV, "sessions", &base, &live).unwrap()["history"],
            json!(2)
        );
    }
}
