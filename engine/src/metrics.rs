//! `forge metrics`: the numbers steps recorded, side by side — each step's latest result with a
//! matrix step's instances as columns, the same steps across a pipeline's last N runs, or two
//! runs compared (`forge metrics diff`). Values come from the action records in the store (what
//! `forge show` prints one step at a time); only numbers are shown.

use std::collections::BTreeMap;
use std::fmt::Write;

use clap::ValueEnum;
use forge_cache::{RunSummary, Store, StoreError};
use serde::Serialize;

use crate::plan::Plan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsFormat {
    /// One block per step, columns side by side.
    Table,
    /// One JSON array of `{step, column, metric, value}`.
    Json,
    /// `step,column,metric,value` rows.
    Csv,
}

/// One recorded number: a row group (a step, or a matrix step's base id), a column (a matrix
/// instance, a run), a metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    pub step: String,
    pub column: String,
    pub metric: String,
    pub value: f64,
}

/// Which steps and metrics to show (`--steps`, `--names`: glob patterns, `*` crossing `/`).
pub struct Filter {
    steps: Option<glob::Pattern>,
    names: Option<glob::Pattern>,
}

impl Filter {
    pub fn new(steps: Option<&str>, names: Option<&str>) -> Result<Self, String> {
        let pattern = |p: Option<&str>, flag: &str| {
            p.map(glob::Pattern::new)
                .transpose()
                .map_err(|e| format!("{flag}: {e}"))
        };
        Ok(Self {
            steps: pattern(steps, "--steps")?,
            names: pattern(names, "--names")?,
        })
    }
    fn step(&self, id: &str) -> bool {
        self.steps.as_ref().is_none_or(|p| p.matches(id))
    }
    fn name(&self, metric: &str) -> bool {
        self.names.as_ref().is_none_or(|p| p.matches(metric))
    }
}

/// `p.s[v=a]` → (`p.s`, `v=a`); a plain step → (`p.s`, `value`).
fn split_instance(id: &str) -> (&str, &str) {
    match id.split_once('[') {
        Some((base, rest)) => (base, rest.trim_end_matches(']')),
        None => (id, "value"),
    }
}

/// The numbers of the action `key` recorded, filtered, as cells of `step`/`column`.
fn cells_of(
    store: &Store,
    key: &forge_cache::StepKey,
    step: &str,
    column: &str,
    filter: &Filter,
    out: &mut Vec<Cell>,
) -> Result<(), StoreError> {
    let Some(rec) = store.read_action(key)? else {
        return Ok(());
    };
    for (metric, v) in &rec.metrics {
        if let Some(value) = v.as_f64().filter(|_| filter.name(metric)) {
            out.push(Cell {
                step: step.into(),
                column: column.into(),
                metric: metric.clone(),
                value,
            });
        }
    }
    Ok(())
}

/// Each step's latest result, in run order; a matrix step's instances become columns.
pub fn latest(store: &Store, plan: &Plan, filter: &Filter) -> Result<Vec<Cell>, StoreError> {
    let mut out = Vec::new();
    for &i in &plan.order {
        let id = &plan.steps[i].id;
        if !filter.step(id) {
            continue;
        }
        if let Some(r) = store.step_ref(&plan.pipeline.name, id)? {
            let (base, column) = split_instance(id);
            cells_of(store, &r.key, base, column, filter, &mut out)?;
        }
    }
    Ok(out)
}

/// The pipeline's last `n` runs as columns (run ids), oldest first.
pub fn across_runs(
    store: &Store,
    plan: &Plan,
    n: usize,
    filter: &Filter,
) -> Result<Vec<Cell>, StoreError> {
    let runs: Vec<RunSummary> = store
        .runs()?
        .into_iter()
        .filter(|r| r.pipeline == plan.pipeline.name)
        .collect();
    let runs = &runs[runs.len().saturating_sub(n)..];
    let mut out = Vec::new();
    for &i in &plan.order {
        let id = &plan.steps[i].id;
        if !filter.step(id) {
            continue;
        }
        // A step cached across runs has one action: read it once, copy its cells per run.
        let mut by_key: BTreeMap<forge_cache::StepKey, Vec<Cell>> = BTreeMap::new();
        for run in runs {
            let Some(key) = run.steps.iter().find(|s| &s.id == id).and_then(|s| s.key) else {
                continue;
            };
            let cells = match by_key.entry(key) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let mut cells = Vec::new();
                    cells_of(store, &key, id, "", filter, &mut cells)?;
                    e.insert(cells)
                }
            };
            out.extend(cells.iter().map(|c| Cell {
                column: run.id.clone(),
                ..c.clone()
            }));
        }
    }
    Ok(out)
}

/// The run whose id is `id` or starts with it (when only one does).
pub fn find_run(store: &Store, id: &str) -> Result<Result<RunSummary, String>, StoreError> {
    let runs = store.runs()?;
    if let Some(r) = runs.iter().find(|r| r.id == id) {
        return Ok(Ok(r.clone()));
    }
    let found: Vec<&RunSummary> = runs.iter().filter(|r| r.id.starts_with(id)).collect();
    Ok(match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!("no run `{id}` in the store")),
        many => Err(format!(
            "`{id}` names {} runs ({}); give more of the id",
            many.len(),
            many.iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    })
}

/// Two runs' numbers for the steps either recorded, as columns `a.id` and `b.id`.
pub fn diff(
    store: &Store,
    a: &RunSummary,
    b: &RunSummary,
    filter: &Filter,
) -> Result<Vec<Cell>, StoreError> {
    let mut ids: Vec<&str> = Vec::new();
    for s in a.steps.iter().chain(&b.steps) {
        if !ids.contains(&s.id.as_str()) && filter.step(&s.id) {
            ids.push(&s.id);
        }
    }
    let mut out = Vec::new();
    for id in ids {
        for run in [a, b] {
            if let Some(key) = run.steps.iter().find(|s| s.id == id).and_then(|s| s.key) {
                cells_of(store, &key, id, &run.id, filter, &mut out)?;
            }
        }
    }
    Ok(out)
}

/// A number in at most 6 significant digits, scientific outside [1e-3, 1e6).
fn number(v: f64) -> String {
    if v == 0.0 || (1e-3..1e6).contains(&v.abs()) {
        let s = format!(
            "{:.*}",
            (5 - v.abs().log10().floor().max(0.0) as usize).min(5),
            v
        );
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        if s == "-0" { "0".into() } else { s }
    } else {
        format!("{v:.3e}")
    }
}

/// `cells` in `format`. With `change`, a last column gives the second column minus the first
/// (and the relative change), for `metrics diff`.
pub fn render(cells: &[Cell], format: MetricsFormat, change: bool) -> String {
    match format {
        MetricsFormat::Json => serde_json::to_string_pretty(cells).expect("json") + "\n",
        MetricsFormat::Csv => {
            let field = |s: &str| {
                if s.contains([',', '"', '\n']) {
                    format!("\"{}\"", s.replace('"', "\"\""))
                } else {
                    s.to_string()
                }
            };
            let mut out = String::from("step,column,metric,value\n");
            for c in cells {
                let _ = writeln!(
                    out,
                    "{},{},{},{}",
                    field(&c.step),
                    field(&c.column),
                    field(&c.metric),
                    c.value
                );
            }
            out
        }
        MetricsFormat::Table => table(cells, change),
    }
}

fn table(cells: &[Cell], change: bool) -> String {
    if cells.is_empty() {
        return "No recorded metrics match (has the pipeline been applied?)\n".into();
    }
    // Steps in first-seen order; per step its columns and metrics in first-seen order.
    let mut steps: Vec<&str> = Vec::new();
    for c in cells {
        if !steps.contains(&c.step.as_str()) {
            steps.push(&c.step);
        }
    }
    let mut out = String::new();
    for step in steps {
        let mine: Vec<&Cell> = cells.iter().filter(|c| c.step == step).collect();
        let mut columns: Vec<&str> = Vec::new();
        let mut metrics: Vec<&str> = Vec::new();
        let mut at: BTreeMap<(&str, &str), f64> = BTreeMap::new();
        for c in &mine {
            if !columns.contains(&c.column.as_str()) {
                columns.push(&c.column);
            }
            if !metrics.contains(&c.metric.as_str()) {
                metrics.push(&c.metric);
            }
            at.insert((c.metric.as_str(), c.column.as_str()), c.value);
        }
        let mut header: Vec<String> = columns.iter().map(|c| (*c).to_string()).collect();
        let show_change = change && columns.len() == 2;
        if show_change {
            header.push("change".into());
        }
        let rows: Vec<(String, Vec<String>)> = metrics
            .iter()
            .map(|m| {
                let mut vals: Vec<String> = columns
                    .iter()
                    .map(|c| at.get(&(*m, *c)).map_or("—".into(), |v| number(*v)))
                    .collect();
                if show_change {
                    let pair = (at.get(&(*m, columns[0])), at.get(&(*m, columns[1])));
                    vals.push(match pair {
                        (Some(a), Some(b)) if a == b => "=".into(),
                        (Some(a), Some(b)) if *a != 0.0 => {
                            format!("{} ({:+.1}%)", signed(b - a), (b - a) / a.abs() * 100.0)
                        }
                        (Some(a), Some(b)) => signed(b - a),
                        _ => "—".into(),
                    });
                }
                ((*m).to_string(), vals)
            })
            .collect();
        let name_w = rows
            .iter()
            .map(|r| r.0.chars().count() + 2)
            .max()
            .unwrap_or(0)
            .max(step.chars().count());
        let widths: Vec<usize> = (0..header.len())
            .map(|j| {
                rows.iter()
                    .map(|r| r.1[j].chars().count())
                    .chain([header[j].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let _ = write!(out, "{step:<name_w$}");
        for (h, w) in header.iter().zip(&widths) {
            let _ = write!(out, "  {h:>w$}");
        }
        out.push('\n');
        for (m, vals) in rows {
            let _ = write!(out, "  {m:<w$}", w = name_w.saturating_sub(2));
            for (v, w) in vals.iter().zip(&widths) {
                let _ = write!(out, "  {v:>w$}");
            }
            out.push('\n');
        }
    }
    out
}

fn signed(v: f64) -> String {
    let s = number(v);
    if v > 0.0 { format!("+{s}") } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(step: &str, column: &str, metric: &str, value: f64) -> Cell {
        Cell {
            step: step.into(),
            column: column.into(),
            metric: metric.into(),
            value,
        }
    }

    #[test]
    fn numbers_keep_six_significant_digits() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(number(8.338828), "8.33883");
        assert_eq!(number(123456.7), "123457");
        assert_eq!(number(0.0123456), "0.01235");
        assert_eq!(number(1.5e-5), "1.500e-5");
        assert_eq!(number(-3.0), "-3");
    }

    #[test]
    fn a_table_puts_instances_side_by_side_and_a_diff_gives_the_change() {
        let cells = vec![
            cell("p.m", "v=a", "val/loss", 2.0),
            cell("p.m", "v=b", "val/loss", 2.5),
            cell("p.m", "v=b", "act/halt", 1.0),
        ];
        let t = render(&cells, MetricsFormat::Table, false);
        assert_eq!(
            t,
            "p.m         v=a  v=b\n  val/loss    2  2.5\n  act/halt    —    1\n"
        );
        let d = render(&cells, MetricsFormat::Table, true);
        assert!(d.contains("change") && d.contains("+0.5 (+25.0%)"), "{d}");
        let csv = render(&cells[..1], MetricsFormat::Csv, false);
        assert_eq!(csv, "step,column,metric,value\np.m,v=a,val/loss,2\n");
    }
}
