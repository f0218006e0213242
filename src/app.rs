//! The state every handler shares.

use std::sync::Arc;

use crate::admission::BodyBudget;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::sandbox::{Sandbox, StartError};

/// One `Clone` struct of `Arc`s, passed through axum's `State`.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub sandbox: Arc<Sandbox>,
    /// The room for request bodies being received, shared by every request.
    pub bodies: Arc<BodyBudget>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Starts the sandbox (probing what this host allows); fails only when the configuration
    /// demands a stronger profile than the host supports.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let sandbox = Sandbox::start(config.sandbox.clone(), config.limits.clone()).await?;
        Ok(Self::with(config, sandbox))
    }

    /// State whose sandbox was never started: it runs nothing and touches nothing on the
    /// host, which is all the router needs for what never reaches a sandbox.
    pub fn unstarted(config: Config) -> Self {
        let sandbox = Sandbox::new(config.sandbox.clone(), config.limits.clone());
        Self::with(config, sandbox)
    }

    fn with(config: Config, sandbox: Sandbox) -> Self {
        Self {
            bodies: Arc::new(BodyBudget::new(&config.server)),
            metrics: Arc::new(Metrics::new(
                config.sandbox.profile.name(),
                config.sandbox.warm,
            )),
            config: Arc::new(config),
            sandbox: Arc::new(sandbox),
        }
    }
}
