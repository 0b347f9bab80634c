//! Still capture and video recording with the Raspberry Pi camera programs (`rpicam-still`
//! and `rpicam-vid`, called `libcamera-still` and `libcamera-vid` on older releases).
//!
//! The preview comes from the EXIF thumbnail the program embeds in the same JPEG: asking for
//! a second, small capture would run the camera pipeline twice. Videos are Motion JPEG, a
//! plain sequence of JPEG frames that stays playable without a container and whose frames
//! can be counted without a demuxer. The program runs from an argument vector, never a
//! shell, and is killed when it overruns its time limit.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::platform::camera::{Video, VideoRequest};
use crate::platform::{Camera, Capture, CaptureRequest, PlatformError};

/// The programs tried, in order: the current name first, then the one it replaced.
const PROGRAMS: [&str; 2] = ["rpicam-still", "libcamera-still"];

/// The video programs, in the same order.
const VIDEO_PROGRAMS: [&str; 2] = ["rpicam-vid", "libcamera-vid"];

/// How long a capture may take, camera start-up included, which takes seconds on the slower
/// boards.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a recording may take beyond its duration: camera start-up and the encoder's
/// last frames.
const VIDEO_OVERHEAD: Duration = Duration::from_secs(30);

/// How much of a file is read at a time when counting its frames.
const SCAN_CHUNK: usize = 256 * 1024;

/// The longest side of the EXIF thumbnail. The thumbnail must fit in the 64 KiB APP1
/// segment, and rpicam-still gives up when even its lowest quality does not fit; 640 pixels
/// stays far below that limit.
const MAX_THUMBNAIL_SIDE: u32 = 640;

/// JPEG quality of the thumbnail (rpicam-still's own default).
const THUMBNAIL_QUALITY: u8 = 70;

/// How much of the file is read to find the thumbnail and the frame header: the APP1
/// segment is at most 64 KiB and comes first, the tables and frame header follow it.
const HEADER_READ_LIMIT: u64 = 256 * 1024;

/// Rejects capture requests no camera program can satisfy.
pub(in crate::platform) fn check_request(request: CaptureRequest) -> Result<(), PlatformError> {
    if !(1..=u32::from(u16::MAX)).contains(&request.width) || !(1..=u32::from(u16::MAX)).contains(&request.height) {
        return Err(PlatformError::Invalid(format!(
            "image size must be 1 to 65535 pixels a side (the JPEG limit), not {}x{}",
            request.width, request.height
        )));
    }
    if !(1..=100).contains(&request.quality) {
        return Err(PlatformError::Invalid(format!("JPEG quality is 1 to 100, not {}", request.quality)));
    }
    if request.preview_max_side < 16 {
        return Err(PlatformError::Invalid(format!(
            "the preview needs at least 16 pixels on its longest side, not {}",
            request.preview_max_side
        )));
    }
    Ok(())
}

/// Rejects recording requests no camera program can satisfy.
pub(in crate::platform) fn check_video_request(request: VideoRequest) -> Result<(), PlatformError> {
    if !(1..=u32::from(u16::MAX)).contains(&request.width) || !(1..=u32::from(u16::MAX)).contains(&request.height) {
        return Err(PlatformError::Invalid(format!(
            "video size must be 1 to 65535 pixels a side (the JPEG limit), not {}x{}",
            request.width, request.height
        )));
    }
    if request.duration_ms == 0 {
        return Err(PlatformError::Invalid("a recording needs a duration of at least 1 ms".into()));
    }
    if request.framerate == 0 {
        return Err(PlatformError::Invalid("a recording needs a frame rate of at least 1 per second".into()));
    }
    Ok(())
}

/// Counts the JPEG frames of a Motion JPEG stream fed to it in pieces of any size.
///
/// A frame starts with SOI (`FF D8`) followed by the `FF` of its first segment. Inside the
/// compressed data an `FF` byte is always followed by `00` or a restart marker, so the
/// sequence appears only where a frame begins (the camera programs embed no thumbnails in
/// video frames).
#[derive(Default)]
struct FrameCounter {
    frames: u64,
    /// The last two bytes seen, for a start split across two pieces.
    tail: [Option<u8>; 2],
}

impl FrameCounter {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.tail == [Some(0xFF), Some(0xD8)] && b == 0xFF {
                self.frames += 1;
            }
            self.tail = [self.tail[1], Some(b)];
        }
    }

    fn frames(&self) -> u64 {
        self.frames
    }
}

/// The size of a preview of a `width`x`height` image: the same aspect ratio, the longest side
/// at most `max_side` and never larger than the image itself.
pub(in crate::platform) fn preview_size(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let longest = width.max(height).max(1);
    let side = max_side.min(longest).max(1);
    let scale = |n: u32| ((u64::from(n) * u64::from(side) + u64::from(longest) / 2) / u64::from(longest)).max(1);
    // Both results are at most `side`, a u32.
    (u32::try_from(scale(width)).unwrap_or(side), u32::try_from(scale(height)).unwrap_or(side))
}

/// Iterates over the marker segments of a JPEG up to the start of the scan: each item is the
/// marker byte and the segment's payload (without the length field).
fn segments(jpeg: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut pos = if jpeg.starts_with(&[0xFF, 0xD8]) { 2 } else { jpeg.len() };
    std::iter::from_fn(move || loop {
        if jpeg.get(pos)? != &0xFF {
            return None;
        }
        let marker = *jpeg.get(pos + 1)?;
        match marker {
            // Fill bytes before a marker.
            0xFF => pos += 1,
            // Markers without a length field.
            0x01 | 0xD0..=0xD7 => pos += 2,
            // Start of scan or end of image: the headers are over.
            0xDA | 0xD9 => return None,
            _ => {
                let length = usize::from(u16::from_be_bytes([*jpeg.get(pos + 2)?, *jpeg.get(pos + 3)?]));
                let payload = jpeg.get(pos + 4..pos + 2 + length.max(2))?;
                pos += 2 + length.max(2);
                return Some((marker, payload));
            }
        }
    })
}

/// The width and height in a JPEG's frame header.
pub(in crate::platform) fn jpeg_dimensions(jpeg: &[u8]) -> Option<(u32, u32)> {
    segments(jpeg).find_map(|(marker, payload)| {
        // SOF0 to SOF15, less DHT (C4), JPG (C8) and DAC (CC), which share the range.
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            let height = u16::from_be_bytes([*payload.get(1)?, *payload.get(2)?]);
            let width = u16::from_be_bytes([*payload.get(3)?, *payload.get(4)?]);
            Some((u32::from(width), u32::from(height)))
        } else {
            None
        }
    })
}

/// The JPEG thumbnail embedded in the EXIF (APP1) segment of a JPEG, if there is one.
///
/// The thumbnail is found through IFD1's JPEGInterchangeFormat offset and length, as EXIF
/// defines; when those tags are missing or wrong, the first complete SOI..EOI run inside the
/// segment is taken instead. Either way the result starts with SOI and ends with EOI.
pub(in crate::platform) fn exif_thumbnail(jpeg: &[u8]) -> Option<&[u8]> {
    let tiff = segments(jpeg)
        .find_map(|(marker, payload)| (marker == 0xE1).then(|| payload.strip_prefix(b"Exif\0\0")).flatten())?;
    let is_jpeg = |b: &[u8]| b.len() >= 4 && b.starts_with(&[0xFF, 0xD8]) && b.ends_with(&[0xFF, 0xD9]);
    if let Some(thumbnail) = ifd1_thumbnail(tiff).filter(|t| is_jpeg(t)) {
        return Some(thumbnail);
    }
    let start = tiff.windows(3).position(|w| w == [0xFF, 0xD8, 0xFF])?;
    let end = tiff[start..].windows(2).rposition(|w| w == [0xFF, 0xD9])? + start + 2;
    Some(&tiff[start..end]).filter(|t| is_jpeg(t))
}

/// Follows a TIFF header to IFD1 and slices out the thumbnail it points at.
fn ifd1_thumbnail(tiff: &[u8]) -> Option<&[u8]> {
    let little = match tiff.get(..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b = [*tiff.get(at)?, *tiff.get(at + 1)?];
        Some(if little { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b = [*tiff.get(at)?, *tiff.get(at + 1)?, *tiff.get(at + 2)?, *tiff.get(at + 3)?];
        Some(if little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    };
    if u16_at(2)? != 42 {
        return None;
    }
    let ifd0 = usize::try_from(u32_at(4)?).ok()?;
    let ifd0_entries = usize::from(u16_at(ifd0)?);
    let ifd1 = usize::try_from(u32_at(ifd0.checked_add(2 + 12 * ifd0_entries)?)?).ok()?;
    if ifd1 == 0 {
        return None;
    }
    let (mut offset, mut length) = (None, None);
    for i in 0..usize::from(u16_at(ifd1)?) {
        let entry = ifd1.checked_add(2 + 12 * i)?;
        // Both tags are LONG by the standard; SHORT is accepted too, as some writers use it.
        let value = match u16_at(entry + 2)? {
            3 => u32::from(u16_at(entry + 8)?),
            4 => u32_at(entry + 8)?,
            _ => continue,
        };
        match u16_at(entry)? {
            0x0201 => offset = Some(usize::try_from(value).ok()?),
            0x0202 => length = Some(usize::try_from(value).ok()?),
            _ => {}
        }
    }
    let offset = offset?;
    tiff.get(offset..offset.checked_add(length?)?)
}

/// The last lines of a program's diagnostics, short enough for an error message.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(4)..].join(" | ");
    if tail.len() > 600 {
        let mut cut = tail.len() - 600;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        format!("...{}", &tail[cut..])
    } else {
        tail
    }
}

/// Still capture and video recording by running the camera programs.
pub struct CliCamera {
    /// Still programs, tried in order.
    programs: Vec<String>,
    timeout: Duration,
    /// Video programs, tried in order.
    video_programs: Vec<String>,
    /// Time allowed to a recording beyond its duration.
    video_overhead: Duration,
}

impl CliCamera {
    pub fn new() -> Self {
        CliCamera {
            programs: PROGRAMS.iter().map(|p| p.to_string()).collect(),
            timeout: CAPTURE_TIMEOUT,
            video_programs: VIDEO_PROGRAMS.iter().map(|p| p.to_string()).collect(),
            video_overhead: VIDEO_OVERHEAD,
        }
    }

    /// Starts the first of `programs` that exists, in a process group of its own so that a
    /// time-out stops any helper it started too.
    fn spawn<'a>(programs: &'a [String], args: &[OsString]) -> Result<(Child, &'a str), PlatformError> {
        for program in programs {
            let spawned = Command::new(program)
                .args(args)
                // libcamera logs every stage at INFO to stderr; only errors help a failure message.
                .env("LIBCAMERA_LOG_LEVELS", "*:ERROR")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn();
            match spawned {
                Ok(child) => return Ok((child, program)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(PlatformError::Failed(format!("cannot run {program}: {e}"))),
            }
        }
        let names: Vec<String> = programs.iter().map(|p| program_name(p)).collect();
        let missing = match names.as_slice() {
            [one] => format!("{one} is not installed"),
            [first @ .., last] => format!("neither {} nor {last} is installed", first.join(", ")),
            [] => "no camera program is configured".to_string(),
        };
        Err(PlatformError::Unavailable(format!("{missing}: apt install rpicam-apps")))
    }

    /// Runs the first of `programs` that exists to completion or to `timeout`; returns the
    /// program's name.
    fn run(programs: &[String], args: &[OsString], timeout: Duration) -> Result<String, PlatformError> {
        let (mut child, program) = Self::spawn(programs, args)?;
        let name = program_name(program);
        let stderr = StderrTail::collect(&mut child);
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    if let Ok(group) = i32::try_from(child.id()) {
                        // Errors mean the group is already gone, which is the aim.
                        let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!("{name} did not finish within {} s and was stopped", timeout.as_secs()));
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(e) => break Err(format!("cannot wait for {name}: {e}")),
            }
        };
        let tail = stderr.finish();
        match status {
            Ok(status) if status.success() => Ok(name),
            Ok(status) if tail.to_ascii_lowercase().contains("no cameras available") => {
                Err(PlatformError::Unavailable(format!(
                    "{name} found no camera ({status}): check the ribbon cable and camera_auto_detect in config.txt"
                )))
            }
            Ok(status) => Err(PlatformError::Failed(format!("{name} failed ({status}): {tail}"))),
            Err(reason) if tail.is_empty() => Err(PlatformError::Failed(reason)),
            Err(reason) => Err(PlatformError::Failed(format!("{reason}: {tail}"))),
        }
    }
}

/// A program's file name, as error messages and results show it.
fn program_name(program: &str) -> String {
    Path::new(program).file_name().map_or(program.to_string(), |n| n.to_string_lossy().into_owned())
}

impl Default for CliCamera {
    fn default() -> Self {
        Self::new()
    }
}

/// A program's stderr, read on a thread so that a chatty program never blocks on a full pipe.
struct StderrTail {
    buffer: Arc<Mutex<Vec<u8>>>,
    done: Option<mpsc::Receiver<()>>,
}

impl StderrTail {
    /// Only the end of the output is kept: that is where the reason for a failure is.
    const KEEP: usize = 16 * 1024;

    fn collect(child: &mut Child) -> StderrTail {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let done = child.stderr.take().map(|mut stderr| {
            let (tx, rx) = mpsc::channel();
            let shared = Arc::clone(&buffer);
            // Starting a thread fails only when the system is out of resources; the program
            // then loses its stderr and fails, which the exit status reports.
            let _ = thread::Builder::new().name("camera-stderr".into()).spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = stderr.read(&mut chunk) {
                    let mut kept = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    kept.extend_from_slice(&chunk[..n]);
                    let excess = kept.len().saturating_sub(Self::KEEP);
                    kept.drain(..excess);
                }
                let _ = tx.send(());
            });
            rx
        });
        StderrTail { buffer, done }
    }

    /// The last lines, short enough for an error message. Waits a moment for the pipe to
    /// close, but not for a stray process that inherited it.
    fn finish(self) -> String {
        if let Some(done) = self.done {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
        let kept = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        stderr_tail(&kept)
    }
}

impl Camera for CliCamera {
    fn capture(&self, out: &Path, request: CaptureRequest) -> Result<Capture, PlatformError> {
        check_request(request)?;
        let (thumb_w, thumb_h) =
            preview_size(request.width, request.height, request.preview_max_side.min(MAX_THUMBNAIL_SIDE));
        // The path goes to the program as it is: it need not be UTF-8.
        let mut args: Vec<OsString> = [
            "-n".to_string(),
            "-t".into(),
            "1".into(),
            "--width".into(),
            request.width.to_string(),
            "--height".into(),
            request.height.to_string(),
            "-q".into(),
            request.quality.to_string(),
            "--thumb".into(),
            format!("{thumb_w}:{thumb_h}:{THUMBNAIL_QUALITY}"),
            "-o".into(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        args.push(out.as_os_str().to_owned());
        let result =
            Self::run(&self.programs, &args, self.timeout).and_then(|source| Ok((source, read_capture(out, request)?)));
        let (source, (size_bytes, width, height, preview_jpeg)) = result.inspect_err(|_| {
            // Leave no half-written image in the media directory.
            let _ = fs::remove_file(out);
        })?;
        Ok(Capture { path: out.to_path_buf(), width, height, size_bytes, preview_jpeg, source })
    }

    fn record(&self, out: &Path, request: VideoRequest) -> Result<Video, PlatformError> {
        check_video_request(request)?;
        let mut args: Vec<OsString> = [
            "-n".to_string(),
            "-t".into(),
            request.duration_ms.to_string(),
            "--width".into(),
            request.width.to_string(),
            "--height".into(),
            request.height.to_string(),
            "--framerate".into(),
            request.framerate.to_string(),
            "--codec".into(),
            "mjpeg".into(),
            "-o".into(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        args.push(out.as_os_str().to_owned());
        let timeout = Duration::from_millis(u64::from(request.duration_ms)) + self.video_overhead;
        let result =
            Self::run(&self.video_programs, &args, timeout).and_then(|source| Ok((source, read_video(out, request)?)));
        let (source, (size_bytes, width, height, frames)) = result.inspect_err(|_| {
            // Leave no half-written video in the media directory.
            let _ = fs::remove_file(out);
        })?;
        Ok(Video {
            path: out.to_path_buf(),
            width,
            height,
            duration_ms: request.duration_ms,
            frames: Some(frames),
            size_bytes,
            format: "mjpeg".into(),
            source,
        })
    }
}

/// Size, dimensions and frame count of the Motion JPEG file the program wrote.
fn read_video(out: &Path, request: VideoRequest) -> Result<(u64, u32, u32, u32), PlatformError> {
    let unreadable = |e: io::Error| PlatformError::Failed(format!("cannot read the recording {}: {e}", out.display()));
    let mut file = File::open(out).map_err(unreadable)?;
    let size_bytes = file.metadata().map_err(unreadable)?.len();
    let mut counter = FrameCounter::default();
    let mut header = Vec::new();
    let mut chunk = vec![0u8; SCAN_CHUNK];
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(unreadable(e)),
        };
        counter.feed(&chunk[..n]);
        if header.len() < SCAN_CHUNK {
            header.extend_from_slice(&chunk[..n.min(SCAN_CHUNK - header.len())]);
        }
    }
    if counter.frames() == 0 {
        return Err(PlatformError::Failed(format!(
            "the recording {} holds no JPEG frames ({size_bytes} bytes)",
            out.display()
        )));
    }
    let (width, height) = jpeg_dimensions(&header).unwrap_or((request.width, request.height));
    Ok((size_bytes, width, height, u32::try_from(counter.frames()).unwrap_or(u32::MAX)))
}

/// Size, dimensions and preview of the file the program wrote.
fn read_capture(out: &Path, request: CaptureRequest) -> Result<(u64, u32, u32, Vec<u8>), PlatformError> {
    let unreadable = |e: io::Error| PlatformError::Failed(format!("cannot read the capture {}: {e}", out.display()));
    let size_bytes = fs::metadata(out).map_err(unreadable)?.len();
    let mut header = Vec::new();
    File::open(out).map_err(unreadable)?.take(HEADER_READ_LIMIT).read_to_end(&mut header).map_err(unreadable)?;
    let preview = exif_thumbnail(&header).ok_or_else(|| {
        PlatformError::Failed(format!("the capture {} has no EXIF thumbnail to use as a preview", out.display()))
    })?;
    let (width, height) = jpeg_dimensions(&header).unwrap_or((request.width, request.height));
    Ok((size_bytes, width, height, preview.to_vec()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A real JPEG of `width`x`height`, with `app1` as its APP1 segment when given.
    fn encode(width: u16, height: u16, app1: Option<&[u8]>) -> Vec<u8> {
        let pixels: Vec<u8> = (0..usize::from(width) * usize::from(height) * 3).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut out, 80);
        if let Some(app1) = app1 {
            encoder.add_app_segment(1, app1).unwrap();
        }
        encoder.encode(&pixels, width, height, jpeg_encoder::ColorType::Rgb).unwrap();
        out
    }

    /// An EXIF block laid out as rpicam-still writes it: IFD0, then IFD1 pointing at the
    /// thumbnail appended after the directories.
    fn exif_with_thumbnail(thumbnail: &[u8], little: bool) -> Vec<u8> {
        let u16b = |v: u16| if little { v.to_le_bytes() } else { v.to_be_bytes() };
        let u32b = |v: u32| if little { v.to_le_bytes() } else { v.to_be_bytes() };
        let entry = |tag: u16, kind: u16, value: u32| {
            let mut e = Vec::new();
            e.extend(u16b(tag));
            e.extend(u16b(kind));
            e.extend(u32b(1));
            if kind == 3 {
                e.extend(u16b(value as u16));
                e.extend([0, 0]);
            } else {
                e.extend(u32b(value));
            }
            e
        };
        let mut tiff = Vec::new();
        tiff.extend(if little { b"II" } else { b"MM" });
        tiff.extend(u16b(42));
        tiff.extend(u32b(8));
        // IFD0 at 8: one entry (Orientation), then the offset of IFD1.
        tiff.extend(u16b(1));
        tiff.extend(entry(0x0112, 3, 1));
        let ifd1 = 8 + 2 + 12 + 4;
        tiff.extend(u32b(ifd1));
        // IFD1: Compression, JPEGInterchangeFormat, JPEGInterchangeFormatLength.
        let thumb_at = ifd1 + 2 + 3 * 12 + 4;
        tiff.extend(u16b(3));
        tiff.extend(entry(0x0103, 3, 6));
        tiff.extend(entry(0x0201, 4, thumb_at));
        tiff.extend(entry(0x0202, 4, thumbnail.len() as u32));
        tiff.extend(u32b(0));
        tiff.extend(thumbnail);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend(tiff);
        app1
    }

    #[test]
    fn the_exif_thumbnail_is_found_through_ifd1_in_either_byte_order() {
        let thumbnail = encode(32, 24, None);
        for little in [true, false] {
            let jpeg = encode(320, 240, Some(&exif_with_thumbnail(&thumbnail, little)));
            assert_eq!(exif_thumbnail(&jpeg), Some(&thumbnail[..]), "little endian: {little}");
            assert_eq!(jpeg_dimensions(&jpeg), Some((320, 240)));
        }
    }

    #[test]
    fn a_thumbnail_without_ifd1_tags_is_found_by_its_start_and_end_markers() {
        let thumbnail = encode(16, 16, None);
        let mut app1 = b"Exif\0\0II\x2a\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec();
        app1.extend(&thumbnail);
        app1.extend([0, 0, 0]);
        let jpeg = encode(64, 48, Some(&app1));
        assert_eq!(exif_thumbnail(&jpeg), Some(&thumbnail[..]));
    }

    #[test]
    fn a_jpeg_without_a_thumbnail_or_with_garbage_yields_none_and_no_panic() {
        assert_eq!(exif_thumbnail(&encode(64, 48, None)), None);
        assert_eq!(exif_thumbnail(&[]), None);
        assert_eq!(exif_thumbnail(&[0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xFF, b'E']), None);
        let mut truncated = encode(64, 48, Some(&exif_with_thumbnail(&encode(16, 16, None), true)));
        truncated.truncate(40);
        assert_eq!(exif_thumbnail(&truncated), None);
        // An IFD1 offset pointing past the end.
        let mut bad = exif_with_thumbnail(&encode(16, 16, None), true);
        let at = 6 + 8 + 2 + 12 + 4 + 2 + 12 + 8;
        bad[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let jpeg = encode(64, 48, Some(&bad));
        assert!(exif_thumbnail(&jpeg).is_some_and(|t| t.starts_with(&[0xFF, 0xD8]) && t.ends_with(&[0xFF, 0xD9])));
    }

    #[test]
    fn previews_keep_the_aspect_ratio_and_never_exceed_the_image() {
        assert_eq!(preview_size(4056, 3040, 320), (320, 240));
        assert_eq!(preview_size(1080, 1920, 320), (180, 320));
        assert_eq!(preview_size(100, 50, 320), (100, 50));
        assert_eq!(preview_size(10_000, 1, 64), (64, 1));
    }

    #[test]
    fn requests_outside_what_a_jpeg_can_hold_are_refused() {
        let ok = CaptureRequest { width: 640, height: 480, quality: 90, preview_max_side: 160 };
        assert_eq!(check_request(ok), Ok(()));
        assert!(check_request(CaptureRequest { width: 0, ..ok }).is_err());
        assert!(check_request(CaptureRequest { height: 70_000, ..ok }).is_err());
        assert!(check_request(CaptureRequest { quality: 0, ..ok }).is_err());
        assert!(check_request(CaptureRequest { preview_max_side: 0, ..ok }).is_err());
    }

    fn camera_running(script: &str, dir: &Path) -> CliCamera {
        let program = dir.join("fake-still");
        fs::write(&program, script).unwrap();
        fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
        CliCamera {
            programs: vec![dir.join("missing-still").display().to_string(), program.display().to_string()],
            timeout: Duration::from_millis(500),
            video_programs: vec![dir.join("missing-vid").display().to_string(), program.display().to_string()],
            video_overhead: Duration::from_millis(500),
        }
    }

    /// Captures, retrying while the fake program is "busy": another test forking at the
    /// moment the script was written holds a write handle on it until that child execs.
    fn capture(camera: &CliCamera, out: &Path) -> Result<Capture, PlatformError> {
        for _ in 0..100 {
            match camera.capture(out, REQUEST) {
                Err(PlatformError::Failed(m)) if m.contains("os error 26") => thread::sleep(Duration::from_millis(10)),
                other => return other,
            }
        }
        camera.capture(out, REQUEST)
    }

    const REQUEST: CaptureRequest = CaptureRequest { width: 64, height: 48, quality: 80, preview_max_side: 16 };

    #[test]
    fn without_either_program_the_camera_is_unavailable_with_an_install_hint() {
        let camera = CliCamera {
            programs: vec!["/nonexistent/rpicam-still".into(), "/nonexistent/libcamera-still".into()],
            ..CliCamera::new()
        };
        let err = camera.capture(Path::new("/nonexistent/out.jpg"), REQUEST).unwrap_err();
        assert_eq!(
            err,
            PlatformError::Unavailable(
                "neither rpicam-still nor libcamera-still is installed: apt install rpicam-apps".into()
            )
        );
    }

    #[test]
    fn a_capture_reports_the_file_its_dimensions_and_the_embedded_thumbnail() {
        let dir = tempfile::tempdir().unwrap();
        let thumbnail = encode(16, 12, None);
        let fixture = dir.path().join("fixture.jpg");
        fs::write(&fixture, encode(64, 48, Some(&exif_with_thumbnail(&thumbnail, true)))).unwrap();
        // Records its arguments and copies the fixture to the path after -o.
        let args = dir.path().join("args");
        let script = format!(
            "#!/bin/sh\necho \"$*\" > {}\nwhile [ $# -gt 0 ]; do [ \"$1\" = -o ] && cp {} \"$2\"; shift; done\n",
            args.display(),
            fixture.display()
        );
        let camera = camera_running(&script, dir.path());
        let out = dir.path().join("shot.jpg");
        let capture = capture(&camera, &out).unwrap();
        assert_eq!(capture.path, out);
        assert_eq!((capture.width, capture.height), (64, 48));
        assert_eq!(capture.size_bytes, fs::metadata(&fixture).unwrap().len());
        assert_eq!(capture.preview_jpeg, thumbnail);
        assert_eq!(capture.source, "fake-still");
        assert_eq!(
            fs::read_to_string(&args).unwrap().trim(),
            format!("-n -t 1 --width 64 --height 48 -q 80 --thumb 16:12:70 -o {}", out.display())
        );
    }

    #[test]
    fn a_failing_program_reports_its_stderr_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("shot.jpg");
        let script = "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = -o ] && echo junk > \"$2\"; shift; done\necho \
                      'ERROR: *** failed to start camera ***' >&2\nexit 1\n";
        let err = capture(&camera_running(script, dir.path()), &out).unwrap_err();
        assert!(matches!(&err, PlatformError::Failed(m) if m.contains("failed to start camera")), "{err:?}");
        assert!(!out.exists());
    }

    #[test]
    fn no_camera_connected_is_reported_as_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let script = "#!/bin/sh\necho 'ERROR: *** no cameras available ***' >&2\nexit 255\n";
        let err = capture(&camera_running(script, dir.path()), &dir.path().join("x.jpg")).unwrap_err();
        assert!(matches!(err, PlatformError::Unavailable(_)), "{err:?}");
    }

    #[test]
    fn a_program_that_hangs_is_killed_at_the_time_limit() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let camera = camera_running("#!/bin/sh\nsleep 30\necho done\n", dir.path());
        let err = capture(&camera, &dir.path().join("x.jpg")).unwrap_err();
        assert!(matches!(&err, PlatformError::Failed(m) if m.contains("did not finish")), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_capture_without_a_thumbnail_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = dir.path().join("plain.jpg");
        fs::write(&fixture, encode(64, 48, None)).unwrap();
        let script = format!(
            "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = -o ] && cp {} \"$2\"; shift; done\n",
            fixture.display()
        );
        let out = dir.path().join("shot.jpg");
        let err = capture(&camera_running(&script, dir.path()), &out).unwrap_err();
        assert!(matches!(&err, PlatformError::Failed(m) if m.contains("no EXIF thumbnail")), "{err:?}");
    }

    const VIDEO: VideoRequest = VideoRequest { duration_ms: 100, width: 64, height: 48, framerate: 5 };

    /// Records, retrying while the fake program is "busy" (see `capture`).
    fn record(camera: &CliCamera, out: &Path, request: VideoRequest) -> Result<Video, PlatformError> {
        for _ in 0..100 {
            match camera.record(out, request) {
                Err(PlatformError::Failed(m)) if m.contains("os error 26") => thread::sleep(Duration::from_millis(10)),
                other => return other,
            }
        }
        camera.record(out, request)
    }

    #[test]
    fn frames_are_counted_by_their_start_markers_even_across_pieces() {
        let frame = encode(16, 8, None);
        let stream: Vec<u8> = (0..3).flat_map(|_| frame.iter().copied()).collect();
        for piece in [1, 2, 3, 7, stream.len()] {
            let mut counter = FrameCounter::default();
            stream.chunks(piece).for_each(|c| counter.feed(c));
            assert_eq!(counter.frames(), 3, "pieces of {piece} bytes");
        }
        let mut counter = FrameCounter::default();
        counter.feed(&[0x00, 0xFF, 0xD8, 0x00, 0xFF, 0x00, 0xD8, 0xFF]);
        assert_eq!(counter.frames(), 0);
    }

    #[test]
    fn recording_requests_need_a_size_a_duration_and_a_frame_rate() {
        assert_eq!(check_video_request(VIDEO), Ok(()));
        assert!(check_video_request(VideoRequest { width: 0, ..VIDEO }).is_err());
        assert!(check_video_request(VideoRequest { height: 65_536, ..VIDEO }).is_err());
        assert!(check_video_request(VideoRequest { duration_ms: 0, ..VIDEO }).is_err());
        assert!(check_video_request(VideoRequest { framerate: 0, ..VIDEO }).is_err());
    }

    #[test]
    fn without_either_video_program_recording_is_unavailable_with_an_install_hint() {
        let camera = CliCamera {
            video_programs: vec!["/nonexistent/rpicam-vid".into(), "/nonexistent/libcamera-vid".into()],
            ..CliCamera::new()
        };
        let err = camera.record(Path::new("/nonexistent/out.mjpeg"), VIDEO).unwrap_err();
        assert_eq!(
            err,
            PlatformError::Unavailable(
                "neither rpicam-vid nor libcamera-vid is installed: apt install rpicam-apps".into()
            )
        );
    }

    #[test]
    fn a_recording_passes_its_settings_and_reports_the_frames_written() {
        let dir = tempfile::tempdir().unwrap();
        let frame = encode(64, 48, None);
        let fixture = dir.path().join("fixture.mjpeg");
        fs::write(&fixture, [&frame[..], &frame[..], &frame[..], &frame[..]].concat()).unwrap();
        let args = dir.path().join("args");
        let script = format!(
            "#!/bin/sh\necho \"$*\" > {}\nwhile [ $# -gt 0 ]; do [ \"$1\" = -o ] && cp {} \"$2\"; shift; done\n",
            args.display(),
            fixture.display()
        );
        let camera = camera_running(&script, dir.path());
        let out = dir.path().join("clip.mjpeg");
        let video = record(&camera, &out, VIDEO).unwrap();
        assert_eq!(
            video,
            Video {
                path: out.clone(),
                width: 64,
                height: 48,
                duration_ms: 100,
                frames: Some(4),
                size_bytes: fs::metadata(&fixture).unwrap().len(),
                format: "mjpeg".into(),
                source: "fake-still".into(),
            }
        );
        assert_eq!(
            fs::read_to_string(&args).unwrap().trim(),
            format!("-n -t 100 --width 64 --height 48 --framerate 5 --codec mjpeg -o {}", out.display())
        );
    }

    #[test]
    fn a_failing_recording_reports_its_stderr_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("clip.mjpeg");
        let script = "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = -o ] && echo junk > \"$2\"; shift; done\necho \
                      'ERROR: *** unable to set controls ***' >&2\nexit 1\n";
        let err = record(&camera_running(script, dir.path()), &out, VIDEO).unwrap_err();
        assert!(matches!(&err, PlatformError::Failed(m) if m.contains("unable to set controls")), "{err:?}");
        assert!(!out.exists());
    }

    #[test]
    fn a_recording_without_frames_fails_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("clip.mjpeg");
        let script = "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = -o ] && echo junk > \"$2\"; shift; done\n";
        let err = record(&camera_running(script, dir.path()), &out, VIDEO).unwrap_err();
        assert!(matches!(&err, PlatformError::Failed(m) if m.contains("no JPEG frames")), "{err:?}");
        assert!(!out.exists());
    }

    #[test]
    fn a_recording_that_overruns_its_duration_and_margin_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let camera = camera_running("#!/bin/sh\nsleep 30\necho done\n", dir.path());
        let out = dir.path().join("clip.mjpeg");
        let err = record(&camera, &out, VIDEO).unwrap_err();
        assert!(matches!(&err, PlatformError::Failed(m) if m.contains("did not finish")), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(!out.exists());
    }
}
