//! `builtin:math`: multi-step arithmetic word problems with exact integer answers, GSM8K-style:
//! the story, a worked solution with one equation a line, and a final `#### <answer>` line.
//! Difficulty 1 is one operation on one-digit numbers (the curriculum's foundation: a small model
//! can learn it in minutes); difficulty d ≥ 2 uses d..d+1 operations on numbers up to 10d + 5.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::Item;
use super::pick;

const NAMES: &[&str] = &[
    "Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Gia", "Hugo", "Iris", "Jon", "Kira", "Liam",
    "Mia", "Noah", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Vik", "Wen", "Xena",
    "Yara", "Zoe",
];
const ITEMS: &[&str] = &[
    "apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "shells", "stamps",
    "cards", "beads", "tickets", "eggs", "plums", "buttons",
];
const SOURCES: &[&str] = &[
    "the market",
    "a friend",
    "the school fair",
    "a neighbour",
    "the shop",
];

enum Op {
    Add(i64),
    Sub(i64),
    Mul(i64),
    /// Share equally among n people (including oneself), keep one share.
    Div(i64),
}

/// One step of a worked solution: `a op b = c`, `op` one of `+ - * /`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub a: i64,
    pub op: char,
    pub b: i64,
    pub c: i64,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} = {}", self.a, self.op, self.b, self.c)
    }
}

/// A word problem before it is written out: what [`generate`] renders, and what Phase 3's
/// reasoning traces ([`super::reasoning`]) reason over.
#[derive(Debug, Clone)]
pub struct Problem {
    pub name: &'static str,
    pub item: &'static str,
    pub start: i64,
    /// The story's sentences after the first, one per step.
    pub sentences: Vec<String>,
    pub steps: Vec<Step>,
    pub difficulty: u8,
}

impl Problem {
    pub fn answer(&self) -> i64 {
        self.steps.last().map_or(self.start, |s| s.c)
    }

    /// The story and its question.
    pub fn prompt(&self) -> String {
        let (name, item) = (self.name, self.item);
        format!(
            "{name} has {} {item}. {} How many {item} does {name} have now?",
            self.start,
            self.sentences.join(" ")
        )
    }
}

pub fn problem(rng: &mut ChaCha8Rng, difficulty: u8) -> Problem {
    let d = difficulty.clamp(1, 3) as i64;
    let name = *pick::one(rng, NAMES);
    let item = *pick::one(rng, ITEMS);
    let steps = if d == 1 {
        1
    } else {
        d + rng.random_range(0..=1)
    };
    let max = if d == 1 { 9 } else { 10 * d + 5 };
    let start = pick::range(rng, 2, max);
    let mut value = start;
    let mut p = Problem {
        name,
        item,
        start,
        sentences: Vec::new(),
        steps: Vec::new(),
        difficulty,
    };
    for _ in 0..steps {
        let op = loop {
            let divisors: Vec<i64> = (2..=5)
                .filter(|k| value % k == 0 && value / k >= 1)
                .collect();
            match rng.random_range(0..4) {
                0 => break Op::Add(pick::range(rng, 1, max)),
                1 if value > 1 => break Op::Sub(pick::range(rng, 1, value - 1)),
                2 if value <= 60 => break Op::Mul(pick::range(rng, 2, 2 + d)),
                3 if !divisors.is_empty() => break Op::Div(*pick::one(rng, &divisors)),
                _ => continue,
            }
        };
        let (sentence, op, b, next) = match op {
            Op::Add(b) => {
                let src = *pick::one(rng, SOURCES);
                (
                    format!("Then {name} gets {b} more from {src}."),
                    '+',
                    b,
                    value + b,
                )
            }
            Op::Sub(b) => (format!("Then {name} gives {b} away."), '-', b, value - b),
            Op::Mul(k) => {
                let word = match k {
                    2 => "doubles".to_string(),
                    3 => "triples".to_string(),
                    k => format!("multiplies by {k}"),
                };
                (
                    format!("Then the number of {item} {name} has {word}."),
                    '*',
                    k,
                    value * k,
                )
            }
            Op::Div(k) => (
                format!(
                    "Then {name} shares them equally among {k} people, {name} included, and keeps one share."
                ),
                '/',
                k,
                value / k,
            ),
        };
        p.sentences.push(sentence);
        p.steps.push(Step {
            a: value,
            op,
            b,
            c: next,
        });
        value = next;
    }
    p
}

pub fn generate(rng: &mut ChaCha8Rng, difficulty: u8) -> Item {
    let p = problem(rng, difficulty);
    let prompt = p.prompt();
    let mut solution = vec![format!("{} starts with {} {}.", p.name, p.start, p.item)];
    solution.extend(p.steps.iter().map(Step::to_string));
    let text = format!(
        "Question: {prompt}\nAnswer: {}\n#### {}\n",
        solution.join("\n"),
        p.answer()
    );
    Item {
        prompt,
        answer: p.answer().to_string(),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Re-check every `a op b = c` line and that the answer line matches the last result.
    #[test]
    fn every_worked_solution_is_correct() {
        for i in 0..3000u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(i);
            let item = generate(&mut rng, (i % 3) as u8 + 1);
            let mut last = None;
            for line in item.text.lines() {
                let parts: Vec<&str> = line.split_whitespace().collect();
                if let [a, op, b, "=", c] = parts.as_slice() {
                    let (a, b, c): (i64, i64, i64) =
                        (a.parse().unwrap(), b.parse().unwrap(), c.parse().unwrap());
                    let expect = match *op {
                        "+" => a + b,
                        "-" => a - b,
                        "*" => a * b,
                        "/" => {
                            assert_eq!(a % b, 0, "inexact division in {line}");
                            a / b
                        }
                        _ => panic!("unknown op in {line}"),
                    };
                    assert_eq!(c, expect, "{line}");
                    assert!(c >= 1, "non-positive quantity in {line}");
                    last = Some(c);
                }
            }
            let answer: i64 = item.answer.parse().unwrap();
            assert_eq!(Some(answer), last);
            assert!(item.text.ends_with(&format!("#### {answer}\n")));
        }
    }

    #[test]
    fn harder_problems_take_more_steps() {
        let steps = |d: u8| -> f64 {
            (0..300u64)
                .map(|i| {
                    let item = generate(&mut ChaCha8Rng::seed_from_u64(i), d);
                    item.text.lines().filter(|l| l.contains(" = ")).count() as f64
                })
                .sum::<f64>()
                / 300.0
        };
        assert!(steps(1) < steps(2) && steps(2) < steps(3));
    }
}
