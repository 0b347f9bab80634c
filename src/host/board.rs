//! Which board this is: model, serial number and the decoded Raspberry Pi revision code.
//!
//! The device tree names the board most reliably, so it is asked first; `/proc/cpuinfo`
//! fills the gaps (and is the only place for the revision code on most kernels). The
//! revision code packs memory size, SoC and manufacturer into bit fields, documented by
//! Raspberry Pi Ltd as `NOQuuuWuFMMMCCCCPPPPTTTTTTTTRRRR`; decoding it gives facts no file
//! states directly. On anything that is not a Pi every field may be empty: that is an answer,
//! not an error.

use schemars::JsonSchema;
use serde::Serialize;

use super::cpu::read_cpuinfo_if_present;
use super::{read_attr, HostError, Result, Roots};

/// The board the server runs on.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Board {
    /// Board model as the firmware names it, such as "Raspberry Pi 4 Model B Rev 1.4".
    pub model: Option<String>,
    /// Raspberry Pi revision code in hexadecimal, such as "c03114".
    pub revision: Option<String>,
    /// Board serial number, hexadecimal.
    pub serial: Option<String>,
    /// System-on-chip decoded from the revision code, such as "BCM2711" (Pi 4) or "BCM2712" (Pi 5).
    pub soc: Option<String>,
    /// Installed memory in megabytes, decoded from the revision code (4096 for a 4 GB board).
    pub memory_mb: Option<u64>,
    /// Who built the board, decoded from the revision code, such as "Sony UK".
    pub manufacturer: Option<String>,
    /// Whether the model names a Raspberry Pi.
    pub is_raspberry_pi: bool,
    /// Board type decoded from the revision code, such as "4B", "5", "Zero 2 W" or "CM4".
    pub board_type: Option<String>,
    /// Printed-circuit-board revision decoded from the revision code, such as "1.4".
    pub board_revision: Option<String>,
}

/// Identifies the board from the device tree and `<proc>/cpuinfo`.
pub fn read_board(roots: &Roots) -> Result<Board> {
    let cpuinfo = read_cpuinfo_if_present(roots)?;
    let model = device_tree_string(roots, "model")?.or(cpuinfo.model);
    let serial = device_tree_string(roots, "serial-number")?.or(cpuinfo.serial);
    let revision = match cpuinfo.revision {
        Some(revision) => Some(revision),
        None => device_tree_revision(roots)?,
    };
    let decoded = match revision.as_deref() {
        Some(code) => match u32::from_str_radix(code.trim_start_matches("0x"), 16) {
            Ok(code) => decode_revision(code),
            Err(_) => {
                // An undecodable code still leaves a usable model and serial to report.
                log::debug!("board revision {code:?} is not hexadecimal");
                Revision::default()
            }
        },
        None => Revision::default(),
    };
    let is_raspberry_pi = model.as_deref().is_some_and(|m| m.starts_with("Raspberry Pi"));
    Ok(Board {
        model,
        revision,
        serial,
        soc: decoded.soc.map(str::to_string),
        memory_mb: decoded.memory_mb,
        manufacturer: decoded.manufacturer.map(str::to_string),
        is_raspberry_pi,
        board_type: decoded.board_type.map(str::to_string),
        board_revision: decoded.board_revision,
    })
}

/// A NUL-terminated string property of the device-tree root node. `/proc/device-tree` is a
/// symlink that some kernels or containers lack, hence the sysfs fallback.
fn device_tree_string(roots: &Roots, property: &str) -> Result<Option<String>> {
    let candidates =
        [roots.proc.join("device-tree").join(property), roots.sys.join("firmware/devicetree/base").join(property)];
    for path in candidates {
        if let Some(value) = read_dt_attr(&path)? {
            if !value.is_empty() {
                return Ok(Some(value));
            }
        }
    }
    Ok(None)
}

/// The revision code as the firmware stores it in the device tree (one big-endian 32-bit
/// cell), for kernels whose cpuinfo has no `Revision` line.
fn device_tree_revision(roots: &Roots) -> Result<Option<String>> {
    let candidates = [
        roots.proc.join("device-tree/system/linux,revision"),
        roots.sys.join("firmware/devicetree/base/system/linux,revision"),
    ];
    for path in candidates {
        match std::fs::read(&path) {
            Ok(bytes) => {
                if let Ok(cell) = <[u8; 4]>::try_from(bytes.as_slice()) {
                    return Ok(Some(format!("{:04x}", u32::from_be_bytes(cell))));
                }
                log::debug!("{} is not one 32-bit cell", path.display());
            }
            Err(e) if is_absent(&e) => {}
            Err(source) => return Err(HostError::Read { path, source }),
        }
    }
    Ok(None)
}

/// Reads a device-tree attribute, treating a missing parent (no device tree at all, as on
/// x86 where `/proc/device-tree` does not exist) like a missing file.
fn read_dt_attr(path: &std::path::Path) -> Result<Option<String>> {
    match read_attr(path) {
        Err(HostError::Read { source, .. }) if is_absent(&source) => Ok(None),
        other => other,
    }
}

fn is_absent(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(nix::libc::ENOTDIR)
}

/// What a Raspberry Pi revision code says; every part is `None` where the code does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revision {
    /// Installed memory in megabytes.
    pub memory_mb: Option<u64>,
    /// Board maker.
    pub manufacturer: Option<&'static str>,
    /// System-on-chip.
    pub soc: Option<&'static str>,
    /// Board type, such as "4B".
    pub board_type: Option<&'static str>,
    /// PCB revision, such as "1.4".
    pub board_revision: Option<String>,
}

/// Decodes a Raspberry Pi revision code, new style (bit 23 set) or the sequential old style.
pub fn decode_revision(code: u32) -> Revision {
    const NEW_STYLE: u32 = 1 << 23;
    if code & NEW_STYLE == 0 {
        return decode_old_revision(code);
    }
    let memory_mb = match (code >> 20) & 0x7 {
        0 => Some(256),
        1 => Some(512),
        2 => Some(1024),
        3 => Some(2048),
        4 => Some(4096),
        5 => Some(8192),
        6 => Some(16384),
        _ => None,
    };
    let manufacturer = match (code >> 16) & 0xf {
        0 => Some("Sony UK"),
        1 => Some("Egoman"),
        2 | 4 => Some("Embest"),
        3 => Some("Sony Japan"),
        5 => Some("Stadium"),
        _ => None,
    };
    let soc = match (code >> 12) & 0xf {
        0 => Some("BCM2835"),
        1 => Some("BCM2836"),
        2 => Some("BCM2837"),
        3 => Some("BCM2711"),
        4 => Some("BCM2712"),
        _ => None,
    };
    let board_type = match (code >> 4) & 0xff {
        0x00 => Some("A"),
        0x01 => Some("B"),
        0x02 => Some("A+"),
        0x03 => Some("B+"),
        0x04 => Some("2B"),
        0x05 => Some("Alpha"),
        0x06 => Some("CM1"),
        0x08 => Some("3B"),
        0x09 => Some("Zero"),
        0x0a => Some("CM3"),
        0x0c => Some("Zero W"),
        0x0d => Some("3B+"),
        0x0e => Some("3A+"),
        0x10 => Some("CM3+"),
        0x11 => Some("4B"),
        0x12 => Some("Zero 2 W"),
        0x13 => Some("400"),
        0x14 => Some("CM4"),
        0x15 => Some("CM4S"),
        0x17 => Some("5"),
        0x18 => Some("CM5"),
        0x19 => Some("500"),
        0x1a => Some("CM5 Lite"),
        _ => None,
    };
    Revision { memory_mb, manufacturer, soc, board_type, board_revision: Some(format!("1.{}", code & 0xf)) }
}

/// The first boards (all BCM2835) got sequential codes 0002 to 0015, listed one by one in
/// the documentation. A set warranty bit (24) shows up as a leading 1 and is ignored.
fn decode_old_revision(code: u32) -> Revision {
    let (board_type, board_revision, memory_mb, manufacturer) = match code & 0xff_ffff {
        0x02 | 0x03 => ("B", "1.0", Some(256), "Egoman"),
        0x04 => ("B", "2.0", Some(256), "Sony UK"),
        0x05 => ("B", "2.0", Some(256), "Qisda"),
        0x06 => ("B", "2.0", Some(256), "Egoman"),
        0x07 => ("A", "2.0", Some(256), "Egoman"),
        0x08 => ("A", "2.0", Some(256), "Sony UK"),
        0x09 => ("A", "2.0", Some(256), "Qisda"),
        0x0d => ("B", "2.0", Some(512), "Egoman"),
        0x0e => ("B", "2.0", Some(512), "Sony UK"),
        0x0f => ("B", "2.0", Some(512), "Egoman"),
        0x10 => ("B+", "1.2", Some(512), "Sony UK"),
        0x11 => ("CM1", "1.0", Some(512), "Sony UK"),
        0x12 => ("A+", "1.1", Some(256), "Sony UK"),
        0x13 => ("B+", "1.2", Some(512), "Embest"),
        0x14 => ("CM1", "1.0", Some(512), "Embest"),
        // Sold with either 256 MB or 512 MB under the same code.
        0x15 => ("A+", "1.1", None, "Embest"),
        _ => return Revision::default(),
    };
    Revision {
        memory_mb,
        manufacturer: Some(manufacturer),
        soc: Some("BCM2835"),
        board_type: Some(board_type),
        board_revision: Some(board_revision.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::host::fixture;

    #[test]
    fn reads_the_model_of_a_pi4() {
        let board = read_board(&fixture("pi4")).unwrap();
        assert_eq!(board.model.as_deref(), Some("Raspberry Pi 4 Model B Rev 1.4"));
        assert_eq!(board.revision.as_deref(), Some("c03114"));
        assert_eq!(board.serial.as_deref(), Some("100000003a5f9c1e"));
        assert_eq!(board.soc.as_deref(), Some("BCM2711"));
        assert_eq!(board.memory_mb, Some(4096));
        assert_eq!(board.manufacturer.as_deref(), Some("Sony UK"));
        assert_eq!(board.board_type.as_deref(), Some("4B"));
        assert_eq!(board.board_revision.as_deref(), Some("1.4"));
        assert!(board.is_raspberry_pi);
    }

    #[test]
    fn reads_the_model_of_a_pi5() {
        let board = read_board(&fixture("pi5")).unwrap();
        assert_eq!(board.model.as_deref(), Some("Raspberry Pi 5 Model B Rev 1.0"));
        assert_eq!(board.revision.as_deref(), Some("d04170"));
        assert_eq!(board.serial.as_deref(), Some("6f2a9c41d7e3b850"));
        assert_eq!(board.soc.as_deref(), Some("BCM2712"));
        assert_eq!(board.memory_mb, Some(8192));
        assert_eq!(board.board_type.as_deref(), Some("5"));
        assert_eq!(board.board_revision.as_deref(), Some("1.0"));
        assert!(board.is_raspberry_pi);
    }

    #[test]
    fn falls_back_to_sysfs_and_the_device_tree_revision_cell() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("sys/firmware/devicetree/base");
        std::fs::create_dir_all(base.join("system")).unwrap();
        std::fs::write(base.join("model"), b"Raspberry Pi Zero 2 W Rev 1.0\0").unwrap();
        std::fs::write(base.join("system/linux,revision"), 0x902120u32.to_be_bytes()).unwrap();
        let board = read_board(&Roots::under(dir.path())).unwrap();
        assert_eq!(board.model.as_deref(), Some("Raspberry Pi Zero 2 W Rev 1.0"));
        assert_eq!(board.revision.as_deref(), Some("902120"));
        assert_eq!(board.soc.as_deref(), Some("BCM2837"));
        assert_eq!(board.memory_mb, Some(512));
        assert_eq!(board.board_type.as_deref(), Some("Zero 2 W"));
        assert_eq!(board.serial, None);
    }

    #[test]
    fn takes_model_and_serial_from_cpuinfo_without_a_device_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(
            dir.path().join("proc/cpuinfo"),
            "processor\t: 0\nmodel name\t: ARMv6-compatible processor rev 7 (v6l)\n\n\
             Hardware\t: BCM2835\nRevision\t: 1000002\nSerial\t\t: 00000000abcdef01\n\
             Model\t\t: Raspberry Pi Model B Rev 1\n",
        )
        .unwrap();
        let board = read_board(&Roots::under(dir.path())).unwrap();
        assert_eq!(board.model.as_deref(), Some("Raspberry Pi Model B Rev 1"));
        assert_eq!(board.serial.as_deref(), Some("00000000abcdef01"));
        assert_eq!(board.soc.as_deref(), Some("BCM2835"));
        assert_eq!(board.memory_mb, Some(256));
        assert_eq!(board.manufacturer.as_deref(), Some("Egoman"));
    }

    #[test]
    fn reports_an_unknown_board_without_failing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(dir.path().join("proc/cpuinfo"), "processor : 0\nRevision : zz\n").unwrap();
        let board = read_board(&Roots::under(dir.path())).unwrap();
        assert_eq!(board.revision.as_deref(), Some("zz"));
        assert_eq!(board.soc, None);
        assert!(!board.is_raspberry_pi);
    }

    #[test]
    fn decodes_documented_revision_codes() {
        let cm4 = decode_revision(0xb03141);
        assert_eq!((cm4.board_type, cm4.soc, cm4.memory_mb), (Some("CM4"), Some("BCM2711"), Some(2048)));
        let pi3 = decode_revision(0xa22082);
        assert_eq!((pi3.board_type, pi3.manufacturer), (Some("3B"), Some("Embest")));
        assert_eq!(pi3.board_revision.as_deref(), Some("1.2"));
        let pi5_16gb = decode_revision(0xe04171);
        assert_eq!(pi5_16gb.memory_mb, Some(16384));
        assert_eq!(decode_revision(0x0015).memory_mb, None);
        assert_eq!(decode_revision(0x0001), Revision::default());
    }

    #[test]
    fn reads_the_board_of_this_machine() {
        let board = read_board(&Roots::system()).unwrap();
        assert_eq!(board.is_raspberry_pi, board.model.as_deref().unwrap_or("").starts_with("Raspberry Pi"));
    }
}
