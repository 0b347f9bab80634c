//! Figures of the metrics history for `make bench` (bench/metrics.py puts them in
//! BENCHMARKS.md): 30 simulated days of the capacity plan's 15 metrics at 60 s written
//! through the sampler's store with its retention, the bytes each sample costs on disk,
//! the time of the two queries, a retention pass at the size limit, and the CPU
//! time of a real sampler round on this machine.
//!
//!     cargo run --release --example metrics_bench [-- DIR]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mcp_raspi::metrics::collect::{Collector, Reading, Unit};
use mcp_raspi::metrics::query::{Aggregation, Query, Reader};
use mcp_raspi::metrics::schema::MIGRATIONS;
use mcp_raspi::metrics::store::Store;

const DAYS: i64 = 30;
const INTERVAL: i64 = 60;
const START: i64 = 1_796_000_000;
const QUERY_RUNS: usize = 20;

/// A small deterministic generator, so that every run writes the same history.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The capacity plan's metrics: 4 cores, memory used and cached, 2 disks' use, disk read
/// and write, eth0 and wlan0 both ways, the SoC's temperature. Values wander as a Pi's do.
struct Pi {
    rng: Rng,
    cpu: [f64; 4],
    used: f64,
    cached: f64,
    temperature: f64,
    root: f64,
}

impl Pi {
    fn round(&mut self, i: i64) -> Vec<Reading> {
        let r = |name: &str, unit: Unit, value: f64| Reading { name: name.to_string(), unit, value };
        let day = ((i * INTERVAL) % 86_400) as f64 / 86_400.0;
        let busy = 15.0 + 10.0 * (day * std::f64::consts::TAU).sin();
        let mut out = Vec::with_capacity(15);
        for core in 0..4 {
            let c = &mut self.cpu[core];
            *c = (*c * 0.7 + (busy + (self.rng.next() - 0.5) * 20.0) * 0.3).clamp(0.0, 100.0);
            out.push(r(&format!("cpu.core{core}.percent"), Unit::Percent, (*c * 10.0).round() / 10.0));
        }
        self.used = (self.used + (self.rng.next() - 0.5) * 4.0e6).clamp(300e6, 900e6);
        self.cached = (self.cached + (self.rng.next() - 0.48) * 2.0e6).clamp(200e6, 1.5e9);
        out.push(r("memory.used_bytes", Unit::Bytes, (self.used / 4096.0).round() * 4096.0));
        out.push(r("memory.cached_bytes", Unit::Bytes, (self.cached / 4096.0).round() * 4096.0));
        self.root = (self.root + self.rng.next() * 0.0004).min(95.0);
        out.push(r("disk./.used_percent", Unit::Percent, (self.root * 100.0).round() / 100.0));
        out.push(r("disk./boot/firmware.used_percent", Unit::Percent, 21.37));
        let bursty =
            |rng: &mut Rng, base: f64| if rng.next() < 0.1 { base * 40.0 * rng.next() } else { base * rng.next() };
        out.push(r(
            "disk_io.mmcblk0.read_bytes_per_second",
            Unit::BytesPerSecond,
            bursty(&mut self.rng, 2_000.0).round(),
        ));
        out.push(r(
            "disk_io.mmcblk0.written_bytes_per_second",
            Unit::BytesPerSecond,
            bursty(&mut self.rng, 8_000.0).round(),
        ));
        out.push(r("net.eth0.rx_bytes_per_second", Unit::BytesPerSecond, bursty(&mut self.rng, 3_000.0).round()));
        out.push(r("net.eth0.tx_bytes_per_second", Unit::BytesPerSecond, bursty(&mut self.rng, 1_500.0).round()));
        out.push(r("net.wlan0.rx_bytes_per_second", Unit::BytesPerSecond, bursty(&mut self.rng, 200.0).round()));
        out.push(r("net.wlan0.tx_bytes_per_second", Unit::BytesPerSecond, bursty(&mut self.rng, 100.0).round()));
        self.temperature =
            (self.temperature * 0.9 + (40.0 + busy * 0.6 + (self.rng.next() - 0.5) * 2.0) * 0.1).clamp(30.0, 85.0);
        // The kernel reports millidegrees; the Pi's sensor moves in steps of about 0.5 °C.
        out.push(r("temperature.cpu-thermal.celsius", Unit::Celsius, (self.temperature * 2.0).round() / 2.0));
        out
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() -> Result<(), String> {
    let base = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("metrics-bench").tempdir_in(base).map_err(|e| e.to_string())?;
    let path = dir.path().join("metrics.db");
    let (mut store, _) = Store::open(&path, MIGRATIONS)?;
    let mut pi = Pi {
        rng: Rng(0x9e37_79b9_7f4a_7c15),
        cpu: [10.0; 4],
        used: 450e6,
        cached: 600e6,
        temperature: 48.0,
        root: 38.0,
    };
    let rounds = DAYS * 86_400 / INTERVAL;
    let max_age = Duration::from_secs(DAYS as u64 * 86_400);
    let max_bytes = 100 * 1024 * 1024;
    let write_started = Instant::now();
    let mut write_cpu = Duration::ZERO;
    for i in 0..rounds {
        let round = pi.round(i);
        let cpu = thread_cpu();
        let t = START + i * INTERVAL;
        store.append(t, &round).map_err(|e| e.to_string())?;
        store.enforce(t, max_age, max_bytes, Duration::from_millis(50)).map_err(|e| e.to_string())?;
        write_cpu += thread_cpu() - cpu;
    }
    let write_wall = write_started.elapsed();
    let samples = store.totals.samples;
    let end = START + (rounds - 1) * INTERVAL;
    drop(store);
    // What the files hold once the write-ahead log is back in the database.
    let conn = rusqlite::Connection::open(&path).map_err(|e| e.to_string())?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").map_err(|e| e.to_string())?;
    drop(conn);
    let file = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
    let per_sample = file as f64 / samples as f64;

    let reader = Reader::open(&path).map_err(|e| format!("{e:?}"))?;
    let time_query = |q: &Query| -> Result<(Duration, Duration, usize), String> {
        let mut times = Vec::new();
        let mut points = 0;
        for _ in 0..QUERY_RUNS {
            let started = Instant::now();
            let out = reader.query(q).map_err(|e| format!("{e:?}"))?;
            times.push(started.elapsed());
            points = out.iter().map(|s| s.points.len()).sum();
        }
        let max = *times.iter().max().unwrap_or(&Duration::ZERO);
        Ok((median(times), max, points))
    };
    let one = Query {
        names: vec!["temperature.cpu-thermal.celsius".into()],
        since: end - DAYS * 86_400,
        until: end,
        step: 3600,
        aggregation: Aggregation::Avg,
    };
    let (one_median, one_max, one_points) = time_query(&one)?;
    let all = Query { names: vec![], since: end - 86_400, until: end, step: 60, aggregation: Aggregation::Avg };
    let (all_median, all_max, all_points) = time_query(&all)?;

    // Retention at the size limit: the limit set 5 % under what the pages hold. The first
    // passes catch up (each stops after its 50 ms budget); then, over 12 more hours of
    // rounds, a pass removes the oldest hour whenever the newest rounds need room.
    let (mut store, _) = Store::open(&path, MIGRATIONS)?;
    let limit = store.used_bytes().map_err(|e| e.to_string())? / 20 * 19;
    let mut t = end;
    let mut catch_up = Vec::new();
    let mut steady = Vec::new();
    let mut idle = Vec::new();
    for k in 0..(12 * 3600 / INTERVAL) {
        t += INTERVAL;
        store.append(t, &pi.round(rounds + k)).map_err(|e| e.to_string())?;
        let pass = store.enforce(t, max_age, limit, Duration::from_millis(50)).map_err(|e| e.to_string())?;
        if pass.deleted_samples == 0 {
            idle.push(pass.took);
        } else if k < 5 && steady.is_empty() && (catch_up.len() as i64) == k {
            catch_up.push(pass.took);
        } else {
            steady.push(pass.took);
        }
    }
    let within = store.used_bytes().map_err(|e| e.to_string())? <= limit;
    drop(store);

    // A real round on this machine: the sampler's reads of /proc and /sys, and its write.
    let live = dir.path().join("live.db");
    let (mut store, _) = Store::open(&live, MIGRATIONS)?;
    let roots = mcp_raspi::host::Roots { proc: "/proc".into(), sys: "/sys".into(), etc: "/etc".into(), fs: "/".into() };
    let mut collector = Collector::default();
    let mut cpu_times = Vec::new();
    let mut values = 0;
    for k in 0..200 {
        let cpu = thread_cpu();
        let (readings, _) = collector.round(&roots, (START + k * 60) as f64);
        store.append(START + k * 60, &readings).map_err(|e| e.to_string())?;
        store.enforce(START + k * 60, max_age, max_bytes, Duration::from_millis(50)).map_err(|e| e.to_string())?;
        cpu_times.push(thread_cpu() - cpu);
        values = readings.len();
    }
    let round_median = median(cpu_times[1..].to_vec());

    println!("| Measure | Value | Target | Met |");
    println!("|---|---|---|---|");
    println!(
        "| Bytes on disk per sample, {DAYS} days of 15 metrics at {INTERVAL} s ({samples} samples, {:.2} MB file) | {per_sample:.2} B | ≤ 12 B | {} |",
        file as f64 / 1e6,
        if per_sample <= 12.0 { "yes" } else { "**NO**" }
    );
    println!(
        "| Writing those {DAYS} days: {rounds} rounds with retention, CPU time per round | {:.1} µs ({:.1} s wall in all) | – | – |",
        write_cpu.as_secs_f64() * 1e6 / rounds as f64,
        write_wall.as_secs_f64()
    );
    println!(
        "| metrics.query, one metric over {DAYS} days at a 1 h step ({one_points} points), median / slowest of {QUERY_RUNS} | {} / {} | ≤ 20 ms | {} |",
        ms(one_median),
        ms(one_max),
        if one_median <= Duration::from_millis(20) { "yes" } else { "**NO**" }
    );
    println!(
        "| metrics.query, all 15 metrics over 24 h at 1 min ({all_points} points), median / slowest of {QUERY_RUNS} | {} / {} | – | – |",
        ms(all_median),
        ms(all_max)
    );
    let slowest = |v: &[Duration]| ms(v.iter().copied().max().unwrap_or_default());
    println!(
        "| Retention at the size limit (set 5 % under the pages in use), first passes catching up: {} passes, slowest | {} | – | – |",
        catch_up.len(),
        slowest(&catch_up)
    );
    println!(
        "| Retention at the size limit, then over 12 h of rounds: passes removing the oldest hour ({}), median / slowest | {} / {} | – | – |",
        steady.len(),
        ms(median(if steady.is_empty() { vec![Duration::ZERO] } else { steady.clone() })),
        slowest(&steady)
    );
    println!(
        "| Retention at the size limit, the other {} rounds' check, median | {} | – | – |",
        idle.len(),
        ms(median(if idle.is_empty() { vec![Duration::ZERO] } else { idle.clone() }))
    );
    println!(
        "| The database within its limit after those 12 h | {} | yes | {} |",
        if within { "yes" } else { "no" },
        if within { "yes" } else { "**NO**" }
    );
    println!(
        "| Sampler round on this machine ({values} values read from /proc and /sys and written), CPU time, median of 199 | {:.0} µs | – | – |",
        round_median.as_secs_f64() * 1e6
    );
    Ok(())
}
