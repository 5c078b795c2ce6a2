//! The command line's own surface: shell completion scripts that the shells accept and that
//! complete forge's subcommands; `forge dag` in its three formats.

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
