//! Temperatures and the Raspberry Pi firmware's throttling flags.
//!
//! Temperatures come from the generic thermal class. Under-voltage and throttling are known
//! only to the VideoCore firmware; its kernel driver mirrors them in a `get_throttled` sysfs
//! file, which lets an unprivileged process see them without `vcgencmd` (and without running
//! a subprocess). That file sits at a different platform path on each SoC, so it is searched
//! for, within a small bound.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Serialize;

use super::{parse_error, read_attr, HostError, Result, Roots};

/// One thermal sensor.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Temperature {
    /// Kernel name of the zone, such as "thermal_zone0".
    pub zone: String,
    /// What the zone measures, such as "cpu-thermal" (the SoC on a Raspberry Pi).
    pub kind: String,
    /// Temperature in degrees Celsius.
    pub celsius: f64,
}

/// Reads every `<sys>/class/thermal/thermal_zone*`, in zone order; none on machines without
/// thermal zones (most VMs).
pub fn read_temperatures(roots: &Roots) -> Result<Vec<Temperature>> {
    let dir = roots.sys.join("class/thermal");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(HostError::Read { path: dir, source }),
    };
    let mut zones = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| HostError::Read { path: dir.clone(), source })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(number) = name.strip_prefix("thermal_zone").and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        match read_zone(&entry.path(), &name) {
            Ok(Some(temperature)) => zones.push((number, temperature)),
            Ok(None) => {}
            // Some sensors refuse reads while powered down (EINVAL, ENODATA); one silent
            // sensor must not hide the others.
            Err(e) => log::debug!("skipping {name}: {e}"),
        }
    }
    zones.sort_by_key(|(number, _)| *number);
    Ok(zones.into_iter().map(|(_, temperature)| temperature).collect())
}

fn read_zone(dir: &Path, zone: &str) -> Result<Option<Temperature>> {
    let temp_path = dir.join("temp");
    let Some(millidegrees) = read_attr(&temp_path)? else {
        return Ok(None);
    };
    let millidegrees = millidegrees
        .parse::<i64>()
        .map_err(|_| parse_error(&temp_path, format!("expected millidegrees, found {millidegrees:?}")))?;
    let kind = read_attr(&dir.join("type"))?.unwrap_or_default();
    Ok(Some(Temperature { zone: zone.to_string(), kind, celsius: millidegrees as f64 / 1000.0 }))
}

/// The firmware's under-voltage and throttling flags, now and since boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Throttling {
    /// The raw flag word in hexadecimal, as `vcgencmd get_throttled` prints it, such as "0x50005".
    pub raw: String,
    /// The supply voltage is too low right now (below about 4.63 V): use a better power supply.
    pub under_voltage_now: bool,
    /// The ARM clock is capped right now.
    pub arm_frequency_capped_now: bool,
    /// The SoC is throttled right now (by under-voltage or temperature).
    pub throttled_now: bool,
    /// The soft temperature limit is active right now (clock reduced to cool down).
    pub soft_temperature_limit_now: bool,
    /// Under-voltage happened at some point since boot.
    pub under_voltage_occurred: bool,
    /// The ARM clock was capped at some point since boot.
    pub arm_frequency_capped_occurred: bool,
    /// Throttling happened at some point since boot.
    pub throttled_occurred: bool,
    /// The soft temperature limit was reached at some point since boot.
    pub soft_temperature_limit_occurred: bool,
    /// Where the flags were read from (the firmware driver's sysfs file).
    pub source: String,
}

/// Splits the firmware's flag word: bits 0-3 are current conditions, bits 16-19 the same
/// conditions latched since boot.
pub fn decode_throttled(raw: u32, source: &str) -> Throttling {
    let bit = |n: u32| raw & (1 << n) != 0;
    Throttling {
        raw: format!("{raw:#x}"),
        under_voltage_now: bit(0),
        arm_frequency_capped_now: bit(1),
        throttled_now: bit(2),
        soft_temperature_limit_now: bit(3),
        under_voltage_occurred: bit(16),
        arm_frequency_capped_occurred: bit(17),
        throttled_occurred: bit(18),
        soft_temperature_limit_occurred: bit(19),
        source: source.to_string(),
    }
}

/// Reads the firmware's throttling flags; `None` on machines without the Raspberry Pi
/// firmware driver.
pub fn read_throttling(roots: &Roots) -> Result<Option<Throttling>> {
    let Some(path) = locate_get_throttled(roots) else {
        return Ok(None);
    };
    let Some(text) = read_attr(&path)? else {
        return Ok(None);
    };
    Ok(Some(decode_throttled(parse_throttled(&text, &path)?, &path.to_string_lossy())))
}

/// Where `get_throttled` is below a sys root, or that it is nowhere, as last found: on a
/// board without the firmware driver the search walks a few hundred sysfs directories, most
/// of what a metrics round or a scrape would cost, so an answer is kept for
/// [`LOCATION_KEPT`] (a driver loaded later is seen within that time).
static LOCATION: Mutex<Option<(PathBuf, Option<PathBuf>, Instant)>> = Mutex::new(None);
const LOCATION_KEPT: Duration = Duration::from_secs(300);

fn locate_get_throttled(roots: &Roots) -> Option<PathBuf> {
    if let Ok(kept) = LOCATION.lock() {
        if let Some((sys, found, at)) = kept.as_ref() {
            if *sys == roots.sys && at.elapsed() < LOCATION_KEPT {
                return found.clone();
            }
        }
    }
    let found = find_get_throttled(&roots.sys.join("devices/platform"));
    if let Ok(mut kept) = LOCATION.lock() {
        *kept = Some((roots.sys.clone(), found.clone(), Instant::now()));
    }
    found
}

fn parse_throttled(text: &str, path: &Path) -> Result<u32> {
    let digits = text.trim_start_matches("0x").trim_start_matches("0X");
    u32::from_str_radix(digits, 16)
        .map_err(|_| parse_error(path, format!("expected a hexadecimal flag word, found {text:?}")))
}

/// How deep below `devices/platform` the firmware device may sit: Pi 4 has
/// `soc/soc:firmware/get_throttled`, Pi 5 `soc@107c000000/soc@107c000000:firmware/get_throttled`.
const SEARCH_DEPTH: usize = 3;

/// Finds `get_throttled` below `platform`, at most [`SEARCH_DEPTH`] levels down. Only real
/// directories are entered, never symlinks, because sysfs is full of links pointing back up
/// the tree (`subsystem`, `driver`, `supplier:*`) that would otherwise loop.
fn find_get_throttled(platform: &Path) -> Option<PathBuf> {
    const FILE: &str = "get_throttled";
    let known = ["soc/soc:firmware", "soc@107c000000/soc@107c000000:firmware"];
    if let Some(found) = known.iter().map(|dir| platform.join(dir).join(FILE)).find(|p| p.is_file()) {
        return Some(found);
    }
    let mut level = vec![platform.to_path_buf()];
    for _ in 0..SEARCH_DEPTH {
        let mut next = Vec::new();
        for dir in &level {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
            // Sorted so that the same tree always gives the same answer.
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    next.push(entry.path());
                } else if kind.is_file() && entry.file_name() == FILE {
                    return Some(entry.path());
                }
            }
        }
        level = next;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::host::fixture;

    #[test]
    fn reads_the_soc_temperature_of_a_pi4() {
        let temperatures = read_temperatures(&fixture("pi4")).unwrap();
        assert_eq!(
            temperatures,
            vec![Temperature { zone: "thermal_zone0".into(), kind: "cpu-thermal".into(), celsius: 48.686 }]
        );
    }

    #[test]
    fn reads_the_soc_temperature_of_a_pi5_ignoring_cooling_devices() {
        let temperatures = read_temperatures(&fixture("pi5")).unwrap();
        assert_eq!(temperatures.len(), 1);
        assert_eq!(temperatures[0].celsius, 52.15);
    }

    #[test]
    fn sorts_zones_numerically_and_skips_unreadable_ones() {
        let dir = tempfile::tempdir().unwrap();
        let thermal = dir.path().join("sys/class/thermal");
        for (zone, temp) in [("thermal_zone10", "-5000"), ("thermal_zone2", "30500"), ("thermal_zone3", "n/a")] {
            std::fs::create_dir_all(thermal.join(zone)).unwrap();
            std::fs::write(thermal.join(zone).join("temp"), temp).unwrap();
        }
        let zones = read_temperatures(&Roots::under(dir.path())).unwrap();
        let names: Vec<_> = zones.iter().map(|t| (t.zone.as_str(), t.celsius)).collect();
        assert_eq!(names, vec![("thermal_zone2", 30.5), ("thermal_zone10", -5.0)]);
        assert_eq!(zones[0].kind, "");
    }

    #[test]
    fn finds_no_temperatures_without_a_thermal_class() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_temperatures(&Roots::under(dir.path())).unwrap().is_empty());
        assert_eq!(read_throttling(&Roots::under(dir.path())).unwrap(), None);
    }

    #[test]
    fn decodes_under_voltage_of_a_pi4() {
        let throttling = read_throttling(&fixture("pi4")).unwrap().unwrap();
        assert_eq!(throttling.raw, "0x50005");
        assert!(throttling.under_voltage_now);
        assert!(!throttling.arm_frequency_capped_now);
        assert!(throttling.throttled_now);
        assert!(!throttling.soft_temperature_limit_now);
        assert!(throttling.under_voltage_occurred);
        assert!(!throttling.arm_frequency_capped_occurred);
        assert!(throttling.throttled_occurred);
        assert!(!throttling.soft_temperature_limit_occurred);
        assert!(throttling.source.ends_with("sys/devices/platform/soc/soc:firmware/get_throttled"));
    }

    #[test]
    fn finds_the_firmware_of_a_pi5_at_its_own_path() {
        let throttling = read_throttling(&fixture("pi5")).unwrap().unwrap();
        assert_eq!(throttling, decode_throttled(0, &throttling.source));
        assert_eq!(throttling.raw, "0x0");
        assert!(throttling.source.ends_with("soc@107c000000:firmware/get_throttled"));
    }

    #[test]
    fn searches_unknown_platform_paths_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let platform = dir.path().join("sys/devices/platform");
        let firmware = platform.join("axi/axi:firmware");
        std::fs::create_dir_all(&firmware).unwrap();
        std::fs::write(firmware.join("get_throttled"), "80008\n").unwrap();
        // A link back up the tree, as sysfs has everywhere.
        std::os::unix::fs::symlink(&platform, platform.join("axi/loop")).unwrap();
        let throttling = read_throttling(&Roots::under(dir.path())).unwrap().unwrap();
        assert!(throttling.soft_temperature_limit_now && throttling.soft_temperature_limit_occurred);
        assert!(!throttling.under_voltage_now);
    }

    #[test]
    fn a_board_without_throttling_flags_does_not_hide_those_of_another_tree() {
        let dir = tempfile::tempdir().unwrap();
        let bare = Roots::under(dir.path());
        std::fs::create_dir_all(bare.sys.join("devices/platform/soc")).unwrap();
        assert_eq!(read_throttling(&bare).unwrap(), None);
        assert!(
            read_throttling(&fixture("pi4")).unwrap().is_some(),
            "another tree is read, not taken for the bare one"
        );
        assert_eq!(read_throttling(&bare).unwrap(), None);
    }

    #[test]
    fn stops_searching_below_three_levels() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("sys/devices/platform/a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("get_throttled"), "0\n").unwrap();
        assert_eq!(read_throttling(&Roots::under(dir.path())).unwrap(), None);
    }

    #[test]
    fn rejects_a_flag_word_that_is_not_hexadecimal() {
        let file = Path::new("/s/get_throttled");
        let err = parse_throttled("throttled", file).unwrap_err();
        assert!(matches!(err, HostError::Parse { ref path, .. } if path == file));
        assert_eq!(parse_throttled("0x50000", Path::new("x")).unwrap(), 0x50000);
    }

    #[test]
    fn reads_the_thermal_state_of_this_machine() {
        let roots = Roots::system();
        for temperature in read_temperatures(&roots).unwrap() {
            assert!((-60.0..=150.0).contains(&temperature.celsius), "{temperature:?}");
        }
        let _ = read_throttling(&roots).unwrap();
    }
}
