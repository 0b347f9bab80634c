//! Tests of reading and extracting packages, on `.deb` files built here entry by entry,
//! hostile ones included.

#![allow(clippy::unwrap_used)]

use super::ar::{AR_HEADER_LEN, AR_MAGIC};
use super::*;
use std::ffi::OsStr;
use std::io::{Read, Write};
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
    E { path: path.to_string(), kind: tar::EntryType::Regular, mode, data: data.into(), link: String::new(), zeros: 0 }
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
        assert!(fs::symlink_metadata(self.dest()).is_err(), "{} was left behind after: {err}", self.dest().display());
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
    assert!(matches!(err, DebError::NotADirectory { .. }) && message.contains("./usr/lib/mcp-raspi\""), "{message}");
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

#[test]
fn what_a_package_may_unpack_to_grows_with_the_download_it_may_be() {
    assert_eq!(Limits::for_download(10 << 20), Limits::default(), "the default covers a 10 MB download");
    assert_eq!(Limits::for_download(20 << 20).max_total_bytes, 80 << 20);
    assert_eq!(Limits::for_download(128 << 20).max_total_bytes, 512 << 20);
    assert_eq!(Limits::for_download(u64::MAX).max_total_bytes, u64::MAX);
}
