//! Tool results as text for a person: `key: value` lines, nested sections indented, and
//! lists of records as aligned tables. Scripts use `--json` instead.

use serde_json::Value;

/// `value` as indented text, ending with a newline.
pub fn render(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(_) => section(&mut out, value, 0),
        Value::Array(items) => list(&mut out, items, 0),
        scalar => {
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, depth: usize) {
    out.extend(std::iter::repeat_n("  ", depth));
}

fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Object(_) | Value::Array(_))
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            // Two decimals are what a reader needs of a percentage or a temperature.
            Some(f) if n.is_f64() && f.fract() != 0.0 => {
                format!("{f:.2}").trim_end_matches('0').trim_end_matches('.').to_string()
            }
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// A cell of a table: scalars as text, small nested values as compact JSON.
fn cell_text(value: &Value) -> String {
    match value {
        Value::Array(items) if items.iter().all(is_scalar) => {
            items.iter().map(scalar_text).collect::<Vec<_>>().join(", ")
        }
        v if is_scalar(v) => scalar_text(v),
        v => v.to_string(),
    }
}

fn section(out: &mut String, value: &Value, depth: usize) {
    let Value::Object(map) = value else { return };
    for (key, item) in map {
        indent(out, depth);
        match item {
            Value::Object(inner) if inner.is_empty() => out.push_str(&format!("{key}: -\n")),
            Value::Object(_) => {
                out.push_str(&format!("{key}:\n"));
                section(out, item, depth + 1);
            }
            Value::Array(items) if items.is_empty() => out.push_str(&format!("{key}: (none)\n")),
            Value::Array(items) if items.iter().all(is_scalar) => {
                out.push_str(&format!("{key}: {}\n", cell_text(item)));
            }
            Value::Array(items) => {
                out.push_str(&format!("{key}:\n"));
                list(out, items, depth + 1);
            }
            scalar => out.push_str(&format!("{key}: {}\n", scalar_text(scalar))),
        }
    }
}

/// A list: a table when its items are records, else one item per line.
fn list(out: &mut String, items: &[Value], depth: usize) {
    if items.iter().all(|i| i.is_object()) {
        table(out, items, depth);
        return;
    }
    for item in items {
        indent(out, depth);
        if is_scalar(item) {
            out.push_str(&format!("- {}\n", scalar_text(item)));
        } else {
            out.push_str("-\n");
            section(out, item, depth + 1);
        }
    }
}

fn table(out: &mut String, rows: &[Value], depth: usize) {
    let mut columns: Vec<&str> = Vec::new();
    for row in rows {
        if let Value::Object(map) = row {
            for key in map.keys() {
                if !columns.contains(&key.as_str()) {
                    columns.push(key);
                }
            }
        }
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|c| row.get(*c).map(cell_text).unwrap_or_default()).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| cells.iter().map(|r| r[i].chars().count()).chain([c.chars().count()]).max().unwrap_or(0))
        .collect();
    let line = |out: &mut String, texts: &[&str]| {
        indent(out, depth);
        let mut text = String::new();
        for (i, t) in texts.iter().enumerate() {
            if i + 1 == texts.len() {
                text.push_str(t);
            } else {
                text.push_str(&format!("{t:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(out, &columns);
    for row in &cells {
        line(out, &row.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn records_are_sections_and_lists_of_records_are_tables() {
        let value = json!({
            "hostname": "pi",
            "memory": {"total_mb": 1024, "used_percent": 31.25},
            "addresses": ["10.0.0.2", "fe80::1"],
            "none": [],
            "missing": null,
            "mounts": [
                {"mount": "/", "used_percent": 41.5},
                {"mount": "/boot/firmware", "used_percent": 12.0, "read_only": true},
            ],
        });
        let text = render(&value);
        // Keys come in the order of the parsed object (by name).
        let expected = "\
addresses: 10.0.0.2, fe80::1
hostname: pi
memory:
  total_mb: 1024
  used_percent: 31.25
missing: -
mounts:
  mount           used_percent  read_only
  /               41.5
  /boot/firmware  12.0          true
none: (none)
";
        assert_eq!(text, expected);
    }

    #[test]
    fn scalars_and_mixed_lists_are_one_per_line() {
        assert_eq!(render(&json!("ok")), "ok\n");
        assert_eq!(render(&json!([1, {"a": 2}])), "- 1\n-\n  a: 2\n");
        assert_eq!(render(&json!([10.001, 0.5])), "- 10\n- 0.5\n");
    }
}
