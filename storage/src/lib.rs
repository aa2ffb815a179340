//! coffer-storage: the S3-compatible storage node. `s3/` is the protocol edge (s3s), `store/`
//! the durable metadata and blobs, `crypto/` the envelope encryption, `server` assembles and
//! serves them, `dev` runs the two-process system locally.

mod auth_gate;
pub mod bk_rotation;
pub mod cli;
pub mod crypto;
pub mod dev;
mod error_body;
mod key_headers;
pub mod metrics;
mod post_policy;
pub mod rewrap;
pub mod s3;
pub mod server;
pub mod state;
pub mod store;

/// Why [`serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("starting: {0}")]
    Start(#[from] server::StartError),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// Open the store in `config.data_dir` (running the start-up sweep) and serve S3 over plain
/// HTTP on an already-bound `listener` until `shutdown` resolves, without a KMS (SSE-S3 answers
/// 501). [`server::open_state`] and [`server::serve`] take a KMS client and TLS as well.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: state::NodeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let state = server::open_state(config, None).await?;
    server::serve(listener, state, None, shutdown).await?;
    Ok(())
}
