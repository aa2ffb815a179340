//! coffer-storage binary: everything lives in [`coffer_storage::cli`].

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    coffer_storage::cli::run(std::env::args_os().collect()).await
}
