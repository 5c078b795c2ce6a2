//! `builtin:qa`: multi-hop questions over a small generated world. Each problem invents its own
//! people, cities and countries (place names are made of random syllables, so no outside knowledge
//! helps), states the facts in shuffled order with distractors, and asks a question that needs
//! 1 (where does X live), 2 (which country) or 3 (which country does X's coworker live in) hops.

use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::Item;
use super::pick;

const PEOPLE: &[&str] = &[
    "Ada", "Bram", "Cleo", "Dario", "Elin", "Femi", "Greta", "Hiro", "Ines", "Jonas", "Kemal",
    "Lena", "Milo", "Nadia", "Otto", "Priya", "Rafa", "Sofia", "Tomas", "Ula", "Vera", "Wim",
    "Yusuf", "Zara",
];
const ONSETS: &[&str] = &[
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "st", "kl",
];
const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ou"];
const CODAS: &[&str] = &["", "n", "r", "l", "s", "th", "nd", "sk"];

/// An invented capitalised place name of 2–3 syllables.
fn place(rng: &mut ChaCha8Rng) -> String {
    let n = rng.random_range(2..=3);
    let mut s = String::new();
    for i in 0..n {
        s.push_str(pick::one::<&str>(rng, ONSETS));
        s.push_str(pick::one::<&str>(rng, VOWELS));
        if i == n - 1 {
            s.push_str(pick::one::<&str>(rng, CODAS));
        }
    }
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

pub fn generate(rng: &mut ChaCha8Rng, difficulty: u8) -> Item {
    let hops = difficulty.clamp(1, 3);
    let people: Vec<&str> = pick::distinct(rng, PEOPLE, 5)
        .into_iter()
        .copied()
        .collect();
    let mut cities: Vec<String> = Vec::new();
    while cities.len() < 4 {
        let c = place(rng);
        if !cities.contains(&c) {
            cities.push(c);
        }
    }
    let mut countries: Vec<String> = Vec::new();
    while countries.len() < 3 {
        let c = place(rng);
        if !countries.contains(&c) && !cities.contains(&c) {
            countries.push(c);
        }
    }
    let lives: Vec<usize> = people
        .iter()
        .map(|_| rng.random_range(0..cities.len()))
        .collect();
    let country_of: Vec<usize> = cities
        .iter()
        .map(|_| rng.random_range(0..countries.len()))
        .collect();
    // Everyone works with the next person (a cycle), so coworker chains are well defined.
    let coworker = |i: usize| (i + 1) % people.len();

    let mut facts: Vec<String> = Vec::new();
    for (i, p) in people.iter().enumerate() {
        facts.push(format!("{p} lives in {}.", cities[lives[i]]));
    }
    for (c, city) in cities.iter().enumerate() {
        facts.push(format!("{city} is in {}.", countries[country_of[c]]));
    }
    if hops == 3 {
        for (i, p) in people.iter().enumerate() {
            facts.push(format!("{p} works with {}.", people[coworker(i)]));
        }
    }
    facts.shuffle(rng);
    let who = 0;
    let (question, answer, reasoning) = match hops {
        1 => (
            format!("Where does {} live?", people[who]),
            cities[lives[who]].clone(),
            format!("{} lives in {}.", people[who], cities[lives[who]]),
        ),
        2 => {
            let city = &cities[lives[who]];
            let country = &countries[country_of[lives[who]]];
            (
                format!("In which country does {} live?", people[who]),
                country.clone(),
                format!("{} lives in {city}. {city} is in {country}.", people[who]),
            )
        }
        _ => {
            let c = coworker(who);
            let city = &cities[lives[c]];
            let country = &countries[country_of[lives[c]]];
            (
                format!(
                    "In which country does the person {} works with live?",
                    people[who]
                ),
                country.clone(),
                format!(
                    "{} works with {}. {} lives in {city}. {city} is in {country}.",
                    people[who], people[c], people[c]
                ),
            )
        }
    };
    let prompt = format!("{}\n{question}", facts.join(" "));
    let text = format!("Facts: {prompt}\nReasoning: {reasoning}\nAnswer: {answer}\n");
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
    use std::collections::HashMap;

    /// Answer each question by following the stated facts, as a reader would.
    fn solve(prompt: &str) -> String {
        let (facts, question) = prompt.rsplit_once('\n').unwrap();
        let mut lives = HashMap::new();
        let mut located = HashMap::new();
        let mut works = HashMap::new();
        for f in facts.split(". ").map(|f| f.trim_end_matches('.')) {
            let w: Vec<&str> = f.split_whitespace().collect();
            match w.as_slice() {
                [p, "lives", "in", c] => lives.insert(p.to_string(), c.to_string()),
                [c, "is", "in", k] => located.insert(c.to_string(), k.to_string()),
                [p, "works", "with", q] => works.insert(p.to_string(), q.to_string()),
                _ => panic!("unparsed fact `{f}`"),
            };
        }
        let w: Vec<&str> = question.trim_end_matches('?').split_whitespace().collect();
        match w.as_slice() {
            ["Where", "does", p, "live"] => lives[*p].clone(),
            ["In", "which", "country", "does", p, "live"] => located[&lives[*p]].clone(),
            [
                "In",
                "which",
                "country",
                "does",
                "the",
                "person",
                p,
                "works",
                "with",
                "live",
            ] => located[&lives[&works[*p]]].clone(),
            _ => panic!("unparsed question `{question}`"),
        }
    }

    #[test]
    fn answers_follow_from_the_facts() {
        for i in 0..2000u64 {
            let item = generate(&mut ChaCha8Rng::seed_from_u64(i), (i % 3) as u8 + 1);
            assert_eq!(solve(&item.prompt), item.answer, "{}", item.prompt);
        }
    }
}
