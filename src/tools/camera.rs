//! `camera.capture`: a still from the Pi's camera, saved on the Pi and shown inline.
//!
//! The ops agent owns the camera and the media directory and picks the file name; this
//! tool checks the size limits under `camera` first and returns the agent's small preview
//! as an image block, so that a client can see the picture without fetching the file.

use base64::Engine;
use rmcp::model::ContentBlock;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::system::read_only_spec;
use super::{Cx, Tool, ToolError, ToolSpec};
use crate::config::{CameraConfig, Role};
use crate::ipc::{Request, Response};

const DEFAULT_WIDTH: u32 = 1920;
const DEFAULT_HEIGHT: u32 = 1080;
const DEFAULT_QUALITY: u8 = 85;

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

/// The size and quality to ask the agent for, or why the camera may not be used so.
fn capture_request(camera: &CameraConfig, args: &CaptureArguments) -> Result<(u32, u32, u8), ToolError> {
    if !camera.enabled {
        return Err(ToolError::forbidden(
            "the camera is turned off on this server: an administrator sets camera.enabled to true to allow captures",
        ));
    }
    let side = |what: &str, value: Option<u32>, default: u32, max: u32, key: &str| {
        let value = value.unwrap_or(default.min(max));
        if value == 0 || value > max {
            Err(ToolError::invalid_argument(format!(
                "argument `{what}`: {value} pixels is outside 1 to {max} ({key} on this server)"
            )))
        } else {
            Ok(value)
        }
    };
    let width = side("width", args.width, DEFAULT_WIDTH, camera.max_width, "camera.max_width")?;
    let height = side("height", args.height, DEFAULT_HEIGHT, camera.max_height, "camera.max_height")?;
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
}
