//! Wire shapes pinned by golden JSON files under `tests/fixtures/golden/`. Set
//! `MCP_RASPI_UPDATE_GOLDEN=1` to rewrite them after an intended change, and review the diff.

use serde_json::{json, Value};

use crate::support::{repo, Server};

fn check(name: &str, mut got: Value) {
    // The only values that differ between machines running the same build.
    if let Some(arch) = got.pointer_mut("/structuredContent/os/architecture") {
        *arch = json!("<arch>");
    }
    // Uptime advances with the clock from the value the fixture gives.
    if let Some(uptime) = got.pointer_mut("/structuredContent/uptime_seconds") {
        *uptime = json!("<uptime>");
    }
    if let Some(content) = got.pointer_mut("/content/0/text") {
        *content = json!("<the structured content as pretty JSON>");
    }
    let path = repo().join("tests/fixtures/golden").join(format!("{name}.json"));
    let pretty = serde_json::to_string_pretty(&got).unwrap() + "\n";
    if std::env::var_os("MCP_RASPI_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &pretty).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with MCP_RASPI_UPDATE_GOLDEN=1 to create it", path.display()));
    assert_eq!(pretty, want, "{name} changed; if intended, rerun with MCP_RASPI_UPDATE_GOLDEN=1 and review the diff");
}

#[test]
fn initialize_result_matches_its_golden_file() {
    let server = Server::start();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "golden", "version": "1"}}});
    check("initialize", server.post(&body, &[]).json()["result"].clone());
}

#[test]
fn tools_list_matches_its_golden_file() {
    let server = Server::start();
    let s = server.initialize("2025-11-25");
    check("tools_list", server.rpc(&s, "2025-11-25", "tools/list", json!({}))["result"].clone());
}

#[test]
fn a_tools_call_on_a_pi4_matches_its_golden_file() {
    let server = Server::with_config(Some(&repo().join("tests/fixtures/pi4")), "");
    check("tools_call_system_get_info_pi4", server.call_tool("system.get_info", json!({})));
}
