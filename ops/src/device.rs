//! Which numeric backend a pipeline's `device:` runs on in this build.
//!
//! burn 0.22 picks the backend at run time through [`Device`]. forge always has the pure-Rust
//! `flex` CPU backend; a build with the `tch` feature adds libtorch (CPU and CUDA). The backend
//! *class* returned here (`cpu-flex-avx512`, `cpu-flex-avx2`, `cpu-flex`, `libtorch-cpu`,
//! `libtorch-cuda`) goes into every compute step's cache key, because two backends give different
//! bits for the same step. flex's class names the widest instruction set its kernels choose at run
//! time (its matmul and [`crate::model::rowwise`]): AVX-512 and AVX2 block their sums differently.
//!
//! | `device:` | default build | `--features tch` |
//! |---|---|---|
//! | `cpu` | flex | libtorch CPU (`FORGE_CPU_BACKEND=flex` picks flex) |
//! | `cuda`, `cuda:N` | error with a hint | libtorch CUDA device N (error if absent) |
//! | `auto` | flex | CUDA device 0 when one is visible, else as `cpu` |

use burn::tensor::Device;

/// Environment variable choosing the CPU backend of a `tch` build: `flex` or `libtorch`.
pub const CPU_BACKEND_ENV: &str = "FORGE_CPU_BACKEND";

/// Why a device string cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "device `{0}` needs the libtorch backend, but this forge was built without the `tch` feature (README: \"Building with libtorch\")"
    )]
    NeedsTch(String),
    #[error("device `{device}`: {reason}")]
    Unavailable { device: String, reason: String },
    #[error("unknown device `{0}` (use `cpu`, `cuda`, `cuda:N` or `auto`)")]
    Unknown(String),
    #[error("{CPU_BACKEND_ENV}=`{0}` is not a CPU backend of this build (use {1})")]
    BadCpuBackend(String, &'static str),
}

/// A resolved device: the autodiff-enabled burn device for training and its backend class.
#[derive(Clone, Debug)]
pub struct Backend {
    /// Autodiff device (use `.clone().inner()` for inference-only work).
    pub device: Device,
    /// `cpu-flex-avx512`, `cpu-flex-avx2`, `cpu-flex`, `libtorch-cpu` or `libtorch-cuda`: part
    /// of the cache key.
    pub class: &'static str,
}

/// Resolve a pipeline device string (`cpu`, `cuda`, `cuda:N`, `auto`) for this build.
pub fn resolve(device: &str) -> Result<Backend, DeviceError> {
    tune_allocator();
    match device {
        "cpu" => cpu(),
        "auto" => cuda(0, device).or_else(|_| cpu()),
        "cuda" => cuda(0, device),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i, device),
            _ => Err(DeviceError::Unknown(other.to_string())),
        },
    }
}

/// The backend class a step on `device` enters into its cache key: the resolved class, or
/// `unavailable:<device>` when this build cannot run it (the run then fails with the reason).
pub fn key_class(device: &str) -> String {
    resolve(device)
        .map(|b| b.class.to_string())
        .unwrap_or_else(|_| format!("unavailable:{device}"))
}

fn flex() -> Backend {
    Backend {
        device: Device::flex().autodiff(),
        class: flex_class(),
    }
}

/// flex's class on this CPU: the instruction set its kernels run with (`pulp`'s x86-64-v4 and
/// -v3 levels, the ones its matmul's GEMM crate also dispatches on).
fn flex_class() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if pulp::x86::V4::try_new().is_some() {
            return "cpu-flex-avx512";
        }
        if pulp::x86::V3::try_new().is_some() {
            return "cpu-flex-avx2";
        }
    }
    "cpu-flex"
}

#[cfg(not(feature = "tch"))]
fn cpu() -> Result<Backend, DeviceError> {
    match std::env::var(CPU_BACKEND_ENV).ok().as_deref() {
        None | Some("" | "flex") => Ok(flex()),
        Some(other) => Err(DeviceError::BadCpuBackend(other.to_string(), "`flex`")),
    }
}

/// CUDA device `index`, asked for as `name`.
#[cfg(not(feature = "tch"))]
fn cuda(_index: usize, name: &str) -> Result<Backend, DeviceError> {
    Err(DeviceError::NeedsTch(name.to_string()))
}

#[cfg(feature = "tch")]
#[allow(deprecated)] // burn-tch is deprecated in burn 0.22 but is its only libtorch/CUDA path without LLVM
fn cpu() -> Result<Backend, DeviceError> {
    match std::env::var(CPU_BACKEND_ENV).ok().as_deref() {
        Some("flex") => Ok(flex()),
        None | Some("") | Some("libtorch") => Ok(Backend {
            device: Device::libtorch().autodiff(),
            class: "libtorch-cpu",
        }),
        Some(other) => Err(DeviceError::BadCpuBackend(
            other.to_string(),
            "`flex` or `libtorch`",
        )),
    }
}

/// CUDA device `index`, asked for as `name`.
#[cfg(feature = "tch")]
#[allow(deprecated)]
fn cuda(index: usize, name: &str) -> Result<Backend, DeviceError> {
    let count = if tch::Cuda::is_available() {
        tch::Cuda::device_count() as usize
    } else {
        0
    };
    if index >= count {
        return Err(DeviceError::Unavailable {
            device: name.to_string(),
            reason: format!(
                "libtorch sees {count} CUDA device(s) (is LD_LIBRARY_PATH pointing at a CUDA build of torch/lib?)"
            ),
        });
    }
    Ok(Backend {
        device: Device::libtorch_cuda(index).autodiff(),
        class: "libtorch-cuda",
    })
}

/// Keep freed tensor memory in the process instead of handing it back to the kernel at once.
///
/// glibc serves blocks above its mmap threshold (128 KiB, adaptive up to 32 MiB) with fresh
/// `mmap`s, so every large tensor of every training step — the logits of the 25m preset alone are
/// 32 MiB — costs page faults and the kernel zeroing its pages (15% of a 25m CPU step in `perf`).
/// Raising the mmap threshold to 256 MiB and the trim threshold to 1 GiB lets those blocks be
/// reused from the heap: +6% train-step throughput on the 25m preset (bench/RESULTS.md), at the
/// price of up to 1 GiB of freed memory staying mapped. Applied once per process, when a device is
/// first resolved; a no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            crate::sys::raise_malloc_thresholds(256 << 20, 1 << 30);
        });
    }
}

/// Limit the compute threads of the CPU backends (rayon for flex, intra-op threads for libtorch).
/// Call before the first tensor operation.
pub fn set_threads(n: usize) {
    // Fails only when the global pool already exists; then the existing pool is kept.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    #[cfg(feature = "tch")]
    tch::set_num_threads(n as i32);
}

/// The device unit tests of the model and optimizer run on: this build's `cpu` backend, so
/// `cargo test --features tch` exercises libtorch and `FORGE_CPU_BACKEND=flex` flex.
#[cfg(test)]
pub(crate) fn test_device() -> Device {
    resolve("cpu").expect("test backend").device
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_devices_are_rejected() {
        assert!(matches!(resolve("gpu"), Err(DeviceError::Unknown(_))));
        assert!(matches!(resolve("cuda:x"), Err(DeviceError::Unknown(_))));
    }

    #[test]
    fn auto_falls_back_to_the_cpu_backend_without_cuda() {
        if resolve("cuda").is_err() {
            assert_eq!(
                resolve("auto").unwrap().class,
                resolve("cpu").unwrap().class
            );
        }
    }

    #[test]
    fn cpu_is_the_backend_this_build_prefers_and_really_runs_on_it() {
        let expected = match std::env::var(CPU_BACKEND_ENV).as_deref() {
            Ok("flex") => flex_class(),
            Ok("libtorch") => "libtorch-cpu",
            _ if cfg!(feature = "tch") => "libtorch-cpu",
            _ => flex_class(),
        };
        let b = resolve("cpu").unwrap();
        assert_eq!(b.class, expected);
        let inner = format!("{:?}", b.device.inner());
        let name = if expected.starts_with("cpu-flex") {
            "Flex"
        } else {
            "LibTorch"
        };
        assert!(inner.contains(name), "{inner}");
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn cuda_needs_tch_and_says_so() {
        let e = resolve("cuda:1").unwrap_err().to_string();
        assert!(e.contains("`cuda:1`") && e.contains("tch"), "{e}");
    }
}
