//! A command's JSON object read in one pass, without a `serde_json::Value` tree: the fields
//! a command may hold are kept by name, their strings borrowed from the payload when they
//! hold no escapes; any other value stays a `Value`. Only `command`'s parser reads this; what
//! a field must hold is its business, not this file's.
//!
//! Read as a `Value` map would read it, so that the parser's answers do not depend on which
//! of the two read the payload (a batch's ops come as `Value`s and are read with
//! `JsonFields::from_map`): a field given twice keeps its last value; a key is compared
//! after its escapes are decoded; the first field left over is the first in byte order;
//! an unknown field's value is still read in full, so invalid JSON anywhere is invalid JSON.
//! One difference, on purpose: serde_json's raw-value key stays a plain key (see `Plain`).

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::fmt;

/// A field a command of some op may hold. Declared in the byte order of the names (see
/// `first_left`), so a field's number is its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    Account,
    Amount,
    Asset,
    Credit,
    Debit,
    Flags,
    Id,
    Metadata,
    Op,
    Ops,
    OverdraftLimit,
    PendingId,
    TimeoutS,
}

const NAMES: [Name; 13] = [
    Name::Account,
    Name::Amount,
    Name::Asset,
    Name::Credit,
    Name::Debit,
    Name::Flags,
    Name::Id,
    Name::Metadata,
    Name::Op,
    Name::Ops,
    Name::OverdraftLimit,
    Name::PendingId,
    Name::TimeoutS,
];

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Name {
    pub fn as_str(self) -> &'static str {
        match self {
            Name::Account => "account",
            Name::Amount => "amount",
            Name::Asset => "asset",
            Name::Credit => "credit",
            Name::Debit => "debit",
            Name::Flags => "flags",
            Name::Id => "id",
            Name::Metadata => "metadata",
            Name::Op => "op",
            Name::Ops => "ops",
            Name::OverdraftLimit => "overdraft_limit",
            Name::PendingId => "pending_id",
            Name::TimeoutS => "timeout_s",
        }
    }

    /// The field a key names, if a command may hold it.
    fn of(key: &str) -> Option<Name> {
        Some(match key {
            "account" => Name::Account,
            "amount" => Name::Amount,
            "asset" => Name::Asset,
            "credit" => Name::Credit,
            "debit" => Name::Debit,
            "flags" => Name::Flags,
            "id" => Name::Id,
            "metadata" => Name::Metadata,
            "op" => Name::Op,
            "ops" => Name::Ops,
            "overdraft_limit" => Name::OverdraftLimit,
            "pending_id" => Name::PendingId,
            "timeout_s" => Name::TimeoutS,
            _ => return None,
        })
    }
}

/// A field's value: a string (borrowed from the payload when it needs no unescaping), or any
/// other JSON value.
#[derive(Debug, PartialEq)]
pub enum Field<'a> {
    Str(Cow<'a, str>),
    Other(Value),
}

/// The fields of one JSON object: those a command may hold, by name, and the first (in byte
/// order) of the names no command has.
#[derive(Debug, Default, PartialEq)]
pub struct JsonFields<'a> {
    known: [Option<Field<'a>>; NAMES.len()],
    unknown: Option<Cow<'a, str>>,
}

/// Reads `payload`: the fields of the object it holds, or None when it holds some other
/// JSON value; errors are serde_json's (the payload is not JSON).
pub fn read(payload: &[u8]) -> Result<Option<JsonFields<'_>>, serde_json::Error> {
    serde_json::from_slice::<Payload>(payload).map(|p| p.0)
}

/// A payload read as a command's JSON: an object's fields, or None for any other value.
struct Payload<'a>(Option<JsonFields<'a>>);

impl<'a> JsonFields<'a> {
    /// The fields of an object already read as a `Value` (a batch's op).
    pub fn from_map(map: Map<String, Value>) -> JsonFields<'static> {
        let mut fields = JsonFields::default();
        for (name, value) in map {
            let value = match value {
                Value::String(s) => Field::Str(Cow::Owned(s)),
                other => Field::Other(other),
            };
            fields.put(Cow::Owned(name), Some(value));
        }
        fields
    }

    /// Keeps `value` under `name`: the last of a repeated field wins, as in a `Value` map.
    /// An unknown name is only remembered if it sorts first (its value is not kept).
    fn put(&mut self, name: Cow<'a, str>, value: Option<Field<'a>>) {
        match Name::of(&name) {
            Some(known) => self.known[known as usize] = value,
            None => {
                if self.unknown.as_deref().is_none_or(|first| *name < *first) {
                    self.unknown = Some(name);
                }
            }
        }
    }

    /// Takes field `name` out.
    pub fn take(&mut self, name: Name) -> Option<Field<'a>> {
        self.known[name as usize].take()
    }

    pub fn get(&self, name: Name) -> Option<&Field<'a>> {
        self.known[name as usize].as_ref()
    }

    pub fn contains(&self, name: Name) -> bool {
        self.get(name).is_some()
    }

    /// The first field not taken, in byte order as a `Value` map lists its keys.
    pub fn first_left(&self) -> Option<&str> {
        let known = NAMES.iter().zip(&self.known).find(|(_, v)| v.is_some()).map(|(name, _)| name.as_str());
        match (known, self.unknown.as_deref()) {
            (Some(k), Some(u)) => Some(if u < k { u } else { k }),
            (k, u) => k.or(u),
        }
    }
}

impl<'de> Deserialize<'de> for Payload<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PayloadVisitor)
    }
}

struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = Payload<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = JsonFields::default();
        while let Some(Key(name)) = map.next_key()? {
            if Name::of(&name).is_some() {
                let value = map.next_value::<Field<'de>>()?;
                fields.put(name, Some(value));
            } else {
                // Read in full, as a `Value` map would: invalid JSON stays invalid JSON.
                map.next_value::<Value>()?;
                fields.put(name, None);
            }
        }
        Ok(Payload(Some(fields)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Value>()?.is_some() {}
        Ok(Payload(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Payload(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Payload(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Payload(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Payload(None))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Payload(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Payload(None))
    }
}

/// An object's key, borrowed when it holds no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(StrVisitor).map(Key)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_string()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s))
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor)
    }
}

/// A string as `Field::Str`; anything else built into the `Value` serde_json would build.
struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(s.to_string())))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(s)))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Field::Other(Value::Bool(b)))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Field::Other(Value::Number(n.into())))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Field::Other(Value::Number(n.into())))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        Ok(Field::Other(Number::from_f64(n).map_or(Value::Null, Value::Number)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Field::Other(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Plain(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Field::Other(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = Map::new();
        while let Some((key, Plain(value))) = map.next_entry::<String, Plain>()? {
            object.insert(key, value);
        }
        Ok(Field::Other(Value::Object(object)))
    }
}

/// A value inside a field, built as written. Not `Value`'s own deserializer: with
/// serde_json's `raw_value` feature on (a dependency turns it on), that one replaces an
/// object whose first key is `RAW_VALUE_KEY` by the JSON in its string, so what a device
/// sent would not be what the journal keeps. Built plainly, such a key stays a key, and
/// the parser refuses it (`command::Fields::movement`).
struct Plain(Value);

impl<'de> Deserialize<'de> for Plain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Plain(match deserializer.deserialize_any(FieldVisitor)? {
            Field::Str(s) => Value::String(s.into_owned()),
            Field::Other(value) => value,
        }))
    }
}

/// Reads JSON the node wrote (a journaled command's metadata) back as written (see `Plain`).
pub fn read_plain(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Plain>(bytes).map(|plain| plain.0)
}

/// The key serde_json reserves for its raw values: an object holding it, written to the
/// journal, cannot be read back as a `Value` (`entry_codec` reads metadata that way).
pub const RAW_VALUE_KEY: &str = "$serde_json::private::RawValue";

/// Whether `value` holds `RAW_VALUE_KEY` as a key at any depth.
pub fn holds_raw_value_key(value: &Value) -> bool {
    match value {
        Value::Object(fields) => fields.iter().any(|(key, value)| key == RAW_VALUE_KEY || holds_raw_value_key(value)),
        Value::Array(items) => items.iter().any(holds_raw_value_key),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(json: &str) -> JsonFields<'_> {
        read(json.as_bytes()).expect("JSON").unwrap_or_else(|| panic!("{json} is an object"))
    }

    #[test]
    fn names_are_in_byte_order() {
        for (slot, name) in NAMES.iter().enumerate() {
            assert_eq!(*name as usize, slot, "{name:?}");
            assert_eq!(Name::of(name.as_str()), Some(*name));
        }
        assert!(NAMES.windows(2).all(|w| w[0].as_str() < w[1].as_str()), "first_left needs it");
        assert_eq!(Name::of("Id"), None);
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let mut fields = object(r#"{"id":"t1","debit":"a\"b","amount":"1.50"}"#);
        assert!(matches!(fields.take(Name::Id), Some(Field::Str(Cow::Borrowed("t1")))));
        assert!(matches!(fields.take(Name::Debit), Some(Field::Str(Cow::Owned(s))) if s == "a\"b"));
        assert!(matches!(fields.get(Name::Amount), Some(Field::Str(_))));
    }

    #[test]
    fn reads_as_a_value_map_does() {
        // The last of a repeated field wins; escaped keys are decoded before they are named.
        let mut fields = object(r#"{"id":"1","\u0069d":"2","amount":4.5,"metadata":{"a":[1,null,true]},"flags":null}"#);
        assert_eq!(fields.take(Name::Id), Some(Field::Str(Cow::Borrowed("2"))));
        assert_eq!(fields.take(Name::Amount), Some(Field::Other(serde_json::json!(4.5))));
        assert_eq!(fields.take(Name::Metadata), Some(Field::Other(serde_json::json!({"a": [1, null, true]}))));
        assert_eq!(fields.take(Name::Flags), Some(Field::Other(Value::Null)));
        assert_eq!(fields.first_left(), None);
        // The first field left is the first in byte order, known or not.
        assert_eq!(object(r#"{"zz":1,"op":"x","b":2,"Z":3}"#).first_left(), Some("Z"));
        assert_eq!(object(r#"{"zz":1,"op":"x"}"#).first_left(), Some("op"));
        let from_map = JsonFields::from_map(serde_json::from_str(r#"{"id":"1","\u0069d":"2","zz":[]}"#).unwrap());
        assert_eq!(from_map.get(Name::Id), Some(&Field::Str(Cow::Owned("2".to_string()))));
        assert_eq!(from_map.first_left(), Some("id"));
    }

    #[test]
    fn anything_but_an_object_is_told_apart_from_invalid_json() {
        for json in ["[1,{}]", "\"x\"", "5", "-1", "1.5", "true", "null"] {
            assert!(matches!(read(json.as_bytes()), Ok(None)), "{json}");
        }
        // Invalid anywhere, an unknown field's value and trailing bytes included.
        for json in [&b"{"[..], b"[1,", b"{\"x\":[1,}", b"{\"x\":\"\xff\"}", b"{\"id\":\"1\"} x", b"{\"id\":\"\xff\"}"] {
            assert!(read(json).is_err(), "{}", String::from_utf8_lossy(json));
        }
    }
}
