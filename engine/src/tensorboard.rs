//! TensorBoard event files: the record format (length, masked CRC-32C, protobuf `Event`, masked
//! CRC-32C, as TensorFlow's `RecordWriter` writes it) and [`Board`], which turns a run's metric
//! events into scalars, one event file per step instance so that matrix instances (the three
//! Phase-1 models) overlay as separate TensorBoard runs. `apply` writes a board under each run's
//! directory as it goes; `forge export-metrics` writes one from a finished run's `events.jsonl`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

/// `tensorflow.Event`, with only the fields forge writes (`what` is a oneof on the wire; here
/// its members are optional fields, which encode the same).
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with a `simple_value` (a scalar). Optional so that 0.0 is still
/// written: a oneof member is present even at its default.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// TensorFlow's masked CRC-32C (`crc32c::Mask`): rotated and offset, so a CRC stored inside
/// data that is itself checksummed does not weaken the outer check.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One record: `u64` length (little-endian), masked CRC of those 8 bytes, the data, masked CRC
/// of the data.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// One `events.out.tfevents.*` file.
pub struct EventFile {
    out: BufWriter<File>,
}

impl EventFile {
    /// Create the file in `dir` (made if missing) and write the version record TensorBoard
    /// expects first.
    pub fn create(dir: &Path, wall_time: f64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let name = format!("events.out.tfevents.{}.forge", wall_time as u64);
        let mut f = Self {
            out: BufWriter::new(File::create(dir.join(name))?),
        };
        f.write(&Event {
            wall_time,
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        })?;
        Ok(f)
    }

    fn write(&mut self, e: &Event) -> std::io::Result<()> {
        self.out.write_all(&record(&e.encode_to_vec()))
    }

    pub fn scalar(
        &mut self,
        tag: &str,
        step: i64,
        value: f32,
        wall_time: f64,
    ) -> std::io::Result<()> {
        self.write(&Event {
            wall_time,
            step,
            file_version: None,
            summary: Some(Summary {
                value: vec![SummaryValue {
                    tag: tag.into(),
                    simple_value: Some(value),
                }],
            }),
        })
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Per step instance: its event file, the step each tag was last written at, and how many
/// points of each tag had no step of their own.
struct StepBoard {
    file: EventFile,
    last_step: i64,
    tags: BTreeSet<String>,
    unstepped: BTreeMap<String, i64>,
}

/// A run's scalars under `root`, one directory (and event file) per step instance, named by its
/// id (`cognate.model[variant=memory]`).
pub struct Board {
    root: PathBuf,
    steps: BTreeMap<String, StepBoard>,
    written: usize,
}

impl Board {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            steps: BTreeMap::new(),
            written: 0,
        }
    }

    fn step(&mut self, id: &str, wall_time: f64) -> std::io::Result<&mut StepBoard> {
        if !self.steps.contains_key(id) {
            // A step id has no `/`; keep it that way on disk whatever an op names a step.
            let dir = self.root.join(id.replace(['/', '\\'], "_"));
            let file = EventFile::create(&dir, wall_time)?;
            self.steps.insert(
                id.to_owned(),
                StepBoard {
                    file,
                    last_step: 0,
                    tags: BTreeSet::new(),
                    unstepped: BTreeMap::new(),
                },
            );
        }
        Ok(self.steps.get_mut(id).expect("inserted"))
    }

    /// A metric event: `at` is the training step (or generation) it belongs to; a metric without
    /// one is numbered by its own count (0, 1, 2, …).
    pub fn metric(
        &mut self,
        step_id: &str,
        tag: &str,
        at: Option<u64>,
        value: f64,
        wall_time: f64,
    ) -> std::io::Result<()> {
        let s = self.step(step_id, wall_time)?;
        let step = at.map_or_else(
            || {
                let n = s.unstepped.entry(tag.to_owned()).or_insert(0);
                *n += 1;
                *n - 1
            },
            |a| i64::try_from(a).unwrap_or(i64::MAX),
        );
        s.last_step = s.last_step.max(step);
        s.tags.insert(tag.to_owned());
        s.file.scalar(tag, step, value as f32, wall_time)?;
        self.written += 1;
        Ok(())
    }

    /// Scalars written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Step instances with an event file.
    pub fn step_count(&self) -> usize {
        self.steps.len()
    }

    /// A finished step's recorded metrics (`metrics.json`), at the last step it logged: every
    /// number whose tag it did not already stream, so a series is never doubled.
    pub fn results(
        &mut self,
        step_id: &str,
        metrics: &serde_json::Map<String, serde_json::Value>,
        wall_time: f64,
    ) -> std::io::Result<()> {
        let numbers: Vec<(&String, f64)> = metrics
            .iter()
            .filter_map(|(k, v)| Some((k, v.as_f64()?)))
            .collect();
        if numbers.is_empty() {
            return Ok(());
        }
        let s = self.step(step_id, wall_time)?;
        let mut written = 0;
        for (tag, value) in numbers {
            if s.tags.insert(tag.clone()) {
                s.file.scalar(tag, s.last_step, value as f32, wall_time)?;
                written += 1;
            }
        }
        self.written += written;
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        for s in self.steps.values_mut() {
            s.file.flush()?;
        }
        Ok(())
    }

    /// Feed one `events.jsonl` line (a stamped event as JSON); `results_of` gives a finished
    /// step's recorded metrics by its key.
    pub fn event(
        &mut self,
        ev: &serde_json::Value,
        results_of: &dyn Fn(&str) -> Option<serde_json::Map<String, serde_json::Value>>,
    ) -> std::io::Result<()> {
        let wall_time = ev["ts_unix_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
        let step = ev["step"].as_str().unwrap_or("");
        match ev["event"].as_str() {
            Some("metric") => {
                if let (Some(name), Some(value)) = (ev["name"].as_str(), ev["value"].as_f64()) {
                    self.metric(step, name, ev["at"].as_u64(), value, wall_time)?;
                }
            }
            Some("finished") => {
                if let Some(m) = ev["key"].as_str().and_then(results_of) {
                    self.results(step, &m, wall_time)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_crc_matches_tensorflow() {
        // CRC-32C("123456789") = 0xE3069283 (the standard check value); masked by hand:
        // rotr(0xE3069283, 15) = 0x2507C60D, + 0xA282EAD8 = 0xC78AB0E5.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
    }

    #[test]
    fn a_record_frames_its_data() {
        let r = record(b"abc");
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[8..12], &masked_crc(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(&r[15..], &masked_crc(b"abc").to_le_bytes());
    }

    #[test]
    fn a_scalar_event_encodes_as_protobuf_by_hand() {
        let e = Event {
            wall_time: 0.0,
            step: 3,
            file_version: None,
            summary: Some(Summary {
                value: vec![SummaryValue {
                    tag: "a".into(),
                    simple_value: Some(0.0),
                }],
            }),
        };
        // wall_time 0.0 is the default and not written; step: field 2 varint 3 → 10 03;
        // summary: field 5, length 10 → 2a 0a; its value: field 1, length 8 → 0a 08; tag "a" →
        // 0a 01 61; simple_value 0.0, still written (fixed32, field 2) → 15 00 00 00 00.
        assert_eq!(
            e.encode_to_vec(),
            [
                0x10, 0x03, 0x2a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, b'a', 0x15, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn results_skip_streamed_tags_and_land_on_the_last_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Board::new(dir.path());
        b.metric("p.s", "train/loss", Some(10), 2.0, 1.0).unwrap();
        b.metric("p.s", "hits", None, 1.0, 1.0).unwrap();
        b.metric("p.s", "hits", None, 2.0, 1.0).unwrap();
        let m = serde_json::json!({"train/loss": 1.5, "final/ppl": 7.0, "note": "x"});
        b.results("p.s", m.as_object().unwrap(), 2.0).unwrap();
        b.flush().unwrap();
        let s = &b.steps["p.s"];
        assert_eq!(s.last_step, 10);
        assert_eq!(s.unstepped["hits"], 2);
        let tags: Vec<&str> = s.tags.iter().map(String::as_str).collect();
        assert_eq!(tags, ["final/ppl", "hits", "train/loss"]);
        let files: Vec<_> = std::fs::read_dir(dir.path().join("p.s")).unwrap().collect();
        assert_eq!(files.len(), 1);
    }
}
