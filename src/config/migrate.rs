//! Configuration migrations (spec §2.3): moving a file from the schema version it was
//! written for to a newer one, as `mcp-raspi-config migrate plan|apply --to-version V`.
//!
//! - 1.0 → 1.1 adds the `gpio.pwm` section, with the defaults.
//! - 1.1 → 1.2 moves `server.enable_cors` and `server.cors_origins` into `server.cors`
//!   (`enabled`, `allowed_origins`), removes `security.jwt_secret` (this server has no such
//!   secret) and renames the 1.1 experimental `gpio.pwm.max_frequency` to
//!   `max_frequency_hz`.
//!
//! Each step is decided on the parsed document ([`tree`]) as a list of [`Op`]s, applied to
//! that tree and to the text ([`text`]), which keeps comments and layout. The edited text
//! must parse back to the migrated tree; when it does not, or the text uses a form the
//! editor does not change, the tree is written out instead and the plan says that the
//! comments are gone. Before anything is written the result must load with the real loader:
//! a migration never leaves a file the server cannot start with.

mod text;
mod tree;

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{hex, Config, ConfigError, CONFIG_VERSION};
use tree::{Kind, Node, Value};

/// A configuration schema version, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SchemaVersion {
    pub major: u32,
    pub minor: u32,
}

/// The versions this build migrates between, oldest first; the last is the one it reads.
pub const KNOWN: [SchemaVersion; 3] =
    [SchemaVersion { major: 1, minor: 0 }, SchemaVersion { major: 1, minor: 1 }, SchemaVersion { major: 1, minor: 2 }];

impl SchemaVersion {
    /// Reads `1.2` or `1.2.0` (a patch number names the same schema).
    pub fn parse(text: &str) -> Option<SchemaVersion> {
        let mut parts = text.trim().split('.');
        fn number(part: Option<&str>) -> Option<&str> {
            part.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        }
        let major = number(parts.next())?.parse().ok()?;
        let minor = number(parts.next())?.parse().ok()?;
        match (parts.next(), parts.next()) {
            (None, _) => {}
            (patch @ Some(_), None) => {
                number(patch)?;
            }
            _ => return None,
        }
        Some(SchemaVersion { major, minor })
    }

    /// The version this build reads ([`CONFIG_VERSION`]).
    pub fn current() -> SchemaVersion {
        KNOWN[KNOWN.len() - 1]
    }

    fn is_known(self) -> bool {
        KNOWN.contains(&self)
    }

    fn next(self) -> Option<SchemaVersion> {
        KNOWN.iter().position(|v| *v == self).and_then(|i| KNOWN.get(i + 1)).copied()
    }
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

fn known_list() -> String {
    KNOWN.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The default configuration file, which the migration commands need not be told.
pub const DEFAULT_PATH: &str = "/etc/mcp-raspi/config.yml";

/// The command line that runs `verb` (`plan` or `apply`) of the migration to the version
/// this build reads on the file `origin`.
pub fn command(verb: &str, origin: &str) -> String {
    let mut command = format!("mcp-raspi-config migrate {verb} --to-version {CONFIG_VERSION}.0");
    if origin != DEFAULT_PATH {
        let quoted = if origin.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c)) {
            origin.to_string()
        } else {
            format!("'{}'", origin.replace('\'', r"'\''"))
        };
        command.push_str(&format!(" --config {quoted}"));
    }
    command
}

/// Only the version of a configuration: read first, so that an old file's renamed keys are
/// not reported as unknown before its version is seen.
#[derive(Deserialize)]
pub(super) struct Declared {
    config_version: Option<serde_saphyr::Spanned<String>>,
}

/// Checks the version a configuration declares against the one this build reads; the error
/// says what to run when a migration can help. A file without a version passes, for the
/// full parse to report the missing key.
pub(super) fn check_declared(declared: Declared, origin: &str) -> Result<(), ConfigError> {
    let Some(version) = declared.config_version else { return Ok(()) };
    let (said, line) = (version.value.as_str(), version.referenced.line());
    let current = SchemaVersion::current();
    let message = match SchemaVersion::parse(said) {
        Some(v) if v == current => return Ok(()),
        Some(v) if v.is_known() && v < current => format!(
            "line {line} of {origin}: the file is written for version \"{said}\" and this build reads \
             \"{CONFIG_VERSION}\"; see what changes with `{}`, then make the change with `{}`",
            command("plan", origin),
            command("apply", origin)
        ),
        Some(v) if v > current => format!(
            "line {line} of {origin}: the file is written for version \"{said}\", newer than the \"{CONFIG_VERSION}\" this build \
             reads: install the mcp-raspi release it was written for, or start again from the example configuration"
        ),
        _ => format!(
            "line {line} of {origin}: {said:?} is not a configuration version this build knows ({}); this build reads \
             \"{CONFIG_VERSION}\"",
            known_list()
        ),
    };
    Err(ConfigError::Invalid { key: "config_version".into(), message })
}

/// A new value a migration writes.
#[derive(Clone, Debug)]
pub(crate) enum New {
    /// A scalar's YAML text and its value.
    Scalar(&'static str, Value),
    Map(Vec<NewEntry>),
}

/// A new `key: value`, with a comment line above it.
#[derive(Clone, Debug)]
pub(crate) struct NewEntry {
    pub comment: Option<&'static str>,
    pub key: &'static str,
    pub value: New,
}

/// One change a migration step makes; paths are keys of nested mappings.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// Sets the scalar at `path`.
    Set {
        path: Vec<&'static str>,
        raw: String,
        value: Value,
    },
    /// Adds `entry` at the end of the mapping at `parent` (the top level when empty).
    Insert {
        parent: Vec<&'static str>,
        entry: NewEntry,
    },
    /// Moves entries of the mapping at `parent` (old key, new key) into its mapping
    /// `container`, which is made at the first one's place when missing.
    MoveInto {
        parent: Vec<&'static str>,
        container: &'static str,
        moves: Vec<(&'static str, &'static str)>,
    },
    Remove {
        path: Vec<&'static str>,
    },
    Rename {
        path: Vec<&'static str>,
        key: &'static str,
    },
}

/// Why a migration cannot be made; nothing has been written.
#[derive(Debug)]
pub enum MigrateError {
    /// The file could not be read.
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not UTF-8 text.
    NotText { path: PathBuf },
    /// The file is not YAML the parser reads.
    Parse { path: PathBuf, message: String },
    /// `--to-version` is unknown, or older than the file.
    Target(String),
    /// The file's `config_version` is missing or unknown.
    FileVersion(String),
    /// The file says something the migration cannot carry over as it is.
    Content(String),
    /// The migrated file would not load.
    WouldNotLoad(String),
    /// The file changed after it was read.
    Changed { path: PathBuf },
    /// The backup or the new file could not be written; the file is as it was.
    Write(String),
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrateError::Read { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            MigrateError::NotText { path } => {
                write!(
                    f,
                    "{} is not UTF-8 text, so it is not a configuration file; nothing was changed",
                    path.display()
                )
            }
            MigrateError::Parse { path, message } => {
                write!(
                    f,
                    "{} is not YAML this build reads; fix it first (nothing was changed):\n{message}",
                    path.display()
                )
            }
            MigrateError::Target(m) | MigrateError::FileVersion(m) | MigrateError::Content(m) => f.write_str(m),
            MigrateError::WouldNotLoad(m) => {
                write!(f, "the migrated file would not load, so nothing was written:\n{m}")
            }
            MigrateError::Changed { path } => {
                write!(
                    f,
                    "{} changed while it was being migrated; nothing was written: run the command again",
                    path.display()
                )
            }
            MigrateError::Write(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for MigrateError {}

/// One step of a migration and what it changes, for people.
#[derive(Clone, Debug)]
pub struct Step {
    pub from: SchemaVersion,
    pub to: SchemaVersion,
    pub changes: Vec<String>,
}

/// A migrated text.
#[derive(Clone, Debug)]
pub struct Migration {
    pub from: SchemaVersion,
    pub to: SchemaVersion,
    /// Empty when the file is already at `to`.
    pub steps: Vec<Step>,
    pub text: String,
    /// Why the file was written out from its parsed content (comments lost); `None` when
    /// its comments and layout were kept.
    pub rewritten: Option<String>,
    /// Lines (0-based) of the original that hold a removed secret.
    secret_lines: Vec<usize>,
}

const PWM_COMMENT: &str = "Limits of gpio.pwm_enable and gpio.pwm_start: frequency in Hz, duty cycles in percent.";

fn pwm_section() -> NewEntry {
    let scalar = |key, raw, n| NewEntry { comment: None, key, value: New::Scalar(raw, Value::Int(n)) };
    NewEntry {
        comment: Some(PWM_COMMENT),
        key: "pwm",
        value: New::Map(vec![
            scalar("max_frequency_hz", "125000000", 125_000_000),
            scalar("min_duty_cycle", "0", 0),
            scalar("max_duty_cycle", "100", 100),
        ]),
    }
}

fn is_mapping(node: &Node) -> bool {
    matches!(node.kind, Kind::Map(_))
}

/// Whether two values mean the same to the typed configuration: scalars by value (`yes` and
/// `true` alike), everything else as [`tree::same`].
fn equivalent(a: &Node, b: &Node) -> bool {
    match (&a.kind, &b.kind) {
        (Kind::Scalar(x), Kind::Scalar(y)) => x.value == y.value,
        (Kind::Seq(x), Kind::Seq(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| equivalent(v, w)),
        _ => tree::same(a, b),
    }
}

/// The ops of the step from `from` to the next version, and what they change.
fn plan_step(tree: &Node, from: SchemaVersion, to: SchemaVersion) -> Result<(Vec<Op>, Vec<String>), MigrateError> {
    let mut ops = Vec::new();
    let mut changes = Vec::new();
    match (from.major, from.minor) {
        (1, 0) => match tree.get("gpio") {
            None => {
                let entry = NewEntry { comment: None, key: "gpio", value: New::Map(vec![pwm_section()]) };
                ops.push(Op::Insert { parent: vec![], entry });
                changes.push(
                    "gpio.pwm added with the defaults (max_frequency_hz 125000000, duty cycles 0 to 100%): the \
                     limits the PWM tools enforce"
                        .into(),
                );
            }
            Some(gpio) if gpio.is_null() || is_mapping(gpio) => match gpio.get("pwm") {
                Some(pwm) => changes.push(format!("gpio.pwm (line {}) is already there: kept as it is", pwm.line)),
                None => {
                    ops.push(Op::Insert { parent: vec!["gpio"], entry: pwm_section() });
                    changes.push(
                        "gpio.pwm added with the defaults (max_frequency_hz 125000000, duty cycles 0 to 100%): \
                         the limits the PWM tools enforce"
                            .into(),
                    );
                }
            },
            Some(gpio) => {
                return Err(MigrateError::Content(format!(
                    "gpio (line {}) is not a mapping, and the migration to 1.1 adds gpio.pwm to it: make it a \
                     mapping (or remove it), then run the migration again",
                    gpio.line
                )))
            }
        },
        (1, 1) => {
            plan_cors(tree, &mut ops, &mut changes)?;
            if let Some(secret) = tree.at(&["security", "jwt_secret"]) {
                ops.push(Op::Remove { path: vec!["security", "jwt_secret"] });
                changes.push(format!(
                    "security.jwt_secret (line {}) removed: this server has no JWT secret (it issues no JWTs; \
                     bearer tokens are listed under security.tokens, their values in security.secrets_file). \
                     Its value is dropped; only the backup keeps it",
                    secret.line
                ));
            }
            plan_rename(tree, ["gpio", "pwm"], "max_frequency", "max_frequency_hz", &mut ops, &mut changes)?;
        }
        _ => return Err(MigrateError::Target(format!("there is no migration from {from} to {to}"))),
    }
    let declared = tree.get("config_version").map(Node::brief).unwrap_or_default();
    let raw = format!("\"{to}\"");
    changes.push(format!("config_version: {declared} → {raw}"));
    ops.push(Op::Set { path: vec!["config_version"], raw, value: Value::Str(to.to_string()) });
    Ok((ops, changes))
}

/// 1.1 → 1.2: `server.enable_cors` and `server.cors_origins` into `server.cors`.
fn plan_cors(tree: &Node, ops: &mut Vec<Op>, changes: &mut Vec<String>) -> Result<(), MigrateError> {
    let Some(server) = tree.get("server").filter(|s| is_mapping(s)) else { return Ok(()) };
    let cors = server.get("cors");
    let mut moves = Vec::new();
    for (old, new) in [("enable_cors", "enabled"), ("cors_origins", "allowed_origins")] {
        let Some(value) = server.get(old) else { continue };
        if let Some(c) = cors.filter(|c| !(c.is_null() || is_mapping(c))) {
            return Err(MigrateError::Content(format!(
                "server.cors (line {}) is not a mapping, and the migration to 1.2 moves server.{old} into it: make \
                 it a mapping, then run the migration again",
                c.line
            )));
        }
        match cors.and_then(|c| c.get(new)) {
            Some(existing) if equivalent(value, existing) => {
                ops.push(Op::Remove { path: vec!["server", old] });
                changes.push(format!(
                    "server.{old} (line {}) removed: server.cors.{new} (line {}) already says {}",
                    value.line,
                    existing.line,
                    existing.brief()
                ));
            }
            Some(existing) => {
                return Err(MigrateError::Content(format!(
                    "server.{old} (line {}) says {} but server.cors.{new} (line {}) says {}: remove the one that is \
                     wrong, then run the migration again",
                    value.line,
                    value.brief(),
                    existing.line,
                    existing.brief()
                )))
            }
            None => {
                moves.push((old, new));
                changes.push(format!("server.{old} (line {}) → server.cors.{new}", value.line));
            }
        }
    }
    if !moves.is_empty() {
        ops.push(Op::MoveInto { parent: vec!["server"], container: "cors", moves });
    }
    Ok(())
}

/// Renames `parent.old` to `parent.new`; the same value under both keys is kept once.
fn plan_rename(
    tree: &Node,
    parent: [&'static str; 2],
    old: &'static str,
    new: &'static str,
    ops: &mut Vec<Op>,
    changes: &mut Vec<String>,
) -> Result<(), MigrateError> {
    let Some(value) = tree.at(&[parent[0], parent[1], old]) else { return Ok(()) };
    let (path, prefix) = (vec![parent[0], parent[1], old], parent.join("."));
    match tree.at(&[parent[0], parent[1], new]) {
        Some(existing) if equivalent(value, existing) => {
            ops.push(Op::Remove { path });
            changes.push(format!("{prefix}.{old} (line {}) removed: {prefix}.{new} already says the same", value.line));
        }
        Some(existing) => {
            return Err(MigrateError::Content(format!(
                "{prefix}.{old} (line {}) says {} but {prefix}.{new} (line {}) says {}: remove the one that is wrong, \
                 then run the migration again",
                value.line,
                value.brief(),
                existing.line,
                existing.brief()
            )))
        }
        None => {
            ops.push(Op::Rename { path, key: new });
            changes.push(format!("{prefix}.{old} (line {}) → {prefix}.{new} (its 1.1 experimental name)", value.line));
        }
    }
    Ok(())
}

fn new_node(value: &New) -> Node {
    match value {
        New::Scalar(raw, value) => Node::new_scalar(raw, value.clone()),
        New::Map(entries) => Node::new_map(entries.iter().map(|e| (e.key.to_string(), new_node(&e.value))).collect()),
    }
}

/// Applies `op` to the parsed document (the planner has checked that it applies).
fn apply_to_tree(root: &mut Node, op: &Op) -> Result<(), MigrateError> {
    let missing = |path: &[&str]| MigrateError::Content(format!("{} is not a mapping", path.join(".")));
    match op {
        Op::Set { path, raw, value } => {
            let node = root.at_mut(path).ok_or_else(|| missing(path))?;
            *node = Node { line: node.line, ..Node::new_scalar(raw, value.clone()) };
        }
        Op::Insert { parent, entry } => {
            let entries = root.at_mut(parent).and_then(Node::entries_mut).ok_or_else(|| missing(parent))?;
            entries.push((entry.key.to_string(), new_node(&entry.value)));
        }
        Op::Remove { path } | Op::Rename { path, .. } => {
            let (last, parent) = path.split_last().ok_or_else(|| missing(path))?;
            let entries = root.at_mut(parent).and_then(Node::entries_mut).ok_or_else(|| missing(parent))?;
            match op {
                Op::Rename { key, .. } => {
                    if let Some(entry) = entries.iter_mut().find(|(k, _)| k == last) {
                        entry.0 = key.to_string();
                    }
                }
                _ => entries.retain(|(k, _)| k != last),
            }
        }
        Op::MoveInto { parent, container, moves } => {
            let entries = root.at_mut(parent).and_then(Node::entries_mut).ok_or_else(|| missing(parent))?;
            let first =
                entries.iter().position(|(k, _)| moves.iter().any(|(old, _)| k == old)).unwrap_or(entries.len());
            let mut moved = Vec::new();
            for (old, new) in moves {
                if let Some(i) = entries.iter().position(|(k, _)| k == old) {
                    moved.push((new.to_string(), entries.remove(i).1));
                }
            }
            match entries.iter_mut().find(|(k, _)| k == container) {
                Some((_, node)) => node.entries_mut().ok_or_else(|| missing(&[container]))?.extend(moved),
                None => entries.insert(first.min(entries.len()), (container.to_string(), Node::new_map(moved))),
            }
        }
    }
    Ok(())
}

/// The version a parsed configuration declares.
fn declared_version(root: &Node) -> Result<SchemaVersion, MigrateError> {
    let Some(node) = root.get("config_version") else {
        return Err(MigrateError::FileVersion(format!(
            "the file has no config_version, so the version it was written for is unknown: add the line \
             config_version: \"1.1\" (or the version it was written for: {}), then run the migration again",
            known_list()
        )));
    };
    let text = match &node.kind {
        Kind::Scalar(tree::Scalar { value: Value::Str(s), .. }) => s.clone(),
        _ => node.brief(),
    };
    SchemaVersion::parse(&text).filter(|v| v.is_known()).ok_or_else(|| {
        MigrateError::FileVersion(format!(
            "config_version (line {}) is {}, not a version this build migrates ({}); nothing was changed",
            node.line,
            node.brief(),
            known_list()
        ))
    })
}

/// The header of a file written out from its parsed content.
fn rewritten_header(from: SchemaVersion, to: SchemaVersion) -> String {
    format!(
        "# mcp-raspi configuration, migrated from {from} to {to} by `mcp-raspi-config migrate apply`.\n\
         # It was written out again from its parsed content, so its comments are gone: the file as it\n\
         # was, comments included, is the backup beside it.\n"
    )
}

/// Migrates a configuration's text to `to` (no file is touched).
pub fn migrate_text(text: &str, to: SchemaVersion) -> Result<Migration, MigrateError> {
    let parse_error = |message| MigrateError::Parse { path: PathBuf::from("the file"), message };
    let mut root = tree::parse(text).map_err(parse_error)?;
    let from = declared_version(&root)?;
    if from > to {
        return Err(MigrateError::Target(format!(
            "the file is at {from} and --to-version says {to}: migrations only move a file forward (if `migrate \
             apply` migrated this file, its backup beside it holds the file as it was)"
        )));
    }
    let mut steps = Vec::new();
    let mut ops = Vec::new();
    let mut at = from;
    while at < to {
        let next = at.next().ok_or_else(|| MigrateError::Target(format!("there is no migration from {at}")))?;
        let (step_ops, changes) = plan_step(&root, at, next)?;
        for op in &step_ops {
            apply_to_tree(&mut root, op)?;
        }
        ops.extend(step_ops);
        steps.push(Step { from: at, to: next, changes });
        at = next;
    }
    if steps.is_empty() {
        return Ok(Migration { from, to, steps, text: text.to_string(), rewritten: None, secret_lines: Vec::new() });
    }
    let original = text::Doc::new(text);
    let edited = ops.iter().try_fold(original.clone(), |mut doc, op| doc.apply(op).map(|()| doc)).map(|d| d.text());
    let rewritten = match &edited {
        Ok(edited) => match tree::parse(edited) {
            Ok(parsed) if tree::same(&parsed, &root) => None,
            Ok(_) => Some("the edited text did not read back as the migration means".to_string()),
            Err(e) => Some(format!("the edited text did not parse ({e})")),
        },
        Err(text::Unsupported(why)) => Some(why.clone()),
    };
    let new_text = match (edited, &rewritten) {
        (Ok(edited), None) => edited,
        _ => {
            let written = rewritten_header(from, to) + &tree::emit(&root);
            if !tree::parse(&written).is_ok_and(|parsed| tree::same(&parsed, &root)) {
                return Err(MigrateError::Content(
                    "the migrated document could not be written out faithfully; migrate the file by hand, following \
                     the steps of `migrate plan`"
                        .into(),
                ));
            }
            written
        }
    };
    let removes_secret =
        ops.iter().any(|op| matches!(op, Op::Remove { path } if path.as_slice() == ["security", "jwt_secret"]));
    let secret_lines = if !removes_secret {
        Vec::new()
    } else if let Some(lines) = original.lines_of(&["security", "jwt_secret"]) {
        lines.collect()
    } else {
        text.lines().enumerate().filter(|(_, l)| l.contains("jwt_secret")).map(|(i, _)| i).collect()
    };
    Ok(Migration { from, to, steps, text: new_text, rewritten, secret_lines })
}

/// A migration of a file, checked and ready to apply.
#[derive(Debug)]
pub struct Plan {
    pub path: PathBuf,
    original: Vec<u8>,
    pub migration: Migration,
    /// Whether the result loads (migrated on to the version this build reads, when the
    /// target is older); the loader's error otherwise.
    pub loads: Result<(), String>,
}

/// Reads `path` and works out its migration to `to_version` (`1.2` or `1.2.0`).
pub fn plan(path: &Path, to_version: &str) -> Result<Plan, MigrateError> {
    let to = SchemaVersion::parse(to_version).filter(|v| v.is_known()).ok_or_else(|| {
        MigrateError::Target(format!(
            "--to-version {to_version:?} is not a version this build migrates to ({}; it reads {CONFIG_VERSION})",
            known_list()
        ))
    })?;
    let original = fs::read(path).map_err(|source| MigrateError::Read { path: path.to_path_buf(), source })?;
    let text = std::str::from_utf8(&original).map_err(|_| MigrateError::NotText { path: path.to_path_buf() })?;
    let migration = migrate_text(text, to).map_err(|e| match e {
        MigrateError::Parse { message, .. } => MigrateError::Parse { path: path.to_path_buf(), message },
        other => other,
    })?;
    let loads = if migration.steps.is_empty() { Ok(()) } else { check_loads(path, text, &migration) };
    Ok(Plan { path: path.to_path_buf(), original, migration, loads })
}

/// Whether the migrated text loads and validates with the real loader (environment
/// overrides and secrets aside: `mcp-raspi config validate` checks those).
fn check_loads(path: &Path, original: &str, migration: &Migration) -> Result<(), String> {
    let current = SchemaVersion::current();
    let (text, origin) = if migration.to == current {
        (migration.text.clone(), format!("{} as migrated to {current}", path.display()))
    } else {
        let onward = migrate_text(&migration.text, current).map_err(|e| e.to_string())?;
        (onward.text, format!("{} as migrated to {} and on to {current}", path.display(), migration.to))
    };
    let loaded = Config::from_yaml(&text, &origin).and_then(|c| c.validate());
    let Err(e) = loaded else { return Ok(()) };
    let mut message = e.to_string();
    // Line numbers of the loader's message are those of the migrated text.
    let line = serde_saphyr::from_str::<Config>(&text).err().and_then(|e| e.location()).map(|l| l.line() as usize);
    if let (Some(line), None) = (line, &migration.rewritten) {
        if migration.to == current {
            match original_line(original, &text, line) {
                Some(old) => message
                    .push_str(&format!("\n(line {line} of the migrated text is line {old} of {})", path.display())),
                None => message.push_str(&format!("\n(line {line} is a line the migration wrote)")),
            }
        }
    }
    Err(message)
}

/// The line (1-based) of `old` that line `line` of `new` was copied from.
fn original_line(old: &str, new: &str, line: usize) -> Option<usize> {
    let diff = similar::TextDiff::from_lines(old, new);
    diff.ops().iter().find_map(|op| match *op {
        similar::DiffOp::Equal { old_index, new_index, len } if (new_index..new_index + len).contains(&(line - 1)) => {
            Some(old_index + (line - 1 - new_index) + 1)
        }
        _ => None,
    })
}

impl Plan {
    /// A unified diff from the file to the migrated text; a removed secret's value is
    /// shown as `<redacted>`.
    pub fn diff(&self) -> String {
        let original = String::from_utf8_lossy(&self.original);
        let lines = &self.migration.secret_lines;
        let mut shown = String::new();
        for (i, line) in original.lines().enumerate() {
            match lines.first() {
                Some(first) if *first == i => match line.find("jwt_secret") {
                    Some(at) => shown.push_str(&format!("{}jwt_secret: <redacted>\n", &line[..at])),
                    None => shown.push_str("<redacted>\n"),
                },
                _ if lines.contains(&i) => {}
                _ => {
                    shown.push_str(line);
                    shown.push('\n');
                }
            }
        }
        let path = self.path.display();
        similar::TextDiff::from_lines(shown.as_str(), self.migration.text.as_str())
            .unified_diff()
            .context_radius(3)
            .header(&format!("{path} ({})", self.migration.from), &format!("{path} ({})", self.migration.to))
            .to_string()
    }
}

/// What `apply` did.
#[derive(Debug)]
pub struct Applied {
    /// The file as it was.
    pub backup: PathBuf,
    /// SHA-256 of the new file.
    pub sha256: String,
}

/// Writes a planned migration: checks that the file is still what was planned and that the
/// result loads, keeps a backup beside it, then replaces it atomically with the same mode
/// (and owner, when run as root).
pub fn apply(plan: &Plan) -> Result<Applied, MigrateError> {
    plan.loads.clone().map_err(MigrateError::WouldNotLoad)?;
    let io = |what: &str, path: &Path, e: std::io::Error| {
        MigrateError::Write(format!("cannot {what} {}: {e}; the file is as it was", path.display()))
    };
    // Through a symbolic link, the file it points at is replaced, not the link.
    let target =
        fs::canonicalize(&plan.path).map_err(|source| MigrateError::Read { path: plan.path.clone(), source })?;
    let meta = fs::metadata(&target).map_err(|source| MigrateError::Read { path: target.clone(), source })?;
    let now = fs::read(&target).map_err(|source| MigrateError::Read { path: target.clone(), source })?;
    if now != plan.original {
        return Err(MigrateError::Changed { path: plan.path.clone() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    let owner =
        nix::unistd::geteuid().is_root().then(|| crate::update::release::Owner { uid: meta.uid(), gid: meta.gid() });
    let backup =
        write_backup(&target, &plan.original, mode, owner).map_err(|(path, e)| io("write the backup", &path, e))?;
    crate::update::state::write_atomically(&target, plan.migration.text.as_bytes(), mode, owner)
        .map_err(|e| MigrateError::Write(format!("{e}; the file is as it was (backup: {})", backup.display())))?;
    Ok(Applied { backup, sha256: hex(&Sha256::digest(plan.migration.text.as_bytes())) })
}

/// Writes `bytes` as `FILE.bak` beside `path`, or `FILE.<UTC time>.bak` when that exists;
/// never over an existing file.
fn write_backup(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<crate::update::release::Owner>,
) -> Result<PathBuf, (PathBuf, std::io::Error)> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stamp: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let candidates = std::iter::once(format!("{name}.bak"))
        .chain(std::iter::once(format!("{name}.{stamp}.bak")))
        .chain((2..100).map(|n| format!("{name}.{stamp}-{n}.bak")));
    for candidate in candidates {
        let backup = path.with_file_name(candidate);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&backup);
        let mut file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err((backup, e)),
        };
        let written = (|| {
            file.write_all(bytes)?;
            if let Some(o) = owner {
                std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid))?;
            }
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.sync_all()?;
            let dir = backup.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            fs::File::open(dir).and_then(|d| d.sync_all())
        })();
        return match written {
            Ok(()) => Ok(backup),
            Err(e) => {
                let _ = fs::remove_file(&backup);
                Err((backup, e))
            }
        };
    }
    Err((path.with_file_name(format!("{name}.bak")), std::io::Error::other("every backup name is taken")))
}

#[cfg(test)]
mod tests;
