//! Maps config paths such as `routes[3].limit` to the line and column of that node in the YAML source.
//!
//! serde reports syntax and type errors with a position itself; this index exists so that the
//! semantic checks that run after deserializing (duplicate names, unknown plans, ...) can point
//! at the offending text too. It re-reads the source with `yaml-rust2`'s event parser, which
//! carries a [`Marker`] on every event, and records where each node (and each mapping key)
//! starts under the same path syntax serde_norway uses in its own error messages.
//!
//! Positions are chosen to agree with serde_norway: a node starts at its first character, or at
//! its anchor / tag when it has one; a block mapping starts at its first key; an indentless
//! block sequence starts at its first `-`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// 1-based line and column of a YAML node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// 1-based line number, as editors and serde_norway count them.
    pub line: usize,
    /// 1-based column, counted in characters, as serde_norway counts them.
    pub column: usize,
}

/// Path → location of every node of one YAML document.
///
/// Built once per config load so that every semantic error can name a line and column.
#[derive(Clone, Debug, Default)]
pub struct Locations {
    nodes: HashMap<String, Location>,
    keys: HashMap<String, Location>,
}

impl Locations {
    /// Never fails: on a YAML syntax error it returns what it indexed so far (serde reports the syntax error itself).
    pub fn index(source: &str) -> Locations {
        let bom = source.starts_with('\u{feff}');
        let text = source.strip_prefix('\u{feff}').unwrap_or(source);
        let mut indexer = Indexer {
            src: Source {
                chars: text.chars().collect(),
                bom,
            },
            stack: Vec::new(),
            root_seen: false,
            out: Locations::default(),
        };
        // Drive the parser by hand rather than through `Parser::load`: `load` asserts on
        // malformed streams, and we want to stop cleanly at the first error or document end.
        let mut parser = Parser::new_from_str(text);
        while let Ok((event, mark)) = parser.next_token() {
            let last = matches!(event, Event::DocumentEnd | Event::StreamEnd);
            indexer.on_event(event, mark);
            if last {
                break;
            }
        }
        indexer.finish()
    }

    /// Location of the node at `path`, or of its nearest ancestor that exists, or None for an empty document.
    pub fn find(&self, path: &str) -> Option<Location> {
        let mut path = path;
        loop {
            if let Some(location) = self.nodes.get(path) {
                return Some(*location);
            }
            if path.is_empty() {
                return None;
            }
            path = parent(path);
        }
    }

    /// Location of the *key* of a mapping entry (e.g. for "plans.pro" the position of the text `pro`), falling back to `find`.
    pub fn find_key(&self, path: &str) -> Option<Location> {
        self.keys.get(path).copied().or_else(|| self.find(path))
    }
}

/// The path of the parent node: `a.b[2].c` → `a.b[2]` → `a.b` → `a` → ``.
fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

/// A node's start as seen by the indexer: char index into the source plus its location.
#[derive(Clone, Copy, Debug)]
struct Pos {
    index: usize,
    location: Location,
}

/// The source text, for turning parser markers into serde_norway-compatible positions.
struct Source {
    chars: Vec<char>,
    /// The source started with a byte-order mark that was stripped before parsing;
    /// serde_norway counts it as a column on line 1.
    bom: bool,
}

impl Source {
    /// Position of a parser marker (yaml-rust2 lines are 1-based, columns 0-based, index in chars).
    fn pos(&self, mark: Marker) -> Pos {
        let mut column = mark.col() + 1;
        if self.bom && mark.line() == 1 {
            column += 1;
        }
        Pos {
            index: mark.index(),
            location: Location {
                line: mark.line(),
                column,
            },
        }
    }

    /// Position of the char at `index`, computed from the text (used after moving a
    /// position backwards, where the parser's marker no longer applies).
    fn pos_of(&self, index: usize) -> Pos {
        let index = index.min(self.chars.len());
        let mut line = 1;
        let mut line_start = 0;
        for (i, c) in self.chars[..index].iter().enumerate() {
            let line_break = match c {
                '\n' => true,
                '\r' => self.chars.get(i + 1) != Some(&'\n'),
                _ => false,
            };
            if line_break {
                line += 1;
                line_start = i + 1;
            }
        }
        let mut column = index - line_start + 1;
        if self.bom && line == 1 {
            column += 1;
        }
        Pos {
            index,
            location: Location { line, column },
        }
    }

    /// Moves `pos` back over an anchor (`&name`) and/or tag (`!tag`) written before the
    /// node, which is where serde_norway places a node that has them.
    fn include_properties(&self, pos: Pos) -> Pos {
        let mut start = pos.index.min(self.chars.len());
        let mut moved = false;
        for _ in 0..2 {
            let mut end = start;
            while end > 0 && self.chars[end - 1].is_whitespace() {
                end -= 1;
            }
            let mut begin = end;
            while begin > 0 && !is_token_boundary(self.chars[begin - 1]) {
                begin -= 1;
            }
            if begin < end && matches!(self.chars[begin], '&' | '!') {
                start = begin;
                moved = true;
            } else {
                break;
            }
        }
        if moved {
            self.pos_of(start)
        } else {
            pos
        }
    }

    /// yaml-rust2 puts the start of an indentless block sequence (`key:\n- a`) at its first
    /// item; serde_norway puts it at the `-`.
    fn include_dash(&self, pos: Pos) -> Pos {
        let index = pos.index.min(self.chars.len());
        if matches!(self.chars.get(index), Some('-' | '[')) {
            return pos;
        }
        let mut i = index;
        while i > 0 && matches!(self.chars[i - 1], ' ' | '\t') {
            i -= 1;
        }
        if i > 0 && self.chars[i - 1] == '-' {
            self.pos_of(i - 1)
        } else {
            pos
        }
    }
}

/// Characters that cannot be part of an anchor or tag token written before a node.
fn is_token_boundary(c: char) -> bool {
    c.is_whitespace() || matches!(c, '[' | '{' | ',')
}

/// Joins a mapping key onto its parent's path.
fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Inserts unless already present: with duplicate keys the first occurrence wins.
fn record(table: &mut HashMap<String, Location>, path: String, location: Location) {
    table.entry(path).or_insert(location);
}

/// A mapping whose own position waits for its first key: a block mapping's start marker
/// sits after its first key, so the earlier of the two is where the mapping starts.
#[derive(Debug)]
struct PendingMap {
    path: String,
    start: Pos,
    has_properties: bool,
}

/// What an open collection expects next.
#[derive(Debug)]
enum Kind {
    Seq {
        next: usize,
    },
    Map {
        /// `None` while expecting a key; `Some(key)` while expecting the value of `key`
        /// (`Some(None)` when that key was not a scalar, so its value is not indexed).
        key: Option<Option<String>>,
        pending: Option<PendingMap>,
    },
    /// A collection used as a mapping key: nothing inside it is indexed.
    Ignored,
}

/// An open collection.
#[derive(Debug)]
struct Frame {
    /// Path of this collection; `None` inside subtrees that are not indexed.
    path: Option<String>,
    kind: Kind,
}

/// What a node-starting event tells the indexer.
struct NodeStart {
    /// Where the parser says the node starts (before anchor/tag adjustment).
    pos: Pos,
    has_properties: bool,
    /// The scalar's text, usable as a mapping key.
    scalar: Option<String>,
    /// An empty plain scalar without properties: an absent value.
    empty: bool,
    /// Collections: record the location now (sequences) or when the first key is seen (mappings).
    deferred: bool,
}

/// Event receiver that turns the parser's event stream into path → location tables.
struct Indexer {
    src: Source,
    stack: Vec<Frame>,
    root_seen: bool,
    out: Locations,
}

impl Indexer {
    /// Handles a node start; returns the node's path (None if it is a key or not indexed) and
    /// whether it is a mapping key.
    fn node(&mut self, start: NodeStart) -> (Option<String>, bool) {
        let src = &self.src;
        let out = &mut self.out;
        let value_pos = || {
            if start.has_properties {
                src.include_properties(start.pos)
            } else {
                start.pos
            }
        };
        let Some(frame) = self.stack.last_mut() else {
            if self.root_seen {
                return (None, false);
            }
            self.root_seen = true;
            if !start.empty && !start.deferred {
                record(&mut out.nodes, String::new(), value_pos().location);
            }
            return (Some(String::new()), false);
        };
        let path = match &mut frame.kind {
            Kind::Ignored => None,
            Kind::Seq { next } => {
                let index = *next;
                *next += 1;
                frame.path.as_ref().map(|p| format!("{p}[{index}]"))
            }
            Kind::Map { key, pending } => match key.take() {
                None => {
                    // This node is a key of the mapping.
                    if let Some(map) = pending.take() {
                        let key_start = value_pos();
                        let first = if key_start.index < map.start.index {
                            key_start
                        } else {
                            map.start
                        };
                        let first = if map.has_properties {
                            src.include_properties(first)
                        } else {
                            first
                        };
                        record(&mut out.nodes, map.path, first.location);
                    }
                    if let (Some(parent), Some(name)) = (&frame.path, &start.scalar) {
                        record(&mut out.keys, join(parent, name), start.pos.location);
                    }
                    *key = Some(start.scalar);
                    return (None, true);
                }
                Some(name) => match (&frame.path, name) {
                    (Some(parent), Some(name)) => Some(join(parent, &name)),
                    _ => None,
                },
            },
        };
        if let Some(path) = &path {
            if !start.deferred {
                record(&mut out.nodes, path.clone(), value_pos().location);
            }
        }
        (path, false)
    }

    /// Closes the innermost collection.
    fn close(&mut self) {
        if let Some(frame) = self.stack.pop() {
            if let Kind::Map {
                pending: Some(map), ..
            } = frame.kind
            {
                // A mapping that never got a key (`{}`, or cut short by a syntax error).
                let start = if map.has_properties {
                    self.src.include_properties(map.start)
                } else {
                    map.start
                };
                record(&mut self.out.nodes, map.path, start.location);
            }
        }
    }

    fn finish(mut self) -> Locations {
        while !self.stack.is_empty() {
            self.close();
        }
        self.out
    }
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = self.src.pos(mark);
        match event {
            Event::Scalar(value, style, anchor, tag) => {
                let has_properties = anchor != 0 || tag.is_some();
                let empty = value.is_empty() && style == TScalarStyle::Plain && !has_properties;
                self.node(NodeStart {
                    pos,
                    has_properties,
                    scalar: Some(value),
                    empty,
                    deferred: false,
                });
            }
            Event::Alias(_) => {
                self.node(NodeStart {
                    pos,
                    has_properties: false,
                    scalar: None,
                    empty: false,
                    deferred: false,
                });
            }
            Event::SequenceStart(anchor, tag) => {
                let (path, is_key) = self.node(NodeStart {
                    pos: self.src.include_dash(pos),
                    has_properties: anchor != 0 || tag.is_some(),
                    scalar: None,
                    empty: false,
                    deferred: false,
                });
                let kind = if is_key {
                    Kind::Ignored
                } else {
                    Kind::Seq { next: 0 }
                };
                self.stack.push(Frame { path, kind });
            }
            Event::MappingStart(anchor, tag) => {
                let (path, is_key) = self.node(NodeStart {
                    pos,
                    has_properties: anchor != 0 || tag.is_some(),
                    scalar: None,
                    empty: false,
                    deferred: true,
                });
                let kind = if is_key {
                    Kind::Ignored
                } else {
                    Kind::Map {
                        key: None,
                        pending: path.clone().map(|path| PendingMap {
                            path,
                            start: pos,
                            has_properties: anchor != 0 || tag.is_some(),
                        }),
                    }
                };
                self.stack.push(Frame { path, kind });
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Option<Location> {
        Some(Location { line, column })
    }

    const BLOCK: &str = "\
upstream:
  url: http://127.0.0.1:8080
plans:
  pro:
    limits:
      send: 100/min
      read: 10/s
routes:
  - name: send
    limit: 10/min
  - name: read
    match:
      - GET
      - HEAD
keys:
- key: abc
  plan: pro
";

    #[test]
    fn block_mappings_and_sequences() {
        let l = Locations::index(BLOCK);
        assert_eq!(l.find(""), at(1, 1));
        assert_eq!(l.find("upstream"), at(2, 3));
        assert_eq!(l.find("upstream.url"), at(2, 8));
        assert_eq!(l.find("plans"), at(4, 3));
        assert_eq!(l.find("plans.pro"), at(5, 5));
        assert_eq!(l.find("plans.pro.limits"), at(6, 7));
        assert_eq!(l.find("plans.pro.limits.send"), at(6, 13));
        assert_eq!(l.find("plans.pro.limits.read"), at(7, 13));
        assert_eq!(l.find("routes"), at(9, 3));
        assert_eq!(l.find("routes[0]"), at(9, 5));
        assert_eq!(l.find("routes[0].name"), at(9, 11));
        assert_eq!(l.find("routes[0].limit"), at(10, 12));
        assert_eq!(l.find("routes[1]"), at(11, 5));
        assert_eq!(l.find("routes[1].match"), at(13, 7));
        assert_eq!(l.find("routes[1].match[0]"), at(13, 9));
        assert_eq!(l.find("routes[1].match[1]"), at(14, 9));
        // Indentless sequence: starts at the `-`, like serde_norway says.
        assert_eq!(l.find("keys"), at(16, 1));
        assert_eq!(l.find("keys[0]"), at(16, 3));
        assert_eq!(l.find("keys[0].plan"), at(17, 9));
    }

    #[test]
    fn flow_mappings_and_sequences() {
        let src = "\
routes:
  - { name: send, limit: 10/min }
  - {name: read, match: [GET, 'HEAD'], limit: \"5/s\"}
identify: [{ api_key: { header: x-api-key } }, ip]
pairs: [a: 1, b: 2]
empty: {}
";
        let l = Locations::index(src);
        assert_eq!(l.find("routes[0]"), at(2, 5));
        assert_eq!(l.find("routes[0].name"), at(2, 13));
        assert_eq!(l.find("routes[0].limit"), at(2, 26));
        assert_eq!(l.find("routes[1]"), at(3, 5));
        assert_eq!(l.find("routes[1].match"), at(3, 25));
        assert_eq!(l.find("routes[1].match[0]"), at(3, 26));
        assert_eq!(l.find("routes[1].match[1]"), at(3, 31));
        assert_eq!(l.find("routes[1].limit"), at(3, 47));
        assert_eq!(l.find("identify"), at(4, 11));
        assert_eq!(l.find("identify[0]"), at(4, 12));
        assert_eq!(l.find("identify[0].api_key"), at(4, 23));
        assert_eq!(l.find("identify[0].api_key.header"), at(4, 33));
        assert_eq!(l.find("identify[1]"), at(4, 48));
        // Single-pair mappings inside a flow sequence start at their key.
        assert_eq!(l.find("pairs[0]"), at(5, 9));
        assert_eq!(l.find("pairs[1].b"), at(5, 18));
        assert_eq!(l.find("empty"), at(6, 8));
    }

    #[test]
    fn missing_leaf_falls_back_to_nearest_ancestor() {
        let l = Locations::index(BLOCK);
        assert_eq!(l.find("routes[0].burst"), l.find("routes[0]"));
        assert_eq!(l.find("routes[7].limit"), l.find("routes"));
        assert_eq!(l.find("plans.free.limits.send"), l.find("plans"));
        assert_eq!(l.find("nothing.here[3]"), l.find(""));
        assert_eq!(l.find_key("routes[0].burst"), l.find("routes[0]"));
    }

    #[test]
    fn empty_document_has_no_locations() {
        for src in ["", "# only a comment\n", "---\n", "   \n\n"] {
            let l = Locations::index(src);
            assert_eq!(l.find(""), None, "{src:?}");
            assert_eq!(l.find("routes[0]"), None, "{src:?}");
            assert_eq!(l.find_key("routes"), None, "{src:?}");
        }
    }

    #[test]
    fn find_key_points_at_the_key_text() {
        let l = Locations::index(BLOCK);
        assert_eq!(l.find_key("plans.pro"), at(4, 3));
        assert_eq!(l.find_key("plans.pro.limits.send"), at(6, 7));
        assert_eq!(l.find_key("routes[0].name"), at(9, 5));
        assert_eq!(l.find_key("keys[0].plan"), at(17, 3));
        assert_eq!(l.find_key("routes"), at(8, 1));
        // Sequence items have no key: falls back to the node itself.
        assert_eq!(l.find_key("routes[1]"), at(11, 5));
        let flow = Locations::index("a: { 'quoted key': 1, b: [x] }\n");
        assert_eq!(flow.find_key("a.quoted key"), at(1, 6));
        assert_eq!(flow.find_key("a.b"), at(1, 23));
        assert_eq!(flow.find("a.b[0]"), at(1, 27));
    }

    #[test]
    fn syntax_error_keeps_what_came_before() {
        let src = "\
upstream:
  url: http://x
routes:
  - name: send
    limit: [10/min
  - name: read
";
        let l = Locations::index(src);
        assert_eq!(l.find("upstream.url"), at(2, 8));
        assert_eq!(l.find("routes[0].name"), at(4, 11));
        assert_eq!(l.find("routes[0]"), at(4, 5));
        assert_eq!(l.find("routes[1].name"), l.find("routes"));
        assert!(serde_yaml::from_str::<serde_yaml::Value>(src).is_err());
    }

    #[test]
    fn every_prefix_of_a_document_indexes_without_panicking() {
        let src =
            format!("{BLOCK}x: &a {{ k: [1, *a, !!str 2], ? [c] : d }}\ny: *a\nz: *missing\n");
        for (i, _) in src.char_indices() {
            let l = Locations::index(&src[..i]);
            let _ = l.find("routes[1].match[1]");
        }
    }

    #[test]
    fn anchors_aliases_tags_and_complex_keys() {
        let src = "\
base: &base
  limit: 10/min
other: *base
tagged: !!str 5
list: [&x one, *x]
? [complex, key]
: ignored
after: 1
";
        let l = Locations::index(src);
        // Anchored/tagged nodes start at the anchor/tag, as serde_norway reports them.
        assert_eq!(l.find("base"), at(1, 7));
        assert_eq!(l.find("base.limit"), at(2, 10));
        // An alias gets the alias's own position.
        assert_eq!(l.find("other"), at(3, 8));
        assert_eq!(l.find("other.limit"), at(3, 8));
        assert_eq!(l.find("tagged"), at(4, 9));
        assert_eq!(l.find("list[0]"), at(5, 8));
        assert_eq!(l.find("list[1]"), at(5, 16));
        assert_eq!(l.find("after"), at(8, 8));
        assert_eq!(l.find_key("after"), at(8, 1));
    }

    #[test]
    fn columns_count_characters_and_a_bom() {
        let l = Locations::index("a: é\nb: [é, x]\n");
        assert_eq!(l.find("b[1]"), at(2, 8));
        let l = Locations::index("\u{feff}a: x\nb: y\n");
        assert_eq!(l.find_key("a"), at(1, 2));
        assert_eq!(l.find("a"), at(1, 5));
        assert_eq!(l.find("b"), at(2, 4));
        let l = Locations::index("a: 1\r\nb: [x]\r\n");
        assert_eq!(l.find("b[0]"), at(2, 5));
    }

    /// serde_norway's position for a type error on `path`.
    fn serde_location<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        src: &str,
    ) -> Option<Location> {
        let err = serde_yaml::from_str::<T>(src).expect_err("must fail");
        let loc = err.location().expect("serde_norway gives a location");
        Some(Location {
            line: loc.line(),
            column: loc.column(),
        })
    }

    #[test]
    fn locations_agree_with_serde_norway() {
        use std::collections::BTreeMap;

        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Route {
            name: String,
            limit: u32,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Doc {
            routes: Vec<Route>,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Plans {
            plans: BTreeMap<String, u32>,
        }

        type SerdeLocation = fn(&str) -> Option<Location>;
        let cases: &[(&str, &str, SerdeLocation)] = &[
            (
                "routes:\n  - name: a\n    limit: 5\n  - name: b\n    limit: ten\n",
                "routes[1].limit",
                serde_location::<Doc>,
            ),
            (
                "routes:\n- { name: a, limit: 5 }\n- { name: b, limit: \"x\" }\n",
                "routes[1].limit",
                serde_location::<Doc>,
            ),
            ("routes: [1]\n", "routes[0]", serde_location::<Doc>),
            ("routes:\n  a: 1\n", "routes", serde_location::<Doc>),
            ("routes:\n- 1\n", "routes[0]", serde_location::<Doc>),
            ("routes: &r\n  a: 1\n", "routes", serde_location::<Doc>),
            ("routes: !!str x\n", "routes", serde_location::<Doc>),
            (
                "plans:\n  pro: 1\n  free: nope\n",
                "plans.free",
                serde_location::<Plans>,
            ),
            ("plans: [1, {a: 1}]\n", "plans", serde_location::<Plans>),
            ("a: é\nplans: [é]\n", "plans", serde_location::<Plans>),
        ];
        for (src, path, serde) in cases {
            assert_eq!(
                Locations::index(src).find(path),
                serde(src),
                "{path} in {src:?}"
            );
        }
    }
}
