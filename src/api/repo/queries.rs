//! Lexicon-defined query methods: a `type: query` lexicon plus an SQL file
//! `queries/<nsid>.sql` is served at `GET /xrpc/<nsid>`.
//!
//! The contract for the SQL file:
//! - one SELECT (a `WITH` in front is fine), no trailing statement;
//! - parameters appear as `$name`, where `name` is one of the lexicon's
//!   parameters; they are checked against the lexicon and bound as values,
//!   never spliced into the text (a parameter the request omits, with no
//!   lexicon default, is bound as NULL; an array parameter as JSON text);
//! - the rows become the items of the output schema's one array property
//!   (or, when the output has no array property, the first row is the output);
//!   columns become fields by name, NULLs are left out, JSON columns are
//!   embedded as JSON;
//! - every answer is checked against the lexicon's output schema; one that
//!   does not conform is a 500 naming the field, never sent.
//!
//! Files are checked when the server starts (lexicon present and a query,
//! SQL that prepares, every `$name` a lexicon parameter): a bad file is
//! reported with its path and not served; the rest are.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;

use serde_json::Value;

use crate::api::params::parse;
use crate::api::{AppState, XrpcError};
use crate::index::store::ReadPool;
use crate::lexicon::{Catalog, Field};

/// One SQL-backed method, checked at load.
#[derive(Debug)]
pub struct QueryMethod {
    pub nsid: String,
    pub path: PathBuf,
    /// The statement, wrapped so that each row comes back as one JSON object.
    wrapped: String,
    output: Field,
    /// The output property the rows go into, if the output has an array property.
    list_property: Option<String>,
}

/// The methods found under `--queries`, by NSID.
#[derive(Debug, Default)]
pub struct QueryMethods(HashMap<String, QueryMethod>);

impl QueryMethods {
    pub fn get(&self, nsid: &str) -> Option<&QueryMethod> {
        self.0.get(nsid)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// A query file that cannot be served, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct QueryFileError {
    pub path: PathBuf,
    pub message: String,
}

/// Loads every `*.sql` in `dir` (a missing directory holds no methods).
pub fn load(
    dir: &Path,
    catalog: &Catalog,
    readers: &ReadPool,
) -> (QueryMethods, Vec<QueryFileError>) {
    let mut methods = QueryMethods::default();
    let mut errors = Vec::new();
    for path in sql_files(dir) {
        match load_one(&path, catalog, readers) {
            Ok(m) => {
                methods.0.insert(m.nsid.clone(), m);
            }
            Err(message) => errors.push(QueryFileError { path, message }),
        }
    }
    (methods, errors)
}

fn load_one(path: &Path, catalog: &Catalog, readers: &ReadPool) -> Result<QueryMethod, String> {
    let nsid = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("the file name is not <nsid>.sql")?
        .to_string();
    let Some(Field::Query(method)) = catalog.def(&format!("{nsid}#main")) else {
        return Err(format!(
            "no `type: query` lexicon {nsid} is loaded (the file name names the method)"
        ));
    };
    let output = output_schema(catalog, &nsid)?;
    let list_property = match &output {
        Field::Object(o) => o
            .properties
            .iter()
            .find(|(_, f)| matches!(f, Field::Array { .. }))
            .map(|(name, _)| name.clone()),
        _ => None,
    };
    let params: Vec<String> = match method.parameters.as_deref() {
        Some(Field::Params(p)) => p.properties.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let wrapped = wrap_checked(readers, &text, &params)?;
    Ok(QueryMethod {
        nsid,
        path: path.to_path_buf(),
        wrapped,
        output,
        list_property,
    })
}

/// Runs a method for one request.
pub async fn run(
    state: &AppState,
    method: &QueryMethod,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), &method.nsid, pairs)?;
    let items = rows(&state.readers, method.wrapped.clone(), p.0).await?;
    let output = match &method.list_property {
        Some(name) => {
            let mut o = serde_json::Map::new();
            o.insert(name.clone(), Value::Array(items));
            Value::Object(o)
        }
        None => items
            .into_iter()
            .next()
            .unwrap_or_else(|| Value::Object(Default::default())),
    };
    check_answer(&state.catalog(), &method.nsid, &method.output, &output).inspect_err(|e| {
        tracing::error!(method = method.nsid, path = %method.path.display(), error = %e.message, "query method answer does not match its lexicon");
    })?;
    Ok(output)
}

/// The compiled JSON output schema of query `nsid`.
pub(crate) fn output_schema(catalog: &Catalog, nsid: &str) -> Result<Field, String> {
    let Some(Field::Query(method)) = catalog.def(&format!("{nsid}#main")) else {
        return Err(format!("no `type: query` lexicon {nsid} is loaded"));
    };
    let schema = method
        .output
        .as_ref()
        .filter(|o| o.get("encoding").and_then(Value::as_str) == Some("application/json"))
        .and_then(|o| o.get("schema"))
        .ok_or("the lexicon has no application/json output schema")?;
    catalog.compile_schema(nsid, schema)
}

/// Checks an answer of `nsid` against its compiled output schema: a 500
/// naming the field if it does not match.
pub(crate) fn check_answer(
    catalog: &Catalog,
    nsid: &str,
    schema: &Field,
    answer: &Value,
) -> Result<(), XrpcError> {
    catalog.validate_value(schema, answer).map_err(|e| {
        XrpcError::internal(format!(
            "the answer of {nsid} does not match its lexicon: Output{} {}",
            e.path, e.message
        ))
    })
}

/// The `*.sql` files directly in `dir`, sorted (none if it does not exist).
pub(crate) fn sql_files(dir: &Path) -> Vec<PathBuf> {
    files_with_extension(dir, "sql")
}

/// The files `*.<ext>` directly in `dir`, sorted (none when it is missing).
pub(crate) fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    paths.sort();
    paths
}

/// Wraps one SELECT so each row comes back as a JSON object, after checking
/// that it prepares and that its `$name` placeholders are all in `allowed`.
pub(crate) fn wrap_checked(
    readers: &ReadPool,
    text: &str,
    allowed: &[String],
) -> Result<String, String> {
    let sql = text.trim().trim_end_matches(';').trim_end();
    if sql.is_empty() {
        return Err("the file is empty".into());
    }
    let wrapped = format!("SELECT to_json(q)::VARCHAR FROM (\n{sql}\n) AS q");
    let names = readers
        .with_blocking(|c| {
            let stmt = c.prepare(&wrapped)?;
            (1..=stmt.parameter_count())
                .map(|i| stmt.parameter_name(i))
                .collect::<duckdb::Result<Vec<String>>>()
        })
        .map_err(|e| format!("the SQL does not prepare: {e}"))?;
    if let Some(unknown) = names.iter().find(|n| !allowed.contains(n)) {
        return Err(format!(
            "${unknown} is not a parameter here (allowed: {})",
            allowed.join(", ")
        ));
    }
    Ok(wrapped)
}

/// Runs a statement made by [`wrap_checked`], binding each `$name` to
/// `values[name]` (NULL when absent; arrays and objects as JSON text), and
/// returns its rows as JSON objects without their NULL fields.
pub(crate) async fn rows(
    readers: &Arc<ReadPool>,
    wrapped: String,
    values: IndexMap<String, Value>,
) -> Result<Vec<Value>, XrpcError> {
    let rows: Vec<String> = readers
        .with(move |c| {
            let mut stmt = c.prepare(&wrapped)?;
            for i in 1..=stmt.parameter_count() {
                let name = stmt.parameter_name(i)?;
                match values.get(&name) {
                    None | Some(Value::Null) => stmt.raw_bind_parameter(i, duckdb::types::Null)?,
                    Some(Value::String(s)) => stmt.raw_bind_parameter(i, s.as_str())?,
                    Some(Value::Bool(b)) => stmt.raw_bind_parameter(i, *b)?,
                    Some(Value::Number(n)) => match n.as_i64() {
                        Some(n) => stmt.raw_bind_parameter(i, n)?,
                        None => stmt.raw_bind_parameter(i, n.to_string())?,
                    },
                    Some(other) => stmt.raw_bind_parameter(i, other.to_string())?,
                }
            }
            // duckdb's raw_query does not execute by itself (rusqlite's does).
            stmt.raw_execute()?;
            let mut rows = stmt.raw_query();
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(r.get::<_, String>(0)?);
            }
            Ok(out)
        })
        .await?;
    rows.iter()
        .map(|r| {
            let mut v: Value = serde_json::from_str(r)
                .map_err(|e| XrpcError::internal(format!("row is not JSON: {e}")))?;
            if let Value::Object(o) = &mut v {
                o.retain(|_, f| !f.is_null());
            }
            Ok(v)
        })
        .collect()
}
