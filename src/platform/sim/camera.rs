//! A simulated camera that writes real JPEGs of a test pattern, so that clients can store,
//! decode and show what they receive.
//!
//! The pattern is eight colour bars over a strip of 16 black or white cells holding the
//! frame number in binary (most significant bit on the left), so that consecutive captures
//! differ and a client can tell which one it got.
//!
//! Videos are real Motion JPEG streams of the same pattern, the counter advancing with every
//! frame. They are written as fast as they can be encoded rather than in real time, and hold
//! at most [`MAX_VIDEO_FRAMES`] frames (fewer for large frames), so that a long simulated
//! recording stays quick.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use jpeg_encoder::{rgb_to_ycbcr, Encoder, ImageBuffer, JpegColorType};

use crate::platform::camera::{Video, VideoRequest};
use crate::platform::real::camera::{check_request, check_video_request, preview_size};
use crate::platform::{Camera, Capture, CaptureRequest, PlatformError};

/// JPEG quality of the preview, as the real camera programs use for thumbnails.
const PREVIEW_QUALITY: u8 = 70;

/// JPEG quality of video frames (rpicam-vid's default for Motion JPEG).
const VIDEO_QUALITY: u8 = 50;

/// The most frames a simulated video holds.
const MAX_VIDEO_FRAMES: u32 = 300;

/// The most pixels, all frames together, a simulated video holds: 300 frames of 320x240.
const MAX_VIDEO_PIXELS: u64 = 300 * 320 * 240;

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

/// How many frames a simulated recording holds: one per frame period of the duration (at
/// least one), within [`MAX_VIDEO_FRAMES`] and [`MAX_VIDEO_PIXELS`].
fn video_frames(request: VideoRequest) -> u32 {
    let wanted = (u64::from(request.duration_ms) * u64::from(request.framerate)).div_ceil(1000);
    let pixels = u64::from(request.width) * u64::from(request.height);
    let limit = u64::from(MAX_VIDEO_FRAMES).min(MAX_VIDEO_PIXELS / pixels.max(1)).max(1);
    u32::try_from(wanted.clamp(1, limit)).unwrap_or(MAX_VIDEO_FRAMES)
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

    fn record(&self, out: &Path, request: VideoRequest) -> Result<Video, PlatformError> {
        check_video_request(request)?;
        let frames = video_frames(request);
        let first = self.frames.fetch_add(frames, Ordering::Relaxed).wrapping_add(1);
        let failed = |e: std::io::Error| PlatformError::Failed(format!("cannot write {}: {e}", out.display()));
        let write = || -> Result<u64, PlatformError> {
            let mut file = BufWriter::new(File::create(out).map_err(failed)?);
            for i in 0..frames {
                file.write_all(&encode(request.width, request.height, VIDEO_QUALITY, first.wrapping_add(i))?)
                    .map_err(failed)?;
            }
            file.flush().map_err(failed)?;
            Ok(fs::metadata(out).map_err(failed)?.len())
        };
        let size_bytes = write().inspect_err(|_| {
            // Leave no half-written video in the media directory.
            let _ = fs::remove_file(out);
        })?;
        Ok(Video {
            path: out.to_path_buf(),
            width: request.width,
            height: request.height,
            duration_ms: request.duration_ms,
            frames: Some(frames),
            size_bytes,
            format: "mjpeg".into(),
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

    const VIDEO: VideoRequest = VideoRequest { duration_ms: 1000, width: 320, height: 240, framerate: 5 };

    /// The frames of a Motion JPEG stream, split where each SOI begins.
    fn split_frames(stream: &[u8]) -> Vec<&[u8]> {
        let starts: Vec<usize> =
            stream.windows(3).enumerate().filter(|(_, w)| *w == [0xFF, 0xD8, 0xFF]).map(|(i, _)| i).collect();
        let ends = starts.iter().skip(1).copied().chain([stream.len()]);
        starts.iter().zip(ends).map(|(&start, end)| &stream[start..end]).collect()
    }

    #[test]
    fn a_recording_is_a_motion_jpeg_stream_of_one_frame_per_period() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("clip.mjpeg");
        let video = SimCamera::new().record(&out, VIDEO).unwrap();
        let stream = fs::read(&out).unwrap();
        let frames = split_frames(&stream);
        assert_eq!(frames.len(), 5);
        assert_eq!(frames.concat(), stream, "nothing outside the frames");
        for frame in &frames {
            assert!(is_complete_jpeg(frame));
            assert_eq!(jpeg_dimensions(frame), Some((320, 240)));
        }
        assert_eq!(
            video,
            Video {
                path: out,
                width: 320,
                height: 240,
                duration_ms: 1000,
                frames: Some(5),
                size_bytes: stream.len() as u64,
                format: "mjpeg".into(),
                source: "simulated".into(),
            }
        );
    }

    #[test]
    fn the_frame_counter_advances_within_a_recording_and_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let camera = SimCamera::new();
        let request = VideoRequest { duration_ms: 500, width: 64, height: 48, framerate: 8 };
        camera.record(&dir.path().join("clip.mjpeg"), request).unwrap();
        let stream = fs::read(dir.path().join("clip.mjpeg")).unwrap();
        let frames = split_frames(&stream);
        assert_eq!(frames.len(), 4);
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(*frame, encode(64, 48, VIDEO_QUALITY, i as u32 + 1).unwrap(), "frame {i}");
        }
        assert!(frames.windows(2).all(|w| w[0] != w[1]));
        // The next still carries the number after the video's last frame.
        let still = CaptureRequest { width: 64, height: 48, ..REQUEST };
        let capture = camera.capture(&dir.path().join("after.jpg"), still).unwrap();
        assert_eq!(fs::read(capture.path).unwrap(), encode(64, 48, still.quality, 5).unwrap());
    }

    #[test]
    fn the_frame_count_rounds_up_and_stays_within_the_limits() {
        let at = |duration_ms, width, height, framerate| {
            video_frames(VideoRequest { duration_ms, width, height, framerate })
        };
        assert_eq!(at(1000, 320, 240, 5), 5);
        assert_eq!(at(1, 320, 240, 1), 1);
        assert_eq!(at(1100, 320, 240, 10), 11);
        assert_eq!(at(60_000, 320, 240, 60), MAX_VIDEO_FRAMES);
        assert_eq!(at(u32::MAX, 1, 1, u32::MAX), MAX_VIDEO_FRAMES);
        assert_eq!(at(60_000, 640, 480, 30), 75);
        assert_eq!(at(60_000, 4056, 3040, 30), 1);
        assert_eq!(at(60_000, 65_535, 65_535, 30), 1);
    }

    #[test]
    fn a_recording_that_cannot_be_written_fails_naming_the_path_and_leaves_nothing() {
        let err = SimCamera::new().record(Path::new("/nonexistent/dir/clip.mjpeg"), VIDEO).unwrap_err();
        assert!(matches!(&err, PlatformError::Failed(m) if m.contains("/nonexistent/dir/clip.mjpeg")), "{err:?}");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("clip.mjpeg");
        for bad in [
            VideoRequest { duration_ms: 0, ..VIDEO },
            VideoRequest { framerate: 0, ..VIDEO },
            VideoRequest { width: 70_000, ..VIDEO },
        ] {
            assert!(matches!(SimCamera::new().record(&out, bad), Err(PlatformError::Invalid(_))), "{bad:?}");
        }
        assert!(!out.exists());
    }
}
