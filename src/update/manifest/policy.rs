//! The device's own rules for a verified manifest: [`Policy`] says what this device accepts
//! (package, channel, expiry, no downgrade, architecture, size) and [`check`] applies it and
//! picks the one artifact to download.

use std::time::SystemTime;

use semver::Version;

use super::{Artifact, Manifest, ManifestError, CLOCK_SKEW_ALLOWANCE, PACKAGE_NAME};

/// What this device accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Debian architecture of this machine, usually [`this_architecture`](super::this_architecture).
    pub architecture: String,
    /// The version running now.
    pub installed: Version,
    /// The highest version ever installed here, which may be above `installed` after a
    /// rollback.
    pub highest_installed: Option<Version>,
    /// The channel the manifest must be for, if any.
    pub channel: Option<String>,
    /// The exact version the manifest must offer, if any.
    pub target_version: Option<Version>,
    pub now: SystemTime,
    pub max_download_bytes: u64,
}

/// Checks a verified manifest against this device's policy and returns the artifact to
/// download.
pub fn check<'m>(manifest: &'m Manifest, policy: &Policy) -> Result<&'m Artifact, ManifestError> {
    if manifest.name != PACKAGE_NAME {
        return Err(ManifestError::WrongPackage { found: manifest.name.clone() });
    }
    if let Some(wanted) = &policy.channel {
        if &manifest.channel != wanted {
            return Err(ManifestError::WrongChannel { found: manifest.channel.clone(), wanted: wanted.clone() });
        }
    }
    let offered = &manifest.version;
    if let Some(wanted) = &policy.target_version {
        if offered.cmp_precedence(wanted).is_ne() {
            return Err(ManifestError::WrongTargetVersion { found: offered.clone(), wanted: wanted.clone() });
        }
    }
    if policy.now >= manifest.expires_at {
        return Err(ManifestError::Expired { expires_at: manifest.expires_at, now: policy.now });
    }
    if manifest.released_at.duration_since(policy.now).is_ok_and(|ahead| ahead > CLOCK_SKEW_ALLOWANCE) {
        return Err(ManifestError::ReleasedInFuture { released_at: manifest.released_at, now: policy.now });
    }
    // Build metadata does not order versions (semver §10), so 0.2.0+a is not newer than 0.2.0.
    match offered.cmp_precedence(&policy.installed) {
        std::cmp::Ordering::Equal => return Err(ManifestError::AlreadyInstalled { version: offered.clone() }),
        std::cmp::Ordering::Less => {
            return Err(ManifestError::Downgrade { offered: offered.clone(), installed: policy.installed.clone() })
        }
        std::cmp::Ordering::Greater => {}
    }
    // A release that was installed and rolled back is not offered again unattended, but an
    // operator may name it (`target_version`) to try it again once what failed is fixed:
    // that installs nothing older than has been here.
    if let Some(highest) = &policy.highest_installed {
        let retry = policy.target_version.as_ref().is_some_and(|wanted| wanted.cmp_precedence(highest).is_eq());
        if offered.cmp_precedence(highest).is_le() && !retry {
            return Err(ManifestError::NotNewerThanHighest { offered: offered.clone(), highest: highest.clone() });
        }
    }
    if let Some(min) = &manifest.min_upgrade_from {
        if policy.installed.cmp_precedence(min).is_lt() {
            return Err(ManifestError::TooOldToUpgrade {
                installed: policy.installed.clone(),
                min_upgrade_from: min.clone(),
                offered: offered.clone(),
            });
        }
    }
    let architecture = policy.architecture.clone();
    let Some(artifact) = manifest.artifacts.get(&architecture) else {
        return Err(ManifestError::NoArtifact {
            architecture,
            available: manifest.artifacts.keys().cloned().collect(),
        });
    };
    if artifact.size == 0 {
        return Err(ManifestError::EmptyArtifact { architecture });
    }
    if artifact.size > policy.max_download_bytes {
        return Err(ManifestError::ArtifactTooLarge {
            architecture,
            size: artifact.size,
            max: policy.max_download_bytes,
        });
    }
    Ok(artifact)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::update::manifest::fixtures::{at, manifest, policy, v, without_min_upgrade};
    use std::time::Duration;

    #[test]
    fn a_manifest_that_passes_the_policy_yields_this_architectures_artifact() {
        let manifest = manifest();
        let artifact = check(&manifest, &policy()).unwrap();
        assert_eq!(artifact, &manifest.artifacts["arm64"]);
        let loose = Policy { channel: None, highest_installed: None, target_version: Some(v("0.2.0")), ..policy() };
        assert!(check(&manifest, &loose).is_ok());
    }

    #[test]
    fn a_manifest_for_another_package_is_refused() {
        let other = Manifest { name: "mcp-other".to_string(), ..manifest() };
        let err = check(&other, &policy()).unwrap_err();
        assert!(matches!(err, ManifestError::WrongPackage { .. }));
        assert!(err.to_string().contains("mcp-other"));
    }

    #[test]
    fn a_manifest_of_another_channel_is_refused_when_a_channel_is_asked_for() {
        let beta = Manifest { channel: "beta".to_string(), ..manifest() };
        let err = check(&beta, &policy()).unwrap_err();
        assert!(matches!(err, ManifestError::WrongChannel { .. }));
        assert!(err.to_string().contains("\"beta\"") && err.to_string().contains("\"stable\""));
        assert!(check(&beta, &Policy { channel: None, ..policy() }).is_ok());
    }

    #[test]
    fn a_manifest_offering_another_version_than_the_target_is_refused() {
        let err = check(&manifest(), &Policy { target_version: Some(v("0.3.0")), ..policy() }).unwrap_err();
        assert!(matches!(err, ManifestError::WrongTargetVersion { .. }));
        assert!(err.to_string().contains("0.3.0"));
    }

    #[test]
    fn an_expired_manifest_is_refused() {
        let err = check(&manifest(), &Policy { now: at("2027-01-01T00:00:00Z"), ..policy() }).unwrap_err();
        assert!(matches!(err, ManifestError::Expired { .. }));
        assert!(err.to_string().contains("2027-01-01T00:00:00Z"), "{err}");
    }

    #[test]
    fn a_manifest_released_in_the_future_is_refused_beyond_five_minutes_of_skew() {
        let released = at("2026-12-02T19:00:00Z");
        let slightly_behind = Policy { now: released - Duration::from_secs(5 * 60), ..policy() };
        assert!(check(&manifest(), &slightly_behind).is_ok());
        let far_behind = Policy { now: released - Duration::from_secs(5 * 60 + 1), ..policy() };
        let err = check(&manifest(), &far_behind).unwrap_err();
        assert!(matches!(err, ManifestError::ReleasedInFuture { .. }));
        assert!(err.to_string().contains("clock"));
    }

    #[test]
    fn a_downgrade_is_refused() {
        let err =
            check(&manifest(), &Policy { installed: v("0.3.0"), highest_installed: None, ..policy() }).unwrap_err();
        assert!(matches!(err, ManifestError::Downgrade { .. }));
        assert!(err.to_string().contains("manage.rollback"));
    }

    #[test]
    fn the_running_version_is_not_installed_again() {
        let err = check(&manifest(), &Policy { installed: v("0.2.0"), ..policy() }).unwrap_err();
        assert!(matches!(err, ManifestError::AlreadyInstalled { .. }), "{err}");
        let rebuilt = Manifest { version: v("0.2.0+build.7"), ..manifest() };
        let err = check(&rebuilt, &Policy { installed: v("0.2.0"), ..policy() }).unwrap_err();
        assert!(matches!(err, ManifestError::AlreadyInstalled { .. }), "build metadata is no newer: {err}");
    }

    #[test]
    fn a_version_below_the_highest_ever_installed_is_refused() {
        let after_rollback = Policy { installed: v("0.1.0"), highest_installed: Some(v("0.2.0")), ..policy() };
        let err = check(&manifest(), &after_rollback).unwrap_err();
        assert!(matches!(err, ManifestError::NotNewerThanHighest { .. }));
        assert_eq!(
            err.to_string(),
            "0.2.0 is not newer than 0.2.0, the highest version ever installed here; to go back use manage.rollback, to try 0.2.0 again name it as target_version"
        );
        let higher = Policy { highest_installed: Some(v("0.3.0")), ..after_rollback.clone() };
        assert!(matches!(check(&manifest(), &higher), Err(ManifestError::NotNewerThanHighest { .. })));
        // Named, the highest release may be tried again; nothing below it may.
        let retry = Policy { target_version: Some(v("0.2.0")), ..after_rollback };
        assert!(check(&manifest(), &retry).is_ok());
        let below = Policy { target_version: Some(v("0.2.0")), ..higher };
        assert!(matches!(check(&manifest(), &below), Err(ManifestError::NotNewerThanHighest { .. })));
    }

    #[test]
    fn an_installed_version_below_min_upgrade_from_is_refused() {
        let manifest = Manifest { min_upgrade_from: Some(v("0.1.5")), ..manifest() };
        let err = check(&manifest, &policy()).unwrap_err();
        assert!(matches!(err, ManifestError::TooOldToUpgrade { .. }));
        assert!(err.to_string().contains("0.1.5"));
        assert!(check(&manifest, &Policy { installed: v("0.1.5"), highest_installed: None, ..policy() }).is_ok());
        assert!(check(&without_min_upgrade(), &Policy { installed: v("0.0.1"), ..policy() }).is_ok());
    }

    #[test]
    fn a_manifest_without_this_architecture_is_refused() {
        let err = check(&manifest(), &Policy { architecture: "riscv64".to_string(), ..policy() }).unwrap_err();
        assert!(matches!(err, ManifestError::NoArtifact { .. }));
        assert!(err.to_string().contains("riscv64") && err.to_string().contains("amd64, arm64, armhf"));
    }

    #[test]
    fn an_artifact_of_size_zero_or_over_the_download_limit_is_refused() {
        let mut empty = manifest();
        empty.artifacts.get_mut("arm64").unwrap().size = 0;
        assert!(matches!(check(&empty, &policy()), Err(ManifestError::EmptyArtifact { .. })));

        let limit = Policy { max_download_bytes: 3_145_727, ..policy() };
        let err = check(&manifest(), &limit).unwrap_err();
        assert!(matches!(err, ManifestError::ArtifactTooLarge { size: 3_145_728, max: 3_145_727, .. }));
        assert!(check(&manifest(), &Policy { max_download_bytes: 3_145_728, ..policy() }).is_ok());
    }
}
