//! A device and an update repository in a temporary directory, for the self-update tests:
//! an install root with release 0.1.0 installed and current (as the package's postinst
//! leaves it), a trusted release key, signed manifests and packages laid out as
//! `update::resolve` documents, served over loopback by [`FileServer`], and the two ways a
//! device updates: the library calls the server and agent make, and the `mcp-raspi` CLI.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use mcp_raspi::update::activate::Installation;
use mcp_raspi::update::download::{FetchSettings, Fetcher, Progress};
use mcp_raspi::update::install::{self, InstallRequest, Installed, Step};
use mcp_raspi::update::manifest::{self, Keyring, Manifest, PublishedDeb, SecretKey};
use mcp_raspi::update::resolve::{self, Resolution, Target};
use mcp_raspi::update::{deb, release};
use sha2::{Digest, Sha256};

use super::deb::DebSpec;
use super::file_server::FileServer;
use super::{is_root, UNPRIVILEGED};

/// The release the device runs at the start of every test.
pub const OLD: &str = "0.1.0";
/// The release the tests update to.
pub const NEW: &str = "0.2.0";
/// A release after that.
pub const NEWER: &str = "0.3.0";
/// Releases kept under releases/ by the test installations.
const KEEP_VERSIONS: usize = 3;

/// This machine's Debian architecture, the one a device policy asks for.
pub fn arch() -> &'static str {
    manifest::this_architecture()
}

/// An architecture that is not this machine's.
pub fn other_arch() -> &'static str {
    if arch() == "arm64" {
        "armhf"
    } else {
        "arm64"
    }
}

/// The file name a package has in `pool/`.
pub fn deb_name(version: &str, architecture: &str) -> String {
    install::package_file_name(version, architecture)
}

/// A device's paths, as its configuration names them, and the repository it updates from.
#[derive(Debug, Clone)]
pub struct Device {
    pub install_root: PathBuf,
    pub state_dir: PathBuf,
    pub keys_dir: PathBuf,
    pub server_url: String,
}

impl Device {
    /// The device laid out under `base` (`opt/`, `state/`, `keys/`).
    pub fn at(base: &Path, server_url: &str) -> Device {
        Device {
            install_root: base.join("opt"),
            state_dir: base.join("state"),
            keys_dir: base.join("keys"),
            server_url: server_url.to_string(),
        }
    }

    pub fn installation(&self) -> Installation {
        Installation::new(&self.install_root, &self.state_dir, None, KEEP_VERSIONS)
    }

    /// Where the server side of a device downloads packages.
    pub fn downloads(&self) -> PathBuf {
        self.state_dir.join("downloads")
    }

    /// Everything under the install root (path, kind, mode, owner, link target, content)
    /// and `version.json`.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut lines = Vec::new();
        walk(&self.install_root, Path::new(""), &mut lines);
        let state = self.state_dir.join("version.json");
        match std::fs::read(&state) {
            Ok(bytes) => lines.push(format!("version.json {}", hex(&Sha256::digest(&bytes)))),
            Err(_) => lines.push("version.json absent".to_string()),
        }
        Fingerprint { lines }
    }

    /// What a device does, through the library: the server side resolves and downloads
    /// into `downloads/`, the agent side installs (every check again) and switches, with
    /// this device's policy and trusted keys. `hooks` see each stage.
    pub fn update_through_library(
        &self,
        target: &Target,
        settings: FetchSettings,
        hooks: &mut Hooks<'_>,
    ) -> Result<Installed, String> {
        self.update_by_library(target, settings, false, hooks)
    }

    /// [`Self::update_through_library`] with the delta from the installed release, which
    /// must be published.
    pub fn update_through_library_delta(&self, target: &Target, hooks: &mut Hooks<'_>) -> Result<Installed, String> {
        self.update_by_library(target, FetchSettings::default(), true, hooks)
    }

    fn update_by_library(
        &self,
        target: &Target,
        settings: FetchSettings,
        delta: bool,
        hooks: &mut Hooks<'_>,
    ) -> Result<Installed, String> {
        let inst = self.installation();
        let max_bytes = 20 * 1024 * 1024;
        let policy = install::device_policy(&inst, max_bytes)?;
        let keyring = Keyring::load(&self.keys_dir).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let fetcher = Fetcher::new(settings);
        let resolved = runtime
            .block_on(resolve::resolve(&fetcher, &self.server_url, target, &keyring, &policy))
            .map_err(|e| e.to_string())?;
        let resolved = match resolved {
            Resolution::UpToDate { offered } => return Err(format!("up to date: {offered} is offered")),
            Resolution::Available(resolved) => resolved,
        };
        let found = match delta {
            true => Some(
                runtime
                    .block_on(resolve::find_delta(&fetcher, &resolved, &keyring, &policy))?
                    .ok_or("no delta from the installed release is published")?,
            ),
            false => None,
        };
        let file = match &found {
            Some(found) => {
                runtime.block_on(resolve::download_delta(&fetcher, &resolved, found, &self.downloads(), hooks.progress))
            }
            None => runtime.block_on(resolve::download(
                &fetcher,
                &resolved,
                &self.downloads(),
                &policy.architecture,
                hooks.progress,
            )),
        }
        .map_err(|e| e.to_string())?;
        (hooks.downloaded)(&file);
        let download = match &found {
            Some(found) => {
                install::Download::Delta { index: &found.index_bytes, signature: &found.signature_bytes, file: &file }
            }
            None => install::Download::Package(&file),
        };
        let request = InstallRequest {
            manifest: &resolved.manifest_bytes,
            signature: &resolved.signature_bytes,
            download,
            keyring: &keyring,
            policy,
            staging_dir: &self.state_dir.join("staging"),
            source: "mcp",
        };
        let installed = install::install(&inst, request, hooks.step).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&file);
        Ok(installed)
    }
}

/// A device, its update repository and the server publishing it.
pub struct Scene {
    pub dir: tempfile::TempDir,
    pub device: Device,
    pub repo: PathBuf,
    /// The trusted release key, whose public half is in `keys_dir`.
    pub key: SecretKey,
    pub server: FileServer,
}

impl std::ops::Deref for Scene {
    type Target = Device;

    fn deref(&self) -> &Device {
        &self.device
    }
}

impl Scene {
    /// Release 0.1.0 installed from its package and current, one trusted key, an empty
    /// repository being served.
    pub fn new() -> Scene {
        Scene::starting_with(DebSpec::new(OLD, arch()))
    }

    /// Like [`Scene::new`], with the release `first` installed and current.
    pub fn starting_with(first_spec: DebSpec) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        let repo = base.join("repo");
        let server = FileServer::start(&repo);
        let device = Device::at(&base, &server.url());
        for d in [&device.state_dir, &device.keys_dir, &repo.join("pool"), &base.join("publisher")] {
            std::fs::create_dir_all(d).unwrap();
        }

        let version = first_spec.version.clone();
        let first = base.join("publisher").join(deb_name(&version, arch()));
        first_spec.write(&first);
        let payload = base.join(format!("publisher/payload-{version}"));
        let info = deb::DebInfo { package: "mcp-raspi".into(), version: version.clone(), architecture: arch().into() };
        deb::extract_payload(&first, &payload, &info, deb::Limits::default()).unwrap();
        release::install_release(&payload, &device.install_root, &version).unwrap();
        std::fs::remove_dir_all(&payload).unwrap();
        device.installation().record_package_install(&version).unwrap();

        let key = new_key(&base.join("publisher"));
        std::fs::write(device.keys_dir.join(format!("{}.pub", key.id())), key.public_key().to_file_text()).unwrap();
        Scene { dir, device, repo, key, server }
    }

    /// Writes a package into `pool/` under its usual name and returns its path.
    pub fn pool_deb(&self, spec: &DebSpec) -> PathBuf {
        let path = self.repo.join("pool").join(deb_name(&spec.version, &spec.architecture));
        spec.write(&path);
        path
    }

    /// The manifest a publisher builds for `deb` (this architecture), released an hour ago
    /// and valid for 30 days, on channel stable.
    pub fn manifest(&self, version: &str, deb: &Path) -> Manifest {
        self.manifest_for(version, &[(arch(), deb)])
    }

    /// The manifest listing `debs` by architecture.
    pub fn manifest_for(&self, version: &str, debs: &[(&str, &Path)]) -> Manifest {
        let now = SystemTime::now();
        let published: Vec<PublishedDeb> = debs
            .iter()
            .map(|(architecture, path)| PublishedDeb {
                architecture: architecture.to_string(),
                url: format!("pool/{}", path.file_name().unwrap().to_string_lossy()),
                path: path.to_path_buf(),
            })
            .collect();
        manifest::build_manifest(
            semver::Version::parse(version).unwrap(),
            "stable",
            now - Duration::from_secs(3600),
            now + Duration::from_secs(30 * 86_400),
            None,
            &published,
        )
        .unwrap()
    }

    /// Publishes `manifest` (its artifact URLs taken as relative to the repository's root)
    /// on the channel and under versions/<version>, signed by `key`. Returns the exact bytes
    /// of the channel's manifest.json and manifest.json.sig.
    pub fn publish_with(&self, manifest: &Manifest, key: &SecretKey) -> (Vec<u8>, Vec<u8>) {
        let mut out = None;
        for (dir, up) in [(manifest.channel.clone(), "../"), (format!("versions/{}", manifest.version), "../../")] {
            let mut placed = manifest.clone();
            for artifact in placed.artifacts.values_mut() {
                artifact.url = format!("{up}{}", artifact.url);
            }
            let bytes = placed.to_json_bytes().unwrap();
            let signature = manifest::sign(&bytes, key);
            self.place(&dir, &bytes, &signature);
            out.get_or_insert((bytes, signature));
        }
        out.unwrap()
    }

    /// [`Self::publish_with`] the trusted key.
    pub fn publish(&self, manifest: &Manifest) -> (Vec<u8>, Vec<u8>) {
        self.publish_with(manifest, &self.key)
    }

    /// Writes `manifest.json` and `manifest.json.sig` as they are into `dir` of the
    /// repository (`stable`, `versions/0.2.0`).
    pub fn place(&self, dir: &str, manifest: &[u8], signature: &[u8]) {
        let dir = self.repo.join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("manifest.json"), manifest).unwrap();
        std::fs::write(dir.join("manifest.json.sig"), signature).unwrap();
    }

    /// Builds, pools and publishes a good release of mcp-raspi `version` for this machine.
    pub fn release(&self, version: &str) -> PathBuf {
        // Large enough for a few progress reports (one per 64 KiB) while it downloads.
        let deb = self.pool_deb(&DebSpec::new(version, arch()).padded(320 * 1024));
        self.publish(&self.manifest(version, &deb));
        deb
    }

    /// Publishes the delta from the package `from` to the pooled package `to` with the
    /// publisher's commands (`mcp-raspi release delta | deltas | sign`), next to the manifests
    /// of `to`'s version. Returns the delta's path.
    pub fn publish_delta(&self, from: &Path, to: &Path, version: &str) -> PathBuf {
        let pool = self.repo.join("pool");
        let key = self.dir.path().join("publisher").join(format!("{}.secret", self.key.id()));
        let publisher = |args: &[&std::ffi::OsStr]| {
            let out = Command::new(env!("CARGO_BIN_EXE_mcp-raspi")).arg("release").args(args).output().unwrap();
            assert!(out.status.success(), "release {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let said = publisher(&[
            "delta".as_ref(),
            "--from".as_ref(),
            from.as_os_str(),
            "--to".as_ref(),
            to.as_os_str(),
            "--out-dir".as_ref(),
            pool.as_os_str(),
        ]);
        let delta = PathBuf::from(said.split(": ").next().unwrap());
        assert!(delta.starts_with(&pool), "{said}");
        for (dir, up) in [("stable".to_string(), "../pool/"), (format!("versions/{version}"), "../../pool/")] {
            let index = self.repo.join(dir).join("deltas.json");
            publisher(&[
                "deltas".as_ref(),
                "--url-prefix".as_ref(),
                up.as_ref(),
                "--out".as_ref(),
                index.as_os_str(),
                delta.as_os_str(),
            ]);
            publisher(&["sign".as_ref(), "--key".as_ref(), key.as_os_str(), index.as_os_str()]);
        }
        delta
    }

    /// The CLI's configuration: the scene's paths and repository, a download cap of
    /// `max_download_mb`.
    pub fn config(&self, max_download_mb: u64) -> PathBuf {
        let base = self.dir.path();
        let text = format!(
            "config_version: \"1.2\"\nlogging:\n  journald: off\n  app_path: {0}/log/app.log\n  audit_path: {0}/log/audit.log\n\
             paths:\n  state_dir: {1}\n  install_dir: {2}\n\
             updates:\n  server_url: \"{3}\"\n  keys_dir: {4}\n  max_download_mb: {max_download_mb}\n",
            base.display(),
            self.state_dir.display(),
            self.install_root.display(),
            self.server.url(),
            self.keys_dir.display()
        );
        let path = base.join("config.yml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Hands the scene to the user the CLI runs as: root runs it as an unprivileged user
    /// (root's own runs give the agent's user, which test machines lack, what they create).
    pub fn hand_to_cli_user(&self) {
        if is_root() {
            chown_tree(self.dir.path(), UNPRIVILEGED);
        }
    }

    /// Runs `mcp-raspi update server --no-wait --config <config> <args>` in a clean
    /// environment, for at most `limit`.
    pub fn cli_update(&self, config: &Path, args: &[&str], limit: Duration) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcp-raspi"));
        cmd.args(["update", "server", "--no-wait", "--config"]).arg(config).args(args);
        cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").current_dir(self.dir.path());
        if is_root() {
            cmd.uid(UNPRIVILEGED).gid(UNPRIVILEGED);
        }
        run_bounded(cmd, limit)
    }
}

/// What [`Device::update_through_library`] reports on the way.
pub struct Hooks<'a> {
    pub progress: &'a mut (dyn FnMut(Progress) + Send),
    /// The package is downloaded and verified; the install has not begun.
    pub downloaded: &'a mut dyn FnMut(&Path),
    pub step: &'a mut dyn FnMut(&Step),
}

/// Runs `f` with hooks that do nothing.
pub fn quietly<T>(f: impl FnOnce(&mut Hooks<'_>) -> T) -> T {
    let (mut progress, mut downloaded, mut step) = (|_: Progress| {}, |_: &Path| {}, |_: &Step| {});
    f(&mut Hooks { progress: &mut progress, downloaded: &mut downloaded, step: &mut step })
}

/// Fetch settings of a device, with timeouts short enough for a test.
pub fn quick_fetch() -> FetchSettings {
    FetchSettings {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_millis(400),
        total_timeout: Some(Duration::from_secs(10)),
        ..FetchSettings::default()
    }
}

/// A release key generated into `dir`.
pub fn new_key(dir: &Path) -> SecretKey {
    let generated = manifest::keygen(dir).unwrap();
    SecretKey::read(&generated.secret_path).unwrap()
}

/// The state of an install tree and its `version.json`, one line per entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub lines: Vec<String>,
}

impl Fingerprint {
    /// The SHA-256 of all the lines.
    pub fn digest(&self) -> String {
        hex(&Sha256::digest(self.lines.join("\n").as_bytes()))
    }

    /// The lines only one of the two has, for a failure message.
    pub fn difference(&self, other: &Fingerprint) -> String {
        let mut out = String::new();
        for line in self.lines.iter().filter(|l| !other.lines.contains(l)) {
            let _ = writeln!(out, "- {line}");
        }
        for line in other.lines.iter().filter(|l| !self.lines.contains(l)) {
            let _ = writeln!(out, "+ {line}");
        }
        out
    }
}

fn walk(root: &Path, rel: &Path, lines: &mut Vec<String>) {
    let dir = root.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let head = format!("{} {:o} {}:{}", rel.display(), meta.mode() & 0o7777, meta.uid(), meta.gid());
        if meta.file_type().is_symlink() {
            lines.push(format!("{head} link -> {}", std::fs::read_link(&path).unwrap().display()));
        } else if meta.is_dir() {
            lines.push(format!("{head} dir"));
            walk(root, &rel, lines);
        } else if meta.is_file() {
            lines.push(format!("{head} file {}", hex(&Sha256::digest(std::fs::read(&path).unwrap()))));
        } else {
            lines.push(format!("{head} other"));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn chown_tree(path: &Path, id: u32) {
    std::os::unix::fs::lchown(path, Some(id), Some(id)).unwrap();
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), id);
        }
    }
}

/// Runs `cmd`, killing it when it takes longer than `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    use std::process::Stdio;
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("{cmd:?} did not end within {limit:?}; stderr: {}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a release's program and returns what it printed, trying again while the file is
/// briefly busy (another thread of this process may be forking with it open for writing).
pub fn run_program(path: &Path) -> Result<String, String> {
    for _ in 0..50 {
        match Command::new(path).output() {
            Ok(out) if out.status.success() => return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
            Ok(out) => return Err(format!("{} exited with {}", path.display(), out.status)),
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("cannot run {}: {e}", path.display())),
        }
    }
    Err(format!("{} stayed busy", path.display()))
}
