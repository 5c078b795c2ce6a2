//! Guard rails for the structure ARCHITECTURE.md describes, read from the source itself:
//!
//! - the crates depend one way: `cache` ← `ops` ← `engine` (the `forge` package);
//! - no op module in `ops/src/builtin/` uses another op module;
//! - the modules of each crate import each other without cycles (file by file);
//! - `unsafe` is allowed in `ops/src/sys.rs` only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The dependency names under `[dependencies]` of a Cargo.toml.
fn dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut in_deps = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && let Some((name, _)) = line.split_once('=') {
            let name = name.trim();
            if !name.is_empty() && !name.starts_with('#') {
                out.insert(name.split('.').next().unwrap().to_string());
            }
        }
    }
    out
}

#[test]
fn crates_depend_one_way() {
    let cache = dependencies(&root().join("cache/Cargo.toml"));
    let ops = dependencies(&root().join("ops/Cargo.toml"));
    assert!(
        !cache.contains("forge-ops") && !cache.contains("forge") && !cache.contains("burn"),
        "cache must not depend on ops, the engine or burn: {cache:?}"
    );
    assert!(ops.contains("forge-cache"));
    assert!(!ops.contains("forge"), "ops must not depend on the engine");
    let engine = dependencies(&root().join("Cargo.toml"));
    assert!(!engine.contains("burn"), "only ops touches burn");
    for f in rust_files(&root().join("ops/src")) {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text.contains("forge::") && !text.contains("use forge;"),
            "{} uses the engine",
            f.display()
        );
    }
}

#[test]
fn no_op_module_uses_another() {
    let dir = root().join("ops/src/builtin");
    let ops: Vec<String> = rust_files(&dir)
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|n| n != "mod")
        .collect();
    assert!(ops.len() >= 6, "{ops:?}");
    for op in &ops {
        let text = std::fs::read_to_string(dir.join(format!("{op}.rs"))).unwrap();
        for other in ops.iter().filter(|o| *o != op) {
            for pattern in [format!("builtin::{other}"), format!("super::{other}")] {
                assert!(
                    !text.contains(&pattern),
                    "op module `{op}` uses op module `{other}` (`{pattern}`): move what they share into the library"
                );
            }
        }
    }
}

/// The module path of a source file (`ops/src/merge/combo.rs` → `merge::combo`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The file-level import graph of one crate: file → the crate files it names through `crate::`
/// and `super::` paths (test modules included).
fn import_graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = rust_files(src);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    // The longest known module that a path starts with.
    let resolve = |path: &[String]| -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| modules.contains(m))
    };
    let mut graph = BTreeMap::new();
    for f in &files {
        let me = module_of(src, f);
        // Code only: a doc link to another module is not a dependency.
        let text: String = std::fs::read_to_string(f)
            .unwrap()
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let mut edges = BTreeSet::new();
        for (i, _) in text
            .match_indices("crate::")
            .chain(text.match_indices("super::"))
        {
            let rest = &text[i..];
            let segs: Vec<String> = rest
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap()
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            let path: Vec<String> = if segs[0] == "crate" {
                segs[1..].to_vec()
            } else {
                // `super::` from a file module is its parent; from a `mod.rs` too (the file is
                // the module itself, `super` its parent).
                let supers = segs.iter().take_while(|s| *s == "super").count();
                let base = &me[..me.len().saturating_sub(supers)];
                base.iter()
                    .cloned()
                    .chain(segs[supers..].iter().cloned())
                    .collect()
            };
            if let Some(target) = resolve(&path)
                && target != me
                && !target.is_empty()
                && !me.starts_with(&target)
            {
                edges.insert(target);
            }
        }
        graph.insert(me, edges);
    }
    graph
}

fn find_cycle(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        n: &Vec<String>,
        g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let i = stack.iter().position(|s| s == n).unwrap();
                let mut c: Vec<String> = stack[i..].iter().map(|m| m.join("::")).collect();
                c.push(n.join("::"));
                return Some(c);
            }
            _ => {}
        }
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn modules_import_each_other_without_cycles() {
    for src in ["ops/src", "cache/src", "engine/src"] {
        let graph = import_graph(&root().join(src));
        assert!(graph.len() > 5, "{src}: {} files", graph.len());
        if src == "ops/src" {
            let op = vec!["builtin".to_string(), "train".to_string()];
            assert!(
                graph[&op].contains(&vec!["train".to_string()]),
                "the graph sees imports: {:?}",
                graph[&op]
            );
        }
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{src}: import cycle {}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let m = |s: &str| vec![s.to_string()];
    let g: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = [
        (m("a"), [m("b")].into()),
        (m("b"), [m("c")].into()),
        (m("c"), [m("a")].into()),
    ]
    .into();
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    let ok: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> =
        [(m("a"), [m("b")].into()), (m("b"), BTreeSet::new())].into();
    assert!(find_cycle(&ok).is_none());
}

#[test]
fn unsafe_code_lives_in_the_sys_module_only() {
    let allowed = root().join("ops/src/sys.rs");
    for dir in ["ops/src", "cache/src", "engine/src", "tests", "examples"] {
        for f in rust_files(&root().join(dir)) {
            let text = std::fs::read_to_string(&f).unwrap();
            if f == allowed || f.ends_with("tests/architecture.rs") {
                continue;
            }
            assert!(
                !text.contains("allow(unsafe_code)"),
                "{} allows unsafe code; OS calls that need it go in ops/src/sys.rs",
                f.display()
            );
        }
    }
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(cargo.contains("unsafe_code = \"deny\""));
}
