//! `download`: bring data into the store.
//!
//! Sources:
//! - `builtin:<name>` — a generated dataset (`math`, `qa`, `code`, `commonsense`, `language`,
//!   `mixed`, and Phase 3's `reasoning` traces; see [`crate::data`]) of `samples` distinct records, split into `train.jsonl`,
//!   `val.jsonl` and `test.jsonl` by `val_fraction`/`test_fraction`, deterministic from the seed;
//!   `mix` weights the categories of `mixed`. A `manifest.json` gives the counts.
//! - `file:<path>` — a file or directory (relative to the pipeline file). Its *content digest* is
//!   part of the step key, so editing the file re-runs the step and everything downstream.
//! - `https:` / `http:` — needs a pinned `digest` (`blake3:…` or `sha256:…`), so the key is known
//!   without the network and the bytes are checked. Resumable and retried (see [`crate::fetch`]).
//! - `hf:datasets/<org>/<name>[@rev]/<path>` (or `hf:<org>/<model>[@rev]/<path>`) — a file on the
//!   Hugging Face hub, fetched from `<endpoint>/datasets/<org>/<name>/resolve/<rev>/<path>`. The
//!   endpoint is `endpoint:`, else `$HF_ENDPOINT`, else `https://huggingface.co`; `$HF_TOKEN` is
//!   sent as a bearer token and never logged. Without a `digest` the key holds only the URL, so
//!   pin a commit as `@rev` to keep results reproducible.
//!
//! With `records:` (a [`RecordTemplate`]) a downloaded table — parquet, jsonl or json, e.g. a
//! dataset file from the hub — is converted into `train/val/test.jsonl` records by Jinja templates
//! over its columns, instead of being stored as it came; see [`crate::data::table`].
//!
//! Archives (`.tar`, `.tar.gz`/`.tgz`, `.zip`) are extracted by default (`extract: auto`), refusing
//! absolute paths, `..` and links. The output `data` holds the file (under its own name) or the
//! extracted tree.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use std::collections::BTreeMap;

use crate::artifact::{ArtifactKind, InputSignature, OutputSpec, StepInputs};
use crate::context::StepContext;
use crate::data::table::{self, RecordTemplate};
use crate::data::{self, Category, Record, Split};
use crate::error::{OpError, ParamsError};
use crate::fetch::archive::{ArchiveFormat, extract};
use crate::fetch::{FetchRequest, Pin, fetch};
use crate::op::{KeyContext, StepOutcome, TypedOp, resolve_path};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Extract {
    /// Extract when the name ends in `.tar`, `.tar.gz`, `.tgz` or `.zip`.
    #[default]
    Auto,
    None,
    Tar,
    TarGz,
    Zip,
}

/// Parameters of `download`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DownloadParams {
    /// Where the data comes from: `file:<path>`, `https://…`, `http://…` or `hf:datasets/<org>/<name>[@rev]/<path>`.
    pub source: String,
    /// Pinned content digest, `blake3:<hex>` or `sha256:<hex>`. Required for `http(s):` sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Archive extraction.
    #[serde(default)]
    pub extract: Extract,
    /// Refuse downloads larger than this many bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Artifact kind of the `data` output.
    #[serde(default = "dataset")]
    pub kind: ArtifactKind,
    /// Hugging Face endpoint for `hf:` sources (default `$HF_ENDPOINT` or https://huggingface.co).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `builtin:` only: number of distinct records over all splits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// `builtin:mixed` only: category weights (default: equal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<BTreeMap<Category, f64>>,
    /// Convert the downloaded table (parquet, jsonl, json) into dataset records with these
    /// templates; without it the file is stored as it came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<RecordTemplate>,
    /// `builtin:` and `records:` (for `split: auto`): fraction of records in the validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_fraction: Option<f64>,
    /// `builtin:` and `records:` (for `split: auto`): fraction of records in the test split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_fraction: Option<f64>,
}

const DEFAULT_SPLIT_FRACTION: f64 = 0.05;

fn default_max_bytes() -> u64 {
    64 << 30
}
fn dataset() -> ArtifactKind {
    ArtifactKind::Dataset
}

/// A parsed `source:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Builtin(String),
    File(String),
    Http(String),
    HuggingFace {
        repo_path: String,
        revision: String,
        file: String,
    },
}

impl Source {
    pub fn parse(s: &str) -> Result<Self, ParamsError> {
        let err = |m: String| ParamsError::at(&["source"], m);
        if let Some(name) = s.strip_prefix("builtin:") {
            if !["mixed", "reasoning"].contains(&name) && Category::parse(name).is_none() {
                let names: Vec<&str> = Category::ALL
                    .iter()
                    .map(|c| c.name())
                    .chain(["mixed", "reasoning"])
                    .collect();
                return Err(err(format!("unknown built-in dataset `{name}`"))
                    .with_hint(format!("built-in datasets: {}", names.join(", "))));
            }
            Ok(Self::Builtin(name.to_owned()))
        } else if let Some(p) = s.strip_prefix("file:") {
            if p.is_empty() {
                return Err(err("`file:` needs a path".into()));
            }
            Ok(Self::File(p.to_owned()))
        } else if s.starts_with("https://") || s.starts_with("http://") {
            Ok(Self::Http(s.to_owned()))
        } else if let Some(rest) = s.strip_prefix("hf:") {
            let (prefix, rest) = match rest.strip_prefix("datasets/") {
                Some(r) => ("datasets/", r),
                None => ("", rest),
            };
            let mut parts = rest.splitn(3, '/');
            let (org, name, file) = (parts.next(), parts.next(), parts.next());
            let (Some(org), Some(name), Some(file)) = (org, name, file) else {
                return Err(err(format!(
                    "`{s}` is not `hf:datasets/<org>/<name>[@rev]/<path>`"
                ))
                .with_hint(
                    "for example hf:datasets/openai/gsm8k@main/main/train-00000-of-00001.parquet",
                ));
            };
            if org.is_empty() || name.is_empty() || file.is_empty() {
                return Err(err(format!("`{s}` has an empty part")));
            }
            let (name, revision) = match name.split_once('@') {
                Some((n, r)) => (n, r.replace("%2F", "/").replace("%2f", "/")),
                None => (name, "main".to_owned()),
            };
            // Revisions under `refs/` have slashes of their own: `refs/convert/parquet` (the
            // hub's parquet export of every dataset) and `refs/pr/<n>`.
            let (revision, file) = if revision == "refs" {
                let mut rest = file.splitn(3, '/');
                match (rest.next(), rest.next(), rest.next()) {
                    (Some(a), Some(b), Some(f)) if !f.is_empty() => (format!("refs/{a}/{b}"), f),
                    _ => {
                        return Err(err(format!("`{s}` has a `refs/…` revision but no file"))
                            .with_hint("e.g. hf:datasets/openai/gsm8k@refs/convert/parquet/main/train/0000.parquet"));
                    }
                }
            } else {
                (revision, file)
            };
            Ok(Self::HuggingFace {
                repo_path: format!("{prefix}{org}/{name}"),
                revision,
                file: file.to_owned(),
            })
        } else {
            let scheme = s.split(':').next().unwrap_or(s);
            Err(
                err(format!("unsupported source scheme in `{s}`")).with_hint(format!(
                    "use file:, https:, http: or hf: (`{scheme}:` is not one of them)"
                )),
            )
        }
    }

    /// The URL of a network source.
    pub fn url(&self, endpoint: Option<&str>) -> Option<String> {
        match self {
            Self::Builtin(_) | Self::File(_) => None,
            Self::Http(u) => Some(u.clone()),
            Self::HuggingFace {
                repo_path,
                revision,
                file,
            } => {
                let env = std::env::var("HF_ENDPOINT").ok();
                let base = endpoint
                    .map(str::to_owned)
                    .or(env)
                    .unwrap_or_else(|| "https://huggingface.co".into());
                Some(format!(
                    "{}/{repo_path}/resolve/{}/{file}",
                    base.trim_end_matches('/'),
                    revision.replace('/', "%2F")
                ))
            }
        }
    }
}

pub struct Download;

impl TypedOp for Download {
    type Params = DownloadParams;
    const NAME: &'static str = "download";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "Bring a file, directory, URL or Hugging Face file into the store";

    fn check(&self, p: &DownloadParams) -> Result<(), ParamsError> {
        let src = Source::parse(&p.source)?;
        let records = p.records.is_some();
        let builtin_only = [
            ("samples", p.samples.is_some()),
            ("mix", p.mix.is_some()),
            ("val_fraction", p.val_fraction.is_some() && !records),
            ("test_fraction", p.test_fraction.is_some() && !records),
            ("records", false),
        ];
        if let Source::Builtin(name) = &src {
            if p.samples.is_none_or(|n| n == 0) {
                return Err(ParamsError::at(
                    &["samples"],
                    "built-in datasets need `samples` (a positive count)",
                )
                .with_hint("e.g. `samples: 20000`"));
            }
            if p.mix.is_some() && name != "mixed" {
                return Err(ParamsError::at(
                    &["mix"],
                    "`mix` applies only to `builtin:mixed`",
                ));
            }
            if let Some(m) = &p.mix
                && (m.is_empty()
                    || m.values().any(|w| !w.is_finite() || *w < 0.0)
                    || m.values().sum::<f64>() <= 0.0)
            {
                return Err(ParamsError::at(
                    &["mix"],
                    "mix weights must be non-negative and not all zero",
                ));
            }
            if p.records.is_some() {
                return Err(
                    ParamsError::at(&["records"], "built-in datasets are records already")
                        .with_hint("`records:` converts a downloaded table; drop it here"),
                );
            }
            check_fractions(p)?;
        } else {
            if let Some((name, _)) = builtin_only.iter().find(|(_, set)| *set) {
                let hint = if name.ends_with("_fraction") {
                    " and to `records:`"
                } else {
                    ""
                };
                return Err(ParamsError::at(
                    &[name],
                    format!("`{name}` applies only to `builtin:` sources{hint}"),
                ));
            }
            if let Some(r) = &p.records {
                r.check().map_err(|e| {
                    ParamsError::at(&["records", e.field], e.message).with_hint(
                        "templates are Jinja over the table's columns, e.g. `{{ question }}`",
                    )
                })?;
                check_fractions(p)?;
            }
        }
        if let Some(d) = &p.digest {
            Pin::parse(d).map_err(|m| {
                ParamsError::at(&["digest"], m)
                    .with_hint("write `blake3:<64 hex>` or `sha256:<64 hex>`")
            })?;
        } else if matches!(src, Source::Http(_)) {
            return Err(ParamsError::at(&["source"], "http(s) sources need a pinned `digest`")
                .with_hint("add `digest: sha256:<hex>` (run `sha256sum` on the file) so the result is reproducible"));
        }
        Ok(())
    }

    fn inputs(&self, _p: &DownloadParams) -> InputSignature {
        InputSignature::Fixed(vec![])
    }

    /// A dataset carries no `metrics.json` (its record counts are the step's recorded metrics).
    fn metrics(&self, _p: &DownloadParams) -> Option<Vec<String>> {
        Some(Vec::new())
    }

    fn outputs(&self, p: &DownloadParams) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: "data".into(),
            kind: p.kind,
        }]
    }

    fn default_retries(&self) -> u32 {
        3
    }

    fn key_extras(&self, p: &DownloadParams, cx: &KeyContext<'_>) -> Result<Value, OpError> {
        let extra = match Source::parse(&p.source).map_err(|e| OpError::user(e.message))? {
            Source::File(rel) => {
                let path = resolve_path(cx.pipeline_dir, &rel);
                if !path.exists() {
                    return Err(OpError::user(format!(
                        "`{}` does not exist (source `{}`)",
                        path.display(),
                        p.source
                    )));
                }
                json!({ "content": cx.store.tree_digest_of(&path)?.to_hex() })
            }
            // Generated data changes only with the generators' code.
            Source::Builtin(_) => json!({ "generator_version": data::GENERATOR_VERSION }),
            // The pinned digest is in the params already; an unpinned hf: file is keyed by its URL.
            _ => Value::Null,
        };
        Ok(match &p.records {
            Some(_) => json!({ "source": extra, "records_version": table::CONVERT_VERSION }),
            None => extra,
        })
    }

    fn watch_paths(&self, p: &DownloadParams, pipeline_dir: &Path) -> Vec<PathBuf> {
        match Source::parse(&p.source) {
            Ok(Source::File(rel)) => vec![resolve_path(pipeline_dir, &rel)],
            _ => vec![],
        }
    }

    fn check_files(&self, p: &DownloadParams, pipeline_dir: &Path) -> Result<(), ParamsError> {
        match Source::parse(&p.source) {
            Ok(Source::File(rel)) if !resolve_path(pipeline_dir, &rel).exists() => Err(
                ParamsError::at(&["source"], format!("`{rel}` does not exist"))
                    .with_hint("a `file:` path is relative to the pipeline file's directory"),
            ),
            _ => Ok(()),
        }
    }

    fn run(
        &self,
        ctx: &StepContext,
        _inputs: &StepInputs,
        p: &DownloadParams,
    ) -> Result<StepOutcome, OpError> {
        let out = ctx.output_dir("data")?;
        let source = Source::parse(&p.source).map_err(|e| OpError::user(e.message))?;
        let pin = p
            .digest
            .as_deref()
            .map(Pin::parse)
            .transpose()
            .map_err(OpError::user)?;
        let (local, name): (PathBuf, String) = match &source {
            Source::Builtin(name) => return generate_builtin(ctx, name, p, &out),
            Source::File(rel) => {
                let path = resolve_path(ctx.pipeline_dir(), rel);
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if path.is_dir() {
                    if let Some(r) = &p.records {
                        return convert_tables(ctx, p, r, &source, &path, &name, &out);
                    }
                    copy_dir(ctx, &path, &out)?;
                    return Ok(outcome(&out));
                }
                if let Some(pin) = &pin {
                    let actual = pin.hash_file(&path)?;
                    if actual != pin.expected() {
                        return Err(OpError::user(format!(
                            "`{}` does not match its pinned digest {}:{} (it hashes to {actual})",
                            path.display(),
                            pin.algorithm(),
                            pin.expected()
                        )));
                    }
                }
                (path, name)
            }
            net => {
                let url = net
                    .url(p.endpoint.as_deref())
                    .expect("network source has a URL");
                let token = match net {
                    Source::HuggingFace { .. } => {
                        std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty())
                    }
                    _ => None,
                };
                let part = ctx.scratch_dir()?.join("download.part");
                let req = FetchRequest {
                    url: &url,
                    bearer_token: token,
                    max_bytes: p.max_bytes,
                    pin: pin.as_ref(),
                };
                let n = fetch(ctx, &req, &part)?;
                ctx.log(format!("downloaded {n} bytes from {url}"));
                let path_part = url.split(['?', '#']).next().unwrap_or(&url);
                let name = path_part
                    .rsplit('/')
                    .next()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("download")
                    .to_owned();
                (part, name)
            }
        };
        let format = match p.extract {
            Extract::Auto => ArchiveFormat::from_name(&name),
            Extract::None => None,
            Extract::Tar => Some(ArchiveFormat::Tar),
            Extract::TarGz => Some(ArchiveFormat::TarGz),
            Extract::Zip => Some(ArchiveFormat::Zip),
        };
        if let Some(r) = &p.records {
            let tables = match format {
                Some(f) => {
                    let dir = ctx.scratch_dir()?.join("extracted");
                    if dir.exists() {
                        std::fs::remove_dir_all(&dir).map_err(|e| OpError::io(&dir, e))?;
                    }
                    extract(&local, f, &dir)?;
                    dir
                }
                // A fetched file waits under a temporary name; the table reader goes by its own.
                None if local.file_name() != Some(name.as_ref()) => {
                    let named = ctx.scratch_dir()?.join(&name);
                    let _ = std::fs::remove_file(&named);
                    std::fs::hard_link(&local, &named)
                        .or_else(|_| std::fs::copy(&local, &named).map(drop))
                        .map_err(|e| OpError::io(&named, e))?;
                    named
                }
                None => local,
            };
            return convert_tables(ctx, p, r, &source, &tables, &name, &out);
        }
        if let Some(f) = format {
            let n = extract(&local, f, &out)?;
            ctx.log(format!("extracted {n} files from {name}"));
        } else {
            let dest = out.join(&name);
            std::fs::copy(&local, &dest).map_err(|e| OpError::io(&dest, e))?;
        }
        Ok(outcome(&out))
    }
}

fn check_fractions(p: &DownloadParams) -> Result<(), ParamsError> {
    let (v, t) = (
        p.val_fraction.unwrap_or(DEFAULT_SPLIT_FRACTION),
        p.test_fraction.unwrap_or(DEFAULT_SPLIT_FRACTION),
    );
    if !(0.0..1.0).contains(&v) || !(0.0..1.0).contains(&t) || v + t >= 1.0 {
        return Err(ParamsError::at(
            &["val_fraction"],
            "split fractions must be in [0, 1) and leave room for training data",
        ));
    }
    Ok(())
}

/// Generate a `builtin:` dataset into `out`.
fn generate_builtin(
    ctx: &StepContext,
    name: &str,
    p: &DownloadParams,
    out: &Path,
) -> Result<StepOutcome, OpError> {
    let samples = p.samples.expect("checked: builtin sources have samples");
    let counts = if let Some(c) = Category::parse(name) {
        BTreeMap::from([(c, samples)])
    } else {
        let weights = p
            .mix
            .clone()
            .unwrap_or_else(|| Category::ALL.iter().map(|&c| (c, 1.0)).collect());
        data::apportion(samples, &weights)
    };
    let spec = data::Spec {
        counts: counts.clone(),
        seed: ctx.seed(),
        val_fraction: p.val_fraction.unwrap_or(DEFAULT_SPLIT_FRACTION),
        test_fraction: p.test_fraction.unwrap_or(DEFAULT_SPLIT_FRACTION),
    };
    // Every 1,000 records: progress, and stop on Ctrl-C.
    let progress = |done| {
        ctx.progress(done, Some(samples), "records");
        !ctx.is_cancelled()
    };
    let splits = if name == "reasoning" {
        data::generate_reasoning(samples, &spec, progress)
    } else {
        data::generate(&spec, progress)
    }
    .map_err(|e| OpError::user(e.to_string()))?;
    ctx.check_cancelled()?;
    let manifest = serde_json::Map::from_iter([
        ("source".to_owned(), json!(format!("builtin:{name}"))),
        ("seed".to_owned(), json!(ctx.seed())),
        (
            "generator_version".to_owned(),
            json!(data::GENERATOR_VERSION),
        ),
    ]);
    write_records(out, &splits, manifest)
}

/// Convert the tables under `tables` (a file or directory) into records in `out`.
fn convert_tables(
    ctx: &StepContext,
    p: &DownloadParams,
    r: &RecordTemplate,
    source: &Source,
    tables: &Path,
    name: &str,
    out: &Path,
) -> Result<StepOutcome, OpError> {
    let files = table::table_files(tables).map_err(|e| OpError::user(e.to_string()))?;
    // Record ids start with the dataset's name (`hf:datasets/openai/gsm8k@…` → `gsm8k-0000000`),
    // else the file's (`train.parquet` → `train-0000000`).
    let stem = match source {
        Source::HuggingFace { repo_path, .. } => repo_path.rsplit('/').next().unwrap_or(name),
        _ => name.split('.').next().unwrap_or(name),
    };
    let stem = if stem.is_empty() { "row" } else { stem };
    let converted = table::convert(
        &files,
        r,
        stem,
        p.val_fraction.unwrap_or(DEFAULT_SPLIT_FRACTION),
        p.test_fraction.unwrap_or(DEFAULT_SPLIT_FRACTION),
        |rows| {
            ctx.progress(rows, None, "rows");
            !ctx.is_cancelled()
        },
    )
    .map_err(|e| OpError::user(e.to_string()))?;
    ctx.check_cancelled()?;
    let kept: usize = converted.splits.values().map(Vec::len).sum();
    ctx.log(format!(
        "converted {} rows of {} table file(s) into {kept} records ({} with an empty prompt, {} repeated prompts skipped)",
        converted.rows,
        files.len(),
        converted.empty,
        converted.repeated
    ));
    if kept == 0 {
        return Err(OpError::user(format!(
            "`records:` made no records from {} rows of `{}`",
            converted.rows, p.source
        )));
    }
    let manifest = serde_json::Map::from_iter([
        ("source".to_owned(), json!(p.source)),
        ("records".to_owned(), json!(r)),
        ("rows".to_owned(), json!(converted.rows)),
        ("skipped_empty".to_owned(), json!(converted.empty)),
        ("skipped_repeated".to_owned(), json!(converted.repeated)),
        ("records_version".to_owned(), json!(table::CONVERT_VERSION)),
    ]);
    write_records(out, &converted.splits, manifest)
}

/// Write `train/val/test.jsonl` and `manifest.json` (with counts per split and category) into
/// `out`; the record counts are the step's metrics.
fn write_records(
    out: &Path,
    splits: &BTreeMap<Split, Vec<Record>>,
    mut manifest: serde_json::Map<String, Value>,
) -> Result<StepOutcome, OpError> {
    let mut metrics = serde_json::Map::new();
    for split in [Split::Train, Split::Val, Split::Test] {
        let records = splits.get(&split).map(Vec::as_slice).unwrap_or_default();
        let path = out.join(format!("{}.jsonl", split.name()));
        let mut text = String::new();
        for r in records {
            text.push_str(&serde_json::to_string(r).expect("record serializes"));
            text.push('\n');
        }
        std::fs::write(&path, text).map_err(|e| OpError::io(&path, e))?;
        let mut per_category: BTreeMap<&str, u64> = BTreeMap::new();
        for r in records {
            *per_category.entry(r.category.as_str()).or_default() += 1;
        }
        manifest.insert(
            split.name().into(),
            json!({ "records": records.len(), "categories": per_category }),
        );
        metrics.insert(
            format!("data/{}_records", split.name()),
            records.len().into(),
        );
    }
    let path = out.join("manifest.json");
    let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    std::fs::write(&path, bytes).map_err(|e| OpError::io(&path, e))?;
    Ok(StepOutcome { metrics })
}

fn outcome(out: &Path) -> StepOutcome {
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut stack = vec![out.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => {
                    files += 1;
                    bytes += m.len();
                }
                Err(_) => {}
            }
        }
    }
    let mut metrics = serde_json::Map::new();
    metrics.insert("download/files".into(), files.into());
    metrics.insert("download/bytes".into(), bytes.into());
    StepOutcome { metrics }
}

/// Copy the tree at `from` into `to`, reporting bytes copied and stopping on cancellation
/// between files and every [`COPY_SLICE`] bytes of a large one.
fn copy_dir(ctx: &StepContext, from: &Path, to: &Path) -> Result<(), OpError> {
    let mut files = Vec::new();
    list_files(from, to, &mut files)?;
    let total: u64 = files.iter().map(|(_, _, len)| len).sum();
    let mut done = 0;
    for (src, dest, _) in files {
        let mut r = std::fs::File::open(&src).map_err(|e| OpError::io(&src, e))?;
        let mut w = std::fs::File::create(&dest).map_err(|e| OpError::io(&dest, e))?;
        loop {
            ctx.progress(done, Some(total), "bytes");
            ctx.check_cancelled()?;
            let n = std::io::copy(&mut std::io::Read::take(&mut r, COPY_SLICE), &mut w)
                .map_err(|e| OpError::io(&dest, e))?;
            done += n;
            if n < COPY_SLICE {
                break;
            }
        }
        // As `std::fs::copy` does: the copy keeps the file's permissions.
        let perms = r
            .metadata()
            .map_err(|e| OpError::io(&src, e))?
            .permissions();
        std::fs::set_permissions(&dest, perms).map_err(|e| OpError::io(&dest, e))?;
    }
    ctx.progress(done, Some(total), "bytes");
    Ok(())
}

/// How much of one file is copied between two looks at the cancel flag.
const COPY_SLICE: u64 = 256 << 20;

/// Every file under `from` with where it goes under `to` and its size; directories are made,
/// links refused.
fn list_files(
    from: &Path,
    to: &Path,
    out: &mut Vec<(PathBuf, PathBuf, u64)>,
) -> Result<(), OpError> {
    for e in std::fs::read_dir(from).map_err(|e| OpError::io(from, e))? {
        let e = e.map_err(|e| OpError::io(from, e))?;
        let ty = e.file_type().map_err(|x| OpError::io(&e.path(), x))?;
        let dest = to.join(e.file_name());
        if ty.is_symlink() {
            return Err(OpError::user(format!(
                "`{}` is a symbolic link; links are not copied",
                e.path().display()
            )));
        } else if ty.is_dir() {
            std::fs::create_dir_all(&dest).map_err(|x| OpError::io(&dest, x))?;
            list_files(&e.path(), &dest, out)?;
        } else {
            let len = e.metadata().map_err(|x| OpError::io(&e.path(), x))?.len();
            out.push((e.path(), dest, len));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Op;

    #[test]
    fn parses_sources() {
        assert_eq!(
            Source::parse("file:data/x.jsonl").unwrap(),
            Source::File("data/x.jsonl".into())
        );
        let hf = Source::parse("hf:datasets/openai/gsm8k@abc123/main/test.parquet").unwrap();
        assert_eq!(
            hf.url(Some("http://127.0.0.1:9/")).unwrap(),
            "http://127.0.0.1:9/datasets/openai/gsm8k/resolve/abc123/main/test.parquet"
        );
        for source in [
            "hf:datasets/openai/gsm8k@refs/convert/parquet/main/train/0000.parquet",
            "hf:datasets/openai/gsm8k@refs%2Fconvert%2Fparquet/main/train/0000.parquet",
        ] {
            assert_eq!(
                Source::parse(source)
                    .unwrap()
                    .url(Some("http://h"))
                    .unwrap(),
                "http://h/datasets/openai/gsm8k/resolve/refs%2Fconvert%2Fparquet/main/train/0000.parquet"
            );
        }
        assert!(Source::parse("hf:datasets/openai/gsm8k@refs/convert/parquet").is_err());
        let model = Source::parse("hf:gpt2/gpt2/config.json").unwrap();
        assert_eq!(
            model.url(Some("http://h")).unwrap(),
            "http://h/gpt2/gpt2/resolve/main/config.json"
        );
        assert!(
            Source::parse("ftp://x")
                .unwrap_err()
                .hint
                .unwrap()
                .contains("file:")
        );
        assert!(Source::parse("hf:datasets/only").is_err());
    }

    #[test]
    fn https_without_digest_is_rejected_at_validation() {
        let e = Download
            .parse_params(&json!({"source": "https://example.com/x.bin"}))
            .unwrap_err();
        assert!(e.message.contains("pinned"));
        let ok = Download
            .parse_params(&json!({"source": "https://example.com/x.bin", "digest": format!("sha256:{}", "0".repeat(64))}))
            .unwrap();
        assert_eq!(ok["extract"], json!("auto"));
        assert_eq!(ok["kind"], json!("dataset"));
    }
}
