//! The canonical form of a payload that deltas are computed between: one uncompressed tar
//! that the publisher builds from a package's payload and a device builds from its
//! installed release, byte for byte the same when the files are.
//!
//! Only what a release is made of goes in: `bin/` and `share/` with their directories,
//! files and symlinks, in byte order of their paths, each entry under
//! `usr/lib/mcp-raspi/` as in a package's `data.tar`, so that the rebuilt tar goes through
//! the same extraction as a package. Nothing that differs between two copies of the same
//! files does: owners are 0, times are 0, a file's mode is 0755 when anyone may execute it
//! and 0644 otherwise (the package, dpkg and the release installer agree on no more than
//! that), a directory's is 0755.

use std::fs;
use std::io::{self, Read as _, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::update::release::PAYLOAD_PARTS;

/// Where the payload lies in the tar, as in a package's `data.tar`.
pub(super) const PREFIX: &str = "usr/lib/mcp-raspi";

/// Bounds on a payload read into its canonical tar.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    pub(super) max_bytes: u64,
    pub(super) max_entries: usize,
}

/// The canonical tar of the payload in `dir` (a release directory or an extracted payload).
pub(super) fn payload_tar(dir: &Path, bounds: Bounds) -> Result<Vec<u8>, String> {
    write_payload_tar(dir, bounds, Vec::new())
}

/// [`payload_tar`], written to `out`, which is returned.
pub(super) fn write_payload_tar<W: Write>(dir: &Path, bounds: Bounds, out: W) -> Result<W, String> {
    let mut walk = Walk { builder: tar::Builder::new(out), bounds, entries: 0, bytes: 0 };
    let mut found = false;
    for part in PAYLOAD_PARTS {
        let path = dir.join(part);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                found = true;
                walk.add(&path, part)?;
            }
            Ok(_) => return Err(format!("{} is not a directory", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    }
    if !found {
        return Err(format!("{} holds no payload ({})", dir.display(), PAYLOAD_PARTS.join("/, ") + "/"));
    }
    walk.builder.into_inner().map_err(|e| format!("cannot finish the payload's tar: {e}"))
}

struct Walk<W: Write> {
    builder: tar::Builder<W>,
    bounds: Bounds,
    entries: usize,
    bytes: u64,
}

impl<W: Write> Walk<W> {
    /// Adds `path`, known as `rel` in the payload, and everything beneath it.
    fn add(&mut self, path: &Path, rel: &str) -> Result<(), String> {
        let meta = fs::symlink_metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        self.entries += 1;
        if self.entries > self.bounds.max_entries {
            return Err(format!("the payload holds more than {} entries", self.bounds.max_entries));
        }
        let name = format!("{PREFIX}/{rel}");
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        let fail = |e: io::Error| format!("cannot add {} to the payload's tar: {e}", path.display());
        if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            self.builder.append_data(&mut header, format!("{name}/"), io::empty()).map_err(fail)?;
            let mut names: Vec<_> = fs::read_dir(path)
                .map_err(|e| format!("cannot list {}: {e}", path.display()))?
                .map(|entry| entry.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("cannot list {}: {e}", path.display()))?;
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for child in names {
                let Some(child_name) = child.to_str() else {
                    return Err(format!("{} has a name that is not UTF-8", path.join(&child).display()));
                };
                self.add(&path.join(&child), &format!("{rel}/{child_name}"))?;
            }
        } else if meta.is_file() {
            self.bytes += meta.len();
            if self.bytes > self.bounds.max_bytes {
                return Err(format!("the payload is larger than {} bytes", self.bounds.max_bytes));
            }
            let executable = meta.permissions().mode() & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_size(meta.len());
            let file = fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            // A file that changes size while it is read makes a tar the builder refuses.
            self.builder.append_data(&mut header, &name, file.take(meta.len())).map_err(fail)?;
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(path).map_err(|e| format!("cannot read the link {}: {e}", path.display()))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            self.builder.append_link(&mut header, &name, &target).map_err(fail)?;
        } else {
            return Err(format!("{} is neither a directory, a file nor a symlink", path.display()));
        }
        Ok(())
    }
}
