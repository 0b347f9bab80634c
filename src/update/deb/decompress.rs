//! A member's contents unpacked: plain, gzip or xz as its name says, never past a limit in
//! bytes nor an xz dictionary past [`XZ_MEMORY_LIMIT_KIB`], and errors from beneath the
//! decompressors and the tar reader turned back into what went wrong.

use std::io::{self, Read};

use super::ar::{Member, Trouble};
use super::{DebError, XZ_MEMORY_LIMIT_KIB};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
    Xz,
}

/// How the member `name`, which should be `base` (`control.tar` or `data.tar`), is compressed.
pub(super) fn compression_of(name: &str, base: &'static str) -> Result<Compression, DebError> {
    match name.strip_prefix(base) {
        Some("") => Ok(Compression::None),
        Some(".gz") => Ok(Compression::Gzip),
        Some(".xz") => Ok(Compression::Xz),
        Some(rest) if rest.starts_with('.') => Err(DebError::UnknownCompression { member: name.to_string() }),
        _ => Err(DebError::UnexpectedMember { found: name.to_string(), expected: base }),
    }
}

pub(super) fn decompressor<'a>(member: Member<'a>, compression: Compression) -> Box<dyn Read + 'a> {
    match compression {
        Compression::None => Box::new(member),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(member)),
        // Concatenated streams are valid xz, so they are accepted.
        Compression::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(member, true, XZ_MEMORY_LIMIT_KIB)),
    }
}

/// Fails once more than `left` bytes have come through, so an unpacked stream is bounded
/// whatever its compressed size.
pub(crate) struct Bounded<'a, R> {
    pub(crate) inner: R,
    pub(crate) left: u64,
    pub(crate) trouble: &'a Trouble,
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
pub(super) fn unpack_err(member: &str, limit: u64, trouble: &Trouble, source: io::Error) -> DebError {
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
pub(super) fn drain(stream: &mut impl Read) -> io::Result<()> {
    io::copy(stream, &mut io::sink()).map(drop)
}
