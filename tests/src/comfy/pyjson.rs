//! JSON text as Python's `json.dumps` writes it (aiohttp's `json_response` and `send_json` use it):
//! `", "` and `": "` separators, and non-ASCII escaped as `\uXXXX` (`ensure_ascii`). Key order is
//! serde_json's (sorted), which clients must not depend on anyway.

use std::io;

use serde_json::Value;
use serde_json::ser::Formatter;

struct Python;

impl Formatter for Python {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, w: &mut W, fragment: &str) -> io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn to_string(value: &Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Python);
    serde::Serialize::serialize(value, &mut ser).expect("a Value always serializes");
    String::from_utf8(out).expect("escaped JSON is ASCII")
}

/// Python's `repr` of a list of strings, as in the `details` of `value_not_in_list`.
pub(crate) fn repr_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| {
            let s = s.replace('\\', "\\\\");
            if s.contains('\'') && !s.contains('"') {
                format!("\"{s}\"")
            } else {
                format!("'{}'", s.replace('\'', "\\'"))
            }
        })
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// Python's `str()` of a JSON value: what `str(prompt_id)` or an f-string makes of it.
pub(crate) fn py_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// Python truthiness of a JSON value.
pub(crate) fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_like_python() {
        let v = serde_json::json!({"a": [1, 2.5, "é😀"], "b": null});
        assert_eq!(to_string(&v), r#"{"a": [1, 2.5, "\u00e9\ud83d\ude00"], "b": null}"#);
        assert_eq!(repr_list(&["a".into(), "it's".into()]), r#"['a', "it's"]"#);
    }
}
