//! Log set-up and the request span. Script text and output are never logged.

mod cloud_logging;

use std::borrow::Cow;

use axum::extract::MatchedPath;
use axum::http::{HeaderValue, Request};
use tracing::Span;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::http::RequestIds;

/// The most bytes of any one value a client chose (a header, the path, the method) that a log
/// line holds: with the service's own fields, a line stays a few KiB, far below Cloud
/// Logging's 256 KB entry limit, whatever the client sends.
pub const MAX_LOGGED_BYTES: usize = 512;

/// Installs the global subscriber: `RUST_LOG` filters (default `info`). Text is coloured only
/// on a terminal, so a log file or collector gets plain lines; JSON is one Cloud Logging entry
/// a line (see `cloud_logging.rs`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(cloud_logging::CloudLogging)
            .init(),
        LogFormat::Text => builder.compact().init(),
    }
}

/// The span around one request: the route template (low cardinality), the id the service
/// gave the request and the client's own (`http::request_id`).
pub fn request_span<B>(request: &Request<B>) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let ids = request.extensions().get::<RequestIds>();
    let request_id = ids.and_then(|ids| ids.service.to_str().ok());
    let client_request_id = ids
        .and_then(|ids| ids.client.as_ref())
        .and_then(|id| id.to_str().ok());
    let method = bounded(request.method().as_str());
    tracing::info_span!("http", %method, route, request_id, client_request_id)
}

/// `text`, or its first [`MAX_LOGGED_BYTES`] (cut on a character boundary) followed by
/// `…[cut from N bytes]`: for a value a client chose, before it is logged.
pub fn bounded(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_LOGGED_BYTES {
        return Cow::Borrowed(text);
    }
    let mut end = MAX_LOGGED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…[cut from {} bytes]", &text[..end], text.len()))
}

/// A header's value as text to log: bytes that are not UTF-8 become U+FFFD, and it is
/// [`bounded`].
pub fn header_text(value: &HeaderValue) -> String {
    let text = String::from_utf8_lossy(value.as_bytes());
    bounded(&text).into_owned()
}

/// Displays an error with its whole source chain (`outer: cause: root`): the JSON formatter
/// would otherwise record only the outermost message.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_on_a_character_boundary_and_say_so() {
        assert_eq!(bounded("curl/8"), "curl/8");
        let exactly = "a".repeat(MAX_LOGGED_BYTES);
        assert_eq!(bounded(&exactly), exactly);
        let long = format!("a{}", "é".repeat(MAX_LOGGED_BYTES));
        let cut = bounded(&long);
        let (head, tail) = cut.split_once('…').unwrap();
        // 1 + 2 × 255 bytes: one more `é` would pass the bound.
        assert_eq!(head.len(), MAX_LOGGED_BYTES - 1);
        assert_eq!(tail, format!("[cut from {} bytes]", long.len()));
        let value = HeaderValue::from_bytes(&[b'a', 0xff, b'b']).unwrap();
        assert_eq!(header_text(&value), "a\u{fffd}b");
        let huge = HeaderValue::from_str(&"x".repeat(190_000)).unwrap();
        assert!(header_text(&huge).len() < MAX_LOGGED_BYTES + 32);
    }
}
