//! `GET /openapi.json`: the API's contract as an OpenAPI 3.1 document, generated from the
//! handlers' annotations and the wire types, so it cannot drift from the code. The contract
//! test fuzzes the running service against it.

use axum::Json;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref};
use utoipa::{Modify, OpenApi};

use super::{execute, health, info, metrics};
use crate::protocol::{ErrorBody, ExecuteRequest, ExecuteResponse, HealthResponse, InfoResponse};

#[derive(OpenApi)]
#[openapi(
    info(title = "pyexec", description = "Runs a Python script's main() in an nsjail sandbox."),
    paths(execute::execute, health::health, info::info, metrics::metrics, openapi),
    components(schemas(ExecuteRequest, ExecuteResponse, ErrorBody, HealthResponse, InfoResponse)),
    modifiers(&EveryOperation)
)]
struct ApiDoc;

/// The document, built once per request (it is small and rarely asked for).
pub fn document() -> Document {
    ApiDoc::openapi()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
pub(super) async fn openapi() -> Json<Document> {
    Json(document())
}

/// Answers every operation can give, whatever its handler: a wrong method (405) and a fault
/// of the service (500), both with the error body.
struct EveryOperation;

impl Modify for EveryOperation {
    fn modify(&self, openapi: &mut Document) {
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                responses.entry("405".to_owned()).or_insert_with(|| {
                    error("Wrong method: the Allow header lists the right one").into()
                });
                responses
                    .entry("500".to_owned())
                    .or_insert_with(|| error("A fault of the service itself").into());
            }
        }
    }
}
