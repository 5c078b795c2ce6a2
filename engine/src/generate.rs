//! `forge generate`: talk to a model the pipeline built. Resolves the model (a step's result or
//! an artifact directory), runs `forge_ops::eval::generate` and streams the continuation to
//! stdout, or prints one JSON document with the tokens, their halting steps and the timing.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use forge_ops::OpRegistry;
use forge_ops::eval::generate::{GenerateOptions, generate};

use crate::exit::INVALID;
use crate::lookup::{artifact_dir, eprint_error, op_failure};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The model: a step id (its result in the store) or a model artifact directory.
    pub model: String,
    /// The text to continue.
    #[arg(long)]
    pub prompt: String,
    /// Tokens generated at most (thoughts the model writes into its text included; a Quiet-STaR
    /// model's thoughts between tokens not).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 decodes greedily; above 0 samples from softmax(logits / T).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Seed of the sampling (with `--temperature` above 0).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print thoughts (`[thinking]` … `[/endthinking]`), which are hidden by default.
    #[arg(long)]
    pub show_thoughts: bool,
    /// Decode a Quiet-STaR model (`objective: quiet-star`) without the thought it otherwise
    /// writes before every token: one pass per token instead of `thought_length + 3`.
    #[arg(long)]
    pub direct: bool,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The pipeline a step id belongs to (when several have it).
    #[arg(long, short)]
    pub pipeline: Option<PathBuf>,
    /// Print one JSON document: the text, every token with its halting steps, the timing.
    #[arg(long)]
    pub json: bool,
}

/// Run `forge generate`; the exit code.
pub fn run(store: &Path, a: &GenerateArgs, registry: &OpRegistry) -> Result<u8, u8> {
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        eprint_error(
            &format!("--temperature {} is not a temperature", a.temperature),
            Some("use 0 for greedy decoding or a positive number to sample"),
        );
        return Err(INVALID);
    }
    let model = artifact_dir(store, &a.model, a.pipeline.as_deref(), registry)?;
    if !model.join("model.safetensors").is_file() {
        eprint_error(
            &format!("`{}` is not a model artifact", a.model),
            Some("name a step whose output is a model (train, merge, bake, quantize)"),
        );
        return Err(INVALID);
    }
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        seed: a.seed,
        show_thoughts: a.show_thoughts,
        direct: a.direct,
        device: a.device.clone(),
    };
    let mut out = std::io::stdout().lock();
    let json = a.json;
    let mut stream = |text: &str| {
        if !json {
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    };
    let g = generate(&model, &a.prompt, &opts, &mut stream).map_err(|e| op_failure(&e))?;
    if json {
        let doc = serde_json::json!({ "model": model, "prompt": a.prompt, "result": g });
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
    } else {
        println!();
        let halting = if g.tokens.is_empty() {
            0.0
        } else {
            g.tokens
                .iter()
                .map(|t| f64::from(t.halting_steps))
                .sum::<f64>()
                / g.tokens.len() as f64
        };
        let thoughts = g.tokens.iter().filter(|t| t.thought).count();
        let between = g.thought_length.map_or(String::new(), |n| {
            format!(", a thought of {n} tokens before each token")
        });
        eprintln!(
            "{} tokens ({} in thoughts{}{between}) in {:.0} ms, {:.1} tokens/s; {:.2} recursions per token (ACT, at most {}); stopped: {}",
            g.tokens.len(),
            thoughts,
            if a.show_thoughts || thoughts == 0 {
                ""
            } else {
                ", hidden"
            },
            g.generate_ms,
            g.tokens_per_s,
            halting,
            g.max_recursions,
            g.stop
        );
    }
    Ok(0)
}
