//! Installed releases under the install root (`/opt/mcp-raspi`): one directory per version
//! in `releases/`, and the `current` symlink that the systemd units run through.
//!
//! The package's postinst and the self-update both install a payload and move `current`.
//! They share this code so that they agree on the layout and on what is atomic, and an apt
//! upgrade and a self-update never fight over the tree:
//!
//! - a release is assembled as `releases/<version>.partial`, synced to disk, then renamed
//!   to `releases/<version>`, so a directory with a version's name is always complete;
//! - `current` is replaced by renaming a new symlink over it and syncing the directory, so
//!   after a crash at any point it names either the old or the new release, never neither;
//! - files are hard-linked from the payload where the filesystem allows (dpkg replaces a
//!   file by renaming a new one over it, so a link keeps the old release intact) and copied
//!   otherwise;
//! - an advisory lock on `<root>/.lock` serialises installers, flips and prunes.
//!
//! The install root belongs to the agent's user, while the postinst runs this code as root.
//! So that the agent's user cannot turn root's work against the rest of the system (a
//! `releases` or `.partial` swapped for a symlink to `/etc` between two steps), everything
//! below the root is reached through directory descriptors opened with `O_NOFOLLOW` and the
//! `*at` system calls: a symlink planted anywhere in the tree is never followed, only
//! refused or removed as a link.
//!
//! Release names are package versions (`0.1.0`, `1:2.0~rc1-3`), ordered as dpkg orders them.
//!
//! # Layout
//!
//! This file holds the layout and its operations: installing, flipping `current`, listing
//! and pruning. `dirfd` holds the descriptor-relative file operations they are built on,
//! and `version` what makes a valid release name and how names are ordered.

pub(crate) mod dirfd;
mod version;

#[cfg(test)]
mod tests;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use self::dirfd::{entries_at, identity, is_dir, kind, open_dir_at, open_root, remove_tree_at, stat_at, sync_fd};
pub use self::version::{compare_versions, validate_version};

/// The directory of the install root holding one directory per release.
pub const RELEASES_DIR: &str = "releases";
/// The symlink of the install root naming the active release.
pub const CURRENT_LINK: &str = "current";
/// The parts of a payload that make a release; `bin` is required.
pub const PAYLOAD_PARTS: [&str; 2] = ["bin", "share"];

const PARTIAL_SUFFIX: &str = ".partial";
const LOCK_FILE: &str = ".lock";
const NEW_LINK_PREFIX: &str = ".current.new-";

/// Why a release could not be installed, activated or pruned.
#[derive(Debug)]
pub enum ReleaseError {
    /// The version string cannot name a release.
    InvalidVersion { version: String, reason: &'static str },
    /// The payload directory does not look like a release.
    BadPayload(String),
    /// A filesystem operation failed.
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// A release of that version exists and differs from the payload.
    Conflict { path: PathBuf, difference: String },
    /// No release of that version is installed.
    NotInstalled { version: String, path: PathBuf },
    /// `current` exists but is not a symlink into `releases/`.
    BadCurrent { path: PathBuf, reason: String },
}

impl fmt::Display for ReleaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReleaseError::InvalidVersion { version, reason } => {
                write!(f, "{version:?} cannot name a release: {reason}")
            }
            ReleaseError::BadPayload(message) => write!(f, "bad payload: {message}"),
            ReleaseError::Io { action, path, source } => write!(f, "cannot {action} {}: {source}", path.display()),
            ReleaseError::Conflict { path, difference } => write!(
                f,
                "{} is already installed with different contents ({difference}); install under another version",
                path.display()
            ),
            ReleaseError::NotInstalled { version, path } => {
                write!(f, "release {version} is not installed ({} is not a directory)", path.display())
            }
            ReleaseError::BadCurrent { path, reason } => write!(f, "{}: {reason}", path.display()),
        }
    }
}

impl std::error::Error for ReleaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReleaseError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ReleaseError + 'a {
    move |source| ReleaseError::Io { action, path: path.to_path_buf(), source }
}

fn errno_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> ReleaseError + 'a {
    move |errno| ReleaseError::Io { action, path: path.to_path_buf(), source: io::Error::from(errno) }
}

/// Who the directories of a release and the `current` link are given to (the files stay
/// root's: they may be hard links of the package's own files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// The directory of release `version` under `install_root`.
pub fn release_dir(install_root: &Path, version: &str) -> PathBuf {
    install_root.join(RELEASES_DIR).join(version)
}

/// Holds the install root's lock until dropped.
#[derive(Debug)]
pub struct RootLock {
    _lock: nix::fcntl::Flock<OwnedFd>,
}

/// Takes the install root's exclusive lock, waiting for another holder to finish.
pub fn lock(install_root: &Path) -> Result<RootLock, ReleaseError> {
    lock_at(&open_root(install_root)?, install_root)
}

/// The lock file is opened read-only when this user may not write it (a lock file owned by
/// root still serialises an unprivileged installer), and never through a symlink.
fn lock_at(root: &OwnedFd, install_root: &Path) -> Result<RootLock, ReleaseError> {
    let path = install_root.join(LOCK_FILE);
    let write = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match nix::fcntl::openat(root, LOCK_FILE, write, Mode::from_bits_truncate(0o644)) {
        Ok(fd) => fd,
        Err(Errno::EACCES) => {
            let read = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            nix::fcntl::openat(root, LOCK_FILE, read, Mode::empty()).map_err(errno_err("open", &path))?
        }
        Err(e) => return Err(errno_err("open", &path)(e)),
    };
    match nix::fcntl::Flock::lock(fd, nix::fcntl::FlockArg::LockExclusive) {
        Ok(lock) => Ok(RootLock { _lock: lock }),
        Err((_, errno)) => Err(errno_err("lock", &path)(errno)),
    }
}

/// `releases/` of the root, created when missing.
fn open_releases(root: &OwnedFd, install_root: &Path, create: bool) -> Result<Option<OwnedFd>, ReleaseError> {
    let shown = install_root.join(RELEASES_DIR);
    if stat_at(root, OsStr::new(RELEASES_DIR), &shown)?.is_none() {
        if !create {
            return Ok(None);
        }
        match nix::sys::stat::mkdirat(root, RELEASES_DIR, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(errno_err("create", &shown)(e)),
        }
    }
    open_dir_at(root, OsStr::new(RELEASES_DIR), &shown).map(Some)
}

// --- installing -------------------------------------------------------------------------------

/// Installs the payload's `bin/` and `share/` as `releases/<version>` under `install_root`
/// and returns that directory. Installing a version that is already there with the same
/// contents does nothing; with other contents it is refused, since that release may be
/// running. A `.partial` directory left by an interrupted install is replaced.
pub fn install_release(payload_dir: &Path, install_root: &Path, version: &str) -> Result<PathBuf, ReleaseError> {
    install_release_owned(payload_dir, install_root, version, None)
}

/// [`install_release`], giving the release's directories to `owner` when set.
pub fn install_release_owned(
    payload_dir: &Path,
    install_root: &Path,
    version: &str,
    owner: Option<Owner>,
) -> Result<PathBuf, ReleaseError> {
    install_release_observed(payload_dir, install_root, version, owner, &mut || {})
}

/// [`install_release_owned`], calling `before_rename` once `<version>.partial` is complete
/// and synced, just before it is renamed (a seam for the tests that interrupt an install).
pub fn install_release_observed(
    payload_dir: &Path,
    install_root: &Path,
    version: &str,
    owner: Option<Owner>,
    before_rename: &mut dyn FnMut(),
) -> Result<PathBuf, ReleaseError> {
    validate_version(version)?;
    let bin = payload_dir.join("bin");
    if !fs::metadata(&bin).map(|m| m.is_dir()).unwrap_or(false) {
        return Err(ReleaseError::BadPayload(format!("{} is not a directory", bin.display())));
    }
    // The root's own path is trusted (its parent, such as /opt, is root's); below it, nothing is.
    fs::create_dir_all(install_root).map_err(io_err("create", install_root))?;
    let root = open_root(install_root)?;
    let _lock = lock_at(&root, install_root)?;
    let releases_shown = install_root.join(RELEASES_DIR);
    let releases = open_releases(&root, install_root, true)?
        .ok_or_else(|| ReleaseError::BadPayload(format!("{} is missing", releases_shown.display())))?;
    if owner.is_some() {
        // Whoever owns the releases installs them later (the self-update).
        finish_dir(&releases, 0o755, owner, &releases_shown)?;
    }
    let target = releases_shown.join(version);
    if stat_at(&releases, OsStr::new(version), &target)?.is_some() {
        let difference = match open_dir_at(&releases, OsStr::new(version), &target) {
            Ok(dir) => compare_release(payload_dir, &dir, &target).err(),
            Err(e) => Some(e.to_string()),
        };
        return match difference {
            None => Ok(target),
            Some(difference) => Err(ReleaseError::Conflict { path: target, difference }),
        };
    }
    let partial_name = format!("{version}{PARTIAL_SUFFIX}");
    let partial_shown = releases_shown.join(&partial_name);
    remove_tree_at(&releases, OsStr::new(&partial_name), &partial_shown)?;
    // Private (0700, root's) while it is filled, so nobody else can reach into it.
    nix::sys::stat::mkdirat(&releases, partial_name.as_str(), Mode::from_bits_truncate(0o700))
        .map_err(errno_err("create", &partial_shown))?;
    let partial = open_dir_at(&releases, OsStr::new(&partial_name), &partial_shown)?;
    let st = nix::sys::stat::fstat(&partial).map_err(errno_err("read", &partial_shown))?;
    if st.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(ReleaseError::BadPayload(format!(
            "{} was replaced while it was being created",
            partial_shown.display()
        )));
    }
    for part in PAYLOAD_PARTS {
        let source = payload_dir.join(part);
        if fs::symlink_metadata(&source).is_ok() {
            copy_tree(&source, &partial, OsStr::new(part), &partial_shown.join(part), owner)?;
        }
    }
    finish_dir(&partial, 0o755, owner, &partial_shown)?;
    before_rename();
    nix::fcntl::renameat(&releases, partial_name.as_str(), &releases, version)
        .map_err(errno_err("rename the finished release to", &target))?;
    sync_fd(&releases, &releases_shown)?;
    Ok(target)
}

/// Sets a finished directory's mode and owner, and syncs it.
fn finish_dir(dir: &OwnedFd, mode: u32, owner: Option<Owner>, shown: &Path) -> Result<(), ReleaseError> {
    nix::sys::stat::fchmod(dir, Mode::from_bits_truncate(mode)).map_err(errno_err("set the mode of", shown))?;
    if let Some(o) = owner {
        nix::unistd::fchown(dir, Some(Uid::from_raw(o.uid)), Some(Gid::from_raw(o.gid)))
            .map_err(errno_err("change the owner of", shown))?;
    }
    sync_fd(dir, shown)
}

/// Recreates the tree at `source` as `name` in `parent`: directories with their modes,
/// files hard linked or copied, symlinks with their targets. Anything else is refused. Each
/// directory is finished (mode, owner) only after everything in it.
fn copy_tree(
    source: &Path,
    parent: &OwnedFd,
    name: &OsStr,
    shown: &Path,
    owner: Option<Owner>,
) -> Result<(), ReleaseError> {
    let meta = fs::symlink_metadata(source).map_err(io_err("read", source))?;
    if !meta.is_dir() {
        return Err(ReleaseError::BadPayload(format!("{} is not a directory", source.display())));
    }
    nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o700)).map_err(errno_err("create", shown))?;
    let dir = open_dir_at(parent, name, shown)?;
    for entry in sorted_entries(source)? {
        let from = source.join(&entry);
        let to = shown.join(&entry);
        let meta = fs::symlink_metadata(&from).map_err(io_err("read", &from))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            copy_tree(&from, &dir, &entry, &to, owner)?;
        } else if kind.is_file() {
            link_or_copy(&from, &dir, &entry, &to)?;
        } else if kind.is_symlink() {
            let link = fs::read_link(&from).map_err(io_err("read the link", &from))?;
            nix::unistd::symlinkat(&link, &dir, entry.as_os_str()).map_err(errno_err("create the link", &to))?;
        } else {
            return Err(ReleaseError::BadPayload(format!(
                "{} is neither a file, a directory nor a symlink",
                from.display()
            )));
        }
    }
    finish_dir(&dir, meta.mode() & 0o755, owner, shown)
}

fn sorted_entries(dir: &Path) -> Result<Vec<OsString>, ReleaseError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        names.push(entry.map_err(io_err("list", dir))?.file_name());
    }
    names.sort();
    Ok(names)
}

/// Hard-links `from` as `name` in `dir`, or copies it when the filesystem refuses the link
/// (another device, protected hard links, no link support).
fn link_or_copy(from: &Path, dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<(), ReleaseError> {
    match nix::unistd::linkat(AT_FDCWD, from, dir, name, AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(_) => copy_file(from, dir, name, shown),
    }
}

/// Copies a regular file with its permission bits (set-id bits dropped) and syncs it.
fn copy_file(from: &Path, dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<(), ReleaseError> {
    let mut source = File::open(from).map_err(io_err("open", from))?;
    let mode = source.metadata().map_err(io_err("read", from))?.mode() & 0o777;
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd =
        nix::fcntl::openat(dir, name, flags, Mode::from_bits_truncate(mode)).map_err(errno_err("create", shown))?;
    let mut target = File::from(fd);
    io::copy(&mut source, &mut target).map_err(io_err("copy into", shown))?;
    target.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_err("set the mode of", shown))?;
    target.sync_all().map_err(io_err("sync", shown))
}

/// `Ok` when the release `dir` holds exactly the payload's parts: the same names, file
/// contents, permission bits and link targets. Otherwise the first difference.
fn compare_release(payload: &Path, dir: &OwnedFd, shown: &Path) -> Result<(), String> {
    let present: Vec<&str> =
        PAYLOAD_PARTS.iter().copied().filter(|p| fs::symlink_metadata(payload.join(p)).is_ok()).collect();
    let names = entries_at(dir, shown).map_err(|e| e.to_string())?;
    let names: Vec<String> = names.iter().map(|n| n.to_string_lossy().into_owned()).collect();
    if names != present {
        return Err(format!("it holds {names:?} where the payload has {present:?}"));
    }
    for part in present {
        compare_at(&payload.join(part), dir, OsStr::new(part), &shown.join(part))?;
    }
    Ok(())
}

fn compare_at(a: &Path, dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<(), String> {
    let ma = fs::symlink_metadata(a).map_err(|e| format!("cannot read {}: {e}", a.display()))?;
    let mb = match stat_at(dir, name, shown) {
        Ok(Some(st)) => st,
        Ok(None) => return Err(format!("{} is missing", shown.display())),
        Err(e) => return Err(e.to_string()),
    };
    let (ta, tb) = (ma.file_type(), kind(&mb));
    if ta.is_symlink() || tb == SFlag::S_IFLNK {
        return match (fs::read_link(a), nix::fcntl::readlinkat(dir, name)) {
            (Ok(la), Ok(lb)) if la.as_os_str() == lb => Ok(()),
            _ => Err(format!("{} is not the same link", shown.display())),
        };
    }
    if ta.is_dir() && tb == SFlag::S_IFDIR {
        let inner = open_dir_at(dir, name, shown).map_err(|e| e.to_string())?;
        let (na, nb) =
            (sorted_entries(a).map_err(|e| e.to_string())?, entries_at(&inner, shown).map_err(|e| e.to_string())?);
        if na != nb {
            return Err(format!("{} does not hold the same files", shown.display()));
        }
        return na.iter().try_for_each(|n| compare_at(&a.join(n), &inner, n, &shown.join(n)));
    }
    if !(ta.is_file() && tb == SFlag::S_IFREG) {
        return Err(format!("{} is not the same kind of file", shown.display()));
    }
    let (mode_a, mode_b) = (ma.mode() & 0o777, mb.st_mode & 0o777);
    if mode_a != mode_b {
        return Err(format!("{} has mode {mode_b:o}, not {mode_a:o}", shown.display()));
    }
    if (ma.dev(), ma.ino()) == identity(&mb) {
        return Ok(());
    }
    let same = u64::try_from(mb.st_size).is_ok_and(|size| size == ma.len())
        && same_contents(a, dir, name).map_err(|e| format!("cannot compare {}: {e}", shown.display()))?;
    if same {
        Ok(())
    } else {
        Err(format!("{} has other contents", shown.display()))
    }
}

fn same_contents(a: &Path, dir: &OwnedFd, name: &OsStr) -> io::Result<bool> {
    use std::io::Read;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(dir, name, flags, Mode::empty()).map_err(io::Error::from)?;
    let (mut fa, mut fb) = (File::open(a)?, File::from(fd));
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(fb.read(&mut bb[..1])? == 0);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

// --- current ----------------------------------------------------------------------------------

/// The version a `current` link target names, when it is `releases/<version>` (relative,
/// or absolute under the install root).
fn version_of_link(target: &Path, install_root: &Path) -> Option<String> {
    let parent_ok =
        target.parent().is_some_and(|p| p == Path::new(RELEASES_DIR) || p == install_root.join(RELEASES_DIR));
    let version = target.file_name()?.to_str()?;
    (parent_ok && validate_version(version).is_ok()).then(|| version.to_string())
}

/// The version `current` names, or `None` when there is no `current`.
pub fn current_version(install_root: &Path) -> Result<Option<String>, ReleaseError> {
    let link = install_root.join(CURRENT_LINK);
    let target = match fs::read_link(&link) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            return Err(ReleaseError::BadCurrent { path: link, reason: "it is not a symlink".into() })
        }
        Err(e) => return Err(io_err("read the link", &link)(e)),
    };
    match version_of_link(&target, install_root) {
        Some(v) => Ok(Some(v)),
        None => Err(ReleaseError::BadCurrent {
            path: link,
            reason: format!("it points at {}, not at a release in {RELEASES_DIR}/", target.display()),
        }),
    }
}

/// Points `current` at release `version`, atomically: a new relative symlink is renamed over
/// the old one and the directory is synced. Returns the version `current` named before.
pub fn flip_current(install_root: &Path, version: &str) -> Result<Option<String>, ReleaseError> {
    flip_current_owned(install_root, version, None)
}

/// [`flip_current`], giving the new link to `owner` when set.
pub fn flip_current_owned(
    install_root: &Path,
    version: &str,
    owner: Option<Owner>,
) -> Result<Option<String>, ReleaseError> {
    validate_version(version)?;
    let dir_shown = release_dir(install_root, version);
    let not_installed = || ReleaseError::NotInstalled { version: version.to_string(), path: dir_shown.clone() };
    let root = open_root(install_root)?;
    let _lock = lock_at(&root, install_root)?;
    let releases = open_releases(&root, install_root, false)?.ok_or_else(not_installed)?;
    match stat_at(&releases, OsStr::new(version), &dir_shown)? {
        Some(st) if is_dir(&st) => {}
        _ => return Err(not_installed()),
    }
    let link = install_root.join(CURRENT_LINK);
    let previous = match stat_at(&root, OsStr::new(CURRENT_LINK), &link)? {
        Some(st) if kind(&st) != SFlag::S_IFLNK => {
            return Err(ReleaseError::BadCurrent {
                path: link,
                reason: "it is not a symlink; move it away before activating a release".into(),
            })
        }
        // A link that names no release is replaced, which is how it gets repaired.
        Some(_) => {
            nix::fcntl::readlinkat(&root, CURRENT_LINK).ok().and_then(|t| version_of_link(Path::new(&t), install_root))
        }
        None => None,
    };
    let new_name = format!("{NEW_LINK_PREFIX}{}", std::process::id());
    let new_shown = install_root.join(&new_name);
    match nix::unistd::unlinkat(&root, new_name.as_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(errno_err("remove", &new_shown)(e)),
    }
    // Relative, so that the tree keeps working when seen from a chroot or another mount point.
    let target = Path::new(RELEASES_DIR).join(version);
    nix::unistd::symlinkat(&target, &root, new_name.as_str()).map_err(errno_err("create the link", &new_shown))?;
    let placed = (|| {
        if let Some(o) = owner {
            let (uid, gid) = (Some(Uid::from_raw(o.uid)), Some(Gid::from_raw(o.gid)));
            nix::unistd::fchownat(&root, new_name.as_str(), uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(errno_err("change the owner of", &new_shown))?;
        }
        nix::fcntl::renameat(&root, new_name.as_str(), &root, CURRENT_LINK).map_err(errno_err("replace", &link))
    })();
    if let Err(e) = placed {
        let _ = nix::unistd::unlinkat(&root, new_name.as_str(), UnlinkatFlags::NoRemoveDir);
        return Err(e);
    }
    sync_fd(&root, install_root)?;
    Ok(previous)
}

// --- listing and pruning ----------------------------------------------------------------------

fn versions_at(releases: &OwnedFd, shown: &Path) -> Result<Vec<String>, ReleaseError> {
    let mut versions = Vec::new();
    for name in entries_at(releases, shown)? {
        let Some(version) = name.to_str().filter(|n| validate_version(n).is_ok()) else { continue };
        if stat_at(releases, &name, &shown.join(&name))?.is_some_and(|st| is_dir(&st)) {
            versions.push(version.to_string());
        }
    }
    versions.sort_by(|a, b| compare_versions(a, b));
    Ok(versions)
}

/// The installed releases (complete ones only), oldest first in dpkg's version order.
pub fn list_releases(install_root: &Path) -> Result<Vec<String>, ReleaseError> {
    let root = open_root(install_root)?;
    match open_releases(&root, install_root, false)? {
        Some(releases) => versions_at(&releases, &install_root.join(RELEASES_DIR)),
        None => Ok(Vec::new()),
    }
}

/// Removes all releases but the `keep` newest and the one `current` names, and whatever an
/// interrupted install or flip left behind. Returns the versions removed.
pub fn prune(install_root: &Path, keep: usize) -> Result<Vec<String>, ReleaseError> {
    prune_protecting(install_root, keep, &[])
}

/// [`prune`], never removing the versions in `protect` either (the previous good release,
/// which a rollback needs).
pub fn prune_protecting(install_root: &Path, keep: usize, protect: &[&str]) -> Result<Vec<String>, ReleaseError> {
    let root = open_root(install_root)?;
    let _lock = lock_at(&root, install_root)?;
    let current = current_version(install_root)?;
    for name in entries_at(&root, install_root)? {
        if name.as_bytes().starts_with(NEW_LINK_PREFIX.as_bytes()) {
            let shown = install_root.join(&name);
            nix::unistd::unlinkat(&root, name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(errno_err("remove", &shown))?;
        }
    }
    let shown = install_root.join(RELEASES_DIR);
    let Some(releases) = open_releases(&root, install_root, false)? else { return Ok(Vec::new()) };
    for name in entries_at(&releases, &shown)? {
        if name.as_bytes().ends_with(PARTIAL_SUFFIX.as_bytes()) {
            remove_tree_at(&releases, &name, &shown.join(&name))?;
        }
    }
    let versions = versions_at(&releases, &shown)?;
    let mut removed = Vec::new();
    let old = versions.len().saturating_sub(keep);
    for version in &versions[..old] {
        if Some(version) == current.as_ref() || protect.contains(&version.as_str()) {
            continue;
        }
        remove_tree_at(&releases, OsStr::new(version), &shown.join(version))?;
        removed.push(version.clone());
    }
    if !removed.is_empty() {
        sync_fd(&releases, &shown)?;
    }
    Ok(removed)
}

/// The bytes a release's files take (its directory tree, symlinks not followed).
pub fn release_size(install_root: &Path, version: &str) -> Result<u64, ReleaseError> {
    validate_version(version)?;
    fn walk(dir: &OwnedFd, shown: &Path) -> Result<u64, ReleaseError> {
        let mut total = 0;
        for name in entries_at(dir, shown)? {
            let path = shown.join(&name);
            let Some(st) = stat_at(dir, &name, &path)? else { continue };
            if is_dir(&st) {
                total += walk(&open_dir_at(dir, &name, &path)?, &path)?;
            } else {
                total += u64::try_from(st.st_size).unwrap_or(0);
            }
        }
        Ok(total)
    }
    let root = open_root(install_root)?;
    let shown = release_dir(install_root, version);
    let not_installed = || ReleaseError::NotInstalled { version: version.to_string(), path: shown.clone() };
    let releases = open_releases(&root, install_root, false)?.ok_or_else(not_installed)?;
    let dir = open_dir_at(&releases, OsStr::new(version), &shown).map_err(|_| not_installed())?;
    walk(&dir, &shown)
}
