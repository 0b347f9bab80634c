//! The sample manifest, policy and signing helper that the manifest tests share.

#![allow(clippy::unwrap_used)]

use std::time::SystemTime;

use semver::Version;

use super::{sign, Artifact, Keyring, Manifest, Policy, SecretKey, PACKAGE_NAME};

pub(super) fn at(text: &str) -> SystemTime {
    humantime::parse_rfc3339(text).unwrap()
}

pub(super) fn v(text: &str) -> Version {
    Version::parse(text).unwrap()
}

pub(super) fn manifest() -> Manifest {
    let artifact = |arch: &str, fill: u8| {
        (
            arch.to_string(),
            Artifact { url: format!("../pool/mcp-raspi_0.2.0_{arch}.deb"), size: 3_145_728, sha256: [fill; 32] },
        )
    };
    Manifest {
        name: PACKAGE_NAME.to_string(),
        version: v("0.2.0"),
        channel: "stable".to_string(),
        released_at: at("2026-12-02T19:00:00Z"),
        expires_at: at("2027-01-01T00:00:00Z"),
        min_upgrade_from: Some(v("0.1.0")),
        artifacts: [artifact("amd64", 1), artifact("arm64", 2), artifact("armhf", 3)].into_iter().collect(),
    }
}

pub(super) fn policy() -> Policy {
    Policy {
        architecture: "arm64".to_string(),
        installed: v("0.1.0"),
        highest_installed: Some(v("0.1.0")),
        channel: Some("stable".to_string()),
        target_version: None,
        now: at("2026-12-10T12:00:00Z"),
        max_download_bytes: 64 * 1024 * 1024,
    }
}

/// A signed manifest, its signature and a keyring trusting its key.
pub(super) fn signed(manifest_bytes: &[u8]) -> (Vec<u8>, Keyring) {
    let secret = SecretKey::generate().unwrap();
    let sig = sign(manifest_bytes, &secret);
    (sig, Keyring::from_keys([secret.public_key()]))
}

pub(super) fn without_min_upgrade() -> Manifest {
    Manifest { min_upgrade_from: None, ..manifest() }
}
