//! A simulated camera that writes real JPEGs of a test pattern, so that clients can store,
//! decode and show what they receive.
//!
//! The pattern is eight colour bars over a strip of 16 black or white cells holding the
//! frame number in binary (most significant bit on the left), so that consecutive captures
//! differ and a client can tell which one it got.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use jpeg_encoder::{rgb_to_ycbcr, Encoder, ImageBuffer, JpegColorType};

use crate::platform::real::camera::{check_request, preview_size};
use crate::platform::{Camera, Capture, CaptureRequest, PlatformError};

/// JPEG quality of the preview, as the real camera programs use for thumbnails.
const PREVIEW_QUALITY: u8 = 70;

/// White, yellow, cyan, green, magenta, red, blue, black: the classic bars.
const BARS: [(u8, u8, u8); 8] = [
    (235, 235, 235),
    (235, 235, 16),
    (16, 235, 235),
    (16, 235, 16),
    (235, 16, 235),
    (235, 16, 16),
    (16, 16, 235),
    (16, 16, 16),
];

/// Bits of the frame number shown in the bottom strip.
const COUNTER_BITS: u32 = 16;

/// The test pattern, produced a row at a time so that no full frame is held in memory.
struct TestPattern {
    width: u16,
    height: u16,
    frame: u32,
}

impl TestPattern {
    fn pixel(&self, x: u16, y: u16) -> (u8, u8, u8) {
        let (x, y, width, height) = (u32::from(x), u32::from(y), u32::from(self.width), u32::from(self.height));
        if y < height * 3 / 4 {
            BARS[(x * 8 / width) as usize % BARS.len()]
        } else {
            let bit = COUNTER_BITS - 1 - x * COUNTER_BITS / width;
            if (self.frame >> bit) & 1 == 1 {
                BARS[0]
            } else {
                BARS[7]
            }
        }
    }
}

impl ImageBuffer for TestPattern {
    fn get_jpeg_color_type(&self) -> JpegColorType {
        JpegColorType::Ycbcr
    }

    fn width(&self) -> u16 {
        self.width
    }

    fn height(&self) -> u16 {
        self.height
    }

    fn fill_buffers(&self, y: u16, buffers: &mut [Vec<u8>; 4]) {
        for x in 0..self.width {
            let (r, g, b) = self.pixel(x, y);
            let (luma, cb, cr) = rgb_to_ycbcr(r, g, b);
            buffers[0].push(luma);
            buffers[1].push(cb);
            buffers[2].push(cr);
        }
    }
}

fn encode(width: u32, height: u32, quality: u8, frame: u32) -> Result<Vec<u8>, PlatformError> {
    let side = |n: u32| u16::try_from(n).map_err(|_| PlatformError::Invalid(format!("{n} pixels is too large")));
    let pattern = TestPattern { width: side(width)?, height: side(height)?, frame };
    let mut jpeg = Vec::new();
    Encoder::new(&mut jpeg, quality)
        .encode_image(pattern)
        .map_err(|e| PlatformError::Failed(format!("cannot encode the test pattern: {e}")))?;
    Ok(jpeg)
}

/// The simulated camera.
pub struct SimCamera {
    frames: AtomicU32,
}

impl SimCamera {
    pub fn new() -> Self {
        SimCamera { frames: AtomicU32::new(0) }
    }
}

impl Default for SimCamera {
    fn default() -> Self {
        Self::new()
    }
}

impl Camera for SimCamera {
    fn capture(&self, out: &Path, request: CaptureRequest) -> Result<Capture, PlatformError> {
        check_request(request)?;
        let frame = self.frames.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let image = encode(request.width, request.height, request.quality, frame)?;
        let (preview_width, preview_height) = preview_size(request.width, request.height, request.preview_max_side);
        let preview_jpeg = encode(preview_width, preview_height, PREVIEW_QUALITY, frame)?;
        let failed = |e: std::io::Error| PlatformError::Failed(format!("cannot write {}: {e}", out.display()));
        fs::write(out, &image).map_err(failed)?;
        let size_bytes = fs::metadata(out).map_err(failed)?.len();
        Ok(Capture {
            path: out.to_path_buf(),
            width: request.width,
            height: request.height,
            size_bytes,
            preview_jpeg,
            source: "simulated".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::platform::real::camera::jpeg_dimensions;

    const REQUEST: CaptureRequest = CaptureRequest { width: 640, height: 480, quality: 85, preview_max_side: 160 };

    fn is_complete_jpeg(bytes: &[u8]) -> bool {
        bytes.starts_with(&[0xFF, 0xD8]) && bytes.ends_with(&[0xFF, 0xD9])
    }

    #[test]
    fn a_capture_writes_a_complete_jpeg_of_the_requested_size() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("still.jpg");
        let capture = SimCamera::new().capture(&out, REQUEST).unwrap();
        let file = fs::read(&out).unwrap();
        assert!(is_complete_jpeg(&file));
        assert_eq!(jpeg_dimensions(&file), Some((640, 480)));
        assert_eq!(capture.path, out);
        assert_eq!((capture.width, capture.height), (640, 480));
        assert_eq!(capture.size_bytes, file.len() as u64);
        assert_eq!(capture.source, "simulated");
    }

    #[test]
    fn the_preview_is_a_smaller_jpeg_within_the_requested_side() {
        let dir = tempfile::tempdir().unwrap();
        let capture = SimCamera::new().capture(&dir.path().join("still.jpg"), REQUEST).unwrap();
        assert!(is_complete_jpeg(&capture.preview_jpeg));
        assert_eq!(jpeg_dimensions(&capture.preview_jpeg), Some((160, 120)));
        assert!(capture.preview_jpeg.len() < capture.size_bytes as usize);
        let portrait = CaptureRequest { width: 300, height: 1000, ..REQUEST };
        let capture = SimCamera::new().capture(&dir.path().join("tall.jpg"), portrait).unwrap();
        assert_eq!(jpeg_dimensions(&capture.preview_jpeg), Some((48, 160)));
    }

    #[test]
    fn consecutive_captures_differ_by_their_frame_counter() {
        let dir = tempfile::tempdir().unwrap();
        let camera = SimCamera::new();
        let first = camera.capture(&dir.path().join("1.jpg"), REQUEST).unwrap();
        let second = camera.capture(&dir.path().join("2.jpg"), REQUEST).unwrap();
        assert_ne!(fs::read(&first.path).unwrap(), fs::read(&second.path).unwrap());
        let pattern = |frame| TestPattern { width: 160, height: 120, frame };
        // Frame 1 lights only the rightmost cell of the strip; frame 2 the one beside it.
        assert_eq!(pattern(1).pixel(159, 119), BARS[0]);
        assert_eq!(pattern(1).pixel(149, 119), BARS[7]);
        assert_eq!(pattern(2).pixel(149, 119), BARS[0]);
        assert_eq!(pattern(2).pixel(0, 0), BARS[0]);
        assert_eq!(pattern(2).pixel(159, 0), BARS[7]);
    }

    #[test]
    fn an_unwritable_path_fails_naming_it() {
        let err = SimCamera::new().capture(Path::new("/nonexistent/dir/still.jpg"), REQUEST).unwrap_err();
        assert!(matches!(&err, PlatformError::Failed(m) if m.contains("/nonexistent/dir/still.jpg")), "{err:?}");
    }

    #[test]
    fn impossible_requests_are_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.jpg");
        let camera = SimCamera::new();
        assert!(matches!(camera.capture(&out, CaptureRequest { width: 0, ..REQUEST }), Err(PlatformError::Invalid(_))));
        assert!(matches!(
            camera.capture(&out, CaptureRequest { quality: 101, ..REQUEST }),
            Err(PlatformError::Invalid(_))
        ));
        assert!(!out.exists());
    }
}
