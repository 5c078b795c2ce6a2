//! A BitNet b1.58 model as a burn module: which [`Dense`](super::layers::Dense) layers are
//! ternary and how they compute ([`Ternary`]). A `quantized-model` artifact loads for inference
//! with its ternary layers running through the packed kernel and its embedding left as the file
//! stores it ([`load_quantized`], [`HostTable`]); calibration runs the same W1.58A8 arithmetic in
//! burn on dequantized weights ([`in_burn`]). The two agree to float tolerance (tested).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::layers::Ternary;
use super::weights::Deferred;
use super::{ModelConfig, TrmTitansMag, WeightsError, weights};
use crate::quant::model::{QuantizedModel, Stored};

/// `model`'s layers whose weight (`<path>.weight`) is in `names` compute W1.58A8 in burn; their
/// weights must already hold the dequantized ternary values.
pub fn in_burn(model: &mut TrmTitansMag, names: &BTreeSet<String>) {
    for (path, dense) in model.denses_mut() {
        if names.contains(&format!("{path}.weight")) {
            dense.ternary = Ternary::InBurn;
        }
    }
}

/// A quantized model's embedding table (`[vocab, d]`) kept on the host as the file stores it —
/// f16, or int8 rows with one scale each — instead of as an f32 parameter: half or a quarter of
/// the memory. Token lookups convert the rows they read; the tied output projection converts the
/// table a block of rows at a time. Values are exactly [`Stored::values`]'s.
#[derive(Debug, Clone)]
pub struct HostTable {
    rows: usize,
    cols: usize,
    stored: Stored,
}

/// Rows of the table converted to f32 at once by [`HostTable::project`] (2 MiB at d = 512).
const PROJECT_ROWS: usize = 1024;

impl HostTable {
    /// `stored` as a host table, if it is a 2-D f16 or int8 tensor.
    pub fn new(stored: Stored) -> Option<Self> {
        match (&stored, stored.shape()) {
            (Stored::F16 { .. } | Stored::Int8 { .. }, &[rows, cols]) => {
                Some(Self { rows, cols, stored })
            }
            _ => None,
        }
    }

    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Row `r` into `out` (`cols` long).
    fn row(&self, r: usize, out: &mut [f32]) {
        let at = r * self.cols..(r + 1) * self.cols;
        match &self.stored {
            Stored::F16 { data, .. } => {
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&data[at], out);
            }
            Stored::Int8 { q, scales, .. } => {
                for (o, &v) in out.iter_mut().zip(&q[at]) {
                    *o = f32::from(v) / scales[r];
                }
            }
            _ => unreachable!("a host table is f16 or int8 (HostTable::new)"),
        }
    }

    /// Rows `start..start + n` as f32, row-major.
    fn rows_f32(&self, start: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * self.cols];
        for (i, chunk) in out.chunks_exact_mut(self.cols).enumerate() {
            self.row(start + i, chunk);
        }
        out
    }

    /// The rows of `tokens` (`[b, s]`): `[b, s, cols]`.
    ///
    /// # Panics
    /// On a token id outside the table.
    pub fn lookup(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [b, s] = tokens.dims();
        let device = tokens.device();
        let ids = tokens
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("integer token ids");
        let mut out = vec![0f32; ids.len() * self.cols];
        for (chunk, &id) in out.chunks_exact_mut(self.cols).zip(&ids) {
            let r = usize::try_from(id).ok().filter(|&r| r < self.rows);
            self.row(
                r.unwrap_or_else(|| panic!("token id {id} outside the embedding")),
                chunk,
            );
        }
        Tensor::from_data(TensorData::new(out, [b, s, self.cols]), &device)
    }

    /// `x · tableᵀ` for `x` of `[b, s, cols]`: `[b, s, rows]` (the tied output projection).
    pub fn project(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, d] = x.dims();
        let device = x.device();
        let x = x.reshape([b * s, d]);
        let parts = (0..self.rows)
            .step_by(PROJECT_ROWS)
            .map(|start| {
                let n = PROJECT_ROWS.min(self.rows - start);
                let w = Tensor::<2>::from_data(
                    TensorData::new(self.rows_f32(start, n), [n, d]),
                    &device,
                );
                x.clone().matmul(w.transpose())
            })
            .collect();
        Tensor::cat(parts, 1).reshape([b, s, self.rows])
    }
}

/// The quantized model `q` on `device` for inference: preserved tensors at their stored values,
/// ternary layers through the kernel (their packed codes moved in, never expanded to f32), an f16
/// or int8 embedding kept as stored ([`HostTable`]). `q` is consumed tensor by tensor, so loading
/// holds the model about once.
pub fn load_quantized(
    cfg: &ModelConfig,
    q: QuantizedModel,
    device: &Device,
) -> Result<TrmTitansMag, WeightsError> {
    let unreadable = |message: String| WeightsError::Unreadable {
        what: "the model".into(),
        message,
    };
    let mut model = TrmTitansMag::skeleton(cfg, device);
    let mut embed = None;
    let mut ternary = BTreeMap::new();
    let mut preserved = Vec::new();
    for (name, stored) in q.tensors {
        match stored {
            Stored::Ternary { shape, packed } => {
                ternary.insert(name, (shape, packed));
            }
            s @ (Stored::F16 { .. } | Stored::Int8 { .. }) if name == "embed" => {
                embed = HostTable::new(s);
            }
            s => preserved.push(Deferred {
                name,
                shape: s.shape().to_vec(),
                values: Box::new(move || s.values()),
            }),
        }
    }
    let report = weights::load_deferred(&mut model, preserved, "the model", true)?;
    let mut missing: BTreeSet<String> = report.initialized.into_iter().collect();
    let zeros = || Param::from_tensor(Tensor::zeros([1, 1], device));
    for (path, dense) in model.denses_mut() {
        let name = format!("{path}.weight");
        if let Some((shape, packed)) = ternary.remove(&name) {
            let want = dense.weight.lazy_shape().dims::<2>();
            if shape[..] != want[..] {
                return Err(unreadable(format!(
                    "`{name}` is {shape:?} in the file, {want:?} in the model"
                )));
            }
            dense.ternary = Ternary::Kernel(Arc::new(packed));
            dense.weight = zeros();
            missing.remove(&name);
        }
    }
    if let Some(name) = ternary.keys().next() {
        return Err(unreadable(format!(
            "the ternary tensor `{name}` is no linear layer of this model"
        )));
    }
    if let Some(table) = embed {
        let want = model.embed.lazy_shape().dims::<2>();
        if table.shape()[..] != want[..] {
            return Err(unreadable(format!(
                "`embed` is {:?} in the file, {want:?} in the model",
                table.shape()
            )));
        }
        model.embed = zeros();
        model.embed_host = Some(Arc::new(table));
        missing.remove("embed");
    }
    match missing.into_iter().next() {
        Some(name) => Err(unreadable(format!(
            "the quantized model has no tensor `{name}`"
        ))),
        None => Ok(model),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::tensors::StateDict;
    use crate::model::{InferOutput, Tables};
    use crate::quant::model::{Precision, default_preserve};
    use burn::tensor::{Int, TensorData};

    /// Two blocks, one with memory, 64 tokens: small enough to run whole in a unit test.
    fn small(tie_embeddings: bool) -> ModelConfig {
        ModelConfig {
            vocab_size: 64,
            d_model: 32,
            layers: 2,
            d_ff: 64,
            memory_layers: vec![1],
            ltm_slots: 8,
            mem_chunk: 4,
            tie_embeddings,
            ..ModelConfig::micro()
        }
    }

    fn logits(out: InferOutput) -> Vec<f32> {
        out.logits
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap()
    }

    #[test]
    fn every_linear_weight_of_the_model_is_a_dense_layer() {
        let dev = crate::device::resolve("cpu").unwrap().device.inner();
        let cfg = ModelConfig {
            mixing_head: true,
            tie_embeddings: false,
            memory_layers: vec![0],
            ..ModelConfig::micro()
        };
        let mut model = TrmTitansMag::new(&cfg, 1, &dev);
        let linear: BTreeSet<String> = weights::named_values(&model)
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.ends_with(".weight"))
            .collect();
        let dense: BTreeSet<String> = model
            .denses_mut()
            .into_iter()
            .map(|(p, _)| format!("{p}.weight"))
            .collect();
        assert_eq!(dense, linear);
        assert!(dense.contains("talk.out.weight") && dense.contains("head.weight"));
    }

    #[test]
    fn the_kernel_and_the_burn_forward_agree_and_differ_from_full_precision() {
        let dev = crate::device::resolve("cpu").unwrap().device.inner();
        let cfg = small(false);
        let model = TrmTitansMag::new(&cfg, 3, &dev);
        let sd = StateDict::from_bytes(&weights::to_bytes(&model).unwrap()).unwrap();
        let q =
            QuantizedModel::quantize(&sd, &default_preserve(), &BTreeSet::new(), Precision::F32);
        let ternary: BTreeSet<String> = q
            .tensors
            .iter()
            .filter(|(_, s)| s.is_ternary())
            .map(|(n, _)| n.clone())
            .collect();
        assert!(!ternary.is_empty());
        let kernel = load_quantized(&cfg, q.clone(), &dev).unwrap();
        let mut burn_a8 = weights::model_from(&cfg, q.dequantize().to_bytes(), "m", &dev).unwrap();
        in_burn(&mut burn_a8, &ternary);
        let weights_only = weights::model_from(&cfg, q.dequantize().to_bytes(), "m", &dev).unwrap();

        let ids: Vec<i64> = (0..2 * 12)
            .map(|i| (i * 7 + 3) % cfg.vocab_size as i64)
            .collect();
        let tokens = || Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [2, 12]), &dev);
        let t = Tables::new(&cfg, &dev);
        let run =
            |m: &TrmTitansMag| logits(m.infer(tokens(), cfg.act_threshold, cfg.sup_steps, &t));
        let (k, s, w) = (run(&kernel), run(&burn_a8), run(&weights_only));
        let scale = s.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = |a: &[f32], b: &[f32]| {
            a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
        };
        assert!(
            diff(&k, &s) < 1e-3,
            "kernel vs burn W1.58A8: {}",
            diff(&k, &s)
        );
        // Quantizing the activations is a real change: W1.58A8 is not W1.58 in f32.
        assert!(
            diff(&s, &w) > 10.0 * diff(&k, &s),
            "{} vs {}",
            diff(&s, &w),
            diff(&k, &s)
        );
    }

    #[test]
    fn a_quantized_file_without_one_of_the_models_tensors_is_refused() {
        let dev = crate::device::resolve("cpu").unwrap().device.inner();
        let cfg = ModelConfig::micro();
        let model = TrmTitansMag::new(&cfg, 3, &dev);
        let sd = StateDict::from_bytes(&weights::to_bytes(&model).unwrap()).unwrap();
        let mut q =
            QuantizedModel::quantize(&sd, &default_preserve(), &BTreeSet::new(), Precision::F32);
        assert!(load_quantized(&cfg, q.clone(), &dev).is_ok());
        for name in ["halt.weight", "norm_out.gain"] {
            let mut less = q.clone();
            less.tensors.remove(name);
            let err = load_quantized(&cfg, less, &dev).expect_err("refused");
            assert!(err.to_string().contains(name), "{err}");
        }
        q.tensors.clear();
        assert!(load_quantized(&cfg, q.clone(), &dev).is_err());
    }

    #[test]
    fn a_host_table_reads_the_stored_values_and_projects_like_the_f32_table() {
        use rand::{Rng, SeedableRng};
        let dev = crate::device::resolve("cpu").unwrap().device.inner();
        let (rows, cols) = (PROJECT_ROWS + 477, 24);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let w = crate::merge::tensors::Tensor {
            shape: vec![rows, cols],
            data: (0..rows * cols)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect(),
        };
        let x: Vec<f32> = (0..2 * 3 * cols)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        for precision in [Precision::F16, Precision::Int8] {
            let keep = [crate::quant::model::Preserve {
                pattern: "embed".into(),
                precision,
            }];
            let stored = crate::quant::model::quantize_tensor(
                "embed",
                &w,
                &keep,
                &BTreeSet::new(),
                Precision::F32,
            );
            let values = stored.values();
            let table = HostTable::new(stored).expect("f16 and int8 are host tables");
            let ids = [0i64, 1, rows as i64 - 1, 700, 3, PROJECT_ROWS as i64];
            let looked = table
                .lookup(Tensor::from_data(
                    TensorData::new(ids.to_vec(), [2, 3]),
                    &dev,
                ))
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let want: Vec<f32> = ids
                .iter()
                .flat_map(|&i| values[i as usize * cols..][..cols].to_vec())
                .collect();
            assert_eq!(looked, want, "{precision:?}: rows exactly as stored");

            let xt = || Tensor::<3>::from_data(TensorData::new(x.clone(), [2, 3, cols]), &dev);
            let full = Tensor::<2>::from_data(TensorData::new(values, [rows, cols]), &dev);
            let want = xt()
                .reshape([6, cols])
                .matmul(full.transpose())
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let got = table.project(xt());
            assert_eq!(got.dims(), [2, 3, rows]);
            let got = got.into_data().try_to_vec::<f32>().unwrap();
            let err = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err < 1e-5, "{precision:?}: projection off by {err}");
        }
        let f32_table = crate::quant::model::Stored::F32(w);
        assert!(HostTable::new(f32_table).is_none(), "f32 stays a parameter");
    }

    #[test]
    fn an_f16_embedding_stays_on_the_host_and_gives_the_logits_of_its_f32_copy() {
        let dev = crate::device::resolve("cpu").unwrap().device.inner();
        let cfg = small(true);
        let model = TrmTitansMag::new(&cfg, 3, &dev);
        let sd = StateDict::from_bytes(&weights::to_bytes(&model).unwrap()).unwrap();
        let q =
            QuantizedModel::quantize(&sd, &default_preserve(), &BTreeSet::new(), Precision::F16);
        assert!(matches!(q.tensors["embed"], Stored::F16 { .. }));
        let embed = q.tensors["embed"].values();
        let host = load_quantized(&cfg, q.clone(), &dev).unwrap();
        assert!(host.embed_host.is_some());
        assert_eq!(host.embed.val().dims(), [1, 1], "no f32 copy kept");
        let mut copy = load_quantized(&cfg, q, &dev).unwrap();
        copy.embed_host = None;
        copy.embed = Param::from_tensor(Tensor::from_data(
            TensorData::new(embed, [cfg.vocab_size, cfg.d_model]),
            &dev,
        ));
        let ids: Vec<i64> = (0..2 * 12)
            .map(|i| (i * 5 + 1) % cfg.vocab_size as i64)
            .collect();
        let tokens = || Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [2, 12]), &dev);
        let t = Tables::new(&cfg, &dev);
        let run =
            |m: &TrmTitansMag| logits(m.infer(tokens(), cfg.act_threshold, cfg.sup_steps, &t));
        let (a, b) = (run(&host), run(&copy));
        let err = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err < 1e-5, "host vs f32 embedding: {err}");
    }
}
