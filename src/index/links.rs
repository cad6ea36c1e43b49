//! Link extraction: every AT-URI and DID anywhere in a record, with its path.
//! This is what makes replies, likes, follows, RSVPs and reviews one index for
//! any lexicon, known in advance or not.
//!
//! Paths follow Constellation's convention, so its clients' `source`
//! parameters (`app.bsky.feed.like:subject.uri`) mean the same here: `.key`
//! for an object field, `[]` for an array element, `[type]` for an array
//! element that is an object with a `$type`.

use serde_json::Value;

use super::event::Link;
use crate::syntax::{is_valid_at_uri, is_valid_did};

/// All links of a record: `.subject.uri`, `.reply.parent.uri`,
/// `.facets[].features[app.bsky.richtext.facet#mention].did`.
pub fn extract_links(record: &Value) -> Vec<Link> {
    let mut out = Vec::new();
    let mut path = String::new();
    walk(record, &mut path, &mut out);
    out
}

fn walk(value: &Value, path: &mut String, out: &mut Vec<Link>) {
    match value {
        Value::String(s) => {
            let is_link = (s.starts_with("at://") && is_valid_at_uri(s))
                || (s.starts_with("did:") && is_valid_did(s));
            if is_link && !path.is_empty() {
                out.push(Link {
                    path: path.clone(),
                    target: s.clone(),
                });
            }
        }
        Value::Array(items) => {
            let len = path.len();
            for item in items {
                path.push('[');
                if let Some(t) = item.get("$type").and_then(Value::as_str) {
                    path.push_str(t);
                }
                path.push(']');
                walk(item, path, out);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, v) in map {
                if key.starts_with('$') {
                    continue;
                }
                let len = path.len();
                path.push('.');
                path.push_str(key);
                walk(v, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}
