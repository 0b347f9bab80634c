//! The publisher's side: [`build_manifest`] lists a release's packages with their sizes and
//! SHA-256 digests, computed by [`file_digest`], the same numbers a device checks a download
//! against.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use semver::Version;
use sha2::{Digest as _, Sha256};

use super::{io_err, Artifact, Manifest, ManifestError, PACKAGE_NAME};

/// A package to list in a manifest being built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedDeb {
    /// Debian architecture name.
    pub architecture: String,
    /// The URL devices will fetch it from, absolute or relative to the manifest's URL.
    pub url: String,
    /// The package file, read for its size and SHA-256.
    pub path: PathBuf,
}

/// Builds the manifest of a release of [`PACKAGE_NAME`] from its package files.
pub fn build_manifest(
    version: Version,
    channel: &str,
    released_at: SystemTime,
    expires_at: SystemTime,
    min_upgrade_from: Option<Version>,
    debs: &[PublishedDeb],
) -> Result<Manifest, ManifestError> {
    let mut artifacts = BTreeMap::new();
    for deb in debs {
        if artifacts.contains_key(&deb.architecture) {
            return Err(ManifestError::InvalidManifest {
                reason: format!("two packages are given for architecture {}", deb.architecture),
            });
        }
        let digest = file_digest(&deb.path)?;
        artifacts.insert(
            deb.architecture.clone(),
            Artifact { url: deb.url.clone(), size: digest.size, sha256: digest.sha256 },
        );
    }
    let manifest = Manifest {
        name: PACKAGE_NAME.to_string(),
        version,
        channel: channel.to_string(),
        released_at,
        expires_at,
        min_upgrade_from,
        artifacts,
    };
    manifest.validate().map_err(|reason| ManifestError::InvalidManifest { reason })?;
    Ok(manifest)
}

/// The size and SHA-256 of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDigest {
    pub size: u64,
    pub sha256: [u8; 32],
}

/// Reads a file through once, in pieces, for its size and SHA-256; the same numbers a
/// device compares a downloaded package with.
pub fn file_digest(path: &Path) -> Result<FileDigest, ManifestError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buffer[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(ManifestError::Io { action: "read", path: path.to_path_buf(), source }),
        }
    }
    Ok(FileDigest { size, sha256: hasher.finalize().into() })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::update::manifest::fixtures::{at, policy, signed, v};
    use crate::update::manifest::{check, hex, verify};
    use std::fs;

    #[test]
    fn a_built_manifest_lists_each_packages_size_and_sha256_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let mut debs = Vec::new();
        for (arch, len) in [("amd64", 200_000usize), ("arm64", 5)] {
            let path = dir.path().join(format!("mcp-raspi_0.2.0_{arch}.deb"));
            fs::write(&path, vec![b'x'; len]).unwrap();
            debs.push(PublishedDeb {
                architecture: arch.to_string(),
                url: format!("../pool/mcp-raspi_0.2.0_{arch}.deb"),
                path,
            });
        }
        let built =
            build_manifest(v("0.2.0"), "stable", at("2026-12-02T19:00:00Z"), at("2027-01-01T00:00:00Z"), None, &debs)
                .unwrap();
        assert_eq!(built.name, PACKAGE_NAME);
        assert_eq!(built.artifacts["amd64"].size, 200_000);
        assert_eq!(built.artifacts["amd64"].sha256, <[u8; 32]>::from(Sha256::digest(vec![b'x'; 200_000])));
        assert_eq!(built.artifacts["arm64"].sha256_hex(), hex(&Sha256::digest(b"xxxxx")));

        let bytes = built.to_json_bytes().unwrap();
        let (sig, keyring) = signed(&bytes);
        let verified = verify(&bytes, &sig, &keyring).unwrap();
        assert_eq!(verified, built);
        assert_eq!(check(&verified, &policy()).unwrap().size, 5);
    }

    #[test]
    fn building_a_manifest_refuses_a_missing_package_or_an_architecture_given_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.deb");
        let deb = |arch: &str, path: &Path| PublishedDeb {
            architecture: arch.to_string(),
            url: "a.deb".to_string(),
            path: path.to_path_buf(),
        };
        let build = |debs: &[PublishedDeb]| {
            build_manifest(v("0.2.0"), "stable", at("2026-12-02T19:00:00Z"), at("2027-01-01T00:00:00Z"), None, debs)
        };
        assert!(matches!(build(&[deb("arm64", &path)]), Err(ManifestError::Io { .. })));
        fs::write(&path, b"deb").unwrap();
        let twice = build(&[deb("arm64", &path), deb("arm64", &path)]).unwrap_err();
        assert!(twice.to_string().contains("two packages"), "{twice}");
        assert!(matches!(build(&[]), Err(ManifestError::InvalidManifest { .. })));
    }
}
