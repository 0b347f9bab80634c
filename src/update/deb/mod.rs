//! Reading a downloaded mcp-raspi `.deb`: its control fields, and its payload unpacked into
//! a fresh directory.
//!
//! The self-update downloads the package of another version. Once its digest and signature
//! have been checked, the ops agent (not root, so dpkg is out of the question) unpacks the
//! release payload, `usr/lib/mcp-raspi/bin/` and `usr/lib/mcp-raspi/share/`, as `bin/` and
//! `share/` of a new directory, which [`super::release`] then installs as a release. The
//! package's other files (units, man pages, configuration) are left to the next apt upgrade.
//!
//! # The format
//!
//! A `.deb` (deb(5)) is an ar archive holding, in this order, `debian-binary` (`2.0\n`),
//! `control.tar[.gz|.xz]` (the `control` file with the package's fields) and
//! `data.tar[.gz|.xz]` (the files, named `./usr/...`). Members whose names begin with `_`
//! may stand between them (other tools' signatures) and are skipped. cargo-deb writes both
//! tars xz-compressed (one LZMA2 block, 8 MiB dictionary, no integrity check of its own);
//! gzip and uncompressed tars are read as well, since dpkg-deb and older tools write them.
//! The ar layer is parsed here: this reader needs only its fixed 60-byte headers and plain
//! member names, which is shorter than the code adapting a general ar library to them.
//!
//! The file is read once, front to back, through small buffers: nothing is held in memory
//! beyond one decompression window (bounded, see [`XZ_MEMORY_LIMIT_KIB`]), the control file
//! and a note of each path written, so unpacking a package costs about ten megabytes
//! whatever its size (the xz window of cargo-deb's packages is 8 MiB).
//!
//! # Defences
//!
//! The agent is privileged, so the archive is handled as if it were hostile, signed or not.
//! Nothing is ever written outside the destination, whatever the archive says:
//!
//! - every path in `data.tar` must be relative and free of `..`, or the package is refused;
//! - only regular files, directories and symlinks are extracted; a hard link, a device, a
//!   FIFO or any other kind of entry inside the payload is refused, as is a duplicate;
//! - a symlink's target must be relative and stay inside the destination; nothing is ever
//!   created beneath a symlink or a file (an archive cannot first plant `bin` as a link to
//!   `/etc` and then write "through" it), and every directory on the way is opened with
//!   `O_NOFOLLOW`, so the kernel refuses what the bookkeeping might have missed;
//! - files are created with `O_EXCL | O_NOFOLLOW` and modes masked to `0o755`: set-uid,
//!   set-gid and sticky bits and write access for others are dropped, not refused, since
//!   the release runs as unprivileged users either way and dropping them makes no file more
//!   powerful than it was;
//! - [`Limits`] bound the entries and bytes unpacked, so a small archive that expands
//!   without end (a decompression bomb) is stopped as soon as it passes them;
//! - on any failure everything written under the destination, and the destination itself,
//!   is removed, so no half-written payload is left for an installer to pick up.
//!
//! The destination is created `0700`, so nobody else can look into it while it is filled;
//! it stays so. The directories inside it are given `0755` at the end (the archive's
//! directory modes are ignored), because [`super::release`] copies their modes into the
//! release, which the server's user must be able to traverse.
//!
//! # Layout
//!
//! This file holds the API and what the parts share; the reading itself is layered as the
//! format is: `ar` walks the ar container, `decompress` unpacks a member within bounds,
//! `control` reads `control.tar` and `extract` writes the payload of `data.tar`.

mod ar;
mod control;
mod decompress;
mod extract;

#[cfg(test)]
mod tests;

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::Mode;

use self::ar::{Ar, Member};
use self::control::read_control;
use self::decompress::{compression_of, decompressor};
// The bounded reader of unpacked members, which a delta's patch is read through too.
pub(crate) use self::ar::Trouble;
pub(crate) use self::decompress::Bounded;
use self::extract::Extractor;

/// The programs a payload must carry in `bin/`: without them there is nothing to run.
pub const REQUIRED_BINARIES: [&str; 2] = ["mcp-raspi-server", "raspi-ops-agent"];
/// The memory an xz stream may ask for, in KiB: a 16 MiB dictionary (presets up to -7;
/// cargo-deb uses -6, 8 MiB) and the decoder's own buffers. The window grows with the
/// output, so a package smaller than its dictionary costs less.
pub const XZ_MEMORY_LIMIT_KIB: u32 = 16 * 1024 + 1024;

const COPY_BUFFER: usize = 64 * 1024;

/// The fields of a package's `control` file that identify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebInfo {
    pub package: String,
    pub version: String,
    pub architecture: String,
}

/// Bounds on what [`extract_payload`] unpacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes `data.tar` may unpack to, headers and files outside the payload
    /// included; the payload's files are therefore bounded by it too. A real package is
    /// about 10 MiB.
    pub max_total_bytes: u64,
    /// The most entries `data.tar` may hold, inside the payload or not (about 60 today).
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_total_bytes: 64 << 20, max_entries: 10_000 }
    }
}

impl Limits {
    /// How much a package of at most `max_download_bytes` may unpack to: four times that
    /// (programs compress about threefold with xz), and never less than the default. An
    /// operator who allows larger downloads (`updates.max_download_mb`) allows this too.
    pub fn for_download(max_download_bytes: u64) -> Limits {
        let default = Limits::default();
        Limits { max_total_bytes: default.max_total_bytes.max(max_download_bytes.saturating_mul(4)), ..default }
    }
}

/// Why a `.deb` could not be read or its payload not extracted.
#[derive(Debug)]
pub enum DebError {
    /// The `.deb` could not be opened or read.
    Read { path: PathBuf, source: io::Error },
    /// The file does not begin as an ar archive does, so it is no `.deb`.
    NotAnArchive { path: PathBuf },
    /// An ar member header is malformed.
    BadMemberHeader { index: usize, reason: String },
    /// The file ends inside a member or a member header: it was cut short.
    Truncated { member: String },
    /// `debian-binary` does not announce format 2.x.
    UnsupportedFormat { found: String },
    /// A member is not the one the format requires at that place.
    UnexpectedMember { found: String, expected: &'static str },
    /// The archive ends before a required member.
    MissingMember { expected: &'static str },
    /// `control.tar` or `data.tar` is compressed in a way this reader does not know.
    UnknownCompression { member: String },
    /// A member cannot be decompressed, or is not a valid tar archive.
    Corrupt { member: String, source: io::Error },
    /// An xz member needs more memory to decompress than [`XZ_MEMORY_LIMIT_KIB`].
    TooMuchMemory { member: String },
    /// A member unpacks to more bytes than allowed.
    MemberTooLarge { member: String, limit: u64 },
    /// A member holds more entries than allowed.
    TooManyEntries { member: String, limit: usize },
    /// `control.tar` has no `control` file.
    NoControl { member: String },
    /// The `control` file is unusable: not a regular file, too large, not text, a field
    /// missing or repeated.
    BadControl { member: String, reason: String },
    /// The package is not the one expected: another name, version or architecture.
    Mismatch { field: &'static str, expected: String, found: String },
    /// The destination already exists; it must be new, so that nothing in it predates the
    /// extraction.
    DestinationExists { path: PathBuf },
    /// An entry's path is absolute or has a `..` component.
    UnsafePath { entry: String, reason: &'static str },
    /// An entry lies beneath something the archive made a symlink or a file.
    ParentNotDirectory { entry: String, parent: String },
    /// `bin/`, `share/` or a directory above them is not a directory in the archive.
    NotADirectory { entry: String },
    /// A symlink's target is absolute or leads out of the payload.
    UnsafeSymlink { entry: String, target: String, reason: &'static str },
    /// An entry is a hard link.
    HardLink { entry: String, target: String },
    /// An entry is a device, a FIFO or another kind that is no file, directory or symlink.
    SpecialFile { entry: String, kind: String },
    /// The same path appears twice.
    Duplicate { entry: String },
    /// Extracting an entry would pass the limit on bytes.
    TooManyBytes { entry: String, limit: u64 },
    /// A program the release needs is missing from `bin/`, or is no executable file.
    MissingBinary { name: &'static str, problem: String },
    /// Writing under the destination failed.
    Write { action: &'static str, path: PathBuf, source: io::Error },
}

impl fmt::Display for DebError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DebError::Read { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            DebError::NotAnArchive { path } => {
                write!(f, "{} is not a Debian package: it does not start as an ar archive", path.display())
            }
            DebError::BadMemberHeader { index, reason } => {
                write!(f, "the header of member {index} of the package is malformed: {reason}")
            }
            DebError::Truncated { member } => write!(f, "the package is cut short: it ends inside {member}"),
            DebError::UnsupportedFormat { found } => {
                write!(f, "debian-binary announces package format {found:?}, not 2.x")
            }
            DebError::UnexpectedMember { found, expected } => {
                write!(f, "the package holds member {found:?} where {expected} was expected")
            }
            DebError::MissingMember { expected } => write!(f, "the package ends before its {expected} member"),
            DebError::UnknownCompression { member } => {
                write!(f, "member {member} is compressed in an unsupported way (supported: .xz, .gz, or none)")
            }
            DebError::Corrupt { member, source } => write!(f, "member {member} is damaged: {source}"),
            DebError::TooMuchMemory { member } => write!(
                f,
                "member {member} needs more than {} MiB to decompress (an xz dictionary over 16 MiB)",
                XZ_MEMORY_LIMIT_KIB / 1024
            ),
            DebError::MemberTooLarge { member, limit } => {
                write!(f, "member {member} unpacks to more than the limit of {limit} bytes")
            }
            DebError::TooManyEntries { member, limit } => {
                write!(f, "member {member} holds more than the limit of {limit} entries")
            }
            DebError::NoControl { member } => write!(f, "member {member} has no control file"),
            DebError::BadControl { member, reason } => write!(f, "the control file in {member} {reason}"),
            DebError::Mismatch { field, expected, found } => {
                write!(f, "the package's {field} is {found:?}, not the expected {expected:?}")
            }
            DebError::DestinationExists { path } => {
                write!(f, "{} already exists; the payload is extracted into a new directory", path.display())
            }
            DebError::UnsafePath { entry, reason } => write!(f, "data.tar entry {entry:?} is refused: {reason}"),
            DebError::ParentNotDirectory { entry, parent } => {
                write!(f, "data.tar entry {entry:?} is refused: it lies beneath {parent:?}, which is not a directory")
            }
            DebError::NotADirectory { entry } => {
                write!(f, "data.tar entry {entry:?} is refused: the payload expects a directory there")
            }
            DebError::UnsafeSymlink { entry, target, reason } => {
                write!(f, "data.tar symlink {entry:?} -> {target:?} is refused: {reason}")
            }
            DebError::HardLink { entry, target } => {
                write!(f, "data.tar entry {entry:?} is refused: it is a hard link to {target:?}")
            }
            DebError::SpecialFile { entry, kind } => {
                write!(f, "data.tar entry {entry:?} is refused: it is a {kind}, not a file, directory or symlink")
            }
            DebError::Duplicate { entry } => write!(f, "data.tar entry {entry:?} is refused: it appears twice"),
            DebError::TooManyBytes { entry, limit } => {
                write!(f, "data.tar entry {entry:?} is refused: the payload would pass the limit of {limit} bytes")
            }
            DebError::MissingBinary { name, problem } => {
                write!(f, "the payload's bin/{name} {problem}; every release needs it")
            }
            DebError::Write { action, path, source } => write!(f, "cannot {action} {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for DebError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DebError::Read { source, .. } | DebError::Corrupt { source, .. } | DebError::Write { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

/// Reads the package's identity from its `control` file.
pub fn read_info(deb: &Path) -> Result<DebInfo, DebError> {
    let trouble = Trouble::default();
    let mut ar = Ar::open(deb)?;
    read_control(&mut ar, &trouble)
}

/// Extracts the payload of the package at `deb` into `dest`, which must not exist: its
/// `bin/` and `share/` become `dest/bin` and `dest/share`, and the rest of the package is
/// ignored. The package must be `expected`, which is checked before anything is created.
/// On failure nothing is left at `dest`.
///
/// `dest` is created `0700` and stays so; the directories in it get `0755` and the files
/// their archive modes masked to `0o755`. This reads and writes synchronously (and fsyncs
/// every file): from async code, call it on a blocking thread.
pub fn extract_payload(deb: &Path, dest: &Path, expected: &DebInfo, limits: Limits) -> Result<(), DebError> {
    extract_payload_observed(deb, dest, expected, limits, &mut |_| {})
}

/// [`extract_payload`], calling `observe` with the number of archive entries read so far
/// after each one (progress, and a seam for the tests that interrupt an install).
pub fn extract_payload_observed(
    deb: &Path,
    dest: &Path,
    expected: &DebInfo,
    limits: Limits,
    observe: &mut dyn FnMut(usize),
) -> Result<(), DebError> {
    let trouble = Trouble::default();
    let mut ar = Ar::open(deb)?;
    let info = read_control(&mut ar, &trouble)?;
    check_identity(expected, &info)?;
    let name = ar.next_package_member("data.tar")?;
    let compression = compression_of(&name, "data.tar")?;
    let stream = decompressor(Member { ar: &mut ar, trouble: &trouble }, compression);
    extract_stream(stream, &name, dest, limits, &trouble, observe)
}

/// Extracts the payload of an uncompressed tar laid out as a package's `data.tar` (the
/// payload under `usr/lib/mcp-raspi/`), read from the start of `tar`, into `dest`, exactly
/// as [`extract_payload`] does: the same defences, limits and cleanup. A delta update
/// rebuilds such a tar.
pub fn extract_tar_payload(
    mut tar: fs::File,
    dest: &Path,
    limits: Limits,
    observe: &mut dyn FnMut(usize),
) -> Result<(), DebError> {
    use std::io::Seek;
    let name = "the rebuilt payload";
    tar.rewind().map_err(|source| DebError::Corrupt { member: name.to_string(), source })?;
    extract_stream(Box::new(io::BufReader::new(tar)), name, dest, limits, &Trouble::default(), observe)
}

fn extract_stream(
    stream: Box<dyn io::Read + '_>,
    name: &str,
    dest: &Path,
    limits: Limits,
    trouble: &Trouble,
    observe: &mut dyn FnMut(usize),
) -> Result<(), DebError> {
    match nix::unistd::mkdir(dest, Mode::from_bits_truncate(0o700)) {
        Ok(()) => {}
        Err(Errno::EEXIST) => return Err(DebError::DestinationExists { path: dest.to_path_buf() }),
        Err(e) => return Err(write_err("create", dest)(io::Error::from(e))),
    }
    let result = Extractor::new(dest, limits).and_then(|extractor| extractor.run(stream, name, trouble, observe));
    if result.is_err() {
        // Ours alone, and std removes a tree without following symlinks in it. A failure
        // here leaves a private (0700) directory that the next attempt refuses to reuse.
        let _ = fs::remove_dir_all(dest);
    }
    result
}

fn check_identity(expected: &DebInfo, found: &DebInfo) -> Result<(), DebError> {
    let fields = [
        ("package name", &expected.package, &found.package),
        ("version", &expected.version, &found.version),
        ("architecture", &expected.architecture, &found.architecture),
    ];
    for (field, want, got) in fields {
        if want != got {
            return Err(DebError::Mismatch { field, expected: want.clone(), found: got.clone() });
        }
    }
    Ok(())
}

/// The components of a path in a tar archive, without `.` and empty ones; absolute paths
/// and `..` are refused (with the reason).
fn components(path: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if path.starts_with(b"/") {
        return Err("its path is absolute");
    }
    let mut parts = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("its path has a `..` component"),
            name => parts.push(name),
        }
    }
    Ok(parts)
}

fn write_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DebError + 'a {
    move |source| DebError::Write { action, path: path.to_path_buf(), source }
}
