//! The read-only tools against fixture trees of a Raspberry Pi 4 and 5, and the real machine.

use serde_json::json;

use crate::support::{repo, Server};

fn fixture_server(board: &str) -> Server {
    Server::with_config(Some(&repo().join("tests/fixtures").join(board)), "")
}

#[test]
fn a_pi4_is_identified_with_its_soc_memory_and_serial() {
    let server = fixture_server("pi4");
    let info = &server.call_tool("system.get_info", json!({}))["structuredContent"];
    assert_eq!(info["board"]["model"], "Raspberry Pi 4 Model B Rev 1.4");
    assert_eq!(info["board"]["soc"], "BCM2711");
    assert_eq!(info["board"]["memory_mb"], 4096);
    assert_eq!(info["board"]["is_raspberry_pi"], true);
    assert!(info["board"]["serial"].as_str().unwrap().len() >= 8);
    assert_eq!(info["os"]["codename"], "bookworm");
    assert_eq!(info["cpu"]["cores"], 4);
}

#[test]
fn a_pi5_is_identified_with_its_soc_and_memory() {
    let server = fixture_server("pi5");
    let info = &server.call_tool("system.get_info", json!({}))["structuredContent"];
    assert_eq!(info["board"]["model"], "Raspberry Pi 5 Model B Rev 1.0");
    assert_eq!(info["board"]["soc"], "BCM2712");
    assert_eq!(info["board"]["memory_mb"], 8192);
}

#[test]
fn pi4_under_voltage_makes_the_health_verdict_critical_with_a_reason() {
    let server = fixture_server("pi4");
    let health = &server.call_tool("system.get_health_snapshot", json!({"sample_ms": 0}))["structuredContent"];
    assert_eq!(health["throttling"]["under_voltage_now"], true);
    assert_eq!(health["verdict"], "critical");
    let reasons = health["reasons"].as_array().unwrap();
    assert!(reasons.iter().any(|r| r.as_str().unwrap().contains("under-voltage")), "{reasons:?}");
    assert!(health["temperatures"][0]["celsius"].as_f64().unwrap() > 20.0);
    let services = health["services"].as_array().unwrap();
    assert_eq!(services[0]["unit"], "mcp-raspi-server.service");
    assert_eq!(services[0]["active_state"], "active");
}

#[test]
fn pi5_network_info_has_addresses_and_wifi_signal() {
    let server = fixture_server("pi4");
    let net = &server.call_tool("system.get_network_info", json!({}))["structuredContent"];
    let interfaces = net["interfaces"].as_array().unwrap();
    let wlan = interfaces.iter().find(|i| i["name"] == "wlan0").unwrap();
    assert!(wlan["wireless"]["signal_dbm"].as_f64().unwrap() < 0.0);
    assert!(
        !wlan["ipv4"].as_array().unwrap().is_empty()
            || interfaces.iter().any(|i| !i["ipv4"].as_array().unwrap().is_empty())
    );
    let lo = interfaces.iter().find(|i| i["name"] == "lo").unwrap();
    assert_eq!(lo["ipv4"][0], "127.0.0.1/8");
}

#[test]
fn metrics_and_processes_read_from_the_fixture() {
    let server = fixture_server("pi5");
    let snap = &server.call_tool("metrics.get_snapshot", json!({"sample_ms": 0}))["structuredContent"];
    let names: Vec<&str> = snap["metrics"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    for want in ["cpu.percent", "memory.used_percent", "load.1m", "uptime"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("temperature.")));
    let procs = &server.call_tool("process.list", json!({"sort_by": "memory", "sample_ms": 0}))["structuredContent"];
    assert!(procs["total_processes"].as_u64().unwrap() >= 2);
    let first = procs["processes"][0]["pid"].as_u64().unwrap();
    let detail = server.call_tool("process.get_info", json!({"pid": first}));
    assert_eq!(detail["isError"], false, "{detail}");
    let missing = server.call_tool("process.get_info", json!({"pid": 99999}));
    assert_eq!(missing["isError"], true);
    assert!(missing["content"][0]["text"].as_str().unwrap().contains("process.list"));
}

#[test]
fn the_real_machine_is_read_too() {
    let server = Server::start();
    for tool in ["system.get_info", "system.get_network_info", "system.get_capabilities", "manage.get_server_status"] {
        let r = server.call_tool(tool, json!({}));
        assert_eq!(r["isError"], false, "{tool}: {r}");
    }
    let h = server.call_tool("system.get_health_snapshot", json!({"sample_ms": 100}));
    assert_eq!(h["isError"], false, "{h}");
    assert!(h["structuredContent"]["memory"]["total_bytes"].as_u64().unwrap() > 0);
    let status = &server.call_tool("manage.get_server_status", json!({}))["structuredContent"];
    assert_eq!(status["config"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(status["agent"]["connected"], false);
}
