//! MCP over stdin/stdout for local clients: one JSON-RPC message per line, one implicit
//! session for the process's lifetime, the caller being the local user with
//! `security.stdio_role`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::{dispatch, initialize_result, response, Call, Incoming, Json, Outgoing, Progress, RpcError, Version};
use crate::auth::Identity;
use crate::tools::App;

/// A response on its way to stdout.
fn reply(id: &Value, result: Result<Json, RpcError>) -> Outgoing {
    Outgoing::Response(response(id, result))
}

/// Longest line accepted, the same limit as an HTTP body.
fn too_long(limit: usize) -> Outgoing {
    reply(
        &Value::Null,
        Err(RpcError::invalid_request(format!(
            "Request too large: the limit is {limit} bytes (server.max_request_bytes)"
        ))),
    )
}

/// Serves until stdin closes.
pub async fn serve(app: Arc<App>) -> std::io::Result<()> {
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(msg) = out_rx.recv().await {
            let mut line = msg.into_json().into_string();
            line.push('\n');
            if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let user = nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.name);
    let name = format!("local:{}", user.unwrap_or_else(|| "unknown".into()));
    let identity = Identity::new("stdio", &name, app.config.security.stdio_role);
    let negotiated: Arc<Mutex<Option<Version>>> = Arc::new(Mutex::new(None));
    let inflight: Arc<Mutex<HashMap<String, AbortHandle>>> = Arc::new(Mutex::new(HashMap::new()));
    let limit = app.config.server.max_request_bytes as usize;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > limit {
            let _ = out_tx.send(too_long(limit));
            continue;
        }
        let value: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let _ = out_tx.send(reply(&Value::Null, Err(RpcError::parse_error(e))));
                continue;
            }
        };
        let messages = match value {
            Value::Array(items) => {
                let version = negotiated.lock().ok().and_then(|v| *v);
                if !version.is_some_and(Version::allows_batches) {
                    let _ = out_tx.send(reply(
                        &Value::Null,
                        Err(RpcError::invalid_request(
                            "Invalid request: batches are only allowed in protocol version 2025-03-26",
                        )),
                    ));
                    continue;
                }
                items
            }
            single => vec![single],
        };
        for message in messages {
            let (id, method, params, meta) = match Incoming::parse(message) {
                Err((id, e)) => {
                    let _ = out_tx.send(reply(&id, Err(e)));
                    continue;
                }
                Ok(Incoming::Response) => continue,
                Ok(Incoming::Notification { method, params, .. }) => {
                    if method == "notifications/cancelled" {
                        let rid = params.as_ref().and_then(|p| p.get("requestId")).map(Value::to_string);
                        if let Some(handle) = rid.and_then(|r| inflight.lock().ok().and_then(|mut m| m.remove(&r))) {
                            handle.abort();
                        }
                    }
                    continue;
                }
                Ok(Incoming::Request { id, method, params, meta }) => (id, method, params, meta),
            };
            let has_meta_version = meta.protocol_version.is_some();
            if method == "initialize" && !has_meta_version {
                let requested = params.as_ref().and_then(|p| p.get("protocolVersion")).and_then(Value::as_str);
                let version = Version::negotiate(requested);
                if let Ok(mut v) = negotiated.lock() {
                    *v = Some(version);
                }
                let _ = out_tx.send(reply(&id, Ok(initialize_result(version))));
                continue;
            }
            let version = if has_meta_version {
                super::stateless_version(&meta)
            } else {
                negotiated.lock().ok().and_then(|v| *v).ok_or_else(|| {
                    RpcError::invalid_request(
                        "Invalid request: send initialize first, or use protocol 2026-07-28 with _meta",
                    )
                })
            };
            let version = match version {
                Ok(v) => v,
                Err(e) => {
                    let _ = out_tx.send(reply(&id, Err(e)));
                    continue;
                }
            };
            let log_level = if version.is_stateless() { super::requested_log_level(&meta) } else { None };
            let progress = Progress::new(out_tx.clone(), super::progress_token(&meta), log_level);
            let call = Call {
                identity: identity.clone(),
                version,
                session: None,
                progress,
                transport: "stdio",
                request_id: id.clone(),
            };
            let app = app.clone();
            let tx = out_tx.clone();
            let key = id.to_string();
            let inflight_done = inflight.clone();
            let done_key = key.clone();
            let task = tokio::spawn(async move {
                let result = dispatch(&app, &call, &method, params).await;
                if let Ok(mut m) = inflight_done.lock() {
                    m.remove(&done_key);
                }
                let _ = tx.send(reply(&id, result));
            });
            if let Ok(mut m) = inflight.lock() {
                if !task.is_finished() {
                    m.insert(key, task.abort_handle());
                }
            }
        }
    }
    drop(out_tx);
    let _ = writer.await;
    Ok(())
}
