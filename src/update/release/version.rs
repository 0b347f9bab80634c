//! Release names: [`validate_version`] says which strings may name a release directory,
//! and [`compare_versions`] orders them as dpkg orders package versions.

use std::cmp::Ordering;

use super::{ReleaseError, PARTIAL_SUFFIX};

/// Longest accepted version string, far above any real one.
const MAX_VERSION_LEN: usize = 128;

/// Checks that `version` can name a release directory: a package version (it starts with a
/// digit and holds only letters, digits and `.+~:-`), which can be neither a path nor a
/// hidden or temporary name.
pub fn validate_version(version: &str) -> Result<(), ReleaseError> {
    let invalid = |reason| Err(ReleaseError::InvalidVersion { version: version.to_string(), reason });
    if version.is_empty() {
        return invalid("it is empty");
    }
    if version.len() > MAX_VERSION_LEN {
        return invalid("it is longer than 128 characters");
    }
    if !version.starts_with(|c: char| c.is_ascii_digit()) {
        return invalid("a version starts with a digit");
    }
    if !version.chars().all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c)) {
        return invalid("only letters, digits and . + ~ : - are allowed");
    }
    if version.ends_with(PARTIAL_SUFFIX) {
        return invalid("names ending in .partial are releases being installed");
    }
    Ok(())
}

/// Orders two package versions as dpkg does: epoch, then upstream version, then revision,
/// each compared in runs of non-digits (letters before other characters, `~` before
/// everything, even the end) and numbers.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split_version(a);
    let (eb, ub, rb) = split_version(b);
    ea.cmp(&eb).then_with(|| compare_part(ua, ub)).then_with(|| compare_part(ra, rb))
}

fn split_version(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) => (e.parse().unwrap_or(0), rest),
        None => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

fn char_order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (ca, cb) = (char_order(a.get(i).copied()), char_order(b.get(j).copied()));
            if ca != cb {
                return ca.cmp(&cb);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn versions_that_could_be_paths_or_temporary_names_are_refused() {
        for bad in ["", "../1.0", "1.0/x", "current", ".1", "1 0", "1.0.partial", "1;rm", &"1".repeat(200)] {
            assert!(validate_version(bad).is_err(), "{bad:?} was accepted");
        }
        for good in ["0.1.0", "1:2.0~rc1-3", "0.1.0+pkgtest1", "10.2-1"] {
            validate_version(good).unwrap();
        }
    }

    #[test]
    fn versions_are_ordered_as_dpkg_orders_them() {
        use Ordering::*;
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.0.1", Less),
            ("1.10", "1.9", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0", "1.0+pkgtest1", Less),
            ("1.0-1", "1.0-2", Less),
            ("1.0-10", "1.0-9", Greater),
            ("1:0.1", "2.0", Greater),
            ("1.0a", "1.0+", Less),
            ("01.0", "1.0", Equal),
            ("1.0", "1.0-0", Equal),
        ];
        for (a, b, expected) in cases {
            assert_eq!(compare_versions(a, b), expected, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), expected.reverse(), "{b} vs {a}");
        }
    }
}
