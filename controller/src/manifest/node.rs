//! The untyped pass: a YAML document as a tree of values with positions,
//! read before the typed one to learn `apiVersion`/`kind` and to name the
//! field an error points at.

use super::raw::{At, S};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// Any YAML node with positions: used to read `kind` before choosing a type,
/// and to name the field a parse error points at.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub at: At,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Map(Vec<(S<String>, Node)>),
    Seq(Vec<Node>),
    Str(String),
    Int(i128),
    Float(f64),
    Bool(bool),
    Null,
}

impl Node {
    pub fn get(&self, key: &str) -> Option<(&S<String>, &Node)> {
        match &self.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .rev()
                .find(|(k, _)| k.value == key)
                .map(|(k, v)| (k, v)),
            _ => None,
        }
    }
    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The node at a JSON-pointer-like path of keys and indices.
    pub fn lookup<'a>(&self, path: impl IntoIterator<Item = &'a str>) -> Option<&Node> {
        let mut node = self;
        for seg in path {
            node = match &node.kind {
                NodeKind::Map(_) => node.get(seg)?.1,
                NodeKind::Seq(items) => items.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// The value as JSON, for checking against the schema.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            NodeKind::Map(entries) => {
                let mut m = serde_json::Map::new();
                for (k, v) in entries {
                    m.insert(k.value.clone(), v.to_json());
                }
                Value::Object(m)
            }
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Str(s) => Value::String(s.clone()),
            NodeKind::Int(i) => i64::try_from(*i)
                .map(Value::from)
                .or_else(|_| u64::try_from(*i).map(Value::from))
                .unwrap_or_else(|_| Value::String(i.to_string())),
            NodeKind::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Null => Value::Null,
        }
    }

    /// The field path (`spec.ports[1]`) of the last node that starts at or before `at`.
    pub fn path_at(&self, at: At) -> String {
        let mut path = String::new();
        let mut node = self;
        loop {
            match &node.kind {
                NodeKind::Map(entries) => {
                    let Some((k, v)) = entries
                        .iter()
                        .filter(|(k, _)| k.at <= at)
                        .max_by_key(|(k, _)| k.at)
                    else {
                        return path;
                    };
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(&k.value);
                    node = v;
                }
                NodeKind::Seq(items) => {
                    let Some((i, v)) = items
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| v.at <= at)
                        .max_by_key(|(_, v)| v.at)
                    else {
                        return path;
                    };
                    path.push_str(&format!("[{i}]"));
                    node = v;
                }
                _ => return path,
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<NodeKind>::deserialize(d)?;
        Ok(Node {
            at: At::from(s.referenced),
            kind: s.value,
        })
    }
}

impl<'de> Deserialize<'de> for NodeKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NodeKind;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeKind, E> {
                Ok(NodeKind::Str(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<NodeKind, E> {
                Ok(NodeKind::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NodeKind, E> {
                Ok(NodeKind::Int(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NodeKind, E> {
                Ok(NodeKind::Int(v.into()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<NodeKind, E> {
                Ok(NodeKind::Int(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<NodeKind, E> {
                Ok(i128::try_from(v).map_or_else(|_| NodeKind::Str(v.to_string()), NodeKind::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NodeKind, E> {
                Ok(NodeKind::Float(v))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<NodeKind, E> {
                Ok(NodeKind::Str(String::from_utf8_lossy(v).into_owned()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<NodeKind, E> {
                Ok(NodeKind::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<NodeKind, E> {
                Ok(NodeKind::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<NodeKind, D2::Error> {
                NodeKind::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<NodeKind, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(NodeKind::Seq(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<NodeKind, A::Error> {
                let mut v = Vec::new();
                while let Some(k) = a.next_key::<S<KeyText>>()? {
                    let x: Node = a.next_value()?;
                    v.push((
                        S {
                            value: k.value.0,
                            at: k.at,
                        },
                        x,
                    ));
                }
                Ok(NodeKind::Map(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// A mapping key of any scalar type, as text.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = NodeKind::deserialize(d)?;
        Ok(KeyText(match n {
            NodeKind::Str(s) => s,
            NodeKind::Int(i) => i.to_string(),
            NodeKind::Float(f) => f.to_string(),
            NodeKind::Bool(b) => b.to_string(),
            NodeKind::Null => "~".into(),
            _ => "<complex key>".into(),
        }))
    }
}
