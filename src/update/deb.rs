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

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, AT_FDCWD};
use nix::sys::stat::Mode;

use super::release::PAYLOAD_PARTS;

/// Where the payload lives in `data.tar`, as path components.
const PAYLOAD_ROOT: [&str; 3] = ["usr", "lib", "mcp-raspi"];
/// The programs a payload must carry in `bin/`: without them there is nothing to run.
pub const REQUIRED_BINARIES: [&str; 2] = ["mcp-raspi-server", "raspi-ops-agent"];

/// The largest `debian-binary` accepted; the real one is four bytes.
const DEBIAN_BINARY_MAX: u64 = 64;
/// Bounds on `control.tar`: it holds a few small files (control, maintainer scripts,
/// conffiles), so these are generous and keep a bomb there as harmless as one in data.tar.
const CONTROL_TAR_MAX_BYTES: u64 = 1 << 20;
const CONTROL_TAR_MAX_ENTRIES: usize = 100;
/// The largest `control` file accepted; cargo-deb's is about one kilobyte.
const CONTROL_FILE_MAX: u64 = 64 << 10;
/// The memory an xz stream may ask for, in KiB: a 16 MiB dictionary (presets up to -7;
/// cargo-deb uses -6, 8 MiB) and the decoder's own buffers. The window grows with the
/// output, so a package smaller than its dictionary costs less.
pub const XZ_MEMORY_LIMIT_KIB: u32 = 16 * 1024 + 1024;

const AR_MAGIC: &[u8; 8] = b"!<arch>\n";
const AR_HEADER_LEN: usize = 60;
const COPY_BUFFER: usize = 64 * 1024;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

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

    match nix::unistd::mkdir(dest, Mode::from_bits_truncate(0o700)) {
        Ok(()) => {}
        Err(Errno::EEXIST) => return Err(DebError::DestinationExists { path: dest.to_path_buf() }),
        Err(e) => return Err(write_err("create", dest)(io::Error::from(e))),
    }
    let result = Extractor::new(dest, limits).and_then(|extractor| {
        extractor.run(Member { ar: &mut ar, trouble: &trouble }, &name, compression, &trouble, observe)
    });
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

// --- the ar layer -----------------------------------------------------------------------------

/// Problems noticed beneath the decompressors and the tar reader, which pass them up only as
/// opaque I/O errors: they are recorded here to be told apart from damaged data.
#[derive(Default)]
struct Trouble {
    truncated: Cell<bool>,
    over_limit: Cell<bool>,
}

/// An ar archive read front to back, one member at a time.
struct Ar {
    file: BufReader<File>,
    path: PathBuf,
    /// The current member's name, its bytes not yet read, and whether a padding byte follows
    /// it (members start at even offsets).
    name: String,
    left: u64,
    pad: bool,
    index: usize,
}

impl Ar {
    fn open(path: &Path) -> Result<Ar, DebError> {
        let read_err = |source| DebError::Read { path: path.to_path_buf(), source };
        let mut file = BufReader::with_capacity(COPY_BUFFER, File::open(path).map_err(read_err)?);
        let mut magic = [0u8; AR_MAGIC.len()];
        if read_full(&mut file, &mut magic).map_err(read_err)? < magic.len() || &magic != AR_MAGIC {
            return Err(DebError::NotAnArchive { path: path.to_path_buf() });
        }
        Ok(Ar { file, path: path.to_path_buf(), name: String::new(), left: 0, pad: false, index: 0 })
    }

    /// Moves to the next member and returns its name, or `None` at the end of the archive.
    fn next_member(&mut self) -> Result<Option<String>, DebError> {
        let skip = self.left + u64::from(self.pad);
        let skipped = io::copy(&mut (&mut self.file).take(skip), &mut io::sink()).map_err(|e| self.read_err(e))?;
        if skipped < self.left {
            return Err(DebError::Truncated { member: self.name.clone() });
        }
        self.index += 1;
        let mut header = [0u8; AR_HEADER_LEN];
        let got = read_full(&mut self.file, &mut header).map_err(|e| self.read_err(e))?;
        if got == 0 {
            return Ok(None);
        }
        let index = self.index;
        if got < AR_HEADER_LEN {
            return Err(DebError::Truncated { member: format!("the header of member {index}") });
        }
        let bad = |reason: &str| DebError::BadMemberHeader { index, reason: reason.to_string() };
        if &header[58..60] != b"`\n" {
            return Err(bad("it does not end with the ar header terminator"));
        }
        // GNU ar ends names with '/', dpkg-deb pads them with spaces; both are stripped.
        let raw = trim_spaces(&header[..16]);
        let raw = raw.strip_suffix(b"/").unwrap_or(raw);
        if raw.is_empty() || !raw.iter().all(|b| b.is_ascii_graphic()) {
            return Err(bad("its name is empty or not printable"));
        }
        let size = std::str::from_utf8(trim_spaces(&header[48..58]))
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("its size is not a decimal number"))?;
        self.name = String::from_utf8_lossy(raw).into_owned();
        self.left = size;
        self.pad = size % 2 == 1;
        Ok(Some(self.name.clone()))
    }

    /// The next member that is part of the package format, skipping other tools' members
    /// (named `_...`); `expected` names it in errors.
    fn next_package_member(&mut self, expected: &'static str) -> Result<String, DebError> {
        loop {
            match self.next_member()? {
                None => return Err(DebError::MissingMember { expected }),
                Some(name) if name.starts_with('_') => continue,
                Some(name) => return Ok(name),
            }
        }
    }

    fn read_err(&self, source: io::Error) -> DebError {
        DebError::Read { path: self.path.clone(), source }
    }
}

/// The current member's contents. Reading past what the file holds is an error (recorded as
/// truncation), so a cut-short package is never taken for a short one.
struct Member<'a> {
    ar: &'a mut Ar,
    trouble: &'a Trouble,
}

impl Read for Member<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ar.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.ar.left).map_or(buf.len(), |left| left.min(buf.len()));
        let n = self.ar.file.read(&mut buf[..want])?;
        if n == 0 {
            self.trouble.truncated.set(true);
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the package ends inside this member"));
        }
        self.ar.left -= n as u64;
        Ok(n)
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn trim_spaces(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    &bytes[..end]
}

// --- decompression ----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Xz,
}

/// How the member `name`, which should be `base` (`control.tar` or `data.tar`), is compressed.
fn compression_of(name: &str, base: &'static str) -> Result<Compression, DebError> {
    match name.strip_prefix(base) {
        Some("") => Ok(Compression::None),
        Some(".gz") => Ok(Compression::Gzip),
        Some(".xz") => Ok(Compression::Xz),
        Some(rest) if rest.starts_with('.') => Err(DebError::UnknownCompression { member: name.to_string() }),
        _ => Err(DebError::UnexpectedMember { found: name.to_string(), expected: base }),
    }
}

fn decompressor<'a>(member: Member<'a>, compression: Compression) -> Box<dyn Read + 'a> {
    match compression {
        Compression::None => Box::new(member),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(member)),
        // Concatenated streams are valid xz, so they are accepted.
        Compression::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(member, true, XZ_MEMORY_LIMIT_KIB)),
    }
}

/// Fails once more than `left` bytes have come through, so an unpacked stream is bounded
/// whatever its compressed size.
struct Bounded<'a, R> {
    inner: R,
    left: u64,
    trouble: &'a Trouble,
}

impl<R: Read> Read for Bounded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte beyond the limit is asked for, to tell "exactly at" from "past" it.
        let want = usize::try_from(self.left.saturating_add(1)).map_or(buf.len(), |w| w.min(buf.len()));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.trouble.over_limit.set(true);
            return Err(io::Error::other("unpacked past the limit"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Turns an error from reading inside `member` into what actually went wrong.
fn unpack_err(member: &str, limit: u64, trouble: &Trouble, source: io::Error) -> DebError {
    let member = member.to_string();
    if trouble.truncated.get() {
        DebError::Truncated { member }
    } else if trouble.over_limit.get() {
        DebError::MemberTooLarge { member, limit }
    } else if source.kind() == io::ErrorKind::OutOfMemory {
        DebError::TooMuchMemory { member }
    } else {
        DebError::Corrupt { member, source }
    }
}

/// Reads the rest of an unpacked member, so that the decompressor reaches the end of its
/// stream and checks it (gzip's CRC, xz's index), and a damaged tail is not overlooked.
fn drain(stream: &mut impl Read) -> io::Result<()> {
    io::copy(stream, &mut io::sink()).map(drop)
}

// --- control ----------------------------------------------------------------------------------

/// Checks `debian-binary`, then reads `control.tar` and parses its `control` file, leaving
/// `ar` at the end of that member.
fn read_control(ar: &mut Ar, trouble: &Trouble) -> Result<DebInfo, DebError> {
    let first = ar.next_member()?.ok_or(DebError::MissingMember { expected: "debian-binary" })?;
    if first != "debian-binary" {
        return Err(DebError::UnexpectedMember { found: first, expected: "debian-binary" });
    }
    if ar.left > DEBIAN_BINARY_MAX {
        return Err(DebError::UnsupportedFormat { found: format!("a debian-binary of {} bytes", ar.left) });
    }
    let mut version = Vec::new();
    Member { ar: &mut *ar, trouble }
        .read_to_end(&mut version)
        .map_err(|e| unpack_err("debian-binary", DEBIAN_BINARY_MAX, trouble, e))?;
    let version = String::from_utf8_lossy(&version);
    let line = version.lines().next().unwrap_or("").trim();
    if !line.starts_with("2.") {
        return Err(DebError::UnsupportedFormat { found: line.to_string() });
    }

    let name = ar.next_package_member("control.tar")?;
    let compression = compression_of(&name, "control.tar")?;
    let fail = |e| unpack_err(&name, CONTROL_TAR_MAX_BYTES, trouble, e);
    let stream = Bounded {
        inner: decompressor(Member { ar: &mut *ar, trouble }, compression),
        left: CONTROL_TAR_MAX_BYTES,
        trouble,
    };
    let mut archive = tar::Archive::new(stream);
    let mut control: Option<Vec<u8>> = None;
    let mut count = 0;
    for entry in archive.entries().map_err(fail)? {
        let mut entry = entry.map_err(fail)?;
        count += 1;
        if count > CONTROL_TAR_MAX_ENTRIES {
            return Err(DebError::TooManyEntries { member: name.clone(), limit: CONTROL_TAR_MAX_ENTRIES });
        }
        let is_control = matches!(components(&entry.path_bytes()).as_deref(), Ok([only]) if *only == b"control");
        if !is_control {
            continue;
        }
        let bad = |reason: &str| DebError::BadControl { member: name.clone(), reason: reason.to_string() };
        if control.is_some() {
            return Err(bad("appears twice"));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad("is not a regular file"));
        }
        if entry.size() > CONTROL_FILE_MAX {
            return Err(bad("is larger than 64 KiB"));
        }
        let mut text = Vec::new();
        entry.read_to_end(&mut text).map_err(fail)?;
        control = Some(text);
    }
    drain(&mut archive.into_inner()).map_err(fail)?;
    let text = control.ok_or_else(|| DebError::NoControl { member: name.clone() })?;
    let text = String::from_utf8(text)
        .map_err(|_| DebError::BadControl { member: name.clone(), reason: "is not UTF-8 text".to_string() })?;
    parse_control(&text).map_err(|reason| DebError::BadControl { member: name, reason })
}

/// The identifying fields of a control file: its first paragraph of `Field: value` lines
/// (continuation lines, which begin with a space or tab, belong to multi-line fields such as
/// `Description` and are skipped). Field names are case-insensitive, as in deb822.
fn parse_control(text: &str) -> Result<DebInfo, String> {
    let mut fields: [(&str, Option<&str>); 3] = [("Package", None), ("Version", None), ("Architecture", None)];
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("has line {} without a field name: {line:?}", number + 1));
        };
        for (wanted, slot) in fields.iter_mut() {
            if name.trim().eq_ignore_ascii_case(wanted) {
                if slot.is_some() {
                    return Err(format!("has the {wanted} field twice"));
                }
                *slot = Some(value.trim());
            }
        }
    }
    let take = |i: usize| match fields[i] {
        (_, Some(value)) if !value.is_empty() => Ok(value.to_string()),
        (name, Some(_)) => Err(format!("has an empty {name} field")),
        (name, None) => Err(format!("has no {name} field")),
    };
    Ok(DebInfo { package: take(0)?, version: take(1)?, architecture: take(2)? })
}

// --- data -------------------------------------------------------------------------------------

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

struct Extractor<'a> {
    dest: &'a Path,
    root: OwnedFd,
    limits: Limits,
    made: HashMap<PathBuf, Made>,
    entries: usize,
    bytes: u64,
}

impl<'a> Extractor<'a> {
    fn new(dest: &'a Path, limits: Limits) -> Result<Extractor<'a>, DebError> {
        let root = nix::fcntl::openat(AT_FDCWD, dest, DIR_FLAGS, Mode::empty())
            .map_err(|e| write_err("open", dest)(io::Error::from(e)))?;
        Ok(Extractor { dest, root, limits, made: HashMap::new(), entries: 0, bytes: 0 })
    }

    fn run(
        mut self,
        member: Member<'_>,
        name: &str,
        compression: Compression,
        trouble: &Trouble,
        observe: &mut dyn FnMut(usize),
    ) -> Result<(), DebError> {
        let limit = self.limits.max_total_bytes;
        let fail = |e| unpack_err(name, limit, trouble, e);
        let stream = Bounded { inner: decompressor(member, compression), left: limit, trouble };
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

fn write_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DebError + 'a {
    move |source| DebError::Write { action, path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SERVER: &str = "./usr/lib/mcp-raspi/bin/mcp-raspi-server";
    const AGENT: &str = "./usr/lib/mcp-raspi/bin/raspi-ops-agent";

    fn info() -> DebInfo {
        DebInfo { package: "mcp-raspi".to_string(), version: "1.2.3".to_string(), architecture: "arm64".to_string() }
    }

    fn control_text(info: &DebInfo) -> String {
        format!(
            "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: someone <a@example.invalid>\n\
             Description: MCP server\n a longer description\n .\n with a paragraph\n",
            info.package, info.version, info.architecture
        )
    }

    #[derive(Debug, Clone, Copy)]
    enum Z {
        Plain,
        Gz,
        Xz,
    }

    impl Z {
        fn suffix(self) -> &'static str {
            match self {
                Z::Plain => "",
                Z::Gz => ".gz",
                Z::Xz => ".xz",
            }
        }

        fn compress(self, data: &[u8]) -> Vec<u8> {
            match self {
                Z::Plain => data.to_vec(),
                Z::Gz => {
                    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    enc.write_all(data).unwrap();
                    enc.finish().unwrap()
                }
                Z::Xz => {
                    let mut enc = lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1)).unwrap();
                    enc.write_all(data).unwrap();
                    enc.finish().unwrap()
                }
            }
        }
    }

    /// One entry of a fixture tar, with its path written as given (the tar builder's own
    /// path checks would refuse the hostile ones).
    struct E {
        path: String,
        kind: tar::EntryType,
        mode: u32,
        data: Vec<u8>,
        link: String,
        /// The size a header claims, when the data comes from `zeros` instead.
        zeros: u64,
    }

    fn dir(path: &str) -> E {
        E {
            path: path.to_string(),
            kind: tar::EntryType::Directory,
            mode: 0o755,
            data: vec![],
            link: String::new(),
            zeros: 0,
        }
    }

    fn file(path: &str, mode: u32, data: &str) -> E {
        E {
            path: path.to_string(),
            kind: tar::EntryType::Regular,
            mode,
            data: data.into(),
            link: String::new(),
            zeros: 0,
        }
    }

    fn link(path: &str, kind: tar::EntryType, target: &str) -> E {
        E { path: path.to_string(), kind, mode: 0o777, data: vec![], link: target.to_string(), zeros: 0 }
    }

    fn zeros(path: &str, size: u64) -> E {
        E { zeros: size, ..file(path, 0o644, "") }
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for e in entries {
            let mut header = tar::Header::new_gnu();
            let old = header.as_old_mut();
            old.name[..e.path.len()].copy_from_slice(e.path.as_bytes());
            old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
            header.set_entry_type(e.kind);
            header.set_mode(e.mode);
            header.set_mtime(0);
            if e.zeros > 0 {
                header.set_size(e.zeros);
                header.set_cksum();
                builder.append(&header, io::repeat(0).take(e.zeros)).unwrap();
            } else {
                header.set_size(e.data.len() as u64);
                header.set_cksum();
                builder.append(&header, &e.data[..]).unwrap();
            }
        }
        builder.into_inner().unwrap()
    }

    /// The entries cargo-deb writes, in its order: the payload among other files.
    fn good_entries() -> Vec<E> {
        vec![
            dir("./"),
            dir("./etc/"),
            dir("./etc/mcp-raspi/"),
            file("./etc/mcp-raspi/config.yml", 0o644, "listen: 127.0.0.1:8000\n"),
            dir("./usr/"),
            dir("./usr/share/"),
            dir("./usr/share/doc/"),
            dir("./usr/share/doc/mcp-raspi/"),
            file("./usr/share/doc/mcp-raspi/copyright", 0o644, "Apache-2.0\n"),
            dir("./usr/lib/"),
            dir("./usr/lib/mcp-raspi/"),
            dir("./usr/lib/mcp-raspi/share/"),
            file("./usr/lib/mcp-raspi/share/config.example.yml", 0o644, "# example\n"),
            dir("./usr/bin/"),
            link("./usr/bin/mcp-raspi", tar::EntryType::Symlink, "../lib/mcp-raspi/bin/mcp-raspi"),
            link("./usr/bin/mcp-raspi-server", tar::EntryType::Symlink, "/opt/mcp-raspi/current/bin/mcp-raspi-server"),
            dir("./usr/lib/systemd/"),
            dir("./usr/lib/systemd/system/"),
            file("./usr/lib/systemd/system/raspi-ops-agent.service", 0o644, "[Unit]\n"),
            // Near misses of the payload's prefix, which are not part of it.
            file("./usr/lib/mcp-raspi/README", 0o644, "not in bin or share\n"),
            dir("./usr/lib/mcp-raspi-extra/"),
            dir("./usr/lib/mcp-raspi-extra/bin/"),
            file("./usr/lib/mcp-raspi-extra/bin/other", 0o755, "other\n"),
            dir("./usr/lib/mcp-raspi/bin/"),
            file("./usr/lib/mcp-raspi/bin/mcp-raspi", 0o755, "cli\n"),
            file(SERVER, 0o755, "server\n"),
            file(AGENT, 0o755, "agent\n"),
        ]
    }

    struct Pkg {
        control: String,
        control_z: Z,
        data: Vec<E>,
        data_z: Z,
    }

    impl Pkg {
        fn new(data: Vec<E>) -> Pkg {
            Pkg { control: control_text(&info()), control_z: Z::Xz, data, data_z: Z::Xz }
        }

        fn members(&self) -> Vec<(String, Vec<u8>)> {
            let control = tar_of(&[file("./control", 0o644, &self.control), file("./postinst", 0o755, "#!/bin/sh\n")]);
            vec![
                ("debian-binary".to_string(), b"2.0\n".to_vec()),
                (format!("control.tar{}", self.control_z.suffix()), self.control_z.compress(&control)),
                (format!("data.tar{}", self.data_z.suffix()), self.data_z.compress(&tar_of(&self.data))),
            ]
        }

        fn bytes(&self) -> Vec<u8> {
            ar(&self.members())
        }
    }

    fn ar(members: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut out = AR_MAGIC.to_vec();
        for (name, data) in members {
            let header = format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, "100644", data.len());
            assert_eq!(header.len(), AR_HEADER_LEN);
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    struct Scratch {
        dir: tempfile::TempDir,
    }

    impl Scratch {
        fn new() -> Scratch {
            Scratch { dir: tempfile::tempdir().unwrap() }
        }

        fn deb(&self, bytes: &[u8]) -> PathBuf {
            let path = self.dir.path().join("mcp-raspi.deb");
            fs::write(&path, bytes).unwrap();
            path
        }

        fn dest(&self) -> PathBuf {
            self.dir.path().join("payload")
        }

        fn extract(&self, bytes: &[u8], limits: Limits) -> Result<(), DebError> {
            extract_payload(&self.deb(bytes), &self.dest(), &info(), limits)
        }

        /// Extracts a package that must be refused, checks nothing is left behind, and
        /// returns the error with its message.
        fn refused(&self, bytes: &[u8], limits: Limits) -> (DebError, String) {
            let err = self.extract(bytes, limits).unwrap_err();
            assert!(
                fs::symlink_metadata(self.dest()).is_err(),
                "{} was left behind after: {err}",
                self.dest().display()
            );
            let message = err.to_string();
            (err, message)
        }
    }

    /// Every path under `root` with its kind and permission bits, sorted.
    fn listing(root: &Path) -> Vec<(String, char, u32)> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, char, u32)>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                let kind = if meta.is_dir() {
                    'd'
                } else if meta.is_symlink() {
                    'l'
                } else {
                    'f'
                };
                out.push((rel, kind, meta.permissions().mode() & 0o7777));
                if meta.is_dir() {
                    walk(root, &path, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

    fn expected_listing() -> Vec<(String, char, u32)> {
        let mut want = vec![
            ("bin".to_string(), 'd', 0o755),
            ("bin/mcp-raspi".to_string(), 'f', 0o755),
            ("bin/mcp-raspi-server".to_string(), 'f', 0o755),
            ("bin/raspi-ops-agent".to_string(), 'f', 0o755),
            ("share".to_string(), 'd', 0o755),
            ("share/config.example.yml".to_string(), 'f', 0o644),
        ];
        want.sort();
        want
    }

    #[test]
    fn a_well_formed_package_extracts_exactly_bin_and_share_with_their_modes() {
        let scratch = Scratch::new();
        scratch.extract(&Pkg::new(good_entries()).bytes(), Limits::default()).unwrap();
        let dest = scratch.dest();
        assert_eq!(listing(&dest), expected_listing());
        assert_eq!(fs::read_to_string(dest.join("bin/mcp-raspi-server")).unwrap(), "server\n");
        assert_eq!(fs::read_to_string(dest.join("bin/raspi-ops-agent")).unwrap(), "agent\n");
        assert_eq!(fs::read_to_string(dest.join("share/config.example.yml")).unwrap(), "# example\n");
        assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn gzip_and_uncompressed_members_extract_the_same_payload() {
        for (control_z, data_z) in [(Z::Gz, Z::Gz), (Z::Plain, Z::Plain), (Z::Gz, Z::Xz), (Z::Xz, Z::Gz)] {
            let scratch = Scratch::new();
            let pkg = Pkg { control_z, data_z, ..Pkg::new(good_entries()) };
            scratch.extract(&pkg.bytes(), Limits::default()).unwrap();
            assert_eq!(listing(&scratch.dest()), expected_listing(), "{control_z:?} {data_z:?}");
        }
    }

    #[test]
    fn read_info_returns_the_package_name_version_and_architecture() {
        let scratch = Scratch::new();
        let pkg = Pkg {
            control: "package: mcp-raspi\nVERSION:  1.2.3 \nDescription: x\n Architecture: not this\n\
                      Architecture: arm64\n\nPackage: second paragraph\n"
                .to_string(),
            ..Pkg::new(good_entries())
        };
        assert_eq!(read_info(&scratch.deb(&pkg.bytes())).unwrap(), info());
    }

    #[test]
    fn members_of_other_tools_between_the_parts_are_skipped() {
        let scratch = Scratch::new();
        let mut members = Pkg::new(good_entries()).members();
        members.insert(1, ("_gpgorigin".to_string(), b"odd".to_vec()));
        members.insert(3, ("_signature".to_string(), b"sig".to_vec()));
        scratch.extract(&ar(&members), Limits::default()).unwrap();
        assert_eq!(listing(&scratch.dest()), expected_listing());
    }

    #[test]
    fn a_package_of_another_name_version_or_architecture_is_refused_before_anything_is_created() {
        let cases = [
            ("package name", DebInfo { package: "other".to_string(), ..info() }, "other"),
            ("version", DebInfo { version: "9.9.9".to_string(), ..info() }, "9.9.9"),
            ("architecture", DebInfo { architecture: "amd64".to_string(), ..info() }, "amd64"),
        ];
        for (field, found, value) in cases {
            let scratch = Scratch::new();
            let pkg = Pkg { control: control_text(&found), ..Pkg::new(good_entries()) };
            let (err, message) = scratch.refused(&pkg.bytes(), Limits::default());
            assert!(matches!(err, DebError::Mismatch { .. }), "{message}");
            assert!(message.contains(field) && message.contains(value), "{message}");
            let expected = [info().package, info().version, info().architecture];
            assert!(expected.iter().any(|e| message.contains(&format!("{e:?}"))), "{message}");
        }
    }

    #[test]
    fn a_control_file_without_an_architecture_is_refused() {
        let scratch = Scratch::new();
        let pkg = Pkg { control: "Package: mcp-raspi\nVersion: 1.2.3\n".to_string(), ..Pkg::new(good_entries()) };
        let err = read_info(&scratch.deb(&pkg.bytes())).unwrap_err();
        assert!(matches!(err, DebError::BadControl { .. }), "{err}");
        assert!(err.to_string().contains("no Architecture field"), "{err}");
    }

    /// The good package with `extra` appended to its data.tar, which must be refused with
    /// a message naming `named`.
    fn refused_with(extra: Vec<E>, named: &str) -> DebError {
        let mut entries = good_entries();
        entries.extend(extra);
        let scratch = Scratch::new();
        let (err, message) = scratch.refused(&Pkg::new(entries).bytes(), Limits::default());
        assert!(message.contains(named), "{message:?} does not name {named:?}");
        err
    }

    #[test]
    fn an_entry_with_a_dot_dot_component_is_refused() {
        let entry = "./usr/lib/mcp-raspi/bin/../../../../tmp/evil";
        let err = refused_with(vec![file(entry, 0o755, "x")], entry);
        assert!(matches!(err, DebError::UnsafePath { .. }), "{err}");
        // Outside the payload too: such a package is malformed.
        let err = refused_with(vec![file("./usr/share/../../etc/evil", 0o644, "x")], "../../etc/evil");
        assert!(matches!(err, DebError::UnsafePath { .. }), "{err}");
    }

    #[test]
    fn an_absolute_path_is_refused() {
        let entry = "/usr/lib/mcp-raspi/bin/evil";
        let err = refused_with(vec![file(entry, 0o755, "x")], entry);
        assert!(matches!(err, DebError::UnsafePath { .. }), "{err}");
    }

    #[test]
    fn a_symlink_leading_out_of_the_payload_is_refused() {
        let entry = "./usr/lib/mcp-raspi/bin/escape";
        for target in ["../../etc/passwd", "/etc/passwd", "../share/../../x", ""] {
            let err = refused_with(vec![link(entry, tar::EntryType::Symlink, target)], entry);
            assert!(matches!(err, DebError::UnsafeSymlink { .. }), "{err}");
        }
    }

    #[test]
    fn a_symlink_within_the_payload_is_extracted() {
        let mut entries = good_entries();
        entries.push(link("./usr/lib/mcp-raspi/bin/config", tar::EntryType::Symlink, "../share/config.example.yml"));
        let scratch = Scratch::new();
        scratch.extract(&Pkg::new(entries).bytes(), Limits::default()).unwrap();
        let link = scratch.dest().join("bin/config");
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("../share/config.example.yml"));
        assert_eq!(fs::read_to_string(&link).unwrap(), "# example\n");
    }

    #[test]
    fn a_file_beneath_a_bin_directory_that_is_a_symlink_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap().to_string();
        let entries = vec![
            dir("./usr/"),
            dir("./usr/lib/"),
            dir("./usr/lib/mcp-raspi/"),
            link("./usr/lib/mcp-raspi/bin", tar::EntryType::Symlink, &target),
            file(SERVER, 0o755, "server\n"),
            file(AGENT, 0o755, "agent\n"),
        ];
        let scratch = Scratch::new();
        let (err, message) = scratch.refused(&Pkg::new(entries).bytes(), Limits::default());
        assert!(message.contains("./usr/lib/mcp-raspi/bin"), "{message}");
        assert!(matches!(err, DebError::NotADirectory { .. }), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_file_beneath_a_symlink_inside_the_payload_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let entry = "./usr/lib/mcp-raspi/bin/up/evil";
        let err = refused_with(
            vec![link("./usr/lib/mcp-raspi/bin/up", tar::EntryType::Symlink, ".."), file(entry, 0o755, "x")],
            entry,
        );
        assert!(matches!(err, DebError::ParentNotDirectory { .. }), "{err}");
        assert!(err.to_string().contains("usr/lib/mcp-raspi/bin/up\""), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_directory_above_the_payload_that_is_not_a_directory_is_refused() {
        let entries = vec![link("./usr/lib/mcp-raspi", tar::EntryType::Symlink, "/tmp"), file(SERVER, 0o755, "s")];
        let scratch = Scratch::new();
        let (err, message) = scratch.refused(&Pkg::new(entries).bytes(), Limits::default());
        assert!(
            matches!(err, DebError::NotADirectory { .. }) && message.contains("./usr/lib/mcp-raspi\""),
            "{message}"
        );
    }

    #[test]
    fn a_hard_link_is_refused() {
        let entry = "./usr/lib/mcp-raspi/bin/hard";
        let err = refused_with(vec![link(entry, tar::EntryType::Link, "etc/shadow")], entry);
        assert!(matches!(err, DebError::HardLink { .. }) && err.to_string().contains("etc/shadow"), "{err}");
    }

    #[test]
    fn device_nodes_and_fifos_are_refused() {
        for (kind, name) in [
            (tar::EntryType::Char, "character device"),
            (tar::EntryType::Block, "block device"),
            (tar::EntryType::Fifo, "FIFO"),
        ] {
            let entry = "./usr/lib/mcp-raspi/share/node";
            let mut node = file(entry, 0o666, "");
            node.kind = kind;
            let err = refused_with(vec![node], entry);
            assert!(matches!(err, DebError::SpecialFile { .. }) && err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn a_duplicate_entry_is_refused() {
        let err = refused_with(vec![file(AGENT, 0o755, "second agent\n")], AGENT);
        assert!(matches!(err, DebError::Duplicate { .. }), "{err}");
        let err = refused_with(vec![dir("./usr/lib/mcp-raspi/share/")], "./usr/lib/mcp-raspi/share/");
        assert!(matches!(err, DebError::Duplicate { .. }), "{err}");
    }

    #[test]
    fn a_file_listed_before_its_directory_is_extracted() {
        let mut entries: Vec<E> = good_entries().into_iter().filter(|e| e.kind != tar::EntryType::Directory).collect();
        entries.push(dir("./usr/lib/mcp-raspi/bin/"));
        let scratch = Scratch::new();
        scratch.extract(&Pkg::new(entries).bytes(), Limits::default()).unwrap();
        assert_eq!(listing(&scratch.dest()), expected_listing());
    }

    #[test]
    fn set_id_bits_and_write_access_for_others_are_dropped() {
        let mut entries = good_entries();
        entries.push(file("./usr/lib/mcp-raspi/bin/setuid", 0o6777, "x"));
        entries.push(file("./usr/lib/mcp-raspi/share/open", 0o666, "x"));
        let scratch = Scratch::new();
        scratch.extract(&Pkg::new(entries).bytes(), Limits::default()).unwrap();
        let mode = |p: &str| fs::metadata(scratch.dest().join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("bin/setuid"), 0o755);
        assert_eq!(mode("share/open"), 0o644);
    }

    #[test]
    fn a_package_with_too_many_entries_is_refused() {
        let mut entries = good_entries();
        entries.extend((0..20).map(|i| file(&format!("./usr/share/doc/mcp-raspi/f{i}"), 0o644, "x")));
        let scratch = Scratch::new();
        let limits = Limits { max_entries: 30, ..Limits::default() };
        let (err, message) = scratch.refused(&Pkg::new(entries).bytes(), limits);
        assert!(matches!(err, DebError::TooManyEntries { limit: 30, .. }), "{message}");
        assert!(message.contains("data.tar.xz") && message.contains("30 entries"), "{message}");
    }

    #[test]
    fn a_payload_file_past_the_byte_limit_is_refused_before_it_is_written() {
        // 16 MiB of zeros, 16 times the limit, in a few kilobytes.
        let entry = "./usr/lib/mcp-raspi/share/bomb";
        let mut entries = good_entries();
        entries.insert(13, zeros(entry, 16 << 20));
        let pkg = Pkg::new(entries);
        let bytes = pkg.bytes();
        assert!(bytes.len() < 16 << 10, "the fixture is {} bytes", bytes.len());
        let scratch = Scratch::new();
        let limits = Limits { max_total_bytes: 1 << 20, ..Limits::default() };
        let (err, message) = scratch.refused(&bytes, limits);
        assert!(matches!(err, DebError::TooManyBytes { limit: 1_048_576, .. }), "{message}");
        assert!(message.contains(entry), "{message}");
    }

    #[test]
    fn a_bomb_outside_the_payload_is_stopped_at_the_byte_limit() {
        let mut entries = good_entries();
        entries.insert(9, zeros("./usr/share/doc/mcp-raspi/bomb", 16 << 20));
        let pkg = Pkg::new(entries);
        let scratch = Scratch::new();
        let limits = Limits { max_total_bytes: 1 << 20, ..Limits::default() };
        let (err, message) = scratch.refused(&pkg.bytes(), limits);
        assert!(matches!(err, DebError::MemberTooLarge { limit: 1_048_576, .. }), "{message}");
        assert!(message.contains("data.tar.xz"), "{message}");
    }

    #[test]
    fn a_package_without_the_server_or_with_a_non_executable_agent_is_refused() {
        let scratch = Scratch::new();
        let entries = good_entries().into_iter().filter(|e| e.path != SERVER).collect();
        let (err, message) = scratch.refused(&Pkg::new(entries).bytes(), Limits::default());
        assert!(matches!(err, DebError::MissingBinary { name: "mcp-raspi-server", .. }), "{message}");
        assert!(message.contains("bin/mcp-raspi-server is missing"), "{message}");

        let mut entries: Vec<E> = good_entries().into_iter().filter(|e| e.path != AGENT).collect();
        entries.push(file(AGENT, 0o644, "agent\n"));
        let (err, message) = scratch.refused(&Pkg::new(entries).bytes(), Limits::default());
        assert!(matches!(err, DebError::MissingBinary { name: "raspi-ops-agent", .. }), "{message}");
        assert!(message.contains("mode 644"), "{message}");
    }

    #[test]
    fn a_truncated_package_is_refused() {
        let scratch = Scratch::new();
        for data_z in [Z::Xz, Z::Gz, Z::Plain] {
            let bytes = Pkg { data_z, ..Pkg::new(good_entries()) }.bytes();
            for cut in [bytes.len() - 1, bytes.len() - 700, bytes.len() / 2, 70, 30] {
                let (err, message) = scratch.refused(&bytes[..cut], Limits::default());
                assert!(
                    matches!(err, DebError::Truncated { .. } | DebError::MissingMember { .. }),
                    "{data_z:?} cut at {cut}: {message}"
                );
            }
        }
    }

    #[test]
    fn a_corrupted_data_member_is_refused() {
        let scratch = Scratch::new();
        let members = Pkg { data_z: Z::Gz, ..Pkg::new(good_entries()) }.members();
        for at in [20, members[2].1.len() / 2, members[2].1.len() - 6] {
            let mut members = members.clone();
            members[2].1[at] ^= 0x55;
            let (err, message) = scratch.refused(&ar(&members), Limits::default());
            assert!(matches!(err, DebError::Corrupt { .. }), "byte {at}: {message}");
            assert!(message.contains("data.tar.gz"), "{message}");
        }
    }

    #[test]
    fn a_file_that_is_not_an_ar_archive_is_refused() {
        let scratch = Scratch::new();
        for bytes in [&b"PK\x03\x04 not a deb at all"[..], b"", b"!<arch"] {
            let (err, message) = scratch.refused(bytes, Limits::default());
            assert!(matches!(err, DebError::NotAnArchive { .. }), "{message}");
            assert!(message.contains("not a Debian package"), "{message}");
        }
    }

    #[test]
    fn an_unknown_compression_is_refused() {
        let scratch = Scratch::new();
        let mut members = Pkg::new(good_entries()).members();
        members[2].0 = "data.tar.zst".to_string();
        let (err, message) = scratch.refused(&ar(&members), Limits::default());
        assert!(matches!(err, DebError::UnknownCompression { .. }) && message.contains("data.tar.zst"), "{message}");
    }

    #[test]
    fn members_out_of_place_or_of_another_format_version_are_refused() {
        let scratch = Scratch::new();
        let good = Pkg::new(good_entries()).members();

        let mut swapped = good.clone();
        swapped.swap(1, 2);
        let (err, message) = scratch.refused(&ar(&swapped), Limits::default());
        assert!(matches!(err, DebError::UnexpectedMember { .. }) && message.contains("data.tar.xz"), "{message}");

        let (err, message) = scratch.refused(&ar(&good[..2]), Limits::default());
        assert!(matches!(err, DebError::MissingMember { expected: "data.tar" }), "{message}");

        let mut version = good.clone();
        version[0].1 = b"3.0\n".to_vec();
        let (err, message) = scratch.refused(&ar(&version), Limits::default());
        assert!(matches!(err, DebError::UnsupportedFormat { .. }) && message.contains("3.0"), "{message}");

        let mut header = ar(&good);
        header[8 + 58] = b'x';
        let (err, message) = scratch.refused(&header, Limits::default());
        assert!(matches!(err, DebError::BadMemberHeader { index: 1, .. }), "{message}");
    }

    #[test]
    fn an_xz_member_asking_for_a_large_dictionary_is_refused() {
        let scratch = Scratch::new();
        let mut members = Pkg::new(good_entries()).members();
        // The block header follows the 12-byte stream header; its LZMA2 filter (id 0x21, one
        // property byte) names the dictionary size. 30 asks for 128 MiB; the header's CRC32
        // is then recomputed so that only the size is wrong.
        let xz = &mut members[2].1;
        let header_len = (usize::from(xz[12]) + 1) * 4;
        let header = &mut xz[12..12 + header_len];
        let at = header.windows(2).position(|w| w == [0x21, 0x01]).unwrap() + 2;
        header[at] = 30;
        let mut crc = flate2::Crc::new();
        crc.update(&header[..header_len - 4]);
        header[header_len - 4..].copy_from_slice(&crc.sum().to_le_bytes());
        let (err, message) = scratch.refused(&ar(&members), Limits::default());
        assert!(matches!(err, DebError::TooMuchMemory { .. }), "{message}");
        assert!(message.contains("data.tar.xz"), "{message}");
    }

    #[test]
    fn an_existing_destination_is_refused_and_left_alone() {
        let scratch = Scratch::new();
        fs::create_dir(scratch.dest()).unwrap();
        fs::write(scratch.dest().join("keep"), "mine").unwrap();
        let err = scratch.extract(&Pkg::new(good_entries()).bytes(), Limits::default()).unwrap_err();
        assert!(matches!(err, DebError::DestinationExists { .. }), "{err}");
        assert_eq!(fs::read_to_string(scratch.dest().join("keep")).unwrap(), "mine");
    }

    #[test]
    fn the_package_built_by_cargo_deb_extracts_when_one_is_present() {
        let packages = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/packages");
        let found = fs::read_dir(&packages).into_iter().flatten().flatten().map(|e| e.path()).find(|p| {
            let name = p.file_name().and_then(OsStr::to_str).unwrap_or("");
            name.starts_with("mcp-raspi_") && name.ends_with("_amd64.deb")
        });
        let Some(deb) = found else {
            println!("no mcp-raspi_*_amd64.deb in {} (make deb builds one); skipped", packages.display());
            return;
        };
        let info = read_info(&deb).unwrap();
        assert_eq!((info.package.as_str(), info.architecture.as_str()), ("mcp-raspi", "amd64"));
        let scratch = Scratch::new();
        extract_payload(&deb, &scratch.dest(), &info, Limits::default()).unwrap();
        for name in ["mcp-raspi-server", "raspi-ops-agent", "mcp-raspi"] {
            let meta = fs::symlink_metadata(scratch.dest().join("bin").join(name)).unwrap();
            assert!(meta.is_file() && meta.len() > 0, "bin/{name}");
            assert_eq!(meta.permissions().mode() & 0o777, 0o755, "bin/{name}");
        }
        assert!(scratch.dest().join("share/config.example.yml").is_file());
    }
}
