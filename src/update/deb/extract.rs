//! The payload written out: [`Extractor`] reads `data.tar` entry by entry and creates
//! what lies under `usr/lib/mcp-raspi/{bin,share}` in the destination, enforcing the
//! defences listed in the parent module. Everything is created relative to directory
//! descriptors opened without following symlinks.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, AT_FDCWD};
use nix::sys::stat::Mode;

use super::ar::Trouble;
use super::decompress::{drain, unpack_err, Bounded};
use super::{components, write_err, DebError, Limits, COPY_BUFFER, REQUIRED_BINARIES};
use crate::update::release::PAYLOAD_PARTS;

/// Where the payload lives in `data.tar`, as path components.
const PAYLOAD_ROOT: [&str; 3] = ["usr", "lib", "mcp-raspi"];

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

/// What the extraction has created at a path inside the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    /// A directory; `listed` once the archive has had an entry for it (before that it was
    /// made because something beneath it came first).
    Dir {
        listed: bool,
    },
    File {
        mode: u32,
    },
    Symlink,
}

pub(super) struct Extractor<'a> {
    dest: &'a Path,
    root: OwnedFd,
    limits: Limits,
    made: HashMap<PathBuf, Made>,
    entries: usize,
    bytes: u64,
}

impl<'a> Extractor<'a> {
    pub(super) fn new(dest: &'a Path, limits: Limits) -> Result<Extractor<'a>, DebError> {
        let root = nix::fcntl::openat(AT_FDCWD, dest, DIR_FLAGS, Mode::empty())
            .map_err(|e| write_err("open", dest)(io::Error::from(e)))?;
        Ok(Extractor { dest, root, limits, made: HashMap::new(), entries: 0, bytes: 0 })
    }

    /// Extracts the payload of `stream`, the unpacked `data.tar` (member `name`).
    pub(super) fn run(
        mut self,
        stream: Box<dyn Read + '_>,
        name: &str,
        trouble: &Trouble,
        observe: &mut dyn FnMut(usize),
    ) -> Result<(), DebError> {
        let limit = self.limits.max_total_bytes;
        let fail = |e| unpack_err(name, limit, trouble, e);
        let stream = Bounded { inner: stream, left: limit, trouble };
        let mut archive = tar::Archive::new(stream);
        for entry in archive.entries().map_err(fail)? {
            let entry = entry.map_err(fail)?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(DebError::TooManyEntries { member: name.to_string(), limit: self.limits.max_entries });
            }
            self.entry(entry, &fail)?;
            observe(self.entries);
        }
        drain(&mut archive.into_inner()).map_err(fail)?;
        self.check_binaries()?;
        self.finish()
    }

    /// Extracts one `data.tar` entry when it belongs to the payload.
    fn entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        fail: &dyn Fn(io::Error) -> DebError,
    ) -> Result<(), DebError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let parts = components(&raw).map_err(|reason| DebError::UnsafePath { entry: shown.clone(), reason })?;
        let kind = entry.header().entry_type();
        // The directories above the payload are ignored, but must be directories: a package
        // that makes one of them a link is not one this code understands.
        if parts.len() <= PAYLOAD_ROOT.len() && parts.iter().zip(PAYLOAD_ROOT).all(|(a, b)| *a == b.as_bytes()) {
            return if kind == tar::EntryType::Directory {
                Ok(())
            } else {
                Err(DebError::NotADirectory { entry: shown })
            };
        }
        let in_payload = parts.len() > PAYLOAD_ROOT.len()
            && parts.iter().zip(PAYLOAD_ROOT).all(|(a, b)| *a == b.as_bytes())
            && PAYLOAD_PARTS.iter().any(|p| parts[PAYLOAD_ROOT.len()] == p.as_bytes());
        if !in_payload {
            return Ok(());
        }
        let rel: PathBuf = parts[PAYLOAD_ROOT.len()..].iter().map(|p| OsStr::from_bytes(p)).collect();

        if rel.components().count() == 1 && kind != tar::EntryType::Directory {
            return Err(DebError::NotADirectory { entry: shown });
        }
        match self.made.get(&rel) {
            Some(Made::Dir { listed: false }) if kind == tar::EntryType::Directory => {
                self.made.insert(rel, Made::Dir { listed: true });
                return Ok(());
            }
            Some(_) => return Err(DebError::Duplicate { entry: shown }),
            None => {}
        }
        let link_target =
            || entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Directory | tar::EntryType::Symlink => {}
            tar::EntryType::Link => return Err(DebError::HardLink { entry: shown, target: link_target() }),
            other => return Err(DebError::SpecialFile { entry: shown, kind: kind_name(other) }),
        }

        let parent = self.parent_of(&rel, &shown)?;
        let file_name = rel.file_name().unwrap_or_default();
        let path = self.dest.join(&rel);
        match kind {
            tar::EntryType::Directory => {
                nix::sys::stat::mkdirat(&parent, file_name, Mode::from_bits_truncate(0o700))
                    .map_err(|e| write_err("create", &path)(io::Error::from(e)))?;
                self.made.insert(rel, Made::Dir { listed: true });
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let depth = rel.components().count() - 1;
                if let Err(reason) = check_link_target(&target, depth) {
                    return Err(DebError::UnsafeSymlink { entry: shown, target: link_target(), reason });
                }
                nix::unistd::symlinkat(OsStr::from_bytes(&target), &parent, file_name)
                    .map_err(|e| write_err("create the symlink", &path)(io::Error::from(e)))?;
                self.made.insert(rel, Made::Symlink);
            }
            _ => {
                let size = entry.size();
                if size > self.limits.max_total_bytes.saturating_sub(self.bytes) {
                    return Err(DebError::TooManyBytes { entry: shown, limit: self.limits.max_total_bytes });
                }
                let mode = entry.header().mode().map_err(fail)? & 0o755;
                let written = write_file(&parent, file_name, &path, &mut entry, mode, fail)?;
                if written != size {
                    return Err(fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("entry {shown:?} holds {written} of its {size} bytes"),
                    )));
                }
                self.bytes += written;
                self.made.insert(rel, Made::File { mode });
            }
        }
        Ok(())
    }

    /// Opens the directory that will hold `rel`, creating the directories missing on the way
    /// (an archive may list a file before its directory), each opened without following a
    /// symlink.
    fn parent_of(&mut self, rel: &Path, shown: &str) -> Result<OwnedFd, DebError> {
        let mut dir = nix::fcntl::openat(&self.root, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| write_err("open", self.dest)(io::Error::from(e)))?;
        let mut so_far = PathBuf::new();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for part in parent.components() {
            let Component::Normal(name) = part else { continue };
            so_far.push(name);
            let path = self.dest.join(&so_far);
            match self.made.get(&so_far) {
                Some(Made::Dir { .. }) => {}
                Some(_) => {
                    let parent = format!("{}/{}", PAYLOAD_ROOT.join("/"), so_far.display());
                    return Err(DebError::ParentNotDirectory { entry: shown.to_string(), parent });
                }
                None => {
                    nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(0o700))
                        .map_err(|e| write_err("create", &path)(io::Error::from(e)))?;
                    self.made.insert(so_far.clone(), Made::Dir { listed: false });
                }
            }
            dir = nix::fcntl::openat(&dir, name, DIR_FLAGS, Mode::empty())
                .map_err(|e| write_err("open", &path)(io::Error::from(e)))?;
        }
        Ok(dir)
    }

    /// Opens the directory `rel` of the destination, one component at a time, none of them
    /// through a symlink.
    fn open_dir(&self, rel: &Path) -> Result<OwnedFd, DebError> {
        let mut dir = nix::fcntl::openat(&self.root, ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| write_err("open", self.dest)(io::Error::from(e)))?;
        let mut so_far = self.dest.to_path_buf();
        for part in rel.components() {
            let Component::Normal(name) = part else { continue };
            so_far.push(name);
            dir = nix::fcntl::openat(&dir, name, DIR_FLAGS, Mode::empty())
                .map_err(|e| write_err("open", &so_far)(io::Error::from(e)))?;
        }
        Ok(dir)
    }

    fn check_binaries(&self) -> Result<(), DebError> {
        for name in REQUIRED_BINARIES {
            let problem = match self.made.get(&Path::new("bin").join(name)) {
                Some(Made::File { mode }) if mode & 0o111 == 0o111 => continue,
                Some(Made::File { mode }) => format!("is not executable by everyone (mode {mode:o})"),
                Some(_) => "is not a regular file".to_string(),
                None => "is missing".to_string(),
            };
            return Err(DebError::MissingBinary { name, problem });
        }
        Ok(())
    }

    /// Gives the directories their final mode and syncs them, deepest first, then the
    /// destination itself, so that what was written is on disk before it is installed.
    fn finish(self) -> Result<(), DebError> {
        let mut dirs: Vec<&PathBuf> =
            self.made.iter().filter(|(_, made)| matches!(made, Made::Dir { .. })).map(|(path, _)| path).collect();
        dirs.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
        for rel in dirs {
            let path = self.dest.join(rel);
            let dir = self.open_dir(rel)?;
            nix::sys::stat::fchmod(&dir, Mode::from_bits_truncate(0o755))
                .map_err(|e| write_err("set the mode of", &path)(io::Error::from(e)))?;
            nix::unistd::fsync(&dir).map_err(|e| write_err("sync", &path)(io::Error::from(e)))?;
        }
        nix::unistd::fsync(&self.root).map_err(|e| write_err("sync", self.dest)(io::Error::from(e)))
    }
}

/// Checks a symlink target: relative, and resolving inside the destination from a link
/// `depth` directories below it. `..` may only lead the target: climbing then happens
/// through real directories, and descending can only reach other links, which obey the same
/// rule, so no chain of links leaves the destination either.
fn check_link_target(target: &[u8], depth: usize) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("its target is empty");
    }
    if target.starts_with(b"/") {
        return Err("its target is absolute");
    }
    let mut climbs = 0;
    let mut descended = false;
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if descended => return Err("its target climbs with `..` after a name"),
            b".." => climbs += 1,
            _ => descended = true,
        }
    }
    if climbs > depth {
        return Err("its target leads out of the payload");
    }
    Ok(())
}

/// Creates `name` in `dir` (never through a symlink, never over an existing entry), copies
/// `contents` into it, sets `mode` and syncs it. Returns the bytes written.
fn write_file(
    dir: &OwnedFd,
    name: &OsStr,
    path: &Path,
    contents: &mut impl Read,
    mode: u32,
    fail: &dyn Fn(io::Error) -> DebError,
) -> Result<u64, DebError> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(dir, name, flags, Mode::from_bits_truncate(0o600))
        .map_err(|e| write_err("create", path)(io::Error::from(e)))?;
    let mut file = File::from(fd);
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut written = 0u64;
    loop {
        let n = match contents.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(e)),
        };
        file.write_all(&buf[..n]).map_err(write_err("write", path))?;
        written += n as u64;
    }
    // Set explicitly: the mode given at creation is reduced by the umask.
    nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(mode))
        .map_err(|e| write_err("set the mode of", path)(io::Error::from(e)))?;
    file.sync_all().map_err(write_err("sync", path))?;
    Ok(written)
}

fn kind_name(kind: tar::EntryType) -> String {
    match kind {
        tar::EntryType::Char => "character device".to_string(),
        tar::EntryType::Block => "block device".to_string(),
        tar::EntryType::Fifo => "FIFO".to_string(),
        other => format!("entry of type {:?}", char::from(other.as_byte())),
    }
}
