//! Every privileged tool end to end: MCP client → server → agent socket → simulated
//! hardware, with the allowlists, confirmations and the agent going away.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::Server;

fn ok(server: &Server, tool: &str, arguments: Value) -> Value {
    let r = server.call_tool(tool, arguments.clone());
    assert_eq!(r["isError"], false, "{tool} {arguments}: {r}");
    r["structuredContent"].clone()
}

fn error_text(server: &Server, tool: &str, arguments: Value) -> String {
    let r = server.call_tool(tool, arguments.clone());
    assert_eq!(r["isError"], true, "{tool} {arguments} should fail: {r}");
    r["content"][0]["text"].as_str().unwrap().to_string()
}

#[test]
fn gpio_tools_drive_the_pins_on_the_allowlist() {
    let server = Server::with_agent();
    let pins = ok(&server, "gpio.list_pins", json!({}));
    assert_eq!(pins["pins"].as_array().unwrap().len(), 3);
    assert_eq!(pins["pins"][0]["label"], "led");
    assert_eq!(ok(&server, "gpio.read_pin", json!({"pin": 17}))["mode"], "input");
    assert_eq!(ok(&server, "gpio.set_mode", json!({"pin": 17, "mode": "output"}))["mode"], "output");
    assert_eq!(ok(&server, "gpio.write_pin", json!({"pin": 17, "level": "high"}))["level"], "high");
    assert_eq!(ok(&server, "gpio.read_pin", json!({"pin": 17}))["level"], "high");
    let pwm = ok(&server, "gpio.pwm_enable", json!({"pin": 18, "frequency_hz": 1000.0, "duty_cycle": 0.5}));
    assert_eq!(pwm["pwm"]["frequency_hz"], 1000.0);
    assert_eq!(ok(&server, "gpio.pwm_disable", json!({"pin": 18}))["pwm"], Value::Null);
    // Refused by the allowlist, by the pin's modes, and by the hardware.
    assert!(error_text(&server, "gpio.write_pin", json!({"pin": 5, "level": "high"})).contains("gpio.pins"));
    assert!(error_text(&server, "gpio.set_mode", json!({"pin": 27, "mode": "output"})).contains("27"));
    assert!(error_text(&server, "gpio.pwm_enable", json!({"pin": 17, "frequency_hz": 50.0, "duty_cycle": 0.5}))
        .contains("17"));
}

#[test]
fn the_deprecated_pwm_start_warns_and_is_flagged_in_the_audit_log() {
    let server = Server::with_agent();
    let r = server.call_tool("gpio.pwm_start", json!({"pin": 18, "frequency": 500.0, "duty_cycle": 25.0}));
    assert_eq!(r["isError"], false, "{r}");
    assert!(r["content"][0]["text"].as_str().unwrap().starts_with("Warning: gpio.pwm_start is deprecated"));
    assert_eq!(r["structuredContent"]["pwm"]["duty_cycle"], 0.25);
    let record = server.audit_records().into_iter().find(|r| r["tool"] == "gpio.pwm_start").unwrap();
    assert_eq!(record["deprecated"], true);
}

#[test]
fn bus_tools_reach_the_simulated_devices() {
    let server = Server::with_agent();
    let scan = ok(&server, "i2c.scan_bus", json!({"bus": 1}));
    let found: Vec<u64> = scan["devices"].as_array().unwrap().iter().map(|d| d["address"].as_u64().unwrap()).collect();
    assert_eq!(found, [0x48, 0x50]);
    // The TMP102-like sensor reads 21.5 °C: 0x15 0x80.
    assert_eq!(ok(&server, "i2c.read", json!({"bus": 1, "address": 0x48, "register": 0, "length": 2}))["hex"], "1580");
    ok(&server, "i2c.write", json!({"bus": 1, "address": 0x50, "register": 16, "data": [7, 8, 9]}));
    let back = ok(&server, "i2c.read", json!({"bus": 1, "address": 0x50, "register": 16, "length": 3}));
    assert_eq!(back["bytes"], json!([7, 8, 9]));
    assert!(error_text(&server, "i2c.read", json!({"bus": 1, "address": 0x20, "length": 1})).contains("i2c.buses"));
    assert!(error_text(&server, "i2c.scan_bus", json!({"bus": 3})).contains("3"));

    assert_eq!(
        ok(&server, "spi.transfer", json!({"bus": 0, "chip_select": 0, "data": [1, 2, 3]}))["bytes"],
        json!([1, 2, 3])
    );
    ok(&server, "uart.write", json!({"port": "serial0", "baud": 9600, "data": "ping"}));
    assert_eq!(
        ok(&server, "uart.read", json!({"port": "serial0", "baud": 9600, "max_bytes": 16, "timeout_ms": 200}))["text"],
        "ping"
    );
    assert!(error_text(
        &server,
        "uart.read",
        json!({"port": "ttyUSB0", "baud": 9600, "max_bytes": 1, "timeout_ms": 0})
    )
    .contains("uart.ports"));
}

#[test]
fn camera_capture_returns_a_file_and_an_inline_image() {
    let server = Server::with_agent();
    let r = server.call_tool("camera.capture", json!({"width": 640, "height": 480, "quality": 80}));
    assert_eq!(r["isError"], false, "{r}");
    let path = r["structuredContent"]["path"].as_str().unwrap();
    assert!(path.starts_with(server.dir.path().join("media").to_str().unwrap()), "{path}");
    let jpeg = std::fs::read(path).unwrap();
    assert_eq!(&jpeg[..2], [0xFF, 0xD8]);
    let image = r["content"].as_array().unwrap().iter().find(|c| c["type"] == "image").expect("an image block");
    assert_eq!(image["mimeType"], "image/jpeg");
    assert!(!image["data"].as_str().unwrap().is_empty());
    for _ in 0..3 {
        ok(&server, "camera.capture", json!({"width": 64, "height": 48}));
    }
    let kept = std::fs::read_dir(server.dir.path().join("media")).unwrap().count();
    assert_eq!(kept, 3, "camera.max_files is 3 in the test config");
    assert!(error_text(&server, "camera.capture", json!({"width": 100000, "height": 10})).contains("camera.max_width"));
}

#[test]
fn camera_record_video_writes_a_motion_jpeg_into_the_media_directory() {
    let server = Server::with_agent();
    let media = server.dir.path().join("media");
    let video =
        ok(&server, "camera.record_video", json!({"duration_seconds": 1, "width": 320, "height": 240, "framerate": 5}));
    let path = video["path"].as_str().unwrap();
    assert!(path.starts_with(media.to_str().unwrap()) && path.ends_with(".mjpeg"), "{path}");
    assert_eq!(video["format"], "mjpeg");
    assert_eq!((video["width"].as_u64(), video["height"].as_u64()), (Some(320), Some(240)));
    assert_eq!((video["duration_ms"].as_u64(), video["frames"].as_u64()), (Some(1000), Some(5)));
    let stream = std::fs::read(path).unwrap();
    assert!(!stream.is_empty());
    assert_eq!(video["size_bytes"].as_u64(), Some(stream.len() as u64));
    assert!(stream.starts_with(&[0xFF, 0xD8]) && stream.ends_with(&[0xFF, 0xD9]));
    let starts = stream.windows(3).filter(|w| *w == [0xFF, 0xD8, 0xFF]).count();
    assert_eq!(starts, 5, "one JPEG per frame");

    // Videos and stills share the retention limits.
    for _ in 0..3 {
        ok(&server, "camera.capture", json!({"width": 64, "height": 48}));
    }
    let kept: Vec<String> =
        std::fs::read_dir(&media).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(kept.len(), 3, "camera.max_files is 3 in the test config: {kept:?}");
    assert!(kept.iter().all(|name| name.starts_with("capture-")), "the video was the oldest: {kept:?}");

    let text = error_text(&server, "camera.record_video", json!({"duration_seconds": 61}));
    assert!(text.contains("camera.max_video_seconds"), "{text}");
    // The test config waits 3000 ms for the agent: 1 s of recording is all that fits.
    let text = error_text(&server, "camera.record_video", json!({"duration_seconds": 2}));
    assert!(text.contains("ops_agent.request_timeout_ms"), "{text}");
    let text = error_text(&server, "camera.record_video", json!({"duration_seconds": 1, "framerate": 61}));
    assert!(text.contains("framerate"), "{text}");
    let audit = server.audit_records();
    assert!(audit.iter().any(|r| r["tool"] == "camera.record_video" && r["outcome"] == "ok"), "{audit:?}");
}

#[test]
fn service_tools_act_only_on_allowlisted_units() {
    let server = Server::with_agent();
    let list = ok(&server, "service.list", json!({}));
    assert_eq!(list["units"].as_array().unwrap().len(), 2);
    assert_eq!(ok(&server, "service.get_status", json!({"unit": "ssh.service"}))["active_state"], "active");
    assert_eq!(ok(&server, "service.stop", json!({"unit": "nginx"}))["state"]["active_state"], "inactive");
    assert_eq!(ok(&server, "service.start", json!({"unit": "nginx.service"}))["state"]["active_state"], "active");
    ok(&server, "service.restart", json!({"unit": "nginx.service"}));
    let r = server.call_tool("service.force_restart", json!({"unit": "nginx.service"}));
    assert!(r["content"][0]["text"].as_str().unwrap().contains("deprecated"));
    assert_eq!(
        ok(&server, "service.disable", json!({"unit": "nginx.service"}))["state"]["unit_file_state"],
        "disabled"
    );
    assert_eq!(ok(&server, "service.enable", json!({"unit": "nginx.service"}))["state"]["unit_file_state"], "enabled");
    let journal = ok(&server, "logs.query_journal", json!({"unit": "nginx.service", "lines": 50}));
    assert!(journal["entries"].as_array().unwrap().len() >= 4, "{journal}");
    assert!(error_text(&server, "service.restart", json!({"unit": "cron.service"})).contains("services.allowed_units"));
    assert!(error_text(&server, "logs.query_journal", json!({"unit": "nginx.service", "since": "; rm -rf /"}))
        .contains("since"));
}

#[test]
fn power_needs_admin_confirmation_and_a_turned_on_action() {
    let server = Server::with_agent();
    assert!(error_text(&server, "system.reboot", json!({"confirm": false})).contains("confirm: true"));
    assert!(error_text(&server, "system.reboot", json!({})).contains("confirm"));
    let receipt = ok(&server, "system.reboot", json!({"confirm": true, "delay_seconds": 60}));
    assert_eq!((receipt["action"].as_str(), receipt["method"].as_str()), (Some("reboot"), Some("simulated")));
    assert!(error_text(&server, "system.reboot", json!({"confirm": true, "delay_seconds": 601})).contains("600"));
    assert!(error_text(&server, "system.shutdown", json!({"confirm": true})).contains("shutdown"));
}

#[test]
fn os_updates_are_listed_and_applied_with_progress() {
    let server = Server::with_agent();
    let updates = ok(&server, "os.check_updates", json!({}));
    assert_eq!(updates["packages"].as_array().unwrap().len(), 3);
    let s = server.initialize("2025-11-25");
    let body = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "os.apply_updates", "arguments": {"confirm": true, "wait_seconds": 10}, "_meta": {"progressToken": 1}}});
    let r = server.post(&body, &[("Mcp-Session-Id", &s), ("MCP-Protocol-Version", "2025-11-25")]);
    let events = r.events();
    assert!(events.iter().any(|e| e["method"] == "notifications/progress"), "{events:?}");
    let result = &events.last().unwrap()["result"];
    assert_eq!(result["structuredContent"]["status"]["state"], "succeeded", "{result}");
    let outcome = &result["structuredContent"]["status"]["outcome"];
    assert_eq!(outcome["result"], "succeeded", "{result}");
    assert_eq!(
        outcome["upgraded"][0],
        json!({"name": "libssl3", "from": "3.0.14-1~deb12u2", "to": "3.0.15-1~deb12u1"}),
        "{result}"
    );
    assert_eq!(ok(&server, "os.check_updates", json!({}))["packages"], json!([]));
}

#[test]
fn a_viewer_may_read_pins_but_not_drive_them() {
    let server = Server::with_agent();
    let s = server.initialize_as("2025-11-25", crate::support::VIEWER_TOKEN);
    let auth = format!("Bearer {}", crate::support::VIEWER_TOKEN);
    let call = |name: &str, args: Value| {
        let body =
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": args}});
        server
            .request(
                "POST",
                "/mcp",
                &[("Content-Type", "application/json"), ("Authorization", &auth), ("Mcp-Session-Id", &s)],
                body.to_string().as_bytes(),
            )
            .json()["result"]
            .clone()
    };
    assert_eq!(call("gpio.read_pin", json!({"pin": 17}))["isError"], false);
    let denied = call("gpio.write_pin", json!({"pin": 17, "level": "high"}));
    assert_eq!(denied["isError"], true);
    assert!(denied["content"][0]["text"].as_str().unwrap().contains("operator role"));
}

#[test]
fn when_the_agent_dies_privileged_tools_fail_fast_and_recover_after_restart() {
    let mut server = Server::with_agent();
    ok(&server, "gpio.read_pin", json!({"pin": 17}));
    server.kill_agent();
    let started = Instant::now();
    let text = error_text(&server, "gpio.read_pin", json!({"pin": 17}));
    assert!(started.elapsed() < Duration::from_secs(2), "failed fast: {:?}", started.elapsed());
    assert!(text.contains("unavailable"), "{text}");
    // Read-only tools of the server itself keep working.
    ok(&server, "system.get_info", json!({}));
    let status = ok(&server, "manage.get_server_status", json!({}));
    assert_eq!(status["agent"]["connected"], false);
    let last_error = status["agent"]["last_error"].as_str().unwrap();
    assert!(last_error.contains("raspi-ops-agent is not running"), "{status}");
    assert!(last_error.contains("sudo systemctl start raspi-ops-agent"), "{status}");
    server.start_agent();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = server.call_tool("gpio.read_pin", json!({"pin": 17}));
        if r["isError"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "the server did not reconnect: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ok(&server, "manage.get_server_status", json!({}))["agent"]["connected"], true);
}

#[test]
fn experimental_tools_are_hidden_and_refused_unless_enabled() {
    let server = Server::with_config(None, "experimental_features:\n  enabled: false\n");
    let s = server.initialize("2025-11-25");
    let list = server.rpc(&s, "2025-11-25", "tools/list", json!({}));
    let names: Vec<&str> =
        list["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(!names.contains(&"spi.transfer") && !names.contains(&"gpio.pwm_enable"), "{names:?}");
    assert!(!names.contains(&"camera.record_video"), "{names:?}");
    assert!(names.contains(&"gpio.read_pin"));
    let r = server.call_tool("spi.transfer", json!({"bus": 0, "chip_select": 0, "data": [1]}));
    assert!(r["content"][0]["text"].as_str().unwrap().contains("experimental"), "{r}");
    let r = server.call_tool("camera.record_video", json!({"duration_seconds": 1}));
    assert!(r["content"][0]["text"].as_str().unwrap().contains("experimental"), "{r}");
}

#[test]
fn capabilities_report_the_agents_identity_and_empty_capability_sets() {
    let server = Server::with_agent();
    let caps = ok(&server, "system.get_capabilities", json!({}));
    assert_eq!(caps["agent"]["connected"], true, "{caps}");
    assert_eq!(caps["agent"]["capabilities"]["effective"], json!([]));
    assert_eq!(caps["agent"]["capabilities"]["uid"], crate::support::service_uid());
    assert_eq!(caps["agent"]["agent_version"], env!("CARGO_PKG_VERSION"));
}
