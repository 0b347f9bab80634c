//! The machine's figures (`raspi_*`) and this process's (`process_*`), read when a scrape
//! asks for them. Each source is read on its own: one that fails is left out of the page
//! (and logged at debug), so a board without a sensor or a file that cannot be read never
//! fails the scrape.
//!
//! Everything here reads files: call it off the async workers.

use std::sync::OnceLock;

use super::text::{Exposition, Kind};
use crate::host::{self, Roots};

/// `result`'s value, or `None` after logging why `what` is left out.
fn read<T>(what: &str, result: host::Result<T>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            log::debug!("metrics: {what} left out: {e}");
            None
        }
    }
}

/// Writes the `raspi_*` families from the machine under `roots`.
pub fn write_host(out: &mut Exposition, roots: &Roots) {
    let hz = host::process::clock_ticks_per_second() as f64;
    if let Some(times) = read("CPU times", host::cpu::read_cpu_times(roots)) {
        const NAME: &str = "raspi_cpu_seconds_total";
        out.family(NAME, Kind::Counter, "Seconds each CPU spent busy or idle (idle includes iowait), from /proc/stat.");
        for (i, core) in times.cores.iter().enumerate() {
            let cpu = i.to_string();
            out.sample(NAME, &[("cpu", &cpu), ("mode", "busy")], core.busy as f64 / hz);
            out.sample(NAME, &[("cpu", &cpu), ("mode", "idle")], core.idle as f64 / hz);
        }
    }
    if let Some(load) = read("load averages", host::os::read_loadavg(roots)) {
        for (name, help, value) in [
            ("raspi_load1", "Load average over the last minute.", load.one),
            ("raspi_load5", "Load average over the last five minutes.", load.five),
            ("raspi_load15", "Load average over the last fifteen minutes.", load.fifteen),
        ] {
            out.family(name, Kind::Gauge, help).sample(name, &[], value);
        }
    }
    if let Some(m) = read("memory", host::memory::read_memory(roots)) {
        for (name, help, value) in [
            ("raspi_memory_total_bytes", "Usable RAM (MemTotal).", m.total_bytes),
            (
                "raspi_memory_available_bytes",
                "RAM available to new work without swapping (MemAvailable).",
                m.available_bytes,
            ),
            ("raspi_memory_used_bytes", "RAM in use: total less available.", m.used_bytes),
            ("raspi_memory_cached_bytes", "RAM holding the page cache (Cached).", m.cached_bytes),
            ("raspi_swap_total_bytes", "Swap space.", m.swap_total_bytes),
            ("raspi_swap_used_bytes", "Swap space in use.", m.swap_total_bytes.saturating_sub(m.swap_free_bytes)),
        ] {
            out.family(name, Kind::Gauge, help).sample(name, &[], value);
        }
    }
    if let Some(mounts) = read("file systems", host::disk::read_mounts(roots)) {
        const SIZE: &str = "raspi_filesystem_size_bytes";
        out.family(SIZE, Kind::Gauge, "Size of each mounted storage file system.");
        for m in &mounts {
            out.sample(SIZE, &[("mountpoint", &m.mount_point)], m.total_bytes);
        }
        const AVAIL: &str = "raspi_filesystem_avail_bytes";
        out.family(
            AVAIL,
            Kind::Gauge,
            "Space an unprivileged user can still write on each mounted storage file system.",
        );
        for m in &mounts {
            out.sample(AVAIL, &[("mountpoint", &m.mount_point)], m.available_bytes);
        }
    }
    if let Some(disks) = read("disk traffic", host::diskio::read_disk_io(roots)) {
        const READ: &str = "raspi_disk_read_bytes_total";
        out.family(READ, Kind::Counter, "Bytes read from each whole disk since boot.");
        for d in &disks {
            out.sample(READ, &[("device", &d.device)], d.read_bytes);
        }
        const WRITTEN: &str = "raspi_disk_written_bytes_total";
        out.family(WRITTEN, Kind::Counter, "Bytes written to each whole disk since boot.");
        for d in &disks {
            out.sample(WRITTEN, &[("device", &d.device)], d.written_bytes);
        }
    }
    if let Some(interfaces) = read("network counters", host::net::read_counters(roots)) {
        let counted = || interfaces.iter().filter(|i| i.name != "lo");
        const RX: &str = "raspi_network_receive_bytes_total";
        out.family(RX, Kind::Counter, "Bytes received on each network interface (loopback left out).");
        for i in counted() {
            out.sample(RX, &[("interface", &i.name)], i.rx_bytes);
        }
        const TX: &str = "raspi_network_transmit_bytes_total";
        out.family(TX, Kind::Counter, "Bytes sent on each network interface (loopback left out).");
        for i in counted() {
            out.sample(TX, &[("interface", &i.name)], i.tx_bytes);
        }
    }
    if let Some(temperatures) = read("temperatures", host::thermal::read_temperatures(roots)) {
        const NAME: &str = "raspi_temperature_celsius";
        out.family(NAME, Kind::Gauge, "Temperature of each thermal zone, by its type (cpu-thermal is the SoC).");
        for (sensor, t) in sensor_labels(&temperatures).iter().zip(&temperatures) {
            out.sample(NAME, &[("sensor", sensor)], t.celsius);
        }
    }
    if let Some(t) = throttling(roots) {
        const NAME: &str = "raspi_throttled";
        out.family(
            NAME,
            Kind::Gauge,
            "The firmware's under-voltage and throttling flags: 1 when set, now or since boot.",
        );
        for (flag, set) in [
            ("under_voltage_now", t.under_voltage_now),
            ("arm_frequency_capped_now", t.arm_frequency_capped_now),
            ("throttled_now", t.throttled_now),
            ("soft_temperature_limit_now", t.soft_temperature_limit_now),
            ("under_voltage_occurred", t.under_voltage_occurred),
            ("arm_frequency_capped_occurred", t.arm_frequency_capped_occurred),
            ("throttled_occurred", t.throttled_occurred),
            ("soft_temperature_limit_occurred", t.soft_temperature_limit_occurred),
        ] {
            out.sample(NAME, &[("flag", flag)], set);
        }
    }
    if let Some(uptime) = read("uptime", host::os::read_uptime_seconds(roots)) {
        const NAME: &str = "raspi_uptime_seconds";
        out.family(NAME, Kind::Gauge, "Seconds since the machine booted.").sample(NAME, &[], uptime);
    }
}

/// The firmware's throttling flags, when the board has them.
fn throttling(roots: &Roots) -> Option<host::thermal::Throttling> {
    read("throttling flags", host::thermal::read_throttling(roots)).flatten()
}

/// The `sensor` label of each zone: its type, or its zone name when it has none. A type
/// that several zones share (two `acpitz` zones of a PC) is qualified by the zone from its
/// second zone on, so that no two series are the same.
fn sensor_labels(temperatures: &[host::thermal::Temperature]) -> Vec<String> {
    let mut labels: Vec<String> = Vec::with_capacity(temperatures.len());
    for t in temperatures {
        let kind = if t.kind.is_empty() { t.zone.clone() } else { t.kind.clone() };
        let label = if labels.contains(&kind) { format!("{kind}:{}", t.zone) } else { kind };
        labels.push(label);
    }
    labels
}

/// Writes the standard `process_*` families of this process, read from `roots.proc` (the
/// machine's own /proc, whatever the configured roots: this process is real).
pub fn write_process(out: &mut Exposition, roots: &Roots) {
    let hz = host::process::clock_ticks_per_second() as f64;
    let usage = read("this process's usage", host::process::read_own_usage(&roots.proc));
    if let Some(u) = usage {
        out.family(
            "process_cpu_seconds_total",
            Kind::Counter,
            "User and system CPU time this process used, in seconds.",
        )
        .sample("process_cpu_seconds_total", &[], u.cpu_ticks as f64 / hz);
        out.family("process_resident_memory_bytes", Kind::Gauge, "Resident memory of this process.").sample(
            "process_resident_memory_bytes",
            &[],
            u.rss_bytes,
        );
    }
    if let Some(fds) = read("this process's descriptors", host::process::count_own_fds(&roots.proc)) {
        out.family("process_open_fds", Kind::Gauge, "File descriptors this process has open.").sample(
            "process_open_fds",
            &[],
            fds,
        );
    }
    // The start never changes: the boot time is read once it is first needed.
    static START: OnceLock<f64> = OnceLock::new();
    let start = match (START.get(), usage) {
        (Some(start), _) => Some(*start),
        (None, Some(u)) => read("the boot time", host::cpu::read_boot_time(roots)).map(|boot| {
            let start = boot as f64 + u.start_ticks as f64 / hz;
            *START.get_or_init(|| start)
        }),
        (None, None) => None,
    };
    if let Some(start) = start {
        out.family(
            "process_start_time_seconds",
            Kind::Gauge,
            "When this process started, in seconds since the Unix epoch.",
        )
        .sample("process_start_time_seconds", &[], start);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::host::fixture;

    fn host_page(board: &str) -> String {
        let mut out = Exposition::with_capacity(0);
        write_host(&mut out, &fixture(board));
        out.finish()
    }

    fn value_of<'a>(page: &'a str, series: &str) -> Option<&'a str> {
        page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn a_pi4_tree_gives_every_host_family() {
        let page = host_page("pi4");
        for family in [
            "raspi_cpu_seconds_total counter",
            "raspi_load1 gauge",
            "raspi_load5 gauge",
            "raspi_load15 gauge",
            "raspi_memory_total_bytes gauge",
            "raspi_memory_available_bytes gauge",
            "raspi_memory_used_bytes gauge",
            "raspi_memory_cached_bytes gauge",
            "raspi_swap_total_bytes gauge",
            "raspi_swap_used_bytes gauge",
            "raspi_disk_read_bytes_total counter",
            "raspi_disk_written_bytes_total counter",
            "raspi_network_receive_bytes_total counter",
            "raspi_network_transmit_bytes_total counter",
            "raspi_temperature_celsius gauge",
            "raspi_throttled gauge",
            "raspi_uptime_seconds gauge",
        ] {
            assert!(page.contains(&format!("\n# TYPE {family}\n")), "{family}\n{page}");
        }
        // 30120 + 150 + 11230 + 2301 busy ticks of CPU 0, at 100 a second.
        let hz = host::process::clock_ticks_per_second() as f64;
        let busy = value_of(&page, "raspi_cpu_seconds_total{cpu=\"0\",mode=\"busy\"}").unwrap();
        assert_eq!(busy.parse::<f64>().unwrap(), 43801.0 / hz);
        assert_eq!(value_of(&page, "raspi_network_receive_bytes_total{interface=\"eth0\"}"), Some("918273645"));
        assert!(!page.contains("interface=\"lo\""), "loopback is left out");
        assert_eq!(value_of(&page, "raspi_disk_read_bytes_total{device=\"mmcblk0\"}"), Some("546956288"));
        assert!(!page.contains("device=\"mmcblk0p1\""), "partitions are left out");
        assert!(value_of(&page, "raspi_temperature_celsius{sensor=\"cpu-thermal\"}").is_some(), "{page}");
        assert_eq!(page.matches("raspi_throttled{flag=").count(), 8);
    }

    #[test]
    fn a_source_that_cannot_be_read_is_left_out_and_the_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::under(dir.path());
        std::fs::create_dir_all(&roots.proc).unwrap();
        std::fs::write(roots.proc.join("loadavg"), "0.50 0.25 0.10 1/200 4242\n").unwrap();
        std::fs::write(roots.proc.join("meminfo"), "not meminfo\n").unwrap();
        let mut out = Exposition::with_capacity(0);
        write_host(&mut out, &roots);
        let page = out.finish();
        assert_eq!(
            page.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>(),
            ["raspi_load1 0.5", "raspi_load5 0.25", "raspi_load15 0.1"]
        );
    }

    #[test]
    fn zones_sharing_a_type_get_labels_of_their_own() {
        let zone =
            |zone: &str, kind: &str| host::thermal::Temperature { zone: zone.into(), kind: kind.into(), celsius: 40.0 };
        let labels = sensor_labels(&[
            zone("thermal_zone0", "acpitz"),
            zone("thermal_zone1", "acpitz"),
            zone("thermal_zone2", ""),
        ]);
        assert_eq!(labels, ["acpitz", "acpitz:thermal_zone1", "thermal_zone2"]);
    }

    #[test]
    fn this_process_reports_its_cpu_memory_descriptors_and_start() {
        let mut out = Exposition::with_capacity(0);
        write_process(&mut out, &Roots::system());
        let page = out.finish();
        for name in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"] {
            assert!(value_of(&page, name).is_some(), "{name}\n{page}");
        }
        let start: f64 = value_of(&page, "process_start_time_seconds").unwrap().parse().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(start > now - 86_400.0 * 365.0 && start <= now + 1.0, "{start} against {now}");
    }
}
