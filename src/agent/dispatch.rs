//! What the agent does for each request: the allowlists checked again on this side of the
//! socket (the server checks them first; a compromised server must not get further),
//! then the platform call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Config;
use crate::ipc::{AgentCapabilities, ErrorCode, Request, Response};
use crate::platform::camera::VideoRequest;
use crate::platform::{CaptureRequest, PinMode, PinNumber, Platform, SpiSettings, UnitName};

/// Everything a request needs, shared by all connections.
pub struct AgentState {
    pub config: Config,
    pub platform: Platform,
    pub capabilities: AgentCapabilities,
}

fn denied(message: String) -> Response {
    Response::Error { code: ErrorCode::Denied, message }
}

fn invalid(message: String) -> Response {
    Response::Error { code: ErrorCode::Invalid, message }
}

// The error side of these results is the answer itself, sent as it is: boxing it would
// only add an allocation to every refusal.
#[allow(clippy::result_large_err)]
impl AgentState {
    fn pin_allows(&self, pin: PinNumber, mode: PinMode) -> Result<(), Response> {
        let allowed: Vec<String> = self.config.gpio.pins.iter().map(|r| r.pin.get().to_string()).collect();
        match self.config.gpio.rule(pin) {
            None => Err(denied(format!("{pin} is not on gpio.pins (allowed: {})", allowed.join(", ")))),
            Some(rule) if !rule.modes.contains(&mode) => {
                Err(denied(format!("{pin} may not be used as {mode:?} (gpio.pins allows {:?})", rule.modes)))
            }
            Some(_) => Ok(()),
        }
    }

    fn pin_listed(&self, pin: PinNumber) -> Result<(), Response> {
        match self.config.gpio.rule(pin) {
            Some(_) => Ok(()),
            None => Err(denied(format!("{pin} is not on gpio.pins"))),
        }
    }

    fn i2c_allows(&self, bus: u8, address: Option<u8>) -> Result<(), Response> {
        let Some(rule) = self.config.i2c.buses.iter().find(|b| b.bus == bus) else {
            return Err(denied(format!("I2C bus {bus} is not on i2c.buses")));
        };
        match address {
            Some(a) if !rule.addresses.contains(&a) => {
                Err(denied(format!("address {a:#04x} on I2C bus {bus} is not on i2c.buses[].addresses")))
            }
            _ => Ok(()),
        }
    }

    fn unit_allowed(&self, unit: &UnitName) -> Result<(), Response> {
        if self.config.services.allowed_units.contains(unit) {
            Ok(())
        } else {
            Err(denied(format!("{unit} is not on services.allowed_units")))
        }
    }

    /// Answers one request (blocking: platform calls touch devices and run programs).
    pub fn execute(self: &Arc<Self>, request: Request) -> Response {
        match self.try_execute(request) {
            Ok(r) | Err(r) => r,
        }
    }

    fn try_execute(self: &Arc<Self>, request: Request) -> Result<Response, Response> {
        let p = &self.platform;
        let fail = |e: crate::platform::PlatformError| Response::from_platform_error(&e);
        Ok(match request {
            Request::Hello { .. } => {
                return Err(Response::Error {
                    code: ErrorCode::BadRequest,
                    message: "hello is only the first request of a connection".into(),
                })
            }
            Request::GetCapabilities => Response::Capabilities(self.capabilities.clone()),
            Request::GpioRead { pin } => {
                self.pin_listed(pin)?;
                Response::Pin { state: p.gpio.read(pin).map_err(fail)? }
            }
            Request::GpioSetMode { pin, mode, pull } => {
                self.pin_allows(pin, mode)?;
                Response::Pin { state: p.gpio.set_mode(pin, mode, pull).map_err(fail)? }
            }
            Request::GpioWrite { pin, level } => {
                self.pin_allows(pin, PinMode::Output)?;
                Response::Pin { state: p.gpio.write(pin, level).map_err(fail)? }
            }
            Request::GpioPwmEnable { pin, pwm } => {
                self.pin_allows(pin, PinMode::Pwm)?;
                Response::Pin { state: p.gpio.pwm_enable(pin, pwm).map_err(fail)? }
            }
            Request::GpioPwmDisable { pin } => {
                self.pin_allows(pin, PinMode::Pwm)?;
                Response::Pin { state: p.gpio.pwm_disable(pin).map_err(fail)? }
            }
            Request::I2cScan { bus } => {
                self.i2c_allows(bus, None)?;
                Response::Addresses { addresses: p.i2c.scan(bus).map_err(fail)? }
            }
            Request::I2cRead { bus, address, register, length } => {
                self.i2c_allows(bus, Some(address))?;
                if !(1..=256).contains(&length) {
                    return Err(invalid(format!("length {length} is outside 1 to 256")));
                }
                Response::Bytes { data: p.i2c.read(bus, address, register, usize::from(length)).map_err(fail)? }
            }
            Request::I2cWrite { bus, address, register, data } => {
                self.i2c_allows(bus, Some(address))?;
                if data.len() > 256 {
                    return Err(invalid(format!("{} bytes is more than 256", data.len())));
                }
                p.i2c.write(bus, address, register, &data).map_err(fail)?;
                Response::Written { bytes: data.len() as u64 }
            }
            Request::SpiTransfer { bus, chip_select, mode, speed_hz, data } => {
                let rule = self.config.spi.devices.iter().find(|d| d.bus == bus && d.chip_select == chip_select);
                let Some(rule) = rule else {
                    return Err(denied(format!("SPI {bus}.{chip_select} is not on spi.devices")));
                };
                if speed_hz == 0 || speed_hz > rule.max_speed_hz {
                    return Err(invalid(format!(
                        "speed {speed_hz} Hz is outside 1 to {} (spi.devices)",
                        rule.max_speed_hz
                    )));
                }
                let settings = SpiSettings { bus, chip_select, mode, speed_hz };
                Response::Bytes { data: p.spi.transfer(settings, &data).map_err(fail)? }
            }
            Request::UartRead { port, baud, max_bytes, timeout_ms } => {
                self.uart_allows(&port, baud)?;
                let data = p.uart.read(&port, baud, max_bytes as usize, u64::from(timeout_ms)).map_err(fail)?;
                Response::Bytes { data }
            }
            Request::UartWrite { port, baud, data } => {
                self.uart_allows(&port, baud)?;
                Response::Written { bytes: p.uart.write(&port, baud, &data).map_err(fail)? as u64 }
            }
            Request::CameraCapture { width, height, quality } => self.capture(width, height, quality)?,
            Request::CameraRecord { duration_ms, width, height, framerate } => {
                self.record(VideoRequest { duration_ms, width, height, framerate })?
            }
            Request::ServiceStatus { unit } => {
                self.unit_allowed(&unit)?;
                Response::Unit { state: p.services.status(&unit).map_err(fail)? }
            }
            Request::ServiceList => {
                Response::Units { units: p.services.list(&self.config.services.allowed_units).map_err(fail)? }
            }
            Request::ServiceControl { unit, action } => {
                self.unit_allowed(&unit)?;
                Response::Unit { state: p.services.control(&unit, action).map_err(fail)? }
            }
            Request::JournalQuery { unit, lines, since } => {
                self.unit_allowed(&unit)?;
                let lines = (lines as usize).clamp(1, 1000);
                Response::Journal { entries: p.services.journal(&unit, lines, since.as_deref()).map_err(fail)? }
            }
            Request::Power { action, delay_seconds } => {
                let power = &self.config.power;
                let enabled = match action {
                    crate::platform::PowerAction::Reboot => power.reboot_enabled,
                    crate::platform::PowerAction::Shutdown => power.shutdown_enabled,
                };
                if !enabled {
                    return Err(denied(format!("{action:?} is turned off in the power section of the configuration")));
                }
                if delay_seconds > power.max_delay_seconds {
                    return Err(invalid(format!(
                        "a delay of {delay_seconds} s is more than power.max_delay_seconds ({})",
                        power.max_delay_seconds
                    )));
                }
                Response::Power { receipt: p.power.schedule(action, delay_seconds).map_err(fail)? }
            }
            Request::OsListUpgradable => {
                if !self.config.updates.os.check_enabled {
                    return Err(denied("updates.os.check_enabled is false".into()));
                }
                Response::Upgradable { packages: p.packages.list_upgradable().map_err(fail)? }
            }
            Request::OsStartUpgrade => {
                if !self.config.updates.os.apply_enabled {
                    return Err(denied("updates.os.apply_enabled is false".into()));
                }
                Response::Upgrade { status: p.packages.start_upgrade().map_err(fail)? }
            }
            Request::OsUpgradeStatus => Response::Upgrade { status: p.packages.upgrade_status().map_err(fail)? },
        })
    }

    fn uart_allows(&self, port: &str, baud: u32) -> Result<(), Response> {
        match self.config.uart.ports.iter().find(|p| p.port == port) {
            None => Err(denied(format!("serial port {port:?} is not on uart.ports"))),
            Some(rule) if !rule.baud_rates.contains(&baud) => {
                Err(denied(format!("{baud} baud is not on uart.ports[].baud_rates for {port}")))
            }
            Some(_) => Ok(()),
        }
    }

    /// Checks that the camera is on and `width`x`height` within its limits.
    fn camera_allows(&self, width: u32, height: u32) -> Result<(), Response> {
        let camera = &self.config.camera;
        if !camera.enabled {
            return Err(denied("the camera is turned off (camera.enabled: false)".into()));
        }
        if width == 0 || height == 0 || width > camera.max_width || height > camera.max_height {
            return Err(invalid(format!(
                "{width}x{height} is outside 1x1 to {}x{} (camera.max_width, camera.max_height)",
                camera.max_width, camera.max_height
            )));
        }
        Ok(())
    }

    /// A new file in the media directory (created if missing), named after `prefix`, the
    /// time and `extension`.
    fn media_file(&self, prefix: &str, extension: &str) -> Result<PathBuf, Response> {
        let dir = &self.config.camera.media_dir;
        create_private_dir(dir).map_err(|e| Response::Error {
            code: ErrorCode::Failed,
            message: format!("cannot create the media directory {}: {e}", dir.display()),
        })?;
        let millis = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        Ok(dir.join(format!("{prefix}-{millis}.{extension}")))
    }

    /// Deletes the oldest media past the camera's limits, keeping `newest`.
    fn trim_media(&self, newest: &Path) {
        let camera = &self.config.camera;
        let max_bytes = camera.max_total_mb.saturating_mul(1024 * 1024);
        enforce_retention(&camera.media_dir, camera.max_files as usize, max_bytes, newest);
    }

    fn capture(&self, width: u32, height: u32, quality: u8) -> Result<Response, Response> {
        self.camera_allows(width, height)?;
        if !(1..=100).contains(&quality) {
            return Err(invalid(format!("quality {quality} is outside 1 to 100")));
        }
        let out = self.media_file("capture", "jpg")?;
        let request = CaptureRequest { width, height, quality, preview_max_side: 320 };
        let capture = self.platform.camera.capture(&out, request).map_err(|e| Response::from_platform_error(&e))?;
        self.trim_media(&out);
        Ok(Response::Capture { capture })
    }

    fn record(&self, request: VideoRequest) -> Result<Response, Response> {
        self.camera_allows(request.width, request.height)?;
        let max_seconds = self.config.camera.max_video_seconds;
        let max_ms = u64::from(max_seconds) * 1000;
        if request.duration_ms == 0 || u64::from(request.duration_ms) > max_ms {
            return Err(invalid(format!(
                "a recording of {} ms is outside 1 ms to {max_seconds} s (camera.max_video_seconds)",
                request.duration_ms
            )));
        }
        if !(1..=MAX_FRAMERATE).contains(&request.framerate) {
            return Err(invalid(format!(
                "a frame rate of {} per second is outside 1 to {MAX_FRAMERATE}",
                request.framerate
            )));
        }
        let out = self.media_file("video", "mjpeg")?;
        let video = self.platform.camera.record(&out, request).map_err(|e| Response::from_platform_error(&e))?;
        self.trim_media(&out);
        Ok(Response::Video { video })
    }
}

/// The highest frame rate a recording may ask for.
const MAX_FRAMERATE: u32 = 60;

/// Names of the files the agent writes into the media directory, and the only ones
/// retention may delete.
const MEDIA_PREFIXES: [&str; 2] = ["capture-", "video-"];

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o750).create(dir)
}

/// Deletes the oldest captures and videos until the directory is within both limits; never
/// the one just made.
fn enforce_retention(dir: &Path, max_files: usize, max_bytes: u64, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            MEDIA_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
        })
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    files.sort();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    let mut count = files.len();
    for (_, size, path) in files {
        if (count <= max_files && total <= max_bytes) || path == keep {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            log::info!("removed {} (camera retention)", path.display());
            count -= 1;
            total = total.saturating_sub(size);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::config::Backend;
    use crate::host::Roots;

    /// An agent on simulated hardware whose media directory is `media`, with `camera` as
    /// extra keys of the camera section.
    fn agent(media: &Path, camera: &str) -> Arc<AgentState> {
        let yaml = format!("config_version: \"1.2\"\ncamera:\n  media_dir: {}\n{camera}", media.display());
        Arc::new(AgentState {
            config: Config::from_yaml(&yaml, "test").unwrap(),
            platform: Platform::select(Backend::Simulated, &Roots::system()),
            capabilities: AgentCapabilities::default(),
        })
    }

    fn record(duration_ms: u32, width: u32, height: u32, framerate: u32) -> Request {
        Request::CameraRecord { duration_ms, width, height, framerate }
    }

    fn refusal(response: Response) -> (ErrorCode, String) {
        match response {
            Response::Error { code, message } => (code, message),
            other => panic!("expected a refusal, got {}", other.kind()),
        }
    }

    #[test]
    fn a_recording_is_written_into_the_media_directory() {
        let dir = tempfile::tempdir().unwrap();
        let media = dir.path().join("media");
        let Response::Video { video } = agent(&media, "").execute(record(1000, 320, 240, 5)) else {
            panic!("no video");
        };
        assert_eq!(video.path.parent(), Some(media.as_path()));
        let name = video.path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("video-") && name.ends_with(".mjpeg"), "{name}");
        assert_eq!((video.width, video.height, video.duration_ms, video.frames), (320, 240, 1000, Some(5)));
        assert_eq!(video.format, "mjpeg");
        assert_eq!(std::fs::metadata(&video.path).unwrap().len(), video.size_bytes);
    }

    #[test]
    fn recordings_beyond_the_configured_limits_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let media = dir.path().join("media");
        let state = agent(&media, "  max_video_seconds: 2\n  max_width: 640\n  max_height: 480\n");
        for (request, key) in [
            (record(2001, 320, 240, 5), "camera.max_video_seconds"),
            (record(0, 320, 240, 5), "camera.max_video_seconds"),
            (record(1000, 641, 240, 5), "camera.max_width"),
            (record(1000, 320, 0, 5), "camera.max_height"),
        ] {
            let (code, message) = refusal(state.execute(request.clone()));
            assert_eq!(code, ErrorCode::Invalid, "{request:?}");
            assert!(message.contains(key), "{request:?}: {message}");
        }
        for framerate in [0, 61] {
            let (code, message) = refusal(state.execute(record(1000, 320, 240, framerate)));
            assert_eq!(code, ErrorCode::Invalid);
            assert!(message.contains("1 to 60"), "{message}");
        }
        assert!(!media.exists(), "nothing is created for a refused request");
        assert!(matches!(state.execute(record(2000, 320, 240, 1)), Response::Video { .. }));
    }

    #[test]
    fn a_disabled_camera_refuses_recordings() {
        let dir = tempfile::tempdir().unwrap();
        let (code, message) = refusal(agent(dir.path(), "  enabled: false\n").execute(record(1000, 320, 240, 5)));
        assert_eq!(code, ErrorCode::Denied);
        assert!(message.contains("camera.enabled"), "{message}");
    }

    #[test]
    fn retention_counts_videos_and_captures_together_and_leaves_other_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["capture-0.jpg", "video-1.mjpeg", "capture-2.jpg", "video-3.mjpeg", "notes.txt"];
        for (i, name) in names.iter().enumerate() {
            let p = dir.path().join(name);
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i as u64);
            std::fs::File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
        }
        enforce_retention(dir.path(), 2, u64::MAX, &dir.path().join("video-3.mjpeg"));
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        left.sort();
        assert_eq!(left, ["capture-2.jpg", "notes.txt", "video-3.mjpeg"]);
    }

    #[test]
    fn retention_removes_the_oldest_captures_first_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let p = dir.path().join(format!("capture-{i}.jpg"));
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i);
            std::fs::File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
        }
        let keep = dir.path().join("capture-4.jpg");
        enforce_retention(dir.path(), 2, u64::MAX, &keep);
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        left.sort();
        assert_eq!(left, ["capture-3.jpg", "capture-4.jpg"]);
        enforce_retention(dir.path(), 10, 150, &keep);
        assert!(keep.exists());
        assert!(!dir.path().join("capture-3.jpg").exists());
    }
}
