//! `GET /`: what the service offers (endpoints, limits, isolation, the sandbox's Python and
//! packages), as JSON for programs and as a page (`info/page.rs`) for a browser, chosen by the
//! `Accept` header. Owns the negotiation; the page owns its document.

mod page;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::app::AppState;
use crate::protocol::{Endpoint, InfoResponse, ServiceLimits};

/// What the service offers: endpoints, limits, isolation, the sandbox's Python and packages.
/// JSON unless the client prefers `text/html` (a browser), which gets the page.
#[utoipa::path(
    get,
    path = "/",
    responses(
        (status = 200,
            description = "The service's description: JSON (no `Accept`, `*/*`, `application/json`), \
                           or a self-contained HTML page to run scripts when `Accept` prefers `text/html`",
            content(
                (InfoResponse = "application/json"),
                (String = "text/html", example = "<!doctype html>..."),
            ),
            headers(("Vary" = String, description = "`accept`: the representation depends on it")),
        ),
    )
)]
pub(super) async fn info(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let info = describe(&state);
    let mut response = match preferred(&headers) {
        Representation::Json => Json(info).into_response(),
        Representation::Html => {
            let page = page::render(&info).map_err(|error| {
                tracing::error!(%error, "rendering the page failed");
                ApiError::Internal
            })?;
            (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (
                        header::CONTENT_SECURITY_POLICY,
                        page::CONTENT_SECURITY_POLICY,
                    ),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    (header::REFERRER_POLICY, "no-referrer"),
                ],
                page,
            )
                .into_response()
        }
    };
    // Both representations live at one URL: a cache must key on `Accept`.
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    Ok(response)
}

/// The description both representations show: the page renders exactly what JSON clients get.
fn describe(state: &AppState) -> InfoResponse {
    let installed = state.sandbox.installed();
    InfoResponse {
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        description: "Runs a Python script's main() in an nsjail sandbox and returns its JSON result and stdout.",
        endpoints: vec![
            Endpoint {
                method: "POST",
                path: "/execute",
                description: "Body {\"script\": \"def main(): ...\"} (Content-Type: application/json), \
                              optionally with \"input\" for main(input), \"files\" to place, \
                              \"return_files\", \"limits\" and \"strict_result\"; answers \
                              {\"result\": <main()'s return value>, \"stdout\": \"...\"}. \
                              With Accept: application/x-ndjson (or text/event-stream), \
                              streams stdout and stderr as the script writes them, then that \
                              answer as the last event.",
            },
            Endpoint {
                method: "GET",
                path: "/health",
                description: "200 {\"status\": \"healthy\", ...} with the active jail profile and what it \
                              guarantees when scripts can run, 503 with the reason otherwise.",
            },
            Endpoint {
                method: "GET",
                path: "/",
                description: "This description, with the sandbox's Python and packages: JSON, or a page \
                              to run scripts in when the client prefers text/html (a browser).",
            },
            Endpoint {
                method: "GET",
                path: "/metrics",
                description: "Executions, latencies, queue and warm-path metrics in the OpenMetrics \
                              text format Prometheus scrapes.",
            },
            Endpoint {
                method: "GET",
                path: "/openapi.json",
                description: "The API as an OpenAPI 3.1 document: every request, status and body.",
            },
        ],
        limits: ServiceLimits::from(&state.config.limits),
        isolation: state.sandbox.isolation(),
        python: installed.python.clone(),
        packages: installed.packages.clone(),
    }
}

/// The two representations of `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Representation {
    Json,
    Html,
}

/// What the `Accept` headers prefer (RFC 9110, 12.5.1): each representation gets the q-value
/// of the most specific media range that matches it. The page only when `text/html` is
/// strictly preferred (a browser's `text/html,...,*/*;q=0.8`); no `Accept`, `*/*`, a tie, or
/// nothing acceptable at all gets JSON, the API's own representation, rather than a 406 that
/// clients sending odd headers would have to learn.
fn preferred(headers: &HeaderMap) -> Representation {
    let ranges: Vec<MediaRange<'_>> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(MediaRange::parse)
        .collect();
    if quality(&ranges, "text", "html") > quality(&ranges, "application", "json") {
        Representation::Html
    } else {
        Representation::Json
    }
}

/// One element of an `Accept` header, its q-value in thousandths.
#[derive(Debug, PartialEq, Eq)]
struct MediaRange<'a> {
    kind: &'a str,
    subtype: &'a str,
    q: u16,
}

impl<'a> MediaRange<'a> {
    /// None for a malformed element, which is then ignored (as if it were not there).
    fn parse(text: &'a str) -> Option<Self> {
        let mut parts = text.split(';');
        let (kind, subtype) = parts.next()?.trim().split_once('/')?;
        let (kind, subtype) = (kind.trim(), subtype.trim());
        if kind.is_empty() || subtype.is_empty() || (kind == "*" && subtype != "*") {
            return None;
        }
        let mut q = 1000;
        for parameter in parts {
            let (name, value) = parameter.split_once('=')?;
            if name.trim().eq_ignore_ascii_case("q") {
                q = qvalue(value.trim())?;
            }
        }
        Some(Self { kind, subtype, q })
    }
}

/// `0`, `0.5`, `0.125`, `1`, `1.000` as thousandths; anything else (`2`, `0.1234`, `x`) is None.
fn qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let thousandths: u16 = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The q-value `ranges` give `kind/subtype`: that of the most specific range matching it (the
/// highest among equally specific ones), 0 when none does.
fn quality(ranges: &[MediaRange<'_>], kind: &str, subtype: &str) -> u16 {
    ranges
        .iter()
        .filter_map(|range| {
            let specificity = if range.kind == "*" {
                0
            } else if !range.kind.eq_ignore_ascii_case(kind) {
                return None;
            } else if range.subtype == "*" {
                1
            } else if range.subtype.eq_ignore_ascii_case(subtype) {
                2
            } else {
                return None;
            };
            Some((specificity, range.q))
        })
        .max()
        .map_or(0, |(_, q)| q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn for_accept(values: &[&str]) -> Representation {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        }
        preferred(&headers)
    }

    #[test]
    fn browsers_get_the_page() {
        let browsers = [
            // Chromium, Firefox, Safari.
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ];
        for accept in browsers {
            assert_eq!(for_accept(&[accept]), Representation::Html, "{accept}");
        }
        assert_eq!(for_accept(&["TEXT/HTML"]), Representation::Html);
        assert_eq!(for_accept(&["text/*"]), Representation::Html);
        assert_eq!(
            for_accept(&["application/json;q=0.5", "text/html;q=0.6"]),
            Representation::Html
        );
    }

    #[test]
    fn programs_get_json() {
        for accept in [
            &[][..],
            &["*/*"],
            &["application/json"],
            &["application/json, text/html"],
            &["text/html;q=0.5, application/json"],
            &["text/html;q=0, */*"],
            &["text/html;q=0"],
            &["text/plain"],
            &["application/*;q=0.9, text/html;q=0.9"],
            &[""],
            &["garbage"],
        ] {
            assert_eq!(for_accept(accept), Representation::Json, "{accept:?}");
        }
    }

    #[test]
    fn the_most_specific_range_decides() {
        // `*/*` would say 1, but `text/html` itself says 0.1.
        assert_eq!(for_accept(&["*/*, text/html;q=0.1"]), Representation::Json);
        assert_eq!(
            for_accept(&["text/*;q=0.2, application/json;q=0.1"]),
            Representation::Html
        );
    }

    #[test]
    fn malformed_elements_are_ignored() {
        assert_eq!(MediaRange::parse("text/html;q=2"), None);
        assert_eq!(MediaRange::parse("text/html;q=0.1234"), None);
        assert_eq!(MediaRange::parse("*/html"), None);
        assert_eq!(MediaRange::parse("text/html;level"), None);
        assert_eq!(
            for_accept(&["text/html;q=2, application/json;q=0.1"]),
            Representation::Json
        );
        assert_eq!(qvalue("1."), Some(1000));
        assert_eq!(qvalue("0.05"), Some(50));
        assert_eq!(qvalue("1.001"), None);
    }
}
