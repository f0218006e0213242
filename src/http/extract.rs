//! Reading a request's JSON body, the one way the API takes input: within the byte budget that
//! every body being received shares ([`BodyBudget`], `admission.rs`), and within one deadline
//! for the whole body, not per chunk (a client trickling a byte at a time is cut off on time).
//! Parse errors are [`ApiError`]s, so malformed input gets the API's JSON error shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::header;

use super::ApiError;
use crate::admission::BodyBudget;

/// Reserves the body's announced size in `budget`, reads and parses it within the budget's
/// deadline, and gives the reservation back.
pub async fn read_json<T>(budget: &BodyBudget, request: Request) -> Result<T, ApiError>
where
    axum::Json<T>: FromRequest<(), Rejection = JsonRejection>,
{
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    let _reserved = budget.reserve(announced)?;
    let read = axum::Json::<T>::from_request(request, &());
    match tokio::time::timeout(budget.deadline(), read).await {
        Ok(parsed) => Ok(parsed?.0),
        Err(_elapsed) => Err(ApiError::BodyTimeout),
    }
}
