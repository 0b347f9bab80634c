//! Still images and short videos from the camera.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::PlatformError;

/// What to capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureRequest {
    pub width: u32,
    pub height: u32,
    /// JPEG quality, 1 to 100.
    pub quality: u8,
    /// Longest side of the preview image returned inline, in pixels.
    pub preview_max_side: u32,
}

/// A captured still.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Capture {
    /// The full-size JPEG on disk.
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub size_bytes: u64,
    /// A small JPEG of the same scene (no larger than `preview_max_side`), for clients
    /// that show images inline.
    #[serde(with = "crate::ipc::base64_bytes")]
    #[schemars(with = "String")]
    pub preview_jpeg: Vec<u8>,
    /// The program that took the picture (`rpicam-still`, `libcamera-still`, `simulated`).
    pub source: String,
}

/// What to record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoRequest {
    /// How long to record, in milliseconds.
    pub duration_ms: u32,
    pub width: u32,
    pub height: u32,
    /// Frames per second.
    pub framerate: u32,
}

/// A recorded video.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Video {
    /// The video file on the Pi, in the camera's media directory.
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    /// How long the camera recorded, in milliseconds.
    pub duration_ms: u32,
    /// Frames in the file, when known.
    pub frames: Option<u32>,
    pub size_bytes: u64,
    /// The encoding: `mjpeg` (a plain sequence of JPEG frames, playable without a
    /// container, e.g. `ffplay -f mjpeg FILE`) or `h264` (a raw H.264 stream).
    pub format: String,
    /// The program that recorded it (`rpicam-vid`, `libcamera-vid`, `simulated`).
    pub source: String,
}

/// Camera access.
pub trait Camera: Send + Sync {
    /// Captures a JPEG into `out` (a new file in the managed media directory).
    fn capture(&self, out: &Path, request: CaptureRequest) -> Result<Capture, PlatformError>;

    /// Records a video into `out` (a new file in the managed media directory), returning
    /// once the recording is complete.
    fn record(&self, out: &Path, request: VideoRequest) -> Result<Video, PlatformError>;
}
