//! The contract as a spec: schemathesis (pinned in config/tools-requirements.txt) fuzzes the
//! real service against its own `GET /openapi.json`, with a fixed seed and example count:
//! no 5xx, and every status, content type, header and body conforms to the document.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod common;

use std::process::Command;

const SCHEMATHESIS: &str = "/opt/pyexec/tools/bin/schemathesis";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_conforms_to_its_openapi_document_under_fuzzing() {
    let app = common::spawn_app().await;
    let (status, document) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    let paths: Vec<&String> = document["paths"].as_object().unwrap().keys().collect();
    assert_eq!(
        paths,
        ["/", "/execute", "/health", "/metrics", "/openapi.json"]
    );

    let url = app.url("/openapi.json");
    let scratch = tempfile::tempdir().unwrap();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(SCHEMATHESIS)
            .args([
                "run",
                &url,
                "--seed",
                "20261126",
                "--max-examples",
                "60",
                "--workers",
                "2",
            ])
            .args([
                "--generation-database",
                "none",
                "--no-color",
                "--request-timeout",
                "40",
            ])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance,unsupported_method",
            ])
            .current_dir(scratch.path())
            .output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|error| {
        panic!("cannot run {SCHEMATHESIS} ({error}): run `make test`, which installs it")
    });
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = report
        .lines()
        .find(|line| line.contains(" generated, "))
        .unwrap_or_default();
    assert!(generated.contains("passed"), "{report}");
    eprintln!("schemathesis: {}", generated.trim());
}
