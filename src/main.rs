//! The process shell: configuration, logging, the sandbox's start-up probe, then serve until
//! SIGTERM or SIGINT. No logic of its own.

use std::future::Future;

use pyexec::{AppState, Config, server, telemetry};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_env()?;
    telemetry::init(config.server.log_format);
    let addr = config.server.listen_addr();
    let state = AppState::start(config).await?;
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    server::serve(listener, state, shutdown).await;
    Ok(())
}

/// Installed before serving, so a failure shows at start-up rather than at the first SIGTERM.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    })
}
