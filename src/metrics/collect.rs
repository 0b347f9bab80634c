//! One round of the sampler: the host's metrics read from /proc and /sys, as named values
//! with units. Counters (CPU time, disk and network bytes) become rates over the time since
//! the previous round, so the first round after a start records no rates.

use std::collections::HashMap;

use crate::host::{cpu, disk, diskio, memory, net, os, thermal, Roots};

/// How a series' values are stored: as integers of this many units per unit of the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Hundredths of a percent.
    Percent,
    /// Bytes, stored in KiB (the kernel counts memory and blocks in KiB).
    Bytes,
    /// Bytes per second, stored whole.
    BytesPerSecond,
    /// Thousandths of a degree, as the kernel reports them.
    Celsius,
    /// A count such as the load average, in hundredths.
    Count,
    /// 0 or 1.
    Flag,
}

impl Unit {
    pub const ALL: [Unit; 6] =
        [Unit::Percent, Unit::Bytes, Unit::BytesPerSecond, Unit::Celsius, Unit::Count, Unit::Flag];

    pub fn name(self) -> &'static str {
        match self {
            Unit::Percent => "percent",
            Unit::Bytes => "bytes",
            Unit::BytesPerSecond => "bytes_per_second",
            Unit::Celsius => "celsius",
            Unit::Count => "count",
            Unit::Flag => "flag",
        }
    }

    pub fn from_name(name: &str) -> Option<Unit> {
        Unit::ALL.into_iter().find(|u| u.name() == name)
    }

    /// Stored integers per unit of the value.
    pub fn scale(self) -> f64 {
        match self {
            Unit::Percent | Unit::Count => 100.0,
            Unit::Bytes => 1.0 / 1024.0,
            Unit::BytesPerSecond | Unit::Flag => 1.0,
            Unit::Celsius => 1000.0,
        }
    }

    pub fn to_stored(self, value: f64) -> i64 {
        let scaled = (value * self.scale()).round();
        // `as` saturates, and NaN becomes 0: a value the kernel never reports.
        scaled as i64
    }

    pub fn from_stored(self, stored: f64) -> f64 {
        stored / self.scale()
    }
}

/// One value of a round.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub name: String,
    pub unit: Unit,
    pub value: f64,
}

/// The counters of the previous round, to turn the next one's into rates.
#[derive(Default)]
pub struct Collector {
    previous: Option<Previous>,
}

struct Previous {
    at: f64,
    cpu: cpu::CpuTimes,
    counters: HashMap<String, u64>,
}

impl Collector {
    /// Reads a round at `at` (seconds since the epoch, monotonic enough for rates). A source
    /// that fails is left out of the round and named in the returned errors.
    pub fn round(&mut self, roots: &Roots, at: f64) -> (Vec<Reading>, Vec<String>) {
        let mut out = Vec::with_capacity(48);
        let mut errors = Vec::new();
        let mut push = |name: String, unit: Unit, value: f64| out.push(Reading { name, unit, value });
        let previous = self.previous.take();
        let elapsed = previous.as_ref().map(|p| at - p.at).filter(|s| *s > 0.0);
        let mut counters = HashMap::new();
        let mut rate = |push: &mut dyn FnMut(String, Unit, f64), name: String, total: u64| {
            if let (Some(seconds), Some(before)) =
                (elapsed, previous.as_ref().and_then(|p| p.counters.get(&name).copied()))
            {
                // A counter that went back (a device re-plugged, a reboot under us) restarts.
                if total >= before {
                    push(name.clone(), Unit::BytesPerSecond, (total - before) as f64 / seconds);
                }
            }
            counters.insert(name, total);
        };

        let cpu_now = match cpu::read_cpu_times(roots) {
            Ok(now) => {
                if let Some(before) = previous.as_ref().map(|p| &p.cpu) {
                    push("cpu.percent".into(), Unit::Percent, cpu::cpu_percent(&before.total, &now.total));
                    for (i, (b, a)) in before.cores.iter().zip(&now.cores).enumerate() {
                        push(format!("cpu.core{i}.percent"), Unit::Percent, cpu::cpu_percent(b, a));
                    }
                }
                Some(now)
            }
            Err(e) => {
                errors.push(e.to_string());
                None
            }
        };
        match os::read_loadavg(roots) {
            Ok(load) => {
                push("load.1m".into(), Unit::Count, load.one);
                push("load.5m".into(), Unit::Count, load.five);
                push("load.15m".into(), Unit::Count, load.fifteen);
            }
            Err(e) => errors.push(e.to_string()),
        }
        match memory::read_memory(roots) {
            Ok(m) => {
                push("memory.used_percent".into(), Unit::Percent, m.used_percent);
                push("memory.used_bytes".into(), Unit::Bytes, m.used_bytes as f64);
                push("memory.cached_bytes".into(), Unit::Bytes, m.cached_bytes as f64);
                push("memory.available_bytes".into(), Unit::Bytes, m.available_bytes as f64);
                push(
                    "swap.used_bytes".into(),
                    Unit::Bytes,
                    m.swap_total_bytes.saturating_sub(m.swap_free_bytes) as f64,
                );
            }
            Err(e) => errors.push(e.to_string()),
        }
        match disk::read_mounts(roots) {
            Ok(mounts) => {
                for d in mounts {
                    push(format!("disk.{}.used_percent", d.mount_point), Unit::Percent, d.used_percent);
                    push(format!("disk.{}.available_bytes", d.mount_point), Unit::Bytes, d.available_bytes as f64);
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        match diskio::read_disk_io(roots) {
            Ok(disks) => {
                for d in disks {
                    rate(&mut push, format!("disk_io.{}.read_bytes_per_second", d.device), d.read_bytes);
                    rate(&mut push, format!("disk_io.{}.written_bytes_per_second", d.device), d.written_bytes);
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        // The counters of /proc/net/dev alone: the interfaces' attributes and addresses are
        // not sampled.
        match net::read_counters(roots) {
            Ok(interfaces) => {
                for i in interfaces.into_iter().filter(|i| i.name != "lo") {
                    rate(&mut push, format!("net.{}.rx_bytes_per_second", i.name), i.rx_bytes);
                    rate(&mut push, format!("net.{}.tx_bytes_per_second", i.name), i.tx_bytes);
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        match thermal::read_temperatures(roots) {
            Ok(temperatures) => {
                for t in temperatures {
                    push(format!("temperature.{}.celsius", t.kind), Unit::Celsius, t.celsius);
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        match thermal::read_throttling(roots) {
            Ok(Some(t)) => {
                let flag = |b: bool| f64::from(u8::from(b));
                push("throttling.under_voltage_now".into(), Unit::Flag, flag(t.under_voltage_now));
                push("throttling.arm_frequency_capped_now".into(), Unit::Flag, flag(t.arm_frequency_capped_now));
                push("throttling.throttled_now".into(), Unit::Flag, flag(t.throttled_now));
                push("throttling.soft_temperature_limit_now".into(), Unit::Flag, flag(t.soft_temperature_limit_now));
            }
            Ok(None) => {}
            Err(e) => errors.push(e.to_string()),
        }
        if let Some(cpu) = cpu_now {
            self.previous = Some(Previous { at, cpu, counters });
        }
        (out, errors)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_first_round_has_no_rates_and_the_second_has_them_from_the_counters() {
        let roots = crate::host::fixture("pi4");
        let mut c = Collector::default();
        let (first, errors) = c.round(&roots, 1000.0);
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<&str> = first.iter().map(|r| r.name.as_str()).collect();
        assert!(names.contains(&"memory.used_bytes") && names.contains(&"disk./.used_percent"), "{names:?}");
        assert!(names.contains(&"temperature.cpu-thermal.celsius"), "{names:?}");
        assert!(!names.iter().any(|n| n.ends_with("per_second") || n.starts_with("cpu.")), "{names:?}");
        let (second, _) = c.round(&roots, 1060.0);
        let value = |name: &str| second.iter().find(|r| r.name == name).map(|r| r.value);
        // The fixture does not change between rounds: nothing was read or sent.
        assert_eq!(value("disk_io.mmcblk0.read_bytes_per_second"), Some(0.0));
        assert_eq!(value("net.eth0.rx_bytes_per_second"), Some(0.0));
        assert!(value("cpu.percent").is_some() && value("cpu.core3.percent").is_some());
        assert!(value("net.lo.rx_bytes_per_second").is_none());
    }

    #[test]
    fn values_are_stored_as_scaled_integers_and_read_back() {
        assert_eq!(Unit::Percent.to_stored(42.567), 4257);
        assert_eq!(Unit::Celsius.to_stored(48.312), 48312);
        assert_eq!(Unit::Bytes.to_stored(4096.0 * 1024.0), 4096);
        assert_eq!(Unit::Count.from_stored(125.0), 1.25);
        assert_eq!(Unit::Flag.to_stored(f64::NAN), 0);
        assert_eq!(Unit::BytesPerSecond.to_stored(1e300), i64::MAX);
        for u in Unit::ALL {
            assert_eq!(Unit::from_name(u.name()), Some(u));
        }
    }
}
