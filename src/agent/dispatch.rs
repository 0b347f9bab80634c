//! What the agent does for each request: the allowlists checked again on this side of the
//! socket, with the same checks the server made first (a compromised server must not get
//! further), then the platform call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Config;
use crate::ipc::{AgentCapabilities, ErrorCode, Request, Response};
use crate::platform::camera::VideoRequest;
use crate::platform::{CaptureRequest, PinMode, Platform, SpiSettings};

/// Everything a request needs, shared by all connections.
pub struct AgentState {
    pub config: Config,
    /// The configuration file it read (`None` with --dev): what a deployment replaces.
    pub config_path: Option<PathBuf>,
    pub platform: Platform,
    pub capabilities: AgentCapabilities,
    pub updates: super::update::Updates,
}

fn invalid(message: String) -> Response {
    Response::Error { code: ErrorCode::Invalid, message }
}

// The error side of these results is the answer itself, sent as it is: boxing it would
// only add an allocation to every refusal.
#[allow(clippy::result_large_err)]
impl AgentState {
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
                self.config.gpio.check_pin(pin)?;
                Response::Pin { state: p.gpio.read(pin).map_err(fail)? }
            }
            Request::GpioSetMode { pin, mode, pull } => {
                self.config.gpio.check_mode(pin, mode)?;
                Response::Pin { state: p.gpio.set_mode(pin, mode, pull).map_err(fail)? }
            }
            Request::GpioWrite { pin, level } => {
                self.config.gpio.check_mode(pin, PinMode::Output)?;
                Response::Pin { state: p.gpio.write(pin, level).map_err(fail)? }
            }
            Request::GpioPwmEnable { pin, pwm } => {
                self.config.gpio.pwm.check_frequency(pwm.frequency_hz)?;
                self.config.gpio.pwm.check_duty_cycle(pwm.duty_cycle)?;
                self.config.gpio.check_mode(pin, PinMode::Pwm)?;
                Response::Pin { state: p.gpio.pwm_enable(pin, pwm).map_err(fail)? }
            }
            Request::GpioPwmDisable { pin } => {
                self.config.gpio.check_mode(pin, PinMode::Pwm)?;
                Response::Pin { state: p.gpio.pwm_disable(pin).map_err(fail)? }
            }
            Request::I2cScan { bus } => {
                self.config.i2c.check_bus(bus)?;
                Response::Addresses { addresses: p.i2c.scan(bus).map_err(fail)? }
            }
            Request::I2cRead { bus, address, register, length } => {
                self.config.i2c.check_device(bus, address)?;
                if !(1..=256).contains(&length) {
                    return Err(invalid(format!("length {length} is outside 1 to 256")));
                }
                Response::Bytes { data: p.i2c.read(bus, address, register, usize::from(length)).map_err(fail)? }
            }
            Request::I2cWrite { bus, address, register, data } => {
                self.config.i2c.check_device(bus, address)?;
                if data.len() > 256 {
                    return Err(invalid(format!("{} bytes is more than 256", data.len())));
                }
                p.i2c.write(bus, address, register, &data).map_err(fail)?;
                Response::Written { bytes: data.len() as u64 }
            }
            Request::SpiTransfer { bus, chip_select, mode, speed_hz, data } => {
                self.config.spi.check_device(bus, chip_select)?.check_speed(speed_hz)?;
                let settings = SpiSettings { bus, chip_select, mode, speed_hz };
                Response::Bytes { data: p.spi.transfer(settings, &data).map_err(fail)? }
            }
            Request::UartRead { port, baud, max_bytes, timeout_ms } => {
                self.config.uart.check_port(&port, baud)?;
                let data = p.uart.read(&port, baud, max_bytes as usize, u64::from(timeout_ms)).map_err(fail)?;
                Response::Bytes { data }
            }
            Request::UartWrite { port, baud, data } => {
                self.config.uart.check_port(&port, baud)?;
                Response::Written { bytes: p.uart.write(&port, baud, &data).map_err(fail)? as u64 }
            }
            Request::CameraCapture { width, height, quality } => self.capture(width, height, quality)?,
            Request::CameraRecord { duration_ms, width, height, framerate } => {
                self.record(VideoRequest { duration_ms, width, height, framerate })?
            }
            Request::ServiceStatus { unit } => {
                self.config.services.check_unit(&unit)?;
                Response::Unit { state: p.services.status(&unit).map_err(fail)? }
            }
            Request::ServiceList => {
                Response::Units { units: p.services.list(&self.config.services.allowed_units).map_err(fail)? }
            }
            Request::ServiceControl { unit, action } => {
                self.config.services.check_unit(&unit)?;
                Response::Unit { state: p.services.control(&unit, action).map_err(fail)? }
            }
            Request::JournalQuery { unit, lines, since } => {
                self.config.services.check_unit(&unit)?;
                let lines = (lines as usize).clamp(1, 1000);
                Response::Journal { entries: p.services.journal(&unit, lines, since.as_deref()).map_err(fail)? }
            }
            Request::Power { action, delay_seconds } => {
                self.config.power.check_action(action)?;
                self.config.power.check_delay(delay_seconds)?;
                Response::Power { receipt: p.power.schedule(action, delay_seconds).map_err(fail)? }
            }
            Request::OsListUpgradable => {
                self.config.updates.os.check_listing()?;
                Response::Upgradable { packages: p.packages.list_upgradable().map_err(fail)? }
            }
            Request::OsStartUpgrade => {
                self.config.updates.os.check_upgrading()?;
                Response::Upgrade { status: p.packages.start_upgrade().map_err(fail)? }
            }
            Request::OsUpgradeStatus => Response::Upgrade { status: p.packages.upgrade_status().map_err(fail)? },
            Request::UpdateApply { manifest, signature, delta } => {
                self.update_apply(&manifest, &signature, delta.as_ref())?
            }
            Request::UpdateRollback { to_version, reason } => self.update_rollback(to_version.as_deref(), &reason)?,
            Request::UpdateHealth { version, healthy, detail } => {
                self.update_health(super::update::HealthReport { version, healthy, detail })
            }
            Request::ConfigDeploy { deployment, signature } => self.config_deploy(&deployment, &signature)?,
        })
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
        let camera = &self.config.camera;
        camera.check_enabled("captures")?;
        camera.check_size(width, height)?;
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
        let camera = &self.config.camera;
        camera.check_enabled("recordings")?;
        camera.check_size(request.width, request.height)?;
        camera.check_video_seconds(f64::from(request.duration_ms) / 1000.0)?;
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

/// When a media file was made, to the millisecond, from its name (`capture-<ms>.jpg`): a
/// file's modification time only has the kernel's clock tick, which two files may share.
fn made_at(path: &Path) -> u128 {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    name.rsplit('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0)
}

/// Deletes the oldest captures and videos until the directory is within both limits; never
/// the one just made. The oldest is the least recently written, and of two written in the
/// same clock tick the one made first.
fn enforce_retention(dir: &Path, max_files: usize, max_bytes: u64, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(SystemTime, u128, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            MEDIA_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
        })
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let path = e.path();
            Some((meta.modified().ok()?, made_at(&path), meta.len(), path))
        })
        .collect();
    files.sort();
    let mut total: u64 = files.iter().map(|f| f.2).sum();
    let mut count = files.len();
    for (_, _, size, path) in files {
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
    use crate::base::Backend;
    use crate::host::Roots;
    use crate::platform::{Level, PinNumber, PowerAction, UnitAction, UnitName};

    /// An agent on simulated hardware whose media directory is `media`, with `camera` as
    /// extra keys of the camera section.
    fn agent(media: &Path, camera: &str) -> Arc<AgentState> {
        let yaml = format!("config_version: \"1.2\"\ncamera:\n  media_dir: {}\n{camera}", media.display());
        let config = Config::from_yaml(&yaml, "test").unwrap();
        Arc::new(AgentState {
            updates: crate::agent::update::Updates::new(&config),
            config,
            config_path: None,
            platform: Platform::select(Backend::Simulated, &Roots::system()),
            capabilities: AgentCapabilities::default(),
        })
    }

    /// An agent on simulated hardware configured by `yaml` (after the version line).
    fn configured(yaml: &str) -> Arc<AgentState> {
        let config = Config::from_yaml(&format!("config_version: \"1.2\"\n{yaml}"), "test").unwrap();
        Arc::new(AgentState {
            updates: crate::agent::update::Updates::new(&config),
            config,
            config_path: None,
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
    fn refusals_by_the_configuration_are_worded_as_the_server_words_them() {
        let state = configured(
            "gpio:\n  pins:\n    - {pin: 17, modes: [input]}\n\
             i2c:\n  buses:\n    - {bus: 1, addresses: [0x48]}\n\
             spi:\n  devices:\n    - {bus: 0, chip_select: 0, max_speed_hz: 500000}\n\
             uart:\n  ports:\n    - {port: serial0, baud_rates: [9600]}\n\
             services:\n  allowed_units: [nginx]\n\
             camera:\n  max_width: 640\n  max_height: 480\n\
             power:\n  reboot_enabled: false\n  max_delay_seconds: 60\n",
        );
        let config = &state.config;
        let pin = |n| PinNumber::new(n).unwrap();
        let unit = |s| UnitName::parse(s).unwrap();
        let spi =
            |chip_select, speed_hz| Request::SpiTransfer { bus: 0, chip_select, mode: 0, speed_hz, data: vec![0] };
        let cases = [
            (Request::GpioRead { pin: pin(5) }, ErrorCode::Denied, config.gpio.check_pin(pin(5)).unwrap_err()),
            (
                Request::GpioWrite { pin: pin(17), level: Level::High },
                ErrorCode::Denied,
                config.gpio.check_mode(pin(17), PinMode::Output).unwrap_err(),
            ),
            (
                Request::GpioPwmDisable { pin: pin(17) },
                ErrorCode::Denied,
                config.gpio.check_mode(pin(17), PinMode::Pwm).unwrap_err(),
            ),
            (Request::I2cScan { bus: 2 }, ErrorCode::Denied, config.i2c.check_bus(2).unwrap_err()),
            (
                Request::I2cRead { bus: 1, address: 0x50, register: None, length: 1 },
                ErrorCode::Denied,
                config.i2c.check_device(1, 0x50).unwrap_err(),
            ),
            (spi(1, 1000), ErrorCode::Denied, config.spi.check_device(0, 1).unwrap_err()),
            (spi(0, 500_001), ErrorCode::Invalid, config.spi.devices[0].check_speed(500_001).unwrap_err()),
            (
                Request::UartWrite { port: "ttyUSB0".into(), baud: 9600, data: vec![1] },
                ErrorCode::Denied,
                config.uart.check_port("ttyUSB0", 9600).unwrap_err(),
            ),
            (
                Request::UartRead { port: "serial0".into(), baud: 115_200, max_bytes: 1, timeout_ms: 0 },
                ErrorCode::Denied,
                config.uart.check_port("serial0", 115_200).unwrap_err(),
            ),
            (
                Request::ServiceControl { unit: unit("ssh"), action: UnitAction::Restart },
                ErrorCode::Denied,
                config.services.check_unit(&unit("ssh")).unwrap_err(),
            ),
            (
                Request::CameraCapture { width: 641, height: 480, quality: 85 },
                ErrorCode::Invalid,
                config.camera.check_size(641, 480).unwrap_err(),
            ),
            (
                Request::Power { action: PowerAction::Reboot, delay_seconds: 0 },
                ErrorCode::Denied,
                config.power.check_action(PowerAction::Reboot).unwrap_err(),
            ),
            (
                Request::Power { action: PowerAction::Shutdown, delay_seconds: 61 },
                ErrorCode::Invalid,
                config.power.check_delay(61).unwrap_err(),
            ),
            (Request::OsStartUpgrade, ErrorCode::Denied, config.updates.os.check_upgrading().unwrap_err()),
        ];
        for (request, code, denied) in cases {
            assert_eq!(refusal(state.execute(request.clone())), (code, denied.message), "{request:?}");
        }
        let (_, message) = refusal(state.execute(Request::GpioRead { pin: pin(5) }));
        assert!(message.starts_with("GPIO 5 is not on gpio.pins; allowed: 17."), "{message}");
    }

    #[test]
    fn pwm_outside_the_limits_of_gpio_pwm_is_refused_as_the_server_words_it() {
        let state = configured(
            "gpio:\n  pins:\n    - {pin: 18, modes: [pwm]}\n  pwm:\n    max_frequency_hz: 1000\n    min_duty_cycle: 10\n    max_duty_cycle: 90\n",
        );
        let pwm = &state.config.gpio.pwm;
        let enable = |frequency_hz, duty_cycle| Request::GpioPwmEnable {
            pin: PinNumber::new(18).unwrap(),
            pwm: crate::platform::PwmState { frequency_hz, duty_cycle },
        };
        let cases = [
            (enable(1000.5, 0.5), pwm.check_frequency(1000.5).unwrap_err()),
            (enable(500.0, 0.95), pwm.check_duty_cycle(0.95).unwrap_err()),
            (enable(500.0, 0.05), pwm.check_duty_cycle(0.05).unwrap_err()),
        ];
        for (request, denied) in cases {
            assert_eq!(refusal(state.execute(request.clone())), (ErrorCode::Invalid, denied.message), "{request:?}");
        }
        assert!(matches!(state.execute(enable(1000.0, 0.9)), Response::Pin { .. }));
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

    #[test]
    fn of_two_files_written_in_the_same_clock_tick_the_one_made_first_goes() {
        let dir = tempfile::tempdir().unwrap();
        let tick = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        // A large video made first, a small capture after it, both with the same time.
        for (name, size) in [("video-1796402603124.mjpeg", 5000), ("capture-1796402603157.jpg", 100)] {
            let p = dir.path().join(name);
            std::fs::write(&p, vec![0u8; size]).unwrap();
            std::fs::File::options().write(true).open(&p).unwrap().set_modified(tick).unwrap();
        }
        let keep = dir.path().join("capture-1796402603999.jpg");
        std::fs::write(&keep, b"new").unwrap();
        enforce_retention(dir.path(), 2, u64::MAX, &keep);
        assert!(!dir.path().join("video-1796402603124.mjpeg").exists());
        assert!(dir.path().join("capture-1796402603157.jpg").exists());
    }
}
