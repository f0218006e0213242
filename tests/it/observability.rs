//! What operators see: `GET /metrics` and the JSON log lines, from the real binary with the
//! image's log format, after real executions. Loopback only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

use crate::common;

use std::time::Duration;

use common::service::Service;
use serde_json::{Value, json};

const TRACE: &str = "105445aa7843bc8bf206b12000100000";
/// Text that appears only in the script and its output, which must never be logged.
const PRIVATE: &str = "private-payload-7f3a";

/// The sum of a metric's samples whose labels include every one of `labels` (every metric
/// here counts whole things, so its samples are integers).
fn sample(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name && labels.iter().all(|label| rest.contains(label))
        })
        .map(|(_, value)| value.parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn metrics_and_json_logs_describe_each_request_without_its_content() {
    let service = Service::start("", &[("GOOGLE_CLOUD_PROJECT", "test-project")]);
    let client = reqwest::Client::new();
    let ok = format!("def main():\n    print('{PRIVATE}')\n    return '{PRIVATE}'\n");
    let answer = client
        .post(service.url())
        .header("X-Cloud-Trace-Context", format!("{TRACE}/1;o=1"))
        .header("User-Agent", "observability-test/1")
        .json(&json!({ "script": ok }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let broken = client
        .post(service.url())
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({ "script": format!("def main(:\n    '{PRIVATE}'\n") }))
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), 400);

    let base = format!("http://{}", service.addr);
    // A slot counts as running until its sweep, which follows the answer: scrape once both
    // sweeps are done.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let scraped = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(scraped.status(), 200);
        assert_eq!(
            scraped.headers()["content-type"],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let text = scraped.text().await.unwrap();
        if sample(&text, "pyexec_executions_running", &[]) == 0
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    check_metrics(&metrics);
    check_log(&service).await;
}

/// One success and one syntax error, in the strict profile on the warm path.
fn check_metrics(metrics: &str) {
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    // Counts and durations only: no client's address (the test's is loopback).
    assert!(!metrics.contains("127.0.0.1"), "{metrics}");
    let profile = "profile=\"strict\"";
    for (code, count) in [("ok", 1), ("syntax_error", 1)] {
        let label = format!("code=\"{code}\"");
        assert_eq!(
            sample(metrics, "pyexec_executions_total", &[&label, profile]),
            count,
            "{metrics}"
        );
    }
    assert_eq!(sample(metrics, "pyexec_queue_wait_seconds_count", &[]), 2);
    assert_eq!(
        sample(
            metrics,
            "pyexec_sandbox_run_seconds_count",
            &["path=\"warm\""]
        ),
        2,
        "{metrics}"
    );
    assert_eq!(
        sample(
            metrics,
            "pyexec_request_duration_seconds_count",
            &["route=\"/execute\"", "status=\"400\""]
        ),
        1
    );
    assert_eq!(sample(metrics, "pyexec_executions_running", &[]), 0);
    assert_eq!(sample(metrics, "pyexec_executions_queued", &[]), 0);
    assert_eq!(sample(metrics, "pyexec_warm_pool_size", &[]), 1);
    assert_eq!(sample(metrics, "pyexec_warm_misses_total", &[]), 0);
    assert_eq!(
        sample(metrics, "pyexec_sandbox_start_failures_total", &[]),
        0
    );
    assert_eq!(
        sample(
            metrics,
            "pyexec_build_info",
            &["version=", "profile_setting=\"auto\"", "warm=\"true\""]
        ),
        1,
        "{metrics}"
    );
}

/// The access log line of each execution, in Cloud Logging's shape.
async fn check_log(service: &Service) {
    let requests = || -> Vec<Value> {
        service
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|event| event["httpRequest"]["requestUrl"] == "/execute")
            .cloned()
            .collect()
    };
    assert!(common::wait_until(|| requests().len() == 2).await);
    let lines = requests();
    let ok_line = &lines[0];
    assert_eq!(ok_line["severity"], "INFO", "{ok_line}");
    assert_eq!(ok_line["message"], "request");
    assert_eq!(ok_line["code"], "ok");
    assert_eq!(ok_line["path"], "warm");
    assert!(ok_line["sandbox_ms"].is_u64(), "{ok_line}");
    assert!(!ok_line["request_id"].as_str().unwrap().is_empty());
    assert_eq!(
        ok_line["logging.googleapis.com/trace"],
        format!("projects/test-project/traces/{TRACE}")
    );
    let http = &ok_line["httpRequest"];
    assert_eq!(http["requestMethod"], "POST");
    assert_eq!(http["status"], 200);
    assert_eq!(http["userAgent"], "observability-test/1");
    assert!(http["requestSize"].as_u64().unwrap() > 0);
    assert!(http["responseSize"].as_u64().unwrap() > 0);
    let latency = http["latency"].as_str().unwrap();
    let seconds: f64 = latency.strip_suffix('s').unwrap().parse().unwrap();
    assert!(seconds > 0.0 && seconds < 30.0, "{latency}");
    assert!(ok_line["timestamp"]["seconds"].is_u64());

    let broken_line = &lines[1];
    assert_eq!(broken_line["code"], "syntax_error");
    assert_eq!(broken_line["httpRequest"]["status"], 400);
    assert_eq!(
        broken_line["logging.googleapis.com/trace"],
        "projects/test-project/traces/4bf92f3577b34da6a3ce929d0e0e4736"
    );

    // Every event has a severity, and none holds a script or its output.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = service.events.lock().unwrap();
    assert!(events.len() > 3);
    for event in events.iter() {
        assert!(event["severity"].is_string(), "{event}");
        assert!(!event.to_string().contains(PRIVATE), "{event}");
    }
}

/// Whether `id` has the form of the ids the service makes itself (a UUID).
fn is_service_made(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(at, c)| match at {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[tokio::test]
async fn request_ids_are_the_service_s_and_no_client_makes_a_long_log_line() {
    let service = Service::start("", &[]);
    let client = reqwest::Client::new();
    let base = format!("http://{}", service.addr);
    let get = |id: &str, user_agent: &str| {
        // From bytes: a user agent may hold non-ASCII bytes (here UTF-8).
        let user_agent = reqwest::header::HeaderValue::from_bytes(user_agent.as_bytes()).unwrap();
        client
            .get(format!("{base}/"))
            .header("x-request-id", id)
            .header("user-agent", user_agent)
            .send()
    };
    // Under hyper's 400 KB limit for a request's head, together.
    let huge_id = format!("\"quoted\" id {}", "with spaces ".repeat(15_900));
    let huge_agent = format!("agent/{}", "é".repeat(95_000));
    assert!(huge_id.len() > 190_000 && huge_agent.len() > 190_000);
    let refused = get(&huge_id, &huge_agent).await.unwrap();
    assert_eq!(refused.status(), 200);
    let fresh = refused.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(is_service_made(&fresh), "{}", &fresh[..fresh.len().min(80)]);

    let valid = "obs-test:42.a_B";
    for _ in 0..2 {
        let echoed = get(valid, "observability-test/1").await.unwrap();
        assert_eq!(echoed.headers()["x-request-id"], valid);
    }

    let lines = || -> Vec<Value> {
        service
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|event| {
                event["message"] == "request" && event["httpRequest"]["requestUrl"] == "/"
            })
            .cloned()
            .collect()
    };
    assert!(common::wait_until(|| lines().len() == 3).await);
    let lines = lines();
    // The thread reading the log keeps only lines that parse: each of these was valid JSON, as
    // serde_json writes it again here.
    let line = &lines[0];
    assert_eq!(line["request_id"], fresh.as_str(), "{line}");
    assert!(line.get("client_request_id").is_none(), "{line}");
    let written = line.to_string();
    assert!(written.len() < 16 * 1024, "{} bytes", written.len());
    let agent = line["httpRequest"]["userAgent"].as_str().unwrap();
    assert!(
        agent.starts_with("agent/éé")
            && agent.ends_with(&format!("…[cut from {} bytes]", huge_agent.len())),
        "{agent}"
    );
    assert!(agent.len() <= 512 + 32, "{agent}");

    let mut service_ids = Vec::new();
    for line in &lines[1..] {
        assert_eq!(line["client_request_id"], valid, "{line}");
        let id = line["request_id"].as_str().unwrap();
        assert!(is_service_made(id), "{line}");
        service_ids.push(id.to_owned());
        assert_eq!(line["httpRequest"]["userAgent"], "observability-test/1");
    }
    // The same id from a client twice: two requests, two ids of the service's.
    assert_ne!(service_ids[0], service_ids[1]);
    for event in service.events.lock().unwrap().iter() {
        assert!(event.to_string().len() < 16 * 1024, "{}", event["message"]);
    }
}
