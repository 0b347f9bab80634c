//! Real mcp-raspi packages for the self-update tests, laid out as deb(5) says and as
//! cargo-deb writes them: an ar archive of `debian-binary`, `control.tar.gz` and
//! `data.tar.gz`, whose payload programs are small shell scripts printing their version, so
//! that a test can run the release `current` names and see which one it is.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

/// The programs of a release, under `./usr/lib/mcp-raspi/bin/`.
pub const PROGRAMS: [&str; 3] = ["mcp-raspi-server", "raspi-ops-agent", "mcp-raspi"];

/// What a package says it is, and how big it is.
#[derive(Debug, Clone)]
pub struct DebSpec {
    /// The control file's `Package:`.
    pub package: String,
    /// The control file's `Version:`, also what the programs print.
    pub version: String,
    /// The control file's `Architecture:`.
    pub architecture: String,
    /// Bytes of incompressible data shipped as `share/padding.bin`, for packages of a given
    /// size (a download cap, progress reports).
    pub padding: usize,
    /// When set, each program is a script that runs the program of that name in this
    /// directory (the real binaries of the build), instead of one that prints the version.
    pub exec_dir: Option<std::path::PathBuf>,
}

impl DebSpec {
    /// A package of mcp-raspi `version` for `architecture`.
    pub fn new(version: &str, architecture: &str) -> DebSpec {
        DebSpec {
            package: "mcp-raspi".to_string(),
            version: version.to_string(),
            architecture: architecture.to_string(),
            padding: 0,
            exec_dir: None,
        }
    }

    /// Programs that run the real ones found in `dir`.
    pub fn running(mut self, dir: &Path) -> DebSpec {
        self.exec_dir = Some(dir.to_path_buf());
        self
    }

    pub fn padded(mut self, bytes: usize) -> DebSpec {
        self.padding = bytes;
        self
    }

    /// The `.deb` file's bytes.
    pub fn build(&self) -> Vec<u8> {
        let control = format!(
            "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: tests <tests@example.invalid>\n\
             Description: MCP server for Raspberry Pis (test package)\n a fixture of the self-update tests\n",
            self.package, self.version, self.architecture
        );
        let control_tar = tar_of(&[Entry::dir("./"), Entry::file("./control", 0o644, control.into_bytes())]);

        let script = |program: &str| match &self.exec_dir {
            Some(dir) => format!("#!/bin/sh\nexec {} \"$@\"\n", dir.join(program).display()).into_bytes(),
            None => format!("#!/bin/sh\necho {}\n", self.version).into_bytes(),
        };
        let mut data = vec![
            Entry::dir("./"),
            Entry::dir("./usr/"),
            Entry::dir("./usr/lib/"),
            Entry::dir("./usr/lib/mcp-raspi/"),
            Entry::dir("./usr/lib/mcp-raspi/bin/"),
        ];
        for program in PROGRAMS {
            data.push(Entry::file(&format!("./usr/lib/mcp-raspi/bin/{program}"), 0o755, script(program)));
        }
        data.push(Entry::dir("./usr/lib/mcp-raspi/share/"));
        let example = format!("# mcp-raspi {} example configuration\nconfig_version: \"1.2\"\n", self.version);
        data.push(Entry::file("./usr/lib/mcp-raspi/share/config.example.yml", 0o644, example.into_bytes()));
        if self.padding > 0 {
            data.push(Entry::file("./usr/lib/mcp-raspi/share/padding.bin", 0o644, noise(self.padding)));
        }
        // Outside the payload: a package carries more than the release, which is skipped.
        data.push(Entry::dir("./usr/share/"));
        data.push(Entry::dir("./usr/share/doc/"));
        data.push(Entry::dir("./usr/share/doc/mcp-raspi/"));
        data.push(Entry::file("./usr/share/doc/mcp-raspi/copyright", 0o644, b"Apache-2.0\n".to_vec()));

        ar(&[
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar.gz", gzip(&control_tar)),
            ("data.tar.gz", gzip(&tar_of(&data))),
        ])
    }

    /// Writes the package to `path` and returns its size.
    pub fn write(&self, path: &Path) -> u64 {
        let bytes = self.build();
        std::fs::write(path, &bytes).unwrap();
        bytes.len() as u64
    }
}

struct Entry {
    path: String,
    kind: tar::EntryType,
    mode: u32,
    data: Vec<u8>,
}

impl Entry {
    fn dir(path: &str) -> Entry {
        Entry { path: path.to_string(), kind: tar::EntryType::Directory, mode: 0o755, data: Vec::new() }
    }

    fn file(path: &str, mode: u32, data: Vec<u8>) -> Entry {
        Entry { path: path.to_string(), kind: tar::EntryType::Regular, mode, data }
    }
}

/// A ustar archive whose names are written exactly as given (`./usr/...`, as dpkg-deb and
/// cargo-deb write them; the tar crate's path setter would drop the leading `./`).
fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        assert!(entry.path.len() <= 100, "{} is too long for a ustar name", entry.path);
        let mut header = tar::Header::new_ustar();
        header.as_old_mut().name[..entry.path.len()].copy_from_slice(entry.path.as_bytes());
        header.set_entry_type(entry.kind);
        header.set_mode(entry.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_767_225_600);
        header.set_size(entry.data.len() as u64);
        header.set_cksum();
        builder.append(&header, entry.data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// An ar archive: the magic line, then each member behind a 60-byte header of fixed-width
/// ASCII fields, padded to an even offset with a newline.
fn ar(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        let header = format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 1_767_225_600u64, 0, 0, "100644", data.len());
        assert_eq!(header.len(), 60);
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}

/// Bytes gzip cannot shrink (xorshift; the same for the same length).
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ len as u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}
