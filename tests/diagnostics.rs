//! Invalid pipelines: every fixture in `fixtures/invalid/` must fail `forge apply` with exit code
//! 2, point at `file:line:column`, leave the store untouched, and print exactly the diagnostics in
//! its snapshot (`snapshots/`; review changes with `cargo insta review`).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::Project;

fn forge_in(dir: &Path, store: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(args)
        .arg("--store")
        .arg(store)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("FORGE_STORE")
        .output()
        .unwrap()
}

/// Every file under the store with its size and mtime, to prove nothing changed.
fn listing(root: &Path) -> BTreeMap<String, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.insert(
                e.path().display().to_string(),
                (m.len(), m.modified().unwrap()),
            );
        }
    }
    out
}

#[test]
fn invalid_pipelines_fail_with_located_diagnostics_and_exit_2() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let count = std::fs::read_dir(&fixtures).unwrap().count();
    assert!(count >= 40, "only {count} fixtures");
    // A store with real content, which no invalid pipeline may touch.
    let p = Project::new();
    p.write("ok.yaml", "version: 1\nname: ok\nphases:\n  p: { steps: { a: { op: exec, with: { run: \"echo hi > $FORGE_OUTPUT/x\" } } } }\n");
    p.apply_ok("ok.yaml", &[]);
    let before = listing(&p.store());
    insta::glob!("fixtures/invalid/*.yaml", |path| {
        let name = path.file_name().unwrap().to_str().unwrap();
        let fresh = p.path().join("fresh-store");
        for store in [p.store(), fresh.clone()] {
            let out = forge_in(path.parent().unwrap(), &store, &["apply", name]);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !fresh.exists(),
                "{name}: an invalid pipeline created a store"
            );
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            let located = err.contains(&format!("[{name}:"));
            assert!(located, "{name}: no file:line:column in\n{err}");
            if store == p.store() {
                insta::assert_snapshot!(err);
            }
        }
    });
    assert_eq!(
        listing(&p.store()),
        before,
        "an invalid pipeline changed the store"
    );
}

#[test]
fn multi_megabyte_file_fails_fast() {
    let p = Project::new();
    let mut text = String::from("version: 1\nname: big\nvars:\n");
    while text.len() < 5 << 20 {
        text.push_str(&format!("  v{}: \"{}\"\n", text.len(), "x".repeat(100)));
    }
    text.push_str("phases:\n  p: { steps: { a: { op: exec, with: { run: x } } } }\n");
    p.write("big.yaml", &text);
    let t = std::time::Instant::now();
    let out = p.run(&["apply", "big.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    let err = common::stderr(&out);
    assert!(err.contains("pipeline files are limited to 4 MiB"), "{err}");
    assert!(!p.store().exists());
}

#[test]
fn missing_file_is_a_clear_error() {
    let p = Project::new();
    let out = p.run(&["apply", "nope.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("cannot read `nope.yaml`"),
        "{}",
        common::stderr(&out)
    );
}

/// Under `--log-format json` every problem is also one JSON object on stdout, at the same
/// `file:line:column` as the human rendering on stderr, and stdout holds nothing else.
#[test]
fn under_json_logs_each_problem_is_one_json_line_at_its_location() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let p = Project::new();
    let (mut seen, mut located) = (0, 0);
    for entry in std::fs::read_dir(&fixtures).unwrap().flatten() {
        let name = entry.file_name().to_str().unwrap().to_owned();
        let out = forge_in(
            &fixtures,
            &p.store(),
            &["--log-format", "json", "plan", &name],
        );
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let diags: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}: {l}")))
            .collect();
        let crosses = err
            .lines()
            .filter(|l| l.trim_start().starts_with("× "))
            .count();
        assert_eq!(
            diags.len(),
            crosses,
            "{name}: one object per diagnostic\n{err}"
        );
        for d in &diags {
            assert_eq!(d["event"], "diagnostic", "{name}");
            assert!(
                d["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{name}"
            );
            assert_eq!(d["file"], name.as_str());
            if let (Some(line), Some(col)) = (d["line"].as_u64(), d["column"].as_u64()) {
                let at = format!("[{name}:{line}:{col}]");
                assert!(err.contains(&at), "{name}: {at} not in\n{err}");
                located += 1;
            }
        }
        seen += diags.len();
    }
    assert!(
        seen >= 40 && located >= 40,
        "{seen} diagnostics, {located} located"
    );
    assert!(!p.store().exists(), "nothing written");
}
