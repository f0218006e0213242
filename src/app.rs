//! The state every handler shares.

use std::sync::Arc;

use crate::config::Config;
use crate::sandbox::Sandbox;

/// One `Clone` struct of `Arc`s, passed through axum's `State`.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub sandbox: Arc<Sandbox>,
}

impl AppState {
    pub fn new(config: Config) -> Self {
        let sandbox = Sandbox::new(config.sandbox.clone(), config.limits.clone());
        Self {
            config: Arc::new(config),
            sandbox: Arc::new(sandbox),
        }
    }
}
