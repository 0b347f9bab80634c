//! The configuration's life: `mcp-raspi config validate` and `migrate plan|apply` (also as
//! `mcp-raspi-config`), the server agreeing with them, the gpio.pwm limits enforced by the
//! tools, and the experimental features reported and warned about.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::{repo, server_command, temp_dir, Server};

/// `mcp-raspi` under the name the package also installs it as, in `dir`.
fn mcp_raspi_config(dir: &Path) -> PathBuf {
    let link = dir.join("mcp-raspi-config");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mcp-raspi"), &link).unwrap();
    }
    link
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program).args(args).env("TEST_ADMIN_TOKEN", "0123456789abcdef0").output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo().join("tests/fixtures/config").join(name)).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A configuration the CLI can check without secrets: no authentication, on loopback.
const NO_AUTH: &str = "config_version: \"1.2\"\nsecurity:\n  auth_mode: none\n  secrets_file: null\n";

#[test]
fn validate_prints_the_file_and_its_hash_under_both_names_and_warns_of_an_unknown_feature() {
    let dir = temp_dir();
    let path = dir.path().join("config.yml");
    let yaml = format!(
        "{NO_AUTH}experimental_features:\n  enabled: true\n  features:\n    - {{ name: gpio.pwn, enabled: true, acknowledged_risks: true }}\n"
    );
    std::fs::write(&path, &yaml).unwrap();
    let file = path.to_str().unwrap();
    let want = format!("configuration OK: {file} (sha256 {})\n", sha256_hex(yaml.as_bytes()));
    for out in [
        run(Path::new(env!("CARGO_BIN_EXE_mcp-raspi")), &["config", "validate", file]),
        run(&mcp_raspi_config(dir.path()), &["validate", file]),
    ] {
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), want);
        let err = text(&out.stderr);
        assert!(err.contains("warning: experimental_features.features[0].name: \"gpio.pwn\""), "{err}");
        assert!(err.contains("gpio.pwm, camera.video_recording, updates.delta"), "{err}");
    }
    // The server's check says the same.
    let out = server_command().args(["--check-config", "--config", file]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), want);
    assert!(text(&out.stderr).contains("mcp-raspi-server: warning: experimental_features.features[0].name"));
}

#[test]
fn validate_names_the_bad_key_its_line_and_a_missing_secret() {
    let dir = temp_dir();
    let path = dir.path().join("config.yml");
    std::fs::write(&path, format!("{NO_AUTH}gpio:\n  pwm:\n    max_duty_cycle: 80\n    max_duty: 90\n")).unwrap();
    let config = mcp_raspi_config(dir.path());
    let out = run(&config, &["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("unknown field `max_duty`") && err.contains("line 8"), "{err}");
    std::fs::write(&path, "config_version: \"1.2\"\ngpio:\n  pwm:\n    min_duty_cycle: 60\n    max_duty_cycle: 40\n")
        .unwrap();
    let err = text(&run(&config, &["validate", path.to_str().unwrap()]).stderr);
    assert!(err.contains("gpio.pwm.min_duty_cycle: 60 is above gpio.pwm.max_duty_cycle (40)"), "{err}");
    std::fs::write(&path, "config_version: \"1.2\"\nsecurity:\n  secrets_file: null\n").unwrap();
    let err = text(&run(&config, &["validate", path.to_str().unwrap()]).stderr);
    assert!(err.contains("the secret MCP_RASPI_ADMIN_TOKEN is not set"), "{err}");
    let err = text(&run(&config, &["validate", dir.path().join("none.yml").to_str().unwrap()]).stderr);
    assert!(err.contains("cannot read configuration") && err.contains("none.yml"), "{err}");
}

#[test]
fn a_1_1_file_is_planned_then_migrated_to_1_2_with_a_backup_and_then_loads() {
    let dir = temp_dir();
    let path = dir.path().join("config.yml");
    std::fs::write(&path, fixture("v1.1.yml")).unwrap();
    let (config, file) = (mcp_raspi_config(dir.path()), path.to_str().unwrap());

    // What the server says about the old file names the command to run, which works.
    let out = server_command().args(["--check-config", "--config", file]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    let plan_command = format!("mcp-raspi-config migrate plan --to-version 1.2.0 --config {file}");
    assert!(err.contains(&format!("`{plan_command}`")), "{err}");
    let args: Vec<&str> = plan_command.split_whitespace().skip(1).collect();
    let out = run(&config, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan = text(&out.stdout);
    assert!(plan.contains("  - server.enable_cors (line 8) → server.cors.enabled"), "{plan}");
    assert!(plan.contains("-  jwt_secret: <redacted>") && !plan.contains("not-a-real-secret"), "{plan}");
    assert!(plan.contains("The result loads as a 1.2 configuration."), "{plan}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), fixture("v1.1.yml"), "plan changes nothing");

    let out = run(&config, &["migrate", "apply", "--to-version", "1.2.0", "--config", file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains(&format!("backup: {file}.bak")) && said.contains("Comments and layout are kept."), "{said}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), fixture("v1.2.yml"));
    assert_eq!(std::fs::read_to_string(dir.path().join("config.yml.bak")).unwrap(), fixture("v1.1.yml"));

    let out = run(&config, &["migrate", "apply", "--to-version", "1.2", "--config", file]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "already at 1.2: nothing to migrate\n");
    let out = server_command()
        .args(["--check-config", "--config", file])
        .env("MCP_RASPI_ADMIN_TOKEN", "0123456789abcdef0123")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn bad_migrations_are_refused_and_change_nothing() {
    let dir = temp_dir();
    let path = dir.path().join("config.yml");
    let config = mcp_raspi_config(dir.path());
    let file = path.to_str().unwrap();
    let refused = |text_of_file: &[u8], to: &str| {
        std::fs::write(&path, text_of_file).unwrap();
        let out = run(&config, &["migrate", "apply", "--to-version", to, "--config", file]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        assert_eq!(std::fs::read(&path).unwrap(), text_of_file);
        assert!(!dir.path().join("config.yml.bak").exists());
        text(&out.stderr)
    };
    let e = refused(fixture("v1.2.yml").as_bytes(), "1.1");
    assert!(e.contains("the file is at 1.2 and --to-version says 1.1"), "{e}");
    let e = refused(fixture("v1.1.yml").as_bytes(), "3.0");
    assert!(e.contains("--to-version \"3.0\" is not a version this build migrates to"), "{e}");
    let e = refused(b"config_version: \"0.7\"\n", "1.2");
    assert!(e.contains("config_version (line 1) is \"0.7\""), "{e}");
    let e = refused(b"config_version: \"1.1\"\nserver:\n  enable_cors: true\n  lisen: x\n", "1.2");
    assert!(e.contains("would not load") && e.contains("unknown field `lisen`") && e.contains("line 4 of"), "{e}");
    let e = refused(b"config_version: \"1.1\"\n\xfe\xff\n", "1.2");
    assert!(e.contains("is not UTF-8 text"), "{e}");
}

/// The GPIO and experimental sections of a server whose PWM is limited.
const LIMITED_PWM: &str = "experimental_features:
  enabled: true
  features:
    - { name: gpio.pwm, enabled: true, acknowledged_risks: true }
    - { name: updates.delta, enabled: true, acknowledged_risks: true }
    - { name: gpio.pwn, enabled: true, acknowledged_risks: true }
gpio:
  pins:
    - { pin: 18, modes: [output, pwm], label: fan }
  pwm:
    max_frequency_hz: 1000
    min_duty_cycle: 10
    max_duty_cycle: 90
";

fn tool(server: &Server, name: &str, arguments: Value) -> Value {
    server.call_tool(name, arguments)
}

fn refusal(result: &Value) -> &str {
    assert_eq!(result["isError"], true, "{result}");
    result["content"][0]["text"].as_str().unwrap()
}

#[test]
fn pwm_outside_the_configured_limits_is_refused_naming_the_limit_and_the_key() {
    let mut server = Server::with_config(None, LIMITED_PWM);
    server.start_agent();
    let r = tool(&server, "gpio.pwm_enable", json!({"pin": 18, "frequency_hz": 2000, "duty_cycle": 0.5}));
    let e = refusal(&r);
    assert!(e.contains("argument `frequency_hz`: 2000 Hz is above the 1000 Hz that gpio.pwm.max_frequency_hz"), "{e}");
    let r = tool(&server, "gpio.pwm_start", json!({"pin": 18, "frequency": 500, "duty_cycle": 95}));
    let e = refusal(&r);
    assert!(e.contains("a duty cycle of 95% is above the 90% that gpio.pwm.max_duty_cycle allows"), "{e}");
    let r = tool(&server, "gpio.pwm_enable", json!({"pin": 18, "frequency_hz": 500, "duty_cycle": 0.05}));
    assert!(refusal(&r).contains("below the 10% that gpio.pwm.min_duty_cycle allows"), "{r}");
    // At the limits, the pin runs.
    let r = tool(&server, "gpio.pwm_enable", json!({"pin": 18, "frequency_hz": 1000, "duty_cycle": 0.9}));
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["structuredContent"]["pwm"]["frequency_hz"], 1000.0, "{r}");
}

#[test]
fn capabilities_report_each_known_feature_and_the_configured_entries() {
    let server = Server::with_config(None, LIMITED_PWM);
    let caps = tool(&server, "system.get_capabilities", json!({}))["structuredContent"].clone();
    let features = &caps["experimental_features"];
    assert_eq!(features["enabled"], true, "{features}");
    let state: Vec<(String, bool)> = features["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap().to_string(), f["enabled"].as_bool().unwrap()))
        .collect();
    let want = [("gpio.pwm", true), ("camera.video_recording", false), ("updates.delta", true)];
    assert_eq!(state, want.map(|(n, on)| (n.to_string(), on)));
    assert_eq!(features["features"][0]["tools"], json!(["gpio.pwm_enable", "gpio.pwm_disable", "gpio.pwm_start"]));
    assert_eq!(
        features["flags"][2],
        json!({"name": "gpio.pwn", "refers_to": "unknown", "enabled": true, "acknowledged_risks": true, "in_effect": false})
    );
    let enabled =
        |name: &str| caps["tools"].as_array().unwrap().iter().find(|t| t["name"] == name).map(|t| t["enabled"].clone());
    assert_eq!(enabled("gpio.pwm_start"), Some(json!(true)));
    assert_eq!(enabled("camera.record_video"), Some(json!(false)));
    assert_eq!(enabled("system.get_info"), Some(json!(true)));
    // The unknown name was logged when the server started.
    let log = std::fs::read_to_string(server.log_dir().join("app.log")).unwrap();
    assert!(log.contains("configuration: experimental_features.features[2].name: \\\"gpio.pwn\\\""), "{log}");
}

#[test]
fn a_tool_not_turned_on_is_refused_naming_its_feature() {
    let server = Server::with_config(None, "experimental_features:\n  enabled: false\n  features: []\n");
    let r = tool(&server, "gpio.pwm_enable", json!({"pin": 18, "frequency_hz": 50, "duty_cycle": 0.5}));
    assert!(refusal(&r).contains("a feature \"gpio.pwm\" (or \"gpio.pwm_enable\")"), "{r}");
}
