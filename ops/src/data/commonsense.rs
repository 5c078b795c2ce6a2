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

pub fn generate(rng: &mut ChaCha8Rng, difficulty: u8) -> Item {
    let scale = pick::one(rng, SCALES);
    let n = difficulty.clamp(1, 3) as usize + 1;
    let mut idx: Vec<usize> = (0..scale.things.len()).collect();
    idx.shuffle(rng);
    idx.truncate(n);
    let up = rng.random_bool(0.5);
    let target = if up {
        *idx.iter().max().expect("n>0")
    } else {
        *idx.iter().min().expect("n>0")
    };
    let (cu, cd, su, sd) = scale.words;
    let word = match (n == 2, up) {
        (true, true) => cu,
        (true, false) => cd,
        (false, true) => su,
        (false, false) => sd,
    };
    let options: Vec<String> = idx
        .iter()
        .enumerate()
        .map(|(i, &t)| format!("({}) {}", LETTERS[i], scale.things[t]))
        .collect();
    let question = if n == 2 {
        format!("Which is {word}?")
    } else {
        format!("Which is the {word}?")
    };
    let answer_pos = idx
        .iter()
        .position(|&t| t == target)
        .expect("target is an option");
    let prompt = format!("{question} {}", options.join(" "));
    let answer = LETTERS[answer_pos].to_string();
    let text = format!("Question: {prompt}\nAnswer: {}\n", options[answer_pos]);
    Item {
        prompt,
        answer,
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
