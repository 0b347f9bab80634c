//! Applying a bsdiff patch in bounded memory: the old data is read from a file at the
//! offsets the patch names, and the new data streams to a writer.
//!
//! The `bsdiff` crate writes the patches (on the publisher's machine, where memory is
//! plentiful), and its `patch` applies them, but only between two buffers in memory: for a
//! release, the size of two unpacked payloads, 40 MB today, in the ops agent of a device
//! that may have 512 MB in all. This is the same format read block by block instead, so
//! that a delta update costs the agent its buffers and the xz window, as a package does.
//!
//! The format, as the crate writes it: blocks until the end of the stream, each a control
//! of three little-endian 64-bit numbers (the length of the "mix" data, the length of the
//! literal data, and a signed seek in sign-and-magnitude form), then the mix data, each
//! byte added (wrapping) to the old data at the old position, then the literal data, copied
//! as it is; the old position then moves by the mix length plus the seek. The tests check
//! this reader against the crate's own on the same patches.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

const CHUNK: usize = 64 * 1024;
const CONTROL_LEN: usize = 24;

/// Old data read at offsets: a file on a device, a buffer where the publisher checks its
/// delta.
pub(super) trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|&s| s <= self.len());
        let source = start.and_then(|s| self.get(s..s.checked_add(buf.len())?));
        let source = source.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the end of the data"))?;
        buf.copy_from_slice(source);
        Ok(())
    }
}

/// Applies the patch read from `patch` to the first `old_len` bytes of `old`, writing the
/// result to `new`, never more than `max_new` bytes. Returns the bytes written. A patch
/// that reads outside the old data, ends inside a block, or makes more than `max_new` bytes
/// is an `InvalidData` or `UnexpectedEof` error.
pub(super) fn apply_streaming(
    old: &(impl ReadAt + ?Sized),
    old_len: u64,
    patch: &mut impl Read,
    new: &mut impl Write,
    max_new: u64,
) -> io::Result<u64> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut old_pos: u64 = 0;
    let mut written: u64 = 0;
    let mut patch_buf = vec![0u8; CHUNK];
    let mut old_buf = vec![0u8; CHUNK];
    loop {
        let Some(control) = read_control(patch)? else { return Ok(written) };
        let mix_len = control[0];
        let copy_len = control[1];
        let seek = sign_magnitude(control[2]);
        let end = written.checked_add(mix_len).and_then(|n| n.checked_add(copy_len));
        if end.is_none_or(|end| end > max_new) {
            return Err(invalid("the patch makes more data than its header announces"));
        }
        if old_pos.checked_add(mix_len).is_none_or(|end| end > old_len) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the patch reads past the end of the old data"));
        }
        let mut left = mix_len;
        while left > 0 {
            let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
            patch.read_exact(&mut patch_buf[..n])?;
            old.read_exact_at(&mut old_buf[..n], old_pos)?;
            for (p, o) in patch_buf[..n].iter_mut().zip(&old_buf[..n]) {
                *p = p.wrapping_add(*o);
            }
            new.write_all(&patch_buf[..n])?;
            old_pos += n as u64;
            left -= n as u64;
        }
        let copied = io::copy(&mut patch.by_ref().take(copy_len), new)?;
        if copied != copy_len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the patch ends inside a block"));
        }
        written = written + mix_len + copy_len;
        old_pos = i64::try_from(old_pos)
            .ok()
            .and_then(|p| p.checked_add(seek))
            .and_then(|p| u64::try_from(p).ok())
            .ok_or_else(|| invalid("the patch seeks before the start of the old data"))?;
    }
}

/// The next control, or `None` at the end of the patch (which may only end between blocks).
fn read_control(patch: &mut impl Read) -> io::Result<Option<[u64; 3]>> {
    let mut buf = [0u8; CONTROL_LEN];
    let mut filled = 0;
    while filled < CONTROL_LEN {
        match patch.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the patch ends inside a control")),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let word = |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    Ok(Some([word(0), word(1), word(2)]))
}

/// bsdiff's seek: the top bit is the sign, the rest the magnitude.
fn sign_magnitude(raw: u64) -> i64 {
    let magnitude = (raw & !(1 << 63)) as i64;
    if raw & (1 << 63) == 0 {
        magnitude
    } else {
        -magnitude
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn file_of(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let file = File::open(f.path()).unwrap();
        (f, file)
    }

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 7) as u8 // few symbols, so that diffs find matches
            })
            .collect()
    }

    /// The patch applied from a file and from a buffer, which must agree.
    fn streamed(old: &[u8], patch: &[u8], max_new: u64) -> io::Result<Vec<u8>> {
        let (_keep, file) = file_of(old);
        let mut out = Vec::new();
        let from_file = apply_streaming(&file, old.len() as u64, &mut &patch[..], &mut out, max_new);
        let mut again = Vec::new();
        let from_buffer = apply_streaming(old, old.len() as u64, &mut &patch[..], &mut again, max_new);
        assert_eq!(from_file.is_ok(), from_buffer.is_ok());
        assert_eq!(out, again);
        from_file.map(|_| out)
    }

    /// The blocks of a patch: (mix length, literal length, seek).
    fn blocks(mut patch: &[u8]) -> Vec<(u64, u64, i64)> {
        let mut out = Vec::new();
        while let Some(c) = read_control(&mut patch).unwrap() {
            patch = &patch[(c[0] + c[1]) as usize..];
            out.push((c[0], c[1], sign_magnitude(c[2])));
        }
        out
    }

    #[test]
    fn reordered_and_repeated_parts_make_blocks_that_seek_both_ways() {
        let old = bytes(60_000, 11);
        let (a, b, c) = (&old[..20_000], &old[20_000..40_000], &old[40_000..]);
        let mut new = [c, a, b, a].concat();
        new[30_000] ^= 0x40;
        let mut patch = Vec::new();
        bsdiff::diff(&old, &new, &mut patch).unwrap();
        let found = blocks(&patch);
        assert!(found.len() >= 3, "{found:?}");
        assert!(found[..found.len() - 1].iter().any(|b| b.2 < 0), "a backward seek before the last block: {found:?}");
        let mut by_crate = Vec::new();
        bsdiff::patch(&old, &mut &patch[..], &mut by_crate).unwrap();
        assert_eq!(by_crate, new);
        assert_eq!(streamed(&old, &patch, new.len() as u64).unwrap(), new);
    }

    #[test]
    fn it_makes_what_the_crate_makes_from_the_same_patch() {
        for (seed, old_len, new_len) in [(1, 0, 1000), (2, 5000, 0), (3, 200_000, 210_000), (4, 70_000, 69_000)] {
            let old = bytes(old_len, seed);
            let mut new = old.clone();
            new.truncate(new_len);
            new.resize(new_len, 3);
            for i in (0..new.len()).step_by(997) {
                new[i] = new[i].wrapping_add(1);
            }
            let mut patch = Vec::new();
            bsdiff::diff(&old, &new, &mut patch).unwrap();
            let mut by_crate = Vec::new();
            bsdiff::patch(&old, &mut &patch[..], &mut by_crate).unwrap();
            assert_eq!(by_crate, new);
            assert_eq!(streamed(&old, &patch, new.len() as u64).unwrap(), new, "seed {seed}");
        }
    }

    #[test]
    fn a_patch_that_reads_or_writes_out_of_bounds_is_an_error() {
        let old = bytes(1000, 5);
        let control =
            |mix: u64, copy: u64, seek: u64| [mix.to_le_bytes(), copy.to_le_bytes(), seek.to_le_bytes()].concat();
        let cases: Vec<(Vec<u8>, u64, &str)> = vec![
            (control(1001, 0, 0), 1 << 20, "past the end"),
            ([control(10, 0, (1 << 63) | 11), vec![0; 10]].concat(), 1 << 20, "before the start"),
            ([control(10, 0, 995), vec![0; 10], control(10, 0, 0)].concat(), 1 << 20, "past the end"),
            (control(u64::MAX, 2, 0), u64::MAX, "more data"),
            ([control(10, 10, 0), vec![0; 20]].concat(), 19, "more data"),
            ([control(10, 10, 0), vec![0; 15]].concat(), 1 << 20, "ends inside a block"),
            (control(10, 10, 0)[..20].to_vec(), 1 << 20, "ends inside a control"),
        ];
        for (patch, max_new, reason) in cases {
            let err = streamed(&old, &patch, max_new).unwrap_err();
            assert!(
                err.to_string().contains(reason)
                    || (reason == "ends inside a block" && err.kind() == io::ErrorKind::UnexpectedEof),
                "{reason}: {err}"
            );
        }
        assert_eq!(streamed(&old, &[], 0).unwrap(), Vec::<u8>::new());
    }
}
