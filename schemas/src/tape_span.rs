//! Where a value of a simd-json tape sits in the input bytes.
//!
//! Request and response bodies are kept as JSON text. Re-encoding them from the tape costs
//! number formatting and string escaping for every node; slicing the bytes they arrived as
//! costs one pass over their tape nodes. The tape has no offsets, but stage 1 leaves the
//! offset of every structural character (`{ } [ ] : ,`, each string's opening quote and each
//! scalar's first byte), and stage 2 turns them into tape nodes in order, so counting the
//! structurals of the values before a value locates it.

use simd_json::Node;
use simd_json::tape::Value;

/// A value of the tape with its nodes and the index of its first structural character.
#[derive(Clone, Copy)]
pub(crate) struct Located<'t, 'i> {
    /// The value, for the typed accessors.
    pub value: Value<'t, 'i>,
    nodes: &'t [Node<'i>],
    structural: usize,
    /// Structurals the value spans, when its parent already counted them.
    span: Option<usize>,
}

/// The input a tape was parsed from and its stage-1 structural indexes.
#[derive(Clone, Copy)]
pub(crate) struct Doc<'r> {
    raw: &'r [u8],
    structurals: &'r [u32],
}

impl<'r> Doc<'r> {
    /// `raw` must be the bytes that produced `structurals` (before in-place unescaping).
    pub fn new(raw: &'r [u8], structurals: &'r [u32]) -> Self {
        Self { raw, structurals }
    }
}

/// Tape nodes taken by the value starting at `node`, itself included.
fn node_count(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// Structural characters spanned by the value starting at `nodes[0]`: one per node, plus,
/// for each container, its closing bracket and separators (`:` and `,` in an object of `n`
/// keys: `2n - 1`; `,` in an array of `n` items: `n - 1`).
fn structural_len(nodes: &[Node<'_>]) -> usize {
    let Some(first) = nodes.first() else {
        return 0;
    };
    let count = node_count(first);
    let mut n = count;
    for node in &nodes[..count.min(nodes.len())] {
        match *node {
            Node::Object { len, .. } => n += 1 + (2 * len).saturating_sub(1),
            Node::Array { len, .. } => n += 1 + len.saturating_sub(1),
            _ => {}
        }
    }
    n
}

impl<'t, 'i> Located<'t, 'i> {
    /// The root value of a tape.
    pub fn root(nodes: &'t [Node<'i>], value: Value<'t, 'i>) -> Self {
        Self {
            value,
            nodes,
            structural: 0,
            span: None,
        }
    }

    /// The value whose nodes start at `node` and whose first byte is structural
    /// `structural`; also how many tape nodes and structurals it spans.
    fn child(&self, value: Value<'t, 'i>, node: usize, structural: usize) -> (Self, usize, usize) {
        let nodes = self.nodes.get(node..).unwrap_or_default();
        let span = structural_len(nodes);
        let located = Located {
            value,
            nodes,
            structural,
            span: Some(span),
        };
        (located, nodes.first().map_or(1, node_count), span)
    }

    /// The entries of an object (nothing for any other value), each value located. The key is
    /// one node and one structural, then `:`; the value follows; then `,` (the same walk
    /// simd-json's own object iterator does over the nodes).
    pub fn entries(self) -> impl Iterator<Item = (&'i str, Located<'t, 'i>)> {
        let (mut node, mut structural) = (1, self.structural + 1);
        self.value
            .as_object()
            .into_iter()
            .flat_map(|o| o.iter())
            .map(move |(key, value)| {
                let (located, nodes, span) = self.child(value, node + 1, structural + 2);
                node += 1 + nodes;
                structural += 3 + span;
                (key, located)
            })
    }

    /// The items of an array (nothing for any other value), each located; `,` between them.
    pub fn items(self) -> impl Iterator<Item = Located<'t, 'i>> {
        let (mut node, mut structural) = (1, self.structural + 1);
        self.value
            .as_array()
            .into_iter()
            .flat_map(|a| a.iter())
            .map(move |value| {
                let (located, nodes, span) = self.child(value, node, structural);
                node += nodes;
                structural += 1 + span;
                located
            })
    }

    /// The bytes an object or array arrived as, or `None` for a scalar (or, defensively, when
    /// the located span does not start and end with the value's brackets).
    pub fn raw<'r>(&self, doc: Doc<'r>) -> Option<&'r [u8]> {
        let (open, close) = match self.nodes.first()? {
            Node::Object { .. } => (b'{', b'}'),
            Node::Array { .. } => (b'[', b']'),
            _ => return None,
        };
        let span = self.span.unwrap_or_else(|| structural_len(self.nodes));
        let last = self.structural + span - 1;
        let start = *doc.structurals.get(self.structural)? as usize;
        let end = *doc.structurals.get(last)? as usize;
        let bytes = doc.raw.get(start..=end)?;
        (bytes.first() == Some(&open) && bytes.last() == Some(&close)).then_some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use simd_json::{Buffers, INPUT_PADDING, Tape, fill_tape_padded};

    use super::*;

    /// Every object and array of `json`, with the bytes `raw` located for it.
    fn containers(json: &str) -> Vec<String> {
        let mut input = json.as_bytes().to_vec();
        input.resize(json.len() + INPUT_PADDING, b' ');
        let mut buffers = Buffers::new(json.len());
        let mut tape = Tape(Vec::new());
        fill_tape_padded(&mut input, json.len(), &mut buffers, &mut tape).unwrap();
        let doc = Doc::new(json.as_bytes(), buffers.structural_indexes());
        let mut out = Vec::new();
        fn walk(l: Located<'_, '_>, doc: Doc<'_>, out: &mut Vec<String>) {
            if let Some(raw) = l.raw(doc) {
                out.push(String::from_utf8(raw.to_vec()).unwrap());
            }
            for (_, v) in l.entries() {
                walk(v, doc, out);
            }
            for v in l.items() {
                walk(v, doc, out);
            }
        }
        walk(Located::root(&tape.0, tape.as_value()), doc, &mut out);
        out
    }

    #[test]
    fn locates_nested_objects_and_arrays_with_their_exact_bytes() {
        let json = r#" {"a": 1, "b" : {"c":[1, 2.5e3, {"d":"x\"}"}], "e":{}}, "f":[], "g":[[true,null],{}],"h":"]"} "#;
        assert_eq!(
            containers(json),
            [
                r#"{"a": 1, "b" : {"c":[1, 2.5e3, {"d":"x\"}"}], "e":{}}, "f":[], "g":[[true,null],{}],"h":"]"}"#,
                r#"{"c":[1, 2.5e3, {"d":"x\"}"}], "e":{}}"#,
                r#"[1, 2.5e3, {"d":"x\"}"}]"#,
                r#"{"d":"x\"}"}"#,
                "{}",
                "[]",
                "[[true,null],{}]",
                "[true,null]",
                "{}",
            ]
        );
    }

    #[test]
    fn locates_items_of_a_top_level_array() {
        let json = r#"[{"k":[1]},{"k":{"x":"y"}},"s",3,{}]"#;
        assert_eq!(
            containers(json),
            [
                json,
                r#"{"k":[1]}"#,
                "[1]",
                r#"{"k":{"x":"y"}}"#,
                r#"{"x":"y"}"#,
                "{}"
            ]
        );
    }
}
