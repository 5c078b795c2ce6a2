//! User-facing diagnostics: a message, labelled source spans and a hint, rendered miette-style
//! with `file:line:column`. Pipeline loading collects every problem it finds and reports them all
//! at once; nothing is written to the store when any is an error.

use std::fmt;
use std::sync::Arc;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};

/// A byte range in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub offset: usize,
    pub len: usize,
}

impl Span {
    pub fn new(offset: usize, len: usize) -> Self {
        Self { offset, len }
    }
}

/// One problem, with where it is and what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub message: String,
    pub labels: Vec<(Span, String)>,
    pub help: Option<String>,
    pub code: Option<&'static str>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            labels: Vec::new(),
            help: None,
            code: None,
        }
    }
    pub fn label(mut self, span: Span, text: impl Into<String>) -> Self {
        self.labels.push((span, text.into()));
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
    pub fn help_opt(mut self, help: Option<String>) -> Self {
        if help.is_some() {
            self.help = help;
        }
        self
    }
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

/// A loaded source file, for rendering.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as the user gave it.
    pub name: String,
    pub text: Arc<String>,
}

impl SourceFile {
    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rsplit('\n')
            .next()
            .map(|l| l.chars().count())
            .unwrap_or(0)
            + 1;
        (line, col)
    }
}

struct Rendered<'a> {
    d: &'a Diagnostic,
    src: NamedSource<Arc<String>>,
}

impl fmt::Debug for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.d.message)
    }
}
impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.d.message)
    }
}
impl std::error::Error for Rendered<'_> {}

impl miette::Diagnostic for Rendered<'_> {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.d.code.map(|c| Box::new(c) as Box<dyn fmt::Display>)
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.d
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        if self.d.labels.is_empty() {
            None
        } else {
            Some(&self.src)
        }
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.d.labels.is_empty() {
            return None;
        }
        Some(Box::new(self.d.labels.iter().enumerate().map(
            |(i, (s, t))| {
                let span = SourceSpan::new(s.offset.into(), s.len);
                if i == 0 {
                    LabeledSpan::new_primary_with_span(Some(t.clone()), span)
                } else {
                    LabeledSpan::new_with_span(Some(t.clone()), span)
                }
            },
        )))
    }
}

/// Render diagnostics for `file`, each followed by a blank line. `color` is for terminals only.
/// One diagnostic as a JSON object, for `--log-format json`: `{"event": "diagnostic",
/// "severity": "error", "code", "message", "file", "line", "column", "label", "hint"}`, where
/// `line`/`column` (1-based) and `label` are those of its first labelled span (null without one).
pub fn to_json(file: &SourceFile, d: &Diagnostic) -> serde_json::Value {
    let first = d.labels.first();
    let (line, column) = first.map(|(s, _)| file.line_col(s.offset)).unzip();
    serde_json::json!({
        "event": "diagnostic",
        "severity": "error",
        "code": d.code,
        "message": d.message,
        "file": file.name,
        "line": line,
        "column": column,
        "label": first.map(|(_, text)| text),
        "hint": d.help,
    })
}

pub fn render(file: &SourceFile, diags: &[Diagnostic], color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false);
    let mut out = String::new();
    for d in diags {
        let r = Rendered {
            d,
            src: NamedSource::new(file.name.clone(), file.text.clone()).with_language("yaml"),
        };
        let _ = handler.render_report(&mut out, &r);
        out.push('\n');
    }
    out
}

/// "did you mean `x`?" for the closest candidate, if any is close.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let best = candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < c.len().max(word.len()))
        .min_by_key(|(d, c)| (*d, c.len().abs_diff(word.len())))?;
    Some(format!("did you mean `{}`?", best.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_column_and_help() {
        let f = SourceFile {
            name: "p.yaml".into(),
            text: Arc::new("name: x\nphazes: {}\n".into()),
        };
        let d = Diagnostic::error("unknown key `phazes`")
            .label(Span::new(8, 6), "not a pipeline key")
            .help("did you mean `phases`?");
        let out = render(&f, &[d], false);
        assert!(out.contains("p.yaml:2:1"), "{out}");
        assert!(out.contains("did you mean `phases`?"), "{out}");
        assert_eq!(f.line_col(8), (2, 1));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("phazes", ["phases", "vars"]).as_deref(),
            Some("did you mean `phases`?")
        );
        assert_eq!(did_you_mean("zzzzzz", ["phases", "vars"]), None);
        assert_eq!(
            did_you_mean("=<", ["<", "<=", ">"]).as_deref(),
            Some("did you mean `<=`?")
        );
    }
}
