//! The command line's own surface: shell completion scripts that the shells accept and that
//! complete forge's subcommands; `forge dag` in its three formats; `forge metrics`.

mod common;

use std::process::Command;

/// What `cmd` prints, once it has succeeded.
fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn completions(shell: &str) -> String {
    stdout_of(Command::new(env!("CARGO_BIN_EXE_forge")).args(["completions", shell]))
}

#[test]
fn every_shell_gets_a_script_naming_the_subcommands() {
    for (shell, marker) in [
        ("bash", "complete -F _forge"),
        ("zsh", "#compdef forge"),
        ("fish", "complete -c forge"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[forge]"),
    ] {
        let script = completions(shell);
        assert!(script.contains(marker), "{shell}: no `{marker}`");
        for sub in ["apply", "plan", "eval", "generate", "completions"] {
            assert!(script.contains(sub), "{shell}: `{sub}` missing");
        }
    }
    let err = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        err.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

/// bash sources the script and completes `forge ap` to `apply`, and `forge apply --dr` to
/// `--dry-run`, through the function it registered.
#[test]
fn bash_completes_subcommands_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("forge.bash");
    std::fs::write(&script, completions("bash")).unwrap();
    let complete = |words: &str| {
        let cmd = format!(
            "source '{}'; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
             _forge forge \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        stdout_of(Command::new("bash").args(["--norc", "-c", &cmd]))
    };
    let subs = complete("forge ap");
    assert_eq!(
        subs.split_whitespace().collect::<Vec<_>>(),
        ["apply"],
        "{subs}"
    );
    let flags = complete("forge apply --dr");
    assert!(
        flags.split_whitespace().any(|f| f.starts_with("--dry-run")),
        "{flags}"
    );
}

/// Matrix instances apart, phases grouped, data edges labelled with the input, `needs:` edges
/// dashed (or "after"), steps listed in run order.
#[test]
fn dag_shows_every_instance_and_edge_in_each_format() {
    let p = common::Project::new();
    p.write(
        "g.yaml",
        r#"
version: 1
name: g
phases:
  make:
    steps:
      src: { op: exec, with: { run: "echo 1 > $FORGE_OUTPUT/x" } }
      each:
        op: exec
        matrix: { v: [a, b] }
        inputs: { data: src }
        with: { run: "true" }
  use:
    steps:
      last: { op: exec, needs: make.src, inputs: { all: [make.each] }, with: { run: "true" } }
"#,
    );
    for format in ["text", "dot", "mermaid"] {
        let out = p.run(&["dag", "g.yaml", "--format", format]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let shown = String::from_utf8(out.stdout).unwrap();
        insta::assert_snapshot!(format!("dag_{format}"), shown);
    }
    let bad = p.run(&["dag", "g.yaml", "--format", "svg"]);
    assert_eq!(bad.status.code(), Some(2));
}

const DATA: &str = r#"
version: 1
name: m
phases:
  p:
    steps:
      data:
        op: download
        matrix: { n: [50, 80] }
        with: { source: "builtin:mixed", samples: "${matrix.n}" }
"#;

/// The latest numbers with a matrix step's instances as columns; the last runs as columns; two
/// runs compared; JSON cells; a bad glob is a usage error.
#[test]
fn metrics_put_instances_and_runs_side_by_side() {
    let p = common::Project::new();
    p.write("m.yaml", DATA);
    let run_of = |evs: &[serde_json::Value]| {
        evs.iter()
            .find_map(|e| e["run_id"].as_str().map(str::to_owned))
            .expect("a run id")
    };
    let first = run_of(&p.apply_ok("m.yaml", &[]));
    p.write("m.yaml", &DATA.replace("[50, 80]", "[50, 90]"));
    let second = run_of(&p.apply_ok("m.yaml", &[]));
    let show = |args: &[&str]| {
        let out = p.run(args);
        assert!(out.status.success(), "{}", common::stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let table = show(&["metrics", "m.yaml", "--names", "*train*"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("p.data") && lines[0].ends_with("n=50  n=90"),
        "{table}"
    );
    assert!(
        lines[1].trim_start().starts_with("data/train_records"),
        "{table}"
    );

    let json: Vec<serde_json::Value> =
        serde_json::from_str(&show(&["metrics", "m.yaml", "-f", "json"])).unwrap();
    let cell = |column: &str, metric: &str| {
        json.iter()
            .find(|c| c["column"] == column && c["metric"] == metric)
            .and_then(|c| c["value"].as_f64())
    };
    let (n50, n90) = (
        cell("n=50", "data/train_records"),
        cell("n=90", "data/train_records"),
    );
    assert!(
        n50.unwrap() < n90.unwrap(),
        "more samples, more training rows: {json:?}"
    );

    let runs = show(&["metrics", "m.yaml", "--runs", "2", "--steps", "*n=50*"]);
    assert!(runs.lines().next().unwrap().ends_with(&second), "{runs}");
    assert!(runs.contains(&first), "{runs}");

    let diff = show(&["metrics", "diff", &first, &second, "--names", "*train*"]);
    assert!(diff.contains("change") && diff.contains('='), "{diff}");
    assert!(
        diff.contains("p.data[n=80]") && diff.contains("p.data[n=90]"),
        "{diff}"
    );

    let bad = p.run(&["metrics", "m.yaml", "--names", "[oops"]);
    assert_eq!(bad.status.code(), Some(2));
    let unknown = p.run(&["metrics", "diff", "nope", &second]);
    assert_eq!(unknown.status.code(), Some(2));
}
