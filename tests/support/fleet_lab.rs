//! A fleet of simulated Pis for the rolling-update tests: each device an install root with
//! release 0.0.1 installed and current, its own state, logs, configuration and port on
//! loopback, and all of them updating from one signed repository that publishes this build
//! as the next release.
//!
//! The fleet file gives each device its whole configuration, and each device starts with the
//! file it renders, trusting the fleet's configuration key (`config deploy`).
//!
//! Each device has a supervisor thread standing in for systemd: it runs the device's ops
//! agent and server from `current/bin`, and restarts both when `current` changes (the agent
//! switched it for an update or a rollback and asked for the restart) or when the
//! configuration file changes (a hand edit and its restart, or a deployment's). A device marked
//! broken cannot run the new release: its new server never comes up, as on hardware the
//! release does not support, so its agent rolls the update back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mcp_raspi::fleet::render::render;
use mcp_raspi::fleet::Fleet;
use mcp_raspi::update::{deb, release};

use super::deb::DebSpec;
use super::update_repo::{arch, chown_tree, deb_name, Device, Scene};
use super::{config_yaml, is_root, start_agent_program, Server, ADMIN_TOKEN, UNPRIVILEGED};

/// The release every device runs at the start.
pub const OLD: &str = "0.0.1";
/// The release the repository publishes: this build.
pub const NEW: &str = env!("CARGO_PKG_VERSION");
/// How long a new release (or configuration) has to prove healthy before it is rolled back:
/// a broken device waits this long, and a healthy one on a loaded machine needs the margin.
const HEALTH_TIMEOUT_SECONDS: u64 = 10;
/// The agent restarts the services this long after switching `current` (its RESTART_DELAY),
/// and the supervisor a little after that.
const RESTART_AFTER: Duration = Duration::from_millis(1200);

/// The directory of this build's programs.
fn programs() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_mcp-raspi-server")).parent().unwrap().to_path_buf()
}

/// One simulated Pi.
pub struct LabDevice {
    pub id: String,
    pub addr: String,
    pub layout: Device,
    broken: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    supervisor: Option<JoinHandle<()>>,
}

impl LabDevice {
    /// The release `current` names.
    pub fn current(&self) -> String {
        let link = std::fs::read_link(self.layout.install_root.join("current")).unwrap();
        link.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// The device's `version.json`.
    pub fn state(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.layout.state_dir.join("version.json")).unwrap()).unwrap()
    }

    /// Whether the new release can run here.
    pub fn set_broken(&self, broken: bool) {
        self.broken.store(broken, Ordering::SeqCst);
    }
}

impl Drop for LabDevice {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.supervisor.take() {
            let _ = handle.join();
        }
    }
}

/// The fleet, its repository and its fleet file.
pub struct Lab {
    pub devices: Vec<LabDevice>,
    pub fleet_file: PathBuf,
    /// The repository (its server) and the directory everything lives in.
    pub scene: Scene,
}

impl Lab {
    /// `count` devices `dev-00`…, those in `broken` unable to run the new release, each
    /// started and answering.
    pub fn start(count: usize, broken: &[usize]) -> Lab {
        let scene = Scene::starting_with(DebSpec::new(OLD, arch()).running(&programs()));
        let new_deb = scene.pool_deb(&DebSpec::new(NEW, arch()).running(&programs()));
        scene.publish(&scene.manifest(NEW, &new_deb));
        let base = scene.dir.path().to_path_buf();
        let payload = base.join("publisher/payload-lab");
        let info = deb::DebInfo { package: "mcp-raspi".into(), version: OLD.into(), architecture: arch().into() };
        deb::extract_payload(&base.join("publisher").join(deb_name(OLD, arch())), &payload, &info, Default::default())
            .unwrap();
        let key_file = format!("{}.pub", scene.key.id());
        std::fs::create_dir_all(base.join("fleet-keys")).unwrap();
        let config_key = mcp_raspi::update::manifest::keygen(&base.join("fleet-keys")).unwrap();
        let config_key_file = config_key.public_path.file_name().unwrap().to_owned();
        let width = if count > 100 { 3 } else { 2 };
        let mut prepared = Vec::new();
        for i in 0..count {
            let id = format!("dev-{i:0width$}");
            let dir = base.join("devices").join(&id);
            let layout = Device::at(&dir, &scene.server.url());
            std::fs::create_dir_all(&layout.keys_dir).unwrap();
            std::fs::create_dir_all(&layout.state_dir).unwrap();
            std::fs::copy(scene.keys_dir.join(&key_file), layout.keys_dir.join(&key_file)).unwrap();
            release::install_release(&payload, &layout.install_root, OLD).unwrap();
            layout.installation().record_package_install(OLD).unwrap();
            std::fs::create_dir_all(dir.join("config-keys")).unwrap();
            std::fs::copy(&config_key.public_path, dir.join("config-keys").join(&config_key_file)).unwrap();
            let port = free_port();
            prepared.push((id, layout, dir.join("config.yml"), port));
        }
        // The fleet file gives each device its whole configuration (the template only what
        // they share), and each device starts with the file it renders.
        let mut yaml = String::from(
            "fleet:\n  id: lab\n  region: loopback\n  config_key_file: {key}\n  connection:\n    \
             url: \"http://{hostname}/mcp\"\n    credential: { token_env: LAB_TOKEN }\n    timeout_seconds: 5\n    \
             concurrency: 16\n  config_template:\n    logging: { level: info }\n  devices:\n",
        )
        .replace("{key}", &config_key.secret_path.strip_prefix(&base).unwrap().display().to_string());
        for (id, layout, config, port) in &prepared {
            let overrides = device_config(config.parent().unwrap(), layout, *port);
            let overrides: serde_json::Value = serde_saphyr::from_str(&overrides).unwrap();
            yaml.push_str(&format!(
                "    - {{ id: {id}, hostname: \"127.0.0.1:{port}\", model: pi4, role: sensor, config: {overrides} }}\n"
            ));
        }
        let fleet_file = base.join("fleet-config.yml");
        std::fs::write(&fleet_file, &yaml).unwrap();
        let fleet = Fleet::parse(&yaml, "fleet-config.yml").unwrap();
        for (device, (_, _, config, _)) in fleet.devices.iter().zip(&prepared) {
            std::fs::write(config, render(&fleet, device).unwrap().text).unwrap();
        }
        if is_root() {
            chown_tree(&base, UNPRIVILEGED);
        }
        let mut devices = Vec::new();
        for (i, (id, layout, config, port)) in prepared.into_iter().enumerate() {
            let broken = Arc::new(AtomicBool::new(broken.contains(&i)));
            let stop = Arc::new(AtomicBool::new(false));
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let supervisor = {
                let (root, broken, stop) = (layout.install_root.clone(), broken.clone(), stop.clone());
                std::thread::spawn(move || supervise(&root, &config, &broken, &stop, started_tx))
            };
            started_rx.recv_timeout(Duration::from_secs(30)).expect("the device started");
            devices.push(LabDevice {
                id,
                addr: format!("127.0.0.1:{port}"),
                layout,
                broken,
                stop,
                supervisor: Some(supervisor),
            });
        }
        Lab { devices, fleet_file, scene }
    }
}

impl Lab {
    /// Runs `mcp-fleet` on the lab's fleet file with `args`, as a workstation would.
    pub fn fleet(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_mcp-fleet"))
            .arg("--file")
            .arg(&self.fleet_file)
            .args(args)
            .env("LAB_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap()
    }
}

/// A port on loopback for a device, its own for the life of the test process: below the
/// kernel's ephemeral range (32768 and up), so that no client connection takes it while its
/// server restarts, and never handed to two devices of labs running side by side.
fn free_port() -> u16 {
    use std::sync::atomic::AtomicU16;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(0, 20_000 + (std::process::id() % 4000) as u16, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_768, "the lab ran out of ports below the ephemeral range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The test configuration on a fixed port, with the device's install root, state and keys,
/// and the repository to update from.
fn device_config(dir: &Path, layout: &Device, port: u16) -> String {
    let extra = format!(
        "server:\n  listen: \"127.0.0.1:{port}\"\npaths:\n  state_dir: {}\n  install_dir: {}\n",
        layout.state_dir.display(),
        layout.install_root.display()
    );
    let updates = format!(
        "updates:\n  server_url: \"{}\"\n  keys_dir: {}\n  health_timeout_seconds: {HEALTH_TIMEOUT_SECONDS}\n  \
         config: {{ enabled: true, keys_dir: {}, health_timeout_seconds: {HEALTH_TIMEOUT_SECONDS} }}\n",
        layout.server_url,
        layout.keys_dir.display(),
        dir.join("config-keys").display()
    );
    // The test configuration has an `updates` section already (its OS updates): extend it.
    config_yaml(dir, None, &extra).replacen("updates:\n", &updates, 1)
}

/// What runs on a device: its agent, and its server unless it could not start (this
/// release cannot run here, or its configuration does not let it listen).
struct Running {
    agent: Child,
    _server: Option<Server>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

/// What the device runs: the release `current` names and the configuration file's bytes.
fn what_runs(current: &Path, config: &Path) -> Option<(String, Vec<u8>)> {
    let release = std::fs::read_link(current).ok()?.file_name()?.to_string_lossy().into_owned();
    Some((release, std::fs::read(config).ok()?))
}

/// systemd's part for one device: start the programs of `current`, and start them again
/// when `current` names another release, until `stop`.
fn supervise(root: &Path, config: &Path, broken: &AtomicBool, stop: &AtomicBool, started: std::sync::mpsc::Sender<()>) {
    let current = root.join("current");
    let mut running: Option<((String, Vec<u8>), Running)> = None;
    while !stop.load(Ordering::SeqCst) {
        let now = what_runs(&current, config);
        if now.is_some() && now.as_ref() != running.as_ref().map(|(w, _)| w) {
            let release_changed = running.as_ref().is_some_and(|((r, _), _)| Some(r) != now.as_ref().map(|(r, _)| r));
            if release_changed {
                // The agent asks for the restart a moment after it switched `current`.
                std::thread::sleep(RESTART_AFTER);
            }
            running = None;
            let Some(now) = what_runs(&current, config) else { continue };
            let bin = current.join("bin");
            let agent = start_agent_program(&bin.join("raspi-ops-agent"), config);
            let server = if now.0 == NEW && broken.load(Ordering::SeqCst) {
                None
            } else {
                // A server that cannot start (its configuration does not let it listen) is
                // what systemd would see fail: the agent runs on, the device waits.
                Server::try_from_release_alone(&bin, config).ok()
            };
            running = Some((now, Running { agent, _server: server }));
            let _ = started.send(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `check` holds, at most `limit`.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}
