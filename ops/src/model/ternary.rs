//! A BitNet b1.58 model as a burn module: which [`Dense`](super::layers::Dense) layers are
//! ternary and how they compute ([`Ternary`]). A `quantized-model` artifact loads for inference
//! with its ternary layers running through the packed kernel ([`load_quantized`]); calibration
//! runs the same W1.58A8 arithmetic in burn on dequantized weights ([`in_burn`]). The two agree
//! to float tolerance (tested).

use std::collections::BTreeSet;
use std::sync::Arc;

use burn::module::Param;
use burn::tensor::{Device, Tensor};

use super::layers::Ternary;
use super::{ModelConfig, TrmTitansMag, WeightsError, weights};
use crate::merge::{self, tensors::StateDict};
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

/// The quantized model `q` on `device` for inference: preserved tensors at their stored values,
/// ternary layers through the kernel, their full-precision weights dropped.
pub fn load_quantized(
    cfg: &ModelConfig,
    q: &QuantizedModel,
    device: &Device,
) -> Result<TrmTitansMag, WeightsError> {
    // The preserved tensors only: the ternary weights are never expanded to f32.
    let preserved = StateDict {
        tensors: q
            .tensors
            .iter()
            .filter(|(_, s)| !s.is_ternary())
            .map(|(n, s)| {
                let t = merge::tensors::Tensor {
                    shape: s.shape().to_vec(),
                    data: s.values(),
                };
                (n.clone(), t)
            })
            .collect(),
    };
    let mut model = TrmTitansMag::new(cfg, 0, device);
    let report = weights::load_into(&mut model, preserved.to_bytes(), "the model")?;
    let mut missing: BTreeSet<String> = report.initialized.into_iter().collect();
    for (path, dense) in model.denses_mut() {
        let name = format!("{path}.weight");
        if let Some(Stored::Ternary { packed, shape }) = q.tensors.get(&name) {
            let want = dense.weight.val().dims();
            if shape[..] != want[..] {
                return Err(WeightsError::Unreadable {
                    what: "the model".into(),
                    message: format!("`{name}` is {shape:?} in the file, {want:?} in the model"),
                });
            }
            dense.ternary = Ternary::Kernel(Arc::new(packed.clone()));
            dense.weight = Param::from_tensor(Tensor::zeros([1, 1], device));
            missing.remove(&name);
        }
    }
    match missing.into_iter().next() {
        Some(name) => Err(WeightsError::Unreadable {
            what: "the model".into(),
            message: format!("the quantized model has no tensor `{name}`"),
        }),
        None => Ok(model),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InferOutput, Tables};
    use crate::quant::model::{Precision, default_preserve};
    use burn::tensor::{Int, TensorData};

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
        let cfg = ModelConfig {
            vocab_size: 64,
            d_model: 32,
            layers: 2,
            d_ff: 64,
            memory_layers: vec![1],
            ltm_slots: 8,
            mem_chunk: 4,
            tie_embeddings: false,
            ..ModelConfig::micro()
        };
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
        let kernel = load_quantized(&cfg, &q, &dev).unwrap();
        let mut burn_a8 =
            weights::model_from(&cfg, 0, q.dequantize().to_bytes(), "m", &dev).unwrap();
        in_burn(&mut burn_a8, &ternary);
        let weights_only =
            weights::model_from(&cfg, 0, q.dequantize().to_bytes(), "m", &dev).unwrap();

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
        assert!(load_quantized(&cfg, &q, &dev).is_ok());
        for name in ["halt.weight", "norm_out.gain"] {
            let mut less = q.clone();
            less.tensors.remove(name);
            let err = load_quantized(&cfg, &less, &dev).expect_err("refused");
            assert!(err.to_string().contains(name), "{err}");
        }
        q.tensors.clear();
        assert!(load_quantized(&cfg, &q, &dev).is_err());
    }
}
