//! The lexicon document model: what a `*.json` lexicon file says, parsed with
//! serde. Only the parts that validation, indexing and the API use are typed;
//! descriptions and method bodies are kept as raw JSON for later stages.

use serde::Deserialize;
use serde_json::Value;

/// One lexicon document (`{"lexicon": 1, "id": ..., "defs": {...}}`).
#[derive(Debug, Clone, Deserialize)]
pub struct LexiconDoc {
    pub lexicon: u32,
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
    pub defs: serde_json::Map<String, Value>,
}

/// A field type (or named def) as it appears in a lexicon.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Field {
    Null,
    Boolean {
        #[serde(rename = "const")]
        konst: Option<bool>,
    },
    Integer {
        minimum: Option<i64>,
        maximum: Option<i64>,
        #[serde(rename = "enum")]
        enumeration: Option<Vec<i64>>,
        #[serde(rename = "const")]
        konst: Option<i64>,
    },
    String(StringSchema),
    Bytes {
        #[serde(rename = "minLength")]
        min_length: Option<usize>,
        #[serde(rename = "maxLength")]
        max_length: Option<usize>,
    },
    CidLink,
    Blob {
        accept: Option<Vec<String>>,
        #[serde(rename = "maxSize")]
        max_size: Option<u64>,
    },
    Array {
        items: Box<Field>,
        #[serde(rename = "minLength")]
        min_length: Option<usize>,
        #[serde(rename = "maxLength")]
        max_length: Option<usize>,
    },
    Object(ObjectSchema),
    Params(ObjectSchema),
    Ref {
        #[serde(rename = "ref")]
        target: String,
    },
    Union {
        refs: Vec<String>,
        #[serde(default)]
        closed: bool,
    },
    Unknown,
    Token,
    Record {
        #[serde(default)]
        key: Option<String>,
        record: Box<Field>,
    },
    Query(Method),
    Procedure(Method),
    Subscription(Method),
    PermissionSet {},
}

/// A string field's constraints.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StringSchema {
    /// Resolved once at load; a format name this version does not know is
    /// not checked (as the reference validator treats new formats).
    #[serde(default, deserialize_with = "known_format")]
    pub format: Option<crate::syntax::Format>,
    pub min_length: Option<usize>,
    pub max_length: Option<usize>,
    pub min_graphemes: Option<usize>,
    pub max_graphemes: Option<usize>,
    #[serde(rename = "enum")]
    pub enumeration: Option<Vec<String>>,
    #[serde(rename = "const")]
    pub konst: Option<String>,
    pub known_values: Option<Vec<String>>,
}

/// An object's properties and which of them are required or nullable.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ObjectSchema {
    #[serde(default)]
    pub properties: indexmap::IndexMap<String, Field>,
    #[serde(default)]
    pub required: Vec<String>,
    #[serde(default)]
    pub nullable: Vec<String>,
}

/// A query, procedure or subscription: parameters and I/O kept for the API layer.
#[derive(Debug, Clone, Deserialize)]
pub struct Method {
    pub parameters: Option<Box<Field>>,
    pub input: Option<Value>,
    pub output: Option<Value>,
    pub message: Option<Value>,
}

impl Field {
    /// The lexicon `type` name of this field.
    pub fn type_name(&self) -> &'static str {
        match self {
            Field::Null => "null",
            Field::Boolean { .. } => "boolean",
            Field::Integer { .. } => "integer",
            Field::String(_) => "string",
            Field::Bytes { .. } => "bytes",
            Field::CidLink => "cid-link",
            Field::Blob { .. } => "blob",
            Field::Array { .. } => "array",
            Field::Object(_) => "object",
            Field::Params(_) => "params",
            Field::Ref { .. } => "ref",
            Field::Union { .. } => "union",
            Field::Unknown => "unknown",
            Field::Token => "token",
            Field::Record { .. } => "record",
            Field::Query(_) => "query",
            Field::Procedure(_) => "procedure",
            Field::Subscription(_) => "subscription",
            Field::PermissionSet {} => "permission-set",
        }
    }

    /// Primary types may only be the `main` def of a document.
    pub fn is_primary(&self) -> bool {
        matches!(
            self,
            Field::Record { .. }
                | Field::Query(_)
                | Field::Procedure(_)
                | Field::Subscription(_)
                | Field::PermissionSet {}
        )
    }
}

fn known_format<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::syntax::Format>, D::Error> {
    let name = Option::<String>::deserialize(d)?;
    Ok(name.as_deref().and_then(crate::syntax::Format::from_name))
}
