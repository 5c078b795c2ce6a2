//! `validate` (generic part): check thresholds on metric reports.
//!
//! Every input artifact may carry a `metrics.json` at its root: a JSON object of numbers, nested
//! objects flattened with `/` (`{"train": {"loss": 1.2}}` is `train/loss`). Each check names a
//! metric, a comparison and a value; `aggregate` says how several inputs combine (`each` input must
//! pass, or their `min`, `max`, `mean` or `spread` = max − min must). An `error` check that fails
//! fails the step with a message naming the metric, the value and the threshold; a `warn` check
//! raises an alert. The result is a `report` artifact (`report.json`, plus its own `metrics.json`).

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::artifact::{ArtifactKind, InputSignature, OutputSpec, StepInputs};
use crate::context::{AlertLevel, StepContext};
use crate::error::{OpError, ParamsError};
use crate::op::{StepOutcome, TypedOp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Comparison {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Comparison {
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Self::Lt => a < b,
            Self::Le => a <= b,
            Self::Gt => a > b,
            Self::Ge => a >= b,
            Self::Eq => a == b,
            Self::Ne => a != b,
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Eq => "==",
            Self::Ne => "!=",
        })
    }
}

/// What a failed check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The step fails (after writing its report).
    #[default]
    Error,
    /// A warning is shown and recorded; the step passes.
    Warn,
}

/// How a metric carried by several inputs is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// Every input carrying the metric must pass.
    #[default]
    Each,
    /// The smallest value over the inputs.
    Min,
    /// The largest value over the inputs.
    Max,
    /// The mean over the inputs.
    Mean,
    /// max − min over the inputs (e.g. the diversity of three variants).
    Spread,
}

/// One threshold.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Metric name, e.g. `train/loss`.
    pub metric: String,
    /// Comparison: the check passes when `<metric> <op> <value>`.
    pub op: Comparison,
    /// The threshold the metric is compared with.
    pub value: f64,
    /// `error` (default: a failed check fails the step) or `warn` (it is reported only).
    #[serde(default)]
    pub severity: Severity,
    /// How inputs that all carry the metric are checked: `each` (default), `min`, `max`, `mean`
    /// or `spread`.
    #[serde(default)]
    pub aggregate: Aggregate,
}

/// Parameters of `validate`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateParams {
    /// Thresholds to check.
    pub checks: Vec<Check>,
}

pub struct Validate;

#[derive(Debug, Clone, Serialize)]
struct CheckResult {
    metric: String,
    op: String,
    threshold: f64,
    severity: Severity,
    aggregate: Aggregate,
    /// Which input (step id) or aggregate produced `value`.
    source: String,
    value: Option<f64>,
    passed: bool,
}

/// Flatten a metrics JSON object: nested objects join keys with `/`; bools count as 0/1.
pub fn flatten_metrics(v: &Value) -> BTreeMap<String, f64> {
    fn go(prefix: &str, v: &Value, out: &mut BTreeMap<String, f64>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}/{k}")
                    };
                    go(&key, v, out);
                }
            }
            Value::Number(n) => {
                if let Some(f) = n.as_f64() {
                    out.insert(prefix.to_owned(), f);
                }
            }
            Value::Bool(b) => {
                out.insert(prefix.to_owned(), if *b { 1.0 } else { 0.0 });
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    go("", v, &mut out);
    out
}

impl TypedOp for Validate {
    type Params = ValidateParams;
    const NAME: &'static str = "validate";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Check metric thresholds on upstream reports";

    fn check(&self, p: &ValidateParams) -> Result<(), ParamsError> {
        if p.checks.is_empty() {
            return Err(ParamsError::at(&["checks"], "no checks given")
                .with_hint("add `- { metric: \"train/loss\", op: \"<\", value: 2.0 }`"));
        }
        Ok(())
    }

    fn inputs(&self, _p: &ValidateParams) -> InputSignature {
        InputSignature::Open
    }

    fn metrics(&self, _p: &ValidateParams) -> Option<Vec<String>> {
        Some(
            ["validate/checks", "validate/passed", "validate/failed"]
                .map(String::from)
                .to_vec(),
        )
    }

    fn checked_metrics(&self, p: &ValidateParams) -> Vec<String> {
        p.checks.iter().map(|c| c.metric.clone()).collect()
    }

    fn outputs(&self, _p: &ValidateParams) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: "report".into(),
            kind: ArtifactKind::Report,
        }]
    }

    fn run(
        &self,
        ctx: &StepContext,
        inputs: &StepInputs,
        p: &ValidateParams,
    ) -> Result<StepOutcome, OpError> {
        let mut reports: Vec<(String, BTreeMap<String, f64>)> = Vec::new();
        for arts in inputs.values() {
            for a in arts {
                let path = a.path.join("metrics.json");
                let metrics = match std::fs::read(&path) {
                    Ok(bytes) => {
                        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                            OpError::user(format!(
                                "`metrics.json` of {} is not valid JSON: {e}",
                                a.from_step
                            ))
                        })?;
                        flatten_metrics(&v)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
                    Err(e) => return Err(OpError::io(&path, e)),
                };
                reports.push((a.from_step.clone(), metrics));
            }
        }
        let mut results = Vec::new();
        for c in &p.checks {
            let found: Vec<(&str, f64)> = reports
                .iter()
                .filter_map(|(src, m)| m.get(&c.metric).map(|v| (src.as_str(), *v)))
                .collect();
            let mk = |source: String, value: Option<f64>| CheckResult {
                metric: c.metric.clone(),
                op: c.op.to_string(),
                threshold: c.value,
                severity: c.severity,
                aggregate: c.aggregate,
                passed: value.is_some_and(|v| c.op.holds(v, c.value)),
                source,
                value,
            };
            if found.is_empty() {
                results.push(mk("no input reports this metric".into(), None));
                continue;
            }
            let values: Vec<f64> = found.iter().map(|(_, v)| *v).collect();
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            match c.aggregate {
                Aggregate::Each => {
                    results.extend(found.iter().map(|(s, v)| mk(s.to_string(), Some(*v))));
                }
                Aggregate::Min => results.push(mk("min over inputs".into(), Some(min))),
                Aggregate::Max => results.push(mk("max over inputs".into(), Some(max))),
                Aggregate::Mean => results.push(mk(
                    "mean over inputs".into(),
                    Some(values.iter().sum::<f64>() / values.len() as f64),
                )),
                Aggregate::Spread => {
                    results.push(mk("spread (max - min) over inputs".into(), Some(max - min)));
                }
            }
        }
        let passed = results.iter().filter(|r| r.passed).count();
        let failed_errors: Vec<&CheckResult> = results
            .iter()
            .filter(|r| !r.passed && r.severity == Severity::Error)
            .collect();
        for r in results
            .iter()
            .filter(|r| !r.passed && r.severity == Severity::Warn)
        {
            ctx.alert(AlertLevel::Warn, describe_failure(r));
        }
        let out = ctx.output_dir("report")?;
        let metrics = json!({
            "validate/checks": results.len(),
            "validate/passed": passed,
            "validate/failed": results.len() - passed,
        });
        let report = json!({ "checks": results, "passed": failed_errors.is_empty() });
        write_json(&out.join("report.json"), &report)?;
        write_json(&out.join("metrics.json"), &metrics)?;
        if !failed_errors.is_empty() {
            let lines: Vec<String> = failed_errors.iter().map(|r| describe_failure(r)).collect();
            return Err(OpError::user(format!(
                "{} of {} checks failed: {}",
                failed_errors.len(),
                results.len(),
                lines[0]
            ))
            .with_detail(lines.join("\n")));
        }
        Ok(StepOutcome {
            metrics: metrics.as_object().cloned().unwrap_or_default(),
        })
    }
}

fn describe_failure(r: &CheckResult) -> String {
    match r.value {
        Some(v) => format!(
            "{} = {v} ({}), expected {} {}",
            r.metric, r.source, r.op, r.threshold
        ),
        None => format!(
            "{}: {} (expected {} {})",
            r.metric, r.source, r.op, r.threshold
        ),
    }
}

fn write_json(path: &std::path::Path, v: &Value) -> Result<(), OpError> {
    let bytes = serde_json::to_vec_pretty(v).expect("json serializes");
    std::fs::write(path, bytes).map_err(|e| OpError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::tests::ctx_in;
    use crate::{InputArtifact, Op};

    fn report(dir: &std::path::Path, name: &str, metrics: Value) -> InputArtifact {
        let p = dir.join(name);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("metrics.json"), metrics.to_string()).unwrap();
        InputArtifact {
            path: p,
            digest: forge_cache::ObjectDigest::of(b""),
            kind: ArtifactKind::Report,
            from_step: name.into(),
        }
    }

    #[test]
    fn error_check_fails_naming_metric_value_and_threshold() {
        let d = tempfile::tempdir().unwrap();
        let (ctx, _) = ctx_in(d.path());
        let inputs: StepInputs = [(
            "r".to_string(),
            vec![report(d.path(), "a", json!({"train": {"loss": 2.5}}))],
        )]
        .into();
        let p = Validate
            .parse_params(&json!({"checks": [{"metric": "train/loss", "op": "<", "value": 2.0}]}))
            .unwrap();
        let e = Op::run(&Validate, &ctx, &inputs, &p).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("train/loss = 2.5") && msg.contains("< 2"),
            "{msg}"
        );
    }

    #[test]
    fn aggregates_and_warnings() {
        let d = tempfile::tempdir().unwrap();
        let (ctx, seen) = ctx_in(d.path());
        let inputs: StepInputs = [(
            "r".to_string(),
            vec![
                report(d.path(), "a", json!({"act/steps": 3.0})),
                report(d.path(), "b", json!({"act/steps": 9.0})),
            ],
        )]
        .into();
        let p = Validate
            .parse_params(&json!({"checks": [
                {"metric": "act/steps", "op": ">=", "value": 5.0, "aggregate": "spread"},
                {"metric": "act/steps", "op": ">", "value": 4.0, "severity": "warn"},
            ]}))
            .unwrap();
        let out = Op::run(&Validate, &ctx, &inputs, &p).unwrap();
        assert_eq!(out.metrics["validate/passed"], json!(2)); // spread 6 ≥ 5; b=9 > 4
        assert_eq!(out.metrics["validate/failed"], json!(1)); // a=3 > 4 fails, as a warning
        assert!(
            seen.lock()
                .unwrap()
                .iter()
                .any(|e| matches!(e, crate::StepEvent::Alert { .. }))
        );
    }

    #[test]
    fn unknown_comparison_is_a_params_error() {
        let e = Validate
            .parse_params(&json!({"checks": [{"metric": "m", "op": "=<", "value": 1}]}))
            .unwrap_err();
        assert_eq!(e.path, ["checks", "0", "op"]);
    }
}
