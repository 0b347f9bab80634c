use serde_json::json;

use super::*;

/// The fleet file of the deployment specification (§4.2), as it is written there.
pub const SPEC_FLEET: &str = r#"
# fleet-config.yml (stored centrally, synced to devices)

fleet:
  id: "production-sensors"
  region: "us-west"

  devices:
    - id: "pi-living-room"
      hostname: "pi-living-room.local"
      model: "pi4"
      role: "sensor"
      tags: ["indoor", "temperature", "motion"]

    - id: "pi-garage"
      hostname: "pi-garage.local"
      model: "pi3"
      role: "sensor"
      tags: ["outdoor", "camera", "door"]

  # Shared configuration (overridable per device)
  config_template:
    logging:
      level: "INFO"
      shipping:
        enabled: true
        backend: "fluent-bit"

    updates:
      schedule:
        enabled: true
        mode: "maintenance_window"
        maintenance_windows:
          - day_of_week: "sunday"
            start_time: "02:00"
            duration_minutes: 120

    security:
      auth_mode: "cloudflare_access"
"#;

fn error(yaml: &str) -> String {
    Fleet::parse(yaml, "fleet.yml").unwrap_err().0
}

#[test]
fn the_specifications_fleet_file_is_accepted_with_the_defaults_it_leaves_open() {
    let fleet = Fleet::parse(SPEC_FLEET, "fleet.yml").unwrap();
    assert_eq!((fleet.id.as_str(), fleet.region.as_deref()), ("production-sensors", Some("us-west")));
    assert_eq!(fleet.devices.len(), 2);
    let garage = fleet.device("pi-garage").unwrap();
    assert_eq!(fleet.url_of(garage), "https://pi-garage.local/mcp");
    assert_eq!(fleet.credential_of(garage).token_env.as_deref(), Some(DEFAULT_TOKEN_ENV));
    assert_eq!(fleet.config_of(garage)["updates"]["schedule"]["mode"], json!("maintenance_window"));
    let tags: Vec<&str> = fleet.tags().into_iter().collect();
    assert_eq!(tags, ["camera", "door", "indoor", "motion", "outdoor", "temperature"]);
}

#[test]
fn devices_override_the_endpoint_the_credential_and_the_template() {
    let fleet = Fleet::parse(
        r#"
fleet:
  id: lab
  connection:
    url: "http://{hostname}:8000/mcp"
    credential: { token_file: /etc/mcp-fleet/lab.token }
    timeout_seconds: 3
  config_template:
    logging: { level: INFO, app_path: /var/log/mcp-raspi/app.log }
    metrics: { collection: { interval_seconds: 60 } }
  devices:
    - { id: a, hostname: 10.0.0.1 }
    - id: b
      hostname: b.lab
      url: "https://{id}.pis.example.com/mcp"
      credential:
        cloudflare_service_token: { client_id: abc.access, client_secret_env: CF_SECRET }
      config:
        logging: { level: DEBUG }
        metrics: { collection: { interval_seconds: 300 } }
"#,
        "fleet.yml",
    )
    .unwrap();
    let (a, b) = (fleet.device("a").unwrap(), fleet.device("b").unwrap());
    assert_eq!(fleet.url_of(a), "http://10.0.0.1:8000/mcp");
    assert_eq!(fleet.url_of(b), "https://b.pis.example.com/mcp");
    assert_eq!(fleet.credential_of(a).token_file.as_deref(), Some(Path::new("/etc/mcp-fleet/lab.token")));
    assert_eq!(fleet.credential_of(b).cloudflare_service_token.unwrap().client_id, "abc.access");
    assert_eq!(
        fleet.config_of(b),
        json!({"logging": {"level": "DEBUG", "app_path": "/var/log/mcp-raspi/app.log"},
               "metrics": {"collection": {"interval_seconds": 300}}})
    );
    assert_eq!(fleet.config_of(a)["logging"]["level"], json!("INFO"));
    assert_eq!(fleet.connection.timeout_seconds, 3);
}

#[test]
fn mistakes_name_the_device_and_the_key() {
    let e = error("fleet:\n  id: f\n  devices:\n    - { id: a, hostname: a, colour: red }\n");
    assert!(e.contains("colour") && e.contains("fleet.yml"), "{e}");
    let e = error("fleet:\n  id: f\n  devices:\n    - { id: a, hostname: a }\n    - { id: a, hostname: b }\n");
    assert!(e.contains("fleet.devices[1].id") && e.contains("fleet.devices[0]"), "{e}");
    let e = error("fleet:\n  id: f\n  devices:\n    - { id: a, hostname: a, tags: [ok, \"not ok\"] }\n");
    assert!(e.contains("device a (fleet.devices[0]).tags") && e.contains("not ok"), "{e}");
    let e = error("fleet:\n  id: f\n  devices:\n    - { id: a, hostname: a, url: \"https://{host}/mcp\" }\n");
    assert!(e.contains("device a") && e.contains("{host} is not a placeholder"), "{e}");
    let e = error("fleet:\n  id: f\n  devices:\n    - { id: a, hostname: a, config: [1] }\n");
    assert!(e.contains("device a (fleet.devices[0]).config: must be a mapping"), "{e}");
    let e = error("fleet:\n  id: f\n  config_template: text\n  devices:\n    - { id: a, hostname: a }\n");
    assert!(e.contains("fleet.config_template: must be a mapping"), "{e}");
    let e = error("fleet:\n  id: f\n  devices: []\n");
    assert!(e.contains("no devices"), "{e}");
    let e = error("fleet:\n  id: f\n  connection: { concurrency: 0 }\n  devices:\n    - { id: a, hostname: a }\n");
    assert!(e.contains("fleet.connection.concurrency"), "{e}");
}

#[test]
fn secrets_written_into_the_file_are_refused_with_where_they_belong() {
    let e = error("fleet:\n  id: f\n  devices:\n    - { id: a, hostname: a, credential: { token: s3cret } }\n");
    assert!(e.contains("credential.token") && e.contains("token_env"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
    let e = error(
        "fleet:\n  id: f\n  connection:\n    credential:\n      cloudflare_service_token: { client_id: x, client_secret: s3cret }\n  devices:\n    - { id: a, hostname: a }\n",
    );
    assert!(e.contains("client_secret") && e.contains("client_secret_env") && !e.contains("s3cret"), "{e}");
    let e = error(
        "fleet:\n  id: f\n  devices:\n    - { id: a, hostname: a, credential: { token_env: A, token_file: /t } }\n",
    );
    assert!(e.contains("exactly one"), "{e}");
    let e = error("fleet:\n  id: f\n  devices:\n    - { id: a, hostname: a, credential: { token_env: \"1X\" } }\n");
    assert!(e.contains("environment variable"), "{e}");
}

#[test]
fn a_selection_names_what_exists_when_it_matches_nothing() {
    let fleet = Fleet::parse(SPEC_FLEET, "fleet.yml").unwrap();
    assert_eq!(fleet.select(&Selection::All).unwrap().len(), 2);
    let outdoor = fleet.select(&Selection::Tag("outdoor".into())).unwrap();
    assert_eq!(outdoor.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["pi-garage"]);
    let e = fleet.select(&Selection::Tag("attic".into())).unwrap_err().0;
    assert!(e.contains("\"attic\"") && e.contains("camera, door"), "{e}");
    let e = fleet.select(&Selection::Ids(vec!["pi-garage".into(), "pi-shed".into()])).unwrap_err().0;
    assert!(e.contains("pi-shed") && e.contains("pi-living-room, pi-garage"), "{e}");
}
