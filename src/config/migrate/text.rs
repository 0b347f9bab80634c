//! The line editor: a migration's steps applied to the file's text, so that its comments,
//! blank lines, quoting and order stay as the operator wrote them.
//!
//! It understands the block style a configuration is written in: keys found by their
//! indentation (`server:` then `  cors:` below it), values that are scalars, flow or block
//! sequences, or several lines long. Anything else it meets on the way to a key it must
//! change (a flow mapping such as `server: {enable_cors: true}`, anchors, merge keys, tabs,
//! several documents) is [`Unsupported`], and the caller writes the parsed document out
//! instead. The caller also checks that the edited text parses to what the migration
//! means, so a case this editor gets wrong is caught rather than written.

use std::ops::Range;

use super::{New, NewEntry, Op};

/// Why the text cannot be edited safely; names the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

fn unsupported(line: usize, what: impl std::fmt::Display) -> Unsupported {
    Unsupported(format!("line {}: {what}", line + 1))
}

/// The file as lines (without their line ends).
#[derive(Debug, Clone)]
pub struct Doc {
    lines: Vec<String>,
    /// The file's line end, kept when it is written back.
    newline: &'static str,
}

/// What follows `key:` on its line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// Nothing (or a comment): a block mapping or sequence follows, or the value is null.
    Empty,
    /// A plain or quoted scalar (possibly continued on the next lines).
    Scalar,
    /// `{...}` or `[...]`.
    Flow,
    /// `|` or `>`.
    BlockScalar,
    /// An anchor, alias or tag.
    Decorated,
}

/// A `key: value` line of a block mapping and the lines its value takes.
#[derive(Clone, Debug)]
struct Entry {
    key: String,
    line: usize,
    indent: usize,
    /// Bytes of the key (quotes included) in its line.
    key_span: Range<usize>,
    /// Bytes of the value's text on the key's line, comment excluded.
    value_span: Range<usize>,
    form: Form,
    /// One past the last line of the entry; trailing blank lines and comments no deeper than
    /// the key belong to what follows.
    end: usize,
}

impl Entry {
    fn lines(&self) -> Range<usize> {
        self.line..self.end
    }
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim_start_matches(' ');
    t.is_empty() || t.starts_with('#')
}

fn indent_of(line: &str, at: usize) -> Result<usize, Unsupported> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if line[indent..].starts_with('\t') {
        return Err(unsupported(at, "a tab in the indentation"));
    }
    Ok(indent)
}

/// Splits the text after `key:` into the value and what follows it (spaces and a comment).
fn value_end(text: &str) -> usize {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    let mut last_significant = ' ';
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some('"') if c == '\\' => {
                chars.next();
            }
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if (c == '"' || c == '\'') && (i == 0 || "[{,:".contains(last_significant)) => quote = Some(c),
            None if c == '#' && previous.is_whitespace() => return text[..i].trim_end().len(),
            None => {}
        }
        previous = c;
        if !c.is_whitespace() {
            last_significant = c;
        }
    }
    text.trim_end().len()
}

/// Parses a `key: value` line whose key starts at `indent`.
fn parse_entry(line: &str, at: usize, indent: usize) -> Result<Entry, Unsupported> {
    let rest = &line[indent..];
    let not_a_key = || unsupported(at, format!("`{}` is not a `key: value` line", line.trim()));
    let (key, key_len) = match rest.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let close = rest[1..].find(q).ok_or_else(not_a_key)? + 1;
            let key = &rest[1..close];
            // Escapes and doubled quotes would need unquoting: no configuration key has them.
            if key.contains('\\') || rest[close + 1..].starts_with(q) {
                return Err(not_a_key());
            }
            (key.to_string(), close + 1)
        }
        Some(c) if !"-?:,[]{}#&*!|>%@`".contains(c) => {
            let colon = rest
                .match_indices(':')
                .map(|(i, _)| i)
                .find(|&i| rest[i + 1..].is_empty() || rest[i + 1..].starts_with(' '))
                .ok_or_else(not_a_key)?;
            let key = rest[..colon].trim_end();
            if key.contains(" #") {
                return Err(not_a_key());
            }
            (key.to_string(), key.len())
        }
        _ => return Err(not_a_key()),
    };
    let after_key = &rest[key_len..];
    let colon = after_key.len() - after_key.trim_start_matches(' ').len();
    if !after_key[colon..].starts_with(':') {
        return Err(not_a_key());
    }
    let after_colon = &after_key[colon + 1..];
    if !(after_colon.is_empty() || after_colon.starts_with(' ')) {
        return Err(not_a_key());
    }
    let value_start = indent + key_len + colon + 1 + (after_colon.len() - after_colon.trim_start_matches(' ').len());
    let value = &line[value_start..];
    let value_len = value_end(value);
    let form = match value[..value_len].chars().next() {
        None => Form::Empty,
        Some('{' | '[') => Form::Flow,
        Some('|' | '>') => Form::BlockScalar,
        Some('&' | '*' | '!') => Form::Decorated,
        Some(_) => Form::Scalar,
    };
    if key == "<<" {
        return Err(unsupported(at, "a merge key (<<)"));
    }
    Ok(Entry {
        key,
        line: at,
        indent,
        key_span: indent..indent + key_len,
        value_span: value_start..value_start + value_len,
        form,
        end: at + 1,
    })
}

/// Whether an entry's value text stands for an empty mapping: null written out, or `{}`.
fn is_empty_value(text: &str) -> bool {
    matches!(text, "~" | "null" | "Null" | "NULL" | "{}")
}

impl Doc {
    pub fn new(text: &str) -> Doc {
        let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
        Doc { lines: text.lines().map(str::to_string).collect(), newline }
    }

    pub fn text(&self) -> String {
        let mut text = self.lines.join(self.newline);
        text.push_str(self.newline);
        text
    }

    /// The lines of the document's top-level mapping: after leading comments and a `---`.
    fn body(&self) -> Result<Range<usize>, Unsupported> {
        for (i, line) in self.lines.iter().enumerate() {
            if is_blank_or_comment(line) {
                continue;
            }
            if line.starts_with('%') {
                return Err(unsupported(i, "a YAML directive"));
            }
            let marker = line.strip_prefix("---").map(|rest| rest.trim());
            return Ok(if marker.is_some_and(|rest| rest.is_empty() || rest.starts_with('#')) {
                i + 1..self.lines.len()
            } else {
                i..self.lines.len()
            });
        }
        Ok(0..self.lines.len())
    }

    /// The entries of the block mapping in `body`, whose key is at `parent_indent` (none for
    /// the top level).
    fn entries(&self, body: Range<usize>, parent_indent: Option<usize>) -> Result<Vec<Entry>, Unsupported> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut child_indent = None;
        for i in body.clone() {
            let line = &self.lines[i];
            if is_blank_or_comment(line) {
                continue;
            }
            let indent = indent_of(line, i)?;
            let c = *child_indent.get_or_insert(indent);
            if parent_indent.is_some_and(|p| indent <= p) || indent < c {
                return Err(unsupported(i, "indentation this editor does not follow"));
            }
            if indent > c {
                continue;
            }
            let rest = &line[indent..];
            if rest == "-" || rest.starts_with("- ") {
                // `key:` followed by `- item` lines at the key's own indentation.
                match entries.last() {
                    Some(previous) if previous.form == Form::Empty => continue,
                    _ => return Err(unsupported(i, "a sequence where a mapping was expected")),
                }
            }
            entries.push(parse_entry(line, i, indent)?);
        }
        let starts: Vec<usize> = entries.iter().skip(1).map(|e| e.line).chain([body.end]).collect();
        for (entry, next) in entries.iter_mut().zip(starts) {
            let mut end = next;
            while end > entry.line + 1 {
                let line = &self.lines[end - 1];
                let trailing = line.trim().is_empty()
                    || (line.trim_start().starts_with('#') && indent_of(line, end - 1)? <= entry.indent);
                if !trailing {
                    break;
                }
                end -= 1;
            }
            entry.end = end;
        }
        Ok(entries)
    }

    /// The entries of the block mapping that is `entry`'s value.
    fn children(&self, entry: &Entry) -> Result<Vec<Entry>, Unsupported> {
        match entry.form {
            Form::Empty => self.entries(entry.line + 1..entry.end, Some(entry.indent)),
            Form::Scalar if is_empty_value(self.value_text(entry)) => Ok(Vec::new()),
            Form::Flow if is_empty_value(self.value_text(entry)) => Ok(Vec::new()),
            Form::Flow => Err(unsupported(
                entry.line,
                format!("`{}` is a flow mapping or sequence", self.lines[entry.line].trim()),
            )),
            _ => Err(unsupported(
                entry.line,
                format!("`{}` is not a block mapping this editor can change", self.lines[entry.line].trim()),
            )),
        }
    }

    fn value_text(&self, entry: &Entry) -> &str {
        &self.lines[entry.line][entry.value_span.clone()]
    }

    /// The entry at `path` and the entries of the mapping holding it; `Ok(None)` when the
    /// text has no such key.
    fn find(&self, path: &[&str]) -> Result<Option<(Entry, Vec<Entry>)>, Unsupported> {
        let mut siblings = self.entries(self.body()?, None)?;
        for (depth, key) in path.iter().enumerate() {
            let Some(entry) = siblings.iter().find(|e| e.key == *key).cloned() else {
                return Ok(None);
            };
            if depth + 1 == path.len() {
                return Ok(Some((entry, siblings)));
            }
            siblings = self.children(&entry)?;
        }
        Ok(None)
    }

    fn require(&self, path: &[&str]) -> Result<(Entry, Vec<Entry>), Unsupported> {
        self.find(path)?.ok_or_else(|| {
            Unsupported(format!(
                "{} is not written where the text shows it (it may come from a merge key or an alias)",
                path.join(".")
            ))
        })
    }

    /// The indentation step of the file: how much deeper the first nested key is than its
    /// parent (2 when nothing is nested).
    fn step(&self) -> usize {
        let Ok(top) = self.body().and_then(|body| self.entries(body, None)) else { return 2 };
        top.iter()
            .filter(|e| e.form == Form::Empty)
            .find_map(|e| self.children(e).ok()?.first().map(|c| c.indent - e.indent))
            .unwrap_or(2)
    }

    /// The lines of the entry at `path`, when the text has it.
    pub fn lines_of(&self, path: &[&str]) -> Option<Range<usize>> {
        self.find(path).ok().flatten().map(|(entry, _)| entry.lines())
    }

    /// Replaces the value text on `entry`'s line, keeping its comment where it was.
    fn set_value(&mut self, entry: &Entry, value: &str) {
        let line = &self.lines[entry.line];
        let head = line[..entry.value_span.start].trim_end();
        // The spaces after the colon, and the spaces and comment after the value.
        let gap = &line[head.len()..entry.value_span.start];
        let rest = &line[entry.value_span.end..];
        let comment = rest.trim_start();
        let mut text = head.to_string();
        if value.is_empty() {
            if !comment.is_empty() {
                text.push_str(if rest.len() > comment.len() { &rest[..rest.len() - comment.len()] } else { gap });
                text.push_str(comment);
            }
        } else {
            text.push(' ');
            text.push_str(value);
            if !comment.is_empty() {
                let space = if entry.value_span.is_empty() { gap } else { &rest[..rest.len() - comment.len()] };
                text.push_str(if space.is_empty() { " " } else { space });
                text.push_str(comment);
            }
        }
        self.lines[entry.line] = text;
    }

    /// Makes `entry` a block mapping without entries yet (a null or `{}` value is cleared),
    /// returning the line where its first entry goes and that entry's indentation.
    fn open_mapping(&mut self, entry: &Entry) -> Result<(usize, usize), Unsupported> {
        let children = self.children(entry)?;
        if let Some(last) = children.last() {
            return Ok((last.end, children[0].indent));
        }
        if entry.form != Form::Empty {
            self.set_value(entry, "");
        }
        Ok((entry.line + 1, entry.indent + self.step()))
    }

    /// Where `entry` starts with the comment lines right above it at its indentation, which
    /// are about it; not those that open its mapping, which may be about the mapping.
    fn attached(&self, entry: &Entry) -> usize {
        let mut start = entry.line;
        while start > 0 {
            let line = &self.lines[start - 1];
            let text = line.trim_start_matches(' ');
            if !(text.starts_with('#') && line.len() - text.len() == entry.indent) {
                break;
            }
            start -= 1;
        }
        let opens_mapping = start == 0 || {
            let above = &self.lines[start - 1];
            !above.trim().is_empty() && above.len() - above.trim_start_matches(' ').len() < entry.indent
        };
        if opens_mapping {
            entry.line
        } else {
            start
        }
    }

    /// Lines `from` to the end of `entry`, moved to `indent`, with the entry named `key`.
    fn moved(&self, entry: &Entry, from: usize, key: &str, indent: usize) -> Result<Vec<String>, Unsupported> {
        let mut lines = Vec::new();
        for i in from..entry.end {
            let line = &self.lines[i];
            let line = if i == entry.line {
                format!("{}{key}{}", &line[..entry.key_span.start], &line[entry.key_span.end..])
            } else {
                line.clone()
            };
            lines.push(if line.trim().is_empty() {
                String::new()
            } else if indent >= entry.indent {
                format!("{}{line}", " ".repeat(indent - entry.indent))
            } else {
                let cut = entry.indent - indent;
                match line.strip_prefix(&" ".repeat(cut)) {
                    Some(rest) => rest.to_string(),
                    None => return Err(unsupported(i, "a line that cannot be moved left")),
                }
            });
        }
        Ok(lines)
    }

    /// Replaces, removes and inserts lines at once: `edits` are (lines replaced, new lines),
    /// on ranges that do not overlap.
    fn splice(&mut self, mut edits: Vec<(Range<usize>, Vec<String>)>) {
        edits.sort_by_key(|(range, _)| std::cmp::Reverse((range.start, range.end)));
        for (range, lines) in edits {
            self.lines.splice(range, lines);
        }
    }

    /// Applies one step of a migration.
    pub fn apply(&mut self, op: &Op) -> Result<(), Unsupported> {
        match op {
            Op::Set { path, raw, .. } => {
                let (entry, _) = self.require(path)?;
                if entry.form != Form::Scalar || entry.end != entry.line + 1 {
                    return Err(unsupported(entry.line, format!("{} is not a one-line value", path.join("."))));
                }
                self.set_value(&entry, raw);
            }
            Op::Rename { path, key } => {
                let (entry, _) = self.require(path)?;
                self.lines[entry.line].replace_range(entry.key_span.clone(), key);
            }
            Op::Remove { path } => {
                let (entry, siblings) = self.require(path)?;
                self.lines.drain(self.attached(&entry)..entry.end);
                if siblings.len() == 1 && path.len() > 1 {
                    // The mapping holding it is empty now: say so, rather than leave a null.
                    let (parent, _) = self.require(&path[..path.len() - 1])?;
                    self.set_value(&parent, "{}");
                }
            }
            Op::Insert { parent, entry } => {
                let step = self.step();
                let (at, indent) = if parent.is_empty() {
                    if self.lines.last().is_some_and(|l| !l.trim().is_empty()) {
                        self.lines.push(String::new());
                    }
                    (self.lines.len(), self.body().and_then(|b| self.entries(b, None))?.first().map_or(0, |e| e.indent))
                } else {
                    let (holder, _) = self.require(parent)?;
                    self.open_mapping(&holder)?
                };
                let mut lines = Vec::new();
                render(entry, indent, step, &mut lines);
                self.splice(vec![(at..at, lines)]);
            }
            Op::MoveInto { parent, container, moves } => {
                let (holder, _) = self.require(parent)?;
                let siblings = self.children(&holder)?;
                let mut olds = Vec::new();
                for (old, new) in moves {
                    match siblings.iter().find(|e| e.key == *old) {
                        Some(entry) => olds.push((entry.clone(), *new)),
                        None => return Err(Unsupported(format!("{}.{old} is not in the text", parent.join(".")))),
                    }
                }
                olds.sort_by_key(|(entry, _)| entry.line);
                let Some(first) = olds.first().map(|(entry, _)| entry.clone()) else { return Ok(()) };
                let step = self.step();
                let existing = siblings.iter().find(|e| e.key == *container).cloned();
                let (at, indent, mut block) = match &existing {
                    Some(c) => {
                        let (at, indent) = self.open_mapping(c)?;
                        (at, indent, Vec::new())
                    }
                    None => {
                        (first.line, first.indent + step, vec![format!("{}{container}:", " ".repeat(first.indent))])
                    }
                };
                // The comments above the first entry stay above a mapping made in its place;
                // those of the others go with them.
                let from = |entry: &Entry| {
                    if existing.is_none() && entry.line == first.line {
                        entry.line
                    } else {
                        self.attached(entry)
                    }
                };
                for (entry, new) in &olds {
                    block.extend(self.moved(entry, from(entry), new, indent)?);
                }
                let mut edits: Vec<(Range<usize>, Vec<String>)> =
                    olds.iter().map(|(entry, _)| (from(entry)..entry.end, Vec::new())).collect();
                if existing.is_some() {
                    edits.push((at..at, block));
                } else {
                    // The new mapping takes the first moved entry's place.
                    edits[0].1 = block;
                }
                self.splice(edits);
            }
        }
        Ok(())
    }
}

/// The lines of a new entry at `indent`.
fn render(entry: &NewEntry, indent: usize, step: usize, out: &mut Vec<String>) {
    let pad = " ".repeat(indent);
    if let Some(comment) = entry.comment {
        out.push(format!("{pad}# {comment}"));
    }
    match &entry.value {
        New::Scalar(raw, _) => out.push(format!("{pad}{}: {raw}", entry.key)),
        New::Map(entries) => {
            out.push(format!("{pad}{}:", entry.key));
            for e in entries {
                render(e, indent + step, step, out);
            }
        }
    }
}

#[cfg(test)]
mod tests;
