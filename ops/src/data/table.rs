//! Tables into records: the rows of downloaded files (parquet, jsonl, json) become forge
//! [`Record`]s through Jinja templates, so a Hugging Face dataset of any column layout can feed
//! `train`, `tokenizer` and `merge` like a built-in one.
//!
//! A [`RecordTemplate`] names the category and difficulty of the table's records and gives three
//! templates (minijinja, i.e. Jinja2 syntax) over a row's columns: the prompt, the exact answer and
//! the training text. Undefined columns are errors that list the row's columns, never silent
//! blanks. Rows are read one at a time (parquet row by row, jsonl line by line), so a table larger
//! than memory converts; rows whose prompt renders empty are skipped, and repeated prompts are kept
//! once. Splits are either fixed (the file is a `test` split on the hub) or drawn from the prompt's
//! hash as for built-in data, so the same question never lands in two splits.

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Category, Record, Split, split_of};

/// Bumped whenever conversion results would change; part of the key of every `records:` download.
pub const CONVERT_VERSION: u32 = 1;

/// How a table's rows become records (the `records:` block of `download`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordTemplate {
    /// Category of every record: what `mix` weights and the curriculum picks by.
    pub category: Category,
    /// Difficulty of every record, 1 (easiest) to 3: the curriculum stage it belongs to.
    #[serde(default = "default_difficulty")]
    pub difficulty: u8,
    /// Jinja template of the question over the row's columns, e.g. `"{{ question }}"`.
    pub prompt: String,
    /// Jinja template of the exact answer, e.g. `"{{ (answer | split('####')) | last | trim }}"`;
    /// empty for plain text corpora.
    #[serde(default)]
    pub answer: String,
    /// Jinja template of the text a model trains on (default: the prompt, a newline, the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The split of every row: `auto` draws it from the prompt's hash (`val_fraction`,
    /// `test_fraction`), `train`/`val`/`test` keep the hub's split.
    #[serde(default)]
    pub split: SplitChoice,
    /// Keep at most this many records (the first ones, in file order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

fn default_difficulty() -> u8 {
    2
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SplitChoice {
    #[default]
    Auto,
    Train,
    Val,
    Test,
}

/// A template problem, with the field it came from (`prompt`, `answer`, `text`, `difficulty`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    pub field: &'static str,
    pub message: String,
}

/// A conversion failure: a file that cannot be read, a row a template cannot render.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a parquet table: {message}", path.display())]
    Parquet { path: PathBuf, message: String },
    #[error("{}:{line}: not a JSON object: {message}", path.display())]
    Json {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: row {row}: `records.{field}`: {message}", path.display())]
    Render {
        path: PathBuf,
        row: u64,
        field: &'static str,
        message: String,
    },
    #[error("no table files (.parquet, .jsonl, .json) in the download")]
    NoTables,
    #[error("`records.{field}`: {message}", field = .0.field, message = .0.message)]
    Template(#[from] TemplateError),
}

impl RecordTemplate {
    /// Check the settings and compile every template (the `check` of `download`).
    pub fn check(&self) -> Result<(), TemplateError> {
        if !(1..=3).contains(&self.difficulty) {
            return Err(TemplateError {
                field: "difficulty",
                message: format!("difficulty is 1, 2 or 3, not {}", self.difficulty),
            });
        }
        if self.limit == Some(0) {
            return Err(TemplateError {
                field: "limit",
                message: "`limit: 0` would keep no records".into(),
            });
        }
        Templates::compile(self).map(drop)
    }
}

/// The compiled templates of a [`RecordTemplate`].
struct Templates {
    env: Environment<'static>,
    /// Whether a `text` template was given (else text is the prompt, a newline, the answer).
    has_text: bool,
}

impl Templates {
    fn compile(t: &RecordTemplate) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Records are plain text: no HTML escaping.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        let sources = [("prompt", &t.prompt), ("answer", &t.answer)]
            .into_iter()
            .chain(t.text.as_ref().map(|text| ("text", text)));
        for (name, src) in sources {
            env.add_template_owned(name, src.clone())
                .map_err(|e| TemplateError {
                    field: name,
                    message: describe(&e),
                })?;
        }
        Ok(Self {
            env,
            has_text: t.text.is_some(),
        })
    }

    /// Render one row: (prompt, answer, text), each trimmed.
    fn render(&self, row: &Value) -> Result<[String; 3], (&'static str, String)> {
        // Rows are objects (the readers make sure); their columns are the template's variables.
        // Converted once, rendered by every template.
        let ctx = minijinja::Value::from(minijinja::value::Serde(row));
        let render = |name: &'static str| {
            let tmpl = self.env.get_template(name).expect("compiled");
            tmpl.render(&ctx)
                .map(|s| s.trim().to_owned())
                .map_err(|e| (name, describe_with(&e, row)))
        };
        let (prompt, answer) = (render("prompt")?, render("answer")?);
        let text = if self.has_text {
            render("text")?
        } else {
            format!("{prompt}\n{answer}").trim().to_owned()
        };
        Ok([prompt, answer, text])
    }
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

fn describe_with(e: &minijinja::Error, row: &Value) -> String {
    let mut s = describe(e);
    if e.kind() == minijinja::ErrorKind::UndefinedError
        && let Value::Object(m) = row
    {
        let cols: Vec<&str> = m.keys().map(String::as_str).collect();
        s.push_str(&format!(" (the row's columns: {})", cols.join(", ")));
    }
    s
}

/// What [`convert`] wrote: records per split.
#[derive(Debug, Default)]
pub struct Converted {
    pub splits: BTreeMap<Split, Vec<Record>>,
    /// Rows read, rows skipped for an empty prompt, rows dropped as repeated prompts.
    pub rows: u64,
    pub empty: u64,
    pub repeated: u64,
}

/// The table files under `root` (a file or a directory), in path order.
pub fn table_files(root: &Path) -> Result<Vec<PathBuf>, ConvertError> {
    let io = |p: &Path| {
        let path = p.to_owned();
        move |source| ConvertError::Io { path, source }
    };
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).map_err(io(&p))? {
                stack.push(e.map_err(io(&p))?.path());
            }
        } else if table_format(&p).is_some() {
            out.push(p);
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(ConvertError::NoTables);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TableFormat {
    Parquet,
    JsonLines,
    Json,
}

fn table_format(p: &Path) -> Option<TableFormat> {
    match p.extension()?.to_str()? {
        "parquet" => Some(TableFormat::Parquet),
        "jsonl" => Some(TableFormat::JsonLines),
        "json" => Some(TableFormat::Json),
        _ => None,
    }
}

/// Convert the tables in `files` (in order) into records. `name` prefixes the record ids;
/// `progress` gets the number of rows read so far, every 10,000, and returns whether to go on
/// (told to stop, the records so far are returned; the caller, which asked, discards them).
pub fn convert(
    files: &[PathBuf],
    t: &RecordTemplate,
    name: &str,
    val_fraction: f64,
    test_fraction: f64,
    mut progress: impl FnMut(u64) -> bool,
) -> Result<Converted, ConvertError> {
    let templates = Templates::compile(t)?;
    let mut out = Converted::default();
    let mut seen = HashSet::new();
    let mut kept = 0u64;
    for path in files {
        let mut row_no = 0u64;
        let mut each = |row: Value| -> Result<bool, ConvertError> {
            row_no += 1;
            out.rows += 1;
            if out.rows % 10_000 == 0 && !progress(out.rows) {
                return Ok(false);
            }
            let [prompt, answer, text] =
                templates
                    .render(&row)
                    .map_err(|(field, message)| ConvertError::Render {
                        path: path.clone(),
                        row: row_no,
                        field,
                        message,
                    })?;
            if prompt.is_empty() {
                out.empty += 1;
                return Ok(true);
            }
            if !seen.insert(blake3::hash(prompt.as_bytes())) {
                out.repeated += 1;
                return Ok(true);
            }
            let split = match t.split {
                SplitChoice::Auto => split_of(&prompt, val_fraction, test_fraction),
                SplitChoice::Train => Split::Train,
                SplitChoice::Val => Split::Val,
                SplitChoice::Test => Split::Test,
            };
            out.splits.entry(split).or_default().push(Record {
                id: format!("{name}-{kept:07}"),
                category: t.category.name().into(),
                difficulty: t.difficulty,
                prompt,
                answer,
                text,
            });
            kept += 1;
            Ok(t.limit.is_none_or(|l| kept < l))
        };
        let more = match table_format(path).expect("listed tables have a format") {
            TableFormat::Parquet => read_parquet(path, &mut each)?,
            TableFormat::JsonLines => read_json_lines(path, &mut each)?,
            TableFormat::Json => read_json(path, &mut each)?,
        };
        if !more {
            break;
        }
    }
    Ok(out)
}

/// Feed each row of a parquet file to `each` until it returns `false`; returns whether to go on.
fn read_parquet(
    path: &Path,
    each: &mut impl FnMut(Value) -> Result<bool, ConvertError>,
) -> Result<bool, ConvertError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let bad = |e: parquet::errors::ParquetError| ConvertError::Parquet {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(|source| ConvertError::Io {
        path: path.to_owned(),
        source,
    })?;
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    for row in reader.get_row_iter(None).map_err(bad)? {
        if !each(row.map_err(bad)?.to_json_value())? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn read_json_lines(
    path: &Path,
    each: &mut impl FnMut(Value) -> Result<bool, ConvertError>,
) -> Result<bool, ConvertError> {
    let io = |source| ConvertError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let row = json_object(&line, path, n + 1)?;
        if !each(row)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A `.json` file: an array of row objects (or one object).
fn read_json(
    path: &Path,
    each: &mut impl FnMut(Value) -> Result<bool, ConvertError>,
) -> Result<bool, ConvertError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConvertError::Io {
        path: path.to_owned(),
        source,
    })?;
    let rows = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(rows)) => rows,
        Ok(v @ Value::Object(_)) => vec![v],
        Ok(_) => return Err(json_error(path, 1, "expected an array of objects".into())),
        Err(e) => return Err(json_error(path, e.line(), e.to_string())),
    };
    for row in rows {
        if !row.is_object() {
            return Err(json_error(
                path,
                1,
                "an array element is not an object".into(),
            ));
        }
        if !each(row)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn json_object(line: &str, path: &Path, n: usize) -> Result<Value, ConvertError> {
    match serde_json::from_str::<Value>(line) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(json_error(path, n, "expected an object".into())),
        Err(e) => Err(json_error(path, n, e.to_string())),
    }
}

fn json_error(path: &Path, line: usize, message: String) -> ConvertError {
    ConvertError::Json {
        path: path.to_owned(),
        line,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(prompt: &str, answer: &str) -> RecordTemplate {
        RecordTemplate {
            category: Category::Math,
            difficulty: 2,
            prompt: prompt.into(),
            answer: answer.into(),
            text: None,
            split: SplitChoice::Train,
            limit: None,
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn gsm8k_style_rows_become_records() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "t.jsonl",
            concat!(
                r#"{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"}"#,
                "\n\n",
                r#"{"question": "What is 6 times 7?", "answer": "6 * 7 = 42\n#### 42"}"#,
                "\n"
            ),
        );
        let t = RecordTemplate {
            text: Some("Q: {{ question }}\nA: {{ answer }}".into()),
            ..template(
                "{{ question }}",
                "{{ (answer | split('####')) | last | trim }}",
            )
        };
        let c = convert(&[f], &t, "gsm8k", 0.0, 0.0, |_| true).unwrap();
        let train = &c.splits[&Split::Train];
        assert_eq!(train.len(), 2);
        assert_eq!(train[0].id, "gsm8k-0000000");
        assert_eq!(train[0].answer, "7");
        assert_eq!(train[1].answer, "42");
        assert_eq!(train[1].prompt, "What is 6 times 7?");
        assert_eq!(
            train[1].text,
            "Q: What is 6 times 7?\nA: 6 * 7 = 42\n#### 42"
        );
        assert_eq!(train[0].category, "math");
        assert_eq!(c.rows, 2);
    }

    #[test]
    fn default_text_is_prompt_then_answer_and_choices_render() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "arc.json",
            r#"[{"question": "Which is a metal?", "choices": {"text": ["wood", "iron"], "label": ["A", "B"]}, "answerKey": "B"}]"#,
        );
        let t = template(
            "{{ question }}{% for c in choices.text %}\n({{ choices.label[loop.index0] }}) {{ c }}{% endfor %}",
            "{{ answerKey }}",
        );
        let c = convert(&[f], &t, "arc", 0.0, 0.0, |_| true).unwrap();
        let r = &c.splits[&Split::Train][0];
        assert_eq!(r.prompt, "Which is a metal?\n(A) wood\n(B) iron");
        assert_eq!(r.text, "Which is a metal?\n(A) wood\n(B) iron\nB");
    }

    #[test]
    fn missing_columns_name_the_row_and_the_columns() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "t.jsonl", "{\"q\": \"x\", \"a\": \"1\"}\n");
        let err = convert(&[f], &template("{{ question }}", ""), "t", 0.0, 0.0, |_| {
            true
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("row 1"), "{err}");
        assert!(err.contains("records.prompt"), "{err}");
        assert!(err.contains("the row's columns: a, q"), "{err}");
    }

    #[test]
    fn bad_templates_and_settings_fail_the_check() {
        let e = template("{{ question ", "").check().unwrap_err();
        assert_eq!(e.field, "prompt");
        let e = RecordTemplate {
            difficulty: 4,
            ..template("{{ q }}", "")
        }
        .check()
        .unwrap_err();
        assert_eq!(e.field, "difficulty");
    }

    #[test]
    fn empty_and_repeated_prompts_are_skipped_and_limit_stops_early() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = ["a", "", "a", "b", "c", "d"]
            .iter()
            .map(|t| format!("{{\"text\": \"{t}\"}}\n"))
            .collect();
        let f = write(dir.path(), "w.jsonl", &lines);
        let t = RecordTemplate {
            category: Category::Language,
            limit: Some(3),
            ..template("{{ text }}", "")
        };
        let c = convert(&[f], &t, "wiki", 0.0, 0.0, |_| true).unwrap();
        let texts: Vec<&str> = c.splits[&Split::Train]
            .iter()
            .map(|r| r.text.as_str())
            .collect();
        assert_eq!(texts, ["a", "b", "c"]);
        assert_eq!((c.empty, c.repeated, c.rows), (1, 1, 5));
    }

    #[test]
    fn auto_splits_follow_the_prompt_hash() {
        let dir = tempfile::tempdir().unwrap();
        let lines: String = (0..200)
            .map(|i| format!("{{\"q\": \"question {i}\"}}\n"))
            .collect();
        let f = write(dir.path(), "q.jsonl", &lines);
        let t = RecordTemplate {
            split: SplitChoice::Auto,
            ..template("{{ q }}", "")
        };
        let c = convert(&[f], &t, "q", 0.2, 0.1, |_| true).unwrap();
        for (split, recs) in &c.splits {
            for r in recs {
                assert_eq!(split_of(&r.prompt, 0.2, 0.1), *split);
            }
        }
        assert!(c.splits.len() == 3, "200 prompts fill all three splits");
    }

    /// A parquet file laid out as pyarrow writes the hub's tables: a string column and a struct of
    /// lists (ARC's `choices: {text: [..], label: [..]}`), with 3-level list encoding.
    #[test]
    fn parquet_rows_are_read_with_nested_columns() {
        use parquet::data_type::{ByteArray, ByteArrayType};
        use parquet::file::writer::SerializedFileWriter;
        use parquet::schema::parser::parse_message_type;
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test-00000-of-00001.parquet");
        let schema = Arc::new(
            parse_message_type(
                "message schema {
                  optional binary question (STRING);
                  optional group choices {
                    optional group text (LIST) { repeated group list { optional binary element (STRING); } }
                    optional group label (LIST) { repeated group list { optional binary element (STRING); } }
                  }
                  optional binary answerKey (STRING);
                }",
            )
            .unwrap(),
        );
        let bytes = |v: &[&str]| -> Vec<ByteArray> { v.iter().map(|s| (*s).into()).collect() };
        let file = std::fs::File::create(&path).unwrap();
        let mut w = SerializedFileWriter::new(file, schema, Default::default()).unwrap();
        let mut rg = w.next_row_group().unwrap();
        // (values, definition levels, repetition levels) per leaf column, two rows each.
        let columns: [(Vec<ByteArray>, Vec<i16>, Vec<i16>); 4] = [
            (
                bytes(&["Which is a metal?", "Which floats?"]),
                vec![1, 1],
                vec![],
            ),
            (
                bytes(&["wood", "iron", "stone", "cork", "lead"]),
                vec![4; 5],
                vec![0, 1, 0, 1, 1],
            ),
            (
                bytes(&["A", "B", "A", "B", "C"]),
                vec![4; 5],
                vec![0, 1, 0, 1, 1],
            ),
            (bytes(&["B", "B"]), vec![1, 1], vec![]),
        ];
        for (values, def, rep) in &columns {
            let mut col = rg.next_column().unwrap().unwrap();
            let rep = (!rep.is_empty()).then_some(rep.as_slice());
            col.typed::<ByteArrayType>()
                .write_batch(values, Some(def), rep)
                .unwrap();
            col.close().unwrap();
        }
        rg.close().unwrap();
        w.close().unwrap();

        let files = table_files(dir.path()).unwrap();
        let t = template(
            "{{ question }}{% for c in choices.text %} ({{ choices.label[loop.index0] }}) {{ c }}{% endfor %}",
            "{{ answerKey }}",
        );
        let c = convert(&files, &t, "arc", 0.0, 0.0, |_| true).unwrap();
        let recs = &c.splits[&Split::Train];
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].prompt, "Which is a metal? (A) wood (B) iron");
        assert_eq!(recs[1].prompt, "Which floats? (A) stone (B) cork (C) lead");
        assert_eq!(recs[1].answer, "B");
        assert_eq!(recs[0].id, "arc-0000000");
    }
}
