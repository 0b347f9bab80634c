//! Bad input of every kind gets the right error, and the server keeps serving.

use serde_json::json;

use crate::support::{Server, ADMIN_TOKEN};

fn auth() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

#[test]
fn invalid_json_is_a_parse_error() {
    let server = Server::start();
    let a = auth();
    let r = server.request(
        "POST",
        "/mcp",
        &[("Content-Type", "application/json"), ("Authorization", &a)],
        b"{\"jsonrpc\": ",
    );
    assert_eq!((r.status, r.error_code()), (400, -32700));
    server.assert_alive();
}

#[test]
fn invalid_envelopes_are_invalid_requests() {
    let server = Server::start();
    for body in [
        json!({"id": 1, "method": "ping"}),
        json!({"jsonrpc": "2.0", "id": 1}),
        json!("text"),
        json!({"jsonrpc": "2.0", "id": [1], "method": "ping"}),
    ] {
        let r = server.post(&body, &[]);
        assert_eq!((r.status, r.error_code()), (400, -32600), "{body}");
    }
    server.assert_alive();
}

#[test]
fn unknown_methods_and_tools_are_named() {
    let server = Server::start();
    let s = server.initialize("2025-11-25");
    let r = server.rpc(&s, "2025-11-25", "no/such", json!({}));
    assert_eq!(r["error"]["code"], -32601);
    assert!(r["error"]["message"].as_str().unwrap().contains("no/such"));
    let r = server.rpc(&s, "2025-11-25", "tools/call", json!({"name": "gpio.explode", "arguments": {}}));
    assert_eq!(r["error"]["code"], -32602);
    assert!(r["error"]["message"].as_str().unwrap().contains("gpio.explode"));
    let r = server.rpc(&s, "2025-11-25", "tools/call", json!({"arguments": {}}));
    assert_eq!(r["error"]["code"], -32602);
    server.assert_alive();
}

#[test]
fn bad_arguments_are_tool_errors_naming_the_argument() {
    let server = Server::start();
    let cases = [
        ("process.list", json!({"limit": "ten"}), "limit"),
        ("process.list", json!({"limit": 0}), "limit"),
        ("process.list", json!({"sort_by": "colour"}), "sort_by"),
        ("process.list", json!({"bogus": 1}), "bogus"),
        ("process.get_info", json!({}), "pid"),
        ("process.get_info", json!({"pid": -3}), "pid"),
        ("system.get_health_snapshot", json!({"sample_ms": 999999}), "sample_ms"),
        ("logs.get_recent_app_logs", json!({"since": "last tuesday"}), "since"),
        ("logs.get_recent_app_logs", json!({"level": "loud"}), "level"),
        ("system.get_info", json!({"x": 1}), "x"),
        ("system.get_info", json!([1, 2]), "object"),
    ];
    for (tool, args, named) in cases {
        let result = server.call_tool(tool, args.clone());
        assert_eq!(result["isError"], true, "{tool} {args}: {result}");
        let text = result["content"][0]["text"].as_str().unwrap();
        assert!(text.contains(named), "{tool} {args}: {text}");
    }
    server.assert_alive();
}

#[test]
fn a_huge_body_is_refused_before_it_is_read() {
    let server = Server::start();
    let a = auth();
    let body = vec![b' '; 2 * 1024 * 1024];
    let r = server.request("POST", "/mcp", &[("Content-Type", "application/json"), ("Authorization", &a)], &body);
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), -32600);
    server.assert_alive();
}

/// POSTs `chunks` to /mcp with chunked transfer encoding, each chunk written and flushed
/// on its own so that they reach the server apart, and returns the status and body.
fn post_chunked(server: &Server, chunks: &[&[u8]]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: server/discover\r\nAuthorization: {}\r\n\r\n",
        server.addr,
        auth()
    );
    stream.write_all(head.as_bytes()).unwrap();
    for chunk in chunks {
        // The server may refuse (413) and close before the last chunks.
        let _ = write!(stream, "{:x}\r\n", chunk.len());
        let _ = stream.write_all(chunk);
        let _ = stream.write_all(b"\r\n");
        let _ = stream.flush();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let response = crate::support::Response::parse(&raw);
    (response.status, response.text())
}

#[test]
fn a_body_in_chunks_is_read_whole_and_held_to_the_limit() {
    let server = Server::start();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string();
    let (a, b) = body.as_bytes().split_at(body.len() / 3);
    let (b, c) = b.split_at(b.len() / 2);
    let (status, text) = post_chunked(&server, &[a, b, c]);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("supportedVersions"), "{text}");
    let piece = vec![b' '; 400 * 1024];
    let (status, text) = post_chunked(&server, &[&piece, &piece, &piece]);
    assert_eq!(status, 413, "{text}");
    server.assert_alive();
}

#[test]
fn foreign_origins_and_hosts_are_forbidden() {
    let server = Server::start();
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let r = server.post(&ping, &[("Origin", "https://evil.example")]);
    assert_eq!(r.status, 403);
    let a = auth();
    let r = server.request(
        "POST",
        "/mcp",
        &[("Host", "evil.example:8000"), ("Content-Type", "application/json"), ("Authorization", &a)],
        ping.to_string().as_bytes(),
    );
    assert_eq!(r.status, 403);
    // /healthz is exempt, by design: supervisors and load balancers reach it by any name,
    // and it tells only that the server is up and its version.
    let r = server.request("GET", "/healthz", &[("Host", "evil.example:8000")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_object().unwrap().len(), 2, "{}", r.text());
    // A local origin is fine.
    let s = server.initialize("2025-11-25");
    let r = server.post(&ping, &[("Origin", "http://localhost:3000"), ("Mcp-Session-Id", &s)]);
    assert_eq!(r.status, 200, "{}", r.text());
    server.assert_alive();
}

#[test]
fn missing_unknown_and_mismatched_session_headers_are_refused() {
    let server = Server::start();
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let r = server.post(&ping, &[]);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("Mcp-Session-Id"));
    let r = server.post(&ping, &[("Mcp-Session-Id", "00000000000000000000000000000000")]);
    assert_eq!(r.status, 404);
    let s = server.initialize("2025-06-18");
    let r = server.post(&ping, &[("Mcp-Session-Id", &s), ("MCP-Protocol-Version", "1999-01-01")]);
    assert_eq!((r.status, r.error_code()), (400, -32022));
    let r = server.post(&ping, &[("Mcp-Session-Id", &s), ("MCP-Protocol-Version", "2025-11-25")]);
    assert_eq!((r.status, r.error_code()), (400, -32020));
    server.assert_alive();
}

#[test]
fn batches_follow_the_negotiated_version() {
    let server = Server::start();
    let batch = json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}, {"jsonrpc": "2.0", "method": "notifications/initialized"}, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "system.get_info"}}]);
    let old = server.initialize("2025-03-26");
    let r = server.post(&batch, &[("Mcp-Session-Id", &old)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let replies = r.json();
    assert_eq!(replies.as_array().unwrap().len(), 2, "{replies}");
    assert_eq!(replies[1]["result"]["isError"], false);
    let new = server.initialize("2025-06-18");
    let r = server.post(&batch, &[("Mcp-Session-Id", &new)]);
    assert_eq!((r.status, r.error_code()), (400, -32600));
    let r = server.post(&json!([]), &[("Mcp-Session-Id", &old)]);
    assert_eq!(r.error_code(), -32600);
    server.assert_alive();
}

#[test]
fn missing_or_wrong_tokens_are_unauthorized() {
    let server = Server::start();
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let r = server.request("POST", "/mcp", &[("Content-Type", "application/json")], ping.to_string().as_bytes());
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    for bad in ["Bearer wrong-token-0123456789", "Basic YWRtaW46YWRtaW4=", "Bearer"] {
        let r = server.request(
            "POST",
            "/mcp",
            &[("Content-Type", "application/json"), ("Authorization", bad)],
            ping.to_string().as_bytes(),
        );
        assert_eq!(r.status, 401, "{bad}");
        assert!(!r.text().contains("wrong-token"), "the token is not echoed");
    }
    server.assert_alive();
}

#[test]
fn a_non_json_content_type_is_refused() {
    let server = Server::start();
    let a = auth();
    let r = server.request("POST", "/mcp", &[("Content-Type", "text/plain"), ("Authorization", &a)], b"{}");
    assert_eq!(r.status, 415);
    server.assert_alive();
}

#[test]
fn rate_limits_answer_429_with_a_retry_hint() {
    let server = Server::with_config(
        None,
        "security:\n  auth_mode: token\n  secrets_file: null\n  rate_limit:\n    requests_per_minute: 60\n    burst: 2\n  tokens:\n    - { identity: admin, role: admin, env: TEST_ADMIN_TOKEN }\n",
    );
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let statuses: Vec<u16> = (0..4).map(|_| server.post(&ping, &[]).status).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    let r = server.post(&ping, &[]);
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
}
