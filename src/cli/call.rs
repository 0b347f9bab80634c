//! One stateless MCP `tools/call` over HTTP (protocol 2026-07-28: no session to open or
//! close), as the operator's command line and the fleet tool make it. The caller brings the
//! request (its URL and credentials); this writes the call, reads the answer as JSON or as an
//! event stream, shows progress notifications, and says what went wrong.

use serde_json::{json, Value};

use crate::base::VERSION;

/// The protocol revision the command lines speak: stateless, one request per call.
pub const PROTOCOL: &str = "2026-07-28";

/// Shows a tool's progress notifications: progress, total, message.
pub type OnProgress<'a> = &'a mut dyn FnMut(f64, Option<f64>, Option<&str>);

/// A tool's answer: its structured result (or text), and whether it is an error.
#[derive(Debug)]
pub struct ToolAnswer {
    pub structured: Option<Value>,
    pub text: String,
    pub is_error: bool,
}

/// Why a call got no tool answer.
#[derive(Debug)]
pub enum CallFailure {
    /// Nothing answered: connection refused, a timeout, TLS.
    Unreachable(reqwest::Error),
    /// The server answered with an HTTP error or a JSON-RPC error.
    Answered { status: u16, message: String },
    /// The event stream ended before the answer.
    NoResult,
}

/// Calls `tool` with `arguments` through `request` (a POST to the MCP endpoint, with its
/// credentials). `client` names the caller in `clientInfo`.
pub async fn tool_call(
    request: reqwest::RequestBuilder,
    client: &str,
    tool: &str,
    arguments: Value,
    mut on_progress: Option<OnProgress<'_>>,
) -> Result<ToolAnswer, CallFailure> {
    let mut meta = json!({
        crate::mcp::meta::PROTOCOL_VERSION: PROTOCOL,
        crate::mcp::meta::CLIENT_CAPABILITIES: {},
        crate::mcp::meta::CLIENT_INFO: {"name": client, "version": VERSION},
    });
    if on_progress.is_some() {
        meta["progressToken"] = json!("cli");
    }
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": meta},
    });
    let request = request
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", PROTOCOL)
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .body(body.to_string());
    let mut response = request.send().await.map_err(CallFailure::Unreachable)?;
    let status = response.status();
    let is_sse = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut answer = None;
    if is_sse {
        let mut events = SseLines::default();
        while let Some(chunk) = response.chunk().await.map_err(CallFailure::Unreachable)? {
            for data in events.push(&chunk) {
                let Ok(message) = serde_json::from_str::<Value>(&data) else { continue };
                if message.get("method").and_then(Value::as_str) == Some("notifications/progress") {
                    if let Some(show) = on_progress.as_mut() {
                        let p = &message["params"];
                        show(p["progress"].as_f64().unwrap_or(0.0), p["total"].as_f64(), p["message"].as_str());
                    }
                } else if message.get("id").is_some() {
                    answer = Some(message);
                }
            }
        }
    } else {
        let bytes = response.bytes().await.map_err(CallFailure::Unreachable)?;
        answer = serde_json::from_slice::<Value>(&bytes).ok();
        if answer.is_none() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(answered(status.as_u16(), text.trim()));
        }
    }
    let Some(answer) = answer else { return Err(CallFailure::NoResult) };
    if let Some(error) = answer.get("error") {
        return Err(answered(status.as_u16(), error["message"].as_str().unwrap_or("unknown error")));
    }
    let result = &answer["result"];
    let text = result["content"]
        .as_array()
        .map(|items| items.iter().filter_map(|c| c["text"].as_str()).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    Ok(ToolAnswer {
        structured: result.get("structuredContent").cloned(),
        text,
        is_error: result["isError"].as_bool().unwrap_or(false),
    })
}

fn answered(status: u16, message: &str) -> CallFailure {
    // A body longer than a line is a page of some proxy, not a message.
    let message = message.lines().next().unwrap_or("").chars().take(300).collect::<String>();
    let message = if message.is_empty() { format!("HTTP status {status}") } else { message };
    CallFailure::Answered { status, message }
}

/// Splits a `text/event-stream` body into the data of its events.
#[derive(Debug, Default)]
struct SseLines {
    pending: Vec<u8>,
    data: String,
}

impl SseLines {
    /// Feeds `chunk`; returns the data of the events it completed.
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(std::mem::take(&mut self.data));
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_stream_data_is_split_into_events_across_chunks() {
        let mut sse = SseLines::default();
        assert!(sse.push(b"event: message\ndata: {\"a\"").is_empty());
        assert_eq!(sse.push(b":1}\n\ndata: x\r\n"), vec![r#"{"a":1}"#.to_string()]);
        assert_eq!(sse.push(b"\r\n"), vec!["x".to_string()]);
        assert!(sse.push(b"").is_empty());
        let mut sse = SseLines::default();
        assert_eq!(sse.push(b"data: x\r\n\r\ndata: y\ndata: z\n\n"), vec!["x".to_string(), "y\nz".to_string()]);
    }

    #[test]
    fn an_error_page_is_cut_to_its_first_line() {
        assert!(matches!(
            answered(502, "<html>\n<body>Bad gateway</body>"),
            CallFailure::Answered { status: 502, message } if message == "<html>"
        ));
        assert!(matches!(answered(503, ""), CallFailure::Answered { message, .. } if message == "HTTP status 503"));
    }
}
