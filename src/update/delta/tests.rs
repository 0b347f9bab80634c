#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use semver::Version;

use super::*;
use crate::base::hex;
use crate::update::deb;
use crate::update::manifest::{sign, Keyring, SecretKey};

/// Bytes that compress poorly and differ everywhere, like a program.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn write(path: &Path, bytes: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A payload as a package's extraction leaves it; `edit` says what differs from the base.
fn payload(dir: &Path, version: &str, edit: bool) {
    let mut server = noise(200_000, 1);
    if edit {
        // A change in the middle and some growth, as a code change makes.
        server[100_000..100_040].copy_from_slice(&[0xAB; 40]);
        server.extend_from_slice(&noise(5_000, 9));
    }
    write(&dir.join("bin/mcp-raspi-server"), &server, 0o755);
    write(&dir.join("bin/raspi-ops-agent"), &noise(120_000, 2), 0o755);
    write(&dir.join("share/config.example.yml"), format!("# {version}\nconfig_version: \"1.2\"\n").as_bytes(), 0o644);
    if edit {
        write(&dir.join("share/doc/NEWS"), b"delta updates\n", 0o644);
        std::os::unix::fs::symlink("../bin/mcp-raspi-server", dir.join("share/server")).unwrap();
    }
}

struct Case {
    _dir: tempfile::TempDir,
    old: PathBuf,
    new: PathBuf,
    /// The install root, and the release in it (the old payload as the release installer
    /// left it).
    root: PathBuf,
    release: PathBuf,
    delta: PathBuf,
    tar: PathBuf,
}

const PACKAGE: [u8; 32] = [9; 32];

const EXPECTED: Expected<'static> = Expected { architecture: "arm64", from: "0.1.0", to: "0.2.0" };

fn case() -> Case {
    let dir = tempfile::tempdir().unwrap();
    let (old, new, release) = (dir.path().join("old"), dir.path().join("new"), dir.path().join("releases/0.1.0"));
    payload(&old, "0.1.0", false);
    payload(&new, "0.2.0", true);
    payload(&release, "0.1.0", false);
    let (header, bytes) = build(&old, &new, "arm64", ("0.1.0", "0.2.0"), &PACKAGE, Limits::default()).unwrap();
    assert_eq!((header.from.as_str(), header.to.as_str()), ("0.1.0", "0.2.0"));
    assert_eq!(header.package_sha256, hex(&PACKAGE));
    let delta = dir.path().join(delta_file_name("0.1.0", "0.2.0", "arm64"));
    fs::write(&delta, bytes).unwrap();
    let tar = dir.path().join("0.2.0.payload.tar");
    Case { old, new, root: dir.path().to_path_buf(), release, delta, tar, _dir: dir }
}

/// Every path under `dir` with its kind, mode (files) and contents or target.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.push(format!("{rel}/"));
                stack.push(path);
            } else if meta.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", fs::read_link(&path).unwrap().display()));
            } else {
                let mode = meta.permissions().mode() & 0o7777;
                out.push(format!("{rel} {mode:o} sha256={}", sha256_hex(&fs::read(&path).unwrap())));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_delta_rebuilds_the_new_payload_from_the_installed_release_and_is_much_smaller() {
    let c = case();
    let (unpacked, tar) = apply(&c.root, &c.delta, &EXPECTED, &c.tar, Limits::default()).unwrap();
    assert_eq!(unpacked, fs::metadata(&c.tar).unwrap().len());
    let out = c.tar.with_extension("dir");
    deb::extract_tar_payload(tar, &out, Limits::default(), &mut |_| {}).unwrap();
    assert_eq!(listing(&out), listing(&c.new), "the same files, contents and modes");
    let delta = fs::metadata(&c.delta).unwrap().len();
    assert!(delta < 30_000, "the delta of a small change to 330 kB of programs is {delta} bytes");
    assert_eq!(fs::metadata(&c.tar).unwrap().permissions().mode() & 0o777, 0o600);
    let left: Vec<_> = fs::read_dir(c.tar.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().ends_with(".base")), "the base tar is removed: {left:?}");
}

#[test]
fn a_release_whose_files_or_modes_differ_from_the_base_is_not_patched() {
    let c = case();
    fs::set_permissions(c.release.join("bin/raspi-ops-agent"), fs::Permissions::from_mode(0o750)).unwrap();
    let err = apply(&c.root, &c.delta, &EXPECTED, &c.tar, Limits::default()).unwrap_err();
    assert!(matches!(err, DeltaError::BaseDiffers { .. }), "{err}");
}

#[test]
fn symlinks_in_the_installed_release_are_read_as_links_never_followed() {
    let c = case();
    // The release itself made a link to another tree: refused, not walked.
    let elsewhere = c.root.join("elsewhere");
    fs::rename(&c.release, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &c.release).unwrap();
    let err = apply(&c.root, &c.delta, &EXPECTED, &c.tar, Limits::default()).unwrap_err();
    assert!(matches!(err, DeltaError::Payload { .. }), "{err}");
    fs::remove_file(&c.release).unwrap();
    fs::rename(&elsewhere, &c.release).unwrap();
    // A file swapped for a link to a secret: the link is what the tar holds, so the base
    // differs; nothing of the target is read.
    let secret = c.root.join("secret");
    fs::write(&secret, "not for the tar").unwrap();
    fs::remove_file(c.release.join("share/config.example.yml")).unwrap();
    std::os::unix::fs::symlink(&secret, c.release.join("share/config.example.yml")).unwrap();
    let bounds = Bounds { max_bytes: 1 << 30, max_entries: 1000 };
    let tar = canonical::payload_tar(&canonical::Tree::release(&c.root, "0.1.0").unwrap(), bounds).unwrap();
    assert!(!tar.windows(15).any(|w| w == b"not for the tar"));
    let err = apply(&c.root, &c.delta, &EXPECTED, &c.tar, Limits::default()).unwrap_err();
    assert!(matches!(err, DeltaError::BaseDiffers { .. }), "{err}");
    // A FIFO where a file was is refused, not opened.
    fs::remove_file(c.release.join("share/config.example.yml")).unwrap();
    nix::unistd::mkfifo(&c.release.join("share/config.example.yml"), nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap();
    let err = apply(&c.root, &c.delta, &EXPECTED, &c.tar, Limits::default()).unwrap_err();
    assert!(err.to_string().contains("neither a directory, a file nor a symlink"), "{err}");
}

#[test]
fn a_release_that_differs_from_the_base_is_not_patched() {
    let c = case();
    write(&c.release.join("bin/raspi-ops-agent"), &noise(120_000, 3), 0o755);
    let err = apply(&c.root, &c.delta, &EXPECTED, &c.tar, Limits::default()).unwrap_err();
    assert!(matches!(err, DeltaError::BaseDiffers { .. }), "{err}");
    assert!(err.to_string().contains("not the one the delta was built from"), "{err}");
    assert!(!c.tar.exists());
}

#[test]
fn a_delta_for_other_releases_or_another_architecture_is_refused() {
    let c = case();
    for (expected, field) in [
        (Expected { from: "0.0.9", ..EXPECTED }, "the installed release"),
        (Expected { to: "0.3.0", ..EXPECTED }, "the release offered"),
        (Expected { architecture: "armhf", ..EXPECTED }, "architecture"),
    ] {
        let err = apply(&c.root, &c.delta, &expected, &c.tar, Limits::default()).unwrap_err();
        assert!(matches!(err, DeltaError::Mismatch { field: f, .. } if f == field), "{err}");
    }
    assert!(!c.tar.exists());
}

#[test]
fn a_damaged_or_foreign_file_is_an_error_never_a_panic() {
    let c = case();
    let good = fs::read(&c.delta).unwrap();
    let header_end = good.iter().skip(MAGIC.len()).position(|&b| b == b'\n').unwrap() + MAGIC.len() + 1;
    let mut cases: Vec<(Vec<u8>, &str)> = vec![
        (b"!<arch>\n".to_vec(), "shorter than"),
        (b"PK\x03\x04 not a delta at all, but long enough".to_vec(), "does not begin with"),
        ([MAGIC, &[b'x'; MAX_HEADER_BYTES + 10]].concat(), "header is not a line"),
        ([MAGIC, b"{\"name\":\"mcp-raspi\"}\n"].concat(), "header is not valid"),
        (good[..header_end + 40].to_vec(), "patch is damaged"),
    ];
    let other_package = String::from_utf8_lossy(&good).replacen("\"name\":\"mcp-raspi\"", "\"name\":\"other\"", 1);
    cases.push((other_package.into_bytes(), "package other"));
    for at in [header_end + 60, good.len() / 2, good.len() - 3] {
        let mut damaged = good.clone();
        damaged[at] ^= 0x55;
        cases.push((damaged, ""));
    }
    for (bytes, reason) in cases {
        fs::write(&c.delta, &bytes).unwrap();
        let err = apply(&c.root, &c.delta, &EXPECTED, &c.tar, Limits::default()).unwrap_err();
        assert!(err.to_string().contains(reason), "{reason}: {err}");
        assert!(!c.tar.exists());
        assert!(!c.tar.with_extension("tar.base").exists());
    }
}

#[test]
fn payloads_larger_than_the_limits_are_refused_before_patching() {
    let c = case();
    let small = Limits { max_total_bytes: 100_000, max_entries: 100 };
    let err = apply(&c.root, &c.delta, &EXPECTED, &c.tar, small).unwrap_err();
    assert!(err.to_string().contains("larger than the 100000 bytes"), "{err}");
    let few = Limits { max_total_bytes: 64 << 20, max_entries: 3 };
    let err = build(&c.old, &c.new, "arm64", ("0.1.0", "0.2.0"), &PACKAGE, few).unwrap_err();
    assert!(err.to_string().contains("more than 3 entries"), "{err}");
}

#[test]
fn the_canonical_tar_depends_on_the_files_alone() {
    let c = case();
    let bounds = Bounds { max_bytes: 1 << 30, max_entries: 1000 };
    let tar = |dir: &Path| canonical::payload_tar(&canonical::Tree::at(dir).unwrap(), bounds);
    let a = tar(&c.old).unwrap();
    assert_eq!(a, tar(&c.release).unwrap());
    let release = canonical::Tree::release(&c.root, "0.1.0").unwrap();
    assert_eq!(a, canonical::payload_tar(&release, bounds).unwrap());
    fs::write(c.release.join("share/config.example.yml"), "changed\n").unwrap();
    assert_ne!(a, tar(&c.release).unwrap());
    let err = tar(c.old.parent().unwrap()).unwrap_err();
    assert!(err.contains("holds no payload"), "{err}");
}

fn entry(architecture: &str, from: &str) -> DeltaEntry {
    DeltaEntry {
        architecture: architecture.into(),
        from: Version::parse(from).unwrap(),
        package_sha256: PACKAGE,
        url: format!("../pool/{}", delta_file_name(from, "0.2.0", architecture)),
        size: 4096,
        sha256: [7; 32],
    }
}

#[test]
fn the_index_round_trips_signed_and_finds_the_delta_of_this_device() {
    let index =
        DeltaIndex { version: Version::new(0, 2, 0), deltas: vec![entry("arm64", "0.1.0"), entry("armhf", "0.1.0")] };
    let bytes = index.to_json_bytes().unwrap();
    let secret = SecretKey::generate().unwrap();
    let keyring = Keyring::from_keys([secret.public_key()]);
    let sig = sign(&bytes, &secret);
    let verified = DeltaIndex::verify(&bytes, &sig, &keyring).unwrap();
    assert_eq!(verified, index);
    assert_eq!(verified.find("arm64", &Version::new(0, 1, 0)), Some(&index.deltas[0]));
    assert_eq!(verified.find("arm64", &Version::new(0, 1, 1)), None);
    assert_eq!(verified.find("amd64", &Version::new(0, 1, 0)), None);

    let mut tampered = bytes.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 1;
    let err = DeltaIndex::verify(&tampered, &sig, &keyring).unwrap_err();
    assert!(err.contains("deltas.json.sig"), "{err}");
    let stranger = Keyring::from_keys([SecretKey::generate().unwrap().public_key()]);
    assert!(DeltaIndex::verify(&bytes, &sig, &stranger).is_err());
}

#[test]
fn an_index_devices_would_misread_is_refused() {
    let good = DeltaIndex { version: Version::new(0, 2, 0), deltas: vec![entry("arm64", "0.1.0")] };
    let text = String::from_utf8(good.to_json_bytes().unwrap()).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let edited = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = value.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (edited(&|v| v["extra"] = 1.into()), "unknown field"),
        (edited(&|v| v["format"] = "mcp-raspi deltas 2".into()), "its format"),
        (edited(&|v| v.as_object_mut().unwrap().remove("format").map(|_| ()).unwrap()), "format"),
        (edited(&|v| v["deltas"][0]["package_sha256"] = "00".into()), "package_sha256"),
        (edited(&|v| v["deltas"][0]["mirror"] = "x".into()), "unknown field"),
        (edited(&|v| v["name"] = "other".into()), "not mcp-raspi"),
        (edited(&|v| v["version"] = "0.2".into()), "semantic version"),
        (edited(&|v| v["deltas"][0]["from"] = "0.2.0".into()), "not older than"),
        (edited(&|v| v["deltas"][0]["architecture"] = "ARM 64".into()), "Debian architecture"),
        (edited(&|v| v["deltas"][0]["size"] = 0.into()), "size 0"),
        (edited(&|v| v["deltas"][0]["sha256"] = "ab".into()), "sha256"),
        (edited(&|v| v["deltas"][0]["url"] = "a b.delta".into()), "url"),
        (
            edited(&|v| {
                let first = v["deltas"][0].clone();
                v["deltas"].as_array_mut().unwrap().push(first);
            }),
            "listed twice",
        ),
    ];
    for (bytes, reason) in cases {
        let err = DeltaIndex::from_json_bytes(&bytes).unwrap_err();
        assert!(err.contains(reason), "{reason}: {err}");
    }
    let bad = DeltaIndex { version: Version::new(0, 1, 0), deltas: vec![entry("arm64", "0.1.0")] };
    assert!(bad.to_json_bytes().is_err(), "what devices refuse is not written");
}
