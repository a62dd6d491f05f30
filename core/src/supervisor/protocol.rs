//! The supervisor's wire format (documented in the module header of [`super`]): versioned, newline-delimited JSON
//! requests and responses, encoded and decoded here and nowhere else, so that the daemon and the client cannot
//! drift apart.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::WaitUntil;
use super::error::RequestError;
use crate::engine::SpawnSpec;

/// The protocol version this kip speaks; every message carries it as `"v"`.
pub const PROTOCOL_VERSION: u32 = 2;
/// The longest request or response line accepted (a spawn spec is a few KiB; a status of hundreds of processes
/// stays far below this).
pub(super) const MAX_LINE: usize = 1 << 20;

/// What a client can ask.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub(super) enum Request {
    Ping,
    Start {
        spec: Box<SpawnSpec>,
    },
    Stop {
        name: String,
        /// Its data is deleted right after: the spec's `stop.discard` sequence, when it has one.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        discard: bool,
    },
    Status,
    Shutdown,
    Reload {
        name: String,
    },
    Wait {
        name: String,
        until: WaitUntil,
        timeout_ms: u64,
    },
}

impl Request {
    /// The operation's name, for messages.
    pub(super) fn op(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Start { .. } => "start",
            Request::Stop { .. } => "stop",
            Request::Status => "status",
            Request::Shutdown => "shutdown",
            Request::Reload { .. } => "reload",
            Request::Wait { .. } => "wait",
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    v: u32,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Serialize, Deserialize)]
struct Response {
    v: u32,
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
}

/// One request line, with its newline.
pub(super) fn encode_request(request: &Request) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Envelope {
        v: PROTOCOL_VERSION,
        body: request,
    })
    .expect("a request always serialises: its maps have string keys");
    line.push(b'\n');
    line
}

/// A request line (without its newline), checked: JSON, an object, the protocol version, a known operation.
pub(super) fn decode_request(line: &[u8]) -> Result<Request, RequestError> {
    let bad = |reason: String| RequestError::BadRequest { reason };
    let value: Value = serde_json::from_slice(line)
        .map_err(|error| bad(format!("the request is not valid JSON: {error}")))?;
    let Value::Object(mut object) = value else {
        return Err(bad("the request is not a JSON object".to_owned()));
    };
    match object.remove("v") {
        Some(Value::Number(number)) if number.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(other) => {
            return Err(RequestError::UnsupportedVersion {
                requested: other.to_string(),
                supported: PROTOCOL_VERSION,
            });
        }
        None => {
            return Err(bad(format!(
                "the request has no protocol version (\"v\": {PROTOCOL_VERSION})"
            )));
        }
    }
    serde_json::from_value(Value::Object(object)).map_err(|error| bad(format!("{error}")))
}

/// One response line, with its newline.
pub(super) fn encode_response(outcome: Result<Value, RequestError>) -> Vec<u8> {
    let response = match outcome {
        Ok(result) => Response {
            v: PROTOCOL_VERSION,
            ok: true,
            result: Some(result),
            error: None,
        },
        Err(error) => {
            let mut encoded =
                serde_json::to_value(&error).unwrap_or_else(|_| Value::Object(Default::default()));
            if let Value::Object(object) = &mut encoded {
                object.insert("message".to_owned(), Value::String(error.to_string()));
                object.insert(
                    "hint".to_owned(),
                    error.hint().map_or(Value::Null, Value::String),
                );
            }
            Response {
                v: PROTOCOL_VERSION,
                ok: false,
                result: None,
                error: Some(encoded),
            }
        }
    };
    let mut line = serde_json::to_vec(&response).expect("a response always serialises");
    line.push(b'\n');
    line
}

/// A response line: the result, or the daemon's error; `Err` with a reason when the line is not a response.
pub(super) fn decode_response(line: &[u8]) -> Result<Result<Value, RequestError>, String> {
    let response: Response = serde_json::from_slice(line)
        .map_err(|error| format!("not a protocol response ({error})"))?;
    if response.v != PROTOCOL_VERSION {
        return Ok(Err(RequestError::UnsupportedVersion {
            requested: PROTOCOL_VERSION.to_string(),
            supported: response.v,
        }));
    }
    if response.ok {
        return Ok(Ok(response.result.unwrap_or(Value::Null)));
    }
    let error = response.error.unwrap_or(Value::Null);
    Ok(Err(serde_json::from_value::<RequestError>(error.clone())
        .unwrap_or_else(|_| {
            // A kind this kip does not know: keep the daemon's own rendering.
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the supervisor reported an error");
            RequestError::Other {
                message: message.to_owned(),
            }
        })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_version_and_the_operation() {
        let line = encode_request(&Request::Stop {
            discard: false,
            name: "pg.main".to_owned(),
        });
        assert_eq!(line, b"{\"v\":2,\"op\":\"stop\",\"name\":\"pg.main\"}\n");
        let decoded = decode_request(line.trim_ascii()).unwrap();
        assert!(matches!(decoded, Request::Stop { name, discard: false } if name == "pg.main"));

        let line = encode_request(&Request::Wait {
            name: "job".to_owned(),
            until: WaitUntil::Exited,
            timeout_ms: 500,
        });
        assert_eq!(
            line,
            b"{\"v\":2,\"op\":\"wait\",\"name\":\"job\",\"until\":\"exited\",\"timeout_ms\":500}\n"
        );
        assert!(matches!(
            decode_request(br#"{"v":2,"op":"reload","name":"pg.main"}"#).unwrap(),
            Request::Reload { name } if name == "pg.main"
        ));
        let error =
            decode_request(br#"{"v":2,"op":"wait","name":"job","until":"done","timeout_ms":1}"#)
                .unwrap_err();
        assert!(
            matches!(error, RequestError::BadRequest { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn errors_round_trip_with_their_message_and_hint() {
        let error = RequestError::ExitedBeforeReady {
            name: "pg.main".to_owned(),
            exit: "exited with code 1".to_owned(),
            log: "/p/.kip/logs/pg.log".into(),
            tail: vec!["FATAL: bad setting".to_owned()],
        };
        let line = encode_response(Err(error.clone()));
        let raw: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(raw["error"]["kind"], "exited_before_ready");
        assert_eq!(raw["error"]["message"], error.to_string());
        assert_eq!(raw["error"]["hint"], "the whole log is /p/.kip/logs/pg.log");
        assert_eq!(decode_response(&line).unwrap(), Err(error));
    }

    #[test]
    fn an_unknown_error_kind_keeps_the_daemons_message() {
        let line = br#"{"v":2,"ok":false,"error":{"kind":"from_the_future","message":"it broke"}}"#;
        assert_eq!(
            decode_response(line).unwrap(),
            Err(RequestError::Other {
                message: "it broke".to_owned()
            })
        );
        assert!(decode_response(b"hello").is_err());
    }
}
