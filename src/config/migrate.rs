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

mod file;
mod steps;
mod text;
mod tree;

pub use file::{apply, plan, Applied, Plan};

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, CONFIG_VERSION};
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
        let (step_ops, changes) = steps::plan_step(&root, at, next)?;
        for op in &step_ops {
            steps::apply_to_tree(&mut root, op)?;
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

#[cfg(test)]
mod tests;
