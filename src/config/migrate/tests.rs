#![allow(clippy::unwrap_used)]
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::*;
use crate::config::{hex, Config};

const V1_0: &str = include_str!("../../../tests/fixtures/config/v1.0.yml");
const V1_1: &str = include_str!("../../../tests/fixtures/config/v1.1.yml");
const V1_2: &str = include_str!("../../../tests/fixtures/config/v1.2.yml");

fn version(text: &str) -> SchemaVersion {
    SchemaVersion::parse(text).unwrap()
}

fn migrated(text: &str, to: &str) -> Migration {
    migrate_text(text, version(to)).unwrap()
}

fn loads(text: &str) -> Config {
    let config = Config::from_yaml(text, "migrated").unwrap();
    config.validate().unwrap();
    config
}

fn error(text: &str, to: &str) -> String {
    migrate_text(text, version(to)).unwrap_err().to_string()
}

/// A file in a fresh directory, and the directory.
fn file(text: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yml");
    fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn versions_are_major_and_minor_with_an_optional_patch() {
    assert_eq!(version("1.2"), SchemaVersion { major: 1, minor: 2 });
    assert_eq!(version("1.2.0"), version("1.2"));
    assert_eq!(version(" 1.1.7 "), version("1.1"));
    for bad in ["1", "1.", "1.2.", "v1.2", "1.2.0.0", "1.x", "", "1.-2"] {
        assert_eq!(SchemaVersion::parse(bad), None, "{bad}");
    }
    assert_eq!(SchemaVersion::current().to_string(), CONFIG_VERSION);
}

#[test]
fn a_1_1_file_moves_its_cors_keys_drops_the_jwt_secret_and_keeps_its_comments() {
    let m = migrated(V1_1, "1.2.0");
    assert_eq!(m.rewritten, None);
    assert_eq!(m.text, V1_2);
    let config = loads(&m.text);
    assert!(config.server.cors.enabled);
    assert_eq!(config.server.cors.allowed_origins, ["https://console.example.com", "https://ops.example.com:8443"]);
    assert_eq!(config.gpio.pwm.max_frequency_hz, 10_000.0);
    let changes = &m.steps[0].changes;
    assert_eq!(changes[0], "server.enable_cors (line 8) → server.cors.enabled");
    assert_eq!(changes[1], "server.cors_origins (line 11) → server.cors.allowed_origins");
    assert!(
        changes[2].starts_with("security.jwt_secret (line 19) removed: this server has no JWT secret"),
        "{changes:?}"
    );
    assert!(changes[3].contains("gpio.pwm.max_frequency (line 36) → gpio.pwm.max_frequency_hz"), "{changes:?}");
    assert_eq!(changes[4], "config_version: \"1.1\" → \"1.2\"");
}

#[test]
fn a_1_0_file_gets_the_gpio_pwm_section_and_then_the_1_2_changes() {
    let m = migrated(V1_0, "1.2");
    assert_eq!(m.rewritten, None);
    assert_eq!(
        m.text,
        "config_version: \"1.2\"   # the first schema\nserver:\n    listen: \"127.0.0.1:8000\"\n    cors:\n        \
         enabled: false\nsecurity:\n    secrets_file: null\n    auth_mode: none\n\ngpio:\n    # Limits of \
         gpio.pwm_enable and gpio.pwm_start: frequency in Hz, duty cycles in percent.\n    pwm:\n        \
         max_frequency_hz: 125000000\n        min_duty_cycle: 0\n        max_duty_cycle: 100\n"
    );
    let steps: Vec<String> = m.steps.iter().map(|s| format!("{} → {}", s.from, s.to)).collect();
    assert_eq!(steps, ["1.0 → 1.1", "1.1 → 1.2"]);
    let config = loads(&m.text);
    assert_eq!(config.gpio.pwm.max_duty_cycle, 100.0);
    assert!(!config.server.cors.enabled);
}

#[test]
fn the_pwm_section_joins_an_existing_gpio_section_and_an_existing_one_is_kept() {
    let m = migrated("config_version: \"1.0\"\ngpio:\n  pins: []\n  # more pins later\nspi: {}\n", "1.1");
    assert_eq!(
        m.text,
        "config_version: \"1.1\"\ngpio:\n  pins: []\n  # Limits of gpio.pwm_enable and gpio.pwm_start: frequency in \
         Hz, duty cycles in percent.\n  pwm:\n    max_frequency_hz: 125000000\n    min_duty_cycle: 0\n    \
         max_duty_cycle: 100\n  # more pins later\nspi: {}\n"
    );
    let m = migrated("config_version: \"1.0\"\ngpio:\n  pwm:\n    max_duty_cycle: 80\n", "1.2");
    assert!(m.steps[0].changes[0].starts_with("gpio.pwm (line 4) is already there"), "{:?}", m.steps);
    assert_eq!(loads(&m.text).gpio.pwm.max_duty_cycle, 80.0);
}

#[test]
fn cors_keys_merge_into_an_existing_server_cors_mapping() {
    let text =
        "config_version: '1.1'\nserver:\n  enable_cors: true\n  cors:\n    allowed_origins: [\"https://a.example\"]\n";
    let m = migrated(text, "1.2");
    assert_eq!(m.rewritten, None);
    assert_eq!(
        m.text,
        "config_version: \"1.2\"\nserver:\n  cors:\n    allowed_origins: [\"https://a.example\"]\n    enabled: true\n"
    );
    assert!(loads(&m.text).server.cors.enabled);
}

#[test]
fn the_same_value_under_both_keys_is_kept_once_and_different_ones_are_an_error() {
    let same = "config_version: \"1.1\"\nserver:\n  enable_cors: yes\n  cors:\n    enabled: true\n";
    let m = migrated(same, "1.2");
    assert!(m.steps[0].changes[0].contains("server.cors.enabled (line 5) already says true"), "{:?}", m.steps);
    assert_eq!(m.text, "config_version: \"1.2\"\nserver:\n  cors:\n    enabled: true\n");
    let differ = "config_version: \"1.1\"\nserver:\n  enable_cors: true\n  cors:\n    enabled: false\n";
    assert_eq!(
        error(differ, "1.2"),
        "server.enable_cors (line 3) says true but server.cors.enabled (line 5) says false: remove the one that is \
         wrong, then run the migration again"
    );
}

#[test]
fn a_flow_mapping_is_written_out_again_and_the_migration_says_so() {
    let text = "# comment\nconfig_version: \"1.1\"\nserver: {listen: \"127.0.0.1:8000\", enable_cors: on, cors_origins: [\"https://a.example\"]}\n\
                gpio:\n  pins:\n    - {pin: 17, modes: [output], label: yes}\n";
    let m = migrated(text, "1.2");
    let why = m.rewritten.clone().unwrap();
    assert!(why.starts_with("line 3: `server: {") && why.contains("flow mapping"), "{why}");
    assert!(m.text.starts_with("# mcp-raspi configuration, migrated from 1.1 to 1.2"), "{}", m.text);
    assert!(!m.text.contains("# comment"));
    let config = loads(&m.text);
    assert!(config.server.cors.enabled);
    assert_eq!(config.server.cors.allowed_origins, ["https://a.example"]);
    // Written as it was, `yes` stays the label "yes" rather than becoming `true`.
    assert_eq!(config.gpio.pins[0].label.as_deref(), Some("yes"));
}

#[test]
fn a_merge_key_is_resolved_by_writing_the_document_out_again() {
    let text = "config_version: \"1.1\"\nbase: &base {enable_cors: true}\nserver:\n  <<: *base\n  page_size: 5\n";
    let m = migrated(text, "1.2");
    assert!(m.rewritten.as_deref().unwrap().contains("merge key"), "{:?}", m.rewritten);
    assert!(m.text.contains("server:\n  page_size: 5\n  cors:\n    enabled: true\n"), "{}", m.text);
}

#[test]
fn a_file_already_at_the_target_has_nothing_to_migrate() {
    let m = migrated(V1_2, "1.2.0");
    assert!(m.steps.is_empty());
    assert_eq!(m.text, V1_2);
    assert!(migrated(V1_1, "1.1").steps.is_empty());
}

#[test]
fn downgrades_unknown_versions_and_a_missing_version_are_refused() {
    let e = error(V1_2, "1.1");
    assert!(e.starts_with("the file is at 1.2 and --to-version says 1.1: migrations only move a file forward"), "{e}");
    let e = error("config_version: \"0.9\"\n", "1.2");
    assert_eq!(
        e,
        "config_version (line 1) is \"0.9\", not a version this build migrates (1.0, 1.1, 1.2); nothing was changed"
    );
    let e = error("server: {}\n", "1.2");
    assert!(e.starts_with("the file has no config_version"), "{e}");
    let (_dir, path) = file(V1_1.as_bytes());
    for target in ["2.0", "1.3", "latest"] {
        let e = plan(&path, target).unwrap_err().to_string();
        assert!(
            e.contains(&format!("--to-version \"{target}\" is not a version this build migrates to (1.0, 1.1, 1.2")),
            "{e}"
        );
    }
}

#[test]
fn an_unquoted_version_is_read_as_the_text_written() {
    let m = migrated("config_version: 1.1\nserver:\n  enable_cors: true\n", "1.2");
    assert_eq!(m.text, "config_version: \"1.2\"\nserver:\n  cors:\n    enabled: true\n");
}

#[test]
fn unreadable_non_utf8_and_malformed_files_are_refused_naming_the_file() {
    let (dir, path) = file(b"config_version: \"1.1\"\nlabel: \xff\n");
    let e = plan(&path, "1.2").unwrap_err().to_string();
    assert!(e.contains("config.yml is not UTF-8 text"), "{e}");
    let e = plan(&dir.path().join("missing.yml"), "1.2").unwrap_err().to_string();
    assert!(e.starts_with("cannot read ") && e.contains("missing.yml"), "{e}");
    fs::write(&path, "config_version: \"1.1\"\nserver: [unclosed\n").unwrap();
    let e = plan(&path, "1.2").unwrap_err().to_string();
    assert!(e.contains("config.yml is not YAML this build reads") && e.contains("line"), "{e}");
}

#[test]
fn a_result_that_would_not_load_names_the_key_and_its_line_in_the_file() {
    let (dir, path) = file(b"config_version: \"1.1\"\nserver:\n  enable_cors: true\n  lisen: \"127.0.0.1:8000\"\n");
    let p = plan(&path, "1.2").unwrap();
    let e = p.loads.clone().unwrap_err();
    assert!(e.contains("unknown field `lisen`"), "{e}");
    assert!(e.contains("of the migrated text is line 4 of"), "{e}");
    let e = apply(&p).unwrap_err().to_string();
    assert!(e.starts_with("the migrated file would not load, so nothing was written"), "{e}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no backup, no temporary file");
}

#[test]
fn a_migration_to_an_older_target_is_checked_by_migrating_it_on() {
    let (_dir, path) = file(V1_0.as_bytes());
    let p = plan(&path, "1.1").unwrap();
    assert_eq!(p.loads, Ok(()));
    assert!(p.migration.text.contains("config_version: \"1.1\"") && p.migration.text.contains("enable_cors"));
    let (_dir, path) = file(b"config_version: \"1.0\"\nserver:\n  enable_corz: true\n");
    assert!(plan(&path, "1.1").unwrap().loads.unwrap_err().contains("enable_corz"));
}

#[test]
fn the_diff_shows_the_changes_but_not_the_removed_secret() {
    let (_dir, path) = file(V1_1.as_bytes());
    let diff = plan(&path, "1.2").unwrap().diff();
    assert!(!diff.contains("not-a-real-secret"), "{diff}");
    assert!(diff.contains("-  jwt_secret: <redacted>"), "{diff}");
    assert!(diff.contains("-  # Signing key of the 1.1 web sessions."), "{diff}");
    assert!(diff.contains("-  enable_cors: true   # the console needs it"), "{diff}");
    assert!(diff.contains("+    enabled: true   # the console needs it"), "{diff}");
    assert!(diff.contains("(1.1)") && diff.contains("(1.2)"), "{diff}");
    let (_dir, path) = file(b"config_version: \"1.1\"\nsecurity: {jwt_secret: hunter2, auth_mode: token}\n");
    let diff = plan(&path, "1.2").unwrap().diff();
    assert!(!diff.contains("hunter2") && diff.contains("jwt_secret: <redacted>"), "{diff}");
}

#[test]
fn apply_keeps_a_backup_and_the_files_mode_and_replaces_it() {
    let (dir, path) = file(V1_1.as_bytes());
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let applied = apply(&plan(&path, "1.2").unwrap()).unwrap();
    assert_eq!(applied.backup, dir.path().join("config.yml.bak"));
    assert_eq!(fs::read_to_string(&applied.backup).unwrap(), V1_1);
    assert_eq!(fs::read_to_string(&path).unwrap(), V1_2);
    assert_eq!(applied.sha256, hex(&Sha256::digest(V1_2.as_bytes())));
    for file in [&path, &applied.backup] {
        assert_eq!(fs::metadata(file).unwrap().permissions().mode() & 0o777, 0o640, "{}", file.display());
    }
    // The next migration keeps the first backup and makes one of its own.
    fs::write(&path, V1_0).unwrap();
    let again = apply(&plan(&path, "1.2").unwrap()).unwrap();
    let name = again.backup.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("config.yml.20") && name.ends_with("Z.bak"), "{name}");
    assert_eq!(fs::read_to_string(&again.backup).unwrap(), V1_0);
    assert_eq!(fs::read_to_string(dir.path().join("config.yml.bak")).unwrap(), V1_1);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3, "no temporary file is left");
}

#[test]
fn apply_through_a_symbolic_link_replaces_the_file_it_points_at() {
    let (dir, path) = file(V1_1.as_bytes());
    let link = dir.path().join("link.yml");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    apply(&plan(&link, "1.2").unwrap()).unwrap();
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(fs::read_to_string(&path).unwrap(), V1_2);
}

#[test]
fn a_file_changed_after_its_plan_is_not_overwritten() {
    let (dir, path) = file(V1_1.as_bytes());
    let p = plan(&path, "1.2").unwrap();
    fs::write(&path, format!("{V1_1}# edited meanwhile\n")).unwrap();
    assert!(apply(&p).unwrap_err().to_string().contains("changed while it was being migrated"));
    assert!(fs::read_to_string(&path).unwrap().ends_with("# edited meanwhile\n"));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn the_loaders_message_for_an_older_file_names_the_migration_that_loads_it() {
    let (_dir, path) = file(V1_1.as_bytes());
    let origin = path.display().to_string();
    let e = Config::from_yaml(V1_1, &origin).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "line 2 of {origin}: the file is written for version \"1.1\" and this build reads \"1.2\""
        )),
        "{e}"
    );
    let plan_command = command("plan", &origin);
    assert!(e.contains(&format!("`{plan_command}`")) && e.contains(&format!("`{}`", command("apply", &origin))), "{e}");
    assert_eq!(plan_command, format!("mcp-raspi-config migrate plan --to-version 1.2.0 --config {origin}"));
    // What the message says to run works.
    let target = plan_command.split_whitespace().nth(4).unwrap();
    assert_eq!(plan(&path, target).unwrap().loads, Ok(()));
    assert_eq!(command("plan", DEFAULT_PATH), "mcp-raspi-config migrate plan --to-version 1.2.0");
    assert_eq!(
        command("apply", "/tmp/my config.yml"),
        "mcp-raspi-config migrate apply --to-version 1.2.0 --config '/tmp/my config.yml'"
    );
}

#[test]
fn the_loader_reads_a_patch_version_and_refuses_newer_and_unknown_ones() {
    Config::from_yaml("config_version: \"1.2.0\"\n", "t").unwrap();
    let e = Config::from_yaml("config_version: \"1.3\"\nnew_section: {}\n", "t").unwrap_err().to_string();
    assert!(e.contains("newer than the \"1.2\" this build reads"), "{e}");
    let e = Config::from_yaml("config_version: \"one\"\n", "t").unwrap_err().to_string();
    assert!(e.contains("\"one\" is not a configuration version this build knows (1.0, 1.1, 1.2)"), "{e}");
    let e = Config::from_yaml("server: {}\n", "t").unwrap_err().to_string();
    assert!(e.contains("config_version"), "{e}");
}

#[test]
fn odd_files_are_migrated_or_refused_but_never_misread() {
    let odd = [
        "config_version: \"1.1\"\nserver:\n  \"enable_cors\": true\n  'cors_origins': ['https://a.example']\n",
        "config_version: \"1.1\"\nserver:\n  enable_cors: &on true\n  cors_origins: []\ncamera:\n  enabled: *on\n",
        "config_version: \"1.1\"\nserver:\n  cors_origins: [\n    \"https://a.example\",\n    ]\n  enable_cors: true\n",
        "config_version: \"1.1\"\nserver:\n  enable_cors:\n    true\n",
        "config_version: \"1.1\"\nsecurity:\n  jwt_secret: >-\n    folded\n    secret\n\n  # about tokens\n  tokens: []\n  auth_mode: none\n",
        "config_version: \"1.1\"  # é ü ☃\ngpio:\n  pins:\n  - {pin: 18, modes: [pwm], label: \"ventilateur ☃\"}\n  pwm: {max_frequency: 5}\n",
        "config_version: \"1.1\"\nserver: {}\nsecurity: ~\ngpio:\n",
        "---\n# only a comment\nconfig_version: \"1.1\"\n...\n",
        "config_version: \"1.1\"\nserver:\n  cors: {enabled: true}\n  cors_origins: [\"https://a.example\"]\n",
        "config_version: \"1.0\"\ngpio: {}\n",
        "config_version: \"1.0\"\ngpio: []\n",
        "config_version: \"1.1\"\nserver:\n  enable_cors: true\n  enable_cors: false\n",
        "\u{feff}config_version: \"1.1\"\nserver:\n  enable_cors: true\n",
        "config_version: \"1.1\"\nserver:\n\tenable_cors: true\n",
    ];
    for text in odd {
        let Ok(m) = migrate_text(text, SchemaVersion::current()) else { continue };
        // What was written reads back as the migration means (migrate_text checks the same).
        let parsed = tree::parse(&m.text).unwrap();
        let again = migrate_text(text, SchemaVersion::current()).unwrap();
        assert!(tree::same(&parsed, &tree::parse(&again.text).unwrap()), "{text:?}");
        assert_eq!(declared_version(&parsed).unwrap(), SchemaVersion::current(), "{text:?}\n{}", m.text);
        assert!(tree::parse(&m.text).unwrap().at(&["server", "enable_cors"]).is_none(), "{text:?}\n{}", m.text);
        assert!(tree::parse(&m.text).unwrap().at(&["security", "jwt_secret"]).is_none(), "{text:?}\n{}", m.text);
    }
    // Keys the text shows in both places: refused, naming both.
    assert!(error("config_version: \"1.1\"\ngpio:\n  pwm:\n    max_frequency: 5\n    max_frequency_hz: 6\n", "1.2")
        .contains("gpio.pwm.max_frequency (line 4) says 5 but gpio.pwm.max_frequency_hz (line 5) says 6"));
    assert!(error("config_version: \"1.0\"\ngpio: []\n", "1.2").starts_with("gpio (line 2) is not a mapping"));
}

#[test]
fn apply_as_root_keeps_the_files_owner_for_the_new_file_and_the_backup() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to give files away");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let (_dir, path) = file(V1_1.as_bytes());
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let applied = apply(&plan(&path, "1.2").unwrap()).unwrap();
    for file in [&path, &applied.backup] {
        let meta = fs::metadata(file).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{}", file.display());
    }
}
