//! The `coffer-kms` binary: everything is in the library (`coffer_kms::cli`).

fn main() -> std::process::ExitCode {
    coffer_kms::cli::main()
}
