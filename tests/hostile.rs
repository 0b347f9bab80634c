//! Hostile clients: connections held open, headers trickled, bodies over the limit, wrong
//! tokens in a loop, huge arguments. The server keeps answering everyone else, and its
//! audit trail keeps what matters.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{Server, VIEWER_TOKEN};

/// A server with a small connection limit and short timeouts, so that the tests need few
/// connections and little time.
fn limited_server(max_connections: usize) -> Server {
    Server::with_config(
        None,
        &format!(
            "server:\n  listen: \"127.0.0.1:0\"\n  max_connections: {max_connections}\n  header_read_timeout_seconds: 2\n  keep_alive_timeout_seconds: 2\n"
        ),
    )
}

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(&server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Whether the server has closed `stream` (a read returns end of file or an error).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

#[test]
fn idle_and_slow_connections_cannot_lock_out_other_clients() {
    let server = limited_server(16);
    // Four times the limit held idle, and slow senders trickling a request's headers.
    let idle: Vec<TcpStream> = (0..64).map(|_| connect(&server)).collect();
    let mut slow: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut s = connect(&server);
            let _ = s.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n");
            s
        })
        .collect();
    let started = Instant::now();
    for round in 0..10 {
        for s in &mut slow {
            let _ = s.write_all(b"X-Slow: 1\r\n");
        }
        let health = server.request("GET", "/healthz", &[], b"");
        assert_eq!(health.status, 200, "round {round}: {}", health.text());
        let info = server.call_tool("system.get_info", json!({}));
        assert_eq!(info["isError"], false, "round {round}: {info}");
    }
    assert!(started.elapsed() < Duration::from_secs(30), "answered within the rounds: {:?}", started.elapsed());
    // The slow senders are closed once their header time is up, the idle ones too.
    std::thread::sleep(Duration::from_millis(2600));
    for s in slow.iter_mut().take(4) {
        assert!(closed_by_server(s), "a slow sender was not closed");
    }
    drop(idle);
    let log = std::fs::read_to_string(server.log_dir().join("app.log")).unwrap();
    let notes = log.lines().filter(|l| l.contains("server.max_connections")).count();
    assert!((1..=3).contains(&notes), "the limit is logged at a bounded rate ({notes} lines):\n{log}");
    server.assert_alive();
}

#[test]
fn an_answer_413_closes_its_connection() {
    let server = Server::start();
    let mut stream = connect(&server);
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        64 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 413"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    server.assert_alive();
}

#[test]
fn failed_authentication_is_throttled_per_address_and_audited_without_slowing_good_tokens() {
    let server = Server::start();
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let mut statuses = Vec::new();
    for i in 0..30 {
        let auth = format!("Bearer wrong-token-{i}");
        let r = server.request(
            "POST",
            "/mcp",
            &[("Content-Type", "application/json"), ("Authorization", &auth)],
            ping.to_string().as_bytes(),
        );
        if r.status == 429 {
            assert!(r.header("retry-after").is_some_and(|s| s.parse::<u64>().unwrap() >= 1), "{}", r.text());
        }
        statuses.push(r.status);
    }
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    // A correct token from the same address is not held back.
    let session = server.initialize("2025-11-25");
    assert_eq!(server.rpc(&session, "2025-11-25", "ping", json!({}))["result"], json!({}));
    let records = server.audit_records();
    let failures: Vec<&Value> = records.iter().filter(|r| r["tool"] == "(authentication)").collect();
    assert_eq!(failures.len(), 1, "one record for the burst: {records:?}");
    assert_eq!(failures[0]["peer"], "127.0.0.1");
    assert_eq!(failures[0]["outcome"], "denied");
    assert!(!records.iter().any(|r| r.to_string().contains("wrong-token")), "no token is recorded");
}

#[test]
fn huge_argument_keys_cannot_flood_the_audit_trail() {
    let server = Server::with_agent();
    let admin = server.call_tool("gpio.set_mode", json!({"pin": 17, "mode": "output"}));
    assert_eq!(admin["isError"], false, "{admin}");
    let session = server.initialize_as("2025-11-25", VIEWER_TOKEN);
    let auth = format!("Bearer {VIEWER_TOKEN}");
    let key = "k".repeat(200_000);
    for id in 0..40 {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "system.get_info", "arguments": { key.clone(): 1 }}});
        let r = server.request(
            "POST",
            "/mcp",
            &[("Content-Type", "application/json"), ("Authorization", &auth), ("Mcp-Session-Id", &session)],
            body.to_string().as_bytes(),
        );
        assert_eq!(r.json()["result"]["isError"], true, "{}", r.text());
    }
    let audit = std::fs::read_to_string(server.log_dir().join("audit.log")).unwrap();
    assert!(audit.lines().all(|l| l.len() < 4096), "every record is bounded");
    assert!(audit.len() < 100_000, "{} bytes for 41 records", audit.len());
    let first: Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
    assert_eq!((first["tool"].as_str(), first["identity"].as_str()), (Some("gpio.set_mode"), Some("admin")));
    assert_eq!(audit.lines().count(), 41);
}

#[test]
fn sessions_and_initializations_do_not_fill_the_application_log() {
    let server = Server::with_log_level("info");
    for _ in 0..50 {
        server.initialize("2025-11-25");
    }
    let log = std::fs::read_to_string(server.log_dir().join("app.log")).unwrap_or_default();
    assert_eq!(log.lines().filter(|l| l.contains("session")).count(), 0, "{log}");
}

#[test]
fn methods_the_server_does_not_offer_are_named_as_such() {
    let server = Server::start();
    let session = server.initialize("2025-11-25");
    let r = server.rpc(&session, "2025-11-25", "completion/complete", json!({}));
    assert_eq!(r["error"]["code"], -32601);
    assert!(r["error"]["message"].as_str().unwrap().contains("does not support completion/complete"), "{r}");
    let r = server.rpc(&session, "2025-11-25", &"x".repeat(10_000), json!({}));
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains("neither a method") && message.len() < 400, "{message}");
}
