//! Record validation against the compiled catalog, on the atproto data model
//! in its JSON form (`{"$link"}`, `{"$bytes"}`, blob objects), which is what
//! both the firehose decoder and Jetstream produce.
//!
//! Hand-written (see `DEPENDENCIES.md`: the runtime validators on crates.io skip
//! formats, enums or consts, or clone their registry per call); the rules follow
//! the lexicon spec and are pinned by the interop record vectors.

use serde_json::{Map, Value};
use unicode_segmentation::UnicodeSegmentation;

use super::catalog::Catalog;
use super::schema::{Field, ObjectSchema, StringSchema};

/// Why a record is invalid, with the path to the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ValidationError {
    pub path: String,
    pub message: String,
}

struct Failure {
    rev_path: Vec<String>,
    message: String,
}

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            rev_path: Vec::new(),
            message: message.into(),
        }
    }
    fn at(mut self, segment: impl Into<String>) -> Failure {
        self.rev_path.push(segment.into());
        self
    }
    /// The public error, with the path written from `root` down.
    fn into_error(self, root: &str) -> ValidationError {
        let mut path = String::from(root);
        for seg in self.rev_path.iter().rev() {
            path.push_str(seg);
        }
        ValidationError {
            path,
            message: self.message,
        }
    }
}

type Check = Result<(), Failure>;

impl Catalog {
    /// Validates `value` as a record of `collection`. The record's `$type` must
    /// name the collection.
    pub fn validate_record(&self, collection: &str, value: &Value) -> Result<(), ValidationError> {
        let finish = |f: Failure| f.into_error("record");
        let Some(schema) = self.record_schema(collection) else {
            return Err(ValidationError {
                path: "record".into(),
                message: format!("no record lexicon for {collection}"),
            });
        };
        let obj = value
            .as_object()
            .ok_or_else(|| finish(Failure::new("must be an object")))?;
        match obj.get("$type").and_then(Value::as_str) {
            Some(t) if t == collection => {}
            Some(t) => {
                return Err(finish(
                    Failure::new(format!(
                        "$type {t:?} does not match collection {collection}"
                    ))
                    .at(".$type"),
                ))
            }
            None => return Err(finish(Failure::new("$type is required").at(".$type"))),
        }
        self.check_object(schema, obj).map_err(finish)
    }

    /// Validates a value against a field schema (used for XRPC parameters).
    pub fn validate_value(&self, field: &Field, value: &Value) -> Result<(), ValidationError> {
        self.check_field(field, value).map_err(|f| f.into_error(""))
    }

    fn check_object(&self, schema: &ObjectSchema, obj: &Map<String, Value>) -> Check {
        for name in &schema.required {
            if !obj.contains_key(name) {
                return Err(Failure::new("required field is missing").at(format!(".{name}")));
            }
        }
        for (name, field) in &schema.properties {
            match obj.get(name) {
                None => {}
                Some(Value::Null) if !schema.nullable.iter().any(|n| n == name) => {
                    return Err(Failure::new("must not be null").at(format!(".{name}")));
                }
                Some(Value::Null) => {}
                Some(v) => self
                    .check_field(field, v)
                    .map_err(|f| f.at(format!(".{name}")))?,
            }
        }
        Ok(())
    }

    /// Long on purpose: one arm per lexicon type, the table of the spec's rules.
    fn check_field(&self, field: &Field, value: &Value) -> Check {
        match field {
            Field::Null => match value {
                Value::Null => Ok(()),
                _ => Err(Failure::new("must be null")),
            },
            Field::Boolean { konst } => {
                let b = value
                    .as_bool()
                    .ok_or_else(|| Failure::new("must be a boolean"))?;
                match konst {
                    Some(c) if *c != b => Err(Failure::new(format!("must be {c}"))),
                    _ => Ok(()),
                }
            }
            Field::Integer {
                minimum,
                maximum,
                enumeration,
                konst,
            } => {
                let n = value
                    .as_i64()
                    .ok_or_else(|| Failure::new("must be an integer"))?;
                if let Some(c) = konst {
                    if n != *c {
                        return Err(Failure::new(format!("must be {c}")));
                    }
                }
                if let Some(e) = enumeration {
                    if !e.contains(&n) {
                        return Err(Failure::new(format!("must be one of {e:?}")));
                    }
                }
                if minimum.is_some_and(|m| n < m) || maximum.is_some_and(|m| n > m) {
                    return Err(Failure::new(format!(
                        "{n} is out of range [{}, {}]",
                        minimum.map_or("..".into(), |m| m.to_string()),
                        maximum.map_or("..".into(), |m| m.to_string())
                    )));
                }
                Ok(())
            }
            Field::String(s) => {
                let text = value
                    .as_str()
                    .ok_or_else(|| Failure::new("must be a string"))?;
                check_string(s, text)
            }
            Field::Bytes {
                min_length,
                max_length,
            } => {
                let len = bytes_len(value)
                    .ok_or_else(|| Failure::new("must be bytes ({\"$bytes\": base64})"))?;
                check_len(len, *min_length, *max_length, "bytes")
            }
            Field::CidLink => {
                if is_cid_link(value) {
                    Ok(())
                } else {
                    Err(Failure::new("must be a cid-link ({\"$link\": cid})"))
                }
            }
            Field::Blob { accept, max_size } => check_blob(value, accept.as_deref(), *max_size),
            Field::Array {
                items,
                min_length,
                max_length,
            } => {
                let arr = value
                    .as_array()
                    .ok_or_else(|| Failure::new("must be an array"))?;
                check_len(arr.len(), *min_length, *max_length, "items")?;
                for (i, item) in arr.iter().enumerate() {
                    self.check_field(items, item)
                        .map_err(|f| f.at(format!("[{i}]")))?;
                }
                Ok(())
            }
            Field::Object(o) | Field::Params(o) => {
                let obj = plain_object(value).ok_or_else(|| Failure::new("must be an object"))?;
                self.check_object(o, obj)
            }
            Field::Ref { target } => self.check_ref(target, value),
            Field::Union { refs, closed } => {
                let obj = plain_object(value)
                    .ok_or_else(|| Failure::new("must be an object with $type"))?;
                let t = obj
                    .get("$type")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Failure::new("union member must have a $type"))?;
                // Refs are stored as `nsid#name`; a bare `$type` means `#main`.
                let member = refs
                    .iter()
                    .find(|r| *r == t || r.strip_suffix("#main") == Some(t));
                if let Some(r) = member {
                    self.check_ref(r, value)
                } else if *closed {
                    Err(Failure::new(format!(
                        "$type {t:?} is not one of the closed union's refs"
                    )))
                } else {
                    Ok(())
                }
            }
            Field::Unknown => match plain_object(value) {
                Some(obj) if !is_blob(obj) => Ok(()),
                _ => Err(Failure::new("must be an object")),
            },
            Field::Token => Err(Failure::new("a token is not a value type")),
            Field::Record { record, .. } => self.check_field(record, value),
            Field::Query(_)
            | Field::Procedure(_)
            | Field::Subscription(_)
            | Field::PermissionSet {} => Err(Failure::new(format!(
                "a {} is not a value type",
                field.type_name()
            ))),
        }
    }

    fn check_ref(&self, target: &str, value: &Value) -> Check {
        match self.def(target) {
            None => Err(Failure::new(format!("unresolved lexicon ref {target}"))),
            Some(Field::Token) => match value.as_str() {
                Some(s) if s == target || target.strip_suffix("#main") == Some(s) => Ok(()),
                _ => Err(Failure::new(format!("must be the token {target}"))),
            },
            Some(def) => self.check_field(def, value),
        }
    }
}

fn check_len(len: usize, min: Option<usize>, max: Option<usize>, unit: &str) -> Check {
    if let Some(m) = min {
        if len < m {
            return Err(Failure::new(format!(
                "{len} {unit}, fewer than the minimum {m}"
            )));
        }
    }
    if let Some(m) = max {
        if len > m {
            return Err(Failure::new(format!(
                "{len} {unit}, more than the maximum {m}"
            )));
        }
    }
    Ok(())
}

fn check_string(s: &StringSchema, text: &str) -> Check {
    if let Some(c) = &s.konst {
        if c != text {
            return Err(Failure::new(format!("must be {c:?}")));
        }
    }
    if let Some(e) = &s.enumeration {
        if !e.iter().any(|v| v == text) {
            return Err(Failure::new(format!("{text:?} is not one of {e:?}")));
        }
    }
    check_len(text.len(), s.min_length, s.max_length, "bytes (UTF-8)")?;
    if s.min_graphemes.is_some() || s.max_graphemes.is_some() {
        // A string has at most as many graphemes as bytes: skip the count when
        // the byte length alone already satisfies the limits.
        let needs_count = s.min_graphemes.is_some_and(|m| text.len() >= m)
            || s.max_graphemes.is_some_and(|m| text.len() > m);
        let count = if needs_count || s.min_graphemes.is_some() {
            text.graphemes(true).count()
        } else {
            text.len()
        };
        check_len(count, s.min_graphemes, s.max_graphemes, "graphemes")?;
    }
    if let Some(format) = s.format {
        if !format.is_valid(text) {
            return Err(Failure::new(format!("not a valid {format}: {text:?}")));
        }
    }
    Ok(())
}

/// An object that is not one of the data model's special forms (`$bytes`, `$link`).
fn plain_object(value: &Value) -> Option<&Map<String, Value>> {
    let obj = value.as_object()?;
    if obj.len() == 1 && (obj.contains_key("$bytes") || obj.contains_key("$link")) {
        return None;
    }
    Some(obj)
}

fn is_blob(obj: &Map<String, Value>) -> bool {
    obj.get("$type").and_then(Value::as_str) == Some("blob")
}

fn is_cid_link(value: &Value) -> bool {
    match value.as_object() {
        Some(o) if o.len() == 1 => o
            .get("$link")
            .and_then(Value::as_str)
            .is_some_and(|s| cid::Cid::try_from(s).is_ok()),
        _ => false,
    }
}

fn bytes_len(value: &Value) -> Option<usize> {
    let o = value.as_object()?;
    if o.len() != 1 {
        return None;
    }
    let b64 = o.get("$bytes")?.as_str()?;
    // The length is all that is checked; decoding is lenient about trailing
    // bits, as the reference implementations are ("123" is 2 bytes).
    let trimmed = b64.trim_end_matches('=');
    let ok = trimmed
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
        && trimmed.len() % 4 != 1;
    ok.then_some(trimmed.len() * 3 / 4)
}

fn check_blob(value: &Value, accept: Option<&[String]>, max_size: Option<u64>) -> Check {
    let obj = value
        .as_object()
        .ok_or_else(|| Failure::new("must be a blob"))?;
    let mime = if is_blob(obj) {
        if !obj.get("ref").is_some_and(is_cid_link) {
            return Err(Failure::new("blob ref must be a cid-link").at(".ref"));
        }
        let size = obj
            .get("size")
            .and_then(Value::as_i64)
            .ok_or_else(|| Failure::new("blob size must be an integer").at(".size"))?;
        if max_size.is_some_and(|m| size as u64 > m) {
            return Err(Failure::new(format!(
                "blob of {size} bytes is larger than maxSize {}",
                max_size.unwrap_or(0)
            )));
        }
        obj.get("mimeType").and_then(Value::as_str)
    } else if obj.get("cid").is_some_and(Value::is_string) {
        // The legacy blob form: {"cid": "...", "mimeType": "..."}.
        obj.get("mimeType").and_then(Value::as_str)
    } else {
        return Err(Failure::new("must be a blob"));
    };
    let mime =
        mime.ok_or_else(|| Failure::new("blob mimeType must be a string").at(".mimeType"))?;
    if let Some(patterns) = accept {
        if !patterns.iter().any(|p| mime_matches(p, mime)) {
            return Err(Failure::new(format!(
                "blob type {mime:?} is not accepted ({patterns:?})"
            )));
        }
    }
    Ok(())
}

fn mime_matches(pattern: &str, mime: &str) -> bool {
    if pattern == "*/*" || pattern == "*" {
        return true;
    }
    match pattern.strip_suffix("/*") {
        Some(prefix) => mime.split('/').next() == Some(prefix),
        None => pattern == mime,
    }
}
