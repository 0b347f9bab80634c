//! The server's check of itself after starting into a release under update.
//!
//! A new release proves healthy when its server answers `/healthz` and a `tools/call` over
//! its own HTTP listener and the ops agent hears about it over the socket (which is also the
//! two new programs' handshake). The agent has no network (its unit says
//! `PrivateNetwork=yes`), so the server makes the requests itself, as a client would, with
//! a one-time token that exists only in its memory, and reports the outcome to the agent,
//! which commits the update or rolls it back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::base::VERSION;
use crate::ipc::Request;
use crate::tools::App;
use crate::update::state::{VersionState, STATE_FILE};

/// The longest a single request of the check may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read back.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Whether this start is the first of a release under update, waiting for its check.
pub fn due(app: &App) -> bool {
    match VersionState::load(&app.config.paths.state_dir.join(STATE_FILE)) {
        Ok(Some(state)) => state.in_progress().is_some_and(|u| u.to == VERSION),
        Ok(None) => false,
        Err(e) => {
            log::warn!("cannot read the version state: {e}");
            false
        }
    }
}

/// Checks the listener at `addr` and reports to the agent, retrying the report until the
/// agent takes it or the health timeout passes.
pub async fn run(app: Arc<App>, addr: SocketAddr) {
    let target = loopback_for(addr);
    let outcome = match app.auth.begin_probe() {
        Ok(token) => check(target, &token).await,
        Err(e) => Err(e),
    };
    app.auth.end_probe();
    let (healthy, detail) = match outcome {
        Ok(detail) => (true, detail),
        Err(detail) => (false, detail),
    };
    log::info!("self-check after the update to {VERSION}: healthy {healthy} ({detail})");
    // The report is repeated until the update is no longer waiting for it: an ops agent
    // that restarts during the health check (by hand, or after a crash) must hear it too.
    let deadline = Instant::now() + Duration::from_secs(app.config.updates.health_timeout_seconds);
    let mut delivered = false;
    loop {
        let report = Request::UpdateHealth { version: VERSION.into(), healthy, detail: detail.clone() };
        match app.agent.call(report).await {
            Ok(_) => delivered = true,
            Err(e) => log::debug!("the health report did not reach the ops agent: {e}"),
        }
        if Instant::now() >= deadline || (delivered && !due(&app)) {
            if !delivered {
                log::error!("cannot report the health check to the ops agent within the health timeout");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(if delivered { 1000 } else { 500 })).await;
    }
}

pub use crate::base::loopback_for;

/// `/healthz`, then `initialize` and `tools/call system.get_info` in a session.
async fn check(addr: SocketAddr, token: &str) -> Result<String, String> {
    let (status, _, body) = request(addr, "GET", "/healthz", &[], None).await?;
    if status != 200 {
        return Err(format!("/healthz answered {status}"));
    }
    let health: Value = serde_json::from_slice(&body).map_err(|e| format!("/healthz answered no JSON: {e}"))?;
    if health["version"] != VERSION {
        return Err(format!("/healthz reports version {}, not {VERSION}", health["version"]));
    }
    let auth = format!("Bearer {token}");
    let initialize = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": crate::auth::PROBE_IDENTITY, "version": VERSION}}
    });
    let headers = [("Authorization", auth.as_str())];
    let (status, answer_headers, body) = request(addr, "POST", "/mcp", &headers, Some(&initialize)).await?;
    if status != 200 {
        return Err(format!("initialize answered HTTP {status}: {}", String::from_utf8_lossy(&body)));
    }
    let session = answer_headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("mcp-session-id"))
        .map(|(_, v)| v.clone())
        .ok_or("initialize opened no session")?;
    let call = serde_json::json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "system.get_info", "arguments": {}}
    });
    let headers = [("Authorization", auth.as_str()), ("Mcp-Session-Id", session.as_str())];
    let (status, _, body) = request(addr, "POST", "/mcp", &headers, Some(&call)).await?;
    let _ = request(addr, "DELETE", "/mcp", &headers, None).await;
    if status != 200 {
        return Err(format!("tools/call answered HTTP {status}: {}", String::from_utf8_lossy(&body)));
    }
    let answer: Value = serde_json::from_slice(&body).map_err(|e| format!("tools/call answered no JSON: {e}"))?;
    match &answer["result"] {
        Value::Object(result) if result.get("isError") != Some(&Value::Bool(true)) => {
            Ok(format!("/healthz 200 (version {VERSION}); tools/call system.get_info answered"))
        }
        _ => Err(format!("tools/call system.get_info failed: {answer}")),
    }
}

type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 request on a new connection, closed after the answer.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<Answer, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        head.push_str("Accept: application/json, text/event-stream\r\n");
        if !body.is_empty() {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
        stream.write_all(body.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream
            .take(MAX_ANSWER_BYTES as u64)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("reading the answer to {method} {path}: {e}"))?;
        parse_answer(&raw).ok_or_else(|| format!("{method} {path}: the answer is not HTTP"))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("{method} {path}: no answer within {} s", REQUEST_TIMEOUT.as_secs())))
}

fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked =
        headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Some((status, headers, body))
}

/// The body of a chunked transfer: each chunk is its hexadecimal size, CRLF, the bytes, CRLF.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_wildcard_listener_is_checked_on_loopback() {
        assert_eq!(loopback_for("0.0.0.0:8000".parse().unwrap()), "127.0.0.1:8000".parse().unwrap());
        assert_eq!(loopback_for("[::]:8000".parse().unwrap()), "[::1]:8000".parse().unwrap());
        assert_eq!(loopback_for("192.0.2.7:8000".parse().unwrap()), "192.0.2.7:8000".parse().unwrap());
    }

    #[test]
    fn answers_are_read_with_and_without_chunking() {
        let plain = b"HTTP/1.1 200 OK\r\nmcp-session-id: abc\r\ncontent-length: 2\r\n\r\n{}";
        let (status, headers, body) = parse_answer(plain).unwrap();
        assert_eq!((status, body.as_slice()), (200, b"{}".as_slice()));
        assert!(headers.iter().any(|(k, v)| k == "mcp-session-id" && v == "abc"));
        let chunked = b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let (status, _, body) = parse_answer(chunked).unwrap();
        assert_eq!((status, body.as_slice()), (404, b"abcde".as_slice()));
        assert!(parse_answer(b"garbage").is_none());
    }
}
