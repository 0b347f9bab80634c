//! Experimental features: the switches under `experimental_features`, the feature names of
//! the specification and what each turns on.
//!
//! An entry of `experimental_features.features` names a feature of [`FEATURES`] (`gpio.pwm`),
//! a tool (`spi.transfer`) or a whole namespace (`uart`). [`FEATURES`] is the one table of
//! feature names: tool gating, the warnings of a configuration check and the capability
//! report all read it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A feature name of the specification, and what it turns on.
#[derive(Debug)]
pub struct Feature {
    pub name: &'static str,
    /// What the feature is, for operators and the capability report.
    pub description: &'static str,
    /// The experimental tools it turns on; none for a feature that is not a tool.
    pub tools: &'static [&'static str],
}

/// The feature names `experimental_features.features[].name` may use besides tool names
/// and namespaces.
pub const FEATURES: [Feature; 3] = [
    Feature {
        name: "gpio.pwm",
        description: "Pulse-width modulation on GPIO pins, within the limits of gpio.pwm.",
        tools: &["gpio.pwm_enable", "gpio.pwm_disable", "gpio.pwm_start"],
    },
    Feature {
        name: "camera.video_recording",
        description: "Video recording with the camera, within camera.max_video_seconds.",
        tools: &["camera.record_video"],
    },
    Feature {
        name: "updates.delta",
        description: "Delta self-updates: the self-update downloads the release's delta from the installed \
                      release when the repository publishes one (deltas.json), and the whole package otherwise.",
        tools: &[],
    },
];

/// The names of [`FEATURES`], comma-separated, for messages.
pub fn feature_names() -> String {
    FEATURES.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentalConfig {
    /// Master switch: experimental tools stay hidden and refused unless this is true.
    pub enabled: bool,
    pub features: Vec<FeatureFlag>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureFlag {
    /// A feature of [`FEATURES`] (`gpio.pwm`), a tool name (`spi.transfer`) or a namespace
    /// (`uart`).
    pub name: String,
    pub enabled: bool,
    /// Must be true: the operator has read what the feature may do.
    #[serde(default)]
    pub acknowledged_risks: bool,
}

impl FeatureFlag {
    /// Whether this entry turns something on (given the master switch).
    fn on(&self) -> bool {
        self.enabled && self.acknowledged_risks
    }
}

/// What the name of a feature flag refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlagTarget {
    /// A feature of the specification (`gpio.pwm`).
    Feature,
    /// One tool (`spi.transfer`).
    Tool,
    /// Every tool of a namespace (`uart`).
    Namespace,
    /// Nothing this build knows: the entry turns nothing on.
    Unknown,
}

/// The experimental features as this server applies them.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ExperimentalReport {
    /// experimental_features.enabled: nothing experimental is on without it.
    pub enabled: bool,
    /// Each feature name this build knows, whether it is on, and what it turns on.
    pub features: Vec<FeatureStatus>,
    /// The entries of experimental_features.features, as configured, and whether each is
    /// in effect.
    pub flags: Vec<FlagStatus>,
}

/// A feature name of the specification and its state.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FeatureStatus {
    /// The feature's name, as experimental_features.features[].name takes it.
    pub name: String,
    /// Whether it is on: named itself, or each of its tools turned on by name or namespace.
    pub enabled: bool,
    /// What the feature is.
    pub description: String,
    /// The tools it turns on (none for a feature that is not a tool).
    pub tools: Vec<String>,
}

/// An entry of experimental_features.features and its effect.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FlagStatus {
    /// The name as configured.
    pub name: String,
    /// What the name refers to: `feature`, `tool`, `namespace` or `unknown`.
    pub refers_to: FlagTarget,
    /// The entry's `enabled`.
    pub enabled: bool,
    /// The entry's `acknowledged_risks`.
    pub acknowledged_risks: bool,
    /// Whether it turns something on: the master switch, enabled and acknowledged_risks all
    /// true, and a name this build knows.
    pub in_effect: bool,
}

/// What `name` refers to, given the names of all tools.
fn target(name: &str, tools: &[&str]) -> FlagTarget {
    if FEATURES.iter().any(|f| f.name == name) {
        FlagTarget::Feature
    } else if tools.contains(&name) {
        FlagTarget::Tool
    } else if tools.iter().any(|t| t.split('.').next() == Some(name)) {
        FlagTarget::Namespace
    } else {
        FlagTarget::Unknown
    }
}

impl ExperimentalConfig {
    /// Whether the experimental tool `tool` is turned on: by its name, its namespace, or a
    /// feature of [`FEATURES`] that lists it.
    pub fn allows(&self, tool: &str) -> bool {
        let namespace = tool.split('.').next().unwrap_or(tool);
        let by_feature = |name: &str| FEATURES.iter().any(|f| f.name == name && f.tools.contains(&tool));
        self.enabled
            && self.features.iter().any(|f| f.on() && (f.name == tool || f.name == namespace || by_feature(&f.name)))
    }

    /// Whether the feature `name` of [`FEATURES`] is on: named itself, or (for a feature
    /// made of tools) each of its tools turned on by name or namespace. The self-update asks
    /// this for `updates.delta`.
    pub fn feature_enabled(&self, name: &str) -> bool {
        let named = self.enabled && self.features.iter().any(|f| f.on() && f.name == name);
        named
            || FEATURES
                .iter()
                .find(|f| f.name == name)
                .is_some_and(|f| !f.tools.is_empty() && f.tools.iter().all(|t| self.allows(t)))
    }

    /// Entries that turn nothing on although they look meant to: an unknown name, or one
    /// enabled without acknowledged_risks. `tools` are the names of all tools.
    pub fn warnings(&self, tools: &[&str]) -> Vec<String> {
        let mut warnings = Vec::new();
        for (i, flag) in self.features.iter().enumerate() {
            let key = format!("experimental_features.features[{i}]");
            if target(&flag.name, tools) == FlagTarget::Unknown {
                warnings.push(format!(
                    "{key}.name: {:?} is neither a feature this build knows ({}) nor a tool name or namespace; \
                     it turns nothing on",
                    flag.name,
                    feature_names()
                ));
            } else if flag.enabled && !flag.acknowledged_risks {
                warnings.push(format!(
                    "{key} ({}) is enabled without acknowledged_risks: true, so it stays off",
                    flag.name
                ));
            }
        }
        if !self.enabled && self.features.iter().any(FeatureFlag::on) {
            warnings.push(
                "experimental_features.enabled is false: the features listed under it stay off until it is true".into(),
            );
        }
        warnings
    }

    /// The report of `system.get_capabilities`; `tools` are the names of all tools.
    pub fn report(&self, tools: &[&str]) -> ExperimentalReport {
        ExperimentalReport {
            enabled: self.enabled,
            features: FEATURES
                .iter()
                .map(|f| FeatureStatus {
                    name: f.name.into(),
                    enabled: self.feature_enabled(f.name),
                    description: f.description.into(),
                    tools: f.tools.iter().map(|t| t.to_string()).collect(),
                })
                .collect(),
            flags: self
                .features
                .iter()
                .map(|f| {
                    let refers_to = target(&f.name, tools);
                    FlagStatus {
                        name: f.name.clone(),
                        refers_to,
                        enabled: f.enabled,
                        acknowledged_risks: f.acknowledged_risks,
                        in_effect: self.enabled && f.on() && refers_to != FlagTarget::Unknown,
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TOOLS: [&str; 6] =
        ["gpio.read_pin", "gpio.pwm_enable", "gpio.pwm_disable", "gpio.pwm_start", "camera.record_video", "uart.read"];

    fn flags(enabled: bool, names: &[&str]) -> ExperimentalConfig {
        ExperimentalConfig {
            enabled,
            features: names
                .iter()
                .map(|n| FeatureFlag { name: n.to_string(), enabled: true, acknowledged_risks: true })
                .collect(),
        }
    }

    #[test]
    fn a_feature_name_turns_on_the_tools_it_lists_and_nothing_else() {
        let c = flags(true, &["gpio.pwm"]);
        for tool in ["gpio.pwm_enable", "gpio.pwm_disable", "gpio.pwm_start"] {
            assert!(c.allows(tool), "{tool}");
        }
        assert!(!c.allows("camera.record_video"));
        assert!(!c.allows("uart.read"));
        assert!(flags(true, &["camera.video_recording"]).allows("camera.record_video"));
    }

    #[test]
    fn tool_names_and_namespaces_still_turn_tools_on() {
        assert!(flags(true, &["uart"]).allows("uart.read"));
        assert!(flags(true, &["gpio.pwm_enable"]).allows("gpio.pwm_enable"));
        assert!(!flags(true, &["gpio.pwm_enable"]).allows("gpio.pwm_disable"));
    }

    #[test]
    fn nothing_is_on_without_the_master_switch_or_the_acknowledgement() {
        assert!(!flags(false, &["gpio.pwm"]).allows("gpio.pwm_enable"));
        assert!(!flags(false, &["updates.delta"]).feature_enabled("updates.delta"));
        let mut c = flags(true, &["gpio.pwm", "updates.delta"]);
        for f in &mut c.features {
            f.acknowledged_risks = false;
        }
        assert!(!c.allows("gpio.pwm_enable"));
        assert!(!c.feature_enabled("updates.delta"));
    }

    #[test]
    fn turning_on_a_known_feature_warns_of_nothing() {
        assert!(flags(true, &["updates.delta"]).warnings(&TOOLS).is_empty());
        assert!(flags(true, &["gpio.pwm"]).warnings(&TOOLS).is_empty());
    }

    #[test]
    fn a_feature_is_enabled_by_its_name_or_by_all_of_its_tools() {
        assert!(flags(true, &["updates.delta"]).feature_enabled("updates.delta"));
        assert!(!flags(true, &["gpio"]).feature_enabled("updates.delta"));
        assert!(flags(true, &["gpio"]).feature_enabled("gpio.pwm"), "the namespace turns on every PWM tool");
        assert!(!flags(true, &["gpio.pwm_enable"]).feature_enabled("gpio.pwm"), "one tool is not the feature");
        assert!(!flags(true, &["gpio.pwm"]).feature_enabled("no.such.feature"));
    }

    #[test]
    fn an_unknown_name_is_a_warning_that_lists_the_known_features() {
        let c = flags(true, &["gpio.pwm", "uart", "uart.read", "gpio.pwn"]);
        let w = c.warnings(&TOOLS);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("experimental_features.features[3].name: \"gpio.pwn\""), "{w:?}");
        assert!(w[0].contains("gpio.pwm, camera.video_recording, updates.delta"), "{w:?}");
    }

    #[test]
    fn an_entry_that_stays_off_for_a_missing_switch_is_a_warning() {
        let mut c = flags(true, &["uart"]);
        c.features[0].acknowledged_risks = false;
        let w = c.warnings(&TOOLS);
        assert!(w[0].contains("features[0] (uart)") && w[0].contains("acknowledged_risks"), "{w:?}");
        let w = flags(false, &["uart"]).warnings(&TOOLS);
        assert!(w[0].contains("experimental_features.enabled is false"), "{w:?}");
        assert!(ExperimentalConfig::default().warnings(&TOOLS).is_empty());
    }

    #[test]
    fn the_report_lists_every_known_feature_and_what_each_entry_refers_to() {
        let r = flags(true, &["gpio.pwm", "uart", "camera.record_video", "nope"]).report(&TOOLS);
        let names: Vec<&str> = r.features.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["gpio.pwm", "camera.video_recording", "updates.delta"]);
        let on: Vec<bool> = r.features.iter().map(|f| f.enabled).collect();
        assert_eq!(on, [true, true, false]);
        assert_eq!(r.features[0].tools, ["gpio.pwm_enable", "gpio.pwm_disable", "gpio.pwm_start"]);
        let targets: Vec<(FlagTarget, bool)> = r.flags.iter().map(|f| (f.refers_to, f.in_effect)).collect();
        assert_eq!(
            targets,
            [
                (FlagTarget::Feature, true),
                (FlagTarget::Namespace, true),
                (FlagTarget::Tool, true),
                (FlagTarget::Unknown, false)
            ]
        );
    }
}
