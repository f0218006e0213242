//! The service's metrics, in the OpenMetrics text format Prometheus scrapes (`GET /metrics`):
//! executions by outcome code, profile and path, and those streamed; latency histograms for the queue, the sandbox
//! and the whole request; executions running and queued; the warm path's size and misses;
//! sandbox start failures; build information. Counters and histograms are recorded where each
//! request is logged (`http/log.rs`); gauges are read from the sandbox when scraped.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Every metric, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    executions: Family<ExecutionLabels, Counter>,
    queue_wait: Histogram,
    sandbox_run: Family<PathLabels, Histogram>,
    requests: Family<RouteLabels, Histogram>,
    running: Gauge<i64, std::sync::atomic::AtomicI64>,
    queued: Gauge<i64, std::sync::atomic::AtomicI64>,
    warm_pool: Gauge<i64, std::sync::atomic::AtomicI64>,
    warm_misses: Counter<u64, AtomicU64>,
    streamed: Counter<u64, AtomicU64>,
    start_failures: Counter<u64, AtomicU64>,
    /// Whether the warm path is configured: a cold execution then counts as a miss.
    warm_configured: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ExecutionLabels {
    code: String,
    profile: String,
    path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PathLabels {
    path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    status: u16,
}

/// One `POST /execute`, as the access log saw it.
#[derive(Debug, Clone, Copy)]
pub struct ExecutionRecord {
    /// `ok` or the error code.
    pub code: &'static str,
    /// `warm`, `cold`, or `none` when no sandbox ran.
    pub path: &'static str,
    /// The profile it ran in (or would have: the active one, when no sandbox ran).
    pub profile: &'static str,
    pub queue_wait: Option<Duration>,
    pub sandbox_run: Option<Duration>,
    /// Answered as a stream of events (`Accept: application/x-ndjson` or `text/event-stream`).
    pub streamed: bool,
}

/// Histogram buckets from 1 ms to about 66 s, doubling.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 17)
}

impl Metrics {
    /// The metrics of a service configured with `profile` (`auto` or one profile; the one
    /// each execution ran in labels it) and whether its warm path is configured.
    pub fn new(profile: &'static str, warm: bool) -> Self {
        let mut registry = Registry::with_prefix("pyexec");
        registry.register(
            "build",
            "The service's version, profile setting and warm-path setting",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("profile_setting", profile.to_owned()),
                ("warm", warm.to_string()),
            ]),
        );
        let mut metrics = Self {
            executions: Family::default(),
            queue_wait: Histogram::new(seconds_buckets()),
            sandbox_run: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            requests: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            running: Gauge::default(),
            queued: Gauge::default(),
            warm_pool: Gauge::default(),
            warm_misses: Counter::default(),
            streamed: Counter::default(),
            start_failures: Counter::default(),
            warm_configured: warm,
            registry,
        };
        let registry = &mut metrics.registry;
        registry.register(
            "executions",
            "Executions by outcome code (ok, or the error code), profile and path (warm, cold, none)",
            metrics.executions.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "How long executions waited for a sandbox",
            metrics.queue_wait.clone(),
        );
        registry.register(
            "sandbox_run_seconds",
            "How long sandboxes ran, by path",
            metrics.sandbox_run.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Whole requests, by route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "executions_running",
            "Sandboxes in use (running, or being swept)",
            metrics.running.clone(),
        );
        registry.register(
            "executions_queued",
            "Requests waiting for a sandbox",
            metrics.queued.clone(),
        );
        registry.register(
            "warm_pool_size",
            "Zygotes ready to fork executions (0 or 1)",
            metrics.warm_pool.clone(),
        );
        registry.register(
            "warm_misses",
            "Executions that ran cold although the warm path is configured",
            metrics.warm_misses.clone(),
        );
        registry.register(
            "executions_streamed",
            "Executions answered as a stream of events (also counted in executions)",
            metrics.streamed.clone(),
        );
        registry.register(
            "sandbox_start_failures",
            "Executions whose sandbox failed before the harness started",
            metrics.start_failures.clone(),
        );
        metrics
    }

    /// Records one request; `execution` when it was a `POST /execute`.
    pub fn record_request(
        &self,
        route: &str,
        status: u16,
        took: Duration,
        execution: Option<ExecutionRecord>,
    ) {
        self.requests
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                status,
            })
            .observe(took.as_secs_f64());
        let Some(execution) = execution else { return };
        self.executions
            .get_or_create(&ExecutionLabels {
                code: execution.code.to_owned(),
                profile: execution.profile.to_owned(),
                path: execution.path.to_owned(),
            })
            .inc();
        if let Some(wait) = execution.queue_wait {
            self.queue_wait.observe(wait.as_secs_f64());
        }
        if let Some(run) = execution.sandbox_run {
            self.sandbox_run
                .get_or_create(&PathLabels {
                    path: execution.path.to_owned(),
                })
                .observe(run.as_secs_f64());
        }
        if execution.streamed {
            self.streamed.inc();
        }
        if execution.path == "cold" && self.warm_configured {
            self.warm_misses.inc();
        }
        if execution.code == "sandbox_unavailable" {
            self.start_failures.inc();
        }
    }

    /// The whole registry as OpenMetrics text, with the gauges set to these readings.
    pub fn render(&self, running: usize, queued: usize, warm: bool) -> String {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.running.set(count(running));
        self.queued.set(count(queued));
        self.warm_pool.set(i64::from(warm));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
