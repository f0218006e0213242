//! Serving connections: the accept loop and what axum's `serve` does not offer. Every
//! connection costs a descriptor and some memory, so none is kept for nothing: a cap on open
//! connections below the open-files limit (beyond it a new connection gets a canned 503 and is
//! closed, before any parsing), a deadline for a new connection's first request (which covers
//! protocol detection and a preface sent a byte at a time), an idle timeout between requests
//! (keep-alive HTTP/1.1 and HTTP/2 alike, counted in requests, not bytes, so trickled pings
//! keep nothing open), HTTP/1 header and HTTP/2 keep-alive timeouts. Then graceful shutdown:
//! stop accepting, give in-flight and queued executions a grace period, then stop them, so
//! every request is answered and the process exits before Cloud Run's SIGKILL.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

use crate::app::AppState;
use crate::http::router;
use crate::protocol::{ErrorBody, ErrorDetails, ServiceError};

/// How long stopped executions get to send their 503 once the grace period is over.
const ANSWER_AFTER_CANCEL: Duration = Duration::from_secs(3);
/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Descriptors kept for everything but connections: executions' pipes and files, logs.
const RESERVED_FDS: usize = 256;
/// HTTP/2 streams per connection: requests beyond the sandbox's queue are refused anyway.
const MAX_STREAMS: u32 = 32;
/// HTTP/2 pings find peers that vanished without a word.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Serves `state`'s API on `listener` until `shutdown` completes, then drains.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()>) {
    let app = router(state.clone());
    let server = &state.config.server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE);
    let max_connections = connection_cap(server.max_connections);
    let connections = Arc::new(Semaphore::new(max_connections));
    let full = busy_answer();
    let timeouts = Timeouts {
        first_request: server.header_read_timeout(),
        idle: server.idle_timeout(),
    };
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Answers go out as they are written: a streamed event is small, and
                    // Nagle would hold it until the client acknowledged the one before.
                    let _ = stream.set_nodelay(true);
                    stream
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            // What the canned body leaves out, as `http/error.rs` logs a refused request's.
            tracing::warn!(
                code = "busy",
                error = "too many open connections",
                "connection refused"
            );
            refuse(&stream, &full);
            continue;
        };
        let activity = Arc::new(Activity::new());
        let service = {
            let (app, activity) = (app.clone(), Arc::clone(&activity));
            hyper::service::service_fn(move |request| {
                let (app, busy) = (app.clone(), activity.begin());
                async move {
                    let response = tower::ServiceExt::oneshot(app, request).await;
                    response.map(|response| response.map(|body| Holding { body, _busy: busy }))
                }
            })
        };
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            tokio::select! {
                // Errors here are a client's (reset, timed out headers); requests were logged.
                _ = connection => {}
                () = activity.expired(timeouts) => {}
            }
            drop(permit);
        });
    }
    drop(listener);
    drain(graceful, &state).await;
}

/// How long a connection may go without a request in flight.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// From the connection's start to its first request.
    first_request: Duration,
    /// From the end of one request to the start of the next.
    idle: Duration,
}

/// A connection's requests: how many are in flight, and since when none is.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// When the connection last had no request in flight, and whether it ever had one.
    quiet: Mutex<(Instant, bool)>,
    /// Wakes the watch when a request begins or ends: the deadline moves.
    changed: Notify,
}

/// A request in flight; its drop records the end.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            quiet: Mutex::new((Instant::now(), false)),
            changed: Notify::new(),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.quiet.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        self.changed.notify_one();
        Busy(Arc::clone(self))
    }

    /// Completes once the connection has been without a request for its timeout.
    async fn expired(&self, timeouts: Timeouts) {
        loop {
            let (since, served) = *self.quiet.lock().unwrap_or_else(PoisonError::into_inner);
            let limit = if served {
                timeouts.idle
            } else {
                timeouts.first_request
            };
            let deadline = since + limit;
            if self.in_flight.load(Ordering::SeqCst) == 0 && Instant::now() >= deadline {
                return;
            }
            // Busy or not yet due: look again when it could be due at the earliest, or when a
            // request begins or ends.
            let next = if Instant::now() < deadline {
                deadline
            } else {
                Instant::now() + limit
            };
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                () = self.changed.notified() => {}
            }
        }
    }
}

/// A response body that keeps its request in flight until it is sent or dropped: a streamed
/// answer is in flight for as long as it streams, so the idle timeout never cuts it.
struct Holding {
    body: axum::body::Body,
    _busy: Busy,
}

impl http_body::Body for Holding {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0
                .quiet
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .0 = Instant::now();
        }
    }
}

/// The configured cap, lowered to what the open-files limit allows (raised to its hard
/// limit first, as a server should).
fn connection_cap(configured: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
        limit = getrlimit(Resource::Nofile);
    }
    let allowed = limit
        .current
        .and_then(|files| usize::try_from(files).ok())
        .map_or(usize::MAX, |files| {
            files.saturating_sub(RESERVED_FDS).max(1)
        });
    if configured > allowed {
        tracing::warn!(
            configured,
            allowed,
            "server.max_connections is above what the open-files limit allows; using the lower"
        );
    }
    configured.min(allowed)
}

/// The whole HTTP/1.1 answer to a connection over the cap: 503 `busy`, then close.
fn busy_answer() -> Vec<u8> {
    let busy = ServiceError::Busy;
    let body = ErrorBody {
        error: busy.fixed_message().unwrap_or_default().to_owned(),
        details: ErrorDetails::Service(busy),
    };
    let body = serde_json::to_string(&body).unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers and closes without reading: a new socket's send buffer takes the answer at once,
/// and if it does not, the close alone says enough.
fn refuse(stream: &TcpStream, answer: &[u8]) {
    let _ = stream.try_write(answer);
}

/// Lets in-flight and queued requests finish within the grace period, then stops their
/// executions.
async fn drain(graceful: GracefulShutdown, state: &AppState) {
    let sandbox = &state.sandbox;
    sandbox.stop_admitting();
    let grace = state.config.server.shutdown_grace();
    tracing::info!(
        grace_ms = grace.as_millis(),
        "shutting down: finishing in-flight and queued requests"
    );
    let mut drained = std::pin::pin!(graceful.shutdown());
    if tokio::time::timeout(grace, &mut drained).await.is_err() {
        tracing::warn!("grace period over: stopping the executions still running or queued");
        sandbox.cancel_running();
        if tokio::time::timeout(ANSWER_AFTER_CANCEL, drained)
            .await
            .is_err()
        {
            tracing::error!(
                "connections still open after stopping every execution; exiting anyway"
            );
        }
    }
    // Answers do not wait for their teardown; the exit does.
    if tokio::time::timeout(ANSWER_AFTER_CANCEL, sandbox.idle())
        .await
        .is_err()
    {
        tracing::error!("executions still being swept; exiting anyway");
    }
    tracing::info!("stopped");
}
