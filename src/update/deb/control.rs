//! The package's identity: `debian-binary` checked, then the `control` file found in
//! `control.tar` and its `Package`, `Version` and `Architecture` fields parsed.

use std::io::Read;

use super::ar::{Ar, Member, Trouble};
use super::decompress::{compression_of, decompressor, drain, unpack_err, Bounded};
use super::{components, DebError, DebInfo};

/// The largest `debian-binary` accepted; the real one is four bytes.
const DEBIAN_BINARY_MAX: u64 = 64;
/// Bounds on `control.tar`: it holds a few small files (control, maintainer scripts,
/// conffiles), so these are generous and keep a bomb there as harmless as one in data.tar.
const CONTROL_TAR_MAX_BYTES: u64 = 1 << 20;
const CONTROL_TAR_MAX_ENTRIES: usize = 100;
/// The largest `control` file accepted; cargo-deb's is about one kilobyte.
const CONTROL_FILE_MAX: u64 = 64 << 10;

/// Checks `debian-binary`, then reads `control.tar` and parses its `control` file, leaving
/// `ar` at the end of that member.
pub(super) fn read_control(ar: &mut Ar, trouble: &Trouble) -> Result<DebInfo, DebError> {
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
