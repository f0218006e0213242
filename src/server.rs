//! Serving connections: the accept loop, per-connection limits axum's `serve` does not offer
//! (a header read timeout against slowloris clients), and graceful shutdown: stop accepting,
//! give in-flight executions a grace period, then stop them, so every request is answered
//! and the process exits before Cloud Run's SIGKILL.

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::app::AppState;
use crate::http::router;

/// How long stopped executions get to send their 503 once the grace period is over.
const ANSWER_AFTER_CANCEL: Duration = Duration::from_secs(3);
/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `state`'s API on `listener` until `shutdown` completes, then drains.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()>) {
    let app = router(state.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.server.header_read_timeout());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            // Errors here are a client's (reset, timed out headers); the request was logged.
            let _ = connection.await;
        });
    }
    drop(listener);
    drain(graceful, &state).await;
}

/// Lets in-flight requests finish within the grace period, then stops their executions.
async fn drain(graceful: GracefulShutdown, state: &AppState) {
    let sandbox = &state.sandbox;
    sandbox.stop_admitting();
    let grace = state.config.server.shutdown_grace();
    tracing::info!(
        grace_ms = grace.as_millis(),
        "shutting down: finishing in-flight requests"
    );
    let mut drained = std::pin::pin!(graceful.shutdown());
    if tokio::time::timeout(grace, &mut drained).await.is_err() {
        tracing::warn!("grace period over: stopping the executions still running");
        sandbox.cancel_running();
        if tokio::time::timeout(ANSWER_AFTER_CANCEL, drained)
            .await
            .is_err()
        {
            tracing::error!(
                "connections still open after stopping every execution; exiting anyway"
            );
        }
    }
    tracing::info!("stopped");
}
