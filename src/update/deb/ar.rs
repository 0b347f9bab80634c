//! The ar container of a `.deb`, read front to back one member at a time: [`Ar`] walks the
//! 60-byte member headers, and [`Member`] reads the current member's bytes, telling a file
//! cut short from a short member.
//!
//! A `.deb` needs only this much of ar (fixed headers, plain member names), which is less
//! code than adapting a general ar library to it.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::{DebError, COPY_BUFFER};

pub(super) const AR_MAGIC: &[u8; 8] = b"!<arch>\n";
pub(super) const AR_HEADER_LEN: usize = 60;

/// Problems noticed beneath the decompressors and the tar reader, which pass them up only as
/// opaque I/O errors: they are recorded here to be told apart from damaged data.
#[derive(Default)]
pub(crate) struct Trouble {
    pub(super) truncated: Cell<bool>,
    pub(crate) over_limit: Cell<bool>,
}

/// An ar archive read front to back, one member at a time.
pub(super) struct Ar {
    file: BufReader<File>,
    path: PathBuf,
    /// The current member's name, its bytes not yet read, and whether a padding byte follows
    /// it (members start at even offsets).
    name: String,
    pub(super) left: u64,
    pad: bool,
    index: usize,
}

impl Ar {
    pub(super) fn open(path: &Path) -> Result<Ar, DebError> {
        let read_err = |source| DebError::Read { path: path.to_path_buf(), source };
        let mut file = BufReader::with_capacity(COPY_BUFFER, File::open(path).map_err(read_err)?);
        let mut magic = [0u8; AR_MAGIC.len()];
        if read_full(&mut file, &mut magic).map_err(read_err)? < magic.len() || &magic != AR_MAGIC {
            return Err(DebError::NotAnArchive { path: path.to_path_buf() });
        }
        Ok(Ar { file, path: path.to_path_buf(), name: String::new(), left: 0, pad: false, index: 0 })
    }

    /// Moves to the next member and returns its name, or `None` at the end of the archive.
    pub(super) fn next_member(&mut self) -> Result<Option<String>, DebError> {
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
    pub(super) fn next_package_member(&mut self, expected: &'static str) -> Result<String, DebError> {
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
pub(super) struct Member<'a> {
    pub(super) ar: &'a mut Ar,
    pub(super) trouble: &'a Trouble,
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
