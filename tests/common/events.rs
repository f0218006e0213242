//! A streamed answer of `POST /execute` (`Accept: application/x-ndjson` or
//! `text/event-stream`), read one event at a time as it arrives. The stream suite checks the
//! events themselves; the escape suite and the image test use it to start a neighbour and wait
//! until the neighbour *says* it is in place (a `ready` line), instead of guessing a time.

use serde_json::{Value, json};

pub const NDJSON: &str = "application/x-ndjson";
pub const SSE: &str = "text/event-stream";

/// What a neighbour prints once it is in place (its files written, its processes started).
pub const READY: &str = "ready\n";

pub struct Events {
    response: reqwest::Response,
    sse: bool,
    buffer: Vec<u8>,
    pub status: u16,
    pub content_type: String,
}

impl Events {
    /// Sends `body` asking for `accept` and reads the head of the answer, not its body.
    pub async fn request(client: &reqwest::Client, url: &str, body: &Value, accept: &str) -> Self {
        let response = client
            .post(url)
            .header("accept", accept)
            .json(body)
            .send()
            .await
            .unwrap();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Self {
            status: response.status().as_u16(),
            response,
            sse: accept == SSE,
            buffer: Vec::new(),
            content_type,
        }
    }

    /// Streams `{"script": script}` as NDJSON.
    pub async fn script(client: &reqwest::Client, url: &str, script: &str) -> Self {
        Self::request(client, url, &json!({ "script": script }), NDJSON).await
    }

    /// The next event, or `None` once the answer has ended (a partial event at the end fails
    /// the test).
    pub async fn next(&mut self) -> Option<Value> {
        let separator: &[u8] = if self.sse { b"\n\n" } else { b"\n" };
        loop {
            if let Some(end) = self
                .buffer
                .windows(separator.len())
                .position(|window| window == separator)
            {
                let record: Vec<u8> = self.buffer.drain(..end + separator.len()).collect();
                let record = std::str::from_utf8(&record[..end]).unwrap();
                return Some(parse_event(record, self.sse));
            }
            let Some(chunk) = self.response.chunk().await.unwrap() else {
                assert!(
                    self.buffer.is_empty(),
                    "a partial event at the end: {:?}",
                    self.buffer
                );
                return None;
            };
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// Reads until the script's stdout so far holds `text`: the events read, or, when the
    /// answer ended first, all of them as the error.
    pub async fn until_stdout(&mut self, text: &str) -> Result<Vec<Value>, Vec<Value>> {
        let mut seen = Vec::new();
        let mut stdout = String::new();
        while let Some(event) = self.next().await {
            if event["event"] == "stdout" {
                stdout.push_str(event["data"].as_str().unwrap());
            }
            seen.push(event);
            if stdout.contains(text) {
                return Ok(seen);
            }
        }
        Err(seen)
    }

    /// Every event left, to the end of the answer.
    pub async fn rest(mut self) -> Vec<Value> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

/// One NDJSON line, or one SSE event whose `event:` line must name its data's `event`.
fn parse_event(record: &str, sse: bool) -> Value {
    if !sse {
        return serde_json::from_str(record).unwrap();
    }
    let mut lines = record.lines();
    let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
    let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
    assert!(lines.next().is_none(), "{record:?}");
    let event: Value = serde_json::from_str(data).unwrap();
    assert_eq!(event["event"], name, "{record:?}");
    event
}

/// The status and body of the stream's last event, which must be its only `result`.
pub fn result_of(events: &[Value]) -> (u16, Value) {
    let names: Vec<&Value> = events.iter().map(|event| &event["event"]).collect();
    let results = events.iter().filter(|e| e["event"] == "result").count();
    let last = events.last().unwrap_or_else(|| panic!("no event"));
    assert!(
        results == 1 && last["event"] == "result",
        "not one result, last: {names:?}"
    );
    (
        u16::try_from(last["status"].as_u64().unwrap()).unwrap(),
        last["body"].clone(),
    )
}
