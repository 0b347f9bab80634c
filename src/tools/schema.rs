//! The JSON Schemas of tool inputs and outputs, derived from the Rust types and made
//! portable: clients hand them to validators and to model providers whose schema dialects
//! are narrower than JSON Schema 2020-12.
//!
//! - No `format` outside the standard vocabulary: schemars's `uint8`, `uint32`, `double` and
//!   the like become the `minimum`/`maximum` they stand for (validators warn about unknown
//!   formats, once per schema and connection).
//! - No `type` arrays: an input that may be left out needs no `null` in its type (it is
//!   simply not required), and an output that may be `null` says so with `anyOf`.

use schemars::JsonSchema;
use serde_json::{json, Map, Value};

/// Which side of a tool a schema describes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Input,
    Output,
}

/// The schema of `T`, as MCP wants it (an object schema without `$schema` and `title`)
/// and portable (see the module's notes).
pub fn schema_for<T: JsonSchema>(side: Side) -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("$schema");
        obj.remove("title");
    }
    portable(&mut schema, side);
    schema
}

/// The range of each integer format schemars writes; `None` where JSON numbers cannot
/// hold the bound exactly, or where the format names a float.
fn format_range(format: &str) -> Option<(Option<i64>, Option<u64>)> {
    Some(match format {
        "uint8" => (Some(0), Some(u8::MAX.into())),
        "uint16" => (Some(0), Some(u16::MAX.into())),
        "uint32" => (Some(0), Some(u32::MAX.into())),
        "uint64" | "uint" => (Some(0), None),
        "int8" => (Some(i8::MIN.into()), Some(i8::MAX as u64)),
        "int16" => (Some(i16::MIN.into()), Some(i16::MAX as u64)),
        "int32" => (Some(i32::MIN.into()), Some(i32::MAX as u64)),
        "int64" | "int" | "double" | "float" => (None, None),
        _ => return None,
    })
}

/// Rewrites `schema` in place, at every depth.
pub fn portable(schema: &mut Value, side: Side) {
    match schema {
        Value::Object(obj) => {
            if let Some(range) = obj.get("format").and_then(Value::as_str).and_then(format_range) {
                obj.remove("format");
                if let (Some(min), false) = (range.0, obj.contains_key("minimum")) {
                    obj.insert("minimum".into(), json!(min));
                }
                if let (Some(max), false) = (range.1, obj.contains_key("maximum")) {
                    obj.insert("maximum".into(), json!(max));
                }
            }
            untype_array(obj, side);
            if side == Side::Input {
                drop_null_branch(obj);
            }
            for value in obj.values_mut() {
                portable(value, side);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| portable(v, side)),
        _ => {}
    }
}

/// `"type": ["string", "null"]` becomes `"type": "string"` in an input, and
/// `"anyOf": [{"type": "string", ...}, {"type": "null"}]` in an output.
fn untype_array(obj: &mut Map<String, Value>, side: Side) {
    let Some(Value::Array(types)) = obj.get("type") else { return };
    let types: Vec<Value> = types.clone();
    let (null, others): (Vec<Value>, Vec<Value>) = types.into_iter().partition(|t| t == "null");
    let single = |t: Value| {
        let mut branch = Map::new();
        branch.insert("type".into(), t);
        branch
    };
    match (side, others.len()) {
        (_, 0) => {
            obj.insert("type".into(), json!("null"));
        }
        (Side::Input, 1) => {
            obj.insert("type".into(), others[0].clone());
        }
        _ => {
            // The keywords that belong to the non-null types go into their branch.
            obj.remove("type");
            let moved: Map<String, Value> = obj
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "description" | "default" | "title" | "examples"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for key in moved.keys() {
                obj.remove(key);
            }
            let mut branches: Vec<Value> = others
                .into_iter()
                .map(|t| {
                    let mut b = single(t);
                    b.extend(moved.clone());
                    Value::Object(b)
                })
                .collect();
            if !null.is_empty() && side == Side::Output {
                branches.push(json!({"type": "null"}));
            }
            obj.insert("anyOf".into(), Value::Array(branches));
        }
    }
}

/// In an input, `"anyOf": [X, {"type": "null"}]` (an optional enum or struct) becomes X.
fn drop_null_branch(obj: &mut Map<String, Value>) {
    let Some(Value::Array(branches)) = obj.get("anyOf") else { return };
    let kept: Vec<Value> = branches.iter().filter(|b| b.get("type") != Some(&json!("null"))).cloned().collect();
    if kept.len() == branches.len() {
        return;
    }
    obj.remove("anyOf");
    match <[Value; 1]>::try_from(kept) {
        Ok([Value::Object(only)]) => {
            for (k, v) in only {
                obj.entry(k).or_insert(v);
            }
        }
        Ok([other]) => {
            obj.insert("anyOf".into(), Value::Array(vec![other]));
        }
        Err(kept) => {
            obj.insert("anyOf".into(), Value::Array(kept));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_formats_become_ranges_and_float_formats_go() {
        let mut s = json!({"type": "integer", "format": "uint8", "minimum": 0, "maximum": 27});
        portable(&mut s, Side::Input);
        assert_eq!(s, json!({"type": "integer", "minimum": 0, "maximum": 27}));
        let mut s = json!({"type": "integer", "format": "uint16"});
        portable(&mut s, Side::Output);
        assert_eq!(s, json!({"type": "integer", "minimum": 0, "maximum": 65535}));
        let mut s = json!({"type": "number", "format": "double"});
        portable(&mut s, Side::Output);
        assert_eq!(s, json!({"type": "number"}));
        let mut s = json!({"type": "string", "format": "date-time"});
        portable(&mut s, Side::Output);
        assert_eq!(s, json!({"type": "string", "format": "date-time"}), "standard formats stay");
    }

    #[test]
    fn nullable_inputs_lose_their_null_and_nullable_outputs_use_any_of() {
        let mut s = json!({"properties": {"since": {"type": ["string", "null"], "description": "d"}}});
        portable(&mut s, Side::Input);
        assert_eq!(s, json!({"properties": {"since": {"type": "string", "description": "d"}}}));
        let mut s = json!({"type": ["integer", "null"], "format": "uint32", "description": "d"});
        portable(&mut s, Side::Output);
        assert_eq!(
            s,
            json!({"description": "d", "anyOf": [{"type": "integer", "minimum": 0, "maximum": 4294967295u64}, {"type": "null"}]})
        );
        let mut s = json!({"anyOf": [{"$ref": "#/$defs/Level"}, {"type": "null"}], "description": "d"});
        portable(&mut s, Side::Input);
        assert_eq!(s, json!({"$ref": "#/$defs/Level", "description": "d"}));
    }

    /// Every tool's schemas: no type arrays, no non-standard formats, and inputs without
    /// null.
    #[test]
    fn every_tool_schema_is_portable() {
        fn walk(v: &Value, side: Side, path: &str, problems: &mut Vec<String>) {
            match v {
                Value::Object(o) => {
                    if o.get("type").is_some_and(Value::is_array) {
                        problems.push(format!("{path}: type array"));
                    }
                    if let Some(f) = o.get("format").and_then(Value::as_str) {
                        if format_range(f).is_some() {
                            problems.push(format!("{path}: format {f}"));
                        }
                    }
                    if side == Side::Input && o.get("type") == Some(&json!("null")) {
                        problems.push(format!("{path}: null in an input"));
                    }
                    for (k, c) in o {
                        walk(c, side, &format!("{path}/{k}"), problems);
                    }
                }
                Value::Array(a) => {
                    a.iter().enumerate().for_each(|(i, c)| walk(c, side, &format!("{path}/{i}"), problems))
                }
                _ => {}
            }
        }
        let mut problems = Vec::new();
        for entry in crate::tools::Catalogue::new().entries() {
            let name = entry.tool.spec().name;
            walk(&entry.tool.input_schema(), Side::Input, &format!("{name} input"), &mut problems);
            walk(&entry.tool.output_schema(), Side::Output, &format!("{name} output"), &mut problems);
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
