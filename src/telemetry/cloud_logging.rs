//! JSON log lines in the shape Cloud Logging reads from a container's output
//! (<https://cloud.google.com/logging/docs/structured-logging>): `severity`, `message`,
//! `timestamp`, `httpRequest` and `logging.googleapis.com/trace` are lifted into the log entry
//! itself; every other field lands in its `jsonPayload`, flat, next to the fields of the spans
//! the event happened in (the request id, method and route). Any collector that reads one JSON
//! object per line reads these as well.
//!
//! Events name the special fields the way `tracing` allows (`http_request.request_method`,
//! `trace`); this formatter renames them, so call sites never spell Google's keys.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The prefix of the fields that make up Cloud Logging's `httpRequest`.
const HTTP_REQUEST: &str = "http_request.";

/// Formats each event as one Cloud Logging JSON object. Span fields must be formatted with
/// [`JsonFields`] (the subscriber's `fmt_fields`), which this reads back.
#[derive(Debug, Default, Clone, Copy)]
pub struct CloudLogging;

impl<S> FormatEvent<S, JsonFields> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut entry = Map::new();
        // Outermost span first, so an inner span's field wins over an outer one's.
        if let Some(scope) = context.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str(fields) {
                    entry.extend(fields);
                }
            }
        }
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        entry.extend(visitor.fields);
        if !visitor.http_request.is_empty() {
            entry.insert(
                "httpRequest".to_owned(),
                Value::Object(visitor.http_request),
            );
        }
        if let Some(trace) = entry.remove("trace") {
            entry.insert("logging.googleapis.com/trace".to_owned(), trace);
        }
        let metadata = event.metadata();
        entry.insert("severity".to_owned(), severity(*metadata.level()).into());
        entry.insert("target".to_owned(), metadata.target().into());
        entry.insert("timestamp".to_owned(), timestamp(SystemTime::now()));
        let line = serde_json::to_string(&entry).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// Cloud Logging's `LogSeverity` names.
fn severity(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// `{"seconds": .., "nanos": ..}`, the form Cloud Logging takes without parsing a date.
fn timestamp(now: SystemTime) -> Value {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    serde_json::json!({ "seconds": since.as_secs(), "nanos": since.subsec_nanos() })
}

/// `request_method` → `requestMethod`.
fn camel_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// An event's fields as JSON, the `http_request.*` ones apart.
#[derive(Default)]
struct Fields {
    fields: Map<String, Value>,
    http_request: Map<String, Value>,
}

impl Fields {
    fn insert(&mut self, field: &Field, value: Value) {
        let name = field.name();
        match name.strip_prefix(HTTP_REQUEST) {
            Some(key) => self.http_request.insert(camel_case(key), value),
            None => self.fields.insert(name.to_owned(), value),
        };
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field, super::ErrorChain(value).to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    fn lines_of(emit: impl FnOnce()) -> Vec<Value> {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(CloudLogging)
            .with_writer(buffer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn a_request_line_is_a_cloud_logging_entry() {
        let lines = lines_of(|| {
            let span = tracing::info_span!("http", method = "POST", request_id = "abc");
            let _entered = span.enter();
            tracing::info!(
                http_request.request_method = "POST",
                http_request.status = 400_u64,
                http_request.latency = "0.012000s",
                http_request.user_agent = "curl/8",
                trace = "projects/p/traces/0123",
                code = "syntax_error",
                "request"
            );
        });
        let [line] = lines.as_slice() else {
            panic!("one line: {lines:?}")
        };
        assert_eq!(line["severity"], "INFO");
        assert_eq!(line["message"], "request");
        assert_eq!(line["request_id"], "abc");
        assert_eq!(line["code"], "syntax_error");
        assert_eq!(
            line["httpRequest"],
            serde_json::json!({
                "requestMethod": "POST",
                "status": 400,
                "latency": "0.012000s",
                "userAgent": "curl/8",
            })
        );
        assert_eq!(
            line["logging.googleapis.com/trace"],
            "projects/p/traces/0123"
        );
        assert!(line.get("trace").is_none(), "{line}");
        assert!(line["timestamp"]["seconds"].as_u64().unwrap() > 1_700_000_000);
        assert!(line["timestamp"]["nanos"].as_u64().unwrap() < 1_000_000_000);
    }

    #[test]
    fn severities_are_cloud_logging_s_and_errors_keep_their_causes() {
        let lines = lines_of(|| {
            let error = io::Error::other("disk full");
            tracing::warn!(
                error = &error as &(dyn std::error::Error + 'static),
                "careful"
            );
            tracing::error!("broken");
        });
        assert_eq!(lines[0]["severity"], "WARNING");
        assert_eq!(lines[0]["error"], "disk full");
        assert!(lines[0].get("httpRequest").is_none());
        assert_eq!(lines[1]["severity"], "ERROR");
        assert_eq!(camel_case("response_size"), "responseSize");
    }
}
