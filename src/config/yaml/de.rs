//! serde over the tree, reporting every error in the file rather than the first.
//!
//! A derived `Deserialize` stops at its first error, so [`from_tree`] deserializes again after
//! each one, with the node at fault left out: an unknown field or a bad value drops its mapping
//! entry, a bad sequence item drops the item, and the next pass goes on to the next error. An
//! error that leaving a node out causes (the `missing field` of a field that was dropped, a
//! one-key mapping left with none) is not reported; its node is left out in turn. Each pass
//! leaves out one more node, so a file with N errors takes N + 1 passes or a few more;
//! [`from_items`] reads a sequence (the keys file) an item at a time, so that a pass re-reads
//! one item, not the file.
//!
//! Scalars are typed as serde_norway (the YAML 1.2 core schema) types them, so that a file
//! means what it meant before: `true`, `12`, `0x1F`, `1.5`, `~` are a boolean, integers, a
//! float and null when written plain; quoted, they are strings; asked for a string, any scalar
//! is its text. An empty value (`admin:`) is also an empty mapping or sequence.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Unexpected, Visitor};

use super::{Kind, Located, Node, Scalar, Tag};

/// Deserializes a `T` from `root`, with every error found on the way. The value is `Some`
/// when a pass got through, with the nodes at fault left out, and complete only when there
/// are no errors.
pub fn from_tree<T: DeserializeOwned>(root: &Node) -> (Option<T>, Vec<Located>) {
    recover(root, Path::Root)
}

/// As [`from_tree`] for a sequence of `T`, one item at a time: a pass after an error reads
/// that item again, not the whole file, so a keys file with an error in each of its thousands
/// of entries is still read in time linear in its size.
pub fn from_items<T: DeserializeOwned>(root: &Node) -> (Option<Vec<T>>, Vec<Located>) {
    let Kind::Seq(items) = &root.kind else {
        return from_tree(root);
    };
    let mut values = Vec::with_capacity(items.len());
    let mut complete = true;
    let mut errors = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let (value, found) = recover(item, Path::Index(&Path::Root, index));
        errors.extend(found);
        match value {
            Some(value) => values.push(value),
            None => complete = false,
        }
    }
    (complete.then_some(values), errors)
}

fn recover<T: DeserializeOwned>(root: &Node, path: Path<'_>) -> (Option<T>, Vec<Located>) {
    // A subtree's ids are consecutive from its root's (aliases' copies included, as they are
    // numbered where they are used): nodes are indexed from there.
    let mut nodes = Vec::new();
    index(root, root.id, &mut nodes);
    let mut left_out = vec![false; nodes.len()];
    let mut errors: Vec<Located> = Vec::new();
    loop {
        let gone = LeftOut {
            first: root.id,
            flags: &left_out,
        };
        let de = De {
            node: root,
            path,
            left_out: gone,
        };
        let mut error = match T::deserialize(de) {
            Ok(value) => return (Some(value), errors),
            Err(error) => error,
        };
        let placed = error.placed.take().unwrap_or(Placed {
            id: root.id,
            path: path.to_string(),
        });
        let node = nodes[placed.id - root.id];
        // An error inside an anchored node shows again in every alias's copy, at the same place.
        let again = (errors.iter()).any(|e| e.at == node.at && e.message.ends_with(&error.message));
        if !again && !caused_by_leaving_out(node, error.missing_field, gone) {
            let message = if placed.path.is_empty() {
                error.message
            } else {
                format!("{}: {}", placed.path, error.message)
            };
            errors.push(Located {
                at: node.at,
                message,
            });
        }
        let at = placed.id - root.id;
        if at == 0 || left_out[at] {
            return (None, errors);
        }
        left_out[at] = true;
    }
}

/// The nodes of a subtree by id, from `first`.
fn index<'a>(node: &'a Node, first: usize, nodes: &mut Vec<&'a Node>) {
    let at = node.id - first;
    if nodes.len() <= at {
        nodes.resize(at + 1, node);
    }
    nodes[at] = node;
    match &node.kind {
        Kind::Scalar(_) => {}
        Kind::Seq(items) => items.iter().for_each(|n| index(n, first, nodes)),
        Kind::Map(entries) => {
            for (key, value) in entries {
                index(key, first, nodes);
                index(value, first, nodes);
            }
        }
    }
}

/// Whether an error at `node` comes from a node left out of it: a missing field that was
/// there but bad, or any other error of a collection that lost a member.
fn caused_by_leaving_out(node: &Node, missing: Option<&str>, left_out: LeftOut<'_>) -> bool {
    let gone = |n: &Node| left_out.has(n);
    match (&node.kind, missing) {
        (Kind::Map(entries), Some(field)) => entries
            .iter()
            .any(|(k, v)| (gone(k) || gone(v)) && k.text() == Some(field)),
        (Kind::Map(entries), None) => entries.iter().any(|(k, v)| gone(k) || gone(v)),
        (Kind::Seq(items), None) => items.iter().any(gone),
        _ => false,
    }
}

/// The nodes left out of the next pass, for a subtree whose ids start at `first`.
#[derive(Clone, Copy)]
struct LeftOut<'a> {
    first: usize,
    flags: &'a [bool],
}

impl LeftOut<'_> {
    fn has(&self, node: &Node) -> bool {
        self.flags[node.id - self.first]
    }
}

/// A deserialization error, placed at the innermost node that saw it.
#[derive(Debug)]
pub struct Error {
    message: String,
    /// `Some(field)` for serde's `missing field`.
    missing_field: Option<&'static str>,
    placed: Option<Placed>,
}

#[derive(Debug)]
struct Placed {
    id: usize,
    path: String,
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Error {
            message: message.to_string(),
            missing_field: None,
            placed: None,
        }
    }

    fn missing_field(field: &'static str) -> Self {
        Error {
            missing_field: Some(field),
            ..Error::custom(format_args!("missing field `{field}`"))
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The config path of a node, kept as links to its parent's while deserializing and written
/// out only for an error.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Index(&'a Path<'a>, usize),
    Key(&'a Path<'a>, &'a str),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Index(parent, index) => write!(f, "{parent}[{index}]"),
            Path::Key(Path::Root, key) => f.write_str(key),
            Path::Key(parent, key) => write!(f, "{parent}.{key}"),
        }
    }
}

/// A node being deserialized.
#[derive(Clone, Copy)]
struct De<'a> {
    node: &'a Node,
    path: Path<'a>,
    left_out: LeftOut<'a>,
}

impl<'a> De<'a> {
    /// Places an error here unless a node inside placed it already.
    fn place(self, mut error: Error) -> Error {
        error.placed.get_or_insert_with(|| Placed {
            id: self.node.id,
            path: self.path.to_string(),
        });
        error
    }

    fn child<'b>(&self, node: &'b Node, path: Path<'b>) -> De<'b>
    where
        'a: 'b,
    {
        De {
            node,
            path,
            left_out: self.left_out,
        }
    }

    /// An empty plain value (`admin:`), which is also an empty mapping or sequence.
    fn is_empty(&self) -> bool {
        matches!(&self.node.kind, Kind::Scalar(s) if s.text.is_empty() && s.plain && s.tag.is_none())
    }

    fn any<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            Kind::Scalar(scalar) => match resolve(scalar)? {
                Typed::Null => visitor.visit_unit(),
                Typed::Bool(v) => visitor.visit_bool(v),
                Typed::U64(v) => visitor.visit_u64(v),
                Typed::I64(v) => visitor.visit_i64(v),
                Typed::U128(v) => visitor.visit_u128(v),
                Typed::I128(v) => visitor.visit_i128(v),
                Typed::F64(v) => visitor.visit_f64(v),
                Typed::Str(v) => visitor.visit_str(v),
            },
            Kind::Seq(items) => visitor.visit_seq(Items {
                items: items.iter().enumerate(),
                de: self,
            }),
            Kind::Map(entries) => visitor.visit_map(Entries {
                entries: entries.iter(),
                value: None,
                de: self,
            }),
        }
    }

    fn seq<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.is_empty() {
            return visitor.visit_seq(Items {
                items: [].iter().enumerate(),
                de: self,
            });
        }
        self.any(visitor)
    }

    fn map<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            _ if self.is_empty() => visitor.visit_map(Entries {
                entries: [].iter(),
                value: None,
                de: self,
            }),
            // A derived struct would take its fields from a sequence, in order.
            Kind::Seq(_) => Err(de::Error::invalid_type(Unexpected::Seq, &visitor)),
            _ => self.any(visitor),
        }
    }

    fn str<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            Kind::Scalar(scalar) => visitor.visit_str(&scalar.text),
            _ => self.any(visitor),
        }
    }

    fn option<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            Kind::Scalar(scalar) if matches!(resolve(scalar)?, Typed::Null) => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    /// `variant` or, for a variant with a value, `{ variant: value }`.
    fn variant<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            Kind::Scalar(_) => visitor.visit_enum(Variant {
                name: self,
                value: None,
            }),
            Kind::Map(entries) => {
                let mut present = entries
                    .iter()
                    .filter(|(k, v)| !self.left_out.has(k) && !self.left_out.has(v));
                match (present.next(), present.next()) {
                    (Some((key, value)), None) => visitor.visit_enum(Variant {
                        name: self.child(key, self.path),
                        value: Some((self, key, value)),
                    }),
                    _ => Err(de::Error::invalid_value(
                        Unexpected::Map,
                        &"map with a single key",
                    )),
                }
            }
            Kind::Seq(_) => Err(de::Error::invalid_type(Unexpected::Seq, &visitor)),
        }
    }
}

macro_rules! forward {
    ($($method:ident => $to:ident,)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.$to(visitor).map_err(|e| self.place(e))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for De<'_> {
    type Error = Error;

    forward! {
        deserialize_any => any,
        deserialize_bool => any,
        deserialize_i8 => any,
        deserialize_i16 => any,
        deserialize_i32 => any,
        deserialize_i64 => any,
        deserialize_i128 => any,
        deserialize_u8 => any,
        deserialize_u16 => any,
        deserialize_u32 => any,
        deserialize_u64 => any,
        deserialize_u128 => any,
        deserialize_f32 => any,
        deserialize_f64 => any,
        deserialize_char => any,
        deserialize_bytes => any,
        deserialize_byte_buf => any,
        deserialize_unit => any,
        deserialize_str => str,
        deserialize_string => str,
        deserialize_identifier => str,
        deserialize_option => option,
        deserialize_seq => seq,
        deserialize_map => map,
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor
            .visit_newtype_struct(self)
            .map_err(|e| self.place(e))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.variant(visitor).map_err(|e| self.place(e))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

/// A sequence's items, those left out skipped; the path keeps each item's index in the file.
struct Items<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    de: De<'a>,
}

impl<'de> de::SeqAccess<'de> for Items<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some((index, item)) = self.items.find(|(_, n)| !self.de.left_out.has(n)) else {
            return Ok(None);
        };
        let item = self.de.child(item, Path::Index(&self.de.path, index));
        seed.deserialize(item).map(Some).map_err(|e| item.place(e))
    }
}

/// A mapping's entries, those left out skipped.
struct Entries<'a> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    value: Option<&'a (Node, Node)>,
    de: De<'a>,
}

impl<'de> de::MapAccess<'de> for Entries<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let left_out = self.de.left_out;
        let Some(entry) = self
            .entries
            .find(|(k, v)| !left_out.has(k) && !left_out.has(v))
        else {
            return Ok(None);
        };
        self.value = Some(entry);
        // A key's error (an unknown field) is the mapping's, at the key.
        let key = self.de.child(&entry.0, self.de.path);
        seed.deserialize(key).map(Some).map_err(|e| key.place(e))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((key, value)) = self.value.take() else {
            return Err(de::Error::custom("a value asked for before its key"));
        };
        let value = self
            .de
            .child(value, Path::Key(&self.de.path, key.text().unwrap_or("?")));
        seed.deserialize(value).map_err(|e| value.place(e))
    }
}

/// An enum: its variant's name, and the mapping entry `{ name: value }` when written so.
struct Variant<'a> {
    name: De<'a>,
    value: Option<(De<'a>, &'a Node, &'a Node)>,
}

impl Variant<'_> {
    /// The value of a variant that has one (`expected` names which kind).
    fn value<T>(
        self,
        expected: &str,
        read: impl FnOnce(De<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let Some((map, key, value)) = self.value else {
            return Err(de::Error::invalid_type(Unexpected::UnitVariant, &expected));
        };
        let value = map.child(value, Path::Key(&map.path, key.text().unwrap_or("?")));
        read(value).map_err(|e| value.place(e))
    }
}

impl<'de> de::EnumAccess<'de> for Variant<'_> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let name = self.name;
        let variant = seed.deserialize(name).map_err(|e| name.place(e))?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.value {
            None => Ok(()),
            Some(_) => Err(de::Error::invalid_type(Unexpected::Map, &"unit variant")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        self.value("newtype variant", |value| seed.deserialize(value))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Error> {
        self.value("tuple variant", |value| {
            de::Deserializer::deserialize_seq(value, visitor)
        })
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.value("struct variant", |value| {
            de::Deserializer::deserialize_map(value, visitor)
        })
    }
}

// === scalars ===

/// A scalar's value under the YAML 1.2 core schema.
#[derive(Debug, PartialEq)]
enum Typed<'a> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    U128(u128),
    I128(i128),
    F64(f64),
    Str(&'a str),
}

/// Types a scalar: by its core-schema tag, else plain scalars by their text, else a string.
fn resolve(scalar: &Scalar) -> Result<Typed<'_>, Error> {
    let text = scalar.text.as_str();
    let invalid =
        |expected: &str| -> Error { de::Error::invalid_value(Unexpected::Str(text), &expected) };
    match scalar.tag {
        Some(Tag::Str) => Ok(Typed::Str(text)),
        Some(Tag::Bool) => boolean(text)
            .map(Typed::Bool)
            .ok_or_else(|| invalid("a boolean")),
        Some(Tag::Int) => integer(text).ok_or_else(|| invalid("an integer")),
        Some(Tag::Float) => float(text)
            .map(Typed::F64)
            .ok_or_else(|| invalid("a float")),
        Some(Tag::Null) if text.is_empty() || null(text) => Ok(Typed::Null),
        Some(Tag::Null) => Err(invalid("null")),
        None if scalar.plain => Ok(plain(text)),
        None => Ok(Typed::Str(text)),
    }
}

fn plain(text: &str) -> Typed<'_> {
    if text.is_empty() || null(text) {
        return Typed::Null;
    }
    if let Some(v) = boolean(text) {
        return Typed::Bool(v);
    }
    if let Some(v) = integer(text) {
        return v;
    }
    if !leading_zero(text) {
        if let Some(v) = float(text) {
            return Typed::F64(v);
        }
    }
    Typed::Str(text)
}

fn null(text: &str) -> bool {
    matches!(text, "~" | "null" | "Null" | "NULL")
}

fn boolean(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// `12`, `-3`, `+4`, `0x1F`, `0o17`, `0b101`; not `012` (a string, in YAML 1.2) nor `1_000`.
fn integer(text: &str) -> Option<Typed<'_>> {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(digits) = unsigned.strip_prefix("0x") {
        (16, digits)
    } else if let Some(digits) = unsigned.strip_prefix("0o") {
        (8, digits)
    } else if let Some(digits) = unsigned.strip_prefix("0b") {
        (2, digits)
    } else if leading_zero(text) {
        return None;
    } else {
        (10, unsigned)
    };
    // `from_str_radix` takes a sign of its own.
    if digits.starts_with(['+', '-']) {
        return None;
    }
    let magnitude = u128::from_str_radix(digits, radix).ok()?;
    Some(if negative {
        let value = 0i128.checked_sub_unsigned(magnitude)?;
        match i64::try_from(value) {
            Ok(value) => Typed::I64(value),
            Err(_) => Typed::I128(value),
        }
    } else {
        match u64::try_from(magnitude) {
            Ok(value) => Typed::U64(value),
            Err(_) => Typed::U128(magnitude),
        }
    })
}

/// Digits with a leading zero: a string in YAML 1.2, not an octal number.
fn leading_zero(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    digits.len() > 1 && digits.starts_with('0') && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `1.5`, `1e3`, `.inf`, `-.Inf`, `.nan`; not `inf` or `nan`, which are strings.
fn float(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    if unsigned.starts_with(['+', '-']) && unsigned.len() < text.len() {
        return None;
    }
    match unsigned {
        ".inf" | ".Inf" | ".INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    unsigned.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// A tree's text as one value, for tests: `from_tree` with every error or none.
#[cfg(test)]
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Vec<Located>> {
    let document = super::parse(text).map_err(|e| vec![e])?;
    let (value, mut errors) = from_tree(&document.root);
    errors.extend(document.duplicates);
    errors.sort_by_key(|e| e.at);
    match value {
        Some(value) if errors.is_empty() => Ok(value),
        _ => Err(errors),
    }
}
