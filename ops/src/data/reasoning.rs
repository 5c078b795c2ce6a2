//! `builtin:reasoning`: strategy-tagged reasoning traces for Phase 3's baking, balanced over the
//! ten strategies (a record's `category` is the strategy's metric name, e.g. `chain_of_thought`).
//!
//! A record's prompt is a problem followed by the strategy's request ([`cue`]: "Work it out step
//! by step.", "Test candidate answers.", …), so the strategy can be read from the prompt; its
//! text is
//!
//! ```text
//! Question: <prompt>
//! [thinking]<strategy>
//! <the strategy's reasoning, one line a step>
//! [/endthinking]
//! #### <answer>
//! ```
//!
//! and every intermediate step is computed by the generator, so it is right (or, for
//! `<correct>`, wrong once and then corrected). The problems come from the built-in generators —
//! [`super::math`] word problems and [`super::commonsense`] comparisons — plus two small
//! probability families built here (marbles in bags) for the Bayesian update and the hedged
//! answer:
//!
//! | strategy | problems | the trace |
//! |---|---|---|
//! | `<step>` | math | each operation, one a line |
//! | `<mece>` | commonsense | every option placed on the scale, none left out, then the extreme |
//! | `<falsify>` | math | the steps, then candidate answers checked by undoing the last step; wrong ones rejected |
//! | `<expert>` | commonsense | the scale's known order, the options located on it |
//! | `<orthogonal>` | math | forward, then an independent check backwards from the answer to the start |
//! | `<doubt>` | math | an answer, a doubt, the whole computation redone, the same answer |
//! | `<bayesian>` | two bags | prior, likelihoods, the posterior as an exact fraction |
//! | `<multidomain>` | math | the arithmetic, then the same as a program and what it prints |
//! | `<correct>` | math | one step miscomputed, then `<correct>`ed, then the rest |
//! | `<uncertain>` | one bag | each colour's probability; the likeliest, with its probability as the confidence |

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::commonsense::{self, Choice};
use super::math::{self, Problem, Step};
use super::{Item, pick};
use crate::bake::strategies::{END, START, Strategy};

const COLOURS: &[&str] = &["red", "blue", "green", "yellow", "white", "black"];

/// One trace of strategy `s` (difficulty 1–3).
pub fn generate(s: Strategy, rng: &mut ChaCha8Rng, difficulty: u8) -> Item {
    let (prompt, lines, answer) = match s.token {
        "<step>" => with_math(rng, difficulty, step_by_step),
        "<mece>" => with_choice(rng, difficulty, mece),
        "<falsify>" => with_math(rng, difficulty, falsify),
        "<expert>" => with_choice(rng, difficulty, expert),
        "<orthogonal>" => with_math(rng, difficulty, orthogonal),
        "<doubt>" => with_math(rng, difficulty, doubt),
        "<bayesian>" => bayesian(rng, difficulty),
        "<multidomain>" => with_math(rng, difficulty, multidomain),
        "<correct>" => with_math(rng, difficulty, correct),
        "<uncertain>" => uncertain(rng, difficulty),
        other => unreachable!("no strategy {other}"),
    };
    let prompt = format!("{prompt} {}", cue(s));
    let text = format!(
        "Question: {prompt}\n{START}{}\n{}\n{END}\n#### {answer}\n",
        s.token,
        lines.join("\n")
    );
    Item {
        prompt,
        answer,
        text,
    }
}

/// The request that ends a strategy's prompt, so the strategy to think with can be read from
/// the prompt (six strategies share the math problems).
pub fn cue(s: Strategy) -> &'static str {
    match s.token {
        "<step>" => "Work it out step by step.",
        "<mece>" => "Consider every option in turn.",
        "<falsify>" => "Test candidate answers.",
        "<expert>" => "Answer as an expert would.",
        "<orthogonal>" => "Check it from another direction.",
        "<doubt>" => "Double-check yourself.",
        "<bayesian>" => "Update on the evidence.",
        "<multidomain>" => "Check it with a program too.",
        "<correct>" => "Correct any slip you make.",
        _ => "Say how sure you are.",
    }
}

type Trace = (String, Vec<String>, String);

fn with_math(
    rng: &mut ChaCha8Rng,
    difficulty: u8,
    f: impl FnOnce(&Problem, &mut ChaCha8Rng) -> Vec<String>,
) -> Trace {
    let p = math::problem(rng, difficulty);
    let lines = f(&p, rng);
    (p.prompt(), lines, p.answer().to_string())
}

fn with_choice(rng: &mut ChaCha8Rng, difficulty: u8, f: fn(&Choice) -> Vec<String>) -> Trace {
    let c = commonsense::choice(rng, difficulty);
    let answer = Choice::letter(c.answer_index()).to_string();
    (c.prompt(), f(&c), answer)
}

fn numbered(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| format!("Step {}: {s}", i + 1))
        .collect()
}

fn step_by_step(p: &Problem, _: &mut ChaCha8Rng) -> Vec<String> {
    let mut v = vec![format!("Start: {}", p.start)];
    v.extend(numbered(&p.steps));
    v
}

/// `x` with the step's operation undone, if that is a whole number.
fn undo(op: char, b: i64, x: i64) -> Option<i64> {
    match op {
        '+' => Some(x - b),
        '-' => Some(x + b),
        '*' => (x % b == 0).then(|| x / b),
        '/' => Some(x * b),
        _ => None,
    }
}

fn inverse(op: char) -> char {
    match op {
        '+' => '-',
        '-' => '+',
        '*' => '/',
        _ => '*',
    }
}

fn falsify(p: &Problem, rng: &mut ChaCha8Rng) -> Vec<String> {
    let mut v = numbered(&p.steps[..p.steps.len() - 1]);
    let last = *p.steps.last().expect("a step");
    let answer = last.c;
    let mut candidates: Vec<i64> = vec![answer + pick::range(rng, 1, 3)];
    if answer > 3 {
        candidates.push(answer - pick::range(rng, 1, 3));
    }
    candidates.push(answer);
    for x in candidates {
        let check = match undo(last.op, last.b, x) {
            Some(back) => format!(
                "Candidate {x}: {x} {} {} = {back}, ",
                inverse(last.op),
                last.b
            ),
            None => format!("Candidate {x}: {x} is not a multiple of {}, ", last.b),
        };
        let verdict = if x == answer {
            format!("which is {}: kept", last.a)
        } else {
            format!("not {}: rejected", last.a)
        };
        v.push(check + &verdict);
    }
    v
}

fn orthogonal(p: &Problem, _: &mut ChaCha8Rng) -> Vec<String> {
    let mut v = vec!["Forward:".to_string()];
    v.extend(numbered(&p.steps));
    v.push("Backward from the answer:".into());
    for s in p.steps.iter().rev() {
        v.push(format!("{} {} {} = {}", s.c, inverse(s.op), s.b, s.a));
    }
    v.push(format!("Back at the start, {}: consistent", p.start));
    v
}

fn doubt(p: &Problem, _: &mut ChaCha8Rng) -> Vec<String> {
    let mut v = numbered(&p.steps);
    v.push(format!(
        "So {}? I may have slipped; redo it from {}.",
        p.answer(),
        p.start
    ));
    v.extend(numbered(&p.steps));
    v.push(format!("Again {}: confirmed", p.answer()));
    v
}

fn multidomain(p: &Problem, _: &mut ChaCha8Rng) -> Vec<String> {
    let mut v = vec!["Arithmetic:".to_string()];
    v.extend(numbered(&p.steps));
    v.push("As a program:".into());
    v.push(format!("x = {}", p.start));
    for s in &p.steps {
        let op = if s.op == '/' {
            "//".to_string()
        } else {
            s.op.to_string()
        };
        v.push(format!("x = x {op} {}", s.b));
    }
    v.push(format!("print(x) shows {}: both agree", p.answer()));
    v
}

fn correct(p: &Problem, rng: &mut ChaCha8Rng) -> Vec<String> {
    let wrong_at = rng.random_range(0..p.steps.len());
    let mut v = Vec::new();
    for (i, s) in p.steps.iter().enumerate() {
        if i == wrong_at {
            let slip = if rng.random_bool(0.5) || s.c <= 1 {
                1
            } else {
                -1
            };
            v.push(format!(
                "Step {}: {} {} {} = {}",
                i + 1,
                s.a,
                s.op,
                s.b,
                s.c + slip
            ));
            v.push(format!("<correct> No: {s}"));
        } else {
            v.push(format!("Step {}: {s}", i + 1));
        }
    }
    v
}

fn mece(c: &Choice) -> Vec<String> {
    let n = c.scale.len();
    let mut v: Vec<String> = c
        .options
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            format!(
                "Case {}: {} is {} of {n} on the scale",
                Choice::letter(i),
                c.scale[t],
                t + 1
            )
        })
        .collect();
    let a = c.answer_index();
    v.push(format!(
        "All {} options covered; the {} end is {}: {}",
        c.options.len(),
        if c.up { "high" } else { "low" },
        Choice::letter(a),
        c.scale[c.options[a]]
    ));
    v
}

fn expert(c: &Choice) -> Vec<String> {
    let mut sorted = c.options.clone();
    sorted.sort_unstable();
    let order: Vec<&str> = sorted.iter().map(|&t| c.scale[t]).collect();
    let a = c.answer_index();
    vec![
        format!("From low to high: {}", order.join(" < ")),
        format!(
            "Asked for {}: {} ({})",
            c.word,
            c.scale[c.options[a]],
            Choice::letter(a)
        ),
    ]
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn fraction(num: i64, den: i64) -> String {
    let g = gcd(num, den).max(1);
    format!("{}/{}", num / g, den / g)
}

fn bayesian(rng: &mut ChaCha8Rng, difficulty: u8) -> Trace {
    let max = 3 + 3 * i64::from(difficulty.clamp(1, 3));
    let colour = *pick::one(rng, &COLOURS[..2]);
    let (r1, o1) = (pick::range(rng, 1, max), pick::range(rng, 1, max));
    let (r2, o2) = loop {
        let (a, b) = (pick::range(rng, 1, max), pick::range(rng, 1, max));
        if a * (r1 + o1) != r1 * (a + b) {
            break (a, b);
        }
    };
    let other = if colour == "red" { "blue" } else { "red" };
    let prompt = format!(
        "Bag 1 holds {r1} {colour} and {o1} {other} marbles; bag 2 holds {r2} {colour} and {o2} {other}. \
         A bag is picked at random and a {colour} marble is drawn from it. What is the probability that it came from bag 1?"
    );
    let (n1, n2) = (r1 + o1, r2 + o2);
    let num = r1 * n2;
    let den = r1 * n2 + r2 * n1;
    let answer = fraction(num, den);
    let lines = vec![
        "Prior: P(bag 1) = P(bag 2) = 1/2".to_string(),
        format!(
            "Likelihood: P({colour} | bag 1) = {}, P({colour} | bag 2) = {}",
            fraction(r1, n1),
            fraction(r2, n2)
        ),
        format!(
            "Posterior: P(bag 1 | {colour}) = {} / ({} + {}) = {answer}",
            fraction(r1, n1),
            fraction(r1, n1),
            fraction(r2, n2)
        ),
    ];
    (prompt, lines, answer)
}

fn uncertain(rng: &mut ChaCha8Rng, difficulty: u8) -> Trace {
    let k = difficulty.clamp(1, 3) as usize + 1;
    let colours: Vec<&str> = pick::distinct(rng, COLOURS, k)
        .into_iter()
        .copied()
        .collect();
    let mut counts: Vec<i64> = Vec::new();
    while counts.len() < k {
        let c = pick::range(rng, 1, 9);
        if !counts.contains(&c) {
            counts.push(c);
        }
    }
    let total: i64 = counts.iter().sum();
    let parts: Vec<String> = colours
        .iter()
        .zip(&counts)
        .map(|(c, n)| format!("{n} {c}"))
        .collect();
    let prompt = format!(
        "A bag holds {} marbles. One is drawn without looking. Which colour is it most likely to be?",
        parts.join(", ")
    );
    let best = (0..k).max_by_key(|&i| counts[i]).expect("colours");
    let mut lines: Vec<String> = colours
        .iter()
        .zip(&counts)
        .map(|(c, n)| format!("P({c}) = {n}/{total}"))
        .collect();
    lines.push(format!(
        "Probably {}, with confidence {:.2}; not certain",
        colours[best],
        counts[best] as f64 / total as f64
    ));
    (prompt, lines, colours[best].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bake::strategies::STRATEGIES;
    use rand::SeedableRng;

    fn traces(s: Strategy) -> Vec<Item> {
        (0..400u64)
            .map(|i| generate(s, &mut ChaCha8Rng::seed_from_u64(i), (i % 3) as u8 + 1))
            .collect()
    }

    /// The lines between the thinking tags, after checking the tags.
    fn thought(item: &Item, s: Strategy) -> Vec<String> {
        let t = &item.text;
        assert_eq!(t.matches(START).count(), 1, "{t}");
        assert_eq!(t.matches(END).count(), 1, "{t}");
        let inner = &t[t.find(START).unwrap() + START.len()..t.find(END).unwrap()];
        assert!(inner.starts_with(s.token), "{t}");
        // No other strategy's token appears (`<correct>` marks its own correction line).
        for other in STRATEGIES.iter().filter(|o| o.token != s.token) {
            assert!(!inner.contains(other.token), "{t}");
        }
        assert!(
            t.ends_with(&format!("{END}\n#### {}\n", item.answer)),
            "{t}"
        );
        assert!(t.starts_with(&format!("Question: {}\n", item.prompt)));
        // The prompt ends with the strategy's request, and no two strategies share one.
        assert!(item.prompt.ends_with(cue(s)), "{t}");
        let cues: std::collections::HashSet<&str> = STRATEGIES.iter().map(|&o| cue(o)).collect();
        assert_eq!(cues.len(), STRATEGIES.len());
        inner[s.token.len()..]
            .trim()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Every `a op b = c` in `line` (whole numbers), checked.
    fn equations_hold(line: &str) -> usize {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ',' || c == ':')
            .filter(|w| !w.is_empty())
            .collect();
        let mut n = 0;
        for w in words.windows(5) {
            if let [a, op, b, "=", c] = w {
                let (Ok(a), Ok(b), Ok(c)) = (a.parse::<i64>(), b.parse::<i64>(), c.parse::<i64>())
                else {
                    continue;
                };
                let want = match *op {
                    "+" => a + b,
                    "-" => a - b,
                    "*" => a * b,
                    "/" => {
                        assert_eq!(a % b, 0, "{line}");
                        a / b
                    }
                    _ => continue,
                };
                assert_eq!(c, want, "{line}");
                n += 1;
            }
        }
        n
    }

    fn strategy(token: &str) -> Strategy {
        *STRATEGIES.iter().find(|s| s.token == token).unwrap()
    }

    #[test]
    fn math_traces_compute_every_step_right_and_end_at_the_answer() {
        for token in ["<step>", "<orthogonal>", "<doubt>", "<multidomain>"] {
            let s = strategy(token);
            for item in traces(s) {
                let lines = thought(&item, s);
                let checked: usize = lines.iter().map(|l| equations_hold(l)).sum();
                assert!(checked >= 1, "{}", item.text);
                let last_result = lines
                    .iter()
                    .rfind(|l| l.starts_with("Step "))
                    .and_then(|l| l.rsplit(' ').next())
                    .map(|n| n.parse::<i64>().unwrap());
                assert_eq!(
                    last_result,
                    Some(item.answer.parse().unwrap()),
                    "{}",
                    item.text
                );
            }
        }
    }

    #[test]
    fn a_correct_trace_has_one_wrong_step_then_its_correction() {
        let s = strategy("<correct>");
        for item in traces(s) {
            let lines = thought(&item, s);
            let fix = lines
                .iter()
                .position(|l| l.starts_with("<correct> No: "))
                .unwrap();
            assert_eq!(lines.iter().filter(|l| l.contains("<correct>")).count(), 1);
            // The line before is the same operation with a wrong result; the fix holds.
            let wrong = &lines[fix - 1];
            let right = lines[fix].trim_start_matches("<correct> No: ");
            let stem = |l: &str| {
                l.rsplit_once(" = ")
                    .unwrap()
                    .0
                    .rsplit(": ")
                    .next()
                    .unwrap()
                    .to_string()
            };
            assert_eq!(stem(wrong), stem(right));
            assert_ne!(wrong.rsplit(' ').next(), right.rsplit(' ').next());
            assert_eq!(equations_hold(right), 1);
            for (i, l) in lines.iter().enumerate() {
                if i != fix - 1 {
                    equations_hold(l);
                }
            }
            let last = lines.last().unwrap().rsplit(' ').next().unwrap();
            assert_eq!(last, item.answer, "{}", item.text);
        }
    }

    #[test]
    fn falsification_rejects_every_wrong_candidate_and_keeps_the_answer() {
        let s = strategy("<falsify>");
        for item in traces(s) {
            let lines = thought(&item, s);
            let candidates: Vec<&String> = lines
                .iter()
                .filter(|l| l.starts_with("Candidate "))
                .collect();
            assert!(candidates.len() >= 2);
            for l in &candidates {
                let x: i64 = l["Candidate ".len()..]
                    .split(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let kept = l.ends_with(": kept");
                assert_eq!(kept, x.to_string() == item.answer, "{l}");
                assert!(kept || l.ends_with(": rejected"));
                equations_hold(l);
            }
        }
    }

    #[test]
    fn comparison_traces_place_every_option_and_pick_the_answer() {
        for token in ["<mece>", "<expert>"] {
            let s = strategy(token);
            for item in traces(s) {
                let lines = thought(&item, s);
                let options = item.prompt.matches(") ").count();
                if token == "<mece>" {
                    assert_eq!(
                        lines.iter().filter(|l| l.starts_with("Case ")).count(),
                        options
                    );
                } else {
                    assert_eq!(lines[0].matches(" < ").count(), options - 1);
                }
                assert!(
                    lines.last().unwrap().contains(&item.answer),
                    "{}",
                    item.text
                );
            }
        }
    }

    #[test]
    fn probability_traces_give_the_exact_posterior_and_the_likeliest_colour() {
        let parse = |f: &str| -> (i64, i64) {
            let (a, b) = f.split_once('/').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        };
        let s = strategy("<bayesian>");
        for item in traces(s) {
            thought(&item, s);
            let n: Vec<i64> = item
                .prompt
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            // bag 1, r1 c1, o1 other, bag 2, r2, o2, bag 1 (in the question)
            let (r1, o1, r2, o2) = (n[1], n[2], n[4], n[5]);
            let (num, den) = parse(&item.answer);
            // Bayes by hand: (r1/n1) / (r1/n1 + r2/n2), cross-multiplied.
            assert_eq!(
                num * (r1 * (r2 + o2) + r2 * (r1 + o1)),
                den * r1 * (r2 + o2)
            );
            assert_eq!(gcd(num, den), 1);
        }
        let s = strategy("<uncertain>");
        for item in traces(s) {
            let lines = thought(&item, s);
            let counts: Vec<(i64, &str)> = item.prompt["A bag holds ".len()..]
                .split(" marbles")
                .next()
                .unwrap()
                .split(", ")
                .map(|p| {
                    let (n, c) = p.split_once(' ').unwrap();
                    (n.parse().unwrap(), c)
                })
                .collect();
            let best = counts.iter().max_by_key(|c| c.0).unwrap();
            assert_eq!(item.answer, best.1);
            let total: i64 = counts.iter().map(|c| c.0).sum();
            let hedge = lines.last().unwrap();
            assert!(hedge.starts_with(&format!("Probably {}", best.1)));
            assert!(hedge.contains(&format!("{:.2}", best.0 as f64 / total as f64)));
        }
    }
}
