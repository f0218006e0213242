//! `POST /execute`: extract, validate, admit, run, answer: plainly, or as a stream of events
//! where the client asks for one (`stream.rs`).

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::error::ApiError;
use super::extract;
use super::log::{Seen, Usage};
use super::stream;
use crate::app::AppState;
use crate::job::Job;
use crate::protocol::{
    AppliedLimits, ErrorBody, ExecuteRequest, ExecuteResponse, FailedScript, StreamEvent,
};
use crate::sandbox::{Execution, Outcome, SandboxError};

/// Runs a script's `main()` in a fresh sandbox.
///
/// With `Accept: application/x-ndjson` (or `text/event-stream`) the answer, once a sandbox is
/// the request's, is `200` at once and a stream of events: `started`, then `stdout` and
/// `stderr` as the script writes them, then exactly one `result` with the status and body the
/// request would have had without that header. Refusals before a sandbox is spent (an invalid
/// request, `busy`, `shutting_down`) are answered as without it.
#[utoipa::path(
    post,
    path = "/execute",
    request_body(content = ExecuteRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "`main()` returned; its value and what the script printed. Streamed: the events, one `StreamEvent` a line (NDJSON) or an SSE event each, the last one `result`", content(
            (ExecuteResponse = "application/json"),
            (StreamEvent = "application/x-ndjson"),
            (StreamEvent = "text/event-stream"),
        )),
        (status = 400, description = "Invalid JSON or request, or the script failed (see `code`)", body = ErrorBody),
        (status = 408, description = "The body was not sent in time", body = ErrorBody),
        (status = 413, description = "The script or the body is too large", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 503, description = "Busy, shutting down, or the sandbox is unavailable", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
pub(super) async fn execute(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let format = stream::Format::accepted(request.headers());
    let seen = request.extensions().get::<Seen>().cloned();
    let body: ExecuteRequest = extract::read_json(&state.bodies, request).await?;
    let job = Job::from_request(body, &state.config.limits)?;
    // Admitted only once the body is in, so a slow client holds no sandbox and no queue place:
    // the queue holds whole requests, at most `max_queue` of them.
    let ticket = state.sandbox.admit()?;
    // A stream begins only once a sandbox is the request's: until then every refusal (busy,
    // shutting down) is answered plainly, streamed or not.
    let acquired = state.sandbox.acquire(ticket).await?;
    Ok(match format {
        None => answer(&job, state.sandbox.run(acquired, &job, None).await),
        Some(format) => stream::respond(format, state, acquired, job, seen),
    })
}

/// The plain answer to an execution, which a stream's last event carries too: its value and
/// output, or the script's failure, or the sandbox's; with what the sandbox did, for the log.
pub(super) fn answer(job: &Job, executed: Result<Execution, SandboxError>) -> Response {
    let Execution {
        outcome,
        output,
        memory_peak_bytes,
        profile,
        path,
        queue_wait,
        ..
    } = match executed {
        Ok(execution) => execution,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let usage = Usage {
        path: path.as_str(),
        profile: profile.name(),
        queue_wait,
        sandbox_run: std::time::Duration::from_millis(output.duration_ms),
        memory_peak_bytes,
    };
    let answer = match outcome {
        Outcome::Returned(returned) => {
            let files_truncated = returned.files.as_ref().map(|_| returned.files_truncated);
            let limits = job.limits_requested.then_some(AppliedLimits {
                time_ms: job.limits.time_limit_ms,
                memory_bytes: job.limits.memory_bytes,
                output_bytes: job.limits.output_bytes as u64,
            });
            Json(ExecuteResponse {
                result: returned.result,
                output,
                nulls: returned.nulls,
                files: returned.files,
                files_truncated,
                skipped_files: returned.skipped_files,
                limits,
            })
            .into_response()
        }
        Outcome::Failed(failure) => {
            ApiError::ScriptFailed(Box::new(FailedScript { failure, output })).into_response()
        }
    };
    (Extension(usage), answer).into_response()
}
