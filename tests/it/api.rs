//! The HTTP contract: statuses, the JSON error shape and its codes, the size boundaries, `/`,
//! `/health`. What never reaches a sandbox (routes, methods, content types, body parsing,
//! validation) is checked at the router with `oneshot`, booting no jail; the rest through the
//! real server, nsjail and sandbox Python.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use crate::common;

use axum::body::Body;
use axum::http::Request;
use common::{error_code, oneshot, post_execute, router_only, spawn_app};
use serde_json::json;

// At the router: no jail.

#[tokio::test]
async fn unknown_paths_and_wrong_methods_are_json() {
    let router = router_only(|_| {});
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let (status, _, body) = oneshot(&router, get("/nope")).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, _, body) = oneshot(&router, get("/execute")).await;
    assert_eq!((status, error_code(&body)), (405, "method_not_allowed"));
    let delete = Request::delete("/health").body(Body::empty()).unwrap();
    let (status, headers, body) = oneshot(&router, delete).await;
    assert_eq!(headers["allow"], "GET,HEAD");
    assert_eq!((status, error_code(&body)), (405, "method_not_allowed"));
}

#[tokio::test]
async fn malformed_bodies_are_400_with_a_json_error() {
    let router = router_only(|_| {});
    let cases = [
        ("{\"script\": ", "invalid_json"),
        ("not json at all", "invalid_json"),
        ("[1, 2]", "invalid_request"),
        ("[\"def main(): return 1\"]", "invalid_request"),
        ("{}", "invalid_request"),
        ("{\"code\": \"def main(): pass\"}", "invalid_request"),
        ("{\"script\": 42}", "invalid_request"),
        ("{\"script\": null}", "invalid_request"),
        ("{\"script\": \"a\", \"script\": \"b\"}", "invalid_request"),
        ("{\"script\": \"\"}", "empty_script"),
        ("{\"script\": \"  \\n\\t \"}", "empty_script"),
    ];
    for (body, code) in cases {
        let (status, _, response) =
            oneshot(&router, post_execute(Some("application/json"), body)).await;
        assert_eq!(
            (status, error_code(&response)),
            (400, code),
            "{body}: {response}"
        );
    }
    let (_, _, missing) = oneshot(&router, post_execute(Some("application/json"), "{}")).await;
    let message = missing["error"].as_str().unwrap();
    assert!(
        message.contains("\"script\"") && message.contains("missing field"),
        "{missing}"
    );
    let (_, _, number) = oneshot(
        &router,
        post_execute(Some("application/json"), "{\"script\": 42}"),
    )
    .await;
    assert!(
        number["error"]
            .as_str()
            .unwrap()
            .contains("invalid type: integer `42`, expected a string of Python source"),
        "{number}"
    );
    let (_, _, array) = oneshot(&router, post_execute(Some("application/json"), "[1, 2]")).await;
    assert!(
        array["error"]
            .as_str()
            .unwrap()
            .contains("expected a JSON object"),
        "{array}"
    );
}

#[tokio::test]
async fn a_wrong_content_type_is_415() {
    let router = router_only(|_| {});
    let script = "{\"script\": \"def main(): return 1\"}";
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let (status, _, body) = oneshot(&router, post_execute(content_type, script)).await;
        assert_eq!(
            (status, error_code(&body)),
            (415, "unsupported_media_type"),
            "{content_type:?}"
        );
    }
}

#[tokio::test]
async fn a_script_over_100_kib_of_utf8_is_413_before_any_sandbox() {
    let router = router_only(|_| {});
    let over = json!({"script": format!("def main():\n    return 1\n#{}", "x".repeat(102_400))});
    let (status, _, body) = oneshot(
        &router,
        post_execute(Some("application/json"), over.to_string()),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (413, "script_too_large"),
        "{body}"
    );
    assert_eq!(
        (body["script_bytes"].as_u64(), body["limit_bytes"].as_u64()),
        (Some(102_426), Some(102_400))
    );
    // Multi-byte characters count as their UTF-8 bytes: 51,201 two-byte characters are 102,402.
    let accents = json!({"script": format!("#{}", "é".repeat(51_200))});
    let (status, _, body) = oneshot(
        &router,
        post_execute(Some("application/json"), accents.to_string()),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (413, "script_too_large"),
        "{body}"
    );
}

#[tokio::test]
async fn a_body_far_over_the_limit_is_413_without_being_buffered() {
    let router = router_only(|_| {});
    // Over the 12 MiB body limit (room for 8 MiB of input files in base64).
    let body = format!("{{\"script\": \"#{}\"}}", "x".repeat(16 * 1024 * 1024));
    let (status, _, response) =
        oneshot(&router, post_execute(Some("application/json"), body)).await;
    assert_eq!(
        (status, error_code(&response)),
        (413, "body_too_large"),
        "{response}"
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let router = router_only(|_| {});
    let mine = Request::get("/")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = oneshot(&router, mine).await;
    assert_eq!(headers["x-request-id"], "abc-123");
    let (_, headers, _) =
        oneshot(&router, Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert!(!headers["x-request-id"].is_empty());
}

#[tokio::test]
async fn info_lists_the_endpoints() {
    let router = router_only(|_| {});
    let (status, _, body) = oneshot(&router, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "pyexec");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let paths: Vec<_> = body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["/execute", "/health", "/", "/metrics", "/openapi.json"]
    );
    // Every operation the contract documents, and no other.
    let (_, _, document) = oneshot(
        &router,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    let mut documented: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut listed = paths.clone();
    documented.sort_unstable();
    listed.sort_unstable();
    assert_eq!(listed, documented);
    assert_eq!(body["limits"]["script_bytes"], 102_400);
}

#[tokio::test]
async fn an_unstarted_sandbox_is_unhealthy() {
    let router = router_only(|_| {});
    let (status, headers, body) = oneshot(
        &router,
        Request::get("/health").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!((status, error_code(&body)), (503, "sandbox_unavailable"));
    assert_eq!(
        (headers["retry-after"].to_str().unwrap(), &body["status"]),
        ("5", &json!("unhealthy"))
    );
}

// Through the real server, nsjail and sandbox Python.

#[tokio::test]
async fn health_reports_the_profile_and_limits_the_sandbox_found() {
    let app = spawn_app().await;
    let (status, body) = app.get("/health").await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("healthy")),
        "{body}"
    );
    assert_eq!(body["profile"], app.profile.name(), "{body}");
    assert_eq!(
        body["isolation"],
        serde_json::to_value(&app.isolation).unwrap()
    );
    assert_eq!(
        (&body["path"], body.get("cold_reason")),
        (&json!("warm"), None),
        "{body}"
    );
    assert_eq!(
        body["failed_profiles"],
        json!([]),
        "strict works here: {body}"
    );
    // The limits backend is the cgroup version this host mounts, where the service could
    // write one, else rlimits.
    let expected = match (app.cgroup_parents.is_empty(), app.isolation.limits) {
        (true, limits) => limits == pyexec::protocol::LimitsBackend::Rlimits,
        (false, pyexec::protocol::LimitsBackend::CgroupV2) => {
            std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        }
        (false, pyexec::protocol::LimitsBackend::CgroupV1) => {
            std::path::Path::new("/sys/fs/cgroup/memory").exists()
        }
        (false, pyexec::protocol::LimitsBackend::Rlimits) => false,
    };
    assert!(expected, "{body} with cgroups in {:?}", app.cgroup_parents);
    let guarantees = body["isolation"]["guarantees"].to_string();
    if app.profile == pyexec::config::Profile::Strict {
        assert!(guarantees.contains("own pid namespace"), "{guarantees}");
    }
}

#[tokio::test]
async fn health_is_503_with_the_reason_when_nsjail_is_missing() {
    let work_root = tempfile::tempdir().unwrap();
    let mut config = common::test_config(work_root.path());
    config.sandbox.nsjail = "/nonexistent/nsjail".into();
    let state = pyexec::AppState::start(config).await.unwrap();
    assert!(state.sandbox.health().await.is_err());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(pyexec::server::serve(
        listener,
        state,
        std::future::pending(),
    ));

    let response = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(response.headers()["retry-after"], "5");
    let (status, body) = common::read(response).await;
    assert_eq!((status, error_code(&body)), (503, "sandbox_unavailable"));
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/nsjail"),
        "{body}"
    );

    let client = reqwest::Client::new();
    let response = client
        .post(format!("http://{addr}/execute"))
        .json(&json!({"script": "def main(): return 1"}));
    let (status, body) = common::read(response.send().await.unwrap()).await;
    assert_eq!(
        (status, body),
        (503, unavailable()),
        "the reason is the operator's, in /health and the log"
    );
}

/// The whole body of `POST /execute`'s 503 `sandbox_unavailable`, whatever the reason.
fn unavailable() -> serde_json::Value {
    json!({
        "error": "the sandbox is unavailable; retry shortly",
        "code": "sandbox_unavailable",
        "status": "unhealthy",
    })
}

/// A jail that fails as nsjail does when it cannot build one: an `[E]` line naming a host path.
/// `POST /execute` answers the fixed sentence alone; `GET /health` gives the operator the
/// reason, that line included.
#[tokio::test]
async fn only_health_says_why_the_sandbox_is_unavailable() {
    let work_root = tempfile::tempdir().unwrap();
    let nsjail = work_root.path().join("nsjail");
    // Written by another process, so no descriptor of it is open here when a concurrent test
    // forks (which would make running it fail with ETXTBSY).
    let written = std::process::Command::new("sh")
        .args([
            "-c",
            "printf '#!/bin/sh\\necho \"[E][2026-01-01T00:00:00+0000][1] mount(/srv/host-only/root): Permission denied\" >&2\\nexit 255\\n' > \"$1\" && chmod 755 \"$1\"",
            "sh",
        ])
        .arg(&nsjail)
        .status()
        .unwrap();
    assert!(written.success());
    let mut config = common::test_config(work_root.path());
    config.sandbox.nsjail = nsjail;
    config.sandbox.warm = false;
    let state = pyexec::AppState::start(config).await.unwrap();
    let reason = state.sandbox.health().await.unwrap_err();
    assert!(
        reason.contains("[E]") && reason.contains("/srv/host-only/root"),
        "the sandbox's own reason has the line: {reason}"
    );
    let router = pyexec::router(state);

    let script = json!({"script": "def main(): return 1"}).to_string();
    let (status, headers, body) =
        oneshot(&router, post_execute(Some("application/json"), script)).await;
    assert_eq!((status, body), (503, unavailable()));
    assert_eq!(headers["retry-after"], "5");

    let health = Request::get("/health").body(Body::empty()).unwrap();
    let (status, _, body) = oneshot(&router, health).await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({
            "error": "the sandbox is unavailable; retry shortly",
            "code": "sandbox_unavailable",
            "status": "unhealthy",
            "reason": reason,
        })
    );
}

#[tokio::test]
async fn a_script_of_exactly_100_kib_runs_and_a_charset_is_accepted() {
    let app = spawn_app().await;
    let head = "def main():\n    return 'ok'\n#";
    let exactly = format!("{head}{}", "x".repeat(102_400 - head.len()));
    assert_eq!(exactly.len(), 102_400);
    let (status, body) = app.execute(&exactly).await;
    assert_eq!((status, &body["result"]), (200, &json!("ok")), "{body}");

    let (status, body) = app
        .post_raw(
            Some("application/json; charset=utf-8"),
            "{\"script\": \"def main(): return 1\"}",
        )
        .await;
    assert_eq!((status, &body["result"]), (200, &json!(1)), "{body}");
}

// Request ids, unknown fields and nesting depth: all decided at the router, before any sandbox.

/// Whether `id` has the form of the ids the service makes itself (a UUID).
fn is_service_made(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(at, c)| match at {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

async fn request_id_answered(router: &axum::Router, sent: Option<&[u8]>) -> String {
    let mut request = Request::get("/");
    if let Some(sent) = sent {
        request = request.header("x-request-id", sent);
    }
    let (status, headers, _) = oneshot(router, request.body(Body::empty()).unwrap()).await;
    assert_eq!(status, 200);
    headers["x-request-id"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_client_s_request_id_is_echoed_only_when_it_is_a_short_plain_token() {
    let router = router_only(|_| {});
    for valid in [
        "abc-123".to_owned(),
        "4ea27a44-08ef-4002-9b20-cd53e9ac4baa".to_owned(),
        "105445aa7843bc8bf206b12000100000".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        "01ARZ3NDEKTSV4RRFFQ69G5FAV".to_owned(),
        "frontend:host-7.eu_west:000042".to_owned(),
        "a".repeat(128),
    ] {
        let answered = request_id_answered(&router, Some(valid.as_bytes())).await;
        assert_eq!(answered, valid);
    }
    let huge = format!("id with \"quotes\" and spaces {}", "x ".repeat(95_000));
    assert!(huge.len() > 190_000);
    for refused in [
        huge.as_bytes(),
        "a".repeat(129).as_bytes(),
        b"",
        b"two words",
        b"quo\"te",
        b"semi;colon",
        b"slash/ed",
        "caf\u{e9}".as_bytes(),
        b"{\"json\":1}",
    ] {
        let answered = request_id_answered(&router, Some(refused)).await;
        assert!(
            is_service_made(&answered),
            "{:?} for {:?}",
            &answered[..answered.len().min(80)],
            &refused[..refused.len().min(40)]
        );
    }
    let first = request_id_answered(&router, None).await;
    let second = request_id_answered(&router, None).await;
    assert!(is_service_made(&first) && is_service_made(&second));
    assert_ne!(first, second);
}

async fn execute_raw(router: &axum::Router, body: String) -> (u16, serde_json::Value) {
    let (status, _, answer) = oneshot(router, post_execute(Some("application/json"), body)).await;
    (status, answer)
}

#[tokio::test]
async fn a_misspelt_field_is_refused_with_the_closest_known_name() {
    let router = router_only(|_| {});
    let known = "known fields: script, input, files, return_files, limits, strict_result";
    for (body, wanted) in [
        (
            json!({"script": "def main(): return 1", "limit": {"time_ms": 5}}),
            "unknown field `limit`; did you mean `limits`?",
        ),
        (
            json!({"return_file": true, "script": "def main(): return 1"}),
            "unknown field `return_file`; did you mean `return_files`?",
        ),
        (
            json!({"script": "def main(): return 1", "Input": 1}),
            "unknown field `Input`; did you mean `input`?",
        ),
        (
            json!({"scirpt": "def main(): return 1"}),
            "unknown field `scirpt`; did you mean `script`?",
        ),
    ] {
        let (status, answer) = execute_raw(&router, body.to_string()).await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "invalid_request"),
            "{answer}"
        );
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.contains(wanted) && message.contains(known),
            "{message}"
        );
    }
    // Nothing close: no guess, still every known field.
    let (status, answer) =
        execute_raw(&router, json!({"script": "x = 1", "banana": 1}).to_string()).await;
    assert_eq!((status, error_code(&answer)), (400, "invalid_request"));
    let message = answer["error"].as_str().unwrap();
    assert!(
        message.contains("unknown field `banana`; known fields: script,")
            && !message.contains("did you mean"),
        "{message}"
    );
}

#[tokio::test]
async fn a_misspelt_nested_field_is_refused_with_the_closest_known_name() {
    let router = router_only(|_| {});
    for (body, place, wanted, known) in [
        (
            json!({"script": "x = 1", "limits": {"time": 5}}),
            "limits",
            "unknown field `time`; did you mean `time_ms`?",
            "known fields: time_ms, memory_bytes, output_bytes",
        ),
        (
            json!({"script": "x = 1", "limits": {"memory_byte": 5}}),
            "limits",
            "unknown field `memory_byte`; did you mean `memory_bytes`?",
            "known fields: time_ms, memory_bytes, output_bytes",
        ),
        (
            json!({"script": "x = 1", "files": [
                {"path": "a", "content": "b"},
                {"path": "c", "content": "ZA==", "encodng": "base64"},
            ]}),
            "files[1]",
            "unknown field `encodng`; did you mean `encoding`?",
            "known fields: path, content, encoding",
        ),
    ] {
        let (status, answer) = execute_raw(&router, body.to_string()).await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "invalid_request"),
            "{answer}"
        );
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.contains(place) && message.contains(wanted) && message.contains(known),
            "{message}"
        );
    }
}

/// `[` `depth` times, then `]` as often.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn an_unknown_field_is_refused_without_reading_its_value() {
    let router = router_only(|_| {});
    for body in [
        format!(
            "{{\"deep\": {}, \"script\": \"def main(): return 1\"}}",
            nested(200_000)
        ),
        format!(
            "{{\"script\": \"def main(): return 1\", \"deep\": {}}}",
            nested(200_000)
        ),
        // Not even valid JSON after the name: it is never read.
        format!("{{\"script\": \"x = 1\", \"deep\": {}", "[".repeat(200_000)),
    ] {
        let started = std::time::Instant::now();
        let (status, answer) = execute_raw(&router, body).await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "invalid_request"),
            "{answer}"
        );
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("unknown field `deep`"),
            "{answer}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}

#[tokio::test]
async fn the_document_refuses_unknown_fields_of_the_request() {
    let router = router_only(|_| {});
    let (_, _, document) = oneshot(
        &router,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    for name in ["ExecuteRequest", "InputFile", "RequestLimits"] {
        let schema = &document["components"]["schemas"][name];
        assert_eq!(
            schema["additionalProperties"],
            json!(false),
            "{name}: {schema}"
        );
    }
}

#[tokio::test]
async fn input_nested_over_100_deep_is_refused_before_any_sandbox() {
    let router = router_only(|_| {});
    let script = "def main(input): return 1";
    let objects = |depth: usize| format!("{}1{}", "{\"a\": ".repeat(depth), "}".repeat(depth));
    for (input, depth) in [
        (nested(101), 101),
        (objects(101), 101),
        (format!("[1, {{\"a\": [{}]}}, 2]", nested(98)), 101),
        (nested(200_000), 200_000),
    ] {
        let body = format!("{{\"script\": {script:?}, \"input\": {input}}}");
        let (status, answer) = execute_raw(&router, body).await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "invalid_input"),
            "{answer}"
        );
        assert_eq!(
            (answer["depth"].as_u64(), answer["limit_depth"].as_u64()),
            (Some(depth), Some(100)),
            "{answer}"
        );
        assert!(
            answer["error"].as_str().unwrap().contains("input"),
            "{answer}"
        );
    }
    // At the limit, and brackets inside strings (escaped quotes included), pass validation and
    // reach the (unstarted) sandbox, answered as a flat input is.
    let flat = format!("{{\"script\": {script:?}, \"input\": 1}}");
    let (status, answer) = execute_raw(&router, flat).await;
    let reached = (status, error_code(&answer).to_owned());
    assert!(status >= 500, "the sandbox was never started: {answer}");
    for input in [
        nested(100),
        objects(100),
        json!("[".repeat(1000)).to_string(),
        json!({"text": format!("\\\"{}", "[{".repeat(1000)), "n": [1, 2]}).to_string(),
        format!("[{}, \"]]]\\\\\", {}]", nested(98), json!("\"[[[[")),
        "12345678901234567890123456789012345678901234567890".to_owned(),
    ] {
        let body = format!("{{\"script\": {script:?}, \"input\": {input}}}");
        let (status, answer) = execute_raw(&router, body).await;
        assert_eq!(
            (status, error_code(&answer).to_owned()),
            reached,
            "{answer} for {}",
            &input[..input.len().min(60)]
        );
    }
}

#[tokio::test]
async fn a_deeply_nested_body_anywhere_is_a_400() {
    let router = router_only(|_| {});
    let deep = nested(200_000);
    for body in [
        deep.clone(),
        format!("{{\"script\": {deep}}}"),
        format!("{{\"script\": \"x = 1\", \"files\": {deep}}}"),
        format!("{{\"script\": \"x = 1\", \"files\": [{{\"path\": \"a\", \"content\": {deep}}}]}}"),
        format!("{{\"script\": \"x = 1\", \"limits\": {deep}}}"),
        format!("{{\"script\": \"x = 1\", \"limits\": {{\"time_ms\": {deep}}}}}"),
        format!("{{\"script\": \"x = 1\", \"return_files\": {deep}}}"),
        format!("{{\"script\": \"x = 1\", \"strict_result\": {deep}}}"),
        format!(
            "{{\"script\": \"x = 1\", \"files\": [{}]}}",
            "{\"path\": ".repeat(100_000)
        ),
    ] {
        let (status, answer) = execute_raw(&router, body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            ["invalid_request", "invalid_json"].contains(&error_code(&answer)),
            "{answer}"
        );
    }
}
