//! QK-clip (MuonClip): keep attention logits bounded by rescaling the query and key projections
//! of the heads whose largest logit exceeded τ in the last forward pass.

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};

use crate::model::TrmTitansMag;

/// QK-clip (MuonClip): where a head's max attention logit exceeds τ, scale its query and key
/// columns by √(τ / max) so the logit comes back to τ. Returns how many heads were clipped.
/// `max_logits` has one entry per block: each head's largest logit over all of the block's passes.
pub fn qk_clip(model: TrmTitansMag, max_logits: &[Vec<f32>], tau: f64) -> (TrmTitansMag, usize) {
    assert_eq!(
        model.blocks.len(),
        max_logits.len(),
        "one max-logit entry per block"
    );
    let mut model = model;
    let mut clipped = 0;
    for (block, logits) in model.blocks.iter_mut().zip(max_logits) {
        if !logits.iter().any(|m| *m as f64 > tau) {
            continue;
        }
        let d = block.attn.wq.weight.val().dims()[1];
        let dh = d / logits.len();
        let mut scale = vec![1f32; d];
        for (h, m) in logits.iter().enumerate() {
            if *m as f64 > tau {
                clipped += 1;
                let f = (tau / *m as f64).sqrt() as f32;
                scale[h * dh..(h + 1) * dh].iter_mut().for_each(|x| *x = f);
            }
        }
        let apply = |p: Param<Tensor<2>>, scale: &[f32]| {
            let (id, t, mapper) = p.consume();
            let rg = t.is_require_grad();
            let dev = t.device();
            let s = Tensor::<2>::from_data(TensorData::new(scale.to_vec(), [1, d]), &dev);
            let mut new = Tensor::from_inner(t.inner().mul(s.inner()));
            if rg {
                new = new.require_grad();
            }
            Param::from_mapped_value(id, new, mapper)
        };
        block.attn.wq.weight = apply(block.attn.wq.weight.clone(), &scale);
        block.attn.wk.weight = apply(block.attn.wk.weight.clone(), &scale);
    }
    (model, clipped)
}
