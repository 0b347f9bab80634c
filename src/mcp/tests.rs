use super::*;

#[test]
fn initialize_echoes_a_supported_handshake_version_and_otherwise_offers_the_newest() {
    assert_eq!(Version::negotiate(Some("2025-03-26")), Version::V2025_03_26);
    assert_eq!(Version::negotiate(Some("2025-06-18")), Version::V2025_06_18);
    assert_eq!(Version::negotiate(Some("2025-11-25")), Version::V2025_11_25);
    assert_eq!(Version::negotiate(Some("2024-11-05")), Version::V2025_11_25);
    assert_eq!(Version::negotiate(Some("2026-07-28")), Version::V2025_11_25);
    assert_eq!(Version::negotiate(None), Version::V2025_11_25);
}

#[test]
fn every_supported_version_round_trips_through_its_name_and_rmcp_constant() {
    for name in SUPPORTED_VERSIONS {
        let v = Version::parse(name).unwrap_or_else(|| unreachable!("{name}"));
        assert_eq!(v.as_str(), name);
        assert_eq!(v.protocol().to_string(), name);
    }
}

#[test]
fn the_fast_envelope_reader_takes_what_the_tree_reader_takes_and_leaves_the_rest_to_it() {
    let cases = [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{}}}"#,
        r#"{"jsonrpc":"2.0","id":"a\"b","method":"p\u0069ng"}"#,
        r#"{"method":"notifications/initialized","jsonrpc":"2.0"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","extra":{"x":[1]}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":"p",
            "io.modelcontextprotocol/protocolVersion":"2026-07-28","other":[{"a":1}],
            "io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/logLevel":"debug"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3,"_meta":{}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":5}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"n\u0061me":"x","_meta":{"progressToken":1}}}"#,
        r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":null}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":3}"#,
        r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
        r#" ["2.0", 1, "ping"]"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping""#,
    ];
    let fast: Vec<bool> = cases.iter().map(|c| Incoming::from_slice(c.as_bytes()).is_some()).collect();
    assert_eq!(fast, [[true; 7].as_slice(), &[false; 12]].concat());
    for case in &cases[..7] {
        let fast = Incoming::from_slice(case.as_bytes()).unwrap_or_else(|| unreachable!());
        let tree = Incoming::parse(serde_json::from_str(case).unwrap_or_default()).unwrap_or_else(|_| unreachable!());
        assert_eq!(format!("{fast:?}"), format!("{tree:?}"), "{case}");
    }
}

#[test]
fn a_body_that_is_not_utf8_is_left_to_the_tree_reader_even_in_a_member_nobody_reads() {
    let body = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"extra\":{\"\xff\":1}}";
    assert!(Incoming::from_slice(body).is_none());
    assert!(serde_json::from_slice::<Value>(body).is_err());
}

#[test]
fn meta_is_read_out_of_the_params_by_both_readers() {
    let Some(Incoming::Request { params, meta, .. }) = Incoming::from_slice(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":1},
            "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","progressToken":7,
            "io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/logLevel":"info"}}}"#,
    ) else {
        unreachable!()
    };
    assert_eq!(params, Some(json!({"name": "x", "arguments": {"a": 1}})));
    assert_eq!(stateless_version(&meta), Ok(Version::V2026_07_28));
    assert_eq!(progress_token(&meta), Some(json!(7)));
    assert_eq!(requested_log_level(&meta), Some(LogLevel::Info));
    // `_meta` that is not an object says nothing; the rest of the params stay.
    let tree = json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"n": 1, "_meta": 5}});
    let Ok(Incoming::Request { params, meta, .. }) = Incoming::parse(tree) else { unreachable!() };
    assert_eq!((params, meta), (Some(json!({"n": 1})), Meta::default()));
}

#[test]
fn the_envelope_is_checked_before_anything_else() {
    assert!(matches!(
        Incoming::parse(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})),
        Ok(Incoming::Request { .. })
    ));
    assert!(matches!(Incoming::parse(json!({"jsonrpc": "2.0", "method": "x"})), Ok(Incoming::Notification { .. })));
    for bad in [
        json!([]),
        json!({"id": 1, "method": "ping"}),
        json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}),
        json!({"jsonrpc": "2.0", "id": 1, "method": 3}),
        json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": 3}),
    ] {
        let Err((_, e)) = Incoming::parse(bad.clone()) else { unreachable!("{bad} parsed") };
        assert_eq!(e.code, -32600, "{bad}");
    }
}

#[test]
fn stateless_requests_need_their_version_and_capabilities_in_meta() {
    let meta_of = |params: Value| Meta::take_from(&mut Some(params));
    let ok = meta_of(json!({"_meta": {meta::PROTOCOL_VERSION: "2026-07-28", meta::CLIENT_CAPABILITIES: {}}}));
    assert_eq!(stateless_version(&ok), Ok(Version::V2026_07_28));
    let missing_caps = meta_of(json!({"_meta": {meta::PROTOCOL_VERSION: "2026-07-28"}}));
    assert_eq!(stateless_version(&missing_caps).map_err(|e| e.code), Err(-32602));
    let future = meta_of(json!({"_meta": {meta::PROTOCOL_VERSION: "2099-01-01", meta::CLIENT_CAPABILITIES: {}}}));
    assert_eq!(stateless_version(&future).map_err(|e| e.code), Err(-32022));
    let not_text = meta_of(json!({"_meta": {meta::PROTOCOL_VERSION: 20260728, meta::CLIENT_CAPABILITIES: {}}}));
    assert!(not_text.protocol_version.is_some(), "a version of the wrong type still marks the request stateless");
    assert_eq!(stateless_version(&not_text).map_err(|e| e.code), Err(-32602));
}

fn tool_result(prefix: &str, structured: Option<Value>, is_error: bool) -> ToolResult {
    ToolResult {
        text_prefix: prefix.into(),
        structured_content: structured.as_ref().map(Json::of),
        extra_content: Vec::new(),
        is_error,
    }
}

fn parsed(j: &Json) -> Value {
    serde_json::from_str(j.as_str()).unwrap_or_else(|e| unreachable!("{e}: {j}"))
}

#[test]
fn a_tool_result_carries_its_output_as_structured_content_and_as_text() {
    let output = json!({"name": "a \"quoted\" name", "n": 1.5, "list": [1, 2]});
    let r = parsed(&call_tool_reply(Version::V2025_11_25, &tool_result("", Some(output.clone()), false)));
    assert_eq!(r["structuredContent"], output);
    assert_eq!(r["content"][0]["type"], "text");
    let text = r["content"][0]["text"].as_str().unwrap_or_default();
    assert_eq!(serde_json::from_str::<Value>(text).ok(), Some(output));
    assert_eq!(r["isError"], false);
    assert!(r.get("resultType").is_none() && r.get("_meta").is_none());
}

#[test]
fn warnings_precede_the_text_and_failures_are_text_only() {
    let r = parsed(&call_tool_reply(Version::V2025_06_18, &tool_result("Warning: old.\n", Some(json!({})), false)));
    assert_eq!(r["content"][0]["text"], "Warning: old.\n{}");
    let r = parsed(&call_tool_reply(Version::V2025_06_18, &tool_result("Error (busy): try later", None, true)));
    assert_eq!(r, json!({"content": [{"type": "text", "text": "Error (busy): try later"}], "isError": true}));
}

#[test]
fn stateless_tool_results_say_who_answered() {
    let r = parsed(&call_tool_reply(Version::V2026_07_28, &tool_result("", Some(json!({"a": 1})), false)));
    assert_eq!(r["resultType"], "complete");
    assert_eq!(r["_meta"][meta::SERVER_INFO]["name"], "mcp-raspi");
    assert!(r.get("ttlMs").is_none(), "tool results are not cacheable");
}

#[test]
fn responses_splice_the_result_and_write_errors_with_their_data() {
    let ok = parsed(&response(&json!("r-1"), Ok(Json::of(&json!({"x": [1]})))));
    assert_eq!(ok, json!({"jsonrpc": "2.0", "id": "r-1", "result": {"x": [1]}}));
    let e = RpcError::invalid_params("bad").data(json!({"why": "test"}));
    let err = parsed(&response(&json!(7), Err(e)));
    assert_eq!(
        err,
        json!({"jsonrpc": "2.0", "id": 7, "error": {"code": -32602, "message": "bad", "data": {"why": "test"}}})
    );
    assert_eq!(parsed(&batch_response(&[Json::of(&1), Json::of(&2)])), json!([1, 2]));
}

#[test]
fn stateless_results_carry_result_type_and_cache_hints_and_older_ones_do_not() {
    let r = finish(Version::V2026_07_28, "tools/list", json!({"tools": [], "resultType": "complete"}));
    assert_eq!(r["resultType"], "complete");
    assert_eq!(r["cacheScope"], "private");
    assert!(r["_meta"][meta::SERVER_INFO]["name"].is_string());
    let r = finish(Version::V2025_06_18, "tools/call", json!({"content": [], "resultType": "complete"}));
    assert!(r.get("resultType").is_none());
}
