//! Still images from the camera.

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

/// Camera access.
pub trait Camera: Send + Sync {
    /// Captures a JPEG into `out` (a new file in the managed media directory).
    fn capture(&self, out: &Path, request: CaptureRequest) -> Result<Capture, PlatformError>;
}
