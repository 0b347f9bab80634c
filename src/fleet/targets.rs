//! `mcp-fleet prometheus-targets`: Prometheus file-based service discovery from the fleet
//! file, so that one Prometheus scrapes every device's `/metrics` and the fleet dashboard
//! tells the devices apart by their ids.
//!
//! One target group per device: its address, scheme and metrics path come from its MCP
//! endpoint (`https://pi-garage.example.com/mcp` is scraped at
//! `https://pi-garage.example.com/metrics`), and its labels from the file: `instance` (the
//! id), `fleet`, `region`, `role`, `model`, and `tags` in Prometheus' `,a,b,` convention. The
//! text is JSON, which `file_sd_configs` reads from `*.json` and, being YAML too, `*.yml`.

use std::io::Write;

use serde_json::{json, Map, Value};

use super::file::{Fleet, Selection};
use super::run::Context;
use super::{print, FleetFailure, TargetsArgs};

/// The target groups of the chosen devices.
pub fn groups(fleet: &Fleet, selection: &Selection) -> Result<Value, FleetFailure> {
    let mut groups = Vec::new();
    for device in fleet.select(selection)? {
        let endpoint = fleet.url_of(device);
        let url = reqwest::Url::parse(&endpoint).map_err(|e| {
            FleetFailure::from(format!("device {}: the endpoint {endpoint:?} is not a URL ({e})", device.id))
        })?;
        // IPv6 addresses come in their brackets.
        let host = url.host_str().unwrap_or_default().to_string();
        let address = match url.port_or_known_default() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        };
        // The server answers /metrics beside /mcp, behind whatever prefix a proxy adds.
        let prefix = url.path().strip_suffix("/mcp").unwrap_or("").trim_end_matches('/');
        let mut labels = Map::new();
        labels.insert("__scheme__".into(), json!(url.scheme()));
        labels.insert("__metrics_path__".into(), json!(format!("{prefix}/metrics")));
        labels.insert("instance".into(), json!(device.id));
        labels.insert("fleet".into(), json!(fleet.id));
        if let Some(region) = &fleet.region {
            labels.insert("region".into(), json!(region));
        }
        if let Some(role) = &device.role {
            labels.insert("role".into(), json!(role));
        }
        if let Some(model) = &device.model {
            labels.insert("model".into(), json!(model));
        }
        if !device.tags.is_empty() {
            labels.insert("tags".into(), json!(format!(",{},", device.tags.join(","))));
        }
        groups.push(json!({"targets": [address], "labels": labels}));
    }
    Ok(Value::Array(groups))
}

/// `mcp-fleet prometheus-targets [-o FILE]`.
pub fn write(cx: &Context<'_>, args: &TargetsArgs, out: &mut dyn Write) -> Result<u8, FleetFailure> {
    let groups = groups(cx.fleet, &args.select.selection())?;
    let text = format!("{}\n", serde_json::to_string_pretty(&groups).unwrap_or_default());
    match &args.output {
        None => print(out, &text)?,
        Some(path) => {
            crate::cli::write_atomically(path, text.as_bytes(), 0o644).map_err(FleetFailure::from)?;
            let count = groups.as_array().map_or(0, Vec::len);
            if !cx.json {
                print(out, &format!("{}: {count} targets of fleet {}\n", path.display(), cx.fleet.id))?;
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_device_is_a_group_scraped_beside_its_endpoint_with_the_files_labels() {
        let fleet = Fleet::parse(
            r#"
fleet:
  id: plant
  region: eu
  connection: { url: "http://{hostname}:8000/mcp" }
  devices:
    - { id: pi-a, hostname: 10.0.0.1, model: pi4, role: sensor, tags: [indoor, temp] }
    - { id: pi-b, hostname: b.example.com, url: "https://{hostname}/pis/b/mcp" }
    - { id: pi-c, hostname: "::1" , url: "http://[::1]:8001/mcp" }
"#,
            "fleet.yml",
        )
        .unwrap();
        let groups = groups(&fleet, &Selection::All).unwrap();
        assert_eq!(
            groups[0],
            json!({"targets": ["10.0.0.1:8000"], "labels": {
                "__scheme__": "http", "__metrics_path__": "/metrics", "instance": "pi-a", "fleet": "plant",
                "region": "eu", "role": "sensor", "model": "pi4", "tags": ",indoor,temp,"}})
        );
        assert_eq!(groups[1]["targets"], json!(["b.example.com:443"]));
        assert_eq!(groups[1]["labels"]["__scheme__"], json!("https"));
        assert_eq!(groups[1]["labels"]["__metrics_path__"], json!("/pis/b/metrics"));
        assert_eq!(groups[2]["targets"], json!(["[::1]:8001"]));
        let tagged = super::groups(&fleet, &Selection::Tag("temp".into())).unwrap();
        assert_eq!(tagged.as_array().unwrap().len(), 1);
    }
}
