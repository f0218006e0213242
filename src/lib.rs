//! pyexec: a REST service that runs untrusted Python scripts in nsjail and answers with what
//! their `main()` returned and what they printed.

pub mod admission;
pub mod app;
pub mod config;
pub mod failure;
pub mod fields;
pub mod harness;
pub mod http;
pub mod job;
pub mod metrics;
pub mod protocol;
pub mod sandbox;
pub mod server;
pub mod telemetry;
pub mod validate;

pub use app::AppState;
pub use config::Config;
pub use http::router;
