//! XRPC query parameters, parsed and checked against the method's lexicon.

use indexmap::IndexMap;
use serde_json::Value;

use super::XrpcError;
use crate::lexicon::{Catalog, Field};

/// Checked parameters: JSON values typed by the lexicon (integers as numbers,
/// booleans as bools, arrays for repeated parameters).
#[derive(Debug, Default)]
pub struct Params(pub IndexMap<String, Value>);

impl Params {
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }
    pub fn int(&self, name: &str) -> Option<i64> {
        self.0.get(name).and_then(Value::as_i64)
    }
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.0.get(name).and_then(Value::as_bool)
    }
}

/// A string parameter the method needs. The lexicon normally marks it
/// required, and `parse` has checked it; should an edited lexicon stop
/// doing so, its absence is the client's error, not a panic.
pub fn required<'a>(p: &'a Params, name: &str) -> Result<&'a str, XrpcError> {
    p.str(name).ok_or_else(|| {
        XrpcError::invalid_request(format!("Error: Params must have the property \"{name}\""))
    })
}

/// Parses `pairs` for the query `nsid`: types from the lexicon, defaults
/// applied, every constraint checked. Errors name the parameter.
pub fn parse(
    catalog: &Catalog,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Params, XrpcError> {
    let Some(Field::Query(method)) = catalog.def(&format!("{nsid}#main")) else {
        return Err(XrpcError::not_implemented(nsid));
    };
    let doc = catalog.document(nsid);
    let mut out = Params::default();
    let Some(Field::Params(schema)) = method.parameters.as_deref() else {
        return Ok(out);
    };
    for (name, field) in &schema.properties {
        let raw: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect();
        let value = match field {
            Field::Array { items, .. } => {
                let vals = raw
                    .iter()
                    .map(|r| coerce(items, name, r))
                    .collect::<Result<Vec<_>, _>>()?;
                if vals.is_empty() {
                    None
                } else {
                    Some(Value::Array(vals))
                }
            }
            _ => match raw.as_slice() {
                [] => None,
                [one] => Some(coerce(field, name, one)?),
                _ => {
                    return Err(XrpcError::invalid_request(format!(
                        "Error: Params {name} must be a single value"
                    )))
                }
            },
        };
        let value = match value {
            Some(v) => v,
            None => match default_of(doc, name) {
                Some(d) => d,
                None if schema.required.iter().any(|r| r == name) => {
                    return Err(XrpcError::invalid_request(format!(
                        "Error: Params must have the property \"{name}\""
                    )))
                }
                None => continue,
            },
        };
        catalog.validate_value(field, &value).map_err(|e| {
            XrpcError::invalid_request(format!("Error: Params/{name}{} {}", e.path, e.message))
        })?;
        out.0.insert(name.clone(), value);
    }
    Ok(out)
}

fn coerce(field: &Field, name: &str, raw: &str) -> Result<Value, XrpcError> {
    match field {
        Field::Integer { .. } => raw.parse::<i64>().map(Value::from).map_err(|_| {
            XrpcError::invalid_request(format!("Error: Params/{name} must be an integer"))
        }),
        Field::Boolean { .. } => match raw {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(XrpcError::invalid_request(format!(
                "Error: Params/{name} must be a boolean"
            ))),
        },
        _ => Ok(Value::String(raw.to_string())),
    }
}

/// A parameter's `default`, read from the raw lexicon document.
fn default_of(doc: Option<&Value>, name: &str) -> Option<Value> {
    doc?.pointer(&format!("/defs/main/parameters/properties/{name}/default"))
        .cloned()
}
