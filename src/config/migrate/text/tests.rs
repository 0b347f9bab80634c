#![allow(clippy::unwrap_used)]
use super::super::tree::Value;
use super::*;

fn keys(doc: &Doc, path: &[&str]) -> Vec<(String, usize, usize)> {
    let entries = if path.is_empty() {
        doc.entries(doc.body().unwrap(), None).unwrap()
    } else {
        doc.children(&doc.require(path).unwrap().0).unwrap()
    };
    entries.into_iter().map(|e| (e.key, e.line + 1, e.end)).collect()
}

#[test]
fn entries_take_their_continuation_lines_and_leave_the_comments_of_the_next() {
    let doc = Doc::new(
        "---\n# top\nserver:\n  listen: x  # here\n  cors_origins:\n  - a\n  -   b\n    # c (kept with the list)\n\n  # about d\n  d: \"q # not a comment\"\n\"quoted\": 1\n",
    );
    assert_eq!(keys(&doc, &[]), [("server".into(), 3, 11), ("quoted".into(), 12, 12)]);
    assert_eq!(keys(&doc, &["server"]), [("listen".into(), 4, 4), ("cors_origins".into(), 5, 8), ("d".into(), 11, 11)]);
    let (d, _) = doc.require(&["server", "d"]).unwrap();
    assert_eq!(doc.value_text(&d), "\"q # not a comment\"");
    let (listen, _) = doc.require(&["server", "listen"]).unwrap();
    assert_eq!(doc.value_text(&listen), "x");
}

#[test]
fn values_after_a_key_are_told_apart_from_their_comments() {
    for (text, value) in [
        ("a # c", "a"),
        ("'it''s' # c", "'it''s'"),
        ("it's # c", "it's"),
        ("\"a \\\" # b\" # c", "\"a \\\" # b\""),
        ("[a, 'b # c', \"d\"]  # e", "[a, 'b # c', \"d\"]"),
        ("a#b", "a#b"),
        ("", ""),
    ] {
        assert_eq!(&text[..value_end(text)], value, "{text}");
    }
}

#[test]
fn forms_the_editor_cannot_follow_are_refused_with_their_line() {
    for (text, line) in [
        ("server: {enable_cors: true}\n", "line 1"),
        ("a: 1\n\tb: 2\n", "line 2"),
        ("server:\n  <<: *base\n", "line 2"),
        ("a: 1\n---\nb: 2\n", "line 2"),
        ("%YAML 1.2\n---\na: 1\n", "line 1"),
        ("? complex\n: key\n", "line 1"),
    ] {
        let doc = Doc::new(text);
        let e = doc.find(&["server", "enable_cors"]).and_then(|_| doc.find(&["b", "c"])).unwrap_err();
        assert!(e.0.starts_with(line), "{text}: {}", e.0);
    }
}

#[test]
fn a_removed_entry_takes_its_continuation_lines_and_an_emptied_mapping_says_so() {
    let mut doc = Doc::new("security:  # auth\n  jwt_secret: |\n    line one\n    # line two\n\n# next\nb: 1\n");
    doc.apply(&Op::Remove { path: vec!["security", "jwt_secret"] }).unwrap();
    assert_eq!(doc.text(), "security: {}  # auth\n\n# next\nb: 1\n");
}

#[test]
fn moved_entries_keep_their_lines_and_comments_under_the_new_key() {
    let mut doc = Doc::new(
        "server:\n    listen: x\n    # Allow browsers\n    enable_cors: true  # yes\n    cors_origins:\n    - https://a\n    - https://b\n    page_size: 5\n",
    );
    let op = Op::MoveInto {
        parent: vec!["server"],
        container: "cors",
        moves: vec![("enable_cors", "enabled"), ("cors_origins", "allowed_origins")],
    };
    doc.apply(&op).unwrap();
    assert_eq!(
        doc.text(),
        "server:\n    listen: x\n    # Allow browsers\n    cors:\n        enabled: true  # yes\n        allowed_origins:\n        - https://a\n        - https://b\n    page_size: 5\n"
    );
}

#[test]
fn moved_entries_join_an_existing_mapping_at_its_end() {
    let mut doc = Doc::new("server:\n  cors_origins: [\"https://a\"]\n  cors:\n    enabled: true\n\n  # end\n");
    let op =
        Op::MoveInto { parent: vec!["server"], container: "cors", moves: vec![("cors_origins", "allowed_origins")] };
    doc.apply(&op).unwrap();
    assert_eq!(doc.text(), "server:\n  cors:\n    enabled: true\n    allowed_origins: [\"https://a\"]\n\n  # end\n");
}

#[test]
fn a_new_section_goes_at_the_end_of_its_parent_with_the_files_indentation() {
    let pwm = NewEntry {
        comment: Some("limits"),
        key: "pwm",
        value: New::Map(vec![NewEntry { comment: None, key: "max", value: New::Scalar("10", Value::Int(10)) }]),
    };
    let mut doc = Doc::new("gpio:\n   pins: []\n   # old pins\n# i2c\ni2c: {}\n");
    doc.apply(&Op::Insert { parent: vec!["gpio"], entry: pwm.clone() }).unwrap();
    assert_eq!(doc.text(), "gpio:\n   pins: []\n   # limits\n   pwm:\n      max: 10\n   # old pins\n# i2c\ni2c: {}\n");
    let mut doc = Doc::new("gpio: ~  # nothing yet\nx: 1\n");
    doc.apply(&Op::Insert { parent: vec!["gpio"], entry: pwm.clone() }).unwrap();
    assert_eq!(doc.text(), "gpio:  # nothing yet\n  # limits\n  pwm:\n    max: 10\nx: 1\n");
    let mut doc = Doc::new("x: 1");
    doc.apply(&Op::Insert { parent: vec![], entry: pwm }).unwrap();
    assert_eq!(doc.text(), "x: 1\n\n# limits\npwm:\n  max: 10\n");
}

#[test]
fn a_set_value_keeps_its_comment() {
    let mut doc = Doc::new("config_version: 1.1   # the schema\n");
    doc.apply(&Op::Set { path: vec!["config_version"], raw: "\"1.2\"".into(), value: Value::Str("1.2".into()) })
        .unwrap();
    assert_eq!(doc.text(), "config_version: \"1.2\"   # the schema\n");
}

#[test]
fn a_file_with_windows_line_ends_keeps_them() {
    let mut doc = Doc::new("config_version: \"1.1\"\r\nserver:\r\n  enable_cors: true\r\n");
    let op = Op::MoveInto { parent: vec!["server"], container: "cors", moves: vec![("enable_cors", "enabled")] };
    doc.apply(&op).unwrap();
    assert_eq!(doc.text(), "config_version: \"1.1\"\r\nserver:\r\n  cors:\r\n    enabled: true\r\n");
}
