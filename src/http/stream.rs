//! `POST /execute` answered as a stream of events ([`StreamEvent`]): `200` at once, the
//! script's stdout and stderr as it writes them, and last the answer the plain request would
//! have had, status and exact body. Everything before the stream (the body, validation,
//! admission, the wait for a slot) is the plain request's, refusals included.
//!
//! The execution runs in a task of its own, so a reader that stalls never stalls the pipe
//! readers: what they pass on is bounded by the output caps (`sandbox/live.rs`), and the
//! stream holds at most that (the choice between pausing the sandbox, buffering and dropping:
//! buffering, since the caps already bound it and a paused script would burn its time limit). The task belongs to the response body: a client that hangs up
//! drops the body, which aborts the task, which kills the sandbox, as a plain request's
//! dropped future does.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::log::{Answered, Deferred, Seen};
use crate::app::AppState;
use crate::job::Job;
use crate::protocol::StreamEvent;
use crate::sandbox::{Acquired, Event, Events, Live, Stream};

/// How long output is gathered into one event after its first bytes arrive.
const COALESCE: Duration = Duration::from_millis(5);
/// An event is sent at once when this much text has gathered.
const MAX_EVENT_TEXT: usize = 64 * 1024;

/// The streamed media types a client can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/x-ndjson`: one JSON object a line.
    Ndjson,
    /// `text/event-stream`: server-sent events, for a browser's `EventSource` and the like.
    EventStream,
}

impl Format {
    /// The stream the `Accept` header asks for, if any: the first streamed type it lists
    /// without `q=0`. Anything else is a plain request.
    pub fn accepted(headers: &HeaderMap) -> Option<Self> {
        headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .find_map(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next()?;
                let refused = parts.any(|param| {
                    param
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                let format = if media.eq_ignore_ascii_case("application/x-ndjson") {
                    Self::Ndjson
                } else if media.eq_ignore_ascii_case("text/event-stream") {
                    Self::EventStream
                } else {
                    return None;
                };
                (!refused).then_some(format)
            })
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Ndjson => "application/x-ndjson",
            Self::EventStream => "text/event-stream",
        }
    }

    /// One event on the wire. JSON from serde has no raw line breaks, so each event is one
    /// line of NDJSON or one `data:` line of an SSE event.
    fn write(self, event: &StreamEvent, into: &mut Vec<u8>) {
        let name = match event {
            StreamEvent::Started => "started",
            StreamEvent::Stdout { .. } => "stdout",
            StreamEvent::Stderr { .. } => "stderr",
            StreamEvent::Result { .. } => "result",
        };
        if self == Self::EventStream {
            into.extend_from_slice(b"event: ");
            into.extend_from_slice(name.as_bytes());
            into.extend_from_slice(b"\ndata: ");
        }
        // Serializing a value of ours into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *into, event);
        into.extend_from_slice(if self == Self::EventStream {
            b"\n\n"
        } else {
            b"\n"
        });
    }
}

/// Starts the acquired execution and answers with its stream.
pub fn respond(
    format: Format,
    state: AppState,
    acquired: Acquired,
    job: Job,
    seen: Option<Seen>,
) -> Response {
    let (live, events) = Live::channel();
    let execution = {
        let state = state.clone();
        tokio::spawn(
            async move {
                let executed = state.sandbox.run(acquired, &job, Some(&live)).await;
                super::execute::answer(&job, executed)
            }
            .instrument(tracing::Span::current()),
        )
    };
    let streaming = Streaming {
        format,
        events,
        execution: Some(AbortOnDropHandle::new(execution)),
        stdout: Utf8Carry::default(),
        stderr: Utf8Carry::default(),
        sent: 0,
        finish: Some((state, seen)),
    };
    let body = Body::from_stream(futures_util::stream::unfold(streaming, Streaming::next));
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        // Proxies that buffer responses (nginx) pass this one on as it comes.
        (
            header::HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ),
    ];
    (headers, axum::Extension(Deferred), body).into_response()
}

/// A stream being answered: the execution's events still to come, and the task that owns the
/// execution (aborted with the stream).
struct Streaming {
    format: Format,
    events: Events,
    execution: Option<AbortOnDropHandle<Response>>,
    stdout: Utf8Carry,
    stderr: Utf8Carry,
    /// Bytes sent so far, for the access log.
    sent: u64,
    /// What records the request once its last event is sent.
    finish: Option<(AppState, Option<Seen>)>,
}

/// Events gathered for one write: text merged while it stays on one stream.
#[derive(Debug, Default)]
struct Batch {
    events: Vec<StreamEvent>,
    text: usize,
}

impl Batch {
    fn started(&mut self) {
        self.events.push(StreamEvent::Started);
    }

    fn text(&mut self, stream: Stream, text: String) {
        if text.is_empty() {
            return;
        }
        self.text += text.len();
        match (self.events.last_mut(), stream) {
            (Some(StreamEvent::Stdout { data }), Stream::Stdout)
            | (Some(StreamEvent::Stderr { data }), Stream::Stderr) => data.push_str(&text),
            (_, Stream::Stdout) => self.events.push(StreamEvent::Stdout { data: text }),
            (_, Stream::Stderr) => self.events.push(StreamEvent::Stderr { data: text }),
        }
    }
}

impl Streaming {
    /// The next write of the stream: a few milliseconds of output, or at the end what was
    /// held back and the result; `None` once the result is sent.
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        loop {
            let mut batch = Batch::default();
            if let Some(event) = self.events.recv().await {
                self.take(event, &mut batch);
                let window = tokio::time::sleep(COALESCE);
                let mut window = std::pin::pin!(window);
                while batch.text < MAX_EVENT_TEXT {
                    tokio::select! {
                        event = self.events.recv() => match event {
                            Some(event) => self.take(event, &mut batch),
                            None => break,
                        },
                        () = &mut window => break,
                    }
                }
            } else {
                // Every event is in: the execution has given its answer.
                let execution = self.execution.take()?;
                let response = match execution.await {
                    Ok(response) => response,
                    Err(error) => {
                        tracing::error!(%error, "a streamed execution's task failed");
                        super::ApiError::Internal.into_response()
                    }
                };
                batch.text(Stream::Stdout, self.stdout.finish());
                batch.text(Stream::Stderr, self.stderr.finish());
                let (result, answered) = result_event(response).await;
                batch.events.push(result);
                let bytes = self.render(&batch);
                if let Some((state, Some(seen))) = self.finish.take() {
                    seen.record(
                        &state,
                        Answered {
                            status: 200,
                            response_size: Some(self.sent),
                            ..answered
                        },
                    );
                }
                return Some((Ok(bytes), self));
            }
            let bytes = self.render(&batch);
            if !bytes.is_empty() {
                return Some((Ok(bytes), self));
            }
        }
    }

    fn take(&mut self, event: Event, batch: &mut Batch) {
        match event {
            Event::Started => batch.started(),
            Event::Output { stream, bytes } => {
                let carry = match stream {
                    Stream::Stdout => &mut self.stdout,
                    Stream::Stderr => &mut self.stderr,
                };
                batch.text(stream, carry.push(&bytes));
            }
        }
    }

    fn render(&mut self, batch: &Batch) -> Bytes {
        let mut bytes = Vec::with_capacity(batch.text + 64 * batch.events.len());
        for event in &batch.events {
            self.format.write(event, &mut bytes);
        }
        self.sent += bytes.len() as u64;
        Bytes::from(bytes)
    }
}

/// The last event, carrying the plain answer's status and body, and what the access log
/// records of it.
async fn result_event(response: Response) -> (StreamEvent, Answered) {
    let status = response.status().as_u16();
    let answered = Answered {
        streamed: Some(status),
        ..Answered::from_response(&response)
    };
    // The answer is JSON of ours, whole in memory: neither step fails but by a bug.
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await;
    let body = bytes
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let body = body.unwrap_or_else(|| {
        tracing::error!(status, "a streamed execution's answer was not JSON");
        RawValue::NULL.to_owned()
    });
    (StreamEvent::Result { status, body }, answered)
}

/// Decodes a stream's bytes as they come, holding back a character cut at the end of a read,
/// so the text of every event put together is the lossy decoding of all the bytes, as the
/// plain answer's is.
#[derive(Debug, Default)]
struct Utf8Carry {
    held: Vec<u8>,
}

impl Utf8Carry {
    /// The text of what was held and `bytes`, up to an incomplete character at the end.
    fn push(&mut self, bytes: &[u8]) -> String {
        self.held.extend_from_slice(bytes);
        let cut = incomplete_tail(&self.held);
        let whole = self.held.len() - cut;
        let text = String::from_utf8_lossy(&self.held[..whole]).into_owned();
        self.held.drain(..whole);
        text
    }

    /// What is still held, decoded as it is: the stream has ended.
    fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.held).into_owned();
        self.held.clear();
        text
    }
}

/// How many bytes at the end of `bytes` begin a character that more bytes could complete.
fn incomplete_tail(bytes: &[u8]) -> usize {
    let Some(last) = bytes.utf8_chunks().last() else {
        return 0;
    };
    let invalid = last.invalid();
    match std::str::from_utf8(invalid) {
        // No error length: the sequence is cut short, not wrong.
        Err(error) if error.error_len().is_none() => invalid.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_in_pieces_equals_decoding_the_whole() {
        let samples: [&[u8]; 5] = [
            "héllo, wörld ✓ 𝄞 end".as_bytes(),
            b"\xe2\x82\xac\xe2\x82A\xff\xf0\x9f\x98",
            b"\xf0\x9f\x98\x80\xf0\x9f\x98",
            b"\xc3",
            b"ok\xed\xa0\x80\xc0\xaf",
        ];
        for sample in samples {
            let whole = String::from_utf8_lossy(sample);
            for size in 1..=sample.len() {
                let mut carry = Utf8Carry::default();
                let mut text: String = sample.chunks(size).map(|part| carry.push(part)).collect();
                text.push_str(&carry.finish());
                assert_eq!(text, whole, "{sample:?} in pieces of {size}");
            }
        }
    }

    #[test]
    fn a_character_cut_by_a_read_is_held_for_the_next() {
        let mut carry = Utf8Carry::default();
        assert_eq!(carry.push(b"a\xe2\x82"), "a");
        assert_eq!(carry.push(b"\xac b"), "€ b");
        assert_eq!(carry.finish(), "");
    }

    fn accept(value: &'static str) -> Option<Format> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(value));
        Format::accepted(&headers)
    }

    #[test]
    fn the_accept_header_chooses_the_stream() {
        assert_eq!(accept("application/x-ndjson"), Some(Format::Ndjson));
        assert_eq!(
            accept("text/html, Text/Event-Stream;q=0.9"),
            Some(Format::EventStream)
        );
        assert_eq!(accept("application/json, */*"), None);
        assert_eq!(accept("application/x-ndjson;q=0"), None);
        assert_eq!(Format::accepted(&HeaderMap::new()), None);
    }

    #[test]
    fn events_are_one_line_of_ndjson_or_one_sse_event() {
        let event = StreamEvent::Stdout {
            data: "a\nb".to_owned(),
        };
        let mut ndjson = Vec::new();
        Format::Ndjson.write(&event, &mut ndjson);
        assert_eq!(ndjson, b"{\"event\":\"stdout\",\"data\":\"a\\nb\"}\n");
        let mut sse = Vec::new();
        Format::EventStream.write(&event, &mut sse);
        assert_eq!(
            sse,
            b"event: stdout\ndata: {\"event\":\"stdout\",\"data\":\"a\\nb\"}\n\n"
        );
    }
}
