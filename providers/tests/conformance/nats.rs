//! NATS 2 with JetStream through the conformance suite, checked with `async-nats`.

use async_nats::jetstream::{self, stream};
use kip_conformance::Fixture;
use kip_core::address::Address;
use kip_core::engine::Exports;

/// NATS with a file stream, a key-value bucket and a memory stream (the one pruned). The data is a message in
/// the stream and a key in the bucket, both on file storage, so they survive a SIGKILL.
struct NatsFixture;

fn nats_main() -> Address {
    Address::instance("nats", "main", None)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A JetStream context through the instance's exports: its `url`, with its `token`.
async fn context(exports: &Exports) -> Result<jetstream::Context, String> {
    let text = |name: &str| {
        exports
            .get(name)
            .and_then(|value| value.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("no {name} export"))
    };
    let client = async_nats::ConnectOptions::with_token(text("token")?)
        .connect(text("url")?)
        .await
        .map_err(|e| format!("cannot connect through the url export: {e}"))?;
    Ok(jetstream::new(client))
}

async fn config(js: &jetstream::Context, name: &str) -> Result<stream::Config, String> {
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| format!("stream {name}: {e}"))?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("stream {name}: {e}"))?;
    Ok(info.config.clone())
}

impl NatsFixture {
    fn config_with(scratch: bool) -> String {
        let scratch = if scratch {
            "  stream \"SCRATCH\" {\n    subjects = [\"scratch.>\"]\n    storage  = \"memory\"\n  }\n"
        } else {
            ""
        };
        format!(
            r#"nats "main" {{
  version     = "2"
  max_payload = "2mb"
  settings    = {{ write_deadline = "10s" }}

  stream "ORDERS" {{
    subjects    = ["orders.>"]
    description = "every order"
    max_msgs    = 1000
    max_age     = "7d"
    max_bytes   = "64mb"
  }}
  kv "sessions" {{
    history = 3
    ttl     = "1h"
  }}
{scratch}}}
"#
        )
    }
}

impl Fixture for NatsFixture {
    fn engine(&self) -> &'static str {
        "nats"
    }

    fn version(&self) -> Option<String> {
        Some("2".to_owned())
    }

    fn config(&self) -> String {
        Self::config_with(true)
    }

    fn pruned(&self) -> (String, Address) {
        (
            Self::config_with(false),
            nats_main().named_child("stream", "SCRATCH"),
        )
    }

    fn check_objects(&self, exports: &Exports) -> Result<(), String> {
        runtime().block_on(async {
            let js = context(exports).await?;
            let orders = config(&js, "ORDERS").await?;
            let want = (
                vec!["orders.>".to_owned()],
                Some("every order".to_owned()),
                1000,
                std::time::Duration::from_secs(7 * 86_400),
                64 << 20,
                stream::StorageType::File,
            );
            let have = (
                orders.subjects.clone(),
                orders.description.clone(),
                orders.max_messages,
                orders.max_age,
                orders.max_bytes,
                orders.storage,
            );
            if have != want {
                return Err(format!("ORDERS: expected {want:?}, NATS has {have:?}"));
            }
            let sessions = config(&js, "KV_sessions").await?;
            let have = (
                sessions.subjects.clone(),
                sessions.max_messages_per_subject,
                sessions.max_age,
                sessions.allow_rollup,
            );
            let want = (
                vec!["$KV.sessions.>".to_owned()],
                3,
                std::time::Duration::from_secs(3600),
                true,
            );
            if have != want {
                return Err(format!("KV_sessions: expected {want:?}, NATS has {have:?}"));
            }
            config(&js, "SCRATCH").await.map(drop)
        })
    }

    fn write_data(&self, exports: &Exports) -> Result<(), String> {
        runtime().block_on(async {
            let js = context(exports).await?;
            for (subject, payload) in [
                ("orders.kept", "kept"),
                ("$KV.sessions.conformance", "kept"),
            ] {
                js.publish(subject, payload.into())
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| format!("{subject}: {e}"))?;
            }
            Ok(())
        })
    }

    fn read_data(&self, exports: &Exports) -> Result<bool, String> {
        runtime().block_on(async {
            let js = context(exports).await?;
            let mut kept = true;
            for (name, subject) in [
                ("ORDERS", "orders.kept"),
                ("KV_sessions", "$KV.sessions.conformance"),
            ] {
                let stream = js.get_stream(name).await.map_err(|e| e.to_string())?;
                kept &= stream
                    .get_last_raw_message_by_subject(subject)
                    .await
                    .is_ok_and(|message| message.payload.as_ref() == b"kept");
            }
            Ok(kept)
        })
    }

    fn drift(&self, exports: &Exports) -> Result<Vec<(Address, String)>, String> {
        runtime().block_on(async {
            let js = context(exports).await?;
            let mut orders = config(&js, "ORDERS").await?;
            orders.max_messages = 50;
            js.update_stream(orders).await.map_err(|e| e.to_string())?;
            let mut sessions = config(&js, "KV_sessions").await?;
            sessions.max_messages_per_subject = 5;
            js.update_stream(sessions)
                .await
                .map_err(|e| e.to_string())?;
            Ok(vec![
                (
                    nats_main().named_child("stream", "ORDERS"),
                    "max_msgs".to_owned(),
                ),
                (
                    nats_main().named_child("kv", "sessions"),
                    "history".to_owned(),
                ),
            ])
        })
    }
}

#[test]
fn nats_2_conforms() {
    crate::conform(&NatsFixture);
}
