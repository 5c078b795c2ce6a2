//! `forge dag`: the plan's step graph as text, Graphviz DOT or Mermaid — every step instance
//! (matrix instances apart), grouped by phase, with an edge per data input (labelled with the
//! input's name, and the upstream output's when it is not the step's only one) and a dashed edge
//! per `needs:` ordering.

use std::fmt::Write;

use clap::ValueEnum;

use crate::plan::Plan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DagFormat {
    /// One line per step in run order, with what it reads.
    Text,
    /// Graphviz (`forge dag -f dot | dot -Tsvg > dag.svg`).
    Dot,
    /// A Mermaid flowchart (renders in GitHub and GitLab Markdown).
    Mermaid,
}

/// One edge: from step, to step, label (`None` for a `needs:` ordering).
fn edges(plan: &Plan) -> Vec<(usize, usize, Option<String>)> {
    let mut out = Vec::new();
    for (to, s) in plan.steps.iter().enumerate() {
        for (name, ups) in &s.inputs {
            for u in ups {
                let from = &plan.steps[u.step];
                let label = if from.outputs.len() > 1 {
                    format!("{name} ({})", u.output)
                } else {
                    name.clone()
                };
                out.push((u.step, to, Some(label)));
            }
        }
        for &n in &s.needs {
            out.push((n, to, None));
        }
    }
    out
}

fn phase_of(id: &str) -> &str {
    id.split('.').next().unwrap_or(id)
}

/// The phases in file order, each with its steps in run order.
fn phases(plan: &Plan) -> Vec<(&str, Vec<usize>)> {
    let mut out: Vec<(&str, Vec<usize>)> = Vec::new();
    for s in &plan.steps {
        let p = phase_of(&s.id);
        if !out.iter().any(|(q, _)| *q == p) {
            out.push((p, Vec::new()));
        }
    }
    for &i in &plan.order {
        let p = phase_of(&plan.steps[i].id);
        if let Some((_, steps)) = out.iter_mut().find(|(q, _)| *q == p) {
            steps.push(i);
        }
    }
    out
}

/// The graph of `plan` in `format`.
pub fn render(plan: &Plan, format: DagFormat) -> String {
    match format {
        DagFormat::Text => text(plan),
        DagFormat::Dot => dot(plan),
        DagFormat::Mermaid => mermaid(plan),
    }
}

fn text(plan: &Plan) -> String {
    let edges = edges(plan);
    let width = plan.steps.iter().map(|s| s.id.len()).max().unwrap_or(0);
    let mut out = format!(
        "{} ({} steps, {} edges)\n",
        plan.pipeline.name,
        plan.steps.len(),
        edges.len()
    );
    for &i in &plan.order {
        let s = &plan.steps[i];
        // Per input (or `after` for `needs:`), the steps it reads, in edge order.
        let mut reads: Vec<(String, Vec<&str>)> = Vec::new();
        for (from, _, label) in edges.iter().filter(|(_, to, _)| *to == i) {
            let label = label.as_deref().unwrap_or("after");
            let from = plan.steps[*from].id.as_str();
            match reads.iter_mut().find(|(l, _)| l == label) {
                Some((_, froms)) => froms.push(from),
                None => reads.push((label.to_string(), vec![from])),
            }
        }
        let reads: Vec<String> = reads
            .into_iter()
            .map(|(label, froms)| match label.as_str() {
                "after" => format!("after {}", froms.join(", ")),
                _ => format!("{label} ← {}", froms.join(", ")),
            })
            .collect();
        let line = format!(
            "  {:<width$}  {:<9}  {}",
            s.id,
            s.op.name(),
            reads.join("; ")
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A DOT/Mermaid string literal's contents.
fn quoted(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn dot(plan: &Plan) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        quoted(&plan.pipeline.name)
    );
    for (k, (phase, steps)) in phases(plan).into_iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph cluster_{k} {{\n    label=\"{}\";",
            quoted(phase)
        );
        for i in steps {
            let s = &plan.steps[i];
            let _ = writeln!(
                out,
                "    s{i} [label=\"{}\\n{}\"];",
                quoted(&s.id),
                s.op.name()
            );
        }
        out.push_str("  }\n");
    }
    for (from, to, label) in edges(plan) {
        let _ = match label {
            Some(l) => writeln!(out, "  s{from} -> s{to} [label=\"{}\"];", quoted(&l)),
            None => writeln!(out, "  s{from} -> s{to} [style=dashed];"),
        };
    }
    out.push_str("}\n");
    out
}

/// Mermaid labels are quoted strings; `"` is written as `#quot;`.
fn mermaid_text(s: &str) -> String {
    s.replace('"', "#quot;")
}

fn mermaid(plan: &Plan) -> String {
    let mut out = String::from("flowchart LR\n");
    for (k, (phase, steps)) in phases(plan).into_iter().enumerate() {
        let _ = writeln!(out, "  subgraph p{k}[\"{}\"]", mermaid_text(phase));
        for i in steps {
            let s = &plan.steps[i];
            let _ = writeln!(
                out,
                "    s{i}[\"{}<br/><i>{}</i>\"]",
                mermaid_text(&s.id),
                s.op.name()
            );
        }
        out.push_str("  end\n");
    }
    for (from, to, label) in edges(plan) {
        let _ = match label {
            Some(l) => writeln!(out, "  s{from} -->|\"{}\"| s{to}", mermaid_text(&l)),
            None => writeln!(out, "  s{from} -.-> s{to}"),
        };
    }
    out
}
