//! The committed JSON Schema matches `forge schema`, and every shipped pipeline points editors at
//! it and plans cleanly.

mod common;

use std::path::Path;

#[test]
fn committed_schema_is_up_to_date() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_forge"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/pipeline.schema.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        generated == committed,
        "schemas/pipeline.schema.json is stale; regenerate it with\n    cargo run -- schema > schemas/pipeline.schema.json"
    );
}

#[test]
fn shipped_pipelines_have_the_schema_modeline_and_plan_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("yaml") {
            continue;
        }
        n += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../schemas/pipeline.schema.json\n"),
            "{} lacks the schema modeline",
            path.display()
        );
        let p = common::Project::new();
        let out = p.run(&["plan", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            common::stderr(&out)
        );
    }
    assert!(n > 0);
}
