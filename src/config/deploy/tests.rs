use super::*;
use crate::config::DEV_CONFIG;

/// A device's configuration file holding `text`, a trusted key and the paths of [`apply`].
struct Device {
    _dir: tempfile::TempDir,
    paths: ApplyPaths,
    key: SecretKey,
}

fn device(text: &str) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let paths = ApplyPaths {
        config: dir.path().join("config.yml"),
        keys_dir: dir.path().join("config-keys"),
        state_dir: dir.path().join("state"),
    };
    fs::create_dir_all(&paths.keys_dir).unwrap();
    fs::create_dir_all(&paths.state_dir).unwrap();
    fs::write(&paths.config, text).unwrap();
    fs::set_permissions(&paths.config, fs::Permissions::from_mode(0o640)).unwrap();
    let key = SecretKey::generate().unwrap();
    fs::write(paths.keys_dir.join(format!("{}.pub", key.id())), key.public_key().to_file_text()).unwrap();
    Device { _dir: dir, paths, key }
}

/// Restarts counted, and a server that answers or not.
struct Fake {
    restarts: u32,
    healthy: bool,
}

impl Services for Fake {
    fn restart(&mut self) -> Result<(), String> {
        self.restarts += 1;
        Ok(())
    }

    fn healthy(&mut self, _: &Config) -> Result<(), String> {
        if self.healthy {
            Ok(())
        } else {
            Err("no answer on 127.0.0.1:8000 within 60 s".into())
        }
    }
}

fn stage_signed(device: &Device, deployment: &Deployment, key: &SecretKey) {
    let (bytes, signature) = deployment.sign(key);
    let staged = device.paths.staged();
    fs::create_dir_all(&staged).unwrap();
    fs::write(staged.join(DEPLOYMENT_FILE), bytes).unwrap();
    fs::write(staged.join(SIGNATURE_FILE), signature).unwrap();
}

fn new_text() -> String {
    format!("{DEV_CONFIG}\n# deployed by the fleet\n")
}

#[test]
fn a_signed_deployment_replaces_the_file_keeps_the_old_one_and_restarts_once() {
    let device = device(DEV_CONFIG);
    let deployment = Deployment::new(&new_text(), &sha256(DEV_CONFIG.as_bytes()));
    stage_signed(&device, &deployment, &device.key);
    let mut services = Fake { restarts: 0, healthy: true };
    let record = apply(&device.paths, &mut services);
    assert_eq!(record.status, ApplyStatus::Applied, "{record:?}");
    assert_eq!(fs::read_to_string(&device.paths.config).unwrap(), new_text());
    assert_eq!(fs::read_to_string(device.paths.previous()).unwrap(), DEV_CONFIG);
    assert_eq!(fs::metadata(&device.paths.config).unwrap().permissions().mode() & 0o777, 0o640);
    assert_eq!(services.restarts, 1);
    assert_eq!(ApplyRecord::load(&device.paths.record()), Some(record));
    assert!(!device.paths.staged().join(DEPLOYMENT_FILE).exists(), "the staged deployment is consumed");

    // Applied once: the same deployment again no longer matches the file.
    stage_signed(&device, &deployment, &device.key);
    let again = apply(&device.paths, &mut services);
    assert_eq!(again.status, ApplyStatus::Refused);
    assert!(again.reason.unwrap().contains("no longer the file the deployment was made from"));
    assert_eq!(services.restarts, 1);
}

#[test]
fn an_unsigned_unknown_or_invalid_deployment_changes_nothing() {
    let device = device(DEV_CONFIG);
    let other = SecretKey::generate().unwrap();
    let replaces = sha256(DEV_CONFIG.as_bytes());
    let mut services = Fake { restarts: 0, healthy: true };
    let cases: Vec<(Deployment, &SecretKey, &str)> = vec![
        (Deployment::new(&new_text(), &replaces), &other, "signature"),
        (Deployment::new(&format!("{DEV_CONFIG}\nbogus_section: 1\n"), &replaces), &device.key, "bogus_section"),
        (Deployment { sha256: sha256(b"else"), ..Deployment::new(&new_text(), &replaces) }, &device.key, "SHA-256"),
        (Deployment { format: "other/1".into(), ..Deployment::new(&new_text(), &replaces) }, &device.key, "format"),
    ];
    for (deployment, key, named) in cases {
        stage_signed(&device, &deployment, key);
        let record = apply(&device.paths, &mut services);
        assert_eq!(record.status, ApplyStatus::Refused, "{record:?}");
        let reason = record.reason.unwrap();
        assert!(reason.contains(named), "{named}: {reason}");
        assert_eq!(fs::read_to_string(&device.paths.config).unwrap(), DEV_CONFIG);
    }
    // Nothing staged at all.
    let record = apply(&device.paths, &mut services);
    assert_eq!(record.status, ApplyStatus::Refused);
    assert!(record.reason.unwrap().contains("cannot open"));
    assert_eq!(services.restarts, 0);
    assert!(!device.paths.previous().exists());
}

#[test]
fn a_configuration_whose_server_does_not_come_back_is_put_back() {
    let device = device(DEV_CONFIG);
    stage_signed(&device, &Deployment::new(&new_text(), &sha256(DEV_CONFIG.as_bytes())), &device.key);
    let mut services = Fake { restarts: 0, healthy: false };
    let record = apply(&device.paths, &mut services);
    assert_eq!(record.status, ApplyStatus::RolledBack, "{record:?}");
    assert!(record.reason.unwrap().contains("did not prove healthy (no answer on 127.0.0.1:8000 within 60 s)"));
    assert_eq!(fs::read_to_string(&device.paths.config).unwrap(), DEV_CONFIG);
    assert_eq!(services.restarts, 2);
}

#[test]
fn the_agent_stages_only_what_verifies_and_loads() {
    let device = device(DEV_CONFIG);
    let replaces = sha256(DEV_CONFIG.as_bytes());
    let (bytes, signature) =
        Deployment::new("config_version: \"1.2\"\nserver: { listen: nowhere }\n", &replaces).sign(&device.key);
    let e = stage(&device.paths, &bytes, &signature).unwrap_err();
    assert!(e.contains("does not load") && e.contains("listen"), "{e}");
    let (bytes, _) = Deployment::new(&new_text(), &replaces).sign(&device.key);
    let (_, signature) = Deployment::new(&new_text(), &replaces).sign(&SecretKey::generate().unwrap());
    assert!(stage(&device.paths, &bytes, &signature).unwrap_err().contains("signature"));
    assert!(!device.paths.staged().join(DEPLOYMENT_FILE).exists());
    let (bytes, signature) = Deployment::new(&new_text(), &replaces).sign(&device.key);
    assert_eq!(stage(&device.paths, &bytes, &signature).unwrap().text, new_text());
    assert_eq!(fs::read(device.paths.staged().join(DEPLOYMENT_FILE)).unwrap(), bytes);
}

#[test]
fn a_staged_file_that_is_a_symbolic_link_is_not_followed() {
    let device = device(DEV_CONFIG);
    let staged = device.paths.staged();
    fs::create_dir_all(&staged).unwrap();
    std::os::unix::fs::symlink(&device.paths.config, staged.join(DEPLOYMENT_FILE)).unwrap();
    fs::write(staged.join(SIGNATURE_FILE), b"{}").unwrap();
    let record = apply(&device.paths, &mut Fake { restarts: 0, healthy: true });
    assert_eq!(record.status, ApplyStatus::Refused);
    assert!(record.reason.unwrap().contains("cannot open"), "a link is refused");
}
