//! One technique applied file to file, streaming: inputs are memory-mapped, each output tensor is
//! computed from the inputs' tensors of the same name (or, for the layer-wise techniques, copied
//! from the layer it is routed to), written, and dropped before the next. This is what
//! `strategy: merge` runs and what `bench/merge.sh` times against mergekit.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::layers::route;
use super::methods::{self, Sparsify};
use super::technique::Technique;
use super::tensors::{DType, TensorFile, TensorWriter};

/// What a file merge did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileMergeStats {
    pub tensors: usize,
    pub parameters: usize,
    pub bytes_written: u64,
}

/// Merge `models` (and `base` for task arithmetic) into `out` with `technique`.
pub fn merge_files(
    technique: &Technique,
    models: &[&Path],
    base: Option<&Path>,
    out: &Path,
    seed: u64,
) -> Result<FileMergeStats, String> {
    merge_files_watched(technique, models, base, out, seed, &mut |_, _| true)
}

/// What a merge stopped by its watcher returns.
pub const STOPPED: &str = "stopped";

/// [`merge_files`], calling `keep_going(tensors done, tensors in all)` before each output
/// tensor: progress, and a way to stop (it returns `false`; the merge then returns
/// `Err(STOPPED)`, leaving `out` unfinished).
pub fn merge_files_watched(
    technique: &Technique,
    models: &[&Path],
    base: Option<&Path>,
    out: &Path,
    seed: u64,
    keep_going: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<FileMergeStats, String> {
    if let Some(problem) = technique
        .check_params()
        .or_else(|| technique.check_inputs(models.len()))
    {
        return Err(problem);
    }
    let files: Vec<TensorFile> = models
        .iter()
        .map(|p| TensorFile::open(p).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let base = match (base, technique.needs_base()) {
        (Some(p), true) => Some(TensorFile::open(p).map_err(|e| e.to_string())?),
        (None, true) => return Err(format!("{} needs a base model", technique.name())),
        _ => None,
    };
    if let Some((picks, rest_from)) = technique.picks() {
        let names: Vec<Vec<&str>> = files
            .iter()
            .map(|f| f.tensors().keys().map(String::as_str).collect())
            .collect();
        let route = route(&names, &picks, rest_from)?;
        let layout = route
            .iter()
            .map(|(out, s)| {
                let info = &files[s.model].tensors()[&s.name];
                (out.clone(), (info.dtype, info.shape.clone()))
            })
            .collect();
        return write_streamed(out, &layout, keep_going, |name| {
            let source = &route[name];
            let mut v = files[source.model]
                .read(&source.name)
                .expect("routed tensors exist");
            source.scale_values(&mut v);
            v
        });
    }
    // Per-tensor techniques: every input must have the first model's names and shapes.
    let first = files[0].tensors();
    for (f, path) in files
        .iter()
        .zip(models)
        .chain(base.iter().zip([&Path::new("base")]))
    {
        let same = f.tensors().len() == first.len()
            && f.tensors()
                .iter()
                .zip(first)
                .all(|((a, x), (b, y))| a == b && x.shape == y.shape);
        if !same {
            return Err(format!(
                "`{}` does not have the same tensor names and shapes as `{}`",
                path.display(),
                models[0].display()
            ));
        }
    }
    let layout = first
        .iter()
        .map(|(k, i)| (k.clone(), (i.dtype, i.shape.clone())))
        .collect();
    let equal = vec![1.0; files.len()];
    let weights = |w: &Option<Vec<f64>>| w.as_deref().unwrap_or(&equal).to_vec();
    // Task arithmetic: how to sparsify, weights, density, lambda, normalize.
    let task = match technique {
        Technique::Ties {
            weights: w,
            density,
            lambda,
            normalize,
        } => Some((Sparsify::Ties, weights(w), *density, *lambda, *normalize)),
        Technique::Dare {
            weights: w,
            density,
            lambda,
            rescale,
            normalize,
        } => {
            let how = Sparsify::Dare {
                rescale: *rescale,
                seed,
            };
            Some((how, weights(w), *density, *lambda, *normalize))
        }
        _ => None,
    };
    let linear_weights = match technique {
        Technique::Linear { weights: w, .. } => weights(w),
        _ => Vec::new(),
    };
    write_streamed(out, &layout, keep_going, |name| {
        let inputs: Vec<Vec<f32>> = files
            .iter()
            .map(|f| f.read(name).expect("checked"))
            .collect();
        let xs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        match (technique, &task) {
            (Technique::Linear { normalize, .. }, _) => {
                methods::linear(&xs, &linear_weights, *normalize)
            }
            (Technique::Slerp { t }, _) => methods::slerp(xs[0], xs[1], *t),
            (_, Some((how, w, density, lambda, normalize))) => {
                let b = base.as_ref().expect("checked").read(name).expect("checked");
                methods::task_arithmetic(name, &b, &xs, w, *density, *lambda, *normalize, *how)
            }
            _ => unreachable!("layer-wise techniques are routed above"),
        }
    })
}

/// Write `layout`'s tensors to `out`, each computed by `produce` from its name, one at a time.
fn write_streamed(
    out: &Path,
    layout: &BTreeMap<String, (DType, Vec<usize>)>,
    keep_going: &mut dyn FnMut(usize, usize) -> bool,
    mut produce: impl FnMut(&str) -> Vec<f32>,
) -> Result<FileMergeStats, String> {
    let mut w = TensorWriter::create(out, layout).map_err(|e| e.to_string())?;
    let mut stats = FileMergeStats::default();
    for (name, (dtype, shape)) in layout {
        if !keep_going(stats.tensors, layout.len()) {
            return Err(STOPPED.into());
        }
        let values = produce(name);
        stats.tensors += 1;
        stats.parameters += values.len();
        w.write(name, values).map_err(|e| e.to_string())?;
        stats.bytes_written += (shape.iter().product::<usize>() * dtype.size()) as u64;
    }
    w.finish().map_err(|e| e.to_string())?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::combo::tests::toy;
    use crate::merge::layers::LayerPick;

    #[test]
    fn a_watched_merge_reports_every_tensor_and_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        for (n, seed) in [("a", 2), ("b", 3)] {
            std::fs::write(p(n), toy(seed, None).to_bytes()).unwrap();
        }
        let lin = Technique::Linear {
            weights: None,
            normalize: true,
        };
        let mut seen = Vec::new();
        let stats =
            merge_files_watched(&lin, &[&p("a"), &p("b")], None, &p("o"), 0, &mut |d, n| {
                seen.push((d, n));
                true
            })
            .unwrap();
        let n = stats.tensors;
        assert_eq!(seen, (0..n).map(|d| (d, n)).collect::<Vec<_>>());
        let mut calls = 0;
        let r = merge_files_watched(&lin, &[&p("a"), &p("b")], None, &p("o2"), 0, &mut |d, _| {
            calls += 1;
            d < 1
        });
        assert_eq!(r.unwrap_err(), STOPPED);
        assert_eq!(calls, 2, "stopped before the second tensor");
    }

    #[test]
    fn file_merges_match_the_in_memory_formulas() {
        let dir = tempfile::tempdir().unwrap();
        let base = toy(1, None);
        let a = toy(2, Some(&base));
        let b = toy(3, Some(&base));
        let p = |n: &str| dir.path().join(n);
        for (n, m) in [("base", &base), ("a", &a), ("b", &b)] {
            std::fs::write(p(n), m.to_bytes()).unwrap();
        }
        let read = |n: &str| TensorFile::open(&p(n)).unwrap().load();
        let lin = Technique::Linear {
            weights: Some(vec![1.0, 3.0]),
            normalize: true,
        };
        merge_files(&lin, &[&p("a"), &p("b")], None, &p("out"), 0).unwrap();
        let out = read("out");
        let k = "blocks.1.attn.wq.weight";
        let want = methods::linear(&[&a.tensors[k].data, &b.tensors[k].data], &[1.0, 3.0], true);
        assert_eq!(out.tensors[k].data, want);
        // Output bytes are canonical: the in-memory writer gives the same file.
        assert_eq!(std::fs::read(p("out")).unwrap(), out.to_bytes());
        let ties = Technique::Ties {
            weights: None,
            density: 0.5,
            lambda: 1.0,
            normalize: true,
        };
        assert!(
            merge_files(&ties, &[&p("a"), &p("b")], None, &p("o2"), 0)
                .unwrap_err()
                .contains("base")
        );
        merge_files(&ties, &[&p("a"), &p("b")], Some(&p("base")), &p("o2"), 0).unwrap();
        let want = methods::task_arithmetic(
            k,
            &base.tensors[k].data,
            &[&a.tensors[k].data, &b.tensors[k].data],
            &[1.0, 1.0],
            0.5,
            1.0,
            true,
            Sparsify::Ties,
        );
        assert_eq!(read("o2").tensors[k].data, want);
        let slerp = Technique::Slerp { t: 0.0 };
        merge_files(&slerp, &[&p("a"), &p("b")], None, &p("o3"), 0).unwrap();
        assert_eq!(read("o3"), a, "t = 0 is the first model");
        // Layer-wise: the file route equals the in-memory assembly.
        let routing = vec![
            LayerPick {
                model: 1,
                layer: 2,
                scale: 0.5,
            },
            LayerPick {
                model: 0,
                layer: 0,
                scale: 1.0,
            },
        ];
        let routed = Technique::Routing {
            routing: routing.clone(),
            rest_from: 1,
        };
        merge_files(&routed, &[&p("a"), &p("b")], None, &p("o4"), 0).unwrap();
        let want = crate::merge::layers::assemble(&[&a, &b], &routing, 1).unwrap();
        assert_eq!(read("o4"), want);
        assert!(slerp.check_inputs(3).is_some());
    }
}
