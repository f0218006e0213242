//! Streamed answers (`Accept: application/x-ndjson` or `text/event-stream`) against the real
//! service, nsjail and sandbox Python: output arrives while the script runs, in order and
//! whole; the last event is exactly the plain answer, whatever the outcome; a reader that
//! stalls blocks nothing and gets everything within the caps; a client that hangs up
//! mid-stream ends its sandbox; refusals before a sandbox is spent stay plain.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use crate::common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::events::{Events, NDJSON, SSE, result_of};
use common::markdown::without_duration;
use common::{TestApp, error_code, spawn_app_with};
use pyexec::config::ProfileChoice;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A streamed answer: its status, content type, and each event with when it arrived.
struct Streamed {
    status: u16,
    content_type: String,
    events: Vec<(Instant, Value)>,
}

impl Streamed {
    fn names(&self) -> Vec<&str> {
        self.events
            .iter()
            .map(|(_, event)| event["event"].as_str().unwrap())
            .collect()
    }

    /// The text of every event of `name`, put together.
    fn text(&self, name: &str) -> String {
        self.events
            .iter()
            .filter(|(_, event)| event["event"] == name)
            .map(|(_, event)| event["data"].as_str().unwrap())
            .collect()
    }

    /// The last event, which must be the only `result`.
    fn result(&self) -> (u16, Value) {
        let events: Vec<Value> = self.events.iter().map(|(_, e)| e.clone()).collect();
        result_of(&events)
    }
}

/// Sends `body` asking for `accept`, then waits `stall` before reading a byte of the answer.
async fn stream_after(app: &TestApp, body: &Value, accept: &str, stall: Duration) -> Streamed {
    let mut answer = Events::request(&app.client, &app.url("/execute"), body, accept).await;
    tokio::time::sleep(stall).await;
    let mut events = Vec::new();
    while let Some(event) = answer.next().await {
        events.push((Instant::now(), event));
    }
    Streamed {
        status: answer.status,
        content_type: answer.content_type,
        events,
    }
}

async fn stream(app: &TestApp, body: &Value) -> Streamed {
    stream_after(app, body, NDJSON, Duration::ZERO).await
}

async fn app(profile: ProfileChoice, warm: bool) -> TestApp {
    common::spawn_app_in(profile, warm).await
}

const PRINT_SLEEP_PRINT: &str = r#"import sys, time
def main():
    print("first")
    print("warn", file=sys.stderr)
    time.sleep(1.5)
    print("second é")
    return 42
"#;

const READY_THEN_SLEEP: &str = "import time\ndef main():\n    print('ready')\n    time.sleep(30)\n";

/// Output arrives as the script writes it, in order, and whole; a client that hangs up
/// mid-stream ends the sandbox and frees its slot. In both profiles, warm and cold.
#[tokio::test]
async fn output_arrives_while_the_script_runs_and_a_hang_up_ends_it_in_every_configuration() {
    for (profile, warm) in [
        (ProfileChoice::Strict, true),
        (ProfileChoice::Strict, false),
        (ProfileChoice::CloudRun, true),
        (ProfileChoice::CloudRun, false),
    ] {
        let app = app(profile, warm).await;
        assert_eq!(app.warm, warm);
        let plain = app.execute(PRINT_SLEEP_PRINT).await;
        let streamed = stream(&app, &json!({ "script": PRINT_SLEEP_PRINT })).await;
        let at = |wanted: &dyn Fn(&Value) -> bool| {
            streamed
                .events
                .iter()
                .find(|(_, event)| wanted(event))
                .map(|(at, _)| *at)
                .unwrap()
        };
        let first = at(&|event| event["event"] == "stdout");
        let (ended, _) = streamed.events.last().unwrap();
        assert!(
            *ended - first > Duration::from_secs(1),
            "{profile:?} warm={warm}: the first line came {:?} before the end",
            *ended - first
        );
        assert_eq!(
            (streamed.status, streamed.content_type.as_str()),
            (200, NDJSON)
        );
        let names = streamed.names();
        assert_eq!(names.first(), Some(&"started"), "{names:?}");
        assert_eq!(streamed.text("stdout"), "first\nsecond é\n");
        assert_eq!(streamed.text("stderr"), "warn\n");
        let (status, body) = streamed.result();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"], 42);
        assert_eq!(
            (status, without_duration(body)),
            (plain.0, without_duration(plain.1)),
            "{profile:?} warm={warm}"
        );

        // A client that hangs up mid-stream: its sandbox dies, its only slot is free again.
        let mut connection = raw_stream_request(&app, READY_THEN_SLEEP).await;
        read_until(&mut connection, "ready").await;
        drop(connection);
        let left = app.processes_left().await;
        assert!(left.is_empty(), "{profile:?} warm={warm}: {left:?}");
        let again = Instant::now();
        let (status, _) = app.execute("def main():\n    return 1\n").await;
        assert_eq!(status, 200);
        assert!(
            again.elapsed() < Duration::from_secs(5),
            "{profile:?} warm={warm}"
        );
    }
}

/// A streamed request on a raw connection, so the test can hang up whenever it likes.
async fn raw_stream_request(app: &TestApp, script: &str) -> TcpStream {
    let body = json!({ "script": script }).to_string();
    let mut connection = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "POST /execute HTTP/1.1\r\nHost: x\r\nAccept: {NDJSON}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    connection.write_all(request.as_bytes()).await.unwrap();
    connection
}

/// Reads the raw answer until `text` is in it (at most 10 s).
async fn read_until(connection: &mut TcpStream, text: &str) {
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0; 4096];
        while !String::from_utf8_lossy(&seen).contains(text) {
            let n = connection.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before {text:?}: {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {text:?} in {:?}", String::from_utf8_lossy(&seen)));
}

/// Whatever the script comes to, the last event carries the status and body the plain request
/// gets: the stream is a view of the same answer, never a second error path.
#[tokio::test]
async fn the_last_event_is_the_plain_answer_for_every_outcome() {
    let app = app(ProfileChoice::Auto, true).await;
    let cases = [
        (
            "success",
            json!({"script": "def main():\n    print('hi')\n    return {'a': [1, 2.5, None]}\n"}),
            200,
            "ok",
        ),
        (
            "exception",
            json!({"script": "def main():\n    print('before')\n    raise ValueError('nope')\n"}),
            400,
            "script_exception",
        ),
        (
            "time limit",
            json!({"script": "import time\ndef main():\n    print('tick', flush=True)\n    time.sleep(10)\n", "limits": {"time_ms": 1000}}),
            400,
            "time_limit_exceeded",
        ),
        (
            "memory",
            json!({"script": "def main():\n    block = bytearray(200 << 20)\n    return len(block)\n", "limits": {"memory_bytes": 64 << 20}}),
            400,
            "memory_limit_exceeded",
        ),
        (
            "output cap",
            json!({"script": "def main():\n    print('x' * 5000)\n    return 1\n", "limits": {"output_bytes": 1000}}),
            200,
            "ok",
        ),
        (
            "syntax error",
            json!({"script": "def main(:\n    return 1\n"}),
            400,
            "syntax_error",
        ),
        (
            "no main",
            json!({"script": "print('loaded')\n"}),
            400,
            "no_main",
        ),
    ];
    for (name, request, status, code) in &cases {
        let (name, status) = (*name, *status);
        let (plain_status, plain) = app.post_json(request).await;
        let streamed = stream(&app, request).await;
        assert_eq!(streamed.status, 200, "{name}");
        let (streamed_status, body) = streamed.result();
        assert_eq!(
            (plain_status, streamed_status),
            (status, status),
            "{name}: {body}"
        );
        if status != 200 {
            assert_eq!(error_code(&body), *code, "{name}");
        }
        assert_eq!(
            streamed.text("stdout"),
            body["stdout"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            streamed.text("stderr"),
            body["stderr"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(without_duration(body), without_duration(plain), "{name}");
    }
    // The output cap drops what passes it, in the stream as in the body, and says so there.
    let (_, body) = stream(&app, &cases[4].1).await.result();
    assert_eq!(body["stdout"].as_str().unwrap().len(), 1000);
    assert_eq!(body["stdout_truncated"], true);
}

/// A reader that reads nothing for seconds blocks neither the script's pipes nor the service:
/// the script runs to its end meanwhile, and the reader then gets all the output within the
/// cap (what passed the cap is dropped and flagged), in order, and the result.
#[tokio::test]
async fn a_reader_that_stalls_blocks_nothing_and_gets_everything_within_the_cap() {
    let app = app(ProfileChoice::Auto, true).await;
    // 3 MiB of a byte JSON writes as six: far more than the socket buffers hold, and three
    // times the output cap.
    let script = "import sys, time\ndef main():\n    for _ in range(48):\n        sys.stdout.write('\\x01' * 65536)\n    sys.stderr.write('done')\n    return time.time()\n";
    let stall = Duration::from_secs(4);
    let stalled_until = SystemTime::now() + stall;
    let streamed = stream_after(&app, &json!({ "script": script }), NDJSON, stall).await;
    let (status, body) = streamed.result();
    assert_eq!(status, 200, "{body}");
    let ended = UNIX_EPOCH + Duration::from_secs_f64(body["result"].as_f64().unwrap());
    assert!(
        ended < stalled_until,
        "the script ended {:?} after the reader came back",
        ended.duration_since(stalled_until).unwrap_or_default()
    );
    let stdout = streamed.text("stdout");
    assert_eq!(stdout.len(), app.config.limits.output_bytes);
    assert!(stdout.bytes().all(|byte| byte == 1));
    assert_eq!(stdout, body["stdout"].as_str().unwrap());
    assert_eq!(body["stdout_truncated"], true);
    assert_eq!(streamed.text("stderr"), "done");
}

/// `text/event-stream` carries the same events, each named by its `event:` line.
#[tokio::test]
async fn server_sent_events_carry_the_same_events() {
    let app = app(ProfileChoice::Auto, true).await;
    let request = json!({ "script": PRINT_SLEEP_PRINT });
    let streamed = stream_after(&app, &request, SSE, Duration::ZERO).await;
    assert_eq!(
        (streamed.status, streamed.content_type.as_str()),
        (200, SSE)
    );
    assert_eq!(streamed.text("stdout"), "first\nsecond é\n");
    let (status, body) = streamed.result();
    assert_eq!((status, &body["result"]), (200, &json!(42)));
}

/// A refusal before any sandbox is spent is the plain answer, asked for a stream or not.
#[tokio::test]
async fn refusals_before_a_sandbox_is_spent_stay_plain() {
    let app = spawn_app_with(|config| {
        config.sandbox.max_concurrency = 1;
        config.sandbox.max_queue = 0;
    })
    .await;
    let refused = |body: Value| {
        let request = app
            .client
            .post(app.url("/execute"))
            .header("accept", NDJSON)
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let content_type = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            let (status, body) = common::read(response).await;
            (status, content_type, error_code(&body).to_owned())
        }
    };
    assert_eq!(
        refused(json!({"script": ""})).await,
        (
            400,
            "application/json".to_owned(),
            "empty_script".to_owned()
        )
    );
    assert_eq!(
        refused(json!({"script": "def main(): pass", "limits": {"time_ms": 0}}))
            .await
            .0,
        400
    );
    // Its one slot busy and no queue: the next is refused 503 `busy`, plainly.
    let mut running = raw_stream_request(&app, READY_THEN_SLEEP).await;
    read_until(&mut running, "ready").await;
    assert_eq!(
        refused(json!({"script": "def main():\n    return 1\n"})).await,
        (503, "application/json".to_owned(), "busy".to_owned())
    );
    drop(running);
}

/// Streamed executions are counted, with their outcome among all executions.
#[tokio::test]
async fn metrics_count_streamed_executions() {
    let app = app(ProfileChoice::Auto, true).await;
    stream(&app, &json!({"script": "def main():\n    return 1\n"})).await;
    stream(
        &app,
        &json!({"script": "def main():\n    raise KeyError\n"}),
    )
    .await;
    app.execute("def main():\n    return 1\n").await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("pyexec_executions_streamed_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|line| line
            .starts_with("pyexec_executions_total{code=\"script_exception\"")
            && line.ends_with(" 1")),
        "{metrics}"
    );
}

/// `/openapi.json` documents the streamed media types and every event.
#[tokio::test]
async fn the_openapi_document_describes_the_stream() {
    let router = common::router_only(|_| {});
    let (status, _, document) = common::oneshot(
        &router,
        axum::http::Request::get("/openapi.json")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let content = &document["paths"]["/execute"]["post"]["responses"]["200"]["content"];
    for (media, schema) in [
        ("application/json", "ExecuteResponse"),
        (NDJSON, "StreamEvent"),
        (SSE, "StreamEvent"),
    ] {
        assert_eq!(
            content[media]["schema"]["$ref"],
            format!("#/components/schemas/{schema}"),
            "{content}"
        );
    }
    let events: Vec<&str> = document["components"]["schemas"]["StreamEvent"]["oneOf"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", document["components"]["schemas"]["StreamEvent"]))
        .iter()
        .map(|variant| variant["properties"]["event"]["enum"][0].as_str().unwrap())
        .collect();
    assert_eq!(events, ["started", "stdout", "stderr", "result"]);
}

/// Shutdown treats a stream as it treats a plain request: one that ends within the grace ends
/// as ever; one still running after it is stopped, and its last event is the plain answer's
/// `503 shutting_down`; then the server exits with nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_streams_within_the_grace_and_stops_the_rest() {
    let mut app = spawn_app_with(|config| {
        config.sandbox.max_concurrency = 2;
        config.server.shutdown_grace_ms = 3000;
    })
    .await;
    let shutdown = app.shutdown.take().unwrap();
    let trigger = async {
        app.wait_for_sandboxes(2).await;
        shutdown.send(()).unwrap();
    };
    let (quick, slow) = (
        json!({ "script": PRINT_SLEEP_PRINT }),
        json!({ "script": READY_THEN_SLEEP }),
    );
    let (quick, slow, ()) = tokio::join!(stream(&app, &quick), stream(&app, &slow), trigger);
    let (status, body) = quick.result();
    assert_eq!((status, &body["result"]), (200, &json!(42)), "{body}");
    assert_eq!(slow.text("stdout"), "ready\n");
    let (status, body) = slow.result();
    assert_eq!(
        (status, error_code(&body)),
        (503, "shutting_down"),
        "{body}"
    );
    tokio::time::timeout(Duration::from_secs(5), &mut app.server)
        .await
        .unwrap()
        .unwrap();
    assert!(app.processes_left().await.is_empty());
}

/// A stream is a request in flight for as long as it streams: the connection's idle timeout,
/// shorter than the script here, does not cut it.
#[tokio::test]
async fn a_stream_longer_than_the_idle_timeout_is_not_cut() {
    let app = spawn_app_with(|config| config.server.idle_timeout_ms = 500).await;
    let streamed = stream(&app, &json!({ "script": PRINT_SLEEP_PRINT })).await;
    assert_eq!(streamed.text("stdout"), "first\nsecond é\n");
    let (status, body) = streamed.result();
    assert_eq!((status, &body["result"]), (200, &json!(42)), "{body}");
}

/// Output written in a burst arrives in few events, not one a write: events gather what the
/// pipes give within a few milliseconds.
#[tokio::test]
async fn a_burst_of_writes_arrives_in_few_events() {
    let app = app(ProfileChoice::Auto, true).await;
    let script = "def main():\n    for i in range(2000):\n        print(i)\n";
    let streamed = stream(&app, &json!({ "script": script })).await;
    let (_, plain) = app.execute(script).await;
    assert_eq!(streamed.text("stdout"), plain["stdout"].as_str().unwrap());
    assert!(
        plain["stdout"].as_str().unwrap().ends_with("\n1999\n"),
        "{plain}"
    );
    let events = streamed
        .names()
        .iter()
        .filter(|name| **name == "stdout")
        .count();
    assert!(events < 100, "2,000 lines came as {events} events");
}

/// A `print` is one write (the harness gives the script line-buffered stdout and stderr, as a
/// terminal does), so no event splits a line that was printed whole, wherever the gathering
/// window happens to close: 150 lines of four parts each (text, separator, number, end) and
/// as many on stderr, with pauses near the window's length, on both paths.
#[tokio::test]
async fn no_event_splits_a_printed_line() {
    let script = "import sys, time\ndef main():\n    for i in range(1, 151):\n        print('x' * i, i)\n        print('e' * i, i, file=sys.stderr)\n        time.sleep(0.004)\n";
    for warm in [true, false] {
        let app = app(ProfileChoice::Auto, warm).await;
        let streamed = stream(&app, &json!({ "script": script })).await;
        assert_eq!(streamed.result().0, 200, "warm={warm}");
        for (_, event) in &streamed.events {
            let (name, letter) = match event["event"].as_str().unwrap() {
                "stdout" => ("stdout", 'x'),
                "stderr" => ("stderr", 'e'),
                _ => continue,
            };
            let data = event["data"].as_str().unwrap();
            assert!(
                data.ends_with('\n'),
                "warm={warm}: a {name} event ends mid-line: {data:?}"
            );
            for line in data.lines() {
                let (text, number) = line.split_once(' ').unwrap();
                assert!(
                    text.chars().all(|c| c == letter) && number.parse() == Ok(text.len()),
                    "warm={warm}: a {name} line in parts: {line:?}"
                );
            }
        }
        assert_eq!(streamed.text("stdout").lines().count(), 150, "warm={warm}");
        assert_eq!(streamed.text("stderr").lines().count(), 150, "warm={warm}");
    }
}
