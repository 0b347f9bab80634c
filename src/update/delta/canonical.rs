//! The canonical form of a payload that deltas are computed between: one uncompressed tar
//! that the publisher builds from a package's payload and a device builds from its
//! installed release, byte for byte the same when the files are.
//!
//! Only what a release is made of goes in: `bin/` and `share/` with their directories,
//! files and symlinks, depth first and, within a directory, in byte order of the names,
//! each entry under `usr/lib/mcp-raspi/` as in a package's `data.tar`, so that the rebuilt
//! tar goes through the same extraction as a package. Nothing that differs between two
//! copies of the same files does: owners and times are 0, a directory's mode is 0755 (what
//! the extraction gives it), a file's is its mode masked to 0755 (what the extraction keeps
//! of a package's, and what dpkg and the release installer leave of it).
//!
//! The installed release belongs to the ops agent's user, while `mcp-raspi update` reads it
//! as root: the tree is walked through descriptors opened with `O_NOFOLLOW`, as
//! [`crate::update::release`] does (with its `dirfd` operations), so a symlink planted in
//! it is read as a symlink, never followed, and a file is read from the descriptor it was
//! checked through.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag};

use crate::update::release::dirfd;
use crate::update::release::{PAYLOAD_PARTS, RELEASES_DIR};

/// Where the payload lies in the tar, as in a package's `data.tar`.
pub(super) const PREFIX: &str = "usr/lib/mcp-raspi";

const FILE_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_NOFOLLOW).union(OFlag::O_NONBLOCK).union(OFlag::O_CLOEXEC);

/// Bounds on a payload read into its canonical tar.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    pub(super) max_bytes: u64,
    pub(super) max_entries: usize,
}

/// A payload to read: an extracted one (the publisher's), or an installed release.
pub(super) struct Tree {
    fd: OwnedFd,
    shown: PathBuf,
}

impl Tree {
    /// The payload extracted into `dir`.
    pub(super) fn at(dir: &Path) -> Result<Tree, String> {
        let fd = dirfd::open_root(dir).map_err(|e| e.to_string())?;
        Ok(Tree { fd, shown: dir.to_path_buf() })
    }

    /// Release `version` under the install root: the root may be a symlink (an administrator
    /// may have moved it), `releases/` and the release may not.
    pub(super) fn release(install_root: &Path, version: &str) -> Result<Tree, String> {
        let root = dirfd::open_root(install_root).map_err(|e| e.to_string())?;
        let releases = install_root.join(RELEASES_DIR);
        let dir = dirfd::open_dir_at(&root, OsStr::new(RELEASES_DIR), &releases).map_err(|e| e.to_string())?;
        let shown = releases.join(version);
        let fd = dirfd::open_dir_at(&dir, OsStr::new(version), &shown).map_err(|e| e.to_string())?;
        Ok(Tree { fd, shown })
    }

    pub(super) fn shown(&self) -> &Path {
        &self.shown
    }
}

/// The canonical tar of `tree`.
pub(super) fn payload_tar(tree: &Tree, bounds: Bounds) -> Result<Vec<u8>, String> {
    write_payload_tar(tree, bounds, Vec::new())
}

/// [`payload_tar`], written to `out`, which is returned.
pub(super) fn write_payload_tar<W: Write>(tree: &Tree, bounds: Bounds, out: W) -> Result<W, String> {
    let mut walk = Walk { builder: tar::Builder::new(out), bounds, entries: 0, bytes: 0 };
    let mut found = false;
    for part in PAYLOAD_PARTS {
        let shown = tree.shown.join(part);
        match stat_at(&tree.fd, OsStr::new(part), &shown)? {
            Some(st) if dirfd::kind(&st) == SFlag::S_IFDIR => {
                found = true;
                walk.add(&tree.fd, OsStr::new(part), part, &shown)?;
            }
            Some(_) => return Err(format!("{} is not a directory", shown.display())),
            None => {}
        }
    }
    if !found {
        return Err(format!("{} holds no payload ({})", tree.shown.display(), PAYLOAD_PARTS.join("/, ") + "/"));
    }
    walk.builder.into_inner().map_err(|e| format!("cannot finish the payload's tar: {e}"))
}

/// What `name` in `dir` is, without following a symlink; `None` when it does not exist.
fn stat_at(dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<Option<FileStat>, String> {
    dirfd::stat_at(dir, name, shown).map_err(|e| e.to_string())
}

struct Walk<W: Write> {
    builder: tar::Builder<W>,
    bounds: Bounds,
    entries: usize,
    bytes: u64,
}

impl<W: Write> Walk<W> {
    /// Adds `name` of `dir`, known as `rel` in the payload and `shown` in messages, and
    /// everything beneath it.
    fn add(&mut self, dir: &OwnedFd, name: &OsStr, rel: &str, shown: &Path) -> Result<(), String> {
        self.entries += 1;
        if self.entries > self.bounds.max_entries {
            return Err(format!("the payload holds more than {} entries", self.bounds.max_entries));
        }
        let Some(st) = stat_at(dir, name, shown)? else {
            return Err(format!("{} disappeared while it was read", shown.display()));
        };
        let path = format!("{PREFIX}/{rel}");
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        let fail = |e: io::Error| format!("cannot add {} to the payload's tar: {e}", shown.display());
        match dirfd::kind(&st) {
            SFlag::S_IFDIR => {
                let fd = dirfd::open_dir_at(dir, name, shown).map_err(|e| e.to_string())?;
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                self.builder.append_data(&mut header, format!("{path}/"), io::empty()).map_err(fail)?;
                for child in dirfd::entries_at(&fd, shown).map_err(|e| e.to_string())? {
                    let Some(child_name) = child.to_str() else {
                        return Err(format!("{} has a name that is not UTF-8", shown.join(&child).display()));
                    };
                    self.add(&fd, &child, &format!("{rel}/{child_name}"), &shown.join(&child))?;
                }
            }
            SFlag::S_IFREG => {
                let fd = nix::fcntl::openat(dir, name, FILE_FLAGS, Mode::empty())
                    .map_err(|e| format!("cannot read {}: {e}", shown.display()))?;
                // What is read is what this descriptor is, whatever the name now stands for.
                let st = nix::sys::stat::fstat(&fd).map_err(|e| format!("cannot read {}: {e}", shown.display()))?;
                if dirfd::kind(&st) != SFlag::S_IFREG {
                    return Err(format!("{} changed while it was read", shown.display()));
                }
                let size = st.st_size as u64;
                self.bytes += size;
                if self.bytes > self.bounds.max_bytes {
                    return Err(format!("the payload is larger than {} bytes", self.bounds.max_bytes));
                }
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(st.st_mode & 0o755);
                header.set_size(size);
                let file = Exactly { inner: File::from(fd).take(size), left: size };
                self.builder.append_data(&mut header, &path, file).map_err(fail)?;
            }
            SFlag::S_IFLNK => {
                let target = nix::fcntl::readlinkat(dir, name)
                    .map_err(|e| format!("cannot read the link {}: {e}", shown.display()))?;
                // The tar writer stores a target in normal form (`a//b` as `a/b`); a target
                // written otherwise would read back as another one.
                let normal: PathBuf = Path::new(&target).components().collect();
                if normal.as_os_str() != target.as_os_str() {
                    return Err(format!("the link {} has a target not in normal form", shown.display()));
                }
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                self.builder.append_link(&mut header, &path, &target).map_err(fail)?;
            }
            _ => return Err(format!("{} is neither a directory, a file nor a symlink", shown.display())),
        }
        Ok(())
    }
}

/// Reads exactly `left` bytes of `inner`: a file that shrinks while it is read is an error,
/// not a shorter entry in a tar whose header says otherwise.
struct Exactly<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while it was read"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
