//! A step's Slurm options (`slurm:` in `defaults` and on steps) and the `sbatch` options they
//! become. Plain data: the pipeline parser and the schema use it without the executor.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Slurm options of a step (`slurm:` in `defaults` or on the step; a step's own fields win, its
/// `extra` options come after the defaults').
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlurmOptions {
    /// `--partition`: the queue the job goes to.
    pub partition: Option<String>,
    /// `--account` charged for the job.
    pub account: Option<String>,
    /// `--time`: the job's wall-clock limit in Slurm's format (`30:00`, `4:00:00`,
    /// `1-00:00:00`). A step the limit stops keeps its checkpoint; raise it and apply again.
    pub time: Option<String>,
    /// `--mem`: memory per node (`16G`).
    pub mem: Option<String>,
    /// More `sbatch` options, passed as written (`--qos=high`, `--constraint=h100`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<String>,
}

impl SlurmOptions {
    /// These options over `base`: a field set here wins; `extra` is `base`'s then these.
    #[must_use]
    pub fn over(&self, base: &SlurmOptions) -> SlurmOptions {
        let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
        SlurmOptions {
            partition: pick(&self.partition, &base.partition),
            account: pick(&self.account, &base.account),
            time: pick(&self.time, &base.time),
            mem: pick(&self.mem, &base.mem),
            extra: base.extra.iter().chain(&self.extra).cloned().collect(),
        }
    }

    /// The `sbatch` options for a step holding `cpus` CPUs and `gpus` GPUs.
    #[must_use]
    pub fn sbatch_args(&self, cpus: u32, gpus: u32) -> Vec<String> {
        let mut a = vec![format!("--cpus-per-task={}", cpus.max(1))];
        if gpus > 0 {
            a.push(format!("--gres=gpu:{gpus}"));
        }
        for (flag, v) in [
            ("--partition", &self.partition),
            ("--account", &self.account),
            ("--time", &self.time),
            ("--mem", &self.mem),
        ] {
            if let Some(v) = v {
                a.push(format!("{flag}={v}"));
            }
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_options_win_over_the_defaults_and_extras_add_up() {
        let defaults = SlurmOptions {
            partition: Some("gpu".into()),
            time: Some("1:00:00".into()),
            extra: vec!["--qos=normal".into()],
            ..SlurmOptions::default()
        };
        let step = SlurmOptions {
            time: Some("4:00:00".into()),
            mem: Some("16G".into()),
            extra: vec!["--constraint=h100".into()],
            ..SlurmOptions::default()
        };
        let o = step.over(&defaults);
        assert_eq!(
            o.sbatch_args(4, 2),
            [
                "--cpus-per-task=4",
                "--gres=gpu:2",
                "--partition=gpu",
                "--time=4:00:00",
                "--mem=16G",
                "--qos=normal",
                "--constraint=h100",
            ]
        );
        assert_eq!(
            SlurmOptions::default().sbatch_args(0, 0),
            ["--cpus-per-task=1"]
        );
    }
}
