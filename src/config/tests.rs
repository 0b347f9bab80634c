#![allow(clippy::unwrap_used)]
use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn parse_err(yaml: &str) -> String {
    Config::from_yaml(yaml, "config.yml").unwrap_err().to_string()
}

#[test]
fn the_shipped_example_config_parses_and_validates() {
    let text = include_str!("../../etc/config.example.yml");
    let c = Config::from_yaml(text, "config.example.yml").unwrap();
    c.validate().unwrap();
    assert_eq!(c.security.auth_mode, AuthModes::one(AuthMode::Token));
    assert!(c.listen_addr().ip().is_loopback());
}

#[test]
fn the_embedded_development_config_is_loopback_without_auth_and_simulated() {
    let dir = tempfile::tempdir().unwrap();
    let l = Config::dev(dir.path(), &BTreeMap::new()).unwrap();
    assert_eq!(l.config.security.auth_mode, AuthModes::one(AuthMode::None));
    assert_eq!(l.config.platform.backend, Backend::Simulated);
    assert!(l.config.logging.app_path.starts_with(dir.path()));
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let e = parse_err("config_version: \"1.2\"\nserver:\n  listen: \"127.0.0.1:8000\"\n  lisen: 1\n");
    assert!(e.contains("lisen"), "{e}");
    assert!(e.contains("line 4") || e.contains(":4:") || e.contains("4:"), "{e}");
}

#[test]
fn the_specifications_delta_updates_section_is_answered_with_the_feature_that_turns_them_on() {
    let e = parse_err(
        "config_version: \"1.2\"\nupdates:\n  delta_updates:\n    enabled: true\n    bandwidth_threshold_mbps: 5\n",
    );
    assert!(e.contains("unknown field `delta_updates`"), "{e}");
    assert!(e.contains("hint: delta updates are the experimental feature updates.delta"), "{e}");
}

#[test]
fn a_wrong_type_or_bad_value_names_the_key_and_what_is_allowed() {
    let e = parse_err("config_version: \"1.2\"\nserver:\n  max_sessions: lots\n");
    assert!(e.contains("max_sessions") || e.contains("line 3"), "{e}");
    let e = parse_err("config_version: \"1.2\"\nserver:\n  listen: \"localhost\"\n");
    assert!(e.contains("127.0.0.1:8000"), "{e}");
    let e = parse_err("config_version: \"1.2\"\nsecurity:\n  auth_mode: magic\n");
    assert!(e.contains("token") && e.contains("none"), "{e}");
}

#[test]
fn an_old_config_version_points_at_the_migration() {
    let e = parse_err("config_version: \"1.1\"\n");
    assert!(e.contains("migrate"), "{e}");
}

#[test]
fn no_auth_is_refused_off_loopback() {
    let c = Config::from_yaml(
        "config_version: \"1.2\"\nserver:\n  listen: \"0.0.0.0:8000\"\nsecurity:\n  auth_mode: none\n",
        "t",
    )
    .unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("security.auth_mode") && e.contains("loopback"), "{e}");
}

#[test]
fn environment_overrides_reach_nested_keys_and_are_checked() {
    let c = Config::from_yaml("config_version: \"1.2\"\n", "t").unwrap();
    let c = c
        .with_env_overrides(&env(&[
            ("MCP_RASPI_SERVER__LISTEN", "127.0.0.1:9000"),
            ("MCP_RASPI_LOGGING__FILE__MAX_SIZE_MB", "7"),
            ("MCP_RASPI_ADMIN_TOKEN", "not an override"),
        ]))
        .unwrap();
    assert_eq!(c.listen_addr().port(), 9000);
    assert_eq!(c.logging.file.max_size_mb, 7);

    let c = Config::from_yaml("config_version: \"1.2\"\n", "t").unwrap();
    let e = c.clone().with_env_overrides(&env(&[("MCP_RASPI_SERVER__NOPE", "1")])).unwrap_err().to_string();
    assert!(e.contains("MCP_RASPI_SERVER__NOPE") && e.contains("server.nope"), "{e}");
    let e = c.with_env_overrides(&env(&[("MCP_RASPI_SERVER__MAX_SESSIONS", "many")])).unwrap_err().to_string();
    assert!(e.contains("MCP_RASPI_SERVER__MAX_SESSIONS"), "{e}");
}

#[test]
fn the_metrics_section_takes_the_specs_examples_and_its_environment_override() {
    // The capacity plan's three storage sizes and the metered-link example, as written.
    for (yaml, days, mb, interval) in [
        ("metrics:\n  retention:\n    max_age_days: 7            # 1 week retention\n    max_size_mb: 50            # 50 MB limit\n", 7, 50, 60),
        ("metrics:\n  retention:\n    max_age_days: 90           # 90 day retention\n    max_size_mb: 2000          # 2 GB limit\n", 90, 2000, 60),
        ("metrics:\n  collection:\n    interval_seconds: 300      # 5 minutes instead of 1 minute\n\n  prometheus:\n    enabled: false             # Disable metrics export\n", 30, 100, 300),
    ] {
        let c = Config::from_yaml(&format!("config_version: \"1.2\"\n{yaml}"), "t").unwrap();
        c.validate().unwrap();
        let m = &c.metrics;
        assert_eq!((m.retention.max_age_days, m.retention.max_size_mb, m.collection.interval_seconds), (days, mb, interval));
    }
    let c = Config::from_yaml("config_version: \"1.2\"\n", "t").unwrap();
    let c = c
        .with_env_overrides(&env(&[
            ("MCP_RASPI_METRICS__RETENTION__MAX_AGE_DAYS", "7"),
            ("MCP_RASPI_METRICS__PROMETHEUS__ENABLED", "true"),
        ]))
        .unwrap();
    assert_eq!(c.metrics.retention.max_age_days, 7);
    assert!(c.metrics.prometheus.enabled);
    let c =
        Config::from_yaml("config_version: \"1.2\"\nmetrics:\n  collection:\n    interval_seconds: 0\n", "t").unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("metrics.collection.interval_seconds") && e.contains("outside 1 to 3600"), "{e}");
    let e = Config::from_yaml("config_version: \"1.2\"\nmetrics:\n  retention:\n    max_days: 7\n", "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_days"), "{e}");
}

#[test]
fn secrets_files_are_read_like_systemd_environment_files() {
    let m = parse_env_file("# comment\nA=1\nexport B=\"two words\"\n\nC='x=y'\nnot a pair\n");
    assert_eq!(m.get("A").map(String::as_str), Some("1"));
    assert_eq!(m.get("B").map(String::as_str), Some("two words"));
    assert_eq!(m.get("C").map(String::as_str), Some("x=y"));
    assert_eq!(m.len(), 3);
}

#[test]
fn device_allowlists_are_checked() {
    let bad = |extra: &str| {
        let c = Config::from_yaml(&format!("config_version: \"1.2\"\n{extra}"), "t").unwrap();
        c.validate().unwrap_err().to_string()
    };
    assert!(bad("i2c:\n  buses:\n    - { bus: 1, addresses: [0x80] }\n").contains("0x80"));
    assert!(
        bad("gpio:\n  pins:\n    - { pin: 4, modes: [input] }\n    - { pin: 4, modes: [output] }\n").contains("twice")
    );
    assert!(bad("uart:\n  ports:\n    - { port: \"../sda\", baud_rates: [9600] }\n").contains("uart.ports[0].port"));
    let e = Config::from_yaml("config_version: \"1.2\"\ngpio:\n  pins:\n    - { pin: 40, modes: [input] }\n", "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("0 to 27"), "{e}");
}

#[test]
fn a_health_threshold_that_is_not_a_finite_number_is_refused() {
    for (threshold, key) in [
        ("{ warning: 80, critical: .inf }", "health.cpu_percent.critical"),
        ("{ warning: -.inf, critical: 90 }", "health.cpu_percent.warning"),
        ("{ warning: .nan, critical: 90 }", "health.cpu_percent.warning"),
    ] {
        let c =
            Config::from_yaml(&format!("config_version: \"1.2\"\nhealth:\n  cpu_percent: {threshold}\n"), "t").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("not a finite number"), "{threshold}: {e}");
    }
}

#[test]
fn the_audit_write_delay_defaults_to_10_ms_in_files_and_in_the_development_config() {
    let c = Config::from_yaml("config_version: \"1.2\"\n", "t").unwrap();
    assert_eq!(c.logging.audit_write_delay_ms, 10);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(Config::dev(dir.path(), &BTreeMap::new()).unwrap().config.logging.audit_write_delay_ms, 10);
    let c = Config::from_yaml("config_version: \"1.2\"\nlogging:\n  audit_write_delay_ms: 0\n", "t").unwrap();
    assert_eq!(c.logging.audit_write_delay_ms, 0);
    let c = Config::from_yaml("config_version: \"1.2\"\nlogging:\n  audit_write_delay_ms: 1000\n", "t").unwrap();
    c.validate().unwrap();
}

#[test]
fn an_audit_write_delay_out_of_range_is_named_with_its_line_and_the_range() {
    for bad in ["1001", "-1"] {
        let e =
            parse_err(&format!("config_version: \"1.2\"\nlogging:\n  level: info\n  audit_write_delay_ms: {bad}\n"));
        assert!(e.contains("logging.audit_write_delay_ms"), "{e}");
        assert!(e.contains("0 to 1000"), "{e}");
        assert!(e.contains("line 4"), "{e}");
    }
    let e = Config::from_yaml("config_version: \"1.2\"\n", "t")
        .unwrap()
        .with_env_overrides(&env(&[("MCP_RASPI_LOGGING__AUDIT_WRITE_DELAY_MS", "5000")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("MCP_RASPI_LOGGING__AUDIT_WRITE_DELAY_MS") && e.contains("0 to 1000"), "{e}");
    assert_eq!(e.matches("logging.audit_write_delay_ms").count(), 1, "the key once: {e}");
    let mut c = Config::from_yaml("config_version: \"1.2\"\n", "t").unwrap();
    c.logging.audit_write_delay_ms = 5000;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("logging.audit_write_delay_ms") && e.contains("0 to 1000"), "{e}");
}

#[test]
fn os_upgrades_refresh_the_lists_and_may_install_but_not_remove_packages_by_default() {
    let c = Config::from_yaml("config_version: \"1.2\"\n", "t").unwrap();
    let os = &c.updates.os;
    assert!(!os.apply_enabled && os.refresh_lists);
    assert_eq!(os.upgrade_mode, crate::platform::UpgradeMode::WithNewPackages);
    let c = Config::from_yaml(
        "config_version: \"1.2\"\nupdates:\n  os:\n    refresh_lists: false\n    upgrade_mode: full_upgrade\n",
        "t",
    )
    .unwrap();
    assert!(!c.updates.os.refresh_lists);
    assert_eq!(c.updates.os.upgrade_mode, crate::platform::UpgradeMode::FullUpgrade);
}

#[test]
fn an_unknown_upgrade_mode_is_named_with_the_modes_there_are() {
    let e = parse_err("config_version: \"1.2\"\nupdates:\n  os:\n    upgrade_mode: dist-upgrade\n");
    assert!(e.contains("upgrade_mode") || e.contains("line 4"), "{e}");
    assert!(e.contains("with_new_packages") && e.contains("full_upgrade"), "{e}");
    let e = parse_err("config_version: \"1.2\"\nupdates:\n  os:\n    refresh_lists: sometimes\n");
    assert!(e.contains("refresh_lists") || e.contains("line 4"), "{e}");
}

/// The runbook's Cloudflare Access section, exactly as operators copy it.
const RUNBOOK_CLOUDFLARE_ACCESS: &str = r#"config_version: "1.2"
security:
  auth_mode: "cloudflare_access"

  cloudflare_access:
    enabled: true
    team_domain: "<team-name>.cloudflareaccess.com"
    audience_tag: "<application-aud-from-cloudflare>"
    jwt_algorithm: "RS256"
    jwks_url: "https://<team-name>.cloudflareaccess.com/cdn-cgi/access/certs"
    jwks_cache_ttl_seconds: 3600

  # Role mapping from JWT claims
  role_mappings:
    - jwt_claim: "email"
      pattern: "admin@yourdomain.com"
      role: "admin"

    - jwt_claim: "email"
      pattern: ".*@yourdomain.com"
      role: "operator"

    - jwt_claim: "groups"
      value: "mcp-viewers"
      role: "viewer"
"#;

#[test]
fn the_runbooks_cloudflare_access_yaml_is_accepted_as_written() {
    let c = Config::from_yaml(RUNBOOK_CLOUDFLARE_ACCESS, "t").unwrap();
    c.validate().unwrap();
    assert!(c.security.auth_mode.contains(AuthMode::CloudflareAccess));
    assert_eq!(c.security.cloudflare_access.issuer(), "https://<team-name>.cloudflareaccess.com");
    assert_eq!(c.security.role_mappings.len(), 3);
    let warnings = c.warnings(&[]);
    assert!(warnings.iter().any(|w| w.contains("[token, cloudflare_access]")), "{warnings:?}");
}

#[test]
fn modes_combine_in_a_list_and_none_stays_alone() {
    let yaml =
        RUNBOOK_CLOUDFLARE_ACCESS.replace("auth_mode: \"cloudflare_access\"", "auth_mode: [token, cloudflare_access]");
    let c = Config::from_yaml(&yaml, "t").unwrap();
    c.validate().unwrap();
    assert!(
        c.security.auth_mode.contains(AuthMode::Token) && c.security.auth_mode.contains(AuthMode::CloudflareAccess)
    );
    assert_eq!(c.security.auth_mode.to_string(), "token+cloudflare_access");
    for (modes, expected) in [
        ("[none, token]", "cannot be combined"),
        ("[]", "empty"),
        ("[token, token]", "listed twice"),
        ("[token, magic]", "cloudflare_access, oidc"),
    ] {
        let e = parse_err(&format!("config_version: \"1.2\"\nsecurity:\n  auth_mode: {modes}\n"));
        assert!(e.contains(expected), "{modes}: {e}");
    }
}

#[test]
fn unsafe_or_incomplete_identity_settings_are_refused_with_the_key() {
    let cases: [(&str, &str, &str); 9] = [
        ("jwt_algorithm: \"RS256\"", "jwt_algorithm: \"HS256\"", "HMAC"),
        ("jwt_algorithm: \"RS256\"", "jwt_algorithm: \"none\"", "unsigned"),
        ("jwt_algorithm: \"RS256\"", "jwt_algorithm: \"ES256\"", "RS256 only"),
        ("enabled: true", "enabled: false", "security.cloudflare_access.enabled"),
        ("jwks_url: \"https://", "jwks_url: \"http://", "security.cloudflare_access.jwks_url"),
        (
            "team_domain: \"<team-name>.cloudflareaccess.com\"",
            "team_domain: \"https://x.cloudflareaccess.com\"",
            "team domain alone",
        ),
        ("audience_tag: \"<application-aud-from-cloudflare>\"", "audience_tag: \"\"", "audience_tag"),
        ("pattern: \".*@yourdomain.com\"", "pattern: \"(unclosed\"", "role_mappings[1].pattern"),
        ("      value: \"mcp-viewers\"\n", "      value: \"mcp-viewers\"\n      pattern: \"x\"\n", "exactly one"),
    ];
    for (from, to, expected) in cases {
        let yaml = RUNBOOK_CLOUDFLARE_ACCESS.replace(from, to);
        assert_ne!(yaml, RUNBOOK_CLOUDFLARE_ACCESS, "{from}");
        let e = match Config::from_yaml(&yaml, "t") {
            Ok(c) => c.validate().unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(expected), "{to}: {e}");
    }
    let no_mappings = RUNBOOK_CLOUDFLARE_ACCESS.split("  # Role mapping").next().unwrap();
    let e = Config::from_yaml(no_mappings, "t").unwrap().validate().unwrap_err().to_string();
    assert!(e.contains("security.role_mappings") && e.contains("denied"), "{e}");
}

#[test]
fn oidc_needs_an_issuer_and_this_servers_resource_and_refuses_hmac() {
    let base = "config_version: \"1.2\"\nsecurity:\n  auth_mode: oidc\n  oidc:\n    issuer: https://id.example.com\n    resource: https://pi.example.com/mcp\n    algorithms: [RS256, ES256, EdDSA]\n  role_mappings:\n    - {jwt_claim: sub, pattern: \".+\", role: viewer}\n";
    Config::from_yaml(base, "t").unwrap().validate().unwrap();
    for (from, to, expected) in [
        ("issuer: https://id.example.com", "issuer: http://id.example.com", "security.oidc.issuer"),
        ("resource: https://pi.example.com/mcp", "resource: pi.example.com", "security.oidc.resource"),
        ("algorithms: [RS256, ES256, EdDSA]", "algorithms: [RS256, HS256]", "HMAC"),
        ("algorithms: [RS256, ES256, EdDSA]", "algorithms: []", "at least one"),
    ] {
        let yaml = base.replace(from, to);
        let e = match Config::from_yaml(&yaml, "t") {
            Ok(c) => c.validate().unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(expected), "{to}: {e}");
    }
}

#[test]
fn the_prometheus_export_is_off_by_default_and_an_environment_override_turns_it_on() {
    let c = Config::from_yaml("config_version: \"1.2\"\n", "t").unwrap();
    assert!(!c.metrics.prometheus.enabled);
    let on = c.clone().with_env_overrides(&env(&[("MCP_RASPI_METRICS__PROMETHEUS__ENABLED", "true")])).unwrap();
    assert!(on.metrics.prometheus.enabled);
    on.validate().unwrap();
    let e = c.with_env_overrides(&env(&[("MCP_RASPI_METRICS__PROMETHEUS__ENABLED", "sometimes")])).unwrap_err();
    assert!(e.to_string().contains("MCP_RASPI_METRICS__PROMETHEUS__ENABLED"), "{e}");
}
