//! CPU time counters, identification and clock frequency.
//!
//! Utilisation is not a file the kernel offers: it is the difference between two samples of
//! the cumulative counters in `/proc/stat`, so this module hands out the raw counters and a
//! pure function that turns two samples into a percentage. `/proc/cpuinfo` differs a lot by
//! architecture (x86 has a `model name` per processor, 64-bit ARM only has part numbers and,
//! on a Raspberry Pi, board lines at the end), so it is read leniently.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Serialize;

use super::{parse_error, read_optional_text, read_text, LiveAttr, Result, Roots};

/// Cumulative time one CPU (or all of them together) spent, in clock ticks (jiffies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CoreTimes {
    /// user + nice + system + irq + softirq + steal.
    pub busy: u64,
    /// idle + iowait.
    pub idle: u64,
}

impl CoreTimes {
    /// All ticks counted, busy or idle.
    pub fn total(&self) -> u64 {
        self.busy.saturating_add(self.idle)
    }
}

/// One sample of `/proc/stat`: the machine total and every online core in kernel order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuTimes {
    pub total: CoreTimes,
    pub cores: Vec<CoreTimes>,
}

/// Reads the cumulative CPU counters of `<proc>/stat`.
pub fn read_cpu_times(roots: &Roots) -> Result<CpuTimes> {
    let path = roots.proc.join("stat");
    parse_stat(&read_text(&path)?, &path)
}

fn parse_stat(text: &str, path: &Path) -> Result<CpuTimes> {
    let mut total = None;
    let mut cores = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(label) = fields.next() else { continue };
        let Some(suffix) = label.strip_prefix("cpu") else {
            continue;
        };
        let numbers = fields
            .map(|field| field.parse::<u64>())
            .collect::<std::result::Result<Vec<u64>, _>>()
            .map_err(|_| parse_error(path, format!("non-numeric counter on line {line:?}")))?;
        // Kernels before 2.6 had only user, nice, system and idle; later columns default to 0.
        if numbers.len() < 4 {
            return Err(parse_error(path, format!("too few counters on line {line:?}")));
        }
        let column = |i: usize| numbers.get(i).copied().unwrap_or(0);
        // guest and guest_nice (columns 8 and 9) are already included in user and nice.
        let times = CoreTimes {
            busy: [0, 1, 2, 5, 6, 7].iter().fold(0u64, |sum, &i| sum.saturating_add(column(i))),
            idle: column(3).saturating_add(column(4)),
        };
        if suffix.is_empty() {
            total = Some(times);
        } else if suffix.parse::<u32>().is_ok() {
            cores.push(times);
        } else {
            return Err(parse_error(path, format!("unknown CPU label {label:?}")));
        }
    }
    let total = total.ok_or_else(|| parse_error(path, "no aggregate \"cpu\" line"))?;
    Ok(CpuTimes { total, cores })
}

/// When the machine booted, in seconds since the Unix epoch: the `btime` line of
/// `<proc>/stat`.
pub fn read_boot_time(roots: &Roots) -> Result<u64> {
    let path = roots.proc.join("stat");
    let text = read_text(&path)?;
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| parse_error(&path, "no \"btime\" line"))
}

/// The share of time spent busy between two samples, 0 to 100; 0 when no time passed.
///
/// Counters are compared with saturation because iowait is known to step backwards on some
/// kernels, which must not turn into a negative or huge percentage.
pub fn cpu_percent(prev: &CoreTimes, now: &CoreTimes) -> f64 {
    let busy = now.busy.saturating_sub(prev.busy);
    let idle = now.idle.saturating_sub(prev.idle);
    let elapsed = busy.saturating_add(idle);
    if elapsed == 0 {
        return 0.0;
    }
    (busy as f64 * 100.0 / elapsed as f64).clamp(0.0, 100.0)
}

/// What the kernel says about the processor, and on a Raspberry Pi, about the board.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct CpuInfo {
    /// Processor model, such as "Intel(R) Xeon(R) CPU" or, on 64-bit ARM where the kernel
    /// gives only part numbers, the core name derived from them (e.g. "Cortex-A72").
    pub model_name: Option<String>,
    /// Number of processors listed by the kernel (online logical CPUs).
    pub cores: u32,
    /// SoC family reported by the kernel (the Raspberry Pi kernel says "BCM2835" for every
    /// model up to the Pi 4; absent on x86 and on the Pi 5).
    pub hardware: Option<String>,
    /// Raspberry Pi board revision code in hexadecimal, such as "c03114".
    pub revision: Option<String>,
    /// Board serial number (Raspberry Pi), hexadecimal.
    pub serial: Option<String>,
    /// Board model, such as "Raspberry Pi 4 Model B Rev 1.4".
    pub model: Option<String>,
}

/// Reads `<proc>/cpuinfo`.
pub fn read_cpuinfo(roots: &Roots) -> Result<CpuInfo> {
    Ok(parse_cpuinfo(&read_text(&roots.proc.join("cpuinfo"))?))
}

/// Like [`read_cpuinfo`], but an absent file gives an empty description, for callers that
/// have other sources for the same facts.
pub(crate) fn read_cpuinfo_if_present(roots: &Roots) -> Result<CpuInfo> {
    let text = read_optional_text(&roots.proc.join("cpuinfo"))?;
    Ok(parse_cpuinfo(text.as_deref().unwrap_or("")))
}

fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo { model_name: None, cores: 0, hardware: None, revision: None, serial: None, model: None };
    let mut arm_implementer = None;
    let mut arm_part = None;
    // The format is free-form and differs by architecture, so lines without a colon are not
    // errors, merely not interesting.
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let slot = match key.trim() {
            "processor" => {
                if value.parse::<u32>().is_ok() {
                    info.cores += 1;
                }
                continue;
            }
            "model name" => &mut info.model_name,
            "Hardware" => &mut info.hardware,
            "Revision" => &mut info.revision,
            "Serial" => &mut info.serial,
            "Model" => &mut info.model,
            "CPU implementer" => &mut arm_implementer,
            "CPU part" => &mut arm_part,
            _ => continue,
        };
        // The first processor block speaks for all: big.LITTLE parts are not on any Pi.
        if slot.is_none() && !value.is_empty() {
            *slot = Some(value.to_string());
        }
    }
    if info.model_name.is_none() {
        info.model_name = arm_core_name(arm_implementer.as_deref(), arm_part.as_deref());
    }
    info
}

/// Names the ARM Ltd core behind the part number that 64-bit ARM kernels print instead of a
/// model name; unknown parts stay unnamed rather than guessed.
fn arm_core_name(implementer: Option<&str>, part: Option<&str>) -> Option<String> {
    let implementer = u32::from_str_radix(implementer?.trim_start_matches("0x"), 16).ok()?;
    let part = u32::from_str_radix(part?.trim_start_matches("0x"), 16).ok()?;
    const ARM_LTD: u32 = 0x41;
    if implementer != ARM_LTD {
        return None;
    }
    let name = match part {
        0xb76 => "ARM1176",
        0xc07 => "Cortex-A7",
        0xc08 => "Cortex-A8",
        0xc09 => "Cortex-A9",
        0xc0f => "Cortex-A15",
        0xd03 => "Cortex-A53",
        0xd04 => "Cortex-A35",
        0xd05 => "Cortex-A55",
        0xd07 => "Cortex-A57",
        0xd08 => "Cortex-A72",
        0xd09 => "Cortex-A73",
        0xd0a => "Cortex-A75",
        0xd0b => "Cortex-A76",
        0xd0c => "Neoverse-N1",
        0xd0d => "Cortex-A77",
        0xd41 => "Cortex-A78",
        0xd46 => "Cortex-A510",
        0xd47 => "Cortex-A710",
        _ => return None,
    };
    Some(name.to_string())
}

/// The current clock of CPU 0 in MHz; `None` when the kernel has no cpufreq driver (VMs).
/// The attribute holding CPU 0's current frequency in kHz.
pub fn cpu_freq_path(roots: &Roots) -> PathBuf {
    roots.sys.join("devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
}

/// CPU 0's current frequency in MHz, read through an attribute kept open.
pub fn read_live_cpu_freq_mhz(attr: &LiveAttr) -> Result<Option<f64>> {
    match attr.read()? {
        Some(text) => parse_cpu_freq(attr.path(), &text).map(Some),
        None => Ok(None),
    }
}

fn parse_cpu_freq(path: &Path, text: &str) -> Result<f64> {
    let khz =
        text.parse::<u64>().map_err(|_| parse_error(path, format!("expected a frequency in kHz, found {text:?}")))?;
    Ok(khz as f64 / 1000.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::host::{fixture, HostError};

    #[test]
    fn sums_the_counters_of_a_pi4_into_busy_and_idle() {
        let times = read_cpu_times(&fixture("pi4")).unwrap();
        assert_eq!(times.cores.len(), 4);
        assert_eq!(times.cores[0], CoreTimes { busy: 30120 + 150 + 11230 + 2301, idle: 2401234 + 1520 });
        let busy_sum: u64 = times.cores.iter().map(|c| c.busy).sum();
        let idle_sum: u64 = times.cores.iter().map(|c| c.idle).sum();
        assert_eq!(times.total, CoreTimes { busy: busy_sum, idle: idle_sum });
    }

    #[test]
    fn the_boot_time_is_the_btime_line() {
        assert_eq!(read_boot_time(&fixture("pi4")).unwrap(), 1717401600);
    }

    #[test]
    fn reads_four_cores_on_a_pi5() {
        let times = read_cpu_times(&fixture("pi5")).unwrap();
        assert_eq!(times.cores.len(), 4);
        assert_eq!(times.cores[3], CoreTimes { busy: 16987 + 28 + 6890 + 412, idle: 1526789 + 533 });
    }

    #[test]
    fn accepts_the_four_columns_of_old_kernels() {
        let times = parse_stat("cpu 1 2 3 4\ncpu0 1 2 3 4\n", Path::new("stat")).unwrap();
        assert_eq!(times.total, CoreTimes { busy: 6, idle: 4 });
    }

    #[test]
    fn rejects_a_stat_without_the_total_line() {
        let err = parse_stat("cpu0 1 2 3 4\nctxt 5\n", Path::new("/p/stat")).unwrap_err();
        assert!(matches!(err, HostError::Parse { ref path, .. } if path == Path::new("/p/stat")));
    }

    #[test]
    fn rejects_garbage_counters_naming_the_file() {
        let err = parse_stat("cpu 1 2 x 4\n", Path::new("/p/stat")).unwrap_err();
        assert!(err.to_string().contains("/p/stat"), "{err}");
        assert!(parse_stat("cpu 1 2\n", Path::new("stat")).is_err());
        assert!(parse_stat("cpuX 1 2 3 4\ncpu 1 2 3 4\n", Path::new("stat")).is_err());
    }

    #[test]
    fn computes_the_busy_share_between_two_samples() {
        let prev = CoreTimes { busy: 100, idle: 900 };
        let now = CoreTimes { busy: 125, idle: 975 };
        assert_eq!(cpu_percent(&prev, &now), 25.0);
    }

    #[test]
    fn gives_zero_percent_when_no_time_passed_or_counters_went_back() {
        let same = CoreTimes { busy: 5, idle: 5 };
        assert_eq!(cpu_percent(&same, &same), 0.0);
        let later = CoreTimes { busy: 10, idle: 3 };
        assert_eq!(cpu_percent(&same, &later), 100.0);
    }

    #[test]
    fn reads_the_cpuinfo_of_a_pi4() {
        let info = read_cpuinfo(&fixture("pi4")).unwrap();
        assert_eq!(info.cores, 4);
        assert_eq!(info.model_name.as_deref(), Some("Cortex-A72"));
        assert_eq!(info.hardware.as_deref(), Some("BCM2835"));
        assert_eq!(info.revision.as_deref(), Some("c03114"));
        assert_eq!(info.serial.as_deref(), Some("100000003a5f9c1e"));
        assert_eq!(info.model.as_deref(), Some("Raspberry Pi 4 Model B Rev 1.4"));
    }

    #[test]
    fn reads_the_cpuinfo_of_a_pi5_which_has_no_hardware_line() {
        let info = read_cpuinfo(&fixture("pi5")).unwrap();
        assert_eq!(info.cores, 4);
        assert_eq!(info.model_name.as_deref(), Some("Cortex-A76"));
        assert_eq!(info.hardware, None);
        assert_eq!(info.revision.as_deref(), Some("d04170"));
        assert_eq!(info.serial.as_deref(), Some("6f2a9c41d7e3b850"));
        assert_eq!(info.model.as_deref(), Some("Raspberry Pi 5 Model B Rev 1.0"));
    }

    #[test]
    fn reads_the_model_name_of_an_x86_cpuinfo() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i7\n\n\
                    processor\t: 1\nmodel name\t: Intel(R) Core(TM) i7\nflags\t\t: fpu vme\n";
        let info = parse_cpuinfo(text);
        assert_eq!(info.cores, 2);
        assert_eq!(info.model_name.as_deref(), Some("Intel(R) Core(TM) i7"));
        assert_eq!(info.revision, None);
    }

    #[test]
    fn leaves_unknown_arm_parts_unnamed() {
        let info = parse_cpuinfo("processor : 0\nCPU implementer : 0x51\nCPU part : 0x801\nnonsense\n");
        assert_eq!(info.model_name, None);
        assert_eq!(info.cores, 1);
    }

    #[test]
    fn reads_the_clock_of_pi4_and_pi5() {
        let pi4 = LiveAttr::new(cpu_freq_path(&fixture("pi4")));
        assert_eq!(read_live_cpu_freq_mhz(&pi4).unwrap(), Some(1800.0));
        assert_eq!(read_live_cpu_freq_mhz(&pi4).unwrap(), Some(1800.0), "a second read of the open attribute");
        let pi5 = LiveAttr::new(cpu_freq_path(&fixture("pi5")));
        assert_eq!(read_live_cpu_freq_mhz(&pi5).unwrap(), Some(2400.0));
    }

    #[test]
    fn reads_the_cpus_of_this_machine() {
        let roots = Roots::system();
        let times = read_cpu_times(&roots).unwrap();
        assert!(!times.cores.is_empty());
        assert!(times.total.total() > 0);
        let info = read_cpuinfo(&roots).unwrap();
        assert!(info.cores >= 1);
        if let Some(mhz) = read_live_cpu_freq_mhz(&LiveAttr::new(cpu_freq_path(&roots))).unwrap() {
            assert!(mhz > 0.0);
        }
    }
}
