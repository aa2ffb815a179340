//! coffer-storage binary: everything lives in [`coffer_storage::cli`]. A failure is printed as
//! one line (`error: ` and the cause chain joined by `: `), as `coffer-kms` does, whatever
//! `RUST_BACKTRACE` says.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match coffer_storage::cli::run(std::env::args_os().collect()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
