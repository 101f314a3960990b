//! The config's one YAML parse: a tree that remembers where every node and every mapping key
//! starts, so that every problem, found while deserializing (`de`) or while compiling, names
//! its `line:column`.
//!
//! saphyr-parser reads the text into events; this module only builds the tree from them and
//! refuses what no config means: a key given twice in one mapping (reported at the second, and
//! the first kept so the rest of the file is still checked), a second document, and aliases
//! that expand without bound. It knows nothing of sluice's settings.

pub mod de;

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Where a node starts: 1-based line and column, the column counted in characters as editors
/// count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

/// One problem, placed; its message starts with the config path of the value when it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// Where the value at fault starts.
    pub at: Mark,
    /// `path: what is wrong`.
    pub message: String,
}

/// A node of the tree.
#[derive(Clone, Debug)]
pub struct Node {
    /// Where the node starts: a scalar at its first character (or its anchor or tag), a block
    /// mapping at its first key, a flow collection at its bracket, a block sequence at its
    /// first `-`.
    pub at: Mark,
    /// Unique in its tree (an alias's copy gets ids of its own): `de` marks nodes it has
    /// reported by id.
    pub id: usize,
    /// What the node holds.
    pub kind: Kind,
}

/// What a node holds.
#[derive(Clone, Debug)]
pub enum Kind {
    /// A scalar, untyped until a deserializer asks for a type.
    Scalar(Scalar),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping's entries in file order, keys unique.
    Map(Vec<(Node, Node)>),
}

/// A scalar as written.
#[derive(Clone, Debug)]
pub struct Scalar {
    /// Its text, escapes and folding resolved.
    pub text: String,
    /// Written without quotes or a block indicator: only plain scalars can be numbers,
    /// booleans or null.
    pub plain: bool,
    /// The YAML core-schema tag it carries (`!!bool`...); other tags do not change its type.
    pub tag: Option<Tag>,
}

/// The core-schema tags that decide a scalar's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// `!!str`, and every other core tag that is no number, boolean or null.
    Str,
    /// `!!bool`.
    Bool,
    /// `!!int`.
    Int,
    /// `!!float`.
    Float,
    /// `!!null`.
    Null,
}

/// A parsed file: its tree and the problems the tree itself shows.
#[derive(Debug)]
pub struct Document {
    /// The root; an empty file is an empty plain scalar at 1:1.
    pub root: Node,
    /// Keys given twice in one mapping.
    pub duplicates: Vec<Located>,
}

/// Aliases may add this many nodes per node written in the file, or `ALIAS_NODES_MIN`,
/// whichever is more: a few nested anchors could otherwise expand into billions of nodes.
const ALIAS_NODES_PER_NODE: usize = 10;
const ALIAS_NODES_MIN: usize = 10_000;
/// Deepest nesting of collections, as serde_norway allowed: the tree is walked (and dropped)
/// recursively, and a file of `- - - - …` would otherwise overflow the stack.
const MAX_DEPTH: usize = 128;

/// Parses `text` into a tree. A syntax error ends the parse: it is the one problem returned.
pub fn parse(text: &str) -> Result<Document, Located> {
    let mut builder = Builder {
        lines: line_starts(text),
        text,
        stack: Vec::new(),
        root: None,
        anchors: HashMap::new(),
        next_id: 0,
        written: 0,
        copied: 0,
        documents: 0,
        duplicates: Vec::new(),
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| Located {
            at: mark(*e.marker()),
            message: e.info().to_string(),
        })?;
        if builder.on(event, span)? {
            break;
        }
    }
    let root = builder.root.unwrap_or(Node {
        at: Mark { line: 1, column: 1 },
        id: builder.next_id,
        kind: Kind::Scalar(Scalar {
            text: String::new(),
            plain: true,
            tag: None,
        }),
    });
    Ok(Document {
        root,
        duplicates: builder.duplicates,
    })
}

fn mark(marker: saphyr_parser::Marker) -> Mark {
    Mark {
        line: marker.line(),
        column: marker.col() + 1,
    }
}

/// Byte offset of the start of each line (index 0 is line 1); lines end as YAML ends them,
/// at `\n`, `\r\n` or a lone `\r`.
fn line_starts(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let ends = (bytes.iter().enumerate())
        .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n')));
    std::iter::once(0).chain(ends.map(|(i, _)| i + 1)).collect()
}

/// A collection being read.
struct Open {
    at: Mark,
    id: usize,
    anchor: usize,
    items: Items,
}

enum Items {
    Seq(Vec<Node>),
    Map {
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

struct Builder<'t> {
    text: &'t str,
    lines: Vec<usize>,
    stack: Vec<Open>,
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
    next_id: usize,
    /// Nodes read from the text.
    written: usize,
    /// Nodes copied by aliases.
    copied: usize,
    documents: usize,
    duplicates: Vec<Located>,
}

impl Builder<'_> {
    /// Handles one event; true at the end of the stream.
    fn on(&mut self, event: Event<'_>, span: Span) -> Result<bool, Located> {
        let at = mark(span.start);
        match event {
            Event::StreamEnd => return Ok(true),
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(Located {
                        at,
                        message:
                            "a second YAML document starts here; a config file is one document"
                                .into(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let tag = tag.and_then(|tag| {
                    tag.is_yaml_core_schema()
                        .then(|| match tag.suffix.as_str() {
                            "bool" => Tag::Bool,
                            "int" => Tag::Int,
                            "float" => Tag::Float,
                            "null" => Tag::Null,
                            _ => Tag::Str,
                        })
                });
                let scalar = Scalar {
                    text: text.into_owned(),
                    plain: style == ScalarStyle::Plain,
                    tag,
                };
                let node = self.node(at, Kind::Scalar(scalar));
                self.finish(node, anchor);
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if self.stack.len() == MAX_DEPTH => {
                return Err(Located {
                    at,
                    message: format!("nested more than {MAX_DEPTH} levels deep"),
                });
            }
            Event::SequenceStart(anchor, _) => {
                self.open(self.dash(at), anchor, Items::Seq(Vec::new()))
            }
            Event::MappingStart(anchor, _) => self.open(
                at,
                anchor,
                Items::Map {
                    entries: Vec::new(),
                    key: None,
                },
            ),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(open) = self.stack.pop() {
                    let kind = match open.items {
                        Items::Seq(items) => Kind::Seq(items),
                        Items::Map { entries, .. } => Kind::Map(entries),
                    };
                    let node = Node {
                        at: open.at,
                        id: open.id,
                        kind,
                    };
                    self.finish(node, open.anchor);
                }
            }
            Event::Alias(anchor) => {
                let Some(original) = self.anchors.get(&anchor) else {
                    return Err(Located {
                        at,
                        message: "an alias to the node that holds it".into(),
                    });
                };
                let size = count(original);
                self.copied += size;
                let budget = ALIAS_NODES_MIN.max(self.written * ALIAS_NODES_PER_NODE);
                if self.copied > budget {
                    return Err(Located {
                        at,
                        message: format!("aliases expand to more than {budget} nodes"),
                    });
                }
                let mut copy = original.clone();
                self.renumber(&mut copy);
                copy.at = at;
                self.push(copy);
            }
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
        }
        Ok(false)
    }

    fn node(&mut self, at: Mark, kind: Kind) -> Node {
        let id = self.id();
        self.written += 1;
        Node { at, id, kind }
    }

    fn id(&mut self) -> usize {
        self.next_id += 1;
        self.next_id - 1
    }

    fn open(&mut self, at: Mark, anchor: usize, items: Items) {
        let id = self.id();
        self.written += 1;
        self.stack.push(Open {
            at,
            id,
            anchor,
            items,
        });
    }

    /// Gives a copy made by an alias ids of its own.
    fn renumber(&mut self, node: &mut Node) {
        node.id = self.id();
        match &mut node.kind {
            Kind::Scalar(_) => {}
            Kind::Seq(items) => items.iter_mut().for_each(|n| self.renumber(n)),
            Kind::Map(entries) => {
                for (key, value) in entries {
                    self.renumber(key);
                    self.renumber(value);
                }
            }
        }
    }

    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        self.push(node);
    }

    /// Adds a complete node to the collection being read, or makes it the root.
    fn push(&mut self, node: Node) {
        let Some(open) = self.stack.last_mut() else {
            self.root.get_or_insert(node);
            return;
        };
        let (entries, key) = match &mut open.items {
            Items::Seq(items) => return items.push(node),
            Items::Map { entries, key } => (entries, key),
        };
        let Some(key) = key.take() else {
            *key = Some(node);
            return;
        };
        let first = key.text().and_then(|text| {
            entries
                .iter()
                .find(|(other, _)| other.text() == Some(text))
                .map(|(first, _)| first.at)
        });
        match first {
            None => entries.push((key, node)),
            // The first is kept, so the rest of the file is still checked.
            Some(first) => {
                let message = format!(
                    "{}: duplicate key, first given at line {}; a mapping names each key once",
                    self.path(&key),
                    first.line
                );
                self.duplicates.push(Located {
                    at: key.at,
                    message,
                });
            }
        }
    }

    /// The config path of `key`, a key of the innermost open mapping.
    fn path(&self, key: &Node) -> String {
        let mut path = String::new();
        let outer = self.stack.len().saturating_sub(1);
        for open in &self.stack[..outer] {
            match &open.items {
                Items::Seq(items) => path.push_str(&format!("[{}]", items.len())),
                Items::Map { key, .. } => {
                    segment(&mut path, key.as_ref().and_then(Node::text).unwrap_or("?"));
                }
            }
        }
        segment(&mut path, key.text().unwrap_or("?"));
        path
    }

    /// An indentless block sequence (`key:` then `- item` at the key's indentation) starts at
    /// its first `-`, where the parser puts its first item.
    fn dash(&self, at: Mark) -> Mark {
        let Some(&start) = self.lines.get(at.line - 1) else {
            return at;
        };
        let mut line = self.text[start..].chars();
        let before: String = line.by_ref().take(at.column - 1).collect();
        let trimmed = before.trim_end_matches([' ', '\t']);
        if trimmed.ends_with('-') && !matches!(line.next(), Some('-' | '[')) {
            Mark {
                line: at.line,
                column: trimmed.chars().count(),
            }
        } else {
            at
        }
    }
}

/// Appends a mapping key to a config path.
fn segment(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// Nodes in a subtree.
fn count(node: &Node) -> usize {
    1 + match &node.kind {
        Kind::Scalar(_) => 0,
        Kind::Seq(items) => items.iter().map(count).sum(),
        Kind::Map(entries) => entries.iter().map(|(k, v)| count(k) + count(v)).sum(),
    }
}

// === impl Node ===

impl Node {
    /// The scalar text, for a scalar.
    pub fn text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(scalar) => Some(&scalar.text),
            _ => None,
        }
    }

    /// The value of the entry `key`, for a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.text() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Where the node at a config path (`routes[3].limit`) starts, or its nearest ancestor
    /// that exists.
    pub fn find(&self, path: &str) -> Mark {
        match self.walk(path) {
            Ok((node, _)) | Err(node) => node.at,
        }
    }

    /// Where the *key* of the mapping entry at `path` starts (`plans.pro` → the text `pro`),
    /// or [`find`](Self::find) when `path` names no mapping entry.
    pub fn find_key(&self, path: &str) -> Mark {
        match self.walk(path) {
            Ok((_, Some(key))) => key.at,
            Ok((node, None)) | Err(node) => node.at,
        }
    }

    /// The node at `path` and the key it sits under, or the deepest node on the way. Mapping
    /// keys may hold `.` and `[`: each key the path starts with is tried.
    fn walk<'a>(&'a self, path: &str) -> Result<(&'a Node, Option<&'a Node>), &'a Node> {
        if path.is_empty() {
            return Ok((self, None));
        }
        let mut deepest = None;
        match &self.kind {
            Kind::Seq(items) => {
                let item = path
                    .strip_prefix('[')
                    .and_then(|rest| rest.split_once(']'))
                    .and_then(|(n, rest)| Some((items.get(n.parse::<usize>().ok()?)?, rest)));
                if let Some((item, rest)) = item {
                    return item.walk(rest.strip_prefix('.').unwrap_or(rest));
                }
            }
            Kind::Map(entries) => {
                for (key, value) in entries {
                    let Some(rest) = key.text().and_then(|k| path.strip_prefix(k)) else {
                        continue;
                    };
                    if rest.is_empty() {
                        return Ok((value, Some(key)));
                    }
                    if rest.starts_with(['.', '[']) {
                        match value.walk(rest.strip_prefix('.').unwrap_or(rest)) {
                            Ok(found) => return Ok(found),
                            Err(node) => _ = deepest.get_or_insert(node),
                        }
                    }
                }
            }
            Kind::Scalar(_) => {}
        }
        Err(deepest.unwrap_or(self))
    }
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[cfg(test)]
mod tests;
