//! The process shell: configuration, logging, the sandbox's start-up probe, then serve until
//! SIGTERM or SIGINT. No logic of its own. A failure to start is one line on stderr and exit
//! code 2.

use std::future::Future;
use std::process::ExitCode;

use pyexec::telemetry::{self, ErrorChain};
use pyexec::{AppState, Config, server};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            // Logging is configured by what just failed to load: plain stderr it is.
            eprintln!("pyexec: {}", ErrorChain(&error));
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.server.log_format);
    let served = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Box::<dyn std::error::Error>::from)
        .and_then(|runtime| runtime.block_on(serve(config)));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %ErrorChain(&*error), "pyexec could not start");
            ExitCode::from(2)
        }
    }
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let addr = config.server.listen_addr();
    let state = AppState::start(config).await?;
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| format!("cannot listen on {addr}: {error}"))?;
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
