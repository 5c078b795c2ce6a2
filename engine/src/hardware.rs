//! What the machine has left: CPU, memory and free disk on the store's filesystem, sampled for
//! `hardware` events (every 10 s during `apply`, and by `forge serve`), and the disk limits
//! below which `apply` warns and stops starting work (the seed's storage thresholds).

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The seed's "warning" level of free disk (its resource table: < 10 GB free).
pub const SEED_DISK_WARN: u64 = 10_000_000_000;
/// Free disk below which no new step starts and running ones stop cleanly. The seed's monitor
/// raises below 0.5 GB (its dashboard calls < 5 GB critical; that would stop a 100 MB tiny
/// pipeline on a small disk, so it is the warning's business here).
pub const SEED_DISK_STOP: u64 = 500_000_000;
/// The seed's pre-flight margin: free space ≥ 1.5 × what a step will write.
pub const PREFLIGHT_MARGIN: f64 = 1.5;

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Cpu {
    pub cores: usize,
    pub usage_percent: f32,
    pub load_1m: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Memory {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Disk {
    /// The store's directory (its filesystem is the one measured).
    pub path: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// One sample.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Sample {
    pub cpu: Cpu,
    pub memory: Memory,
    pub disk: Option<Disk>,
}

/// Free and total bytes of the filesystem holding `path` (what an unprivileged writer may use).
pub fn disk_space(path: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let unit = s.fragment_size();
    Some((s.blocks_available() * unit, s.blocks() * unit))
}

/// Samples the machine; CPU usage is measured between two calls.
pub struct Sampler {
    system: sysinfo::System,
    store: PathBuf,
}

impl Sampler {
    pub fn new(store: &Path) -> Self {
        let mut system = sysinfo::System::new();
        system.refresh_cpu_usage();
        Self {
            system,
            store: store.to_owned(),
        }
    }

    pub fn sample(&mut self) -> Sample {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let load = sysinfo::System::load_average();
        Sample {
            cpu: Cpu {
                cores: self.system.cpus().len(),
                usage_percent: self.system.global_cpu_usage(),
                load_1m: load.one,
            },
            memory: Memory {
                total_bytes: self.system.total_memory(),
                available_bytes: self.system.available_memory(),
                used_bytes: self.system.used_memory(),
            },
            disk: disk_space(&self.store).map(|(free, total)| Disk {
                path: self.store.display().to_string(),
                total_bytes: total,
                available_bytes: free,
            }),
        }
    }
}

/// `10GB`, `512MiB`, `20M`, `1.5G`, `4096` (bytes) as bytes: K/M/G/T are powers of 1000,
/// Ki/Mi/Gi/Ti powers of 1024; a trailing `B` is optional.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. `10GB`, `512MiB`)"))?;
    let unit = unit.trim().trim_end_matches(['B', 'b']);
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        "ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "`{s}`: unknown unit `{unit}` (use B, KB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    Ok((n * scale).round() as u64)
}

/// Bytes as a short human number (`1.5 GB`, `820 MB`).
pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    for (unit, scale) in [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)] {
        if b >= scale {
            return format!("{:.1} {unit}", b / scale);
        }
    }
    format!("{b} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_both_unit_systems() {
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 4 KiB "), Ok(4096));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert_eq!(human_bytes(1_500_000_000), "1.5 GB");
        assert_eq!(human_bytes(999), "999 B");
    }

    #[test]
    fn a_sample_measures_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sampler::new(dir.path());
        let x = s.sample();
        assert!(x.cpu.cores >= 1);
        assert!(x.memory.total_bytes > 0 && x.memory.available_bytes <= x.memory.total_bytes);
        let d = x.disk.expect("a temp dir has a filesystem");
        assert!(d.available_bytes <= d.total_bytes && d.total_bytes > 0);
    }
}
