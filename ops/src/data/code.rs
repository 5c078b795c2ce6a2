//! `builtin:code`: small programs in a Python subset and the number they print. Difficulty 1 is
//! straight-line arithmetic, 2 adds an `if`/`else`, 3 a `for` loop with an accumulator. Programs
//! are evaluated as they are generated (all values stay non-negative, so Python's `//` and `%`
//! agree with the evaluator); the unit test runs them through a real `python3` to confirm.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::Item;
use super::pick;

const VARS: &[&str] = &[
    "a", "b", "c", "n", "x", "y", "total", "count", "step", "value",
];

/// A random arithmetic expression over `env` values; returns (source, value). Never negative.
fn expr(rng: &mut ChaCha8Rng, env: &[(&str, i64)]) -> (String, i64) {
    let (name, v) = *pick::one(rng, env);
    let k = pick::range(rng, 1, 9);
    match rng.random_range(0..4) {
        0 => (format!("{name} + {k}"), v + k),
        1 if v >= k => (format!("{name} - {k}"), v - k),
        2 => (format!("{name} * {k}"), v * k),
        _ => (format!("{name} // {k}"), v / k),
    }
}

pub fn generate(rng: &mut ChaCha8Rng, difficulty: u8) -> Item {
    let names: Vec<&str> = pick::distinct(rng, VARS, 3).into_iter().copied().collect();
    let mut lines = Vec::new();
    let mut env: Vec<(&str, i64)> = Vec::new();
    let first = pick::range(rng, 1, 20);
    lines.push(format!("{} = {first}", names[0]));
    env.push((names[0], first));
    let (src, v) = expr(rng, &env);
    lines.push(format!("{} = {src}", names[1]));
    env.push((names[1], v));
    let result = match difficulty.clamp(1, 3) {
        1 => {
            let (src, v) = expr(rng, &env);
            lines.push(format!("print({src})"));
            v
        }
        2 => {
            let (var, val) = env[1];
            let m = pick::range(rng, 2, 5);
            let (t_src, t_val) = expr(rng, &[(var, val)]);
            let (f_src, f_val) = expr(rng, &[(var, val)]);
            lines.push(format!("if {var} % {m} == 0:"));
            lines.push(format!("    {var} = {t_src}"));
            lines.push("else:".into());
            lines.push(format!("    {var} = {f_src}"));
            lines.push(format!("print({var})"));
            if val % m == 0 { t_val } else { f_val }
        }
        _ => {
            let acc = names[2];
            let (var, val) = env[1];
            let n = pick::range(rng, 2, 6);
            let k = pick::range(rng, 1, 4);
            let start = pick::range(rng, 0, 5);
            lines.push(format!("{acc} = {start}"));
            lines.push(format!("for i in range({n}):"));
            let mut total = start;
            if rng.random_bool(0.5) {
                lines.push(format!("    {acc} += i * {k}"));
                for i in 0..n {
                    total += i * k;
                }
            } else {
                lines.push(format!("    {acc} += {var} + i"));
                for i in 0..n {
                    total += val + i;
                }
            }
            lines.push(format!("print({acc})"));
            total
        }
    };
    let program = lines.join("\n");
    let prompt = format!("What does this program print?\n```python\n{program}\n```");
    let text = format!("{prompt}\nOutput: {result}\n");
    Item {
        prompt,
        answer: result.to_string(),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn python_agrees_with_every_answer() {
        let items: Vec<Item> = (0..600u64)
            .map(|i| generate(&mut ChaCha8Rng::seed_from_u64(i), (i % 3) as u8 + 1))
            .collect();
        // One python3 process runs every program and prints one line per program.
        let mut script = String::from("import io, contextlib\nprograms = []\n");
        for it in &items {
            let program = it
                .prompt
                .split("```python\n")
                .nth(1)
                .unwrap()
                .trim_end_matches("\n```");
            script.push_str(&format!("programs.append({program:?})\n"));
        }
        script.push_str(
            "for p in programs:\n    buf = io.StringIO()\n    with contextlib.redirect_stdout(buf):\n        exec(p, {})\n    print(buf.getvalue().strip())\n",
        );
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(got.len(), items.len());
        for (it, g) in items.iter().zip(got) {
            assert_eq!(it.answer, g, "{}", it.prompt);
        }
    }
}
