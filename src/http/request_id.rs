//! Request ids. Every request gets an id the service made itself (a random UUID), which the
//! log calls `request_id`: it names exactly one request, whatever clients send. A client's own
//! `X-Request-Id` is kept beside it, as `client_request_id`, only when it is a plain token:
//! at most [`MAX_CLIENT_ID_BYTES`] of ASCII letters, digits and `-_.:`. Anything else (a
//! 190 KB header, spaces, quotes, a JSON fragment) is dropped, as though none had been sent.
//! The response's `X-Request-Id` is the client's valid id when there is one, else the
//! service's, so a caller can always find its request in the log by the id it holds.
//!
//! Why this alphabet: it covers what request ids are in practice (UUIDs, ULIDs, KSUIDs,
//! 32-digit trace ids, a W3C `traceparent`, `service:host:sequence`), and nothing in it needs
//! quoting in a header, a URL, a shell, a file name or a log query, so an id can be pasted
//! anywhere. Why 128 bytes: a UUID is 36 and a `traceparent` 55; more is not an id.
//! Owns nothing else: what else the log bounds is `telemetry::bounded`'s.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::request_id::{MakeRequestId, MakeRequestUuid, RequestId};

/// The longest client id kept.
pub const MAX_CLIENT_ID_BYTES: usize = 128;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's ids, in its extensions for the request span.
#[derive(Debug, Clone)]
pub struct RequestIds {
    /// Made here, unique.
    pub service: HeaderValue,
    /// The client's `X-Request-Id`, when it is a plain token.
    pub client: Option<HeaderValue>,
}

impl RequestIds {
    /// The id the response carries: the client's, else the service's.
    pub fn answered(&self) -> &HeaderValue {
        self.client.as_ref().unwrap_or(&self.service)
    }
}

/// Whether a client's id is kept: 1 to [`MAX_CLIENT_ID_BYTES`] bytes of `A-Za-z0-9-_.:`.
pub fn is_plain_token(id: &[u8]) -> bool {
    (1..=MAX_CLIENT_ID_BYTES).contains(&id.len())
        && id
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-_.:".contains(byte))
}

/// Gives the request its ids before the request span reads them, and answers with one.
pub async fn request_ids(mut request: Request, next: Next) -> Response {
    let client = request
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|id| is_plain_token(id.as_bytes()))
        .cloned();
    let service = MakeRequestUuid.make_request_id(&request).map_or_else(
        || HeaderValue::from_static("none"),
        RequestId::into_header_value,
    );
    let ids = RequestIds { service, client };
    let answered = ids.answered().clone();
    request.extensions_mut().insert(ids);
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), answered);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_tokens_are_short_and_need_no_quoting() {
        for kept in [
            "4ea27a44-08ef-4002-9b20-cd53e9ac4baa",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "web:host-1.eu_west:42",
            &"a".repeat(MAX_CLIENT_ID_BYTES),
        ] {
            assert!(is_plain_token(kept.as_bytes()), "{kept}");
        }
        for dropped in [
            "",
            "a b",
            "a\"b",
            "a/b",
            "a;b",
            "a=b",
            "a\tb",
            "caf\u{e9}",
            &"a".repeat(MAX_CLIENT_ID_BYTES + 1),
        ] {
            assert!(!is_plain_token(dropped.as_bytes()), "{dropped}");
        }
    }
}
