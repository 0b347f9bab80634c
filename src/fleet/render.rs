//! A device's configuration file as the fleet file makes it: the template with the device's
//! `config` merged over it, written as YAML with its keys sorted and a header naming where it
//! came from, so that the same fleet file always gives the same bytes and the SHA-256 a
//! device reports for its file says whether it runs what the fleet file says (drift).
//!
//! Each rendering is checked here with the server's own parser and validation, so that a
//! template mistake is found on the workstation, named with its device, before any device is
//! asked to take it.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::file::{Device, Fleet};
use crate::config::{Config, CONFIG_VERSION};

/// A device's configuration file, and its digest as `manage.get_server_status` reports one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub sha256: String,
}

/// Renders and checks the configuration of `device`.
pub fn render(fleet: &Fleet, device: &Device) -> Result<Rendered, String> {
    let mut config = fleet.config_of(device);
    if let Value::Object(map) = &mut config {
        map.entry("config_version").or_insert_with(|| Value::from(CONFIG_VERSION));
    }
    let body = serde_saphyr::to_string(&config)
        .map_err(|e| format!("device {}: its configuration cannot be written as YAML: {e}", device.id))?;
    let text = format!(
        "# The configuration of {} in fleet {}, written by mcp-fleet from the fleet file.\n\
         # Change the fleet file rather than this file: `mcp-fleet drift` reports a change made here.\n{body}",
        device.id, fleet.id
    );
    let origin = format!("the configuration of device {} (fleet.config_template and its config)", device.id);
    let checked = Config::from_yaml(&text, &origin).and_then(|c| c.validate());
    checked.map_err(|e| format!("device {}: {e}", device.id))?;
    Ok(Rendered { sha256: crate::base::hex(&Sha256::digest(text.as_bytes())), text })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(template: &str) -> Fleet {
        let yaml = format!(
            "fleet:\n  id: lab\n  config_template:\n{template}\n  devices:\n    - {{ id: a, hostname: a }}\n    \
             - {{ id: b, hostname: b, config: {{ logging: {{ level: debug }} }} }}\n"
        );
        Fleet::parse(&yaml, "fleet.yml").unwrap()
    }

    #[test]
    fn the_same_fleet_file_renders_the_same_bytes_and_devices_differ_by_their_overrides() {
        let f = fleet("    logging: { level: info }\n    metrics: { collection: { interval_seconds: 300 } }");
        let a = render(&f, &f.devices[0]).unwrap();
        assert_eq!(a, render(&f, &f.devices[0]).unwrap());
        assert!(a.text.starts_with("# The configuration of a in fleet lab"), "{}", a.text);
        assert!(a.text.contains("config_version: \"1.2\"") && a.text.contains("interval_seconds: 300"), "{}", a.text);
        let b = render(&f, &f.devices[1]).unwrap();
        assert!(b.text.contains("level: debug"), "{}", b.text);
        assert_ne!(a.sha256, b.sha256);
        assert_eq!(a.sha256.len(), 64);
        // What the server reads back is what the fleet file said.
        let config = Config::from_yaml(&b.text, "b").unwrap();
        assert_eq!(config.metrics.collection.interval_seconds, 300);
    }

    #[test]
    fn a_template_the_server_would_refuse_is_named_with_its_device_and_key() {
        let f = fleet("    logging: { levle: info }");
        let e = render(&f, &f.devices[0]).unwrap_err();
        assert!(e.starts_with("device a:") && e.contains("levle"), "{e}");
        let f = fleet("    metrics: { collection: { interval_seconds: 0 } }");
        let e = render(&f, &f.devices[1]).unwrap_err();
        assert!(e.starts_with("device b:") && e.contains("interval_seconds"), "{e}");
    }
}
