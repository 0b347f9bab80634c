//! Memory and swap usage from `/proc/meminfo`.
//!
//! "Used" is total minus MemAvailable, the kernel's own estimate of what can be claimed
//! without swapping: counting page cache as used would make every long-running Pi look full.

use std::collections::HashMap;
use std::path::Path;

use schemars::JsonSchema;
use serde::Serialize;

use super::{parse_error, percent, read_text, Result, Roots};

/// Memory and swap of the machine, in bytes.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Memory {
    /// Usable RAM (installed memory minus what firmware and kernel reserve at boot).
    pub total_bytes: u64,
    /// Memory that can be given to programs without swapping, page cache included.
    pub available_bytes: u64,
    /// Memory not available to programs: total minus available.
    pub used_bytes: u64,
    /// Memory holding nothing at all (usually small: Linux fills idle RAM with cache).
    pub free_bytes: u64,
    /// Block-device buffers.
    pub buffers_bytes: u64,
    /// Page cache (file contents kept in RAM).
    pub cached_bytes: u64,
    /// Size of all swap areas (0 without swap).
    pub swap_total_bytes: u64,
    /// Unused swap.
    pub swap_free_bytes: u64,
    /// used_bytes as a percentage of total_bytes, two decimals.
    pub used_percent: f64,
}

/// Reads `<proc>/meminfo`.
pub fn read_memory(roots: &Roots) -> Result<Memory> {
    let path = roots.proc.join("meminfo");
    parse_meminfo(&read_text(&path)?, &path)
}

fn parse_meminfo(text: &str, path: &Path) -> Result<Memory> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let (key, rest) =
            line.split_once(':').ok_or_else(|| parse_error(path, format!("line without a colon: {line:?}")))?;
        let mut words = rest.split_whitespace();
        let number = words
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| parse_error(path, format!("no number on line {line:?}")))?;
        // Most lines are in kB (which the kernel means as KiB); the HugePages_ counts have no unit.
        let value = match words.next() {
            Some("kB") => number.saturating_mul(1024),
            None => number,
            Some(unit) => return Err(parse_error(path, format!("unknown unit {unit:?} on line {line:?}"))),
        };
        fields.insert(key.trim(), value);
    }
    let get = |key: &str| fields.get(key).copied();
    let require = |key: &str| get(key).ok_or_else(|| parse_error(path, format!("no {key} line")));
    let total_bytes = require("MemTotal")?;
    let free_bytes = require("MemFree")?;
    let buffers_bytes = get("Buffers").unwrap_or(0);
    let cached_bytes = get("Cached").unwrap_or(0);
    // MemAvailable exists since Linux 3.14; before it, free + buffers + cache was the
    // customary approximation.
    let available_bytes = get("MemAvailable")
        .unwrap_or_else(|| free_bytes.saturating_add(buffers_bytes).saturating_add(cached_bytes))
        .min(total_bytes);
    let used_bytes = total_bytes.saturating_sub(available_bytes);
    Ok(Memory {
        total_bytes,
        available_bytes,
        used_bytes,
        free_bytes,
        buffers_bytes,
        cached_bytes,
        swap_total_bytes: get("SwapTotal").unwrap_or(0),
        swap_free_bytes: get("SwapFree").unwrap_or(0),
        used_percent: percent(used_bytes, total_bytes),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::host::{fixture, HostError};

    #[test]
    fn reads_the_memory_of_a_pi4() {
        let memory = read_memory(&fixture("pi4")).unwrap();
        assert_eq!(memory.total_bytes, 3882752 * 1024);
        assert_eq!(memory.available_bytes, 3276800 * 1024);
        assert_eq!(memory.used_bytes, (3882752 - 3276800) * 1024);
        assert_eq!(memory.free_bytes, 2457600 * 1024);
        assert_eq!(memory.buffers_bytes, 65536 * 1024);
        assert_eq!(memory.cached_bytes, 819200 * 1024);
        assert_eq!(memory.swap_total_bytes, 204796 * 1024);
        assert_eq!(memory.swap_free_bytes, 204796 * 1024);
        // 605952 / 3882752 = 15.6062...%
        assert_eq!(memory.used_percent, 15.61);
    }

    #[test]
    fn reads_the_memory_of_a_pi5() {
        let memory = read_memory(&fixture("pi5")).unwrap();
        assert_eq!(memory.total_bytes, 8245248 * 1024);
        assert_eq!(memory.used_bytes, (8245248 - 7340032) * 1024);
        assert_eq!(memory.swap_free_bytes, 458736 * 1024);
        // 905216 / 8245248 = 10.9786...%
        assert_eq!(memory.used_percent, 10.98);
    }

    #[test]
    fn estimates_available_memory_on_kernels_before_3_14() {
        let text = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n";
        let memory = parse_meminfo(text, Path::new("meminfo")).unwrap();
        assert_eq!(memory.available_bytes, 400 * 1024);
        assert_eq!(memory.used_percent, 60.0);
        assert_eq!(memory.swap_total_bytes, 0);
    }

    #[test]
    fn rejects_malformed_meminfo_naming_the_file() {
        for text in ["MemTotal 1000 kB\n", "MemTotal: lots kB\n", "MemTotal: 5 MB\n", "MemFree: 5 kB\n"] {
            let err = parse_meminfo(text, Path::new("/p/meminfo")).unwrap_err();
            assert!(matches!(err, HostError::Parse { ref path, .. } if path == Path::new("/p/meminfo")), "{text}");
        }
    }

    #[test]
    fn reads_the_memory_of_this_machine() {
        let memory = read_memory(&Roots::system()).unwrap();
        assert!(memory.total_bytes > 0);
        assert!(memory.available_bytes <= memory.total_bytes);
        assert!((0.0..=100.0).contains(&memory.used_percent));
    }
}
