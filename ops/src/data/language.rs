//! `builtin:language`: a small grammar-generated story language whose verbs agree in number with
//! their subject across intervening material. The target sentence puts 0–3 "attractors" (nouns of
//! the other number, in prepositional phrases and relative clauses) between the subject and its
//! verb — the long-range dependency a causal LM must carry. The prompt is a cloze on that verb.
//! Difficulty d uses d attractors (difficulty 1: one).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::Item;
use super::pick;

/// (singular, plural)
const NOUNS: &[(&str, &str)] = &[
    ("wug", "wugs"),
    ("dax", "daxes"),
    ("blick", "blicks"),
    ("toma", "tomas"),
    ("fep", "feps"),
    ("zorb", "zorbs"),
    ("kiki", "kikis"),
    ("lorp", "lorps"),
    ("mib", "mibs"),
    ("snell", "snells"),
];
/// (agrees with singular, agrees with plural)
const VERBS: &[(&str, &str)] = &[
    ("glorps", "glorp"),
    ("meeks", "meek"),
    ("tashes", "tash"),
    ("vorns", "vorn"),
    ("plims", "plim"),
];
const PAST: &[&str] = &["saw", "chased", "liked", "found", "followed"];
const PREPS: &[&str] = &["near", "behind", "beside", "under"];
const ADVERBS: &[&str] = &["quickly", "softly", "loudly", "often", "again"];

fn noun(n: (&'static str, &'static str), plural: bool) -> &'static str {
    if plural { n.1 } else { n.0 }
}

/// A simple sentence: "The <noun> <verb> <adverb>."
fn simple(rng: &mut ChaCha8Rng) -> String {
    let plural = rng.random_bool(0.5);
    let n = *pick::one(rng, NOUNS);
    let v = *pick::one(rng, VERBS);
    format!(
        "The {} {} {}.",
        noun(n, plural),
        if plural { v.1 } else { v.0 },
        pick::one(rng, ADVERBS)
    )
}

pub fn generate(rng: &mut ChaCha8Rng, difficulty: u8) -> Item {
    let attractors = difficulty.clamp(1, 3) as usize;
    let plural = rng.random_bool(0.5);
    let head = *pick::one(rng, NOUNS);
    let verb = *pick::one(rng, VERBS);
    let mut middle = Vec::new();
    for _ in 0..attractors {
        // Attractors take the other number, to mislead a model that agrees with the nearest noun.
        let other = noun(*pick::one(rng, NOUNS), !plural);
        if rng.random_bool(0.5) {
            middle.push(format!("{} the {other}", pick::one(rng, PREPS)));
        } else {
            middle.push(format!("that the {other} {}", pick::one(rng, PAST)));
        }
    }
    let adverb = *pick::one(rng, ADVERBS);
    let prefix = format!("The {} {}", noun(head, plural), middle.join(" "));
    let correct = if plural { verb.1 } else { verb.0 };
    let context: Vec<String> = (0..rng.random_range(1..=2)).map(|_| simple(rng)).collect();
    let prompt = format!(
        "{} {prefix} ___ {adverb}. ({} or {})",
        context.join(" "),
        verb.0,
        verb.1
    );
    let text = format!("{} {prefix} {correct} {adverb}.\n", context.join(" "));
    Item {
        prompt,
        answer: correct.to_string(),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_answer_agrees_with_the_head_noun_not_the_attractors() {
        for i in 0..2000u64 {
            let d = (i % 3) as u8 + 1;
            let item = generate(&mut ChaCha8Rng::seed_from_u64(i), d);
            let target = item.prompt.rsplit(". The ").next().unwrap();
            let head = target.split_whitespace().next().unwrap();
            let plural = NOUNS.iter().any(|n| n.1 == head);
            let verb = VERBS
                .iter()
                .find(|v| item.answer == v.0 || item.answer == v.1)
                .unwrap();
            assert_eq!(
                item.answer,
                if plural { verb.1 } else { verb.0 },
                "{}",
                item.prompt
            );
            // Every attractor has the other number.
            let words: Vec<&str> = target
                .split(" ___")
                .next()
                .unwrap()
                .split_whitespace()
                .skip(1)
                .collect();
            let attractors = words
                .iter()
                .filter(|w| {
                    NOUNS
                        .iter()
                        .any(|n| (if plural { n.0 } else { n.1 }) == **w)
                })
                .count();
            assert_eq!(attractors, d as usize, "{}", item.prompt);
        }
    }
}
