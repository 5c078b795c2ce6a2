//! A YAML loader that keeps source spans, so every diagnostic can point at `file:line:column`.
//!
//! serde_yaml discards positions (and is no longer maintained), so pipelines are read through
//! yaml-rust2's marked event stream into a small [`Node`] tree. The loader is defensive: files over
//! [`MAX_FILE_BYTES`], nesting deeper than [`MAX_DEPTH`], and aliases that would expand past
//! [`MAX_NODES`] nodes (the "billion laughs" bomb) fail fast with a clear error instead of eating
//! memory. Scalars resolve as in YAML 1.2's core schema; duplicate mapping keys are errors.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diag::{Diagnostic, Span};

pub const MAX_FILE_BYTES: usize = 4 << 20;
pub const MAX_NODES: usize = 100_000;
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order: (key, value).
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
    /// True for quoted scalars (never resolved to numbers or bools).
    pub quoted: bool,
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Int(_) => "an integer",
            NodeKind::Float(_) => "a number",
            NodeKind::Str(_) => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }
    /// Value for key `k` in a mapping.
    pub fn get(&self, k: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(key, _)| key.as_str() == Some(k))
            .map(|(_, v)| v)
    }
    fn size(&self) -> usize {
        1 + match &self.kind {
            NodeKind::Seq(v) => v.iter().map(Node::size).sum(),
            NodeKind::Map(m) => m.iter().map(|(k, v)| k.size() + v.size()).sum(),
            _ => 0,
        }
    }
    /// Convert to JSON (mapping keys become strings).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            NodeKind::Null => Value::Null,
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Int(i) => Value::from(*i),
            NodeKind::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            NodeKind::Str(s) => Value::String(s.clone()),
            NodeKind::Seq(v) => Value::Array(v.iter().map(Node::to_json).collect()),
            NodeKind::Map(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (key_string(k), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A mapping key as text.
pub fn key_string(k: &Node) -> String {
    match &k.kind {
        NodeKind::Str(s) => s.clone(),
        NodeKind::Int(i) => i.to_string(),
        NodeKind::Float(f) => f.to_string(),
        NodeKind::Bool(b) => b.to_string(),
        NodeKind::Null => "null".into(),
        _ => "<complex key>".into(),
    }
}

/// Resolve a plain scalar (YAML 1.2 core schema).
fn resolve_plain(s: &str) -> NodeKind {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return NodeKind::Null,
        "true" | "True" | "TRUE" => return NodeKind::Bool(true),
        "false" | "False" | "FALSE" => return NodeKind::Bool(false),
        ".inf" | "+.inf" | ".Inf" | ".INF" => return NodeKind::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return NodeKind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return NodeKind::Float(f64::NAN),
        _ => {}
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = s.parse::<i64>()
    {
        return NodeKind::Int(i);
    }
    if let Some(h) = s.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(h, 16)
    {
        return NodeKind::Int(i);
    }
    if let Some(o) = s.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(o, 8)
    {
        return NodeKind::Int(i);
    }
    let looks_numeric = digits
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric && let Ok(f) = s.parse::<f64>() {
        return NodeKind::Float(f);
    }
    NodeKind::Str(s.to_owned())
}

/// Maps yaml-rust2 markers (line 1-based, column in chars) to byte offsets.
struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, starts }
    }
    fn offset(&self, m: &Marker) -> usize {
        let line = m.line().saturating_sub(1).min(self.starts.len() - 1);
        let start = self.starts[line];
        let rest = &self.text[start..];
        start
            + rest
                .char_indices()
                .nth(m.col())
                .map(|(i, _)| i)
                .unwrap_or(rest.len())
    }
    /// Length of the token at `offset` up to the end of its line (for labels on collections).
    fn line_rest(&self, offset: usize) -> usize {
        self.text[offset..]
            .find('\n')
            .unwrap_or(self.text.len() - offset)
    }
}

enum Frame {
    Seq(Vec<Node>, Span, usize),
    Map(Vec<(Node, Node)>, Option<Node>, Span, usize),
}

struct Builder<'a> {
    idx: LineIndex<'a>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
    nodes: usize,
    error: Option<Diagnostic>,
}

impl Builder<'_> {
    fn fail(&mut self, d: Diagnostic) {
        if self.error.is_none() {
            self.error = Some(d);
        }
    }

    fn push_value(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(v, ..)) => v.push(node),
            Some(Frame::Map(entries, pending, ..)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => {
                    let dup = entries
                        .iter()
                        .find(|(k, _)| k.kind == key.kind && k.as_str().is_some())
                        .map(|(first, _)| first.span);
                    entries.push((key.clone(), node));
                    if let Some(first) = dup {
                        let name = key_string(&key);
                        let d = Diagnostic::error(format!("duplicate key `{name}`"))
                            .label(key.span, "defined again here")
                            .label(first, "first defined here")
                            .help("each key may appear once in a mapping; rename or remove one of them")
                            .code("yaml::duplicate-key");
                        self.fail(d);
                    }
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let offset = self.idx.offset(&mark);
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    let span = Span::new(offset, 3);
                    self.fail(
                        Diagnostic::error(
                            "a pipeline file holds one YAML document, this one has several",
                        )
                        .label(span, "second document starts here")
                        .help("remove the `---` separator or split the file")
                        .code("yaml::multiple-documents"),
                    );
                }
            }
            Event::Scalar(value, style, anchor, _tag) => {
                self.nodes += 1;
                let quoted = !matches!(style, TScalarStyle::Plain);
                let len = match style {
                    TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => value.len() + 2,
                    TScalarStyle::Plain => value.len(),
                    _ => self.idx.line_rest(offset),
                }
                .max(1)
                .min(self.idx.line_rest(offset).max(1));
                let kind = if quoted {
                    NodeKind::Str(value)
                } else {
                    resolve_plain(&value)
                };
                self.push_value(
                    Node {
                        kind,
                        span: Span::new(offset, len),
                        quoted,
                    },
                    anchor,
                );
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                self.nodes += 1;
                if self.stack.len() >= MAX_DEPTH {
                    self.fail(
                        Diagnostic::error(format!("the YAML nests deeper than {MAX_DEPTH} levels"))
                            .label(Span::new(offset, 1), "too deep here")
                            .code("yaml::too-deep"),
                    );
                    return;
                }
                let span = Span::new(offset, self.idx.line_rest(offset).max(1));
                self.stack.push(if matches!(ev, Event::SequenceStart(..)) {
                    Frame::Seq(Vec::new(), span, anchor)
                } else {
                    Frame::Map(Vec::new(), None, span, anchor)
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq(v, span, a)) => (
                        Node {
                            kind: NodeKind::Seq(v),
                            span,
                            quoted: false,
                        },
                        a,
                    ),
                    Some(Frame::Map(m, _, span, a)) => (
                        Node {
                            kind: NodeKind::Map(m),
                            span,
                            quoted: false,
                        },
                        a,
                    ),
                    None => return,
                };
                self.push_value(node, anchor);
            }
            Event::Alias(id) => {
                let Some(target) = self.anchors.get(&id).cloned() else {
                    self.fail(
                        Diagnostic::error("alias to an unknown anchor")
                            .label(Span::new(offset, 1), "here"),
                    );
                    return;
                };
                self.nodes += target.size();
                if self.nodes > MAX_NODES {
                    self.fail(
                        Diagnostic::error(format!(
                            "YAML aliases expand to more than {MAX_NODES} nodes; refusing to load (an alias bomb?)"
                        ))
                        .label(Span::new(offset, 1), "this alias pushed it over the limit")
                        .help("pipelines are small; avoid aliases that repeat large or nested anchors")
                        .code("yaml::alias-bomb"),
                    );
                    return;
                }
                let mut node = target;
                node.span = Span::new(offset, self.idx.line_rest(offset).max(1));
                self.push_value(node, 0);
            }
            _ => {}
        }
        if self.nodes > MAX_NODES && self.error.is_none() {
            self.fail(
                Diagnostic::error(format!(
                    "the YAML has more than {MAX_NODES} nodes; refusing to load"
                ))
                .label(Span::new(offset, 1), "limit reached here")
                .code("yaml::too-large"),
            );
        }
    }
}

/// Parse `text` into a single document's root node.
pub fn load(text: &str) -> Result<Node, Diagnostic> {
    if text.len() > MAX_FILE_BYTES {
        return Err(Diagnostic::error(format!(
            "the file is {:.1} MiB; pipeline files are limited to {} MiB",
            text.len() as f64 / (1u64 << 20) as f64,
            MAX_FILE_BYTES >> 20
        ))
        .label(Span::new(0, 1), "file starts here")
        .help("keep data out of the pipeline file: point a `download` step at it with `source: file:…`")
        .code("yaml::file-too-large"));
    }
    let mut b = Builder {
        idx: LineIndex::new(text),
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        documents: 0,
        nodes: 0,
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut b, true) {
        let m = e.marker();
        let offset = b.idx.offset(m);
        return Err(Diagnostic::error(format!("invalid YAML: {}", e.info()))
            .label(
                Span::new(offset.min(text.len().saturating_sub(1)), 1),
                "here",
            )
            .help("check indentation, quoting and that every `key:` is followed by a space")
            .code("yaml::syntax"));
    }
    if let Some(e) = b.error {
        return Err(e);
    }
    match b.root {
        Some(n) if n.kind != NodeKind::Null => Ok(n),
        _ => Err(Diagnostic::error("the pipeline file is empty")
            .label(Span::new(0, text.len().clamp(0, 1)), "nothing here")
            .help("start with `version: 1`, `name:` and `phases:`")
            .code("yaml::empty")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_core_schema_scalars_and_keeps_quoted_strings() {
        let n = load("a: 1\nb: 1.0e-3\nc: true\nd: '1'\ne: ~\nf: hello\ng: 0x10\n").unwrap();
        assert_eq!(n.get("a").unwrap().kind, NodeKind::Int(1));
        assert_eq!(n.get("b").unwrap().kind, NodeKind::Float(0.001));
        assert_eq!(n.get("c").unwrap().kind, NodeKind::Bool(true));
        assert_eq!(n.get("d").unwrap().kind, NodeKind::Str("1".into()));
        assert_eq!(n.get("e").unwrap().kind, NodeKind::Null);
        assert_eq!(n.get("f").unwrap().kind, NodeKind::Str("hello".into()));
        assert_eq!(n.get("g").unwrap().kind, NodeKind::Int(16));
    }

    #[test]
    fn spans_point_at_the_value() {
        let text = "name: x\nphases:\n  p:\n    op: exec\n";
        let n = load(text).unwrap();
        let op = n
            .get("phases")
            .unwrap()
            .get("p")
            .unwrap()
            .get("op")
            .unwrap();
        assert_eq!(&text[op.span.offset..op.span.offset + op.span.len], "exec");
    }

    #[test]
    fn alias_bomb_fails_fast() {
        let mut s = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = (b'a' + (i - 1) as u8) as char;
            let cur = (b'a' + i as u8) as char;
            s.push_str(&format!("{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let t = std::time::Instant::now();
        let e = load(&s).unwrap_err();
        assert!(e.message.contains("alias"), "{}", e.message);
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = load("a: 1\na: 2\n").unwrap_err();
        assert!(e.message.contains("duplicate key `a`"));
    }
}
