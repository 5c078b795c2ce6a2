//! Console reporters. Human output follows cargo's shape (a right-aligned verb, then the step),
//! readable without colour; on a terminal, running steps get indicatif progress bars. Plain lines
//! are used when stderr is not a terminal or `NO_COLOR` is set; `--log-format json` prints every
//! event as one JSON object a line on stdout.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use forge_ops::{AlertLevel, Tier};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::events::{Event, Stamped};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

pub struct Console {
    format: LogFormat,
    verbose: bool,
    bars: Option<(MultiProgress, HashMap<String, ProgressBar>)>,
    /// Per step, where its progress in the current unit was first seen: (unit, done, the bar's
    /// elapsed time then). The rate for the time left counts from there, so a step resumed
    /// halfway is not credited with the work its checkpoint already held.
    since: HashMap<String, (String, u64, Duration)>,
}

pub fn fancy_terminal() -> bool {
    std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none()
        && std::env::var_os("CI").is_none()
}

/// A step's progress for its bar: `done/total unit (pct%, ~ETA left)`, the time left estimated
/// from the rate since progress was first seen at `from` done, `elapsed` ago; `done unit`
/// without a total.
fn progress_message(
    done: u64,
    total: Option<u64>,
    unit: &str,
    from: u64,
    elapsed: Duration,
) -> String {
    match total {
        Some(t) if t > 0 => {
            let frac = done as f64 / t as f64;
            let left = if done > from && done < t {
                let secs = elapsed.as_secs_f64() * (t - done) as f64 / (done - from) as f64;
                format!(", ~{} left", human_duration((secs * 1000.0) as u64))
            } else {
                String::new()
            };
            format!("{done}/{t} {unit} ({:.0}%{left})", frac * 100.0)
        }
        _ => format!("{done} {unit}"),
    }
}

pub fn human_duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

impl Console {
    pub fn new(format: LogFormat, verbose: bool) -> Self {
        let bars = (format == LogFormat::Human && fancy_terminal()).then(|| {
            (
                MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                HashMap::new(),
            )
        });
        Self {
            format,
            verbose,
            bars,
            since: HashMap::new(),
        }
    }

    fn line(&self, verb: &str, rest: &str) {
        let text = format!("{verb:>12} {rest}");
        match &self.bars {
            Some((mp, _)) => {
                let _ = mp.println(text);
            }
            None => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
        }
    }

    pub fn handle(&mut self, s: &Stamped) {
        if self.format == LogFormat::Json {
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut out, s);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
            return;
        }
        match &s.event {
            Event::RunStarted {
                pipeline, steps, ..
            } => self.line("Applying", &format!("{pipeline} ({steps} steps)")),
            Event::Queued { .. } | Event::Metric { .. } | Event::Hardware(_) => {}
            Event::CacheHit { step, key } => {
                self.line("Cached", &format!("{step} ({})", &key[..12]));
            }
            Event::RemoteHit {
                step,
                objects,
                bytes,
                duration_ms,
                ..
            } => self.line(
                "Downloaded",
                &format!(
                    "{step} from the remote cache ({objects} objects, {} in {})",
                    crate::hardware::human_bytes(*bytes),
                    human_duration(*duration_ms)
                ),
            ),
            Event::RemoteUpload {
                step,
                objects,
                bytes,
                duration_ms,
                ..
            } => self.line(
                "Uploaded",
                &format!(
                    "{step} to the remote cache ({objects} new objects, {} in {})",
                    crate::hardware::human_bytes(*bytes),
                    human_duration(*duration_ms)
                ),
            ),
            Event::RemoteError { step, error } => self.line("Warning", &format!("{step}: {error}")),
            Event::Started { step, attempt, .. } => {
                let extra = if *attempt > 0 {
                    format!(" (attempt {})", attempt + 1)
                } else {
                    String::new()
                };
                self.line("Running", &format!("{step}{extra}"));
                if let Some((mp, bars)) = &mut self.bars {
                    let pb = mp.add(ProgressBar::new_spinner());
                    pb.set_style(
                        ProgressStyle::with_template("{spinner} {prefix} {wide_msg} {elapsed}")
                            .expect("template"),
                    );
                    pb.set_prefix(step.clone());
                    pb.enable_steady_tick(Duration::from_millis(120));
                    bars.insert(step.clone(), pb);
                }
            }
            Event::Progress {
                step,
                done,
                total,
                unit,
            } => {
                if let Some((_, bars)) = &mut self.bars
                    && let Some(pb) = bars.get(step)
                {
                    let now = pb.elapsed();
                    let base = self
                        .since
                        .entry(step.clone())
                        .or_insert_with(|| (unit.clone(), *done, now));
                    if base.0 != *unit {
                        *base = (unit.clone(), *done, now);
                    }
                    pb.set_message(progress_message(*done, *total, unit, base.1, now - base.2));
                }
            }
            Event::Alert {
                step,
                level,
                message,
            } => {
                let verb = match level {
                    AlertLevel::Info => "Note",
                    AlertLevel::Warn => "Warning",
                    AlertLevel::Error => "Alert",
                };
                self.line(verb, &format!("{step}: {message}"));
            }
            Event::Log { step, message } => {
                if self.verbose {
                    self.line("Log", &format!("{step}: {message}"));
                }
            }
            Event::Retrying {
                step,
                attempt,
                delay_ms,
                error,
            } => self.line(
                "Retrying",
                &format!(
                    "{step} in {} (attempt {} failed: {error})",
                    human_duration(*delay_ms),
                    attempt + 1
                ),
            ),
            Event::Submitted {
                step,
                executor,
                job_id,
                attempt,
            } => {
                let again = if *attempt > 0 {
                    format!(", attempt {}", attempt + 1)
                } else {
                    String::new()
                };
                self.line(
                    "Submitted",
                    &format!("{step} as {executor} job {job_id}{again}"),
                );
            }
            Event::JobState {
                step,
                job_id,
                state,
                reason,
            } => {
                let why = reason
                    .as_deref()
                    .map_or(String::new(), |r| format!(" ({r})"));
                self.line("Job", &format!("{step}: {job_id} {state}{why}"));
            }
            Event::LockWait { step, holder, host } => {
                self.line(
                    "Waiting",
                    &format!("{step}: locked by pid {holder} on {host}"),
                );
            }
            Event::LockReclaimed {
                step,
                dead_pid,
                host,
                reason,
            } => self.line(
                "Reclaimed",
                &if *reason == "dead" {
                    format!("{step}: lock of pid {dead_pid} on {host}, which is gone")
                } else {
                    format!("{step}: lock of pid {dead_pid} on {host}, whose lease expired")
                },
            ),
            Event::Finished {
                step, duration_ms, ..
            } => {
                self.finish_bar(step);
                self.line(
                    "Finished",
                    &format!("{step} in {}", human_duration(*duration_ms)),
                );
            }
            Event::Failed {
                step,
                error,
                detail,
                tier,
                hint,
            } => {
                self.finish_bar(step);
                let what = match tier {
                    Tier::Internal => " (internal error)",
                    Tier::Infra => " (environment)",
                    Tier::User => "",
                };
                self.line("Failed", &format!("{step}{what}: {error}"));
                if let Some(d) = detail {
                    for l in d.lines() {
                        self.line("", &format!("  | {l}"));
                    }
                }
                if let Some(h) = hint {
                    self.line("", &format!("  hint: {h}"));
                }
            }
            Event::Warning { message } => self.line("Warning", message),
            Event::Skipped { step, reason } => self.line("Skipped", &format!("{step}: {reason}")),
            Event::Cancelled { step, reason } => {
                self.finish_bar(step);
                self.line("Cancelled", &format!("{step}: {reason}"));
            }
            Event::RunFinished {
                status,
                ran,
                cached,
                failed,
                skipped,
                duration_ms,
            } => {
                let mut parts = vec![format!("{ran} ran"), format!("{cached} cached")];
                if *failed > 0 {
                    parts.push(format!("{failed} failed"));
                }
                if *skipped > 0 {
                    parts.push(format!("{skipped} skipped"));
                }
                let verb = if status == "succeeded" {
                    "Done"
                } else {
                    "Stopped"
                };
                self.line(
                    verb,
                    &format!(
                        "{status}: {} in {}",
                        parts.join(", "),
                        human_duration(*duration_ms)
                    ),
                );
            }
        }
    }

    fn finish_bar(&mut self, step: &str) {
        self.since.remove(step);
        if let Some((mp, bars)) = &mut self.bars
            && let Some(pb) = bars.remove(step)
        {
            pb.finish_and_clear();
            mp.remove(&pb);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::progress_message;
    use std::time::Duration;

    #[test]
    fn progress_shows_the_time_left_at_the_rate_so_far() {
        let s = Duration::from_secs;
        // A quarter done in 30 s: 90 s to go.
        assert_eq!(
            progress_message(25, Some(100), "steps", 0, s(30)),
            "25/100 steps (25%, ~1m30s left)"
        );
        assert_eq!(
            progress_message(0, Some(100), "steps", 0, s(3)),
            "0/100 steps (0%)"
        );
        assert_eq!(
            progress_message(100, Some(100), "steps", 0, s(3)),
            "100/100 steps (100%)"
        );
        assert_eq!(progress_message(7, None, "files", 0, s(3)), "7 files");
        // Resumed at 50: 10 steps in 10 s since, 40 to go at that rate.
        assert_eq!(
            progress_message(60, Some(100), "steps", 50, s(10)),
            "60/100 steps (60%, ~40.0s left)"
        );
    }
}
