//! The `forge` binary: the CLI with the built-in ops.

fn main() -> std::process::ExitCode {
    forge::main_with_registry(forge::ops::OpRegistry::builtin())
}
