//! What baking is measured by: on held-out reasoning prompts, what the model writes by greedy
//! decoding under ACT after `Question: <prompt>\n`.
//!
//! - **Structure accuracy** (`baking/accuracy_<strategy>`): the output starts with `[thinking]`
//!   and the prompt's strategy token, later closes the thought with `[/endthinking]` (once), and
//!   then has a final `#### <answer>` line with something after the marker. The seed's gate is
//!   ≥ 0.85 on the mean over strategies (`baking/accuracy_overall`).
//! - **Answer accuracy** (`baking/answer_accuracy_<strategy>`): the final answer line is the
//!   record's answer, whatever the structure; measured for the input model too, beside it.
//! - **Token usage**: the share of outputs with a `[thinking]` token, and the mean number of
//!   strategy tokens per output.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::strategies::{STRATEGIES, Strategy};
use super::tokens::FIRST_ID;
use crate::context::StepContext;
use crate::data::{Corpus, Record};
use crate::error::OpError;
use crate::eval::{Decoding, answer_line_complete, eval_batches, greedy_batch, score};
use crate::model::{ModelConfig, Tables, TrmTitansMag};
use crate::text::TextCodec;

/// The seed's structure-accuracy gate.
pub const CONVERGED_AT: f64 = 0.85;

/// One output, judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// The output as text, special tokens shown.
    pub text: String,
    pub structure: bool,
    pub answer: bool,
    pub thinking: bool,
    pub strategy_tokens: usize,
}

/// The id of a strategy's token.
pub fn strategy_id(s: Strategy) -> i64 {
    let i = STRATEGIES
        .iter()
        .position(|o| o.token == s.token)
        .expect("a strategy");
    (FIRST_ID + 2 + i) as i64
}

/// Judge generated `ids` for a prompt of strategy `s` whose answer is `answer`.
pub fn judge(ids: &[i64], s: Strategy, answer: &str, codec: &TextCodec) -> Judged {
    let (start, end) = (FIRST_ID as i64, FIRST_ID as i64 + 1);
    let strategies = (FIRST_ID as i64 + 2)..(FIRST_ID as i64 + 12);
    let close = ids.iter().position(|&t| t == end);
    let final_line = |from: usize| -> Option<String> {
        let text = codec.decode(&ids[from..]);
        let rest = text.split("####").nth(1)?;
        let line = rest.lines().next().unwrap_or_default().trim().to_string();
        (!line.is_empty()).then_some(line)
    };
    let after = close.map_or(0, |c| c + 1);
    let given = final_line(after);
    let structure = ids.len() >= 2
        && ids[0] == start
        && ids[1] == strategy_id(s)
        && close.is_some()
        && ids.iter().filter(|&&t| t == end).count() == 1
        && given.is_some();
    Judged {
        text: codec
            .tokenizer
            .decode(&ids.iter().map(|&i| i as u32).collect::<Vec<_>>(), false)
            .unwrap_or_default(),
        structure,
        answer: given.as_deref() == Some(answer.trim()),
        thinking: ids.contains(&start),
        strategy_tokens: ids.iter().filter(|t| strategies.contains(t)).count(),
    }
}

/// Up to `per_strategy` held-out records of each strategy (in file order).
pub fn eval_records(records: &[Record], per_strategy: usize) -> Vec<(Strategy, &Record)> {
    let mut out = Vec::new();
    for s in STRATEGIES {
        out.extend(
            records
                .iter()
                .filter(|r| r.category == s.metric)
                .take(per_strategy)
                .map(|r| (s, r)),
        );
    }
    out
}

/// A reasoning prompt as the traces start: `Question: <prompt>\n`, without the end token (the
/// trace follows).
pub fn question(codec: &TextCodec, prompt: &str) -> Vec<i64> {
    let mut p = codec.encode(&format!("Question: {prompt}\n"));
    p.pop();
    p
}

/// Generate (greedy, under ACT, `batch` prompts at a time) and judge every record of `set`.
pub fn run(
    model: &TrmTitansMag,
    set: &[(Strategy, &Record)],
    codec: &TextCodec,
    max_new: usize,
    batch: usize,
    d: &Decoding<'_>,
    progress: &mut dyn FnMut(usize, usize) -> Result<(), crate::error::OpError>,
) -> Result<Vec<Judged>, crate::error::OpError> {
    let done = |new: &[i64]| answer_line_complete(&codec.decode(new));
    let mut out = Vec::with_capacity(set.len());
    for chunk in set.chunks(batch.max(1)) {
        progress(out.len(), set.len())?;
        let prompts: Vec<Vec<i64>> = chunk
            .iter()
            .map(|(_, r)| question(codec, &r.prompt))
            .collect();
        let generated = greedy_batch(model, prompts, max_new, d, &done);
        for ((s, r), ids) in chunk.iter().zip(generated) {
            out.push(judge(&ids, *s, &r.answer, codec));
        }
    }
    Ok(out)
}

/// The first output of each strategy (for the step's log).
pub fn first_per_strategy<'a>(
    set: &[(Strategy, &Record)],
    judged: &'a [Judged],
) -> Vec<(Strategy, &'a Judged)> {
    let mut seen = std::collections::BTreeSet::new();
    set.iter()
        .zip(judged)
        .filter(|((s, _), _)| seen.insert(s.token))
        .map(|((s, _), j)| (*s, j))
        .collect()
}

/// The metrics of the baked model's outputs (`judged`) and the input model's (`before`) on the
/// same `set`, under the seed's names.
pub fn metrics(
    set: &[(Strategy, &Record)],
    judged: &[Judged],
    before: &[Judged],
) -> Vec<(String, Value)> {
    let mut per: BTreeMap<&str, (usize, usize, usize, usize)> = BTreeMap::new();
    for (((s, _), j), b) in set.iter().zip(judged).zip(before) {
        let e = per.entry(s.metric).or_default();
        e.0 += 1;
        e.1 += usize::from(j.structure);
        e.2 += usize::from(j.answer);
        e.3 += usize::from(b.answer);
    }
    let frac = |k: usize, n: usize| k as f64 / n.max(1) as f64;
    let mut out = Vec::new();
    let mut structure = Vec::new();
    for s in STRATEGIES {
        let (n, ok, right, before_right) = per.get(s.metric).copied().unwrap_or_default();
        let m = s.metric;
        out.push((format!("baking/accuracy_{m}"), json!(frac(ok, n))));
        out.push((format!("baking/answer_accuracy_{m}"), json!(frac(right, n))));
        out.push((
            format!("baking/input_answer_accuracy_{m}"),
            json!(frac(before_right, n)),
        ));
        out.push((format!("baking/evaluated_{m}"), json!(n)));
        if n > 0 {
            structure.push(frac(ok, n));
        }
    }
    let overall = structure.iter().sum::<f64>() / structure.len().max(1) as f64;
    let n = judged.len().max(1) as f64;
    let answers = judged.iter().filter(|j| j.answer).count();
    let answers_before = before.iter().filter(|j| j.answer).count();
    out.extend([
        ("baking/accuracy_overall".into(), json!(overall)),
        ("baking/final_accuracy".into(), json!(overall)),
        ("baking/converged".into(), json!(overall >= CONVERGED_AT)),
        (
            "baking/convergence_progress".into(),
            json!(overall / CONVERGED_AT),
        ),
        ("baking/answer_accuracy".into(), json!(answers as f64 / n)),
        (
            "baking/input_answer_accuracy".into(),
            json!(answers_before as f64 / n),
        ),
        (
            "baking/thinking_token_usage".into(),
            json!(judged.iter().filter(|j| j.thinking).count() as f64 / n),
        ),
        (
            "baking/strategy_token_usage".into(),
            json!(judged.iter().map(|j| j.strategy_tokens).sum::<usize>() as f64 / n),
        ),
        ("baking/evaluated".into(), json!(judged.len())),
    ]);
    out
}

/// How much [`report`] measures.
pub struct Settings {
    pub per_strategy: usize,
    pub max_new_tokens: usize,
    /// Prompts decoded together.
    pub batch: usize,
    /// Held-out records for `baking/val_loss`, and their longest row.
    pub val_records: usize,
    pub seq_len: usize,
}

/// The baked model and the input model (`unbaked`) on the corpus's held-out records: the
/// `baking/*` metrics of [`metrics`] plus `baking/val_loss`; one output per strategy goes to the
/// step's log.
#[allow(clippy::too_many_arguments)]
pub fn report(
    ctx: &StepContext,
    baked: &TrmTitansMag,
    unbaked: &TrmTitansMag,
    cfg: &ModelConfig,
    codec: &TextCodec,
    corpus: &Corpus,
    s: &Settings,
    device: &burn::tensor::Device,
) -> Result<Vec<(String, Value)>, OpError> {
    let tables = Tables::new(cfg, device);
    let val = eval_batches(&corpus.val, codec, s.val_records, s.seq_len, s.batch);
    let val_loss = score(baked, cfg, &val, &tables, device).loss();
    let set = eval_records(&corpus.test, s.per_strategy);
    let decode = |ids: &[i64]| codec.decode(ids);
    let d = Decoding {
        cfg,
        eos: codec.eos,
        tables: &tables,
        device,
        decode: &decode,
    };
    let progress = |what: &'static str| {
        move |i: usize, n: usize| {
            ctx.progress(i as u64, Some(n as u64), what);
            ctx.check_cancelled()
        }
    };
    let judged = run(
        baked,
        &set,
        codec,
        s.max_new_tokens,
        s.batch,
        &d,
        &mut progress("baked answers"),
    )?;
    for (strategy, j) in first_per_strategy(&set, &judged) {
        ctx.log(format!("{} sample: {:?}", strategy.token, j.text));
    }
    let before = run(
        unbaked,
        &set,
        codec,
        s.max_new_tokens,
        s.batch,
        &d,
        &mut progress("input-model answers"),
    )?;
    let mut out = vec![("baking/val_loss".to_string(), json!(val_loss))];
    out.extend(metrics(&set, &judged, &before));
    Ok(out)
}

/// Every metric [`metrics`] writes, as patterns.
pub const METRICS: &[&str] = &[
    "baking/val_loss",
    "baking/accuracy_*",
    "baking/answer_accuracy_*",
    "baking/input_answer_accuracy_*",
    "baking/evaluated_*",
    "baking/accuracy_overall",
    "baking/final_accuracy",
    "baking/converged",
    "baking/convergence_progress",
    "baking/answer_accuracy",
    "baking/input_answer_accuracy",
    "baking/thinking_token_usage",
    "baking/strategy_token_usage",
    "baking/evaluated",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bake::tokens::add_thinking_tokens;
    use crate::text::train_bpe;

    fn codec() -> TextCodec {
        let texts: Vec<String> = (0..200)
            .map(|i| {
                format!(
                    "Question: {i} + 1?\nStep 1: {i} + 1 = {}\n#### {}\n",
                    i + 1,
                    i + 1
                )
            })
            .collect();
        let tk = add_thinking_tokens(&train_bpe(&texts, 400, 2).unwrap()).unwrap();
        TextCodec {
            tokenizer: tk,
            bos: 1,
            eos: 2,
        }
    }

    fn ids(codec: &TextCodec, text: &str) -> Vec<i64> {
        let mut v = codec.encode(text);
        v.remove(0);
        v.pop();
        v
    }

    #[test]
    fn structure_needs_the_tags_in_order_and_a_final_line_and_answers_are_judged_apart() {
        let c = codec();
        let step = STRATEGIES[0];
        let j = |text: &str, s: Strategy| judge(&ids(&c, text), s, "8", &c);
        let good = "[thinking]<step>\nStep 1: 7 + 1 = 8\n[/endthinking]\n#### 8\n";
        let g = j(good, step);
        assert_eq!(g.text, good);
        assert!(g.structure && g.answer && g.thinking && g.strategy_tokens == 1);
        // The right structure with a wrong answer, and the right answer without structure.
        let wrong = j(
            "[thinking]<step>\nStep 1: 7 + 1 = 9\n[/endthinking]\n#### 9\n",
            step,
        );
        assert!(wrong.structure && !wrong.answer);
        let bare = j("#### 8\n", step);
        assert!(!bare.structure && bare.answer && !bare.thinking);
        // Another strategy's token, an unclosed thought, no final line, two closings: no structure.
        assert!(!j(good, STRATEGIES[1]).structure);
        assert!(!j("[thinking]<step>\nStep 1: 7 + 1 = 8\n#### 8\n", step).structure);
        assert!(
            !j(
                "[thinking]<step>\nStep 1: 7 + 1 = 8\n[/endthinking]\n",
                step
            )
            .structure
        );
        assert!(
            !j(
                "[thinking]<step>[/endthinking][/endthinking]\n#### 8\n",
                step
            )
            .structure
        );
    }

    #[test]
    fn metrics_count_per_strategy_and_compare_with_the_input_model() {
        let r = |cat: &str| Record {
            id: "x".into(),
            category: cat.into(),
            difficulty: 1,
            prompt: "p".into(),
            answer: "1".into(),
            text: "t".into(),
        };
        let (a, b) = (r("chain_of_thought"), r("mece"));
        let set = vec![
            (STRATEGIES[0], &a),
            (STRATEGIES[0], &a),
            (STRATEGIES[1], &b),
        ];
        let yes = Judged {
            text: String::new(),
            structure: true,
            answer: true,
            thinking: true,
            strategy_tokens: 1,
        };
        let no = Judged {
            text: String::new(),
            structure: false,
            answer: false,
            thinking: false,
            strategy_tokens: 0,
        };
        let m: BTreeMap<String, Value> = metrics(
            &set,
            &[yes.clone(), no.clone(), yes.clone()],
            &[no.clone(), no.clone(), yes.clone()],
        )
        .into_iter()
        .collect();
        assert_eq!(m["baking/accuracy_chain_of_thought"], json!(0.5));
        assert_eq!(m["baking/accuracy_mece"], json!(1.0));
        // The mean over the strategies evaluated, not over outputs.
        assert_eq!(m["baking/accuracy_overall"], json!(0.75));
        assert_eq!(m["baking/converged"], json!(false));
        assert_eq!(m["baking/input_answer_accuracy_mece"], json!(1.0));
        assert_eq!(
            m["baking/input_answer_accuracy_chain_of_thought"],
            json!(0.0)
        );
        assert_eq!(m["baking/evaluated_bayesian"], json!(0));
        assert!((m["baking/thinking_token_usage"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
    }
}
