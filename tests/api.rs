//! The HTTP contract: statuses, the JSON error shape and its codes, the size boundaries, `/`,
//! `/health`. What never reaches a sandbox (routes, methods, content types, body parsing,
//! validation) is checked at the router with `oneshot`, booting no jail; the rest through the
//! real server, nsjail and sandbox Python.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod common;

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
        (true, limits) => limits == pyexec::sandbox::LimitsBackend::Rlimits,
        (false, pyexec::sandbox::LimitsBackend::CgroupV2) => {
            std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        }
        (false, pyexec::sandbox::LimitsBackend::CgroupV1) => {
            std::path::Path::new("/sys/fs/cgroup/memory").exists()
        }
        (false, pyexec::sandbox::LimitsBackend::Rlimits) => false,
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
        body["error"]
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
    assert_eq!((status, error_code(&body)), (503, "sandbox_unavailable"));
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
