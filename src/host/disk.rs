//! Mounted storage and how full it is.
//!
//! `/proc/mounts` lists dozens of kernel pseudo file systems (proc, cgroup, tmpfs...) that
//! say nothing about storage, so only file systems that live on a device are kept; each is
//! then measured with `statvfs`, which needs no privilege.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Serialize;

use super::{parse_error, percent, read_text, Result, Roots};

/// One mounted file system and its space.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Mount {
    /// What is mounted, such as "/dev/mmcblk0p2" (SD card), "/dev/nvme0n1p2" or "/dev/sda1" (USB).
    pub device: String,
    /// Where it is mounted, such as "/" or "/boot/firmware".
    pub mount_point: String,
    /// File-system type, such as "ext4" or "vfat".
    pub fs_type: String,
    /// Whether it is mounted read-only.
    pub read_only: bool,
    /// Size of the file system.
    pub total_bytes: u64,
    /// Space in use (including blocks reserved for root).
    pub used_bytes: u64,
    /// Space an ordinary user can still write.
    pub available_bytes: u64,
    /// How full it is, as `df` reports it: used / (used + available), two decimals.
    pub used_percent: f64,
}

/// One line of `/proc/mounts`, escapes decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    device: String,
    mount_point: String,
    fs_type: String,
    read_only: bool,
}

/// Reads the storage mounts of `<proc>/mounts` and measures each; mounts that cannot be
/// measured (gone, or hidden from this user) are left out.
pub fn read_mounts(roots: &Roots) -> Result<Vec<Mount>> {
    let path = roots.proc.join("mounts");
    let entries = parse_mounts(&read_text(&path)?, &path)?;
    let mut mounts = Vec::new();
    for entry in entries {
        let target = under_root(&roots.fs, &entry.mount_point);
        match nix::sys::statvfs::statvfs(&target) {
            Ok(stats) => mounts.push(measure(entry, &stats)),
            Err(e) => log::debug!("skipping {}: statvfs failed: {e}", target.display()),
        }
    }
    Ok(mounts)
}

// statvfs field widths differ by target (32 bits on 32-bit Raspberry Pi OS, 64 here), so the
// conversions are only useless on some of them.
#[allow(clippy::useless_conversion)]
fn measure(entry: MountEntry, stats: &nix::sys::statvfs::Statvfs) -> Mount {
    let block = u64::from(stats.fragment_size());
    let total_bytes = u64::from(stats.blocks()).saturating_mul(block);
    let free_bytes = u64::from(stats.blocks_free()).saturating_mul(block);
    let available_bytes = u64::from(stats.blocks_available()).saturating_mul(block);
    let used_bytes = total_bytes.saturating_sub(free_bytes);
    Mount {
        device: entry.device,
        mount_point: entry.mount_point,
        fs_type: entry.fs_type,
        read_only: entry.read_only,
        total_bytes,
        used_bytes,
        available_bytes,
        used_percent: percent(used_bytes, used_bytes.saturating_add(available_bytes)),
    }
}

/// `mount_point` (absolute) re-rooted under `root`, so a fixture's `fs/` stands in for `/`.
fn under_root(root: &Path, mount_point: &str) -> PathBuf {
    let relative = mount_point.trim_start_matches('/');
    if relative.is_empty() {
        root.to_path_buf()
    } else {
        root.join(relative)
    }
}

/// File systems that store data on a device.
const STORAGE_TYPES: &[&str] = &[
    "ext2", "ext3", "ext4", "vfat", "msdos", "exfat", "btrfs", "xfs", "f2fs", "ntfs", "ntfs3", "fuseblk", "zfs", "jfs",
    "reiserfs", "nilfs2", "hfsplus",
];

/// File systems counted only when they hold the root: an overlay root is how Raspberry Pi
/// OS's read-only mode works, and a netbooted Pi has an NFS root. Elsewhere overlays are
/// container layers, and `statvfs` on a network share can hang while its server is away.
const ROOT_ONLY_TYPES: &[&str] = &["overlay", "nfs", "nfs4", "cifs", "smb3"];

fn is_storage(fs_type: &str, mount_point: &str) -> bool {
    STORAGE_TYPES.contains(&fs_type) || (mount_point == "/" && ROOT_ONLY_TYPES.contains(&fs_type))
}

/// Parses `/proc/mounts`, keeping storage file systems. When several mounts share a mount
/// point, the last one is the one visible there, so it replaces the earlier ones.
fn parse_mounts(text: &str, path: &Path) -> Result<Vec<MountEntry>> {
    let mut entries: Vec<MountEntry> = Vec::new();
    let mut index_by_point: HashMap<String, usize> = HashMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [device, mount_point, fs_type, options, ..] = fields.as_slice() else {
            return Err(parse_error(path, format!("expected at least 4 fields on line {line:?}")));
        };
        let mount_point = unescape(mount_point);
        if !is_storage(fs_type, &mount_point) {
            continue;
        }
        let entry = MountEntry {
            device: unescape(device),
            fs_type: fs_type.to_string(),
            read_only: options.split(',').any(|o| o == "ro"),
            mount_point: mount_point.clone(),
        };
        match index_by_point.get(&mount_point) {
            Some(&i) => entries[i] = entry,
            None => {
                index_by_point.insert(mount_point, entries.len());
                entries.push(entry);
            }
        }
    }
    Ok(entries)
}

/// Decodes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash). Anything else, including a backslash not followed by three octal digits, is
/// kept as it is.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(digits) = bytes.get(i + 1..i + 4) {
                if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                    if let Ok(byte) = u8::try_from(value) {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::host::{fixture, HostError};

    fn summary(mounts: &[Mount]) -> Vec<(&str, &str, &str, bool)> {
        mounts.iter().map(|m| (m.device.as_str(), m.mount_point.as_str(), m.fs_type.as_str(), m.read_only)).collect()
    }

    #[test]
    fn lists_the_sd_card_partitions_and_usb_stick_of_a_pi4() {
        let mounts = read_mounts(&fixture("pi4")).unwrap();
        // /mnt/backup has no directory in the fixture, so statvfs fails and it is skipped.
        assert_eq!(
            summary(&mounts),
            vec![
                ("/dev/mmcblk0p2", "/", "ext4", false),
                ("/dev/mmcblk0p1", "/boot/firmware", "vfat", false),
                ("/dev/sdb1", "/media/pi/USB STICK", "vfat", true),
            ]
        );
        for mount in &mounts {
            assert!(mount.total_bytes > 0);
            assert!(mount.used_bytes <= mount.total_bytes);
            assert!(mount.available_bytes <= mount.total_bytes);
            assert!((0.0..=100.0).contains(&mount.used_percent));
        }
    }

    #[test]
    fn keeps_the_last_mount_on_a_shared_mount_point_of_a_pi5() {
        let mounts = read_mounts(&fixture("pi5")).unwrap();
        assert_eq!(
            summary(&mounts),
            vec![
                ("/dev/nvme0n1p2", "/", "ext4", false),
                ("/dev/sda2", "/srv", "btrfs", false),
                ("/dev/nvme0n1p1", "/boot/firmware", "vfat", false),
            ]
        );
    }

    #[test]
    fn keeps_overlay_and_nfs_only_as_root() {
        let text = "overlay / overlay rw,lowerdir=/a 0 0\n\
                    overlay /var/lib/docker/overlay2/x/merged overlay rw 0 0\n\
                    server:/export /mnt/nfs nfs4 rw 0 0\n\
                    tmpfs /tmp tmpfs rw 0 0\n";
        let entries = parse_mounts(text, Path::new("mounts")).unwrap();
        let points: Vec<_> = entries.iter().map(|e| e.mount_point.as_str()).collect();
        assert_eq!(points, vec!["/"]);
    }

    #[test]
    fn decodes_octal_escapes_in_mount_points() {
        assert_eq!(unescape(r"/media/my\040disk\011x"), "/media/my disk\tx");
        assert_eq!(unescape(r"back\134slash"), r"back\slash");
        assert_eq!(unescape(r"trailing\04"), r"trailing\04");
        assert_eq!(unescape(r"not\999octal"), r"not\999octal");
    }

    #[test]
    fn computes_used_percent_as_df_does() {
        let entry =
            MountEntry { device: "/dev/x".into(), mount_point: "/".into(), fs_type: "ext4".into(), read_only: false };
        let stats = nix::sys::statvfs::statvfs(Path::new("/")).unwrap();
        let mount = measure(entry, &stats);
        let expected = percent(mount.used_bytes, mount.used_bytes + mount.available_bytes);
        assert_eq!(mount.used_percent, expected);
        assert_eq!(percent(1, 3), 33.33);
        assert_eq!(percent(0, 0), 0.0);
    }

    #[test]
    fn rejects_a_truncated_mounts_line_naming_the_file() {
        let err = parse_mounts("/dev/sda1 /mnt ext4\n", Path::new("/p/mounts")).unwrap_err();
        assert!(matches!(err, HostError::Parse { ref path, .. } if path == Path::new("/p/mounts")));
    }

    #[test]
    fn reads_the_mounts_of_this_machine() {
        let mounts = read_mounts(&Roots::system()).unwrap();
        for mount in &mounts {
            assert!(mount.mount_point.starts_with('/'));
            assert!(mount.used_bytes <= mount.total_bytes);
        }
    }
}
