use std::collections::BTreeMap;

use serde::Deserialize;

use super::de::{from_items, from_str, from_tree};
use super::*;

fn at(line: usize, column: usize) -> Mark {
    Mark { line, column }
}

fn tree(text: &str) -> Node {
    parse(text).unwrap().root
}

/// `file:line:column`-less `line:column: message` lines, as `check` shows them.
fn shown(errors: &[Located]) -> Vec<String> {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.at, e.message))
        .collect()
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
    let t = tree(BLOCK);
    assert_eq!(t.find(""), at(1, 1));
    assert_eq!(t.find("upstream"), at(2, 3));
    assert_eq!(t.find("upstream.url"), at(2, 8));
    assert_eq!(t.find("plans"), at(4, 3));
    assert_eq!(t.find("plans.pro"), at(5, 5));
    assert_eq!(t.find("plans.pro.limits"), at(6, 7));
    assert_eq!(t.find("plans.pro.limits.send"), at(6, 13));
    assert_eq!(t.find("plans.pro.limits.read"), at(7, 13));
    assert_eq!(t.find("routes"), at(9, 3));
    assert_eq!(t.find("routes[0]"), at(9, 5));
    assert_eq!(t.find("routes[0].name"), at(9, 11));
    assert_eq!(t.find("routes[0].limit"), at(10, 12));
    assert_eq!(t.find("routes[1]"), at(11, 5));
    assert_eq!(t.find("routes[1].match"), at(13, 7));
    assert_eq!(t.find("routes[1].match[0]"), at(13, 9));
    assert_eq!(t.find("routes[1].match[1]"), at(14, 9));
    // An indentless sequence starts at its first `-`.
    assert_eq!(t.find("keys"), at(16, 1));
    assert_eq!(t.find("keys[0]"), at(16, 3));
    assert_eq!(t.find("keys[0].plan"), at(17, 9));
}

#[test]
fn flow_mappings_and_sequences() {
    let t = tree(
        "\
routes:
  - { name: send, limit: 10/min }
  - {name: read, match: [GET, 'HEAD'], limit: \"5/s\"}
identify: [{ api_key: { header: x-api-key } }, ip]
pairs: [a: 1, b: 2]
empty: {}
nested:
  - - a
  - [b]
",
    );
    assert_eq!(t.find("routes[0]"), at(2, 5));
    assert_eq!(t.find("routes[0].name"), at(2, 13));
    assert_eq!(t.find("routes[0].limit"), at(2, 26));
    assert_eq!(t.find("routes[1]"), at(3, 5));
    assert_eq!(t.find("routes[1].match"), at(3, 25));
    assert_eq!(t.find("routes[1].match[0]"), at(3, 26));
    assert_eq!(t.find("routes[1].match[1]"), at(3, 31));
    assert_eq!(t.find("routes[1].limit"), at(3, 47));
    assert_eq!(t.find("identify"), at(4, 11));
    assert_eq!(t.find("identify[0]"), at(4, 12));
    assert_eq!(t.find("identify[0].api_key"), at(4, 23));
    assert_eq!(t.find("identify[0].api_key.header"), at(4, 33));
    assert_eq!(t.find("identify[1]"), at(4, 48));
    assert_eq!(t.find("pairs[0]"), at(5, 9));
    assert_eq!(t.find("pairs[1].b"), at(5, 18));
    assert_eq!(t.find("empty"), at(6, 8));
    // A sequence item that is a sequence, or a flow sequence, starts at its own `-` or `[`.
    assert_eq!(t.find("nested[0]"), at(8, 5));
    assert_eq!(t.find("nested[0][0]"), at(8, 7));
    assert_eq!(t.find("nested[1]"), at(9, 5));
}

#[test]
fn a_missing_path_falls_back_to_its_nearest_ancestor() {
    let t = tree(BLOCK);
    assert_eq!(t.find("routes[0].burst"), t.find("routes[0]"));
    assert_eq!(t.find("routes[7].limit"), t.find("routes"));
    assert_eq!(t.find("plans.free.limits.send"), t.find("plans"));
    assert_eq!(t.find("nothing.here[3]"), t.find(""));
    assert_eq!(t.find_key("routes[0].burst"), t.find("routes[0]"));
}

#[test]
fn find_key_points_at_the_key_text() {
    let t = tree(BLOCK);
    assert_eq!(t.find_key("plans.pro"), at(4, 3));
    assert_eq!(t.find_key("plans.pro.limits.send"), at(6, 7));
    assert_eq!(t.find_key("routes[0].name"), at(9, 5));
    assert_eq!(t.find_key("keys[0].plan"), at(17, 3));
    assert_eq!(t.find_key("routes"), at(8, 1));
    // Sequence items have no key: the item itself.
    assert_eq!(t.find_key("routes[1]"), at(11, 5));
    let flow = tree("a: { 'quoted key': 1, b: [x] }\n");
    assert_eq!(flow.find_key("a.quoted key"), at(1, 6));
    assert_eq!(flow.find_key("a.b"), at(1, 23));
    assert_eq!(flow.find("a.b[0]"), at(1, 27));
}

#[test]
fn keys_may_hold_dots_and_brackets() {
    let t = tree("plans:\n  v1.pro: { limits: { all: 5/min } }\n  v1: { limits: x }\n  a[0]: y\n");
    assert_eq!(t.find("plans.v1.pro.limits.all"), at(2, 28));
    assert_eq!(t.find_key("plans.v1.pro"), at(2, 3));
    assert_eq!(t.find("plans.v1.limits"), at(3, 17));
    assert_eq!(t.find("plans.a[0]"), at(4, 9));
}

#[test]
fn an_empty_file_is_an_empty_value_at_the_start() {
    for text in ["", "# only a comment\n", "   \n\n"] {
        let t = tree(text);
        assert_eq!(t.find(""), at(1, 1), "{text:?}");
        assert_eq!(t.find("routes[0]"), at(1, 1), "{text:?}");
        assert_eq!(t.text(), Some(""), "{text:?}");
    }
    assert_eq!(tree("---\n").find(""), at(2, 1));
}

#[test]
fn anchors_tags_and_aliases() {
    let t = tree(
        "\
base: &base
  limit: 10/min
other: *base
tagged: !!str 5
list: [&x one, *x]
after: 1
",
    );
    // Anchored and tagged nodes start at the anchor or tag.
    assert_eq!(t.find("base"), at(1, 7));
    assert_eq!(t.find("base.limit"), at(2, 10));
    // An alias is where it is used; what it copies stays where it is written.
    assert_eq!(t.find("other"), at(3, 8));
    assert_eq!(t.find("other.limit"), at(2, 10));
    assert_eq!(t.find("tagged"), at(4, 9));
    assert_eq!(t.find("list[0]"), at(5, 8));
    assert_eq!(t.find("list[1]"), at(5, 16));
    assert_eq!(t.find_key("after"), at(6, 1));
}

#[test]
fn columns_count_characters_not_a_bom_and_crlf_ends_a_line() {
    assert_eq!(tree("a: é\nb: [é, x]\n").find("b[1]"), at(2, 8));
    let t = tree("\u{feff}a: x\nb: y\n");
    assert_eq!(t.find_key("a"), at(1, 1));
    assert_eq!(t.find("a"), at(1, 4));
    assert_eq!(t.find("b"), at(2, 4));
    assert_eq!(tree("a: 1\r\nb: [x]\r\n").find("b[0]"), at(2, 5));
    assert_eq!(tree("a: 1\rb:\r- x\r").find("b"), at(3, 1));
}

#[test]
fn a_syntax_error_is_placed() {
    let e = parse("upstream: { url: \"demo:\" \nroutes: [\n").unwrap_err();
    assert_eq!(e.at, at(2, 1));
    let e = parse("a:\n\tb: 1\n").unwrap_err();
    assert_eq!(e.at, at(2, 2));
    assert!(e.message.contains("tab"), "{}", e.message);
    let e = parse("a: *nowhere\n").unwrap_err();
    assert_eq!(e.at, at(1, 4));
}

#[test]
fn a_second_document_is_refused_where_it_starts() {
    let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
    assert_eq!(
        shown(&[e]),
        ["2:1: a second YAML document starts here; a config file is one document"]
    );
    parse("---\na: 1\n...\n").unwrap();
}

#[test]
fn every_duplicate_key_is_reported_at_itself_and_the_first_is_kept() {
    let document = parse(
        "\
a: 1
routes:
  - name: x
    limit: 10/min
    limit: 5/min
  - { name: y, name: z }
a: 2
",
    )
    .unwrap();
    assert_eq!(
        shown(&document.duplicates),
        [
            "5:5: routes[0].limit: duplicate key, first given at line 4; a mapping names each key once",
            "6:16: routes[1].name: duplicate key, first given at line 6; a mapping names each key once",
            "7:1: a: duplicate key, first given at line 1; a mapping names each key once",
        ]
    );
    assert_eq!(document.root.get("a").and_then(Node::text), Some("1"));
    assert_eq!(document.root.find("routes[0].limit"), at(4, 12));
}

#[test]
fn aliases_cannot_expand_without_bound() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let prev = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
        ));
    }
    let e = parse(&text).unwrap_err();
    assert!(
        e.message
            .starts_with("aliases expand to more than 10000 nodes"),
        "{e:?}"
    );
    // A few aliases are fine.
    parse("a: &a [1, 2]\nb: [*a, *a, *a]\n").unwrap();
}

#[test]
fn nesting_is_bounded() {
    let e = parse(&format!("a:\n{}x\n", "- ".repeat(100_000))).unwrap_err();
    assert_eq!(shown(&[e]), ["2:255: nested more than 128 levels deep"]);
    let e = parse(&format!("a: {}{}\n", "[".repeat(200), "]".repeat(200))).unwrap_err();
    assert_eq!(e.message, "nested more than 128 levels deep");
    parse(&format!("a: {}{}\n", "[".repeat(127), "]".repeat(127))).unwrap();
}

#[test]
fn every_prefix_of_a_document_parses_or_fails_without_panicking() {
    let text = format!("{BLOCK}x: &a {{ k: [1, *a, !!str 2], ? [c] : d }}\ny: *a\nz: *missing\n");
    for (i, _) in text.char_indices() {
        if let Ok(document) = parse(&text[..i]) {
            let _ = document.root.find("routes[1].match[1]");
            let _ = from_tree::<serde_json::Value>(&document.root);
        }
    }
}

/// The largest id in `node`'s subtree, checking that each child's ids come after its
/// parent's and its earlier siblings': a subtree's ids are one range from its root's.
fn last_id(node: &Node) -> usize {
    let children: Vec<&Node> = match &node.kind {
        Kind::Scalar(_) => Vec::new(),
        Kind::Seq(items) => items.iter().collect(),
        Kind::Map(entries) => entries.iter().flat_map(|(k, v)| [k, v]).collect(),
    };
    let mut last = node.id;
    for child in children {
        assert!(child.id > last, "{} after {last}", child.id);
        last = last_id(child);
    }
    last
}

#[test]
fn a_subtrees_ids_are_one_range_from_its_root() {
    let document = parse(
        "- &k { key: a, limits: { x: 1 } }\n- { key: b, limits: *k, key: dup }\n- [*k, *k]\n",
    )
    .unwrap();
    assert!(last_id(&document.root) > 30);
}

// === deserializing ===

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Route {
    name: String,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    methods: Vec<String>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    shadow: Option<bool>,
    #[serde(default)]
    plans: BTreeMap<String, u32>,
    #[serde(default)]
    sources: Vec<Source>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum Source {
    ApiKey(Header),
    Ip(Header),
    Anonymous,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Header {
    #[serde(default)]
    header: Option<String>,
}

fn errors(text: &str) -> Vec<String> {
    shown(&from_str::<Doc>(text).unwrap_err())
}

#[test]
fn every_bad_value_is_reported_in_one_pass() {
    assert_eq!(
        errors(
            "\
routes:
  - { name: a, limit: ten }
  - { name: b, limit: -1 }
  - { name: c, limit: 5 }
  - { name: d, limit: 1.5 }
"
        ),
        [
            "2:23: routes[0].limit: invalid type: string \"ten\", expected u32",
            "3:23: routes[1].limit: invalid value: integer `-1`, expected u32",
            "5:23: routes[3].limit: invalid type: floating point `1.5`, expected u32",
        ]
    );
}

#[test]
fn an_unknown_field_hides_nothing_after_it() {
    assert_eq!(
        errors("routs: []\nroutes:\n  - { name: a, limt: 5 }\nshadow: maybe\n"),
        [
            "1:1: unknown field `routs`, expected one of `routes`, `shadow`, `plans`, `sources`",
            "3:16: routes[0]: unknown field `limt`, expected one of `name`, `limit`, `methods`",
            "4:9: shadow: invalid type: string \"maybe\", expected a boolean",
        ]
    );
}

#[test]
fn a_missing_field_is_reported_unless_it_was_there_but_bad() {
    // `name: [x]` is reported, its `missing field` is not.
    assert_eq!(
        errors("routes:\n  - { name: [x], limit: 1 }\n  - { limit: 2 }\n"),
        [
            "2:13: routes[0].name: invalid type: sequence, expected a string",
            "3:5: routes[1]: missing field `name`",
        ]
    );
}

#[test]
fn enums_are_a_name_or_a_mapping_of_one_name_to_its_value() {
    let doc: Doc =
        from_str("sources:\n  - api_key: { header: x }\n  - { ip: {} }\n  - ip:\n  - anonymous\n")
            .unwrap();
    assert_eq!(
        doc.sources,
        [
            Source::ApiKey(Header {
                header: Some("x".into())
            }),
            Source::Ip(Header::default()),
            Source::Ip(Header::default()),
            Source::Anonymous,
        ]
    );
    assert_eq!(
        errors(
            "\
sources:
  - api_key: { headr: x }
  - { api_key: {}, ip: {} }
  - ip
  - anonymous: {}
  - [ip]
  - apikey: {}
"
        ),
        [
            "2:16: sources[0].api_key: unknown field `headr`, expected `header`",
            "3:5: sources[1]: invalid value: map, expected map with a single key",
            "4:5: sources[2]: invalid type: unit variant, expected newtype variant",
            "5:5: sources[3]: invalid type: map, expected unit variant",
            "6:5: sources[4]: invalid type: sequence, expected enum Source",
            "7:5: sources[5]: unknown variant `apikey`, expected one of `api_key`, `ip`, `anonymous`",
        ]
    );
}

#[test]
fn items_are_read_one_at_a_time_with_every_error() {
    let (items, errors) = from_items::<Route>(&tree(
        "- { name: a, limit: x }\n- &r { name: b }\n- { nme: c }\n- *r\n- { name: d, limit: -1 }\n",
    ));
    assert!(items.is_none());
    assert_eq!(
        shown(&errors),
        [
            "1:21: [0].limit: invalid type: string \"x\", expected u32",
            "3:5: [2]: unknown field `nme`, expected one of `name`, `limit`, `methods`",
            "3:3: [2]: missing field `name`",
            "5:21: [4].limit: invalid value: integer `-1`, expected u32",
        ]
    );
    let (items, errors) = from_items::<Route>(&tree("- { name: a }\n- &r { name: b }\n- *r\n"));
    assert!(errors.is_empty());
    let names: Vec<String> = items.unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["a", "b", "b"]);
    let (items, errors) = from_items::<Route>(&tree("# no keys yet\n"));
    assert_eq!((items, errors), (Some(Vec::new()), Vec::new()));
}

#[test]
fn a_struct_is_a_mapping_or_an_empty_value() {
    assert_eq!(
        shown(&from_str::<Doc>("- a\n").unwrap_err()),
        ["1:1: invalid type: sequence, expected struct Doc"]
    );
    let doc: Doc = from_str("routes:\nplans:\n").unwrap();
    assert!(doc.routes.is_empty() && doc.plans.is_empty());
    assert_eq!(
        errors("routes: ~\n"),
        ["1:9: routes: invalid type: unit value, expected a sequence"]
    );
}

#[test]
fn scalars_are_typed_as_the_core_schema_says() {
    #[derive(Debug, Deserialize)]
    struct Typed {
        ints: Vec<i64>,
        strings: Vec<String>,
        bools: Vec<bool>,
        floats: Vec<f64>,
        nulls: Vec<Option<u8>>,
    }
    let t: Typed = from_str(
        "\
ints: [12, -3, +4, 0x1F, 0o17, 0b101, -0x10, !!int 7]
strings: [012, 1_000, '5', \"true\", yes, ~, '', plain text, !!str 5, 0x]
bools: [true, True, TRUE, false, False, FALSE, !!bool true]
floats: [1.5, 1e3, -.5, .inf, -.Inf, 2]
nulls: [~, null, Null, NULL, !!null '', 3]
",
    )
    .unwrap();
    assert_eq!(t.ints, [12, -3, 4, 31, 15, 5, -16, 7]);
    assert_eq!(
        t.strings,
        [
            "012",
            "1_000",
            "5",
            "true",
            "yes",
            "~",
            "",
            "plain text",
            "5",
            "0x"
        ]
    );
    assert_eq!(t.bools, [true, true, true, false, false, false, true]);
    assert_eq!(
        t.floats,
        [1.5, 1000.0, -0.5, f64::INFINITY, f64::NEG_INFINITY, 2.0]
    );
    assert_eq!(t.nulls, [None, None, None, None, None, Some(3)]);

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct One {
        v: u32,
    }
    let error = |text: &str| shown(&from_str::<One>(text).unwrap_err());
    assert_eq!(
        error("v: '5'\n"),
        ["1:4: v: invalid type: string \"5\", expected u32"]
    );
    assert_eq!(
        error("v: 012\n"),
        ["1:4: v: invalid type: string \"012\", expected u32"]
    );
    assert_eq!(
        error("v: !!int x\n"),
        ["1:4: v: invalid value: string \"x\", expected an integer"]
    );
    assert_eq!(
        error("v: 99999999999999999999999\n"),
        ["1:4: v: invalid type: integer `99999999999999999999999` as u128, expected u32"]
    );
}

/// The same text read by serde_norway and by this module, as JSON.
fn both(text: &str) -> (serde_json::Value, serde_json::Value) {
    let theirs: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    let ours: serde_json::Value = from_str(text).unwrap();
    (serde_json::to_value(theirs).unwrap(), ours)
}

#[test]
fn values_agree_with_serde_norway() {
    let snippets = [
        "a: [12, -3, +4, 0x1F, 0o17, 0b101, -0x10, 012, 1_000, 0x, +-5, 0x-1]",
        "a: [1.5, 1e3, -.5, .inf, -.Inf, +.INF, 1., .5, inf, nan, NaN, 1e400]",
        "a: [true, True, TRUE, false, yes, No, on, tRuE]",
        "a: [~, null, Null, NULL, nULL, '', \"\", '~']",
        "a: ['5', \"true\", !!str 5, !!int 6, !!float 7, !!bool false, !!null ~]",
        "a: |\n  literal\n  text\nb: >\n  folded\n  text\nc: \"esc\\t\\u00e9\"",
        "x2: &x2 2\na: &x { b: [1, *x2] }\nc: *x",
        "? plain key\n: v\n'quoted': v\n\"double\": w",
        "a:\nb: ~\nc: [ ]\nd: { }",
        "- a\n- - b\n  - c\n- d: e\n  f: g",
        "\u{feff}a: bom",
        "a: 1 # comment\n# comment\nb: 'it''s'",
    ];
    for text in snippets {
        let (theirs, ours) = both(text);
        assert_eq!(ours, theirs, "{text}");
    }
}

#[test]
fn every_shipped_config_reads_as_serde_norway_reads_it() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut read = 0;
    for dir in ["config", "config/examples"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let (theirs, ours) = both(&std::fs::read_to_string(&path).unwrap());
                assert_eq!(ours, theirs, "{}", path.display());
                read += 1;
            }
        }
    }
    assert!(read > 5, "{read} files");
}

proptest::proptest! {
    /// Any text made of config-like fragments is read or refused with placed errors, never
    /// a panic: the tree, the positions, the passes that leave nodes out.
    #[test]
    fn any_fragments_read_or_fail_with_places(
        fragments in proptest::collection::vec(
            proptest::sample::select(vec![
                "routes:", "\n", "  ", "- ", "{ ", " }", "[", "]", ", ", ": ", "name", "limit",
                "5/min", "x", "&a ", "*a", "!!str ", "? ", "'q'", "\"d\"", "~", "true", "12",
                "---\n", "# c", "limits", "key", "plan", "\t", "\r", "é", "\u{feff}", "...\n",
                "|\n", ">-\n", "<<: ",
            ]),
            0..40,
        ),
    ) {
        let text: String = fragments.concat();
        let Ok(document) = parse(&text) else { return Ok(()) };
        for problem in from_tree::<Doc>(&document.root).1.iter().chain(&document.duplicates) {
            proptest::prop_assert!(problem.at.line >= 1 && problem.at.column >= 1);
            // A lone `\r` ends a line too, in YAML as in editors.
            proptest::prop_assert!(problem.at.line <= text.split(['\n', '\r']).count() + 1);
        }
        let _ = from_items::<Route>(&document.root);
        let _ = document.root.find("routes[0].limit");
        let _ = crate::config::load_str(&text, "t.yaml", None);
    }
}
