//! `camera.capture`: a still from the Pi's camera, saved on the Pi and shown inline.
//! `camera.record_video` (experimental): a short Motion JPEG video saved on the Pi.
//!
//! The ops agent owns the camera and the media directory and picks the file names; these
//! tools check the limits under `camera` first. A capture returns the agent's small preview
//! as an image block, so that a client can see the picture without fetching the file. A
//! recording is one request to the agent that returns when the video is complete, so its
//! duration must fit within the server's wait for that answer.

use base64::Engine;
use rmcp::model::ContentBlock;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::system::read_only_spec;
use super::{Cx, Maturity, Tool, ToolError, ToolSpec};
use crate::config::{CameraConfig, Role};
use crate::ipc::{Request, Response};
use crate::platform::camera::{Video, VideoRequest};

const DEFAULT_WIDTH: u32 = 1920;
const DEFAULT_HEIGHT: u32 = 1080;
const DEFAULT_QUALITY: u8 = 85;

const DEFAULT_VIDEO_WIDTH: u32 = 640;
const DEFAULT_VIDEO_HEIGHT: u32 = 480;
const DEFAULT_FRAMERATE: u32 = 15;
const MAX_FRAMERATE: u32 = 60;
/// Time a recording needs besides its duration before the agent's answer arrives: starting
/// the camera, writing the last frames, reading the file back.
const RECORDING_MARGIN_MS: u64 = 2000;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureArguments {
    /// Width in pixels, 1 to camera.max_width; default 1920 (or camera.max_width if smaller).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub width: Option<u32>,
    /// Height in pixels, 1 to camera.max_height; default 1080 (or camera.max_height if smaller).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub height: Option<u32>,
    /// JPEG quality, 1 to 100; default 85.
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    pub quality: Option<u8>,
}

/// The width and height asked for, or their defaults shrunk to the configured maximum, when
/// `camera` allows that size.
fn frame_size(
    camera: &CameraConfig,
    width: Option<u32>,
    height: Option<u32>,
    default: (u32, u32),
) -> Result<(u32, u32), ToolError> {
    let width = width.unwrap_or(default.0.min(camera.max_width));
    let height = height.unwrap_or(default.1.min(camera.max_height));
    camera.check_size(width, height)?;
    Ok((width, height))
}

/// The size and quality to ask the agent for, or why the camera may not be used so.
fn capture_request(camera: &CameraConfig, args: &CaptureArguments) -> Result<(u32, u32, u8), ToolError> {
    camera.check_enabled("captures")?;
    let (width, height) = frame_size(camera, args.width, args.height, (DEFAULT_WIDTH, DEFAULT_HEIGHT))?;
    let quality = args.quality.unwrap_or(DEFAULT_QUALITY);
    if !(1..=100).contains(&quality) {
        return Err(ToolError::invalid_argument(format!("argument `quality`: {quality} is outside 1 to 100")));
    }
    Ok((width, height, quality))
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CaptureResult {
    /// The full-size JPEG on the Pi, in the camera's media directory.
    pub path: String,
    pub width: u32,
    pub height: u32,
    pub size_bytes: u64,
    /// The program that took the picture: `rpicam-still`, `libcamera-still` or `simulated`.
    pub source: String,
    /// The small preview, sent as an image block rather than in the JSON.
    #[serde(skip)]
    pub preview_jpeg: Vec<u8>,
}

pub struct Capture;

impl Tool for Capture {
    type Input = CaptureArguments;
    type Output = CaptureResult;
    const SPEC: ToolSpec = ToolSpec {
        blocking: false,
        min_role: Role::Operator,
        read_only: false,
        idempotent: false,
        ..read_only_spec(
            "camera.capture",
            "Take a photo",
            "Takes a still JPEG with the Pi's camera and saves it on the Pi (the oldest captures are deleted past the configured limits). Returns the file's path, size and dimensions, and a small preview image. Refused when camera.enabled is false.",
        )
    };

    async fn call(cx: Cx, args: CaptureArguments) -> Result<CaptureResult, ToolError> {
        let (width, height, quality) = capture_request(&cx.app.config.camera, &args)?;
        let capture = match cx.app.agent.call(Request::CameraCapture { width, height, quality }).await? {
            Response::Capture { capture } => capture,
            other => {
                return Err(ToolError::internal(format!(
                    "unexpected answer from the ops agent to camera_capture: {}",
                    other.kind()
                )))
            }
        };
        Ok(CaptureResult {
            path: capture.path.display().to_string(),
            width: capture.width,
            height: capture.height,
            size_bytes: capture.size_bytes,
            source: capture.source,
            preview_jpeg: capture.preview_jpeg,
        })
    }

    fn extra_content(output: &CaptureResult) -> Vec<ContentBlock> {
        if output.preview_jpeg.is_empty() {
            return Vec::new();
        }
        let data = base64::engine::general_purpose::STANDARD.encode(&output.preview_jpeg);
        vec![ContentBlock::image(data, "image/jpeg")]
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordArguments {
    /// How long to record, in seconds; default 5. At most camera.max_video_seconds (60 unless
    /// changed), and 2 s less than the server's ops_agent.request_timeout_ms (10000 ms unless
    /// changed, so 8 s by default).
    #[serde(default = "default_duration_seconds")]
    #[schemars(range(min = 0.001))]
    pub duration_seconds: f64,
    /// Width in pixels, 1 to camera.max_width; default 640 (or camera.max_width if smaller).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub width: Option<u32>,
    /// Height in pixels, 1 to camera.max_height; default 480 (or camera.max_height if smaller).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub height: Option<u32>,
    /// Frames per second, 1 to 60; default 15.
    #[serde(default)]
    #[schemars(range(min = 1, max = 60))]
    pub framerate: Option<u32>,
}

fn default_duration_seconds() -> f64 {
    5.0
}

/// What to ask the agent to record, or why the camera may not be used so. The recording must
/// also end, with [`RECORDING_MARGIN_MS`] to spare, before the server stops waiting for the
/// agent's answer after `request_timeout_ms`.
fn record_request(
    camera: &CameraConfig,
    request_timeout_ms: u64,
    args: &RecordArguments,
) -> Result<VideoRequest, ToolError> {
    camera.check_enabled("recordings")?;
    let (width, height) = frame_size(camera, args.width, args.height, (DEFAULT_VIDEO_WIDTH, DEFAULT_VIDEO_HEIGHT))?;
    let framerate = args.framerate.unwrap_or(DEFAULT_FRAMERATE);
    if !(1..=MAX_FRAMERATE).contains(&framerate) {
        return Err(ToolError::invalid_argument(format!(
            "argument `framerate`: {framerate} is outside 1 to {MAX_FRAMERATE} frames per second"
        )));
    }
    let seconds = args.duration_seconds;
    camera.check_video_seconds(seconds)?;
    // Within 0 to u32::MAX seconds, so the product fits in a u64; `as` saturates besides.
    let duration_ms = (seconds * 1000.0).round() as u64;
    if duration_ms == 0 {
        return Err(ToolError::invalid_argument(format!(
            "argument `duration_seconds`: {seconds} is shorter than the shortest recording, 0.001 seconds"
        )));
    }
    let limit_ms = request_timeout_ms.saturating_sub(RECORDING_MARGIN_MS);
    if duration_ms > limit_ms {
        return Err(ToolError::invalid_argument(format!(
            "argument `duration_seconds`: {seconds} s would outlast this server's wait for the ops agent \
             (ops_agent.request_timeout_ms is {request_timeout_ms}, less {} s kept for starting the camera and \
             answering); record at most {} s, or an administrator raises ops_agent.request_timeout_ms",
            RECORDING_MARGIN_MS as f64 / 1000.0,
            limit_ms as f64 / 1000.0
        )));
    }
    let duration_ms = u32::try_from(duration_ms).map_err(|_| {
        ToolError::invalid_argument(format!("argument `duration_seconds`: {seconds} is too long to record"))
    })?;
    Ok(VideoRequest { duration_ms, width, height, framerate })
}

pub struct RecordVideo;

impl Tool for RecordVideo {
    type Input = RecordArguments;
    type Output = Video;
    const SPEC: ToolSpec = ToolSpec {
        blocking: false,
        min_role: Role::Operator,
        maturity: Maturity::Experimental,
        read_only: false,
        idempotent: false,
        ..read_only_spec(
            "camera.record_video",
            "Record a video",
            "Records a short Motion JPEG video (a sequence of JPEG frames, playable with e.g. `ffplay -f mjpeg`) with the Pi's camera and saves it on the Pi; videos and photos share the media directory and its limits, past which the oldest are deleted. Returns when the recording is over, with the file's path, size, dimensions, duration and frame count. The duration is limited by camera.max_video_seconds, and to 2 s less than ops_agent.request_timeout_ms. Refused when camera.enabled is false.",
        )
    };

    async fn call(cx: Cx, args: RecordArguments) -> Result<Video, ToolError> {
        let config = &cx.app.config;
        let VideoRequest { duration_ms, width, height, framerate } =
            record_request(&config.camera, config.ops_agent.request_timeout_ms, &args)?;
        match cx.app.agent.call(Request::CameraRecord { duration_ms, width, height, framerate }).await? {
            Response::Video { video } => Ok(video),
            other => Err(ToolError::internal(format!(
                "unexpected answer from the ops agent to camera_record: {}",
                other.kind()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(width: Option<u32>, height: Option<u32>, quality: Option<u8>) -> CaptureArguments {
        CaptureArguments { width, height, quality }
    }

    #[test]
    fn a_capture_defaults_to_1080p_at_quality_85() {
        assert_eq!(capture_request(&CameraConfig::default(), &args(None, None, None)).unwrap(), (1920, 1080, 85));
    }

    #[test]
    fn the_default_size_shrinks_to_the_configured_maximum() {
        let small = CameraConfig { max_width: 1280, max_height: 720, ..CameraConfig::default() };
        assert_eq!(capture_request(&small, &args(None, None, None)).unwrap(), (1280, 720, 85));
    }

    #[test]
    fn sizes_beyond_the_configured_maximum_are_refused_naming_the_key() {
        let camera = CameraConfig::default();
        assert_eq!(capture_request(&camera, &args(Some(4056), Some(3040), Some(100))).unwrap(), (4056, 3040, 100));
        let e = capture_request(&camera, &args(Some(4057), None, None)).unwrap_err();
        assert_eq!(e.code, "invalid_argument");
        assert!(e.message.contains("camera.max_width"), "{}", e.message);
        assert!(capture_request(&camera, &args(None, Some(0), None))
            .unwrap_err()
            .message
            .contains("camera.max_height"));
    }

    #[test]
    fn quality_is_one_to_a_hundred() {
        let camera = CameraConfig::default();
        assert!(capture_request(&camera, &args(None, None, Some(0))).is_err());
        assert!(capture_request(&camera, &args(None, None, Some(101))).is_err());
        assert_eq!(capture_request(&camera, &args(None, None, Some(1))).unwrap().2, 1);
    }

    #[test]
    fn a_disabled_camera_is_refused_naming_the_switch() {
        let off = CameraConfig { enabled: false, ..CameraConfig::default() };
        let e = capture_request(&off, &args(None, None, None)).unwrap_err();
        assert_eq!(e.code, "permission_denied");
        assert!(e.message.contains("camera.enabled"));
    }

    #[test]
    fn the_preview_travels_as_an_image_block_and_not_in_the_json() {
        let result = CaptureResult {
            path: "/var/lib/mcp-raspi/media/a.jpg".into(),
            width: 640,
            height: 480,
            size_bytes: 1234,
            source: "simulated".into(),
            preview_jpeg: vec![0xff, 0xd8, 0xff],
        };
        let json = serde_json::to_value(&result).unwrap();
        assert!(json.get("preview_jpeg").is_none());
        let blocks = Capture::extra_content(&result);
        assert_eq!(blocks.len(), 1);
        let block = serde_json::to_value(&blocks[0]).unwrap();
        assert_eq!(block["type"], "image");
        assert_eq!(block["mimeType"], "image/jpeg");
        assert_eq!(block["data"], "/9j/");
        assert!(Capture::extra_content(&CaptureResult { preview_jpeg: Vec::new(), ..result }).is_empty());
    }

    /// The default ops_agent.request_timeout_ms.
    const TIMEOUT_MS: u64 = 10_000;

    fn record_args(
        duration_seconds: f64,
        width: Option<u32>,
        height: Option<u32>,
        framerate: Option<u32>,
    ) -> RecordArguments {
        RecordArguments { duration_seconds, width, height, framerate }
    }

    #[test]
    fn a_recording_defaults_to_five_seconds_of_vga_at_15_frames_per_second() {
        let args: RecordArguments = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(
            record_request(&CameraConfig::default(), TIMEOUT_MS, &args).unwrap(),
            VideoRequest { duration_ms: 5000, width: 640, height: 480, framerate: 15 }
        );
        let small = CameraConfig { max_width: 320, max_height: 240, ..CameraConfig::default() };
        let request = record_request(&small, TIMEOUT_MS, &args).unwrap();
        assert_eq!((request.width, request.height), (320, 240));
    }

    #[test]
    fn fractional_durations_are_rounded_to_milliseconds() {
        let request = record_request(&CameraConfig::default(), TIMEOUT_MS, &record_args(1.2346, None, None, None));
        assert_eq!(request.unwrap().duration_ms, 1235);
        let request = record_request(&CameraConfig::default(), TIMEOUT_MS, &record_args(0.001, None, None, None));
        assert_eq!(request.unwrap().duration_ms, 1);
    }

    #[test]
    fn a_duration_beyond_the_configured_maximum_is_refused_naming_the_key() {
        let camera = CameraConfig { max_video_seconds: 3, ..CameraConfig::default() };
        assert_eq!(record_request(&camera, TIMEOUT_MS, &record_args(3.0, None, None, None)).unwrap().duration_ms, 3000);
        for bad in [3.001, 4.0, 0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = record_request(&camera, TIMEOUT_MS, &record_args(bad, None, None, None)).unwrap_err();
            assert_eq!(e.code, "invalid_argument", "{bad}");
            assert!(e.message.contains("camera.max_video_seconds"), "{bad}: {}", e.message);
        }
        let e = record_request(&camera, TIMEOUT_MS, &record_args(0.0004, None, None, None)).unwrap_err();
        assert_eq!(e.code, "invalid_argument");
        assert!(e.message.contains("duration_seconds") && e.message.contains("shortest recording"), "{}", e.message);
    }

    #[test]
    fn a_recording_must_end_before_the_server_stops_waiting_for_the_agent() {
        let camera = CameraConfig::default();
        assert_eq!(record_request(&camera, TIMEOUT_MS, &record_args(8.0, None, None, None)).unwrap().duration_ms, 8000);
        let e = record_request(&camera, TIMEOUT_MS, &record_args(8.5, None, None, None)).unwrap_err();
        assert_eq!(e.code, "invalid_argument");
        assert!(e.message.contains("ops_agent.request_timeout_ms is 10000"), "{}", e.message);
        assert!(e.message.contains("at most 8 s"), "{}", e.message);
        assert!(record_request(&camera, 62_000, &record_args(60.0, None, None, None)).is_ok());
        assert!(record_request(&camera, 1_000, &record_args(0.1, None, None, None)).is_err());
    }

    #[test]
    fn frame_rates_are_one_to_sixty_and_sizes_within_the_configured_maximum() {
        let camera = CameraConfig::default();
        for framerate in [1, 60] {
            assert!(record_request(&camera, TIMEOUT_MS, &record_args(1.0, None, None, Some(framerate))).is_ok());
        }
        for framerate in [0, 61] {
            let e = record_request(&camera, TIMEOUT_MS, &record_args(1.0, None, None, Some(framerate))).unwrap_err();
            assert!(e.message.contains("framerate"), "{}", e.message);
        }
        let e = record_request(&camera, TIMEOUT_MS, &record_args(1.0, Some(4057), None, None)).unwrap_err();
        assert!(e.message.contains("camera.max_width"), "{}", e.message);
        let e = record_request(&camera, TIMEOUT_MS, &record_args(1.0, None, Some(0), None)).unwrap_err();
        assert!(e.message.contains("camera.max_height"), "{}", e.message);
    }

    #[test]
    fn a_disabled_camera_refuses_recordings_naming_the_switch() {
        let off = CameraConfig { enabled: false, ..CameraConfig::default() };
        let e = record_request(&off, TIMEOUT_MS, &record_args(1.0, None, None, None)).unwrap_err();
        assert_eq!(e.code, "permission_denied");
        assert!(e.message.contains("camera.enabled") && e.message.contains("recordings"), "{}", e.message);
    }

    #[test]
    fn recording_is_an_experimental_operator_tool_that_changes_the_media_directory() {
        let spec = &RecordVideo::SPEC;
        assert_eq!(spec.name, "camera.record_video");
        assert_eq!(spec.maturity, Maturity::Experimental);
        assert_eq!(spec.min_role, Role::Operator);
        assert!(!spec.read_only && !spec.destructive && !spec.idempotent && !spec.open_world);
    }

    #[test]
    fn unknown_recording_arguments_are_refused() {
        let parsed: Result<RecordArguments, _> = serde_json::from_value(serde_json::json!({"seconds": 3}));
        assert!(parsed.is_err());
    }
}
