//! A whole model's BitNet b1.58 quantization, tensor by tensor: which tensors become ternary,
//! which keep a higher precision, and the `quantized-model` weights file.
//!
//! Every linear weight (a 2-D tensor named `….weight`: attention, memory projections and gates,
//! FFN, the ACT and mixing heads) becomes ternary with one scale ([`super::ternary`]) unless a
//! [`Preserve`] pattern names it; a preserved tensor keeps the pattern's precision (`f32`, `f16`,
//! or `int8` with one absmax scale per row — the seed's mitigation for embeddings). Tensors that
//! are not linear weights (norm gains, biases, the initial states) stay `f32`.
//!
//! ## The file (`model.safetensors` of a `quantized-model` artifact)
//!
//! A safetensors file whose `__metadata__` has one key, `forge`, holding a JSON document:
//! `{"format": "forge-quantized", "version": 1, "method": "bitnet-b1.58", "layout": "i2_s-128",
//! "ternary": {name: [in, out], …}, "int8": [name, …]}`. Per tensor:
//! - ternary `name` (a weight of shape `[in, out]`, burn's layout): `name`, U8, shape
//!   `[out, bytes_per_row]`, the transposed `[out, in]` matrix packed as [`super::packed`]
//!   describes; `name.scale`, F32, shape `[1]`: γ;
//! - `int8` `name`: `name`, I8, its shape; `name.scale`, F32, one per row: value = q / scale;
//! - `f16`/`f32` `name`: `name` in that dtype and shape.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use half::f16;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::packed::{PackError, PackedTernary, row_bytes};
use super::ternary::{quantize_activations, quantize_weights};
use crate::merge::tensors::{StateDict, Tensor};

/// What this module writes in `__metadata__.forge.format` and `.version`.
pub const FORMAT: &str = "forge-quantized";
pub const VERSION: u64 = 1;

/// The precision a preserved tensor keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
    /// int8 with one absmax scale per row (per token, for an embedding).
    Int8,
}

/// Tensors whose names match `pattern` (a glob: `*` is any text, dots included) keep
/// `precision` instead of becoming ternary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Preserve {
    /// Tensor name glob, e.g. `embed` or `*norm*`.
    pub pattern: String,
    /// `f32`, `f16` or `int8` (per-row absmax).
    pub precision: Precision,
}

/// The seed's defaults for a tiny model: the embedding (which is also the tied output head), an
/// untied output head, and the norms stay in higher precision.
pub fn default_preserve() -> Vec<Preserve> {
    [
        ("embed", Precision::F16),
        ("head.weight", Precision::F16),
        ("*norm*", Precision::F32),
    ]
    .into_iter()
    .map(|(p, precision)| Preserve {
        pattern: p.into(),
        precision,
    })
    .collect()
}

/// A pattern that is not a glob.
pub fn pattern_problem(pattern: &str) -> Option<String> {
    glob::Pattern::new(pattern).err().map(|e| e.to_string())
}

/// One tensor as the quantized model stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// A linear weight `[in, out]`, its transpose packed.
    Ternary {
        shape: Vec<usize>,
        packed: PackedTernary,
    },
    F32(Tensor),
    F16 {
        shape: Vec<usize>,
        data: Vec<f16>,
    },
    Int8 {
        shape: Vec<usize>,
        q: Vec<i8>,
        /// One per row: value = q / scale.
        scales: Vec<f32>,
    },
}

impl Stored {
    pub fn shape(&self) -> &[usize] {
        match self {
            Self::Ternary { shape, .. } | Self::F16 { shape, .. } | Self::Int8 { shape, .. } => {
                shape
            }
            Self::F32(t) => &t.shape,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }

    /// The values a forward pass uses (`[in, out]` for a ternary weight, as burn stores it).
    pub fn values(&self) -> Vec<f32> {
        match self {
            Self::Ternary { shape, packed } => {
                let (n_in, n_out) = (shape[0], shape[1]);
                let mut w = vec![0f32; n_in * n_out];
                for o in 0..n_out {
                    for i in 0..n_in {
                        w[i * n_out + o] = f32::from(packed.get(o, i)) * packed.scale;
                    }
                }
                w
            }
            Self::F32(t) => t.data.clone(),
            Self::F16 { data, .. } => data.iter().map(|v| v.to_f32()).collect(),
            Self::Int8 { shape, q, scales } => {
                let cols = shape.last().copied().unwrap_or(1).max(1);
                q.iter()
                    .enumerate()
                    .map(|(i, &v)| f32::from(v) / scales[i / cols])
                    .collect()
            }
        }
    }

    /// Bytes of the tensor's data as the file stores it (scales included).
    pub fn stored_bytes(&self) -> usize {
        match self {
            Self::Ternary { packed, .. } => packed.stored_bytes(),
            Self::F32(t) => 4 * t.data.len(),
            Self::F16 { data, .. } => 2 * data.len(),
            Self::Int8 { q, scales, .. } => q.len() + 4 * scales.len(),
        }
    }

    /// Zeros among the ternary weights (0 for other tensors).
    pub fn zeros(&self) -> usize {
        match self {
            Self::Ternary { packed, .. } => packed.unpack().iter().filter(|&&v| v == 0).count(),
            _ => 0,
        }
    }

    pub fn is_ternary(&self) -> bool {
        matches!(self, Self::Ternary { .. })
    }
}

/// A quantized model, by tensor name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QuantizedModel {
    pub tensors: BTreeMap<String, Stored>,
}

/// Whether `name`/`shape` is a linear weight (what BitNet quantizes).
pub fn is_linear_weight(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && name.ends_with(".weight")
}

/// The precision `name` keeps instead of becoming ternary: the first matching `preserve`
/// pattern's, or `revert_to` when it is in `reverted` (`None`: ternary if a linear weight).
fn kept_precision(
    name: &str,
    preserve: &[Preserve],
    reverted: &BTreeSet<String>,
    revert_to: Precision,
) -> Option<Precision> {
    preserve
        .iter()
        .find(|p| glob::Pattern::new(&p.pattern).is_ok_and(|g| g.matches(name)))
        .map(|p| p.precision)
        .or_else(|| reverted.contains(name).then_some(revert_to))
}

/// Whether [`quantize_tensor`] makes `name`/`shape` ternary under `preserve` (nothing reverted),
/// without quantizing it.
pub fn becomes_ternary(name: &str, shape: &[usize], preserve: &[Preserve]) -> bool {
    is_linear_weight(name, shape)
        && kept_precision(name, preserve, &BTreeSet::new(), Precision::F32).is_none()
}

/// How one tensor is stored under `preserve`, with `reverted` tensors (linear weights the
/// layer-by-layer pass put back) kept at `revert_to`.
pub fn quantize_tensor(
    name: &str,
    t: &Tensor,
    preserve: &[Preserve],
    reverted: &BTreeSet<String>,
    revert_to: Precision,
) -> Stored {
    match kept_precision(name, preserve, reverted, revert_to) {
        Some(p) => keep(t, p),
        None if is_linear_weight(name, &t.shape) => {
            let (n_in, n_out) = (t.shape[0], t.shape[1]);
            let q = quantize_weights(&t.data);
            let mut transposed = vec![0i8; n_in * n_out];
            for i in 0..n_in {
                for o in 0..n_out {
                    transposed[o * n_in + i] = q.values[i * n_out + o];
                }
            }
            Stored::Ternary {
                shape: t.shape.clone(),
                packed: PackedTernary::pack(&transposed, n_out, n_in, q.scale),
            }
        }
        None => Stored::F32(t.clone()),
    }
}

fn keep(t: &Tensor, p: Precision) -> Stored {
    match p {
        Precision::F32 => Stored::F32(t.clone()),
        Precision::F16 => Stored::F16 {
            shape: t.shape.clone(),
            data: t.data.iter().map(|&v| f16::from_f32(v)).collect(),
        },
        Precision::Int8 => {
            let cols = t.shape.last().copied().unwrap_or(1).max(1);
            let (mut q, mut scales) = (Vec::with_capacity(t.data.len()), Vec::new());
            for row in t.data.chunks(cols) {
                let (qr, s) = quantize_activations(row);
                q.extend(qr);
                scales.push(s);
            }
            Stored::Int8 {
                shape: t.shape.clone(),
                q,
                scales,
            }
        }
    }
}

/// Why bytes are not a quantized model this version reads.
#[derive(Debug, thiserror::Error)]
pub enum QuantizedFileError {
    #[error("not a safetensors file: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    #[error("not a forge quantized model: {0}")]
    Format(String),
    #[error("tensor `{name}`: {source}")]
    Packed {
        name: String,
        #[source]
        source: PackError,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl QuantizedModel {
    /// Quantize a whole model (see the module's doc).
    pub fn quantize(
        sd: &StateDict,
        preserve: &[Preserve],
        reverted: &BTreeSet<String>,
        revert_to: Precision,
    ) -> Self {
        Self {
            tensors: sd
                .tensors
                .iter()
                .map(|(n, t)| {
                    (
                        n.clone(),
                        quantize_tensor(n, t, preserve, reverted, revert_to),
                    )
                })
                .collect(),
        }
    }

    /// The weights a forward pass uses, as a state dict of the original layout.
    pub fn dequantize(&self) -> StateDict {
        StateDict {
            tensors: self
                .tensors
                .iter()
                .map(|(n, s)| {
                    let t = Tensor {
                        shape: s.shape().to_vec(),
                        data: s.values(),
                    };
                    (n.clone(), t)
                })
                .collect(),
        }
    }

    /// The names of the ternary tensors.
    pub fn ternary_names(&self) -> BTreeSet<String> {
        self.tensors
            .iter()
            .filter(|(_, s)| s.is_ternary())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The safetensors bytes (deterministic: the tensors sorted, one metadata key).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bufs: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let (mut ternary, mut int8) = (serde_json::Map::new(), Vec::new());
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        for (name, s) in &self.tensors {
            use safetensors::Dtype as D;
            match s {
                Stored::Ternary { shape, packed } => {
                    ternary.insert(name.clone(), json!(shape));
                    let dims = vec![packed.rows, row_bytes(packed.cols)];
                    bufs.push((name.clone(), D::U8, dims, packed.bytes.clone()));
                    bufs.push((
                        format!("{name}.scale"),
                        D::F32,
                        vec![1],
                        f32s(&[packed.scale]),
                    ));
                }
                Stored::F32(t) => bufs.push((name.clone(), D::F32, t.shape.clone(), f32s(&t.data))),
                Stored::F16 { shape, data } => {
                    let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
                    bufs.push((name.clone(), D::F16, shape.clone(), bytes));
                }
                Stored::Int8 { shape, q, scales } => {
                    int8.push(name.clone());
                    let bytes = q.iter().map(|&v| v as u8).collect();
                    bufs.push((name.clone(), D::I8, shape.clone(), bytes));
                    let n = scales.len();
                    bufs.push((format!("{name}.scale"), D::F32, vec![n], f32s(scales)));
                }
            }
        }
        let meta = json!({
            "format": FORMAT,
            "version": VERSION,
            "method": "bitnet-b1.58",
            "layout": "i2_s-128",
            "ternary": ternary,
            "int8": int8,
        });
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bufs
            .iter()
            .map(|(n, d, shape, bytes)| {
                let v = safetensors::tensor::TensorView::new(*d, shape.clone(), bytes)
                    .expect("sizes match their shapes");
                (n.clone(), v)
            })
            .collect();
        let info = HashMap::from([("forge".to_string(), meta.to_string())]);
        safetensors::serialize(views, Some(info)).expect("serialisable tensors")
    }

    /// Read [`Self::to_bytes`]'s format back, checking it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, QuantizedFileError> {
        Self::parse(bytes, &|_, _| {})
    }

    /// [`Self::from_bytes`] on the file at `path`, read through a memory map whose pages are
    /// released as each tensor is copied out: reading holds the model once, not twice.
    pub fn from_file(path: &std::path::Path) -> Result<Self, QuantizedFileError> {
        let io = |source| QuantizedFileError::Io {
            path: path.to_owned(),
            source,
        };
        let map = crate::sys::map_readonly(&std::fs::File::open(path).map_err(io)?).map_err(io)?;
        Self::parse(&map, &|start, len| crate::sys::drop_pages(&map, start, len))
    }

    /// Parse the format, calling `release(offset, len)` for the bytes of each piece of a tensor
    /// ([`decode_pieces`]) once copied.
    fn parse(bytes: &[u8], release: &dyn Fn(usize, usize)) -> Result<Self, QuantizedFileError> {
        use safetensors::Dtype as D;
        let fmt = |m: &str| QuantizedFileError::Format(m.to_string());
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)?;
        let meta: serde_json::Value = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("forge"))
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| fmt("no `forge` metadata"))?;
        if meta["format"] != FORMAT || meta["version"] != VERSION {
            return Err(fmt(&format!(
                "format {} version {} (this forge reads {FORMAT} version {VERSION})",
                meta["format"], meta["version"]
            )));
        }
        let st = safetensors::SafeTensors::deserialize(bytes)?;
        let ternary: BTreeMap<String, Vec<usize>> =
            serde_json::from_value(meta["ternary"].clone()).map_err(|e| fmt(&e.to_string()))?;
        let int8: BTreeSet<String> =
            serde_json::from_value(meta["int8"].clone()).map_err(|e| fmt(&e.to_string()))?;
        let release = |piece: &[u8]| {
            release(
                piece.as_ptr() as usize - bytes.as_ptr() as usize,
                piece.len(),
            );
        };
        let f32s = |b: &[u8]| -> Vec<f32> {
            decode_pieces(
                b,
                4,
                |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                &release,
            )
        };
        let scale_of = |name: &str| -> Result<Vec<f32>, QuantizedFileError> {
            let v = st
                .tensor(&format!("{name}.scale"))
                .map_err(|_| fmt(&format!("`{name}` has no `{name}.scale`")))?;
            if v.dtype() != D::F32 {
                return Err(fmt(&format!("`{name}.scale` is not F32")));
            }
            Ok(f32s(v.data()))
        };
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if name.ends_with(".scale")
                && let Some(base) = name.strip_suffix(".scale")
                && (ternary.contains_key(base) || int8.contains(base))
            {
                continue;
            }
            let shape = view.shape().to_vec();
            let stored = if let Some(orig) = ternary.get(&name) {
                let (n_in, n_out) = match orig.as_slice() {
                    [i, o] => (*i, *o),
                    _ => return Err(fmt(&format!("ternary `{name}` is not 2-D"))),
                };
                if view.dtype() != D::U8 {
                    return Err(fmt(&format!("ternary `{name}` is not U8")));
                }
                let scale = match scale_of(&name)?.as_slice() {
                    [s] => *s,
                    _ => return Err(fmt(&format!("`{name}.scale` is not one number"))),
                };
                let codes = decode_pieces(view.data(), 1, |c| c[0], &release);
                let packed =
                    PackedTernary::from_bytes(codes, n_out, n_in, scale).map_err(|source| {
                        QuantizedFileError::Packed {
                            name: name.clone(),
                            source,
                        }
                    })?;
                Stored::Ternary {
                    shape: orig.clone(),
                    packed,
                }
            } else if int8.contains(&name) {
                let q: Vec<i8> = decode_pieces(view.data(), 1, |c| c[0] as i8, &release);
                let scales = scale_of(&name)?;
                let rows = q.len() / shape.last().copied().unwrap_or(1).max(1);
                if view.dtype() != D::I8 || scales.len() != rows {
                    return Err(fmt(&format!(
                        "int8 `{name}` needs I8 values and {rows} scales"
                    )));
                }
                Stored::Int8 { shape, q, scales }
            } else {
                match view.dtype() {
                    D::F32 => Stored::F32(Tensor {
                        shape,
                        data: f32s(view.data()),
                    }),
                    D::F16 => Stored::F16 {
                        shape,
                        data: decode_pieces(
                            view.data(),
                            2,
                            |c| f16::from_le_bytes([c[0], c[1]]),
                            &release,
                        ),
                    },
                    d => return Err(fmt(&format!("`{name}` has dtype {d:?}"))),
                }
            };
            tensors.insert(name, stored);
        }
        Ok(Self { tensors })
    }

    /// Parameters stored ternary, and in every other form.
    pub fn counts(&self) -> (usize, usize) {
        let ternary = self
            .tensors
            .values()
            .filter(|s| s.is_ternary())
            .map(Stored::numel)
            .sum();
        let all: usize = self.tensors.values().map(Stored::numel).sum();
        (ternary, all - ternary)
    }
}

/// `data`'s values, `width` bytes each decoded by `decode`, 2^18 values at a time: each piece is
/// passed to `release` once decoded, so the pages of a mapped file need not all be resident beside the
/// copy (a quantized model's f16 embedding alone is 8 MiB at the 25m preset).
fn decode_pieces<T>(
    data: &[u8],
    width: usize,
    decode: impl Fn(&[u8]) -> T,
    release: &dyn Fn(&[u8]),
) -> Vec<T> {
    let mut out = Vec::with_capacity(data.len() / width);
    for piece in data.chunks(width << 18) {
        out.extend(piece.chunks_exact(width).map(&decode));
        release(piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn model() -> StateDict {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut t = |shape: &[usize]| Tensor {
            shape: shape.to_vec(),
            data: (0..shape.iter().product::<usize>())
                .map(|_| rng.random_range(-0.1..0.1))
                .collect(),
        };
        let tensors = [
            ("embed", t(&[10, 6])),
            ("blocks.0.attn.wq.weight", t(&[6, 6])),
            ("blocks.0.ffn.down.weight", t(&[9, 6])),
            ("blocks.0.norm_attn.gain", t(&[6])),
            ("halt.weight", t(&[6, 1])),
            ("halt_bias", t(&[1])),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
        StateDict { tensors }
    }

    #[test]
    fn linear_weights_become_ternary_and_preserved_tensors_keep_their_precision() {
        let sd = model();
        let q =
            QuantizedModel::quantize(&sd, &default_preserve(), &BTreeSet::new(), Precision::F16);
        let kind = |n: &str| match &q.tensors[n] {
            Stored::Ternary { .. } => "ternary",
            Stored::F32(_) => "f32",
            Stored::F16 { .. } => "f16",
            Stored::Int8 { .. } => "int8",
        };
        assert_eq!(kind("embed"), "f16");
        assert_eq!(kind("blocks.0.attn.wq.weight"), "ternary");
        assert_eq!(kind("blocks.0.ffn.down.weight"), "ternary");
        assert_eq!(
            kind("halt.weight"),
            "ternary",
            "the ACT head is a linear weight"
        );
        assert_eq!(kind("blocks.0.norm_attn.gain"), "f32");
        assert_eq!(kind("halt_bias"), "f32");
        assert_eq!(q.counts(), (36 + 54 + 6, 60 + 6 + 1));
        // A ternary weight dequantizes to W_q·γ in burn's [in, out] layout.
        let w = &sd.tensors["blocks.0.ffn.down.weight"];
        let expect = quantize_weights(&w.data).dequantize();
        assert_eq!(q.tensors["blocks.0.ffn.down.weight"].values(), expect);
        // A reverted weight keeps the revert precision.
        let reverted = BTreeSet::from(["blocks.0.attn.wq.weight".to_string()]);
        let r = QuantizedModel::quantize(&sd, &default_preserve(), &reverted, Precision::F16);
        assert!(matches!(
            r.tensors["blocks.0.attn.wq.weight"],
            Stored::F16 { .. }
        ));
    }

    #[test]
    fn the_file_round_trips_exactly_and_deterministically() {
        let sd = model();
        let preserve = vec![
            Preserve {
                pattern: "embed".into(),
                precision: Precision::Int8,
            },
            Preserve {
                pattern: "*norm*".into(),
                precision: Precision::F16,
            },
        ];
        let q = QuantizedModel::quantize(&sd, &preserve, &BTreeSet::new(), Precision::F16);
        let bytes = q.to_bytes();
        assert_eq!(bytes, q.to_bytes());
        let back = QuantizedModel::from_bytes(&bytes).unwrap();
        assert_eq!(back, q);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            QuantizedModel::from_file(&path).unwrap(),
            q,
            "read from a map"
        );
        assert_eq!(back.dequantize(), q.dequantize());
        // int8 embedding rows are within half a step of the original.
        let e = &sd.tensors["embed"].data;
        let d = q.tensors["embed"].values();
        for (row, (a, b)) in e.chunks(6).zip(d.chunks(6)).enumerate() {
            let max = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= max / 254.0 + 1e-7, "row {row}");
            }
        }
        // The packed tensor is U8 [out, ⌈in/128⌉·32] with its scale beside it.
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let down = st.tensor("blocks.0.ffn.down.weight").unwrap();
        assert_eq!(down.dtype(), safetensors::Dtype::U8);
        assert_eq!(down.shape(), [6, 32]);
        assert_eq!(
            st.tensor("blocks.0.ffn.down.weight.scale").unwrap().shape(),
            [1]
        );
    }

    #[test]
    fn files_of_another_format_or_with_broken_tensors_are_refused() {
        let plain = model().to_bytes();
        let err = QuantizedModel::from_bytes(&plain).unwrap_err().to_string();
        assert!(err.contains("no `forge` metadata"), "{err}");
        let q = QuantizedModel::quantize(&model(), &[], &BTreeSet::new(), Precision::F16);
        let mut bytes = q.to_bytes();
        // Corrupt a packed byte into the code 0b11.
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let at =
            st.tensor("halt.weight").unwrap().data().as_ptr() as usize - bytes.as_ptr() as usize;
        bytes[at] = 0xff;
        let err = QuantizedModel::from_bytes(&bytes).unwrap_err().to_string();
        assert!(err.contains("halt.weight") && err.contains("0b11"), "{err}");
    }

    #[test]
    fn pieces_decode_everything_in_order_and_release_each_once() {
        let data: Vec<u8> = (0..(3 << 18) + 6).map(|i| (i % 251) as u8).collect();
        let released = std::cell::RefCell::new(Vec::new());
        let base = data.as_ptr() as usize;
        let values = decode_pieces(
            &data,
            2,
            |c| u16::from_le_bytes([c[0], c[1]]),
            &|p: &[u8]| {
                released
                    .borrow_mut()
                    .push((p.as_ptr() as usize - base, p.len()));
            },
        );
        let want: Vec<u16> = data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(values, want);
        assert_eq!(
            released.into_inner(),
            vec![(0, 1 << 19), (1 << 19, (1 << 18) + 6)],
            "2^18 two-byte values a piece"
        );
    }
}
