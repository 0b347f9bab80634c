//! The publisher's side of self-update: `mcp-raspi release keygen | manifest | sign | verify
//! | delta | deltas`.
//!
//! A release is published as `manifest.json` (what it is, for which architectures, until
//! when) and `manifest.json.sig` (an ed25519 signature over the manifest's exact bytes by a
//! key whose public half devices hold in `/etc/mcp-raspi/keys/`). Deltas from earlier
//! releases (`release delta`) are listed in `deltas.json` (`release deltas`), signed the
//! same way. `make update-repo` runs these commands; README shows the steps.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args as ClapArgs;

use super::write_atomically;
use crate::base::hex;
use crate::update::delta::{self, index::MAX_INDEX_BYTES, DeltaEntry, DeltaIndex, INDEX_FILE};
use crate::update::manifest::{self, Keyring, PublishedDeb, SecretKey};
use crate::update::{deb, release};

/// `release keygen`.
#[derive(Debug, ClapArgs)]
pub struct Keygen {
    /// Directory that receives KEYID.secret (mode 0600) and KEYID.pub; an existing key is
    /// never overwritten.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// `release manifest`.
#[derive(Debug, ClapArgs)]
pub struct BuildManifest {
    /// Channel the release is published on: stable or beta.
    #[arg(long, value_name = "CHANNEL")]
    pub channel: String,
    /// How long devices accept the manifest, e.g. 90d or 12h.
    #[arg(long, value_name = "DURATION", default_value = "90d")]
    pub expires_in: humantime::Duration,
    /// Oldest version that may update straight to this one.
    #[arg(long, value_name = "VERSION")]
    pub min_upgrade_from: Option<semver::Version>,
    /// Prefix of each package's URL, absolute or relative to the manifest's URL.
    #[arg(long, value_name = "PREFIX", default_value = "../pool/")]
    pub url_prefix: String,
    /// Write the manifest here (atomically) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The release's packages, one per architecture; their version is the release's.
    #[arg(value_name = "DEB", required = true)]
    pub debs: Vec<PathBuf>,
}

/// `release sign`.
#[derive(Debug, ClapArgs)]
pub struct Sign {
    /// The secret key (KEYID.secret, from `release keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The manifest (or a deltas.json); the signature is written beside it as MANIFEST.sig.
    #[arg(value_name = "MANIFEST")]
    pub manifest: PathBuf,
}

/// `release delta`.
#[derive(Debug, ClapArgs)]
pub struct BuildDelta {
    /// The package of the release devices update from.
    #[arg(long, value_name = "DEB")]
    pub from: PathBuf,
    /// The package of the release they update to (same architecture, newer version).
    #[arg(long, value_name = "DEB")]
    pub to: PathBuf,
    /// Directory the delta is written to as mcp-raspi_FROM_to_TO_ARCH.delta (default: the
    /// directory of the --to package).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// `release deltas`.
#[derive(Debug, ClapArgs)]
pub struct BuildDeltaIndex {
    /// Prefix of each delta's URL, absolute or relative to the index's URL.
    #[arg(long, value_name = "PREFIX", default_value = "../pool/")]
    pub url_prefix: String,
    /// Write the index here (atomically) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The release's deltas (from `release delta`), all to the same version.
    #[arg(value_name = "DELTA", required = true)]
    pub deltas: Vec<PathBuf>,
}

/// `release verify`.
#[derive(Debug, ClapArgs)]
pub struct Verify {
    /// Directory of trusted public keys (*.pub).
    #[arg(long, value_name = "DIR", default_value = manifest::DEFAULT_KEYS_DIR)]
    pub keys: PathBuf,
    /// The signature file (default: MANIFEST.sig).
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
    /// Also check that these packages are the manifest's (size and SHA-256).
    #[arg(long = "deb", value_name = "DEB")]
    pub debs: Vec<PathBuf>,
    #[arg(value_name = "MANIFEST")]
    pub manifest: PathBuf,
}

fn say(out: &mut dyn Write, text: &str) -> Result<(), String> {
    writeln!(out, "{text}").map_err(|e| e.to_string())
}

pub fn keygen(args: Keygen, out: &mut dyn Write) -> Result<(), String> {
    let key = manifest::keygen(&args.out).map_err(|e| e.to_string())?;
    say(out, &format!("key id {}", key.key_id))?;
    say(out, &format!("secret key {} (keep it off the devices, backed up and private)", key.secret_path.display()))?;
    say(out, &format!("public key {} (install it in /etc/mcp-raspi/keys/ on every device)", key.public_path.display()))
}

pub fn build(args: BuildManifest, out: &mut dyn Write) -> Result<(), String> {
    let mut published = Vec::new();
    let mut version: Option<String> = None;
    for path in &args.debs {
        let info = deb::read_info(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if info.package != manifest::PACKAGE_NAME {
            return Err(format!("{} is a package of {}, not {}", path.display(), info.package, manifest::PACKAGE_NAME));
        }
        match &version {
            Some(v) if *v != info.version => {
                return Err(format!("{} is version {}, the other packages {v}", path.display(), info.version))
            }
            _ => version = Some(info.version.clone()),
        }
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        published.push(PublishedDeb {
            architecture: info.architecture,
            url: format!("{}{file_name}", args.url_prefix),
            path: path.clone(),
        });
    }
    let version = version.ok_or("name at least one package")?;
    let version = semver::Version::parse(&version)
        .map_err(|e| format!("the packages' version {version:?} is not a semantic version: {e}"))?;
    let released_at = SystemTime::now();
    let expires_at = released_at + Duration::from(args.expires_in);
    let built =
        manifest::build_manifest(version, &args.channel, released_at, expires_at, args.min_upgrade_from, &published)
            .map_err(|e| e.to_string())?;
    let bytes = built.to_json_bytes().map_err(|e| e.to_string())?;
    match args.out {
        Some(path) => write_atomically(&path, &bytes, 0o644),
        None => out.write_all(&bytes).map_err(|e| e.to_string()),
    }
}

pub fn sign(args: Sign, out: &mut dyn Write) -> Result<(), String> {
    let key = SecretKey::read(&args.key).map_err(|e| e.to_string())?;
    let bytes = read(&args.manifest, manifest::MAX_MANIFEST_BYTES.max(MAX_INDEX_BYTES))?;
    // Refuse to sign what devices would refuse to install.
    if is_delta_index(&args.manifest) {
        DeltaIndex::from_json_bytes(&bytes).map_err(|e| format!("{}: {e}", args.manifest.display()))?;
    } else {
        manifest::Manifest::from_json_bytes(&bytes).map_err(|e| format!("{}: {e}", args.manifest.display()))?;
    }
    let signature = manifest::sign(&bytes, &key);
    let path = sig_path(&args.manifest);
    write_atomically(&path, &signature, 0o644)?;
    say(out, &format!("signed {} with key {}: {}", args.manifest.display(), key.id(), path.display()))
}

pub fn verify(args: Verify, out: &mut dyn Write) -> Result<(), String> {
    let keyring = Keyring::load(&args.keys).map_err(|e| e.to_string())?;
    let bytes = read(&args.manifest, manifest::MAX_MANIFEST_BYTES.max(MAX_INDEX_BYTES))?;
    let sig_file = args.signature.unwrap_or_else(|| sig_path(&args.manifest));
    let signature = read(&sig_file, manifest::MAX_SIGNATURE_BYTES)?;
    if is_delta_index(&args.manifest) {
        if !args.debs.is_empty() {
            return Err("--deb checks packages against a manifest; a deltas.json lists deltas, not packages".into());
        }
        let index = DeltaIndex::verify(&bytes, &signature, &keyring)?;
        say(out, &format!("{}: deltas to {}; signature good", args.manifest.display(), index.version))?;
        for d in &index.deltas {
            say(
                out,
                &format!(
                    "  {} from {}: {} ({} bytes, sha256 {})",
                    d.architecture,
                    d.from,
                    d.url,
                    d.size,
                    hex(&d.sha256)
                ),
            )?;
        }
        return Ok(());
    }
    let verified = manifest::verify(&bytes, &signature, &keyring).map_err(|e| e.to_string())?;
    let time = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    say(
        out,
        &format!(
            "{}: {} {} on {}, released {}, expires {}; signature good",
            args.manifest.display(),
            verified.name,
            verified.version,
            verified.channel,
            time(verified.released_at),
            time(verified.expires_at)
        ),
    )?;
    for (arch, artifact) in &verified.artifacts {
        say(out, &format!("  {arch}: {} ({} bytes, sha256 {})", artifact.url, artifact.size, artifact.sha256_hex()))?;
    }
    for path in &args.debs {
        let digest = manifest::file_digest(path).map_err(|e| e.to_string())?;
        let found = verified.artifacts.values().find(|a| a.sha256 == digest.sha256 && a.size == digest.size);
        match found {
            Some(a) => say(out, &format!("  {} matches {}", path.display(), a.url))?,
            None => return Err(format!("{} is none of the manifest's packages", path.display())),
        }
    }
    Ok(())
}

pub fn build_delta(args: BuildDelta, out: &mut dyn Write) -> Result<(), String> {
    let info = |path: &Path| deb::read_info(path).map_err(|e| format!("{}: {e}", path.display()));
    let (old, new) = (info(&args.from)?, info(&args.to)?);
    for (path, found) in [(&args.from, &old), (&args.to, &new)] {
        if found.package != manifest::PACKAGE_NAME {
            return Err(format!(
                "{} is a package of {}, not {}",
                path.display(),
                found.package,
                manifest::PACKAGE_NAME
            ));
        }
    }
    if old.architecture != new.architecture {
        return Err(format!(
            "{} is for {} and {} for {}: a delta connects two packages of one architecture",
            args.from.display(),
            old.architecture,
            args.to.display(),
            new.architecture
        ));
    }
    for (flag, found) in [("--from", &old), ("--to", &new)] {
        semver::Version::parse(&found.version).map_err(|e| {
            format!(
                "{flag} is version {:?}, which devices cannot update by (not a semantic version: {e})",
                found.version
            )
        })?;
    }
    if release::compare_versions(&old.version, &new.version) != std::cmp::Ordering::Less {
        return Err(format!("--from is {} and --to {}: a delta leads to a newer release", old.version, new.version));
    }
    let package = manifest::file_digest(&args.to).map_err(|e| e.to_string())?;
    let out_dir = match args.out_dir {
        Some(dir) => dir,
        None => args.to.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    let work = out_dir.join(format!(".delta-work-{}", std::process::id()));
    let built = (|| {
        std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
        // The publisher's own packages: any size a device may accept (four times a download
        // cap of a few hundred megabytes).
        let limits = deb::Limits { max_total_bytes: 1 << 30, ..deb::Limits::default() };
        let (old_payload, new_payload) = (work.join("from"), work.join("to"));
        deb::extract_payload(&args.from, &old_payload, &old, limits)
            .map_err(|e| format!("{}: {e}", args.from.display()))?;
        deb::extract_payload(&args.to, &new_payload, &new, limits)
            .map_err(|e| format!("{}: {e}", args.to.display()))?;
        let versions = (old.version.as_str(), new.version.as_str());
        delta::build(&old_payload, &new_payload, &new.architecture, versions, &package.sha256, limits)
            .map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_dir_all(&work);
    let (_, bytes) = built?;
    let path = out_dir.join(delta::delta_file_name(&old.version, &new.version, &new.architecture));
    write_atomically(&path, &bytes, 0o644)?;
    let package = std::fs::metadata(&args.to).map(|m| m.len()).unwrap_or(0);
    let share = if package > 0 {
        format!(" ({:.0}% of the package's {package})", bytes.len() as f64 * 100.0 / package as f64)
    } else {
        String::new()
    };
    say(
        out,
        &format!(
            "{}: {} {} to {} for {}, {} bytes{share}",
            path.display(),
            manifest::PACKAGE_NAME,
            old.version,
            new.version,
            new.architecture,
            bytes.len()
        ),
    )
}

pub fn build_delta_index(args: BuildDeltaIndex, out: &mut dyn Write) -> Result<(), String> {
    let mut version: Option<semver::Version> = None;
    let mut deltas = Vec::new();
    for path in &args.deltas {
        let header = delta::header_of(path).map_err(|e| e.to_string())?;
        let parse = |v: &str| {
            semver::Version::parse(v).map_err(|e| format!("{}: {v:?} is not a semantic version: {e}", path.display()))
        };
        let to = parse(&header.to)?;
        match &version {
            Some(v) if *v != to => {
                return Err(format!(
                    "{} leads to {to}, the other deltas to {v}: an index lists one release's",
                    path.display()
                ))
            }
            _ => version = Some(to),
        }
        let digest = manifest::file_digest(path).map_err(|e| e.to_string())?;
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let package_sha256 = manifest::parse_sha256(&header.package_sha256)
            .ok_or_else(|| format!("{}: its header's package_sha256 is not a SHA-256", path.display()))?;
        deltas.push(DeltaEntry {
            architecture: header.architecture,
            from: parse(&header.from)?,
            package_sha256,
            url: format!("{}{file_name}", args.url_prefix),
            size: digest.size,
            sha256: digest.sha256,
        });
    }
    let version = version.ok_or("name at least one delta")?;
    let bytes = DeltaIndex { version, deltas }.to_json_bytes()?;
    match args.out {
        Some(path) => write_atomically(&path, &bytes, 0o644),
        None => out.write_all(&bytes).map_err(|e| e.to_string()),
    }
}

/// Whether `path` names a delta index rather than a manifest.
fn is_delta_index(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == INDEX_FILE)
}

fn sig_path(manifest: &Path) -> PathBuf {
    let mut name = manifest.as_os_str().to_os_string();
    name.push(".sig");
    PathBuf::from(name)
}

fn read(path: &Path, max: usize) -> Result<Vec<u8>, String> {
    crate::update::install::read_small(path, max).map_err(|e| e.to_string())
}
