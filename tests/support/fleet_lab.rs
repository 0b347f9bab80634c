//! A fleet of simulated Pis for the rolling-update tests: each device an install root with
//! release 0.0.1 installed and current, its own state, logs, configuration and port on
//! loopback, and all of them updating from one signed repository that publishes this build
//! as the next release.
//!
//! Each device has a supervisor thread standing in for systemd: it runs the device's ops
//! agent and server from `current/bin`, and restarts both when `current` changes (the agent
//! switched it for an update or a rollback and asked for the restart). A device marked
//! broken cannot run the new release: its new server never comes up, as on hardware the
//! release does not support, so its agent rolls the update back.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mcp_raspi::update::{deb, release};

use super::deb::DebSpec;
use super::update_repo::{arch, chown_tree, deb_name, Device, Scene};
use super::{config_yaml, is_root, start_agent_program, Server, UNPRIVILEGED};

/// The release every device runs at the start.
pub const OLD: &str = "0.0.1";
/// The release the repository publishes: this build.
pub const NEW: &str = env!("CARGO_PKG_VERSION");
/// How long a new release has to prove healthy before its agent rolls it back.
const HEALTH_TIMEOUT_SECONDS: u64 = 5;
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
            let port = free_port();
            let config = dir.join("config.yml");
            std::fs::write(&config, device_config(&dir, &layout, port)).unwrap();
            prepared.push((id, layout, config, port));
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
        let mut yaml = String::from(
            "fleet:\n  id: lab\n  region: loopback\n  connection:\n    url: \"http://{hostname}/mcp\"\n    \
             credential: { token_env: LAB_TOKEN }\n    timeout_seconds: 5\n    concurrency: 16\n  devices:\n",
        );
        for d in &devices {
            yaml.push_str(&format!("    - {{ id: {}, hostname: \"{}\", model: pi4, role: sensor }}\n", d.id, d.addr));
        }
        let fleet_file = base.join("fleet-config.yml");
        std::fs::write(&fleet_file, yaml).unwrap();
        Lab { devices, fleet_file, scene }
    }
}

/// A port on loopback nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
        "updates:\n  server_url: \"{}\"\n  keys_dir: {}\n  health_timeout_seconds: {HEALTH_TIMEOUT_SECONDS}\n",
        layout.server_url,
        layout.keys_dir.display()
    );
    // The test configuration has an `updates` section already (its OS updates): extend it.
    config_yaml(dir, None, &extra).replacen("updates:\n", &updates, 1)
}

/// What runs on a device: its agent and server, or its agent alone when the server cannot
/// start on this release.
enum Running {
    Both(Server),
    AgentOnly(Child),
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::AgentOnly(agent) = self {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }
}

/// systemd's part for one device: start the programs of `current`, and start them again
/// when `current` names another release, until `stop`.
fn supervise(root: &Path, config: &Path, broken: &AtomicBool, stop: &AtomicBool, started: std::sync::mpsc::Sender<()>) {
    let current = root.join("current");
    let release = || std::fs::read_link(&current).ok().map(|l| l.file_name().unwrap().to_string_lossy().into_owned());
    let mut running: Option<(String, Running)> = None;
    while !stop.load(Ordering::SeqCst) {
        let now = release();
        if now.is_some() && now.as_deref() != running.as_ref().map(|(r, _)| r.as_str()) {
            if running.is_some() {
                // The agent asks for the restart a moment after it switched `current`.
                std::thread::sleep(RESTART_AFTER);
            }
            running = None;
            let Some(now) = release() else { continue };
            let bin = current.join("bin");
            let programs = if now == NEW && broken.load(Ordering::SeqCst) {
                Running::AgentOnly(start_agent_program(&bin.join("raspi-ops-agent"), config))
            } else {
                Running::Both(Server::from_release(&bin, config))
            };
            running = Some((now, programs));
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
