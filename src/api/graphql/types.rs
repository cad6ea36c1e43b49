//! GraphQL output types for the values nested inside records, generated from
//! their lexicons: objects (inline or by ref) become object types named from
//! their def (`ComAtprotoRepoStrongRef`, `AppBskyFeedPostReplyRef`), arrays
//! become lists, unions become GraphQL unions resolved by `$type`, blobs a
//! `Blob` type; bytes, cid-links and `unknown` stay the `JSON` scalar.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_graphql::dynamic::{Field as GqlField, FieldFuture, FieldValue, Object, TypeRef, Union};
use serde_json::Value;

use crate::lexicon::{Catalog, Field, ObjectSchema};

/// The records a page's records link to, by AT-URI, for forward joins.
pub use crate::api::rows::Targets;

/// A nested value and the page's join targets.
pub struct Node {
    pub value: Value,
    pub targets: Arc<Targets>,
}

/// How a JSON value becomes a GraphQL value.
#[derive(Debug)]
pub enum Shape {
    /// A string, integer or boolean, as is.
    Scalar,
    /// Any value, as the `JSON` scalar.
    Json,
    /// An object type (including `Blob`); its fields read the object.
    Object,
    List(Box<Shape>),
    /// `$type` (with and without `#main`) -> GraphQL member type name.
    Union(HashMap<String, String>),
}

impl Shape {
    /// The GraphQL value of `v`, or None where the value does not fit (an
    /// open union's member this server has no lexicon for).
    pub fn value(&self, v: &Value, targets: &Arc<Targets>) -> Option<FieldValue<'static>> {
        if v.is_null() {
            return None;
        }
        let node = || Node {
            value: v.clone(),
            targets: targets.clone(),
        };
        match self {
            Shape::Scalar | Shape::Json => Some(FieldValue::value(
                async_graphql::Value::from_json(v.clone()).unwrap_or(async_graphql::Value::Null),
            )),
            Shape::Object => v.is_object().then(|| FieldValue::owned_any(node())),
            Shape::List(inner) => Some(FieldValue::list(
                v.as_array()?.iter().filter_map(|x| inner.value(x, targets)),
            )),
            Shape::Union(members) => {
                let t = v.get("$type")?.as_str()?;
                let name = members.get(t)?;
                Some(FieldValue::owned_any(node()).with_type(name.clone()))
            }
        }
    }
}

/// Collects the object and union types that record fields need.
pub struct Nested<'a> {
    catalog: &'a Catalog,
    /// Names already used (record types, registered or in-progress types).
    taken: HashSet<String>,
    /// The record types' GraphQL names (members of `AnyRecord`).
    taken_names: Vec<String>,
    /// The record collections.
    collections: HashSet<String>,
    pub objects: Vec<Object>,
    pub unions: Vec<Union>,
    /// Def id -> object type name, for defs already built.
    built: HashMap<String, String>,
}

/// `app.bsky.feed.post#replyRef` -> `AppBskyFeedPostReplyRef`.
fn def_type_name(id: &str) -> String {
    let (nsid, name) = id.split_once('#').unwrap_or((id, "main"));
    let mut out = super::type_name(nsid);
    if name != "main" {
        let mut chars = name.chars();
        if let Some(c) = chars.next() {
            out.push(c.to_ascii_uppercase());
            out.extend(chars.filter(|c| c.is_ascii_alphanumeric() || *c == '_'));
        }
    }
    out
}

impl<'a> Nested<'a> {
    pub fn new(catalog: &'a Catalog, record_types: impl IntoIterator<Item = String>) -> Self {
        let taken_names: Vec<String> = record_types.into_iter().collect();
        Nested {
            catalog,
            taken: taken_names.iter().cloned().collect(),
            collections: catalog.records().map(|r| r.nsid.clone()).collect(),
            taken_names,
            objects: Vec::new(),
            unions: Vec::new(),
            built: HashMap::new(),
        }
    }

    fn fresh_name(&mut self, base: String) -> String {
        let mut name = base.clone();
        let mut n = 2;
        while self.taken.contains(&name) {
            name = format!("{base}{n}");
            n += 1;
        }
        self.taken.insert(name.clone());
        name
    }

    /// The GraphQL type (always nullable) and shape of `field`; `hint` names
    /// an inline object or union.
    pub fn output(&mut self, field: &Field, hint: &str) -> (TypeRef, Shape) {
        match field {
            Field::String(_) | Field::Token => (TypeRef::named(TypeRef::STRING), Shape::Scalar),
            Field::Integer { .. } => (TypeRef::named(TypeRef::INT), Shape::Scalar),
            Field::Boolean { .. } => (TypeRef::named(TypeRef::BOOLEAN), Shape::Scalar),
            Field::Blob { .. } => {
                self.blob();
                (TypeRef::named("Blob"), Shape::Object)
            }
            Field::Array { items, .. } => {
                let (inner, shape) = self.output(items, hint);
                (TypeRef::List(Box::new(inner)), Shape::List(Box::new(shape)))
            }
            Field::Object(o) => {
                let name = self.fresh_name(hint.to_string());
                self.object(&name, o);
                (TypeRef::named(name), Shape::Object)
            }
            Field::Ref { target } => match self.catalog.def(target) {
                Some(Field::Object(o)) => {
                    let name = self.def_object(target, o);
                    (TypeRef::named(name), Shape::Object)
                }
                Some(Field::Record { .. }) | None => (TypeRef::named("JSON"), Shape::Json),
                Some(other) => {
                    let other = other.clone();
                    self.output(&other, hint)
                }
            },
            Field::Union { refs, .. } => self.union(refs, hint),
            _ => (TypeRef::named("JSON"), Shape::Json),
        }
    }

    fn blob(&mut self) {
        if !self.taken.insert("Blob".into()) {
            return;
        }
        let get = |name: &'static str, ty: &'static str, f: fn(&Value) -> Option<Value>| {
            GqlField::new(name, TypeRef::named(ty), move |ctx| {
                FieldFuture::new(async move {
                    let n = ctx.parent_value.try_downcast_ref::<Node>()?;
                    Ok(f(&n.value).and_then(|x| Shape::Scalar.value(&x, &n.targets)))
                })
            })
        };
        self.objects.push(
            Object::new("Blob")
                .description("A blob: its CID, MIME type and size in bytes.")
                .field(get("ref", TypeRef::STRING, |v| {
                    v.pointer("/ref/$link").cloned()
                }))
                .field(get("mimeType", TypeRef::STRING, |v| {
                    v.get("mimeType").cloned()
                }))
                .field(get("size", TypeRef::INT, |v| v.get("size").cloned())),
        );
    }

    /// The object type of a def, built once.
    fn def_object(&mut self, id: &str, o: &ObjectSchema) -> String {
        if let Some(name) = self.built.get(id) {
            return name.clone();
        }
        let name = self.fresh_name(def_type_name(id));
        self.built.insert(id.to_string(), name.clone());
        self.object(&name, o);
        name
    }

    fn object(&mut self, name: &str, o: &ObjectSchema) {
        let mut obj = Object::new(name);
        let mut any = false;
        for (prop, field) in &o.properties {
            let Some(gname) = super::gql_name(prop) else {
                continue;
            };
            let (ty, shape) = self.output(field, &format!("{name}{}", upper_first(&gname)));
            let (key, shape) = (prop.clone(), Arc::new(shape));
            obj = obj.field(GqlField::new(gname, ty, move |ctx| {
                let (key, shape) = (key.clone(), shape.clone());
                FieldFuture::new(async move {
                    let n = ctx.parent_value.try_downcast_ref::<Node>()?;
                    Ok(n.value.get(&key).and_then(|x| shape.value(x, &n.targets)))
                })
            }));
            any = true;
        }
        let links_by_uri = matches!(
            o.properties.get("uri"),
            Some(Field::String(s)) if s.format == Some(crate::syntax::Format::AtUri)
        );
        if links_by_uri && !o.properties.contains_key("target") && !self.taken_names.is_empty() {
            let records: Arc<HashSet<String>> = Arc::new(self.collections.clone());
            obj = obj.field(
                GqlField::new("target", TypeRef::named("AnyRecord"), move |ctx| {
                    let records = records.clone();
                    FieldFuture::new(async move {
                        let n = ctx.parent_value.try_downcast_ref::<Node>()?;
                        let Some(uri) = n.value.get("uri").and_then(Value::as_str) else {
                            return Ok(None);
                        };
                        // The page's prefetched targets first; deeper
                        // levels (and targets not indexed) through the
                        // batched loader.
                        let row = match n.targets.get(uri) {
                            Some(row) => row.clone(),
                            None => {
                                let loader = ctx.data::<async_graphql::dataloader::DataLoader<
                                    super::TargetRows,
                                >>()?;
                                match loader.load_one(uri.to_string()).await? {
                                    Some(row) => row,
                                    None => return Ok(None),
                                }
                            }
                        };
                        let collection = row.uri.split('/').nth(3).unwrap_or_default();
                        if !records.contains(collection) {
                            return Ok(None);
                        }
                        let type_name = super::type_name(collection);
                        Ok(Some(FieldValue::owned_any(row).with_type(type_name)))
                    })
                })
                .description(
                    "The record `uri` points at, when it is indexed here (any depth: one batched lookup per level).",
                ),
            );
        }
        if !any {
            // GraphQL objects need a field; an empty lexicon object gets its `$type`.
            obj = obj.field(GqlField::new(
                "_type",
                TypeRef::named(TypeRef::STRING),
                |ctx| {
                    FieldFuture::new(async move {
                        let n = ctx.parent_value.try_downcast_ref::<Node>()?;
                        Ok(n.value
                            .get("$type")
                            .and_then(|x| Shape::Scalar.value(x, &n.targets)))
                    })
                },
            ));
        }
        self.objects.push(obj);
    }

    fn union(&mut self, refs: &[String], hint: &str) -> (TypeRef, Shape) {
        let mut members = HashMap::new();
        let mut names = Vec::new();
        for r in refs {
            let Some(Field::Object(o)) = self.catalog.def(r) else {
                // A member that is not an object (or not loaded) cannot be a
                // GraphQL union member: keep the whole value as JSON.
                return (TypeRef::named("JSON"), Shape::Json);
            };
            let name = self.def_object(r, o);
            let t = r.strip_suffix("#main").unwrap_or(r);
            members.insert(t.to_string(), name.clone());
            members.insert(format!("{t}#main"), name.clone());
            if !names.contains(&name) {
                names.push(name);
            }
        }
        if names.is_empty() {
            return (TypeRef::named("JSON"), Shape::Json);
        }
        let union_name = self.fresh_name(format!("{hint}Union"));
        let mut u = Union::new(&union_name);
        for n in &names {
            u = u.possible_type(n);
        }
        self.unions.push(u);
        (TypeRef::named(union_name), Shape::Union(members))
    }
}

impl Nested<'_> {
    /// `AnyRecord`: the union of every record type, for forward joins.
    pub fn any_record(&self) -> Option<Union> {
        if self.taken_names.is_empty() {
            return None;
        }
        let mut u = Union::new("AnyRecord").description("Any record type this server indexes.");
        for n in &self.taken_names {
            u = u.possible_type(n);
        }
        Some(u)
    }
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}
