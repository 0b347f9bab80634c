//! Bytes read from and written to each disk since boot, from `/proc/diskstats`.
//!
//! The file lists partitions, loop devices and RAM disks besides whole disks; only whole
//! disks are kept, so that a byte is counted once.

use schemars::JsonSchema;
use serde::Serialize;

use super::{parse_error, read_text, Result, Roots};

/// One disk's traffic since boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct DiskIo {
    /// Kernel name of the disk, such as "mmcblk0" (SD card), "nvme0n1" or "sda".
    pub device: String,
    pub read_bytes: u64,
    pub written_bytes: u64,
}

/// `/proc/diskstats` counts in sectors of 512 bytes, whatever the device's own sector size.
const SECTOR_BYTES: u64 = 512;

/// Reads the whole disks of `<proc>/diskstats`.
pub fn read_disk_io(roots: &Roots) -> Result<Vec<DiskIo>> {
    let path = roots.proc.join("diskstats");
    let text = read_text(&path)?;
    let mut disks = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(&name) = fields.get(2) else { continue };
        if !is_whole_disk(name) {
            continue;
        }
        let sectors = |i: usize| -> Result<u64> {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| parse_error(&path, format!("{name}: field {} is not a sector count", i + 1)))
        };
        disks.push(DiskIo {
            device: name.to_string(),
            read_bytes: sectors(5)?.saturating_mul(SECTOR_BYTES),
            written_bytes: sectors(9)?.saturating_mul(SECTOR_BYTES),
        });
    }
    Ok(disks)
}

/// Whether a kernel block device name is a whole disk: `mmcblk0` and `nvme0n1` but not
/// their `p1` partitions, `sda` but not `sda1`; never loop devices, RAM disks or zram.
pub fn is_whole_disk(name: &str) -> bool {
    let digits_then = |rest: &str| -> bool { !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) };
    if let Some(rest) = name.strip_prefix("mmcblk") {
        return digits_then(rest);
    }
    if let Some(rest) = name.strip_prefix("nvme") {
        // nvme<ctrl>n<namespace>
        return match rest.split_once('n') {
            Some((ctrl, ns)) => digits_then(ctrl) && digits_then(ns),
            None => false,
        };
    }
    for prefix in ["sd", "vd", "xvd", "hd"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase());
        }
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn whole_disks_are_kept_and_partitions_loops_and_ram_disks_are_not() {
        for name in ["mmcblk0", "mmcblk1", "nvme0n1", "sda", "sdab", "vda", "xvdb"] {
            assert!(is_whole_disk(name), "{name}");
        }
        for name in
            ["mmcblk0p1", "mmcblk0boot0", "nvme0n1p2", "sda1", "loop0", "ram0", "zram0", "dm-0", "md0", "sd", ""]
        {
            assert!(!is_whole_disk(name), "{name}");
        }
    }

    #[test]
    fn the_fixture_pi_reads_its_sd_card_and_usb_disk_in_bytes() {
        let disks = read_disk_io(&crate::host::fixture("pi4")).unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(names, ["mmcblk0", "sda"]);
        assert_eq!(disks[0].read_bytes, 1_068_274 * 512);
        assert_eq!(disks[0].written_bytes, 2_934_120 * 512);
    }

    #[test]
    fn a_damaged_line_is_a_parse_error_naming_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(dir.path().join("proc/diskstats"), "179 0 mmcblk0 1 2 x 4 5 6 7 8\n").unwrap();
        let e = read_disk_io(&Roots::under(dir.path())).unwrap_err().to_string();
        assert!(e.contains("mmcblk0") && e.contains("field 6"), "{e}");
    }
}
