//! Delta updates (the experimental feature `updates.delta`): downloading what changed
//! between the installed release and the next one instead of the whole package.
//!
//! A delta turns the payload of one release into the payload of the next. Both are taken
//! in their canonical form (see `canonical`): one uncompressed tar of `bin/` and `share/`
//! that the publisher builds from the two packages and a device builds from the release it
//! has installed under `releases/<from>`. The delta is a bsdiff patch between those two
//! tars, compressed with xz, behind a header that names the releases and the digests of
//! both tars.
//!
//! # Trust
//!
//! A device believes a delta only through the release key. The signed delta index,
//! `deltas.json` next to the manifest (see [`index`]), gives each delta's size and SHA-256
//! and the SHA-256 of the package it stands for, which must be the one the manifest gives
//! for this architecture (so a delta is bound to one build of its release, as the package
//! is); the file is checked against them before it is opened, exactly as a package is
//! against the manifest. Its header is then believed: it must name this package, this
//! architecture, the installed release and the release the manifest offers. The tar rebuilt from the
//! installed release must have the base digest (a release changed on disk, or built
//! differently, is not patched), and the patched tar must have the target digest before it
//! goes, like a package's `data.tar`, through the extraction with all of its defences.
//!
//! A delta that cannot be used (none published for the installed release, a base that
//! differs, a damaged download) is never an error of the update: the update downloads the
//! whole package instead.
//!
//! # The file
//!
//! ```text
//! mcp-raspi-delta 1\n
//! {"name":"mcp-raspi","architecture":"arm64","from":"0.1.0","to":"0.2.0","package_sha256":"…",
//!  "base_size":…,"base_sha256":"…","target_size":…,"target_sha256":"…"}\n
//! <xz stream of the bsdiff patch from the base tar to the target tar>
//! ```
//!
//! The header is one line of JSON of at most [`MAX_HEADER_BYTES`]; unknown fields are
//! refused. The patch is the format of the `bsdiff` crate (bsdiff 4 control, diff and
//! extra data interleaved, uncompressed), which is why it is compressed here.
//!
//! # Costs
//!
//! Applying streams (see `patch`): it writes the installed release's canonical tar and the
//! new one to the staging directory (about 20 MB each today, removed at the end) and holds
//! buffers and the xz window of the patch in memory. Building runs bsdiff's suffix sort
//! over the base, whose arrays alone take sixteen times its size (376 MB for a 19 MB
//! payload in BENCHMARKS.md): that is the publisher's machine.

mod canonical;
pub mod index;
mod patch;

#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use self::canonical::{payload_tar, Bounds, Tree};
use super::deb::{Bounded, Limits, Trouble, XZ_MEMORY_LIMIT_KIB};
use super::manifest::PACKAGE_NAME;
use crate::base::{hex, Hashing};

pub use self::index::{DeltaEntry, DeltaIndex, INDEX_FILE};

/// The first line of every delta file.
pub const MAGIC: &[u8] = b"mcp-raspi-delta 1\n";
/// The longest header line accepted, its newline included.
pub const MAX_HEADER_BYTES: usize = 4096;
/// The xz preset deltas are written with: -6, with its 8 MiB dictionary, which the
/// devices' decoder limit ([`XZ_MEMORY_LIMIT_KIB`]) allows.
const XZ_PRESET: u32 = 6;

/// The header of a delta file: what it turns into what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaHeader {
    pub name: String,
    pub architecture: String,
    /// The release the delta applies to.
    pub from: String,
    /// The release it makes.
    pub to: String,
    /// The SHA-256 of the package of `to` the delta was built from (what its manifest gives),
    /// which the index repeats, so that a delta is bound to one build of its release.
    pub package_sha256: String,
    pub base_size: u64,
    pub base_sha256: String,
    pub target_size: u64,
    pub target_sha256: String,
}

/// The releases a delta must connect, as the device knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected<'a> {
    pub architecture: &'a str,
    pub from: &'a str,
    pub to: &'a str,
}

/// Why a delta was not built or not used.
#[derive(Debug)]
pub enum DeltaError {
    /// Reading or writing a file failed.
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// The file is not a delta, or its header or patch is malformed.
    Format { path: PathBuf, reason: String },
    /// The delta connects other releases or another architecture than the ones at hand.
    Mismatch { field: &'static str, expected: String, found: String },
    /// A payload could not be read into its canonical tar.
    Payload { path: PathBuf, reason: String },
    /// The installed release is not the base the delta was built from.
    BaseDiffers { release: PathBuf, expected: String, found: String },
    /// The patched payload is not the one the delta promises.
    TargetDiffers { expected: String, found: String },
}

impl fmt::Display for DeltaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeltaError::Io { action, path, source } => write!(f, "cannot {action} {}: {source}", path.display()),
            DeltaError::Format { path, reason } => write!(f, "{} is not a usable delta: {reason}", path.display()),
            DeltaError::Mismatch { field, expected, found } => {
                write!(f, "the delta is for {field} {found}, not {expected}")
            }
            DeltaError::Payload { path, reason } => {
                write!(f, "cannot read the payload in {}: {reason}", path.display())
            }
            DeltaError::BaseDiffers { release, expected, found } => write!(
                f,
                "the release in {} is not the one the delta was built from (its payload has SHA-256 {found}, \
                 the delta's base {expected}): it was changed on disk or built differently",
                release.display()
            ),
            DeltaError::TargetDiffers { expected, found } => write!(
                f,
                "the patched payload has SHA-256 {found}, not {expected} as the delta says; the delta is damaged"
            ),
        }
    }
}

impl std::error::Error for DeltaError {}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DeltaError + 'a {
    move |source| DeltaError::Io { action, path: path.to_path_buf(), source }
}

/// The file name a delta has in a repository's pool and in the downloads directory.
pub fn delta_file_name(from: &str, to: &str, architecture: &str) -> String {
    format!("{PACKAGE_NAME}_{from}_to_{to}_{architecture}.delta")
}

fn bounds(limits: Limits) -> Bounds {
    Bounds { max_bytes: limits.max_total_bytes, max_entries: limits.max_entries }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Builds the delta from the payload in `old_payload` (release `from`) to the one in
/// `new_payload` (release `to`, whose package has SHA-256 `package_sha256`), both extracted
/// from their packages; returns its header and the whole file. The delta is applied once,
/// as a device would, before it is returned: a patch devices would refuse is never written.
pub fn build(
    old_payload: &Path,
    new_payload: &Path,
    architecture: &str,
    (from, to): (&str, &str),
    package_sha256: &[u8; 32],
    limits: Limits,
) -> Result<(DeltaHeader, Vec<u8>), DeltaError> {
    let read = |dir: &Path| {
        let payload = |reason| DeltaError::Payload { path: dir.to_path_buf(), reason };
        Tree::at(dir).and_then(|tree| payload_tar(&tree, bounds(limits))).map_err(payload)
    };
    let (base, target) = (read(old_payload)?, read(new_payload)?);
    let header = DeltaHeader {
        name: PACKAGE_NAME.to_string(),
        architecture: architecture.to_string(),
        from: from.to_string(),
        to: to.to_string(),
        package_sha256: hex(package_sha256),
        base_size: base.len() as u64,
        base_sha256: sha256_hex(&base),
        target_size: target.len() as u64,
        target_sha256: sha256_hex(&target),
    };
    let mut patch = Vec::new();
    bsdiff::diff(&base, &target, &mut patch).map_err(io_err("compute the patch to", new_payload))?;
    let mut file = MAGIC.to_vec();
    serde_json::to_writer(&mut file, &header).map_err(|e| io_err("write the header of", new_payload)(e.into()))?;
    file.push(b'\n');
    let options = lzma_rust2::XzOptions::with_preset(XZ_PRESET);
    let mut xz = lzma_rust2::XzWriter::new(file, options).map_err(io_err("compress the patch to", new_payload))?;
    xz.write_all(&patch).map_err(io_err("compress the patch to", new_payload))?;
    let file = xz.finish().map_err(io_err("compress the patch to", new_payload))?;

    let shown = PathBuf::from(delta_file_name(from, to, architecture));
    let mut reader = &file[..];
    read_header(&mut reader, &shown)?;
    let mut rebuilt = Hashing::new(io::sink());
    patch_stream(&base[..], &header, reader, &mut rebuilt, &shown)?;
    let (len, found) = finish(rebuilt).map_err(io_err("check", &shown))?;
    if len != header.target_size || found != header.target_sha256 {
        return Err(DeltaError::TargetDiffers { expected: header.target_sha256, found });
    }
    Ok((header, file))
}

/// Applies the xz-compressed patch in `compressed` (the rest of the delta `shown` after its
/// header) to `base`, writing the result to `out`, within the bounds a device applies.
fn patch_stream(
    base: &(impl patch::ReadAt + ?Sized),
    header: &DeltaHeader,
    compressed: impl Read,
    out: &mut impl Write,
    shown: &Path,
) -> Result<u64, DeltaError> {
    // The patch's data is as long as the target (bsdiff's mix and literal data add up to
    // it) plus 24 bytes of control per block; a stream longer than twice the target is not
    // a patch to it, and stopping there bounds the work a hostile one can cause.
    let patch_limit = header.target_size.saturating_mul(2).saturating_add(1 << 20);
    let xz = lzma_rust2::XzReader::new_mem_limit(compressed, true, XZ_MEMORY_LIMIT_KIB);
    let trouble = Trouble::default();
    let mut patch = Bounded { inner: xz, left: patch_limit, trouble: &trouble };
    patch::apply_streaming(base, header.base_size, &mut patch, out, header.target_size).map_err(|e| {
        let reason = if trouble.over_limit.get() {
            format!("its patch unpacks past {patch_limit} bytes")
        } else {
            format!("its patch is damaged: {e}")
        };
        DeltaError::Format { path: shown.to_path_buf(), reason }
    })
}

/// Reads the header of the delta in `reader` (the file `path`), leaving the reader at the
/// start of the compressed patch.
pub(crate) fn read_header(reader: &mut impl BufRead, path: &Path) -> Result<DeltaHeader, DeltaError> {
    let format = |reason: String| DeltaError::Format { path: path.to_path_buf(), reason };
    let mut magic = vec![0u8; MAGIC.len()];
    reader.read_exact(&mut magic).map_err(|_| format("it is shorter than a delta's first line".into()))?;
    if magic != MAGIC {
        return Err(format(format!("it does not begin with {:?}", String::from_utf8_lossy(MAGIC).trim_end())));
    }
    let mut line = Vec::new();
    reader.take(MAX_HEADER_BYTES as u64).read_until(b'\n', &mut line).map_err(io_err("read", path))?;
    if line.last() != Some(&b'\n') {
        return Err(format(format!("its header is not a line of at most {MAX_HEADER_BYTES} bytes")));
    }
    let header: DeltaHeader =
        serde_json::from_slice(&line).map_err(|e| format(format!("its header is not valid: {e}")))?;
    if header.name != PACKAGE_NAME {
        return Err(DeltaError::Mismatch { field: "package", expected: PACKAGE_NAME.into(), found: header.name });
    }
    Ok(header)
}

/// The header of the delta file at `path`, for the publisher's index.
pub fn header_of(path: &Path) -> Result<DeltaHeader, DeltaError> {
    let file = File::open(path).map_err(io_err("read", path))?;
    read_header(&mut BufReader::new(file), path)
}

/// Rebuilds the canonical tar of release `expected.to` from release `expected.from` under
/// `install_root` and the delta at `delta`, whose size and digest the caller has checked
/// against the signed index, and writes it to `out_tar` (created afresh, 0600) for the
/// package extraction to unpack. Returns the tar's size and the open file.
///
/// The installed release's own canonical tar is written beside `out_tar` (as
/// `<out_tar>.base`) and read back, through the descriptor it was written with, at the
/// offsets the patch names, and the new tar is written as it is made: memory holds buffers
/// and the xz window, not payloads. Both files are removed on failure, the base one in any
/// case.
pub fn apply(
    install_root: &Path,
    delta: &Path,
    expected: &Expected,
    out_tar: &Path,
    limits: Limits,
) -> Result<(u64, File), DeltaError> {
    let mut base_tar = out_tar.as_os_str().to_os_string();
    base_tar.push(".base");
    let base_tar = PathBuf::from(base_tar);
    let result = apply_with(install_root, delta, expected, out_tar, &base_tar, limits);
    let _ = fs::remove_file(&base_tar);
    if result.is_err() {
        let _ = fs::remove_file(out_tar);
    }
    result
}

fn apply_with(
    install_root: &Path,
    delta: &Path,
    expected: &Expected,
    out_tar: &Path,
    base_tar: &Path,
    limits: Limits,
) -> Result<(u64, File), DeltaError> {
    let file = File::open(delta).map_err(io_err("read", delta))?;
    let mut reader = BufReader::new(file);
    let header = read_header(&mut reader, delta)?;
    for (field, want, found) in [
        ("architecture", expected.architecture, &header.architecture),
        ("the installed release", expected.from, &header.from),
        ("the release offered", expected.to, &header.to),
    ] {
        if want != found {
            return Err(DeltaError::Mismatch { field, expected: want.to_string(), found: found.clone() });
        }
    }
    if header.target_size > limits.max_total_bytes || header.base_size > limits.max_total_bytes {
        return Err(DeltaError::Format {
            path: delta.to_path_buf(),
            reason: format!(
                "its payloads are larger than the {} bytes a package may unpack to",
                limits.max_total_bytes
            ),
        });
    }

    let tree = Tree::release(install_root, expected.from)
        .map_err(|reason| DeltaError::Payload { path: install_root.join("releases").join(expected.from), reason })?;
    let base = create_new(base_tar)?;
    let written = canonical::write_payload_tar(&tree, bounds(limits), Hashing::new(BufWriter::new(&base)))
        .map_err(|reason| DeltaError::Payload { path: tree.shown().to_path_buf(), reason })?;
    let (base_len, found) = finish(written).map_err(io_err("write", base_tar))?;
    if base_len != header.base_size || found != header.base_sha256 {
        let release = tree.shown().to_path_buf();
        return Err(DeltaError::BaseDiffers { release, expected: header.base_sha256, found });
    }

    let target = create_new(out_tar)?;
    let mut writer = Hashing::new(BufWriter::new(&target));
    patch_stream(&base, &header, reader, &mut writer, delta)?;
    let (len, found) = finish(writer).map_err(io_err("write", out_tar))?;
    if len != header.target_size || found != header.target_sha256 {
        return Err(DeltaError::TargetDiffers { expected: header.target_sha256, found });
    }
    target.sync_all().map_err(io_err("sync", out_tar))?;
    Ok((len, target))
}

/// `path` created afresh, never through a symlink, for writing and reading back.
fn create_new(path: &Path) -> Result<File, DeltaError> {
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err("create", path))
}

/// Flushes `writer` and returns the length and the SHA-256 (hex) of what went through it.
fn finish<W: Write>(mut writer: Hashing<W>) -> io::Result<(u64, String)> {
    writer.flush()?;
    Ok((writer.count, hex(&writer.hasher.finalize())))
}
