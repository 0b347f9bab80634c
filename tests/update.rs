//! The self-update as a device runs it, against a real repository on loopback: every way a
//! release can be wrong is refused with a message naming what is wrong and leaves the
//! install tree and `version.json` exactly as they were; and an update killed at any step
//! leaves a release that runs, named by both `current` and `version.json`, from which the
//! next start and the next update carry on.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mcp_raspi::update::download::{FetchSettings, Progress};
use mcp_raspi::update::install::Step;
use mcp_raspi::update::manifest;
use mcp_raspi::update::release;
use mcp_raspi::update::resolve::Target;
use mcp_raspi::update::state::{Phase, Reconciled, UpdateStatus, VersionState};

use crate::support::deb::{DebSpec, PROGRAMS};
use crate::support::file_server::Fault;
use crate::support::update_repo::{
    arch, deb_name, new_key, other_arch, quick_fetch, quietly, run_program, Device, Hooks, Scene, NEW, NEWER, OLD,
};

/// Longest a CLI run may take before it counts as hung; each case ends within a second.
const CLI_LIMIT: Duration = Duration::from_secs(30);

fn version(v: &str) -> Target {
    Target::Version(semver::Version::parse(v).unwrap())
}

// --- refusals -----------------------------------------------------------------------------------

/// The way a case reaches the update code.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `mcp-raspi update server --no-wait`, the operator's command.
    Cli,
    /// resolve + download + install, what the server and the agent do.
    Library,
}

/// Done to the downloaded package before the installer gets it.
type Meddle = Box<dyn FnMut(&Path)>;
/// A check once a refusal is in.
type Check = fn(&Scene) -> Result<(), String>;

/// What a case asks for once its repository is set up.
struct Ask {
    target: Target,
    max_download_mb: u64,
    settings: FetchSettings,
    /// Between the download and the install (library only): what a compromised server
    /// process could do to the file it hands over.
    meddle: Option<Meddle>,
}

impl Ask {
    fn version(v: &str) -> Ask {
        Ask { target: version(v), max_download_mb: 20, settings: FetchSettings::default(), meddle: None }
    }

    fn channel() -> Ask {
        Ask { target: Target::Channel("stable".into()), ..Ask::version(NEW) }
    }
}

struct Case {
    name: &'static str,
    via: Via,
    /// Sets up the repository; returns what to ask for.
    setup: fn(&Scene) -> Ask,
    /// Fragments the refusal must contain.
    expect: &'static [&'static str],
    /// A further check once the refusal is in.
    after: Option<Check>,
}

/// The channel's manifest of a good 0.2.0 with its bytes changed after signing (a space
/// more, which changes no field).
fn altered_after_signing(scene: &Scene) -> Ask {
    scene.release(NEW);
    let path = scene.repo.join("stable/manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let altered = text.replacen("\"channel\": ", "\"channel\":  ", 1);
    assert_ne!(altered, text);
    std::fs::write(&path, altered).unwrap();
    Ask::channel()
}

fn signed_by_an_unknown_key(scene: &Scene) -> Ask {
    let deb = scene.pool_deb(&DebSpec::new(NEW, arch()));
    let stranger_dir = scene.dir.path().join("publisher/stranger");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let stranger = new_key(&stranger_dir);
    scene.publish_with(&scene.manifest(NEW, &deb), &stranger);
    Ask::channel()
}

/// Changes one byte in the middle of `path`, keeping its size.
fn flip_a_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

fn package_altered_on_the_server(scene: &Scene) -> Ask {
    let deb = scene.release(NEW);
    flip_a_byte(&deb);
    Ask::channel()
}

fn package_altered_after_download(scene: &Scene) -> Ask {
    scene.release(NEW);
    Ask { meddle: Some(Box::new(flip_a_byte)), ..Ask::channel() }
}

fn package_replaced_by_a_symlink(scene: &Scene) -> Ask {
    scene.release(NEW);
    let aside = scene.dir.path().join("publisher/aside.deb");
    let meddle = move |path: &Path| {
        std::fs::rename(path, &aside).unwrap();
        std::os::unix::fs::symlink(&aside, path).unwrap();
    };
    Ask { meddle: Some(Box::new(meddle)), ..Ask::channel() }
}

fn pool_path(version: &str) -> String {
    format!("/pool/{}", deb_name(version, arch()))
}

fn served_longer_than_the_manifest_says(scene: &Scene) -> Ask {
    scene.release(NEW);
    scene.server.fault(&pool_path(NEW), Fault::Longer { extra: 64 << 20, announced: false });
    Ask::channel()
}

fn announced_longer_than_the_manifest_says(scene: &Scene) -> Ask {
    scene.release(NEW);
    scene.server.fault(&pool_path(NEW), Fault::Longer { extra: 64 << 20, announced: true });
    Ask::channel()
}

fn the_client_hung_up_early(scene: &Scene) -> Result<(), String> {
    if !scene.server.wait_idle(Duration::from_secs(15)) {
        return Err("the server was still sending 15 s after the client ended".into());
    }
    let served = scene.server.served(&pool_path(NEW));
    let last = served.last().ok_or("the package was never requested")?;
    if last.client_left && last.sent < last.meant {
        Ok(())
    } else {
        Err(format!("the server sent {} of {} bytes, client left: {}", last.sent, last.meant, last.client_left))
    }
}

fn larger_than_the_download_cap(scene: &Scene) -> Ask {
    let deb = scene.pool_deb(&DebSpec::new(NEW, arch()).padded(1536 * 1024));
    scene.publish(&scene.manifest(NEW, &deb));
    Ask { max_download_mb: 1, ..Ask::channel() }
}

fn the_package_was_never_requested(scene: &Scene) -> Result<(), String> {
    match scene.server.served(&pool_path(NEW)).len() {
        0 => Ok(()),
        n => Err(format!("the package was requested {n} times")),
    }
}

fn an_older_version(scene: &Scene) -> Ask {
    scene.release("0.0.9");
    Ask::version("0.0.9")
}

fn the_running_version(scene: &Scene) -> Ask {
    scene.release(OLD);
    Ask::version(OLD)
}

fn an_expired_manifest(scene: &Scene) -> Ask {
    let deb = scene.pool_deb(&DebSpec::new(NEW, arch()));
    let mut manifest = scene.manifest(NEW, &deb);
    let now = std::time::SystemTime::now();
    manifest.released_at = now - Duration::from_secs(10 * 86_400);
    manifest.expires_at = now - Duration::from_secs(86_400);
    scene.publish(&manifest);
    Ask::channel()
}

fn only_another_architecture(scene: &Scene) -> Ask {
    let deb = scene.pool_deb(&DebSpec::new(NEW, other_arch()));
    scene.publish(&scene.manifest_for(NEW, &[(other_arch(), &deb)]));
    Ask::channel()
}

fn another_package_name(scene: &Scene) -> Ask {
    let deb = scene.pool_deb(&DebSpec::new(NEW, arch()));
    let mut manifest = scene.manifest(NEW, &deb);
    manifest.name = "mcp-raspi-tools".into();
    scene.publish(&manifest);
    Ask::channel()
}

fn min_upgrade_from_above_the_running_version(scene: &Scene) -> Ask {
    let deb = scene.pool_deb(&DebSpec::new(NEW, arch()));
    let mut manifest = scene.manifest(NEW, &deb);
    manifest.min_upgrade_from = Some(semver::Version::new(0, 1, 5));
    scene.publish(&manifest);
    Ask::channel()
}

fn cut_short(scene: &Scene) -> Ask {
    let deb = scene.release(NEW);
    let size = std::fs::metadata(&deb).unwrap().len();
    scene.server.fault(&pool_path(NEW), Fault::Truncate { keep: size / 2 });
    Ask::channel()
}

/// A correctly signed manifest.json of more than 64 KiB (padded with JSON whitespace).
fn an_oversized_manifest(scene: &Scene) -> Ask {
    let deb = scene.pool_deb(&DebSpec::new(NEW, arch()));
    let mut manifest = scene.manifest(NEW, &deb);
    for artifact in manifest.artifacts.values_mut() {
        artifact.url = format!("../{}", artifact.url);
    }
    let mut bytes = manifest.to_json_bytes().unwrap();
    let end = bytes.iter().rposition(|&b| b == b'}').unwrap();
    bytes.splice(end..end, std::iter::repeat_n(b' ', 70 * 1024));
    let signature = manifest::sign(&bytes, &scene.key);
    scene.place("stable", &bytes, &signature);
    Ask::channel()
}

/// A manifest.json that goes on past 64 KiB with no length announced.
fn an_endless_manifest(scene: &Scene) -> Ask {
    scene.release(NEW);
    scene.server.fault("/stable/manifest.json", Fault::Longer { extra: 1 << 20, announced: false });
    Ask::channel()
}

fn nothing_published(_: &Scene) -> Ask {
    Ask::channel()
}

fn the_package_fails_with_500(scene: &Scene) -> Ask {
    scene.release(NEW);
    scene.server.fault(&pool_path(NEW), Fault::Status(500));
    Ask::channel()
}

fn the_package_stalls(scene: &Scene) -> Ask {
    scene.release(NEW);
    scene.server.fault(&pool_path(NEW), Fault::Stall { after: 4096, pause: Duration::from_secs(5) });
    Ask { settings: quick_fetch(), ..Ask::channel() }
}

fn the_manifest_stalls(scene: &Scene) -> Ask {
    scene.release(NEW);
    scene.server.fault("/stable/manifest.json", Fault::Stall { after: 0, pause: Duration::from_secs(5) });
    Ask { settings: quick_fetch(), ..Ask::channel() }
}

/// A package whose control file says another architecture, listed and signed correctly
/// under this machine's.
fn control_names_another_architecture(scene: &Scene) -> Ask {
    let path = scene.repo.join("pool").join(deb_name(NEW, arch()));
    DebSpec::new(NEW, other_arch()).write(&path);
    scene.publish(&scene.manifest(NEW, &path));
    Ask::channel()
}

fn control_names_another_package(scene: &Scene) -> Ask {
    let path = scene.repo.join("pool").join(deb_name(NEW, arch()));
    DebSpec { package: "mcp-raspi-tools".into(), ..DebSpec::new(NEW, arch()) }.write(&path);
    scene.publish(&scene.manifest(NEW, &path));
    Ask::channel()
}

fn control_names_another_version(scene: &Scene) -> Ask {
    let path = scene.repo.join("pool").join(deb_name(NEW, arch()));
    DebSpec::new("0.2.1", arch()).write(&path);
    scene.publish(&scene.manifest(NEW, &path));
    Ask::channel()
}

fn case(name: &'static str, via: Via, setup: fn(&Scene) -> Ask, expect: &'static [&'static str]) -> Case {
    Case { name, via, setup, expect, after: None }
}

fn cases() -> Vec<Case> {
    vec![
        case("bad signature", Via::Cli, altered_after_signing, &["signature does not verify with key"]),
        case("unknown key id", Via::Cli, signed_by_an_unknown_key, &["which is not trusted here", "trusted keys:"]),
        case("tampered .deb (on the server)", Via::Cli, package_altered_on_the_server, &["SHA-256 mismatch"]),
        case(
            "tampered .deb (after download)",
            Via::Library,
            package_altered_after_download,
            &["has SHA-256", "altered or damaged"],
        ),
        Case {
            after: Some(the_client_hung_up_early),
            ..case(
                "larger than the manifest says",
                Via::Cli,
                served_longer_than_the_manifest_says,
                &["sent more than the manifest's"],
            )
        },
        Case {
            after: Some(the_client_hung_up_early),
            ..case(
                "larger than the manifest says (announced)",
                Via::Cli,
                announced_longer_than_the_manifest_says,
                &["the server announces", "bytes but the manifest says"],
            )
        },
        Case {
            after: Some(the_package_was_never_requested),
            ..case(
                "larger than updates.max_download_mb",
                Via::Cli,
                larger_than_the_download_cap,
                &["over the download limit of 1048576 bytes"],
            )
        },
        case("downgrade", Via::Cli, an_older_version, &["0.0.9 is older than 0.1.0"]),
        case("same version", Via::Cli, the_running_version, &["0.1.0 is the version running here"]),
        case("expired manifest", Via::Cli, an_expired_manifest, &["the manifest expired at"]),
        case("wrong architecture", Via::Cli, only_another_architecture, &["no package for architecture"]),
        case("wrong package name", Via::Cli, another_package_name, &["for package \"mcp-raspi-tools\""]),
        case(
            "min_upgrade_from not met",
            Via::Cli,
            min_upgrade_from_above_the_running_version,
            &["can only be installed over 0.1.5", "0.1.0 runs here"],
        ),
        case("truncated download", Via::Cli, cut_short, &["truncated: got"]),
        case("oversized manifest", Via::Cli, an_oversized_manifest, &["more than the 65536 allowed"]),
        case("oversized manifest (unannounced)", Via::Cli, an_endless_manifest, &["sent more than the 65536 bytes"]),
        case("HTTP 404", Via::Cli, nothing_published, &["404", "check the release URL"]),
        case("HTTP 500", Via::Cli, the_package_fails_with_500, &["500", "the server failed"]),
        case("timeout (package stalls)", Via::Library, the_package_stalls, &["read timeout"]),
        case("timeout (manifest stalls)", Via::Library, the_manifest_stalls, &["read timeout"]),
        case(
            "control: other architecture",
            Via::Cli,
            control_names_another_architecture,
            &["but the manifest describes mcp-raspi 0.2.0 for"],
        ),
        case(
            "control: other package",
            Via::Library,
            control_names_another_package,
            &["the package is mcp-raspi-tools 0.2.0", "but the manifest describes mcp-raspi 0.2.0"],
        ),
        case(
            "control: other version",
            Via::Library,
            control_names_another_version,
            &["the package is mcp-raspi 0.2.1", "but the manifest describes mcp-raspi 0.2.0"],
        ),
        case("package file is a symlink", Via::Library, package_replaced_by_a_symlink, &["is a symlink"]),
    ]
}

/// Runs one case on a fresh device; returns the refusal's message, or what went wrong.
fn run_case(case: &Case) -> Result<String, String> {
    let scene = Scene::new();
    let mut ask = (case.setup)(&scene);
    let message = match case.via {
        Via::Cli => {
            let config = scene.config(ask.max_download_mb);
            scene.hand_to_cli_user();
            let before = scene.fingerprint();
            let args: Vec<String> = match &ask.target {
                Target::Version(v) => vec!["--version".into(), v.to_string()],
                Target::Channel(c) => vec!["--channel".into(), c.clone()],
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = scene.cli_update(&config, &args, CLI_LIMIT);
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if out.status.success() {
                return Err(format!("the CLI succeeded: {}", String::from_utf8_lossy(&out.stdout)));
            }
            unchanged(&before, &scene.fingerprint())?;
            stderr.lines().last().unwrap_or("").trim_start_matches("mcp-raspi: ").to_string()
        }
        Via::Library => {
            let before = scene.fingerprint();
            let mut meddle = ask.meddle.take();
            let (mut progress, mut step) = (|_: Progress| {}, |_: &Step| {});
            let mut downloaded = |path: &Path| {
                if let Some(m) = meddle.as_mut() {
                    m(path)
                }
            };
            let mut hooks = Hooks { progress: &mut progress, downloaded: &mut downloaded, step: &mut step };
            let result = scene.update_through_library(&ask.target, ask.settings.clone(), &mut hooks);
            let message = match result {
                Ok(installed) => return Err(format!("the update succeeded: {installed:?}")),
                Err(message) => message,
            };
            unchanged(&before, &scene.fingerprint())?;
            message
        }
    };
    let missing: Vec<&&str> = case.expect.iter().filter(|e| !message.contains(**e)).collect();
    if !missing.is_empty() {
        return Err(format!("the message lacks {missing:?}: {message}"));
    }
    if let Some(after) = case.after {
        after(&scene)?;
    }
    // The installer's private copies are gone too (the downloads may stay, to be resumed).
    {
        let staging = scene.state_dir.join("staging");
        let left: Vec<String> = std::fs::read_dir(&staging)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".payload") || name.ends_with(".deb"))
            .collect();
        if !left.is_empty() {
            return Err(format!("left in {}: {left:?}", staging.display()));
        }
    }
    Ok(message.replace(&scene.server.url(), "<repo>").replace(&scene.dir.path().display().to_string(), "<dir>"))
}

fn unchanged(
    before: &crate::support::update_repo::Fingerprint,
    after: &crate::support::update_repo::Fingerprint,
) -> Result<(), String> {
    if before == after {
        Ok(())
    } else {
        Err(format!(
            "the install tree or version.json changed ({} -> {}):\n{}",
            before.digest(),
            after.digest(),
            before.difference(after)
        ))
    }
}

#[test]
fn every_wrong_release_is_refused_with_its_reason_and_changes_nothing() {
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for case in cases() {
        let via = if case.via == Via::Cli { "cli" } else { "library" };
        let start = Instant::now();
        let outcome = run_case(&case);
        let ms = start.elapsed().as_millis();
        match outcome {
            Ok(message) => rows.push((case.name, via, ms, "refused, unchanged", message)),
            Err(problem) => {
                failures.push(format!("{}: {problem}", case.name));
                rows.push((case.name, via, ms, "FAILED", problem));
            }
        }
    }
    let mut table = String::from("\nnegative matrix: case | via | ms | result | message\n");
    for (name, via, ms, result, message) in &rows {
        table.push_str(&format!("{name:<42} | {via:<7} | {ms:>5} | {result} | {message}\n"));
    }
    table.push_str(&format!("{} cases in {:.1} s\n", rows.len(), started.elapsed().as_secs_f64()));
    eprintln!("{table}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_signed_release_for_this_device_is_installed_and_the_cli_offers_it() {
    let scene = Scene::new();
    scene.release(NEW);
    let config = scene.config(20);
    scene.hand_to_cli_user();
    let out = scene.cli_update(&config, &["--dry-run"], CLI_LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("0.2.0 can be installed"), "{stdout}");

    let installed =
        quietly(|hooks| scene.update_through_library(&version(NEW), FetchSettings::default(), hooks)).unwrap();
    assert_eq!((installed.from.as_deref(), installed.to.as_str()), (Some(OLD), NEW));
    let inst = scene.installation();
    assert_eq!(inst.current().unwrap().as_deref(), Some(NEW));
    for program in PROGRAMS {
        assert_eq!(run_program(&scene.device.install_root.join("current/bin").join(program)).unwrap(), NEW);
    }
    assert_eq!(inst.reconcile().unwrap().0, Reconciled::HealthCheckDue);
    let state = inst.commit().unwrap();
    assert_eq!(state.previous_good_version.as_deref(), Some(OLD));
}

#[test]
fn root_gives_what_it_installs_to_the_owner_of_the_install_root() {
    use std::os::unix::fs::MetadataExt;
    if !crate::support::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let scene = Scene::new();
    scene.release(NEW);
    let owner = crate::support::UNPRIVILEGED;
    std::os::unix::fs::chown(&scene.device.install_root, Some(owner), Some(owner)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcp-raspi"));
    cmd.args(["update", "server", "--no-wait", "--config"]).arg(scene.config(20));
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let out = crate::support::update_repo::run_bounded(cmd, CLI_LIMIT);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let release = scene.device.install_root.join("releases").join(NEW);
    for path in [release.clone(), release.join("bin"), scene.device.install_root.join("current")] {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (owner, owner), "{}", path.display());
    }
    assert_eq!(std::fs::metadata(scene.device.state_dir.join("version.json")).unwrap().uid(), owner);
}

// --- kill points ---------------------------------------------------------------------------------

const KILL_POINT: &str = "MCP_RASPI_TEST_KILL_POINT";
const KILL_DIR: &str = "MCP_RASPI_TEST_KILL_DIR";
const KILL_REPO: &str = "MCP_RASPI_TEST_KILL_REPO";
/// Set when the child updates with the delta from the installed release.
const KILL_DELTA: &str = "MCP_RASPI_TEST_KILL_DELTA";
const REACHED: &str = "kill point reached:";
/// How long a child waits at its kill point, and the parent for it to get there.
const KILL_WAIT: Duration = Duration::from_secs(20);

/// Where an update is interrupted, in the order an update gets there.
const KILL_POINTS: [&str; 13] = [
    "mid-download",
    "after download",
    "after verify (Copied)",
    "after begin (Begun)",
    "mid-extract (Extracting >= 3)",
    "after extract (Extracted)",
    "before rename (Renaming)",
    "after rename (Installed)",
    "before flip (Switching)",
    "after flip (Switched)",
    "before commit",
    "during rollback (before its flip)",
    "during rollback (after its flip)",
];

/// Whether `current` moved to the new release before the kill.
fn flipped(point: &str) -> bool {
    matches!(point, "after flip (Switched)" | "before commit")
}

fn rolling_back(point: &str) -> bool {
    point.starts_with("during rollback")
}

/// Tells the parent that the kill point is reached, and waits to be killed.
fn reached(point: &str) -> ! {
    println!("{REACHED} {point}");
    let _ = std::io::stdout().flush();
    std::thread::sleep(KILL_WAIT);
    panic!("not killed within {KILL_WAIT:?} at {point}");
}

/// The update a kill-point test interrupts, in a process of its own: run by
/// [`an_update_killed_at_any_step_leaves_a_release_that_runs_and_a_state_that_names_it`].
#[test]
#[ignore = "run by the kill-point test, in a process it kills"]
fn kill_point_child() {
    let Ok(point) = std::env::var(KILL_POINT) else { return };
    let device = Device::at(Path::new(&std::env::var(KILL_DIR).unwrap()), &std::env::var(KILL_REPO).unwrap());
    let at = |name: &str| point == name;
    let mut progress = |p: Progress| {
        // Past 128 KiB, at least 64 KiB went through the download's 64 KiB write buffer
        // into the partial file, for the next attempt to resume.
        if point == "mid-download" && p.done >= 128 * 1024 && p.done < p.total {
            reached(&point)
        }
    };
    let mut downloaded = |_: &Path| {
        if at("after download") {
            reached(&point)
        }
    };
    let mut step = |step: &Step| {
        let now = match step {
            Step::Copied { .. } => at("after verify (Copied)"),
            Step::Begun => at("after begin (Begun)"),
            Step::Extracting { entries } => *entries >= 3 && at("mid-extract (Extracting >= 3)"),
            Step::Extracted => at("after extract (Extracted)"),
            Step::Renaming => at("before rename (Renaming)"),
            Step::Installed => at("after rename (Installed)"),
            Step::Switching => at("before flip (Switching)"),
            Step::Switched => at("after flip (Switched)"),
            Step::Patched { .. } => at("after rebuild (Patched)"),
            Step::Verified { .. } => false,
        };
        if now {
            reached(&point)
        }
    };
    let mut hooks = Hooks { progress: &mut progress, downloaded: &mut downloaded, step: &mut step };
    if std::env::var_os(KILL_DELTA).is_some() {
        device.update_through_library_delta(&version(NEW), &mut hooks).unwrap();
    } else {
        device.update_through_library(&version(NEW), FetchSettings::default(), &mut hooks).unwrap();
    }
    if at("before commit") {
        reached(&point)
    }
    if rolling_back(&point) {
        // The parent holds the install root's lock, so the rollback stops at its flip.
        println!("{REACHED} installed");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        device.installation().rollback(None, "the health check failed", "health").unwrap();
    }
    panic!("kill point {point:?} was never reached");
}

/// What the parent saw of one kill point.
struct KillRow {
    point: &'static str,
    found: String,
    after: String,
    result: Result<(), String>,
}

#[test]
fn an_update_killed_at_any_step_leaves_a_release_that_runs_and_a_state_that_names_it() {
    run_kill_points(&KILL_POINTS, None, || {
        let scene = Scene::new();
        scene.release(NEWER);
        scene.release(NEW);
        scene
    });
}

#[test]
fn a_delta_update_killed_at_any_step_leaves_a_release_that_runs_and_a_state_that_names_it() {
    // The package's points, and the rebuild; not mid-download (a delta of a few hundred
    // bytes is too short to stop in) nor the rollback's (the same with either download).
    let mut points: Vec<&'static str> =
        KILL_POINTS.into_iter().filter(|p| *p != "mid-download" && !rolling_back(p)).collect();
    let copied = points.iter().position(|p| *p == "after verify (Copied)").unwrap();
    points.insert(copied + 1, "after rebuild (Patched)");
    run_kill_points(&points, Some(KILL_DELTA), || {
        let (scene, _deb, _delta) = delta_scene();
        scene.release(NEWER);
        scene.release(NEW);
        scene
    });
}

/// Kills an update at each of `points`, each on a fresh `scene()`, with `env` set in the
/// child when given, and checks what the next start and the next update make of it.
fn run_kill_points(points: &[&'static str], env: Option<&str>, scene: impl Fn() -> Scene) {
    let started = Instant::now();
    let mut rows = Vec::new();
    for &point in points {
        let scene = scene();
        let mut row = KillRow { point, found: String::new(), after: String::new(), result: Ok(()) };
        row.result =
            kill_at(&scene, point, env, &mut row.found).and_then(|()| next_start(&scene, point, &mut row.after));
        rows.push(row);
    }
    let mut table = String::from("\nkill points: kill point | state found | next start and next update | result\n");
    for row in &rows {
        let result = match &row.result {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("FAILED: {e}"),
        };
        table.push_str(&format!("{:<34} | {} | {} | {result}\n", row.point, row.found, row.after));
    }
    let passed = rows.iter().filter(|r| r.result.is_ok()).count();
    table.push_str(&format!("{passed}/{} kill points pass, in {:.1} s\n", rows.len(), started.elapsed().as_secs_f64()));
    eprintln!("{table}");
    assert_eq!(passed, rows.len(), "{table}");
}

/// Runs the update in a child and SIGKILLs it at `point`; describes what it left in `found`.
fn kill_at(scene: &Scene, point: &str, env: Option<&str>, found: &mut String) -> Result<(), String> {
    if point == "mid-download" {
        // However the client reads the body, it reports progress past 128 KiB before the
        // server stops at 200 KiB, short of the whole package.
        scene.server.fault(&pool_path(NEW), Fault::Stall { after: 200 * 1024, pause: KILL_WAIT });
    }
    let mut command = Command::new(std::env::current_exe().unwrap());
    if let Some(name) = env {
        command.env(name, "1");
    }
    let mut child = command
        .args(["update::kill_point_child", "--exact", "--nocapture", "--include-ignored", "--test-threads=1"])
        .env(KILL_POINT, point)
        .env(KILL_DIR, scene.dir.path())
        .env(KILL_REPO, scene.server.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (lines, markers) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The harness may have begun the line ("test update::kill_point_child ... ").
            if let Some(at) = line.find(REACHED) {
                let _ = lines.send(line[at + REACHED.len()..].trim().to_string());
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let deadline = Instant::now() + KILL_WAIT;
    let wait_for = |what: &str| -> Result<(), String> {
        match markers.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(marker) if marker == what => Ok(()),
            Ok(other) => Err(format!("the child reached {other:?}, not {what:?}")),
            Err(_) => Err(format!("the child did not reach {what:?} within {KILL_WAIT:?}")),
        }
    };

    let mut root_lock = None;
    let outcome = if rolling_back(point) {
        // Holding the install root's lock, which every flip takes, stops the rollback right
        // after it wrote phase rolling_back and before it moves `current`.
        wait_for("installed").and_then(|()| {
            root_lock = Some(lock_install_root(&scene.device.install_root));
            child.stdin.take().unwrap().write_all(b"go\n").map_err(|e| e.to_string())?;
            wait_until(deadline, || {
                scene.installation().state().ok().and_then(|s| s.in_progress().and_then(|u| u.phase))
                    == Some(Phase::RollingBack)
            })
        })
    } else {
        wait_for(point)
    };
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let status = child.wait().unwrap();
    drop(root_lock);
    scene.server.clear_fault(&pool_path(NEW));
    let stderr = errors.join().unwrap_or_default();
    outcome.map_err(|e| format!("{e}; the child's stderr: {}", stderr.trim()))?;
    use std::os::unix::process::ExitStatusExt;
    if status.signal() != Some(nix::libc::SIGKILL) {
        return Err(format!("the child ended with {status} before it was killed: {}", stderr.trim()));
    }
    if point.ends_with("(after its flip)") {
        // No seam lies between the rollback's flip and its last write to version.json: take
        // the flip it was about to take, as it takes it, to leave what a kill there leaves.
        release::flip_current(&scene.device.install_root, OLD).map_err(|e| e.to_string())?;
    }
    *found = describe(&scene.device);
    Ok(())
}

fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> Result<(), String> {
    while !done() {
        if Instant::now() > deadline {
            return Err("the child did not get there in time".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Holds the install root's lock (what every flip takes) until dropped.
fn lock_install_root(root: &Path) -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(root.join(".lock")).unwrap();
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap()
}

/// The link, the state's phase, and leftovers, in a few words.
fn describe(device: &Device) -> String {
    let link = device.installation().current().ok().flatten().unwrap_or_else(|| "none".into());
    let state = device.installation().state().unwrap_or_default();
    let update = match &state.last_update {
        Some(u) if u.status == UpdateStatus::InProgress => {
            format!("in_progress/{}", u.phase.map_or("?", mcp_raspi::update::activate::phase_name))
        }
        Some(u) => u.status.as_str().to_string(),
        None => "none".into(),
    };
    let mut extra = Vec::new();
    let releases = device.install_root.join(release::RELEASES_DIR);
    for entry in std::fs::read_dir(&releases).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".partial") {
            extra.push(name);
        }
    }
    for entry in std::fs::read_dir(device.downloads()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = [".part", ".delta"].into_iter().find(|k| name.ends_with(k)).unwrap_or(".deb");
        extra.push(format!("{kind} {} B", entry.metadata().map(|m| m.len()).unwrap_or(0)));
    }
    for entry in std::fs::read_dir(device.state_dir.join("staging")).into_iter().flatten().flatten() {
        extra.push(format!("staging/{}", entry.file_name().to_string_lossy()));
    }
    let extra = if extra.is_empty() { String::new() } else { format!(", left: {}", extra.join(", ")) };
    format!("link {link}, update {update}{extra}")
}

/// What the next start does (reconcile), checked; then the health check's commit or the next
/// update, checked. Describes it in `after`.
fn next_start(scene: &Scene, point: &str, after: &mut String) -> Result<(), String> {
    let inst = scene.installation();
    let (reconciled, state) = inst.reconcile().map_err(|e| format!("reconcile failed: {e}"))?;
    let link = healthy(scene, &state)?;
    let expected = if flipped(point) { NEW } else { OLD };
    if link != expected {
        return Err(format!("current names {link}, expected {expected} (reconciled: {reconciled:?})"));
    }
    let shown = match &reconciled {
        Reconciled::Corrected(_) => "Corrected".to_string(),
        other => format!("{other:?}"),
    };
    *after = format!("{shown} -> {link}");

    if flipped(point) {
        if reconciled != Reconciled::HealthCheckDue {
            return Err(format!("reconcile found {reconciled:?}, expected HealthCheckDue"));
        }
        // A health check is due: the next update must wait for it.
        let before = scene.fingerprint();
        let refused = quietly(|hooks| scene.update_through_library(&version(NEWER), FetchSettings::default(), hooks));
        match refused {
            Err(message) if message.contains("already under way") => {}
            other => return Err(format!("an update during the health check was not refused as under way: {other:?}")),
        }
        if before != scene.fingerprint() {
            return Err("the refused update changed the tree".into());
        }
        let state = inst.commit().map_err(|e| format!("commit failed: {e}"))?;
        if state.previous_good_version.as_deref() != Some(OLD) {
            return Err(format!("after the commit the previous good version is {:?}", state.previous_good_version));
        }
        after.push_str(", update to 0.3.0 refused (health check due), commit ok");
    } else if rolling_back(point) {
        let wanted = if point.ends_with("(before its flip)") {
            Reconciled::FinishRollback(OLD.into())
        } else {
            Reconciled::Corrected(String::new())
        };
        if std::mem::discriminant(&reconciled) != std::mem::discriminant(&wanted) {
            return Err(format!("reconcile found {reconciled:?}, expected {wanted:?}"));
        }
        let status = state.last_update.as_ref().map(|u| u.status);
        if status != Some(UpdateStatus::RolledBack) {
            return Err(format!("after the rollback the update is {status:?}, not rolled back"));
        }
        after.push_str(", rolled_back");
    } else if !matches!(reconciled, Reconciled::Consistent | Reconciled::Corrected(_)) {
        return Err(format!("reconcile found {reconciled:?}"));
    }
    if state.in_progress().is_some() && !flipped(point) {
        return Err("an update is still recorded as under way".into());
    }

    // The next update goes through, over whatever the interrupted one left.
    let next = if flipped(point) || rolling_back(point) { NEWER } else { NEW };
    let installed = quietly(|hooks| scene.update_through_library(&version(next), FetchSettings::default(), hooks))
        .map_err(|e| format!("the next update to {next} failed: {e}"))?;
    let state = inst.state().map_err(|e| e.to_string())?;
    let link = healthy(scene, &state)?;
    if link != next || installed.to != next {
        return Err(format!("after the next update current names {link}, not {next}"));
    }
    if inst.reconcile().map_err(|e| e.to_string())?.0 != Reconciled::HealthCheckDue {
        return Err("the next update is not due a health check".into());
    }
    inst.commit().map_err(|e| format!("committing the next update failed: {e}"))?;
    let leftovers: Vec<String> = std::fs::read_dir(scene.device.install_root.join(release::RELEASES_DIR))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    if !leftovers.is_empty() {
        return Err(format!("left in releases/ after the next update: {leftovers:?}"));
    }
    // Nor does the installer's staging keep what the killed install copied and unpacked.
    let staged: Vec<String> = std::fs::read_dir(scene.state_dir.join("staging"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !staged.is_empty() {
        return Err(format!("left in staging/ after the next update: {staged:?}"));
    }
    after.push_str(&format!(", next update to {next} ok + committed"));
    if point == "mid-download" {
        // The download the kill cut short was resumed, not started again.
        let resumed =
            scene.server.served(&pool_path(NEW)).iter().any(|s| {
                s.status == 206 && s.range.as_deref().is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-")
            });
        if !resumed {
            return Err("the next update did not resume the partial download".into());
        }
        after.push_str(" (download resumed)");
    }
    Ok(())
}

/// Checks that `current` names a complete release whose programs run and print its version,
/// and that `version.json` names the same; returns that version.
fn healthy(scene: &Scene, state: &VersionState) -> Result<String, String> {
    let link = scene.installation().current().map_err(|e| e.to_string())?.ok_or("current names no release")?;
    if state.current_version.as_deref() != Some(link.as_str()) {
        return Err(format!("version.json says {:?}, current names {link}", state.current_version));
    }
    let dir = scene.device.install_root.join("current");
    for program in PROGRAMS {
        let printed = run_program(&dir.join("bin").join(program))?;
        if printed != link {
            return Err(format!("current/bin/{program} printed {printed:?}, not {link}"));
        }
    }
    if !dir.join("share/config.example.yml").is_file() {
        return Err("current/share/config.example.yml is missing".into());
    }
    Ok(link)
}

/// Turns the experimental feature updates.delta on in the configuration at `config`.
fn with_delta_updates(config: &Path) {
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str(
        "experimental_features:\n  enabled: true\n  features:\n    - name: updates.delta\n      enabled: true\n      \
         acknowledged_risks: true\n",
    );
    std::fs::write(config, text).unwrap();
}

/// Release OLD installed and NEW published with a delta between them; both carry the same
/// 320 KiB of programs, so that the delta is a small part of the package. Returns the
/// scene, NEW's package and the delta.
fn delta_scene() -> (Scene, std::path::PathBuf, std::path::PathBuf) {
    let scene = Scene::starting_with(DebSpec::new(OLD, arch()).padded(320 * 1024));
    let deb = scene.release(NEW);
    let old_deb = scene.dir.path().join("publisher").join(deb_name(OLD, arch()));
    let delta = scene.publish_delta(&old_deb, &deb, NEW);
    (scene, deb, delta)
}

fn pool_file(path: &Path) -> String {
    format!("/pool/{}", path.file_name().unwrap().to_string_lossy())
}

/// Runs `mcp-raspi update server --no-wait` on `scene`, with updates.delta on when `delta`
/// is; it must succeed. Returns what it printed, stdout and stderr.
fn update_with(scene: &Scene, delta: bool) -> String {
    let config = scene.config(20);
    if delta {
        with_delta_updates(&config);
    }
    scene.hand_to_cli_user();
    let out = scene.cli_update(&config, &[], CLI_LIMIT);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert_eq!(scene.installation().current().unwrap().as_deref(), Some(NEW));
    said
}

#[test]
fn with_updates_delta_the_cli_downloads_the_delta_instead_of_the_package() {
    let (scene, deb, delta) = delta_scene();
    let (delta_size, package_size) = (std::fs::metadata(&delta).unwrap().len(), std::fs::metadata(&deb).unwrap().len());
    assert!(delta_size * 20 < package_size, "delta {delta_size} bytes, package {package_size}");
    let said = update_with(&scene, true);
    let via = format!("from the {delta_size}-byte delta of {OLD} instead of the {package_size}-byte package");
    assert!(said.contains(&format!("0.2.0 is installed and current ({via})")), "{said}");
    for program in PROGRAMS {
        assert_eq!(run_program(&scene.device.install_root.join("current/bin").join(program)).unwrap(), NEW);
    }
    let padding =
        std::fs::read(scene.device.install_root.join("releases").join(NEW).join("share/padding.bin")).unwrap();
    assert_eq!(padding.len(), 320 * 1024);
    assert!(scene.server.served(&pool_file(&delta)).iter().any(|s| s.status == 200));
    assert!(scene.server.served(&pool_path(NEW)).is_empty(), "the package was not downloaded");
    let staging = std::fs::read_dir(scene.state_dir.join("staging")).unwrap();
    let left: Vec<_> = staging.flatten().map(|e| e.file_name()).filter(|n| n != "root-downloads").collect();
    assert!(left.is_empty(), "the staging directory keeps {left:?}");
}

#[test]
fn a_delta_that_cannot_be_used_falls_back_to_the_package_and_without_the_feature_none_is_fetched() {
    // The installed release was changed on disk: it is no longer the delta's base.
    let (scene, _deb, _delta) = delta_scene();
    std::fs::write(scene.device.install_root.join("releases").join(OLD).join("share/padding.bin"), b"edited").unwrap();
    let said = update_with(&scene, true);
    assert!(said.contains("not the one the delta was built from"), "{said}");
    assert!(said.contains("downloading the whole package instead"), "{said}");
    assert_eq!(scene.installation().state().unwrap().last_update.unwrap().status, UpdateStatus::InProgress);
    assert!(!scene.server.served(&pool_path(NEW)).is_empty());

    // A damaged index: the package, and the reason.
    let (scene, _deb, delta) = delta_scene();
    std::fs::write(scene.repo.join("stable/deltas.json.sig"), b"{}").unwrap();
    let said = update_with(&scene, true);
    assert!(said.contains("the delta index cannot be used"), "{said}");
    assert!(scene.server.served(&pool_file(&delta)).is_empty());

    // The feature off: the index is not even asked for.
    let (scene, _deb, _delta) = delta_scene();
    update_with(&scene, false);
    assert!(scene.server.served("/stable/deltas.json").is_empty());
    assert!(!scene.server.served(&pool_path(NEW)).is_empty());
}

/// Installs NEW through the library from `file` as a delta, with `index` and `signature` as
/// the server would hand them to the ops agent, against the channel's signed manifest.
fn install_delta(
    scene: &Scene,
    index: &[u8],
    signature: &[u8],
    file: &Path,
) -> Result<mcp_raspi::update::install::Installed, mcp_raspi::update::install::InstallError> {
    use mcp_raspi::update::install::{self, Download, InstallRequest};
    let manifest = std::fs::read(scene.repo.join("stable/manifest.json")).unwrap();
    let manifest_sig = std::fs::read(scene.repo.join("stable/manifest.json.sig")).unwrap();
    let inst = scene.installation();
    let request = InstallRequest {
        manifest: &manifest,
        signature: &manifest_sig,
        download: Download::Delta { index, signature, file },
        keyring: &manifest::Keyring::load(&scene.keys_dir).unwrap(),
        policy: install::device_policy(&inst, 20 * 1024 * 1024).unwrap(),
        staging_dir: &scene.state_dir.join("staging"),
        source: "mcp",
    };
    install::install(&inst, request, &mut |_| {})
}

#[test]
fn the_installer_refuses_a_delta_it_cannot_trust_and_changes_nothing() {
    use mcp_raspi::update::install::InstallError;
    let (scene, _deb, delta) = delta_scene();
    let index = std::fs::read(scene.repo.join("stable/deltas.json")).unwrap();
    let signature = std::fs::read(scene.repo.join("stable/deltas.json.sig")).unwrap();
    let edited = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut value: serde_json::Value = serde_json::from_slice(&index).unwrap();
        edit(&mut value);
        let bytes = serde_json::to_vec(&value).unwrap();
        let sig = manifest::sign(&bytes, &scene.key);
        (bytes, sig)
    };
    let stranger = new_key(&scene.dir.path().join("publisher"));
    let (newer, newer_sig) = edited(&|v| v["version"] = NEWER.into());
    let (older_base, older_base_sig) = edited(&|v| v["deltas"][0]["from"] = "0.0.9".into());
    let (other_build, other_build_sig) = edited(&|v| v["deltas"][0]["package_sha256"] = "00".repeat(32).into());
    let link = scene.dir.path().join("delta-link");
    std::os::unix::fs::symlink(&delta, &link).unwrap();
    let damaged = scene.dir.path().join("damaged.delta");
    let mut bytes = std::fs::read(&delta).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&damaged, bytes).unwrap();
    // What is wrong, the index and its signature, the delta file, what the refusal says.
    type Case<'a> = (&'a str, Vec<u8>, Vec<u8>, &'a Path, &'a str);
    let cases: Vec<Case> = vec![
        ("signed by another key", index.clone(), manifest::sign(&index, &stranger), &delta, "not trusted"),
        ("the index of another release", newer, newer_sig, &delta, "the delta index is for 0.3.0"),
        ("no delta from the installed release", older_base, older_base_sig, &delta, "delta from 0.1.0 to 0.2.0"),
        ("the delta of another build", other_build, other_build_sig, &delta, "another build"),
        ("the delta file a symlink", index.clone(), signature.clone(), &link, "symlink"),
        ("the delta damaged", index.clone(), signature.clone(), &damaged, "altered or damaged"),
    ];
    let before = scene.fingerprint();
    for (what, index, signature, file, reason) in cases {
        let err = install_delta(&scene, &index, &signature, file).unwrap_err();
        assert!(matches!(err, InstallError::Delta(_)), "{what}: {err}");
        assert!(err.to_string().contains(reason), "{what}: {err}");
        assert_eq!(scene.fingerprint(), before, "{what} changed the install tree or its state");
        let staging: Vec<_> =
            std::fs::read_dir(scene.state_dir.join("staging")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(staging.is_empty(), "{what} left {staging:?}");
    }
    let installed = install_delta(&scene, &index, &signature, &delta).unwrap();
    assert_eq!(installed.to, NEW);
}
