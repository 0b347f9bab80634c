//! Descriptor-relative file operations: everything below the install root is reached
//! through directory descriptors opened with `O_NOFOLLOW` and the `*at` system calls, so
//! that a symlink planted in the tree is never followed, only refused or removed as a link.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use super::{errno_err, ReleaseError};

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

/// The install root itself, following a symlink there (an administrator may have moved it).
pub(crate) fn open_root(root: &Path) -> Result<OwnedFd, ReleaseError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    nix::fcntl::openat(AT_FDCWD, root, flags, Mode::empty()).map_err(errno_err("open", root))
}

/// The directory `name` in `dir`; a symlink there is refused.
pub(crate) fn open_dir_at(dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<OwnedFd, ReleaseError> {
    nix::fcntl::openat(dir, name, DIR_FLAGS, Mode::empty()).map_err(errno_err("open the directory", shown))
}

/// What `name` in `dir` is, without following a symlink; `None` when it does not exist.
pub(crate) fn stat_at(dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<Option<FileStat>, ReleaseError> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(errno_err("read", shown)(e)),
    }
}

/// Device and inode numbers, whose widths differ between 32- and 64-bit targets.
#[allow(clippy::useless_conversion)]
pub(super) fn identity(st: &FileStat) -> (u64, u64) {
    (u64::from(st.st_dev), u64::from(st.st_ino))
}

pub(crate) fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

pub(super) fn is_dir(st: &FileStat) -> bool {
    kind(st) == SFlag::S_IFDIR
}

/// The names in `dir`, sorted, without `.` and `..`.
pub(crate) fn entries_at(dir: &OwnedFd, shown: &Path) -> Result<Vec<OsString>, ReleaseError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut listing = nix::dir::Dir::openat(dir, ".", flags, Mode::empty()).map_err(errno_err("list", shown))?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(errno_err("list", shown))?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            names.push(name.to_os_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Removes `name` from `dir`: a directory with everything in it, anything else (a symlink
/// included) as a single entry.
pub(super) fn remove_tree_at(dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<(), ReleaseError> {
    let Some(st) = stat_at(dir, name, shown)? else { return Ok(()) };
    if is_dir(&st) {
        let inner = open_dir_at(dir, name, shown)?;
        for child in entries_at(&inner, shown)? {
            remove_tree_at(&inner, &child, &shown.join(&child))?;
        }
        nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir).map_err(errno_err("remove", shown))
    } else {
        nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(errno_err("remove", shown))
    }
}

pub(super) fn sync_fd(fd: &OwnedFd, shown: &Path) -> Result<(), ReleaseError> {
    nix::unistd::fsync(fd).map_err(errno_err("sync", shown))
}
