//! Reading a request's JSON body, the one way the API takes input: within a byte budget that
//! every body being received shares (a slow client holds only what it announced, and a crowd
//! of them gets 503 `busy` instead of the service's memory), and within one deadline for the
//! whole body, not per chunk (a client trickling a byte at a time is cut off on time). Parse
//! errors are [`ApiError`]s, so malformed input gets the API's JSON error shape.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use tokio::sync::Semaphore;

use super::ApiError;
use crate::config::ServerConfig;

/// The bytes of request bodies that may be in the service's hands at once.
#[derive(Debug)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    max_body: usize,
    deadline: Duration,
}

impl BodyBudget {
    pub fn new(server: &ServerConfig) -> Self {
        Self {
            bytes: Arc::new(Semaphore::new(server.body_budget_bytes)),
            max_body: server.max_body_bytes,
            deadline: server.body_read_timeout(),
        }
    }

    /// Reserves the body's announced size (the largest body when it announces none), reads
    /// and parses it within the deadline, and gives the reservation back.
    pub async fn read_json<T>(&self, request: Request) -> Result<T, ApiError>
    where
        axum::Json<T>: FromRequest<(), Rejection = JsonRejection>,
    {
        let announced = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(self.max_body)
            // A body over the limit is refused as soon as it is announced; it needs no room.
            .min(self.max_body)
            .max(1);
        let _reserved = u32::try_from(announced)
            .ok()
            .and_then(|bytes| Arc::clone(&self.bytes).try_acquire_many_owned(bytes).ok())
            .ok_or(ApiError::Busy(
                "too many request bodies are being received at once",
            ))?;
        let read = axum::Json::<T>::from_request(request, &());
        match tokio::time::timeout(self.deadline, read).await {
            Ok(parsed) => Ok(parsed?.0),
            Err(_elapsed) => Err(ApiError::BodyTimeout),
        }
    }
}
