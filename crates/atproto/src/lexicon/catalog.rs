//! The lexicon catalog: every `*.json` under a directory, parsed and compiled
//! once into a map of fully-qualified defs (`nsid#name`) with every `ref` and
//! union member rewritten to that form, so validation never re-parses or
//! allocates to resolve a reference.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::schema::{Field, LexiconDoc, ObjectSchema};
use crate::syntax::is_valid_nsid;

/// A lexicon file that could not be loaded, with the reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct LoadError {
    pub path: PathBuf,
    pub message: String,
}

/// A record type: its collection NSID, record key rule and object schema id.
#[derive(Debug, Clone)]
pub struct RecordType {
    pub nsid: String,
    pub key: String,
    pub description: Option<String>,
}

/// Every loaded lexicon, compiled.
#[derive(Debug, Default)]
pub struct Catalog {
    // foldhash: looked up for every record validated and every ref it follows.
    defs: HashMap<String, Field, foldhash::fast::RandomState>,
    docs: BTreeMap<String, Value>,
    records: BTreeMap<String, RecordType>,
}

impl Catalog {
    /// Loads every `*.json` file below `dir` (recursively). Files that fail to
    /// parse or are not valid lexicons are returned as errors and left out; the
    /// rest make up the catalog.
    pub fn load_dir(dir: &Path) -> std::io::Result<(Catalog, Vec<LoadError>)> {
        let mut catalog = Catalog::default();
        let errors = catalog.add_dir(dir)?;
        Ok((catalog, errors))
    }

    /// Adds every `*.json` file below `dir`; returns the files that failed.
    pub fn add_dir(&mut self, dir: &Path) -> std::io::Result<Vec<LoadError>> {
        let mut files = Vec::new();
        collect_json_files(dir, &mut files)?;
        files.sort();
        let catalog = self;
        let mut errors = Vec::new();
        for path in files {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(LoadError {
                        path,
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let parsed = serde_json::from_str::<Value>(&text)
                .map_err(|e| format!("not JSON: {e}"))
                .and_then(|v| catalog.add_document(v));
            if let Err(message) = parsed {
                errors.push(LoadError { path, message });
            }
        }
        Ok(errors)
    }

    /// Checks one lexicon document and adds its defs. A document whose id is
    /// already loaded replaces nothing: the first one wins and this is an error.
    pub fn add_document(&mut self, raw: Value) -> Result<(), String> {
        let doc = parse_document(&raw)?;
        if self.docs.contains_key(&doc.id) {
            return Err(format!("duplicate lexicon id {}", doc.id));
        }
        let mut compiled = Vec::new();
        for (name, def) in &doc.defs {
            let mut field: Field =
                serde_json::from_value(def.clone()).map_err(|e| format!("def {:?}: {e}", name))?;
            check_named_def(name, &field)?;
            qualify_refs(&doc.id, &mut field);
            if let Field::Record { key, .. } = &field {
                self.records.insert(
                    doc.id.clone(),
                    RecordType {
                        nsid: doc.id.clone(),
                        key: key.clone().unwrap_or_else(|| "any".into()),
                        description: def
                            .get("description")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    },
                );
            }
            compiled.push((format!("{}#{}", doc.id, name), field));
        }
        self.defs.extend(compiled);
        self.docs.insert(doc.id.clone(), raw);
        Ok(())
    }

    /// Compiles a schema that sits inside document `doc_id` but is not a def
    /// of its own (a method's output schema), with its refs qualified.
    pub fn compile_schema(&self, doc_id: &str, schema: &Value) -> Result<Field, String> {
        let mut field: Field = serde_json::from_value(schema.clone()).map_err(|e| e.to_string())?;
        qualify_refs(doc_id, &mut field);
        Ok(field)
    }

    /// A def by its fully-qualified id (`nsid#name`).
    pub fn def(&self, id: &str) -> Option<&Field> {
        self.defs.get(id)
    }

    /// Whether records of this collection are indexed.
    pub fn has_record(&self, nsid: &str) -> bool {
        self.records.contains_key(nsid)
    }

    /// Every record type, sorted by NSID.
    pub fn records(&self) -> impl Iterator<Item = &RecordType> {
        self.records.values()
    }

    /// The object schema of a record type.
    pub fn record_schema(&self, nsid: &str) -> Option<&ObjectSchema> {
        match self.defs.get(&format!("{nsid}#main")) {
            Some(Field::Record { record, .. }) => match record.as_ref() {
                Field::Object(o) => Some(o),
                _ => None,
            },
            _ => None,
        }
    }

    /// The raw JSON of a document.
    pub fn document(&self, nsid: &str) -> Option<&Value> {
        self.docs.get(nsid)
    }

    /// Number of documents loaded.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Refs that point at defs no loaded document has: (from def, missing target).
    pub fn unresolved_refs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (id, field) in &self.defs {
            visit_refs(field, &mut |target| {
                if !self.defs.contains_key(target) {
                    out.push((id.clone(), target.to_string()));
                }
            });
        }
        out.sort();
        out
    }
}

fn parse_document(raw: &Value) -> Result<LexiconDoc, String> {
    match raw.get("lexicon") {
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
        other => return Err(format!("\"lexicon\" must be 1, found {other:?}")),
    }
    let id = raw
        .get("id")
        .and_then(Value::as_str)
        .ok_or("\"id\" must be a string")?;
    if !is_valid_nsid(id) {
        return Err(format!("\"id\" is not a valid NSID: {id:?}"));
    }
    serde_json::from_value(raw.clone()).map_err(|e| format!("{id}: {e}"))
}

fn check_named_def(name: &str, field: &Field) -> Result<(), String> {
    if field.is_primary() && name != "main" {
        return Err(format!(
            "def {name:?}: a {} may only be the main def",
            field.type_name()
        ));
    }
    match field {
        // `unknown` is allowed as a named def: the reference validator
        // (@atproto/lexicon) accepts it and real lexicons use it
        // (app.ocho.plugin.defs#pluginConfig), although the interop vector
        // "defined unknown" calls it invalid.
        Field::Ref { .. } | Field::Union { .. } | Field::Null | Field::Params(_) => Err(format!(
            "def {name:?}: type {} cannot be a named def",
            field.type_name()
        )),
        Field::Record { record, .. } if !matches!(record.as_ref(), Field::Object(_)) => Err(
            format!("def {name:?}: a record's \"record\" must be an object"),
        ),
        _ => Ok(()),
    }
}

/// Rewrites `#local` and bare `nsid` refs to `nsid#name`.
fn qualify_refs(doc_id: &str, field: &mut Field) {
    let qualify = |r: &mut String| {
        if let Some(local) = r.strip_prefix('#') {
            *r = format!("{doc_id}#{local}");
        } else if !r.contains('#') {
            r.push_str("#main");
        }
    };
    match field {
        Field::Ref { target } => qualify(target),
        Field::Union { refs, .. } => refs.iter_mut().for_each(qualify),
        Field::Array { items, .. } => qualify_refs(doc_id, items),
        Field::Object(o) | Field::Params(o) => o
            .properties
            .values_mut()
            .for_each(|f| qualify_refs(doc_id, f)),
        Field::Record { record, .. } => qualify_refs(doc_id, record),
        Field::Query(m) | Field::Procedure(m) | Field::Subscription(m) => {
            if let Some(p) = m.parameters.as_mut() {
                qualify_refs(doc_id, p);
            }
        }
        _ => {}
    }
}

fn visit_refs(field: &Field, f: &mut impl FnMut(&str)) {
    match field {
        Field::Ref { target } => f(target),
        Field::Union { refs, .. } => refs.iter().for_each(|r| f(r)),
        Field::Array { items, .. } => visit_refs(items, f),
        Field::Object(o) | Field::Params(o) => o.properties.values().for_each(|p| visit_refs(p, f)),
        Field::Record { record, .. } => visit_refs(record, f),
        _ => {}
    }
}

fn collect_json_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_json_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}
