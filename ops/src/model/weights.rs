//! Weight I/O of the model: serialising it to byte-stable safetensors and loading safetensors
//! into it, with three explicit ways in —
//!
//! - [`load_exact`]: every tensor of the file fills one of the model and nothing is left over (a
//!   checkpoint, a merge candidate, an `init` model of the same config);
//! - [`load_into`]: the file fills part of a *larger* model — one with new heads — and the
//!   tensors it lacks keep their fresh initialisation and are reported ([`LoadReport::initialized`]);
//!   a tensor the model has no place for is still an error;
//! - [`load_remapped`]: file names are rewritten first (regex → replacement), for wrappers that
//!   keep a weight under another name, such as latent full-precision weights behind a quantizer.
//!
//! burn-store writes the header's `__metadata__` from a HashMap, so two saves of identical
//! weights differ in header key order; forge's artifacts must be the same bytes for the same
//! inputs, so headers are rewritten canonically (keys sorted, padded to 8 bytes as the format
//! requires). Tensor data and offsets are untouched.

use std::collections::BTreeMap;

use burn::store::{KeyRemapper, ModuleSnapshot, SafetensorsStore};

use super::TrmTitansMag;

/// Loading or saving weights failed.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("serialising the model: {0}")]
    Save(String),
    #[error("loading {what}: {message}")]
    Unreadable { what: String, message: String },
    #[error(
        "{what} does not fit this model config (missing {missing:?}, unused {unused:?}, errors {errors:?})"
    )]
    Mismatch {
        what: String,
        missing: Vec<String>,
        unused: Vec<String>,
        errors: Vec<String>,
    },
}

/// What [`load_into`] filled and what it left at its initial values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    /// Tensors of the model the file does not have: they keep their fresh initialisation.
    pub initialized: Vec<String>,
}

/// The model as canonical safetensors bytes.
pub fn to_bytes(model: &TrmTitansMag) -> Result<Vec<u8>, WeightsError> {
    let mut store = SafetensorsStore::from_bytes(None);
    model
        .save_into(&mut store)
        .map_err(|e| WeightsError::Save(e.to_string()))?;
    let bytes = store
        .get_bytes()
        .map_err(|e| WeightsError::Save(e.to_string()))?;
    canonical_safetensors(&bytes).map_err(WeightsError::Save)
}

fn apply(
    model: &mut TrmTitansMag,
    store: SafetensorsStore,
    what: &str,
    partial: bool,
) -> Result<LoadReport, WeightsError> {
    let mut store = store.allow_partial(partial);
    let r = model
        .load_from(&mut store)
        .map_err(|e| WeightsError::Unreadable {
            what: what.into(),
            message: e.to_string(),
        })?;
    report(&r, what, partial)
}

/// What a load filled, or why it does not fit: every file tensor needs a place in the model, and
/// unless `partial`, every model tensor needs one in the file.
fn report(
    r: &burn::store::ApplyResult,
    what: &str,
    partial: bool,
) -> Result<LoadReport, WeightsError> {
    let missing: Vec<String> = r.missing.iter().map(|(p, _)| p.clone()).collect();
    if (!partial && !missing.is_empty()) || !r.errors.is_empty() || !r.unused.is_empty() {
        return Err(WeightsError::Mismatch {
            what: what.into(),
            missing,
            unused: r.unused.clone(),
            errors: r.errors.iter().map(|e| format!("{e:?}")).collect(),
        });
    }
    Ok(LoadReport {
        loaded: r.applied.clone(),
        initialized: missing,
    })
}

/// One tensor to load, its f32 values produced only when the loader reaches it.
pub struct Deferred {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Box<dyn Fn() -> Vec<f32> + Send + Sync>,
}

/// Load `tensors` into `model` one at a time: each one's values are produced, moved into the
/// model and dropped before the next is produced, so the load holds one tensor besides the
/// model. Partial like [`load_into`] when `partial`, exact like [`load_exact`] otherwise.
pub fn load_deferred(
    model: &mut TrmTitansMag,
    tensors: Vec<Deferred>,
    what: &str,
    partial: bool,
) -> Result<LoadReport, WeightsError> {
    use burn::store::bridge;
    let tensors = tensors
        .into_iter()
        .map(|t| {
            let shape = t.shape.clone();
            let values = t.values;
            bridge::deferred(
                t.name,
                burn::tensor::DType::F32,
                t.shape.into(),
                None,
                move || Ok(burn::tensor::TensorData::new(values(), shape.clone())),
            )
        })
        .collect();
    let r = model.apply(tensors, None, None, false);
    report(&r, what, partial)
}

/// A model of `cfg` on `device` holding exactly the weights of the safetensors file at `path`
/// (`what` in messages), read tensor by tensor from a memory map whose pages are released once
/// copied: loading peaks at about the model's size, not twice it.
pub fn model_from_file(
    cfg: &crate::model::ModelConfig,
    path: &std::path::Path,
    what: &str,
    device: &burn::tensor::Device,
) -> Result<TrmTitansMag, WeightsError> {
    let file =
        crate::merge::tensors::TensorFile::open(path).map_err(|e| WeightsError::Unreadable {
            what: what.into(),
            message: e.to_string(),
        })?;
    let file = std::sync::Arc::new(file);
    let tensors = file
        .tensors()
        .iter()
        .map(|(name, info)| {
            let (file, key) = (file.clone(), name.clone());
            Deferred {
                name: name.clone(),
                shape: info.shape.clone(),
                values: Box::new(move || file.read(&key).expect("a tensor the file lists")),
            }
        })
        .collect();
    let mut model = TrmTitansMag::skeleton(cfg, device);
    load_deferred(&mut model, tensors, what, false)?;
    Ok(model)
}

/// Load `bytes` (safetensors) into `model`; every tensor must match one-to-one. `what` names the
/// weights in messages ("the init model from cognate.init").
pub fn load_exact(
    model: &mut TrmTitansMag,
    bytes: Vec<u8>,
    what: &str,
) -> Result<(), WeightsError> {
    apply(
        model,
        SafetensorsStore::from_bytes(Some(bytes)),
        what,
        false,
    )
    .map(|_| ())
}

/// A model of `cfg` on `device` with exactly the weights in `bytes` (see [`load_exact`]), built
/// without drawing initial weights first ([`TrmTitansMag::skeleton`]).
pub fn model_from(
    cfg: &crate::model::ModelConfig,
    bytes: Vec<u8>,
    what: &str,
    device: &burn::tensor::Device,
) -> Result<TrmTitansMag, WeightsError> {
    let mut model = TrmTitansMag::skeleton(cfg, device);
    load_exact(&mut model, bytes, what)?;
    Ok(model)
}

/// Load `bytes` into a model that may have more tensors than the file (new heads): those keep
/// their initial values and are listed in the report. A file tensor without a place is an error.
pub fn load_into(
    model: &mut TrmTitansMag,
    bytes: Vec<u8>,
    what: &str,
) -> Result<LoadReport, WeightsError> {
    apply(model, SafetensorsStore::from_bytes(Some(bytes)), what, true)
}

/// [`load_into`] after renaming the file's tensors by `(regex, replacement)` pairs, in order.
pub fn load_remapped(
    model: &mut TrmTitansMag,
    bytes: Vec<u8>,
    what: &str,
    renames: &[(&str, &str)],
) -> Result<LoadReport, WeightsError> {
    let remapper =
        KeyRemapper::from_patterns(renames.to_vec()).map_err(|e| WeightsError::Unreadable {
            what: what.into(),
            message: format!("bad rename pattern: {e}"),
        })?;
    apply(
        model,
        SafetensorsStore::from_bytes(Some(bytes)).remap(remapper),
        what,
        true,
    )
}

/// Rewrite a safetensors buffer with a canonical header.
pub fn canonical_safetensors(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.len() < 8 {
        return Err("safetensors buffer too short".into());
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = bytes
        .get(8..8 + n)
        .ok_or("safetensors header out of bounds")?;
    let data = &bytes[8 + n..];
    let parsed: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let mut text = String::from("{");
    for (i, (k, v)) in parsed.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&serde_json::to_string(k).expect("string"));
        text.push(':');
        text.push_str(&canonical_json(v));
    }
    text.push('}');
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + data.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

fn canonical_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => {
            let sorted: BTreeMap<&String, &serde_json::Value> = m.iter().collect();
            let parts: Vec<String> = sorted
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}:{}",
                        serde_json::to_string(k).expect("string"),
                        canonical_json(v)
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        serde_json::Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical_json).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// Every float parameter of `model` by its path (`blocks.0.attn.wq.weight`), with its values:
/// what tests compare weights and gradients by.
#[cfg(test)]
pub fn named_values(model: &TrmTitansMag) -> Vec<(String, Vec<f32>)> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::Tensor;
    struct V(Vec<String>, Vec<(String, Vec<f32>)>);
    impl ModuleVisitor for V {
        fn enter_module(&mut self, name: &str, _c: &str) {
            self.0.push(name.to_owned());
        }
        fn exit_module(&mut self, _name: &str, _c: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.1
                .push((self.0.join("."), p.val().to_data().try_to_vec().unwrap()));
        }
    }
    let mut v = V(Vec::new(), Vec::new());
    model.visit(&mut v);
    v.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    fn small(tie: bool) -> ModelConfig {
        ModelConfig {
            tie_embeddings: tie,
            ..ModelConfig::micro()
        }
    }

    fn tensor(model: &TrmTitansMag, path: &str) -> Vec<u8> {
        let bytes = to_bytes(model).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensor(path)
            .unwrap_or_else(|_| panic!("no tensor {path}"))
            .data()
            .to_vec()
    }

    #[test]
    fn exact_loads_round_trip_and_refuse_a_different_shape_of_model() {
        let dev = crate::device::test_device();
        let a = TrmTitansMag::new(&small(true), 1, &dev);
        let bytes = to_bytes(&a).unwrap();
        let mut b = TrmTitansMag::new(&small(true), 2, &dev);
        load_exact(&mut b, bytes.clone(), "a").unwrap();
        assert_eq!(
            to_bytes(&b).unwrap(),
            bytes,
            "same bytes after a round trip"
        );
        // An untied model has an output head the file lacks: exact loading refuses it.
        let mut untied = TrmTitansMag::new(&small(false), 3, &dev);
        let err = load_exact(&mut untied, bytes, "a").unwrap_err().to_string();
        assert!(err.contains("head"), "{err}");
    }

    #[test]
    fn a_smaller_model_loads_into_a_larger_one_and_new_heads_are_reported() {
        let dev = crate::device::test_device();
        let tied = TrmTitansMag::new(&small(true), 1, &dev);
        let mut untied = TrmTitansMag::new(&small(false), 3, &dev);
        let head_before = tensor(&untied, "head.weight");
        let report = load_into(&mut untied, to_bytes(&tied).unwrap(), "tied").unwrap();
        assert_eq!(report.initialized, vec!["head.weight".to_string()]);
        assert!(report.loaded.contains(&"embed".to_string()));
        assert_eq!(tensor(&untied, "embed"), tensor(&tied, "embed"));
        assert_eq!(
            tensor(&untied, "head.weight"),
            head_before,
            "new head keeps its init"
        );
        // The other way a tensor has no place, which stays an error.
        let mut tied2 = TrmTitansMag::new(&small(true), 4, &dev);
        assert!(load_into(&mut tied2, to_bytes(&untied).unwrap(), "untied").is_err());
    }

    #[test]
    fn renamed_weights_load_under_their_new_names() {
        let dev = crate::device::test_device();
        let a = TrmTitansMag::new(&small(true), 1, &dev);
        let mut renamed = safetensors::SafeTensors::deserialize(&to_bytes(&a).unwrap())
            .unwrap()
            .tensors()
            .into_iter()
            .map(|(n, v)| (format!("latent.{n}"), v.data().to_vec(), v.shape().to_vec()))
            .collect::<Vec<_>>();
        renamed.sort();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = renamed
            .iter()
            .map(|(n, d, s)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                        .unwrap(),
                )
            })
            .collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        let mut b = TrmTitansMag::new(&small(true), 2, &dev);
        assert!(load_exact(&mut b, bytes.clone(), "renamed").is_err());
        let r = load_remapped(&mut b, bytes, "renamed", &[(r"^latent\.", "")]).unwrap();
        assert!(r.initialized.is_empty());
        assert_eq!(tensor(&b, "embed"), tensor(&a, "embed"));
    }

    #[test]
    fn header_order_no_longer_matters() {
        let make = |header: &str| {
            let mut h = header.to_string();
            while !h.len().is_multiple_of(8) {
                h.push(' ');
            }
            let mut b = (h.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(h.as_bytes());
            b.extend_from_slice(&[0, 0, 128, 63]);
            b
        };
        let a = make(
            r#"{"__metadata__":{"b":"2","a":"1"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        );
        let b = make(
            r#"{"w":{"shape":[1],"dtype":"F32","data_offsets":[0,4]},"__metadata__":{"a":"1","b":"2"}}"#,
        );
        assert_ne!(a, b);
        let (ca, cb) = (
            canonical_safetensors(&a).unwrap(),
            canonical_safetensors(&b).unwrap(),
        );
        assert_eq!(ca, cb);
        assert_eq!(&ca[ca.len() - 4..], &[0, 0, 128, 63]);
        assert_eq!((ca.len() - 12) % 8, 0);
    }

    #[test]
    fn a_skeleton_holds_no_values_until_a_file_fills_it_and_then_holds_the_files() {
        use burn::module::{Module, ModuleVisitor, Param};
        struct Count(usize, usize);
        impl ModuleVisitor for Count {
            fn visit_float<const D: usize>(&mut self, p: &Param<burn::tensor::Tensor<D>>) {
                self.0 += 1;
                self.1 += usize::from(p.is_initialized());
            }
        }
        let dev = crate::device::test_device();
        let cfg = small(true);
        let skeleton = TrmTitansMag::skeleton(&cfg, &dev);
        let mut count = Count(0, 0);
        skeleton.visit(&mut count);
        assert!(count.0 > 10);
        assert_eq!(count.1, 0, "no parameter drawn or allocated");

        let a = TrmTitansMag::new(&cfg, 1, &dev);
        let bytes = to_bytes(&a).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let from_bytes = model_from(&cfg, bytes.clone(), "a", &dev).unwrap();
        let from_file = model_from_file(&cfg, &path, "a", &dev).unwrap();
        assert_eq!(to_bytes(&from_bytes).unwrap(), bytes);
        assert_eq!(to_bytes(&from_file).unwrap(), bytes);
        // The file must fill the whole model.
        let err = model_from_file(&small(false), &path, "the file", &dev)
            .expect_err("an untied model needs a head")
            .to_string();
        assert!(err.contains("the file") && err.contains("head"), "{err}");
    }
}
