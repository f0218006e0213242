//! The HTTP surface: routes, fallbacks and the middleware stack. Nothing else lives here;
//! handlers are in their own files and every error goes through [`error::ApiError`].

mod backstop;
mod error;
mod execute;
mod extract;
mod health;
mod info;
mod log;
mod metrics;
mod openapi;
mod request_id;
mod stream;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use request_id::RequestIds;

use crate::app::AppState;
use crate::telemetry;

/// The whole API.
pub fn router(state: AppState) -> Router {
    let server = &state.config.server;
    Router::new()
        .route("/", get(info::info))
        .route("/health", get(health::health))
        .route("/execute", post(execute::execute))
        .route("/openapi.json", get(openapi::openapi))
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(server.max_body_bytes))
        // Each `Router::layer` wraps the ones before it, so these run innermost first. They are
        // separate calls because each turns its body type back into axum's, which the JSON
        // backstop needs: it must see the timeout's and the panic handler's responses.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            state.config.request_timeout(),
        ))
        .layer(CatchPanicLayer::new())
        .layer(axum::middleware::map_response(backstop::json_backstop))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            log::access_log,
        ))
        // Listed outermost first: the request ids exist before the span reads them, and every
        // answer, the backstop's included, carries one.
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn(request_id::request_ids))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(telemetry::request_span)
                        // One line per request comes from `log::access_log`, inside this span.
                        .on_response(())
                        .on_failure(()),
                ),
        )
        .with_state(state)
}
