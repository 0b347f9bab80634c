#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::*;
use crate::platform::camera::Video;
use crate::platform::{
    Capture, JournalEntry, PackageChange, PowerReceipt, UnitState, Upgradable, UpgradeMode, UpgradeOutcome,
    UpgradeResult, UpgradeStatus,
};

fn pin(n: u64) -> PinNumber {
    PinNumber::new(n).unwrap()
}

fn unit(name: &str) -> UnitName {
    UnitName::parse(name).unwrap()
}

fn unit_state(name: &str) -> UnitState {
    UnitState {
        unit: name.to_string(),
        load_state: "loaded".into(),
        active_state: "active".into(),
        sub_state: "running".into(),
        description: Some("OpenBSD Secure Shell server".into()),
        unit_file_state: Some("enabled".into()),
    }
}

fn capabilities() -> AgentCapabilities {
    AgentCapabilities {
        uid: 998,
        gid: 998,
        groups: vec!["gpio".into(), "i2c".into(), "spi".into(), "dialout".into(), "video".into()],
        effective: vec!["CAP_SYS_BOOT".into()],
        permitted: vec!["CAP_SYS_BOOT".into()],
        inheritable: vec![],
        ambient: vec![],
        bounding: vec!["CAP_SYS_BOOT".into()],
        no_new_privs: true,
        backend: "raspberry_pi".into(),
        backend_reason: "auto: device tree model is \"Raspberry Pi 5 Model B Rev 1.0\"".into(),
    }
}

/// Which variant a request is; the match is exhaustive so that a new variant fails to
/// compile here until it has a sample.
fn request_variant(r: &Request) -> usize {
    match r {
        Request::Hello { .. } => 0,
        Request::GetCapabilities => 1,
        Request::GpioRead { .. } => 2,
        Request::GpioSetMode { .. } => 3,
        Request::GpioWrite { .. } => 4,
        Request::GpioPwmEnable { .. } => 5,
        Request::GpioPwmDisable { .. } => 6,
        Request::I2cScan { .. } => 7,
        Request::I2cRead { .. } => 8,
        Request::I2cWrite { .. } => 9,
        Request::SpiTransfer { .. } => 10,
        Request::UartRead { .. } => 11,
        Request::UartWrite { .. } => 12,
        Request::CameraCapture { .. } => 13,
        Request::ServiceStatus { .. } => 14,
        Request::ServiceList => 15,
        Request::ServiceControl { .. } => 16,
        Request::JournalQuery { .. } => 17,
        Request::Power { .. } => 18,
        Request::OsListUpgradable => 19,
        Request::OsStartUpgrade => 20,
        Request::OsUpgradeStatus => 21,
        Request::CameraRecord { .. } => 22,
        Request::UpdateApply { .. } => 23,
        Request::UpdateRollback { .. } => 24,
        Request::UpdateHealth { .. } => 25,
        Request::ConfigDeploy { .. } => 26,
    }
}
const REQUEST_VARIANTS: usize = 27;

fn response_variant(r: &Response) -> usize {
    match r {
        Response::Hello { .. } => 0,
        Response::Capabilities(_) => 1,
        Response::Pin { .. } => 2,
        Response::Addresses { .. } => 3,
        Response::Bytes { .. } => 4,
        Response::Written { .. } => 5,
        Response::Capture { .. } => 6,
        Response::Unit { .. } => 7,
        Response::Units { .. } => 8,
        Response::Journal { .. } => 9,
        Response::Power { .. } => 10,
        Response::Upgradable { .. } => 11,
        Response::Upgrade { .. } => 12,
        Response::Error { .. } => 13,
        Response::Video { .. } => 14,
        Response::UpdateApplied { .. } => 15,
        Response::VersionState { .. } => 16,
        Response::Done => 17,
    }
}
const RESPONSE_VARIANTS: usize = 18;

fn sample_requests() -> Vec<RequestFrame> {
    let requests = vec![
        Request::Hello { package_version: "0.1.0".into(), ipc_version: "1.0".into() },
        Request::GetCapabilities,
        Request::GpioRead { pin: pin(17) },
        Request::GpioSetMode { pin: pin(17), mode: PinMode::Input, pull: Pull::Up },
        Request::GpioWrite { pin: pin(27), level: Level::High },
        Request::GpioPwmEnable { pin: pin(18), pwm: PwmState { frequency_hz: 1000.0, duty_cycle: 0.25 } },
        Request::GpioPwmDisable { pin: pin(18) },
        Request::I2cScan { bus: 1 },
        Request::I2cRead { bus: 1, address: 0x48, register: Some(0x00), length: 2 },
        Request::I2cWrite { bus: 1, address: 0x48, register: None, data: vec![0x01, 0x60, 0xa0] },
        Request::SpiTransfer { bus: 0, chip_select: 0, mode: 0, speed_hz: 500_000, data: vec![0x01, 0x80, 0x00] },
        Request::UartRead { port: "serial0".into(), baud: 115_200, max_bytes: 256, timeout_ms: 500 },
        Request::UartWrite { port: "serial0".into(), baud: 115_200, data: b"AT\r\n".to_vec() },
        Request::CameraCapture { width: 1920, height: 1080, quality: 85 },
        Request::ServiceStatus { unit: unit("ssh") },
        Request::ServiceList,
        Request::ServiceControl { unit: unit("nginx.service"), action: UnitAction::Restart },
        Request::JournalQuery { unit: unit("ssh"), lines: 50, since: Some("1 hour ago".into()) },
        Request::Power { action: PowerAction::Reboot, delay_seconds: 60 },
        Request::OsListUpgradable,
        Request::OsStartUpgrade,
        Request::OsUpgradeStatus,
        Request::CameraRecord { duration_ms: 5000, width: 640, height: 480, framerate: 15 },
        Request::UpdateApply {
            manifest: "{\"name\":\"mcp-raspi\",\"version\":\"0.2.0\"}\n".into(),
            signature: "{\"key_id\":\"0123456789abcdef\"}\n".into(),
            delta: Some(DeltaIndexFiles { index: "{\"version\":\"0.2.0\"}\n".into(), signature: "{}\n".into() }),
        },
        Request::UpdateRollback { to_version: Some("0.1.0".into()), reason: "operator".into() },
        Request::UpdateHealth { version: "0.2.0".into(), healthy: true, detail: "/healthz 200; tools/call ok".into() },
        Request::ConfigDeploy {
            deployment: "{\"format\":\"mcp-raspi-config-deployment/1\"}".into(),
            signature: "{}".into(),
        },
    ];
    requests
        .into_iter()
        .zip(1u64..)
        .map(|(request, id)| RequestFrame { id, deadline_unix_ms: 1_767_225_600_000 + id * 1000, request })
        .collect()
}

fn sample_responses() -> Vec<ResponseFrame> {
    let responses = vec![
        Response::Hello { package_version: "0.1.0".into(), ipc_version: "1.0".into(), capabilities: capabilities() },
        Response::Capabilities(capabilities()),
        Response::Pin {
            state: PinState {
                pin: pin(18),
                mode: PinMode::Pwm,
                pull: Pull::None,
                level: Level::Low,
                pwm: Some(PwmState { frequency_hz: 1000.0, duty_cycle: 0.25 }),
            },
        },
        Response::Addresses { addresses: vec![0x3c, 0x48, 0x76] },
        Response::Bytes { data: vec![0x19, 0x80] },
        Response::Written { bytes: 3 },
        Response::Capture {
            capture: Capture {
                path: PathBuf::from("/var/lib/mcp-raspi/media/capture-20260101T000000Z.jpg"),
                width: 1920,
                height: 1080,
                size_bytes: 412_345,
                preview_jpeg: vec![0xff, 0xd8, 0xff, 0xe0, 0xff, 0xd9],
                source: "rpicam-still".into(),
            },
        },
        Response::Unit { state: unit_state("ssh.service") },
        Response::Units {
            units: vec![
                unit_state("ssh.service"),
                UnitState {
                    unit: "nginx.service".into(),
                    load_state: "loaded".into(),
                    active_state: "inactive".into(),
                    sub_state: "dead".into(),
                    description: None,
                    unit_file_state: None,
                },
            ],
        },
        Response::Journal {
            entries: vec![JournalEntry {
                time: "2026-01-01T00:00:00.123456Z".into(),
                priority: Some(6),
                unit: Some("ssh.service".into()),
                message: "Server listening on 0.0.0.0 port 22.".into(),
            }],
        },
        Response::Power {
            receipt: PowerReceipt {
                action: PowerAction::Reboot,
                delay_seconds: 60,
                scheduled_for: "2026-01-01T00:01:00Z".into(),
                method: "logind".into(),
            },
        },
        Response::Upgradable {
            packages: vec![Upgradable {
                name: "openssl".into(),
                installed_version: "3.0.15-1~deb12u1".into(),
                candidate_version: "3.0.16-1~deb12u1".into(),
                origin: Some("bookworm-security".into()),
                security: true,
            }],
        },
        Response::Upgrade {
            status: UpgradeStatus {
                state: "running".into(),
                log_tail: vec!["Unpacking openssl (3.0.16-1~deb12u1) ...".into()],
                outcome: Some(UpgradeOutcome {
                    result: UpgradeResult::Running,
                    started_at: "2026-01-01T03:00:00Z".into(),
                    finished_at: None,
                    mode: UpgradeMode::WithNewPackages,
                    refresh_lists: true,
                    upgraded: vec![PackageChange {
                        name: "openssl".into(),
                        from: "3.0.15-1~deb12u1".into(),
                        to: "3.0.16-1~deb12u1".into(),
                    }],
                    installed: Vec::new(),
                    removed: Vec::new(),
                    error: None,
                    invocation_id: Some("0123456789abcdef0123456789abcdef".into()),
                }),
            },
        },
        Response::Error { code: ErrorCode::Denied, message: "GPIO4 is not in the agent's allowlist".into() },
        Response::Video {
            video: Video {
                path: PathBuf::from("/var/lib/mcp-raspi/media/video-1767225600000.mjpeg"),
                width: 640,
                height: 480,
                duration_ms: 5000,
                frames: Some(75),
                size_bytes: 2_345_678,
                format: "mjpeg".into(),
                source: "rpicam-vid".into(),
            },
        },
        Response::UpdateApplied { from: Some("0.1.0".into()), to: "0.2.0".into(), restart_in_ms: 1000 },
        Response::VersionState {
            state: crate::update::state::VersionState {
                current_version: Some("0.1.0".into()),
                previous_good_version: None,
                highest_installed: Some("0.2.0".into()),
                last_update: Some(crate::update::state::LastUpdate {
                    status: crate::update::state::UpdateStatus::RolledBack,
                    from: Some("0.2.0".into()),
                    to: "0.1.0".into(),
                    source: "rollback".into(),
                    phase: None,
                    started_at: "2026-01-01T00:00:00Z".into(),
                    finished_at: Some("2026-01-01T00:00:02Z".into()),
                    reason: Some("operator".into()),
                }),
                failed_starts: 0,
                reconciled: None,
                rollbacks: 1,
                consecutive_failures: 0,
            },
        },
        Response::Done,
    ];
    responses.into_iter().zip(1u64..).map(|(response, id)| ResponseFrame { id, response }).collect()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ipc").join(name)
}

fn check_golden<T: Serialize>(name: &str, samples: &T) {
    let path = fixture(name);
    let pretty = serde_json::to_string_pretty(samples).unwrap() + "\n";
    if std::env::var_os("MCP_RASPI_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &pretty).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with MCP_RASPI_UPDATE_GOLDEN=1 to create it", path.display()));
    assert_eq!(pretty, want, "{name} changed; if intended, rerun with MCP_RASPI_UPDATE_GOLDEN=1 and review the diff");
}

fn read_fixture<T: DeserializeOwned>(name: &str) -> T {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Runs an async test body on a small runtime of its own.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

fn frame_bytes(body: &[u8]) -> Vec<u8> {
    let mut bytes = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

fn parse_request(body: &Value) -> Result<Option<RequestFrame>, FrameError> {
    let bytes = frame_bytes(&serde_json::to_vec(body).unwrap());
    block_on(read_frame(&mut bytes.as_slice()))
}

#[test]
fn the_samples_cover_every_request_and_response_variant() {
    let requests: BTreeSet<usize> = sample_requests().iter().map(|f| request_variant(&f.request)).collect();
    assert_eq!(requests, (0..REQUEST_VARIANTS).collect());
    let responses: BTreeSet<usize> = sample_responses().iter().map(|f| response_variant(&f.response)).collect();
    assert_eq!(responses, (0..RESPONSE_VARIANTS).collect());
}

#[test]
fn requests_serialize_exactly_as_the_golden_file_says() {
    check_golden("requests.json", &sample_requests());
}

#[test]
fn responses_serialize_exactly_as_the_golden_file_says() {
    check_golden("responses.json", &sample_responses());
}

#[test]
fn the_golden_files_deserialize_back_into_the_same_frames() {
    let requests: Vec<RequestFrame> = read_fixture("requests.json");
    assert_eq!(requests, sample_requests());
    let responses: Vec<ResponseFrame> = read_fixture("responses.json");
    assert_eq!(responses, sample_responses());
}

#[test]
fn every_request_name_is_its_op_tag() {
    for frame in sample_requests() {
        let value = serde_json::to_value(&frame.request).unwrap();
        assert_eq!(value["op"], json!(frame.request.name()));
    }
    for frame in sample_responses() {
        let value = serde_json::to_value(&frame.response).unwrap();
        assert_eq!(value["kind"], json!(frame.response.kind()));
    }
}

#[test]
fn byte_payloads_travel_as_base64_strings() {
    let value =
        serde_json::to_value(Request::UartWrite { port: "serial0".into(), baud: 9600, data: b"hi".to_vec() }).unwrap();
    assert_eq!(value, json!({"op": "uart_write", "port": "serial0", "baud": 9600, "data": "aGk="}));
    let bad = json!({"id": 1, "deadline_unix_ms": 0, "request": {"op": "uart_write", "port": "serial0", "baud": 9600, "data": "not base64!"}});
    assert!(matches!(parse_request(&bad), Err(FrameError::Malformed(_))));
}

#[test]
fn a_safe_log_line_shows_payload_lengths_but_never_payload_bytes() {
    // Bytes that would be recognisable in any rendering: decimal, hex, text or base64.
    let secret = b"hunter2-SECRET".to_vec();
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &secret);
    let requests = [
        Request::I2cWrite { bus: 1, address: 0x50, register: Some(0x10), data: secret.clone() },
        Request::SpiTransfer { bus: 0, chip_select: 1, mode: 3, speed_hz: 1_000_000, data: secret.clone() },
        Request::UartWrite { port: "serial0".into(), baud: 115_200, data: secret.clone() },
    ];
    for r in &requests {
        let line = r.as_safe_string();
        assert!(line.contains("data=<14 bytes>"), "{line}");
        for leak in ["hunter2", "SECRET", encoded.as_str(), "104", "0x68", "[104"] {
            assert!(!line.contains(leak), "{line} contains {leak}");
        }
        assert!(!line.contains('\n'));
    }
    assert_eq!(requests[0].as_safe_string(), "i2c_write bus=1 address=0x50 register=0x10 data=<14 bytes>");
}

#[test]
fn a_safe_log_line_quotes_strings_so_they_cannot_break_the_line() {
    let r = Request::JournalQuery { unit: unit("ssh"), lines: 5, since: Some("today\nFAKE LINE".into()) };
    let line = r.as_safe_string();
    assert!(!line.contains('\n'), "{line}");
    assert_eq!(line, r#"journal_query unit=ssh.service lines=5 since="today\nFAKE LINE""#);
    for frame in sample_requests() {
        let line = frame.request.as_safe_string();
        assert!(line.starts_with(frame.request.name()), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
}

#[test]
fn a_recording_request_logs_its_settings() {
    let r = Request::CameraRecord { duration_ms: 1500, width: 320, height: 240, framerate: 5 };
    assert_eq!(r.as_safe_string(), "camera_record duration_ms=1500 width=320 height=240 framerate=5");
}

#[test]
fn an_unknown_op_is_malformed() {
    let frame = json!({"id": 1, "deadline_unix_ms": 0, "request": {"op": "exec_shell", "command": "id"}});
    let err = parse_request(&frame).unwrap_err();
    assert!(matches!(&err, FrameError::Malformed(m) if m.contains("exec_shell")), "{err}");
}

#[test]
fn an_unknown_field_in_a_request_is_malformed() {
    let frame = json!({"id": 1, "deadline_unix_ms": 0, "request": {"op": "gpio_read", "pin": 17, "force": true}});
    let err = parse_request(&frame).unwrap_err();
    assert!(matches!(&err, FrameError::Malformed(m) if m.contains("force")), "{err}");
}

#[test]
fn an_unknown_field_beside_a_request_without_arguments_is_malformed() {
    let frame = json!({"id": 1, "deadline_unix_ms": 0, "request": {"op": "service_list", "all": true}});
    let err = parse_request(&frame).unwrap_err();
    assert!(matches!(&err, FrameError::Malformed(m) if m.contains("all")), "{err}");
}

#[test]
fn an_unknown_field_in_the_request_frame_is_malformed() {
    let frame = json!({"id": 1, "deadline_unix_ms": 0, "request": {"op": "service_list"}, "sudo": true});
    let err = parse_request(&frame).unwrap_err();
    assert!(matches!(&err, FrameError::Malformed(m) if m.contains("sudo")), "{err}");
}

#[test]
fn a_malformed_frame_names_where_the_json_went_wrong() {
    let frame = json!({"id": "one", "deadline_unix_ms": 0, "request": {"op": "service_list"}});
    let err = parse_request(&frame).unwrap_err();
    assert!(matches!(&err, FrameError::Malformed(m) if m.contains("id")), "{err}");
}

#[test]
fn a_pin_outside_the_header_is_malformed() {
    let frame = json!({"id": 1, "deadline_unix_ms": 0, "request": {"op": "gpio_read", "pin": 40}});
    let err = parse_request(&frame).unwrap_err();
    assert!(matches!(&err, FrameError::Malformed(m) if m.contains("0 to 27")), "{err}");
}

#[test]
fn a_unit_name_with_shell_characters_is_malformed() {
    let frame = json!({"id": 1, "deadline_unix_ms": 0, "request": {"op": "service_status", "unit": "a;reboot"}});
    assert!(matches!(parse_request(&frame), Err(FrameError::Malformed(_))));
}

#[test]
fn frames_written_are_read_back_unchanged() {
    block_on(async {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        for frame in sample_requests() {
            write_frame(&mut a, &frame).await.unwrap();
        }
        drop(a);
        let mut got = Vec::new();
        while let Some(frame) = read_frame::<_, RequestFrame>(&mut b).await.unwrap() {
            got.push(frame);
        }
        assert_eq!(got, sample_requests());
    });
}

#[test]
fn a_close_between_frames_is_a_clean_end() {
    let empty: &[u8] = &[];
    assert!(block_on(read_frame::<_, Value>(&mut &*empty)).unwrap().is_none());
}

#[test]
fn a_frame_cut_off_in_its_body_is_truncated() {
    let mut bytes = frame_bytes(br#"{"id":1,"response":{"kind":"written","bytes":3}}"#);
    bytes.truncate(bytes.len() - 5);
    let err = block_on(read_frame::<_, ResponseFrame>(&mut bytes.as_slice())).unwrap_err();
    assert!(matches!(err, FrameError::Truncated), "{err}");
}

#[test]
fn a_frame_cut_off_in_its_length_prefix_is_truncated() {
    let bytes = [0u8, 0];
    let err = block_on(read_frame::<_, Value>(&mut &bytes[..])).unwrap_err();
    assert!(matches!(err, FrameError::Truncated), "{err}");
}

#[test]
fn an_oversized_length_is_refused_before_its_body_is_read() {
    block_on(async {
        // The writer stays open and sends no body: a reader that tried to read the body
        // would wait forever, so an immediate answer proves it did not.
        let (mut a, mut b) = tokio::io::duplex(64);
        let len = u32::try_from(MAX_FRAME_BYTES + 1).unwrap();
        a.write_all(&len.to_be_bytes()).await.unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), read_frame::<_, Value>(&mut b)).await;
        let err = result.expect("read_frame waited for a body it should have refused").unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, max } if len == MAX_FRAME_BYTES + 1 && max == MAX_FRAME_BYTES)
        );
        drop(a);
    });
}

#[test]
fn the_largest_length_a_prefix_can_hold_is_refused() {
    let bytes = u32::MAX.to_be_bytes();
    let err = block_on(read_frame::<_, Value>(&mut &bytes[..])).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains(&MAX_FRAME_BYTES.to_string()), "{err}");
}

#[test]
fn a_zero_length_frame_is_malformed() {
    let bytes = [0u8; 4];
    let err = block_on(read_frame::<_, Value>(&mut &bytes[..])).unwrap_err();
    assert!(matches!(err, FrameError::Malformed(_)), "{err}");
}

#[test]
fn trailing_bytes_after_the_json_are_malformed() {
    let bytes = frame_bytes(br#"{"id":1,"response":{"kind":"written","bytes":3}} {}"#);
    let err = block_on(read_frame::<_, ResponseFrame>(&mut bytes.as_slice())).unwrap_err();
    assert!(matches!(err, FrameError::Malformed(_)), "{err}");
}

#[test]
fn an_oversized_value_is_refused_without_writing_anything() {
    block_on(async {
        let big = Response::Bytes { data: vec![0u8; MAX_FRAME_BYTES] };
        let mut out: Vec<u8> = Vec::new();
        let err = write_frame(&mut out, &big).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max, .. } if max == MAX_FRAME_BYTES), "{err}");
        assert!(out.is_empty());
    });
}

#[test]
fn platform_errors_map_to_the_matching_error_code() {
    let cases = [
        (PlatformError::Unavailable("no camera".into()), ErrorCode::Unavailable),
        (PlatformError::Invalid("GPIO2 is an input".into()), ErrorCode::Invalid),
        (PlatformError::Failed("i2c timeout".into()), ErrorCode::Failed),
    ];
    for (e, code) in cases {
        assert_eq!(ErrorCode::from(&e), code);
        let Response::Error { code: got, message } = Response::from_platform_error(&e) else {
            panic!("not an error response");
        };
        assert_eq!(got, code);
        assert!(!message.contains("not available on this host"), "{message}");
    }
    assert_eq!(serde_json::to_value(ErrorCode::VersionMismatch).unwrap(), json!(ErrorCode::VersionMismatch.as_str()));
}

#[test]
fn versions_differing_only_in_patch_are_compatible() {
    assert_eq!(check_compatible("0.1.0", "1.0", "0.1.7", "1.0"), Ok(()));
    assert_eq!(check_compatible("0.2.0-rc1", "1.0", "0.2.3+git.abc", "1.0"), Ok(()));
}

#[test]
fn versions_differing_in_minor_are_refused_naming_both() {
    let err = check_compatible("0.1.0", "1.0", "0.2.0", "1.0").unwrap_err();
    assert!(err.contains("0.1.0") && err.contains("0.2.0"), "{err}");
    assert!(err.contains("apt install --reinstall mcp-raspi"), "{err}");
    assert!(check_compatible("1.1.0", "1.0", "2.1.0", "1.0").is_err());
}

#[test]
fn different_ipc_versions_are_refused_naming_both() {
    let err = check_compatible("0.1.0", "1.0", "0.1.0", "2.0").unwrap_err();
    assert!(err.contains("IPC 1.0") && err.contains("IPC 2.0"), "{err}");
    assert!(check_compatible("0.1.0", "1.0", "0.1.0", "1.1").is_err());
}

#[test]
fn a_malformed_version_is_refused_naming_the_bad_string() {
    for (lp, li, rp, ri, bad) in [
        ("0.1", "1.0", "0.1.0", "1.0", "\"0.1\""),
        ("0.1.0", "1.0", "v0.1.0", "1.0", "\"v0.1.0\""),
        ("0.1.0", "1.0", "0.1.0", "one", "\"one\""),
        ("0.1.0", "1.0.0", "0.1.0", "1.0", "\"1.0.0\""),
        ("0.1.0", "1.0", "0..1", "1.0", "\"0..1\""),
        ("0.1.0", "1.0", "0.+1.0", "1.0", "\"0.+1.0\""),
        ("0.1.0", "1.0", "", "1.0", "\"\""),
        ("0.1.0", "1.0", "0.1.0-\nFAKE", "1.0", "\"0.1.0-\\nFAKE\""),
    ] {
        let err = check_compatible(lp, li, rp, ri).unwrap_err();
        assert!(err.contains(bad) && err.contains("malformed"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
    let long = format!("0.1.0-{}", "x".repeat(10_000));
    assert!(check_compatible("0.1.0", "1.0", &long, "1.0").unwrap_err().len() < 300);
}

#[test]
fn this_build_is_compatible_with_itself() {
    let Request::Hello { package_version, ipc_version } = Request::hello() else { panic!("not a hello") };
    assert_eq!(check_compatible(crate::base::VERSION, IPC_VERSION, &package_version, &ipc_version), Ok(()));
}

#[test]
fn a_frame_with_a_future_deadline_has_time_left_and_a_past_one_has_none() {
    let frame = RequestFrame::with_timeout(1, Request::ServiceList, Duration::from_secs(30));
    let left = frame.time_left().unwrap();
    assert!(left > Duration::from_secs(25) && left <= Duration::from_secs(30), "{left:?}");
    let expired = RequestFrame { deadline_unix_ms: 1, ..frame };
    assert_eq!(expired.time_left(), None);
}
