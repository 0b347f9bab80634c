//! `mcp-raspi release`: the release tree under the install root (what the package's
//! maintainer scripts use) and the publisher's side of signed releases.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use super::{publish, DEFAULT_ROOT};
use crate::update::release;

/// Release management under the install root.
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Install a payload (its bin/ and share/) as releases/VERSION; nothing happens when
    /// that release is already installed with the same contents.
    Install {
        /// Directory holding the payload's bin/ and share/, e.g. /usr/lib/mcp-raspi.
        #[arg(long, value_name = "DIR")]
        payload: PathBuf,
        /// Install root holding releases/ and current.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
        root: PathBuf,
        /// Version the release is installed as.
        #[arg(long = "version", value_name = "VERSION")]
        release_version: String,
        /// Give the release's directories to this user and its group.
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
    },
    /// Create a release signing key pair (ed25519).
    Keygen(publish::Keygen),
    /// Build a release's manifest.json from its packages.
    Manifest(publish::BuildManifest),
    /// Sign a manifest (writes MANIFEST.sig).
    Sign(publish::Sign),
    /// Check a manifest's (or a deltas.json's) signature against trusted keys, and
    /// optionally packages against it.
    Verify(publish::Verify),
    /// Build the delta between two packages of one architecture (experimental: updates.delta).
    Delta(publish::BuildDelta),
    /// Build a release's deltas.json from its deltas.
    Deltas(publish::BuildDeltaIndex),
    /// Point current at an installed release, atomically.
    Activate {
        /// Install root holding releases/ and current.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
        root: PathBuf,
        /// Version to activate.
        #[arg(long = "version", value_name = "VERSION")]
        release_version: String,
        /// Give the current link (and version.json) to this user and its group.
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
        /// Record the switch in DIR/version.json as a package install (the postinst does),
        /// and prune to --keep releases, keeping the previous good one.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Releases kept when pruning with --state-dir.
        #[arg(long, value_name = "KEEP", default_value_t = 3, requires = "state_dir")]
        keep: usize,
    },
    /// Print the version current points at.
    Current {
        /// Install root holding releases/ and current.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
        root: PathBuf,
    },
    /// Print the installed releases, oldest first.
    List {
        /// Install root holding releases/ and current.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
        root: PathBuf,
    },
    /// Remove old releases, keeping the newest KEEP and the current one.
    Prune {
        /// Install root holding releases/ and current.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
        root: PathBuf,
        /// How many of the newest releases to keep.
        #[arg(long, value_name = "KEEP", default_value_t = 3)]
        keep: usize,
    },
}

pub(super) fn run_release(command: ReleaseCommand, out: &mut dyn Write) -> Result<(), String> {
    let mut say = |text: String| writeln!(out, "{text}").map_err(|e| e.to_string());
    match command {
        ReleaseCommand::Install { payload, root, release_version, owner } => {
            let owner = owner.as_deref().map(|o| resolve_owner(o, "--owner")).transpose()?;
            let dir =
                release::install_release_owned(&payload, &root, &release_version, owner).map_err(|e| e.to_string())?;
            say(dir.display().to_string())
        }
        ReleaseCommand::Keygen(args) => publish::keygen(args, out),
        ReleaseCommand::Manifest(args) => publish::build(args, out),
        ReleaseCommand::Sign(args) => publish::sign(args, out),
        ReleaseCommand::Verify(args) => publish::verify(args, out),
        ReleaseCommand::Delta(args) => publish::build_delta(args, out),
        ReleaseCommand::Deltas(args) => publish::build_delta_index(args, out),
        ReleaseCommand::Activate { root, release_version, owner, state_dir, keep } => {
            let owner = owner.as_deref().map(|o| resolve_owner(o, "--owner")).transpose()?;
            let previous = match state_dir {
                Some(dir) => crate::update::activate::Installation::new(&root, &dir, owner, keep)
                    .record_package_install(&release_version)
                    .map_err(|e| e.to_string())?,
                None => release::flip_current_owned(&root, &release_version, owner).map_err(|e| e.to_string())?,
            };
            match previous {
                Some(p) if p != release_version => say(format!("current: {release_version} (was {p})")),
                _ => say(format!("current: {release_version}")),
            }
        }
        ReleaseCommand::Current { root } => match release::current_version(&root).map_err(|e| e.to_string())? {
            Some(version) => say(version),
            None => Err(format!("no release is active ({} does not exist)", root.join("current").display())),
        },
        ReleaseCommand::List { root } => {
            // Nothing installed yet (or another root): an empty list, not an error.
            if !root.exists() {
                return Ok(());
            }
            let current = release::current_version(&root).ok().flatten();
            for version in release::list_releases(&root).map_err(|e| e.to_string())? {
                let mark = if current.as_ref() == Some(&version) { " (current)" } else { "" };
                say(format!("{version}{mark}"))?;
            }
            Ok(())
        }
        ReleaseCommand::Prune { root, keep } => {
            for version in release::prune(&root, keep).map_err(|e| e.to_string())? {
                say(format!("removed {version}"))?;
            }
            Ok(())
        }
    }
}

/// The uid and primary gid of `name` (a user name or a number); `what` says where the name
/// comes from (`--owner`), for the message when it names nobody.
fn resolve_owner(name: &str, what: &str) -> Result<release::Owner, String> {
    let user = match name.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(name),
    };
    match user {
        Ok(Some(u)) => Ok(release::Owner { uid: u.uid.as_raw(), gid: u.gid.as_raw() }),
        Ok(None) => Err(format!("{what}: no user named {name:?} on this system")),
        Err(e) => Err(format!("{what}: cannot look up {name:?}: {e}")),
    }
}
