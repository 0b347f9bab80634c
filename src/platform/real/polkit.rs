//! The polkit rule that authorises the ops agent, generated from the configuration.
//!
//! The agent runs as an unprivileged user with no capabilities; systemd and logind ask
//! polkit whether it may act. The rule grants exactly what the agent needs and only to its
//! user: `start`, `stop` and `restart` of the listed units (systemd passes the `unit` and
//! `verb` details with `org.freedesktop.systemd1.manage-units`), and, when asked for,
//! logind's reboot and power-off actions. Everything else is left to polkit's other rules
//! and defaults, which for a user without a session means "no".
//!
//! Enabling and disabling are not granted. systemd checks them against
//! `org.freedesktop.systemd1.manage-unit-files`, which carries no unit name, and the same
//! action covers masking, linking, presets and the default target of every unit on the host.
//! Granting it would let the agent link a unit file it wrote under the name of an allowed
//! unit and then start it as root, which undoes the unit list. So enable and disable fail
//! with polkit's refusal, and the agent's message tells the operator to run them with sudo.
//!
//! Two consequences of how systemd names units to polkit: `unit` is the unit's primary name
//! (an alias such as `sshd.service` does not match `ssh.service`, so list primary names);
//! and starting a *transient* unit is checked against the same action with verb `start`, so
//! a listed name that has no unit file could be created by the agent as a new root unit.
//! Only list units that are installed.
//!
//! logind's power actions are granted without their `-ignore-inhibit` variants, so a
//! reboot still waits for anything holding a shutdown inhibitor lock.
//!
//! JavaScript rules need polkit 0.106 or later (Raspberry Pi OS bookworm has 122); older
//! polkit reads only `.pkla` files and would ignore this rule.

use crate::platform::UnitName;

/// The verbs systemd reports for the operations the agent performs on units.
const UNIT_VERBS: [&str; 3] = ["start", "stop", "restart"];

/// The product's own units, which the agent restarts after it installs or rolls back a
/// release (restart only: starting and stopping them stays with the administrator).
pub const PRODUCT_UNITS: [&str; 2] = ["mcp-raspi-server.service", "raspi-ops-agent.service"];

/// logind's actions for scheduling a reboot or power-off, also when others are logged in.
const POWER_ACTIONS: [&str; 4] = [
    "org.freedesktop.login1.reboot",
    "org.freedesktop.login1.reboot-multiple-sessions",
    "org.freedesktop.login1.power-off",
    "org.freedesktop.login1.power-off-multiple-sessions",
];

/// The rule file's text (JavaScript, for `/etc/polkit-1/rules.d/50-mcp-raspi.rules`) that
/// lets only `agent_user` start, stop and restart only `units`, and reboot or power off the
/// host when `allow_power`. Include the OS upgrade unit in `units` for OS upgrades to work.
pub fn polkit_rules(agent_user: &str, units: &[UnitName], allow_power: bool) -> String {
    let mut out = String::new();
    out.push_str(
        "// Authorises the mcp-raspi ops agent. Generated from the mcp-raspi configuration: edit that and\n\
         // generate again rather than editing here.\n\
         //\n\
         // Only the agent's user may start, stop and restart only the units listed below. Enabling and\n\
         // disabling unit files is not granted: polkit names no unit for it, so it could not be limited\n\
         // to these units. Every listed unit must be installed, since starting a transient unit with a\n\
         // listed name is checked by this same rule.\n",
    );
    out.push_str("polkit.addRule(function (action, subject) {\n");
    out.push_str(&format!("    if (subject.user !== {}) {{\n", js_string(agent_user)));
    out.push_str("        return polkit.Result.NOT_HANDLED;\n    }\n");
    out.push_str("    if (action.id === \"org.freedesktop.systemd1.manage-units\") {\n");
    out.push_str(&format!("        var units = {};\n", js_array(units.iter().map(UnitName::as_str), "        ")));
    out.push_str(&format!("        var verbs = {};\n", js_array(UNIT_VERBS, "        ")));
    out.push_str(
        "        if (units.indexOf(action.lookup(\"unit\")) >= 0 && verbs.indexOf(action.lookup(\"verb\")) >= 0) {\n\
         \x20           return polkit.Result.YES;\n\
         \x20       }\n",
    );
    out.push_str("        // mcp-raspi's own units, restarted into a new release by the self-update.\n");
    out.push_str(&format!("        var own = {};\n", js_array(PRODUCT_UNITS, "        ")));
    out.push_str(
        "        if (own.indexOf(action.lookup(\"unit\")) >= 0 && action.lookup(\"verb\") === \"restart\") {\n\
         \x20           return polkit.Result.YES;\n\
         \x20       }\n\
         \x20       return polkit.Result.NOT_HANDLED;\n\
         \x20   }\n",
    );
    if allow_power {
        out.push_str("    // Reboot and power off; inhibitor locks are still respected.\n");
        out.push_str(&format!("    var power = {};\n", js_array(POWER_ACTIONS, "    ")));
        out.push_str("    if (power.indexOf(action.id) >= 0) {\n        return polkit.Result.YES;\n    }\n");
    }
    out.push_str("    return polkit.Result.NOT_HANDLED;\n});\n");
    out
}

/// A JavaScript array of string literals, one per line, closed at `indent`.
fn js_array<'a>(items: impl IntoIterator<Item = &'a str>, indent: &str) -> String {
    let mut out = String::from("[\n");
    for item in items {
        out.push_str(&format!("{indent}    {},\n", js_string(item)));
    }
    out.push_str(indent);
    out.push(']');
    out
}

/// A JavaScript string literal holding `s`. Every character outside a small safe set is
/// written as a `\uXXXX` escape, so no input can end the literal or the line.
fn js_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for unit in s.encode_utf16() {
        match char::from_u32(u32::from(unit)) {
            Some(c) if c.is_ascii_alphanumeric() || "._-@:+".contains(c) => out.push(c),
            _ => out.push_str(&format!("\\u{unit:04x}")),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::process::Command;

    use super::*;

    fn units(names: &[&str]) -> Vec<UnitName> {
        names.iter().map(|n| UnitName::parse(n).unwrap()).collect()
    }

    #[test]
    fn the_rule_names_the_agent_user_and_each_unit_once() {
        let text = polkit_rules("mcp-ops", &units(&["nginx", "mcp-raspi-os-upgrade"]), false);
        assert!(text.contains("if (subject.user !== \"mcp-ops\")"), "{text}");
        assert!(text.contains("\"nginx.service\""), "{text}");
        assert!(text.contains("\"mcp-raspi-os-upgrade.service\""), "{text}");
        assert_eq!(text.matches("mcp-ops").count(), 1, "{text}");
        assert!(text.contains("\"start\"") && text.contains("\"stop\"") && text.contains("\"restart\""));
    }

    #[test]
    fn the_rule_grants_only_to_the_agent_user_and_never_unit_files() {
        let text = polkit_rules("mcp-ops", &units(&["nginx"]), true);
        assert_eq!(text.matches("polkit.Result.YES").count(), 3, "{text}");
        assert!(!text.contains("isInGroup"), "{text}");
        assert!(!text.contains("\"org.freedesktop.systemd1.manage-unit-files\""), "{text}");
        assert!(!text.contains("ignore-inhibit"), "{text}");
    }

    #[test]
    fn power_actions_appear_only_when_allowed() {
        let with = polkit_rules("mcp-ops", &[], true);
        let without = polkit_rules("mcp-ops", &[], false);
        for action in POWER_ACTIONS {
            assert!(with.contains(&format!("\"{action}\"")), "{with}");
            assert!(!without.contains(action), "{without}");
        }
    }

    #[test]
    fn strings_are_escaped_so_nothing_can_leave_the_literal() {
        assert_eq!(js_string("getty@tty1.service"), "\"getty@tty1.service\"");
        assert_eq!(js_string("a\\x2db.service"), "\"a\\u005cx2db.service\"");
        assert_eq!(js_string("x\"); evil(\"\n"), "\"x\\u0022\\u0029\\u003b\\u0020evil\\u0028\\u0022\\u000a\"");
        assert_eq!(js_string("\u{2028}é😀"), "\"\\u2028\\u00e9\\ud83d\\ude00\"");
        let text = polkit_rules("a\"b", &units(&["a\\x2db.service"]), false);
        assert!(text.contains("\"a\\u0022b\"") && text.contains("\"a\\u005cx2db.service\""), "{text}");
    }

    fn node() -> Option<&'static str> {
        match Command::new("node").arg("--version").output() {
            Ok(o) if o.status.success() => Some("node"),
            _ => {
                eprintln!("skipped: node is not installed, so the rule's JavaScript is not checked");
                None
            }
        }
    }

    #[test]
    fn the_generated_rule_is_valid_javascript() {
        let Some(node) = node() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("50-mcp-raspi.rules.js");
        std::fs::write(&path, polkit_rules("mcp-ops", &units(&["nginx", "a\\x2db.service"]), true)).unwrap();
        let out = Command::new(node).arg("--check").arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs the rule under a stand-in for polkit's JavaScript API and returns each answer.
    const HARNESS: &str = r#"
var rules = [];
var polkit = { Result: { YES: "yes", NO: "no", NOT_HANDLED: "not handled" },
               addRule: function (f) { rules.push(f); } };
var fs = require("fs");
eval(fs.readFileSync(process.argv[2], "utf8"));
var cases = JSON.parse(process.argv[3]);
var answers = cases.map(function (c) {
    var action = { id: c[1], lookup: function (k) { return c[2][k]; } };
    return rules[0](action, { user: c[0] });
});
console.log(JSON.stringify(answers));
"#;

    #[test]
    fn the_generated_rule_answers_yes_only_for_the_agent_on_listed_units_and_verbs() {
        let Some(node) = node() else { return };
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.js");
        let harness = dir.path().join("harness.js");
        std::fs::write(&rules, polkit_rules("mcp-ops", &units(&["nginx", "mcp-raspi-os-upgrade"]), true)).unwrap();
        std::fs::write(&harness, HARNESS).unwrap();
        let manage = "org.freedesktop.systemd1.manage-units";
        let cases = serde_json::json!([
            ["mcp-ops", manage, {"unit": "nginx.service", "verb": "restart"}],
            ["mcp-ops", manage, {"unit": "mcp-raspi-os-upgrade.service", "verb": "start"}],
            ["mcp-ops", manage, {"unit": "ssh.service", "verb": "stop"}],
            ["mcp-ops", manage, {"unit": "nginx.service", "verb": "kill"}],
            ["mcp-ops", manage, {}],
            ["mcp-ops", "org.freedesktop.systemd1.manage-unit-files", {}],
            ["mcp-ops", "org.freedesktop.login1.reboot", {}],
            ["mcp-ops", "org.freedesktop.login1.power-off-multiple-sessions", {}],
            ["mcp-ops", "org.freedesktop.login1.reboot-ignore-inhibit", {}],
            ["alice", manage, {"unit": "nginx.service", "verb": "restart"}],
            ["alice", "org.freedesktop.login1.reboot", {}],
            ["mcp-ops", manage, {"unit": "mcp-raspi-server.service", "verb": "restart"}],
            ["mcp-ops", manage, {"unit": "raspi-ops-agent.service", "verb": "restart"}],
            ["mcp-ops", manage, {"unit": "mcp-raspi-server.service", "verb": "stop"}],
            ["mcp-ops", manage, {"unit": "raspi-ops-agent.service", "verb": "start"}],
            ["alice", manage, {"unit": "mcp-raspi-server.service", "verb": "restart"}],
        ]);
        let out = Command::new(node).arg(&harness).arg(&rules).arg(cases.to_string()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let answers: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        let (yes, no) = ("yes", "not handled");
        assert_eq!(answers, [yes, yes, no, no, no, no, yes, yes, no, no, no, yes, yes, no, no, no]);
    }
}
