//! The HTTP contract through the real server, nsjail and sandbox Python: statuses, the JSON
//! error shape and its codes, the size boundaries, `/`, `/health`.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod common;

use common::{error_code, spawn_app};
use serde_json::json;

#[tokio::test]
async fn info_lists_the_endpoints() {
    let app = spawn_app().await;
    let (status, body) = app.get("/").await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "pyexec");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let paths: Vec<_> = body["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/execute", "/health", "/", "/openapi.json"]);
    assert_eq!(body["limits"]["script_bytes"], 102_400);
}

#[tokio::test]
async fn health_is_healthy_when_the_sandbox_works() {
    let app = spawn_app().await;
    let (status, body) = app.get("/health").await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("healthy")),
        "{body}"
    );
    assert_eq!(
        body["profile"], "strict",
        "auto picks strict where the kernel allows it: {body}"
    );
    assert_eq!(body["isolation"]["profile"], "strict");
    assert_eq!(
        body["isolation"]["limits"], "cgroup_v1",
        "this host mounts cgroup v1: {body}"
    );
    let guarantees = body["isolation"]["guarantees"].to_string();
    assert!(guarantees.contains("own pid namespace"), "{guarantees}");
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
async fn malformed_bodies_are_400_with_a_json_error() {
    let app = spawn_app().await;
    let cases = [
        ("{\"script\": ", "invalid_json"),
        ("not json at all", "invalid_json"),
        ("[1, 2]", "invalid_request"),
        ("{}", "invalid_request"),
        ("{\"code\": \"def main(): pass\"}", "invalid_request"),
        ("{\"script\": 42}", "invalid_request"),
        ("{\"script\": null}", "invalid_request"),
        ("{\"script\": \"\"}", "empty_script"),
        ("{\"script\": \"  \\n\\t \"}", "empty_script"),
    ];
    for (body, code) in cases {
        let (status, response) = app.post_raw(Some("application/json"), body).await;
        assert_eq!(
            (status, error_code(&response)),
            (400, code),
            "{body}: {response}"
        );
    }
    let (_, missing) = app.post_raw(Some("application/json"), "{}").await;
    assert!(
        missing["error"].as_str().unwrap().contains("\"script\""),
        "{missing}"
    );
    let (_, number) = app
        .post_raw(Some("application/json"), "{\"script\": 42}")
        .await;
    assert!(
        number["error"].as_str().unwrap().contains("not a number"),
        "{number}"
    );
}

#[tokio::test]
async fn a_wrong_content_type_is_415() {
    let app = spawn_app().await;
    let script = "{\"script\": \"def main(): return 1\"}";
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let (status, body) = app.post_raw(content_type, script).await;
        assert_eq!(
            (status, error_code(&body)),
            (415, "unsupported_media_type"),
            "{content_type:?}"
        );
    }
    let (status, _) = app
        .post_raw(Some("application/json; charset=utf-8"), script)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_script_limit_is_exactly_100_kib_of_utf8() {
    let app = spawn_app().await;
    let head = "def main():\n    return 'ok'\n#";
    let exactly = format!("{head}{}", "x".repeat(102_400 - head.len()));
    assert_eq!(exactly.len(), 102_400);
    let (status, body) = app.execute(&exactly).await;
    assert_eq!((status, &body["result"]), (200, &json!("ok")), "{body}");

    let over = format!("{exactly}x");
    let (status, body) = app.execute(&over).await;
    assert_eq!(
        (status, error_code(&body)),
        (413, "script_too_large"),
        "{body}"
    );
    assert_eq!(
        (body["script_bytes"].as_u64(), body["limit_bytes"].as_u64()),
        (Some(102_401), Some(102_400))
    );

    // Multi-byte characters count as their UTF-8 bytes: 51,201 two-byte characters are 102,402.
    let (status, body) = app.execute(&format!("#{}", "é".repeat(51_200))).await;
    assert_eq!(
        (status, error_code(&body)),
        (413, "script_too_large"),
        "{body}"
    );
}

#[tokio::test]
async fn a_body_far_over_the_limit_is_413_without_being_buffered() {
    let app = spawn_app().await;
    let body = format!("{{\"script\": \"#{}\"}}", "x".repeat(8 * 1024 * 1024));
    let (status, response) = app.post_raw(Some("application/json"), body).await;
    assert_eq!(
        (status, error_code(&response)),
        (413, "body_too_large"),
        "{response}"
    );
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_are_json() {
    let app = spawn_app().await;
    let (status, body) = app.get("/nope").await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = app.get("/execute").await;
    assert_eq!((status, error_code(&body)), (405, "method_not_allowed"));
    let response = app.client.delete(app.url("/health")).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "GET,HEAD");
    let (status, body) = common::read(response).await;
    assert_eq!((status, error_code(&body)), (405, "method_not_allowed"));
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let response = app.client.get(app.url("/nope")).send().await.unwrap();
    assert!(!response.headers()["x-request-id"].is_empty());
}
