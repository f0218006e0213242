//! Gives a JSON body to any error response that reached the client without one (tower-http's
//! timeout, the panic handler, an axum rejection we did not wrap), so every non-2xx is JSON.

use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ApiError;

pub async fn json_backstop(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if status.is_success() || status.is_informational() || status.is_redirection() || is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let mut fresh = ApiError::from_status(status).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    fresh.headers_mut().extend(parts.headers);
    fresh
}
