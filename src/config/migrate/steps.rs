//! The steps between schema versions, decided on the parsed document: which [`Op`]s each
//! makes and what they change, in words for the plan, and how an op changes the document.

use super::tree::{self, Kind, Node, Value};
use super::{MigrateError, New, NewEntry, Op, SchemaVersion};

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
pub(super) fn plan_step(
    tree: &Node,
    from: SchemaVersion,
    to: SchemaVersion,
) -> Result<(Vec<Op>, Vec<String>), MigrateError> {
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
pub(super) fn apply_to_tree(root: &mut Node, op: &Op) -> Result<(), MigrateError> {
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
