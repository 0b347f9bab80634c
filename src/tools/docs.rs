//! `docs/TOOLS.md`, generated from the catalogue so the reference never drifts from the code.

use std::fmt::Write;

use super::{Catalogue, Maturity};

/// The Markdown reference of every tool.
pub fn tools_markdown(catalogue: &Catalogue) -> String {
    let mut out = String::from(
        "# mcp-raspi tools\n\nGenerated from the tool declarations by `make docs`; do not edit by hand.\n\n\
         Roles: viewer < operator < admin. Experimental tools are hidden from `tools/list` until enabled.\n\n\
         | tool | role | maturity | read-only | destructive | summary |\n|---|---|---|---|---|---|\n",
    );
    for e in catalogue.entries() {
        let s = e.tool.spec();
        let maturity = match s.maturity {
            Maturity::Stable => "stable",
            Maturity::Beta => "beta",
            Maturity::Experimental => "experimental",
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {}{} | {} | {} | {} |",
            s.name,
            s.min_role,
            maturity,
            if s.deprecation.is_some() { ", deprecated" } else { "" },
            if s.read_only { "yes" } else { "no" },
            if s.destructive { "yes" } else { "no" },
            s.title
        );
    }
    out.push_str(
        "\n## Experimental feature names\n\n`experimental_features.features[].name` takes a tool name, a namespace \
         (`uart`), or one of these feature names:\n\n| feature | turns on | what |\n|---|---|---|\n",
    );
    for f in crate::config::FEATURES {
        let tools: Vec<String> = f.tools.iter().map(|t| format!("`{t}`")).collect();
        let tools = if tools.is_empty() { "no tool".to_string() } else { tools.join(", ") };
        let _ = writeln!(out, "| `{}` | {tools} | {} |", f.name, f.description);
    }
    for e in catalogue.entries() {
        let s = e.tool.spec();
        let _ = write!(out, "\n## `{}`\n\n{}\n\n", s.name, s.description);
        if let Some(d) = s.deprecation {
            let _ =
                writeln!(out, "Deprecated since {}: use `{}` (removal in {}).\n", d.since, d.replacement, d.removal);
        }
        let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
        let _ = write!(
            out,
            "Interface version {}; minimum role `{}`.\n\nInput schema:\n\n```json\n{}\n```\n\nOutput schema:\n\n```json\n{}\n```\n",
            s.version,
            s.min_role,
            pretty(&e.tool.input_schema()),
            pretty(&e.tool.output_schema())
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `docs/TOOLS.md` is generated; `make docs` rewrites it after a tool changes.
    #[test]
    fn docs_tools_md_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/TOOLS.md");
        let want = tools_markdown(&Catalogue::new());
        if std::env::var_os("MCP_RASPI_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(have == want, "docs/TOOLS.md is stale: run `make docs` and commit the result");
    }
}
