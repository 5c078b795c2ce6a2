//! The `records:` templates of `pipelines/agent-forge.yaml` against one row of each of its 16
//! datasets, written with the columns the hub's dataset viewer shows for them. CI has no network,
//! so this checks the templates and the column names we rely on, not the hub itself.

use std::collections::BTreeMap;
use std::path::Path;

use forge_ops::data::table::{RecordTemplate, convert};
use serde_json::{Value, json};

/// dataset name → (a row, the expected answer).
fn rows() -> BTreeMap<&'static str, (Value, &'static str)> {
    let text = |t: &str| json!({ "text": t });
    BTreeMap::from([
        (
            "gsm8k",
            (
                json!({
                    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
                    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
                }),
                "72",
            ),
        ),
        (
            "svamp",
            (
                json!({
                    "ID": "chal-777", "Body": "There are 87 oranges and 290 bananas in Philip's collection. If the bananas are organized into 2 groups",
                    "Question": "How big is each group of bananas?", "Equation": "( 290.0 / 2.0 )", "Answer": 145.0,
                    "Type": "Common-Division", "question_concat": "…"
                }),
                "145",
            ),
        ),
        (
            "asdiv",
            (
                json!({
                    "id": "nluds-0001", "question": "Seven red apples and two green apples are in the basket. How many apples are in the basket?",
                    "chain": "<gadget id=\"calculator\">7 + 2</gadget>", "result": "9", "result_float": 9.0
                }),
                "9",
            ),
        ),
        (
            "mbpp",
            (
                json!({
                    "task_id": 601, "text": "Write a function to find the longest chain which can be formed from the given set of pairs.",
                    "code": "def max_chain_length(arr, n):\n    return n", "test_list": ["assert True"], "test_setup_code": "", "challenge_test_list": []
                }),
                "",
            ),
        ),
        (
            "codexglue",
            (
                json!({
                    "id": 0, "repo": "a/b", "path": "x.py", "func_name": "f", "original_string": "def f(x): return x", "language": "python",
                    "code": "def f(x):\n    return x", "code_tokens": ["def"], "docstring": "Return x unchanged.", "docstring_tokens": ["Return"],
                    "sha": "0", "url": "u"
                }),
                "",
            ),
        ),
        (
            "arc-easy",
            (
                json!({
                    "id": "Mercury_SC_415702", "question": "George wants to warm his hands quickly by rubbing them. Which skin surface will produce the most heat?",
                    "choices": { "text": ["dry palms", "wet palms", "palms covered with oil", "palms covered with lotion"], "label": ["A", "B", "C", "D"] },
                    "answerKey": "A"
                }),
                "A",
            ),
        ),
        (
            "arc-challenge",
            (
                json!({
                    "id": "Mercury_7175875", "question": "An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?",
                    "choices": { "text": ["Planetary density will decrease.", "Planetary years will become longer.", "Planetary days will become shorter.", "Planetary gravity will become stronger."], "label": ["A", "B", "C", "D"] },
                    "answerKey": "C"
                }),
                "C",
            ),
        ),
        (
            "hotpotqa",
            (
                json!({
                    "id": "5a7a06935542990198eaf050", "question": "Which magazine was started first Arthur's Magazine or First for Women?",
                    "answer": "Arthur's Magazine", "type": "comparison", "level": "medium",
                    "supporting_facts": { "title": ["Arthur's Magazine"], "sent_id": [0] },
                    "context": { "title": ["Arthur's Magazine", "First for Women"],
                                 "sentences": [["Arthur's Magazine (1844–1846) was an American literary periodical.", " It was published in Philadelphia."],
                                               ["First for Women is a woman's magazine published by Bauer Media Group.", " It was started in 1989."]] }
                }),
                "Arthur's Magazine",
            ),
        ),
        (
            "drop",
            (
                json!({
                    "section_id": "nfl_2201", "query_id": "f16c0ee7", "passage": "To start the season, the Lions traveled south to Tampa. Detroit scored on a 28-yard pass.",
                    "question": "How many yards was the touchdown pass?", "answers_spans": { "spans": ["28"], "types": ["number"] }
                }),
                "28",
            ),
        ),
        (
            "strategyqa",
            (
                json!({
                    "qid": "4fd64bb6", "term": "Genghis Khan", "description": "founder of the Mongol Empire",
                    "question": "Are more people today related to Genghis Khan than Julius Caesar?", "answer": true,
                    "facts": ["Julius Caesar had three children.", "Genghis Khan had sixteen children."], "decomposition": ["How many children did Julius Caesar have?"]
                }),
                "yes",
            ),
        ),
        (
            "piqa",
            (
                json!({
                    "goal": "When boiling butter, when it's ready, you can", "sol1": "Pour it onto a plate", "sol2": "Pour it into a jar", "label": 1
                }),
                "B",
            ),
        ),
        (
            "hellaswag",
            (
                json!({
                    "ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering the window of a car.",
                    "ctx_b": "then", "ctx": "Then, the man writes over the snow covering the window of a car. then",
                    "endings": [", the man adds wax to the windshield.", ", a person board a ski lift.", ", the man puts on a christmas coat.", ", the man continues removing the snow on his car."],
                    "source_id": "activitynet~v_-1IBHYS3L-Y", "split": "train", "split_type": "indomain", "label": "3"
                }),
                "D",
            ),
        ),
        (
            "boolq",
            (
                json!({
                    "question": "do iran and afghanistan speak the same language", "answer": true,
                    "passage": "Persian language -- Persian is a Western Iranian language spoken in Iran and Afghanistan."
                }),
                "yes",
            ),
        ),
        ("wikitext", (text(" = Valkyria Chronicles III = \n"), "")),
        (
            "fineweb-edu",
            (
                text(
                    "The Independent Jane. For all the love, romance and scandal in Jane Austen's books, what they are really about is freedom.",
                ),
                "",
            ),
        ),
        (
            "openwebtext",
            (
                text(
                    "Port-au-Prince, Haiti (CNN) -- Earthquake victims, writhing in pain, begged for help.",
                ),
                "",
            ),
        ),
    ])
}

/// dataset name → its `records:` template, as `forge` plans `pipelines/agent-forge.yaml` (matrix
/// expanded, variables substituted, defaults filled in).
fn templates() -> BTreeMap<String, RecordTemplate> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/agent-forge.yaml");
    let pipeline =
        forge::pipeline::load(&path).unwrap_or_else(|_| panic!("agent-forge.yaml loads"));
    let plan = forge::plan::build(pipeline, &forge::ops::OpRegistry::builtin())
        .unwrap_or_else(|_| panic!("agent-forge.yaml plans"));
    plan.steps
        .iter()
        .filter_map(|s| {
            let name =
                s.id.strip_prefix("cognate.datasets[ds=")?
                    .strip_suffix(']')?;
            assert!(
                s.params["source"]
                    .as_str()
                    .unwrap()
                    .starts_with("hf:datasets/"),
                "{name}"
            );
            let t = serde_json::from_value(s.params["records"].clone()).unwrap();
            Some((name.to_owned(), t))
        })
        .collect()
}

fn render(name: &str, t: &RecordTemplate, row: &Value) -> forge_ops::data::Record {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.jsonl"));
    std::fs::write(&file, format!("{row}\n")).unwrap();
    let c =
        convert(&[file], t, name, 0.0, 0.0, |_| true).unwrap_or_else(|err| panic!("{name}: {err}"));
    c.splits
        .into_values()
        .flatten()
        .next()
        .unwrap_or_else(|| panic!("{name}: no record"))
}

#[test]
fn every_dataset_template_of_the_gpu_pipeline_renders_its_rows() {
    let (templates, rows) = (templates(), rows());
    assert_eq!(templates.len(), 16, "the seed's 16 datasets");
    for (name, t) in &templates {
        t.check()
            .unwrap_or_else(|err| panic!("{name}: {}: {err}", err.field));
        let (row, answer) = rows
            .get(name.as_str())
            .unwrap_or_else(|| panic!("no sample row for {name}"));
        let r = render(name, t, row);
        assert_eq!(r.answer, *answer, "{name}");
        assert!(!r.prompt.is_empty(), "{name}: {r:?}");
        assert!(
            !r.text.contains("{{") && !r.text.contains("{%"),
            "{name}: {r:?}"
        );
    }
}

#[test]
fn multiple_choice_and_multi_hop_prompts_carry_their_options_and_context() {
    let (templates, rows) = (templates(), rows());
    let r = |name: &str| render(name, &templates[name], &rows[name].0);
    let arc = r("arc-easy");
    assert!(arc.prompt.ends_with("heat?\n(A) dry palms\n(B) wet palms\n(C) palms covered with oil\n(D) palms covered with lotion"), "{}", arc.prompt);
    let hs = r("hellaswag");
    assert!(
        hs.prompt
            .contains("\n(D) , the man continues removing the snow on his car."),
        "{}",
        hs.prompt
    );
    let hotpot = r("hotpotqa");
    assert!(hotpot.prompt.starts_with("Arthur's Magazine: Arthur's Magazine (1844–1846) was an American literary periodical. It was published"), "{}", hotpot.prompt);
    assert!(hotpot.prompt.ends_with(
        "Question: Which magazine was started first Arthur's Magazine or First for Women?"
    ));
    let gsm = r("gsm8k");
    assert!(gsm.text.ends_with("#### 72"), "{}", gsm.text);
    let svamp = r("svamp");
    assert!(
        svamp.text.ends_with("( 290.0 / 2.0 ) = 145\n#### 145"),
        "{}",
        svamp.text
    );
}
