//! DAG-CBOR straight to the atproto data model's JSON form, in one pass.
//!
//! `serde_ipld_dagcbor` surfaces a CID (tag 42) as a newtype struct whose
//! content is the CID's bytes; bytes become `{"$bytes": base64}` and CIDs
//! `{"$link": "bafy..."}`, exactly as the data model spec writes them in JSON.
//! Going through `ipld_core::Ipld` first would build the tree twice.

use std::fmt;

use base64::Engine;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Decodes one DAG-CBOR object (a record block) into data-model JSON.
pub fn dagcbor_to_json(bytes: &[u8]) -> Result<Value, String> {
    // Bounded first: the visitor below recurses once per level.
    if super::frame::cbor_item_len(bytes) != Some(bytes.len()) {
        return Err(super::CborError::Shape.to_string());
    }
    let mut de = serde_ipld_dagcbor::de::Deserializer::from_slice(bytes);
    let value = DataModel.deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// The most elements reserved ahead from a length the input claims.
const CAPACITY_HINT_MAX: usize = 256;

struct DataModel;

impl<'de> DeserializeSeed<'de> for DataModel {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(DataModelVisitor)
    }
}

struct DataModelVisitor;

/// Reorders every object's keys as DAG-CBOR orders map keys (shorter first,
/// then bytewise), the order [`dagcbor_to_json`] yields them in. A record that
/// arrives as JSON (Jetstream) is stored with the same text as when it
/// arrives as DAG-CBOR.
pub fn canonical_key_order(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
            entries.sort_by(|(a, _), (b, _)| (a.len(), a.as_bytes()).cmp(&(b.len(), b.as_bytes())));
            for (k, mut v) in entries {
                canonical_key_order(&mut v);
                map.insert(k, v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(canonical_key_order),
        _ => {}
    }
}

fn bytes_json(b: &[u8]) -> Value {
    let mut m = Map::with_capacity(1);
    m.insert(
        "$bytes".into(),
        Value::String(base64::engine::general_purpose::STANDARD_NO_PAD.encode(b)),
    );
    Value::Object(m)
}

impl<'de> Visitor<'de> for DataModelVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an atproto data model value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        i64::try_from(v)
            .map(|n| Value::Number(Number::from(n)))
            .map_err(|_| E::custom("integer out of the 64-bit range"))
    }
    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<Value, E> {
        Err(E::custom(
            "floats are not allowed in the atproto data model",
        ))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(bytes_json(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        // Tag 42: the CID's binary form.
        let raw = d.deserialize_bytes(CidBytes)?;
        let mut m = Map::with_capacity(1);
        m.insert("$link".into(), Value::String(raw));
        Ok(Value::Object(m))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // A length from the input is a hint, not a promise: capped, so a
        // header claiming 2^60 elements allocates nothing large.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(CAPACITY_HINT_MAX));
        while let Some(v) = seq.next_element_seed(DataModel)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::with_capacity(map.size_hint().unwrap_or(0).min(CAPACITY_HINT_MAX));
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(DataModel)?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

struct CidBytes;

impl<'de> Visitor<'de> for CidBytes {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("CID bytes")
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<String, E> {
        cid::Cid::try_from(v)
            .map(|c| c.to_string())
            .map_err(|e| E::custom(format!("invalid CID: {e}")))
    }
}
