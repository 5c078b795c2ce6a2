//! `builtin:commonsense`: everyday-physics plausibility as multiple choice. Each scale lists
//! things in increasing order of a property (weight, size, temperature, speed, hardness, loudness,
//! duration); a question asks for the more/less (2 options) or the most/least (3 or 4 options).
//! The answer is the option's letter.

use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::Item;
use super::pick;

struct Scale {
    /// (comparative up, comparative down, superlative up, superlative down)
    words: (&'static str, &'static str, &'static str, &'static str),
    /// In increasing order of the property.
    things: &'static [&'static str],
}

const SCALES: &[Scale] = &[
    Scale {
        words: ("heavier", "lighter", "heaviest", "lightest"),
        things: &[
            "a feather",
            "a leaf",
            "a coin",
            "an apple",
            "a book",
            "a brick",
            "a bicycle",
            "a sofa",
            "a car",
            "an elephant",
            "a ship",
        ],
    },
    Scale {
        words: ("bigger", "smaller", "biggest", "smallest"),
        things: &[
            "an ant",
            "a mouse",
            "a cat",
            "a dog",
            "a horse",
            "a bus",
            "a house",
            "a stadium",
            "a mountain",
        ],
    },
    Scale {
        words: ("hotter", "colder", "hottest", "coldest"),
        things: &[
            "an ice cube",
            "fresh snow",
            "tap water",
            "room air",
            "a warm bath",
            "hot tea",
            "boiling water",
            "a candle flame",
            "lava",
        ],
    },
    Scale {
        words: ("faster", "slower", "fastest", "slowest"),
        things: &[
            "a snail",
            "a turtle",
            "a walking person",
            "a bicycle",
            "a galloping horse",
            "a car on a highway",
            "a train",
            "an airplane",
            "a rocket",
        ],
    },
    Scale {
        words: ("harder", "softer", "hardest", "softest"),
        things: &[
            "a sponge",
            "butter",
            "clay",
            "a pillow's foam",
            "wood",
            "a brick",
            "steel",
            "a diamond",
        ],
    },
    Scale {
        words: ("louder", "quieter", "loudest", "quietest"),
        things: &[
            "a whisper",
            "rustling leaves",
            "a conversation",
            "a vacuum cleaner",
            "a lawn mower",
            "a rock concert",
            "thunder",
            "a jet engine",
        ],
    },
    Scale {
        words: ("longer", "shorter", "longest", "shortest"),
        things: &[
            "a blink",
            "a sneeze",
            "a song",
            "a movie",
            "a day",
            "a week",
            "a month",
            "a year",
            "a century",
        ],
    },
];

const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// A multiple-choice comparison before it is written out: what [`generate`] renders, and what
/// Phase 3's reasoning traces ([`super::reasoning`]) reason over.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The property's comparative/superlative word the question uses (`heavier`, `lightest`).
    pub word: &'static str,
    /// The scale's things in increasing order of its property.
    pub scale: &'static [&'static str],
    /// Each option's position on the scale, in option order (A, B, …).
    pub options: Vec<usize>,
    /// Whether the question asks for the larger end of the scale.
    pub up: bool,
    pub difficulty: u8,
}

impl Choice {
    /// The answer's index among the options.
    pub fn answer_index(&self) -> usize {
        let best = if self.up {
            self.options.iter().max()
        } else {
            self.options.iter().min()
        };
        let best = *best.expect("options");
        self.options
            .iter()
            .position(|&t| t == best)
            .expect("present")
    }

    pub fn letter(i: usize) -> &'static str {
        LETTERS[i]
    }

    /// `(A) a coin`, … in option order.
    pub fn option_texts(&self) -> Vec<String> {
        self.options
            .iter()
            .enumerate()
            .map(|(i, &t)| format!("({}) {}", LETTERS[i], self.scale[t]))
            .collect()
    }

    pub fn prompt(&self) -> String {
        let question = if self.options.len() == 2 {
            format!("Which is {}?", self.word)
        } else {
            format!("Which is the {}?", self.word)
        };
        format!("{question} {}", self.option_texts().join(" "))
    }
}

pub fn choice(rng: &mut ChaCha8Rng, difficulty: u8) -> Choice {
    let scale = pick::one(rng, SCALES);
    let n = difficulty.clamp(1, 3) as usize + 1;
    let mut idx: Vec<usize> = (0..scale.things.len()).collect();
    idx.shuffle(rng);
    idx.truncate(n);
    let up = rng.random_bool(0.5);
    let (cu, cd, su, sd) = scale.words;
    let word = match (n == 2, up) {
        (true, true) => cu,
        (true, false) => cd,
        (false, true) => su,
        (false, false) => sd,
    };
    Choice {
        word,
        scale: scale.things,
        options: idx,
        up,
        difficulty,
    }
}

pub fn generate(rng: &mut ChaCha8Rng, difficulty: u8) -> Item {
    let c = choice(rng, difficulty);
    let answer_pos = c.answer_index();
    let prompt = c.prompt();
    let text = format!(
        "Question: {prompt}\nAnswer: {}\n",
        c.option_texts()[answer_pos]
    );
    Item {
        prompt,
        answer: LETTERS[answer_pos].to_string(),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_answer_is_the_extreme_option_on_its_scale() {
        for i in 0..2000u64 {
            let item = generate(&mut ChaCha8Rng::seed_from_u64(i), (i % 3) as u8 + 1);
            let scale = SCALES.iter().find(|s| {
                let (a, b, c, d) = s.words;
                [a, b, c, d]
                    .iter()
                    .any(|w| item.prompt.contains(&format!(" {w}?")))
            });
            let scale = scale.expect("known scale");
            let options: Vec<(&str, usize)> = item
                .prompt
                .split(" (")
                .skip(1)
                .map(|o| {
                    let (letter, thing) = o.split_once(") ").unwrap();
                    (
                        letter,
                        scale
                            .things
                            .iter()
                            .position(|t| *t == thing.trim())
                            .unwrap(),
                    )
                })
                .collect();
            let (cu, _, su, _) = scale.words;
            let up = item.prompt.contains(&format!(" {cu}?"))
                || item.prompt.contains(&format!(" {su}?"));
            let best = if up {
                options.iter().max_by_key(|o| o.1)
            } else {
                options.iter().min_by_key(|o| o.1)
            };
            assert_eq!(best.unwrap().0, item.answer, "{}", item.prompt);
            assert_eq!(options.len(), (i % 3) as usize + 2);
        }
    }
}
