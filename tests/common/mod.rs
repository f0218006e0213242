//! Starts the real service (real nsjail, real sandbox Python) on a loopback port.
#![allow(dead_code, reason = "each test file uses a different part")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

pub mod escape_cases;
pub mod events;
pub mod guest;
pub mod markdown;
pub mod service;

use std::net::SocketAddr;
use std::path::Path;

use pyexec::config::Profile;
use pyexec::protocol::Isolation;
use pyexec::{AppState, Config, server};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// A running service and the private directory its executions are created in.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub work_root: tempfile::TempDir,
    pub config: Config,
    pub profile: Profile,
    /// What the sandbox found this host allows (profile, limits backend, guarantees).
    pub isolation: Isolation,
    /// Where the sandbox makes per-execution cgroups; empty without cgroups.
    pub cgroup_parents: Vec<std::path::PathBuf>,
    /// The uids of the app's slots (from the block of uids it took).
    pub uids: std::ops::Range<u32>,
    /// The app's own directory for executions, in `work_root`.
    pub work_dir: std::path::PathBuf,
    /// Whether its executions run on the warm path.
    pub warm: bool,
    /// Starts the graceful shutdown, as SIGTERM does.
    pub shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server: done once shut down.
    pub server: tokio::task::JoinHandle<()>,
}

/// The configuration tests run with: the repository's profiles and a private work root. The
/// uids come from the first free block, as for any instance.
pub fn test_config(work_root: &Path) -> Config {
    let mut config = Config::default();
    config.sandbox.profile_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("nsjail");
    work_root.clone_into(&mut config.sandbox.work_root);
    config.sandbox.max_concurrency = 4;
    config
}

/// What an instance keeps in its work directory for as long as it runs: the warm path's
/// files and the jail profiles.
pub const INSTANCE_FILES: [&str; 3] = ["harness", "profiles", "proc-masks"];

/// One slot, in `profile`, with the warm path on or off: the suites that run a case in every
/// configuration start theirs with this.
pub async fn spawn_app_in(profile: pyexec::config::ProfileChoice, warm: bool) -> TestApp {
    spawn_app_with(|config| {
        config.sandbox.profile = profile;
        config.sandbox.warm = warm;
        config.sandbox.max_concurrency = 1;
    })
    .await
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Binds before returning, so no sleep is needed; starts the sandbox like `main`.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Config)) -> TestApp {
    // The service's warnings go to the test's own output, shown when it fails: a 5xx body is a
    // fixed sentence, and its reason is in the log.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let work_root = tempfile::tempdir().unwrap();
    let mut config = test_config(work_root.path());
    customize(&mut config);
    let state = AppState::start(config.clone()).await.unwrap();
    state
        .sandbox
        .health()
        .await
        .expect("the sandbox works: run `make test`, which installs it");
    let profile = state.sandbox.profile();
    let isolation = state.sandbox.isolation();
    let cgroup_parents = state.sandbox.cgroup_parents();
    let uids = state.sandbox.slot_uids();
    let work_dir = state.sandbox.work_dir().unwrap().to_owned();
    let warm = state.sandbox.is_warm();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, state, async move {
        let _ = signal.await;
    }));
    TestApp {
        addr,
        client: reqwest::Client::new(),
        work_root,
        config,
        profile,
        isolation,
        cgroup_parents,
        uids,
        work_dir,
        warm,
        shutdown: Some(shutdown),
        server,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `{"script": script}` and returns the status and the JSON body.
    pub async fn execute(&self, script: &str) -> (u16, Value) {
        self.post_json(&json!({ "script": script })).await
    }

    /// Sends `{"script": script}` in a task of its own: the answer comes when the task ends.
    pub fn spawn_execute(&self, script: &str) -> tokio::task::JoinHandle<(u16, Value)> {
        let request = self
            .client
            .post(self.url("/execute"))
            .json(&json!({ "script": script }));
        tokio::spawn(async move { read(request.send().await.unwrap()).await })
    }

    pub async fn post_json(&self, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url("/execute"))
            .json(body)
            .send()
            .await
            .unwrap();
        read(response).await
    }

    pub async fn post_raw(
        &self,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut request = self.client.post(self.url("/execute")).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        read(request.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        read(self.client.get(self.url(path)).send().await.unwrap()).await
    }

    /// How many executions ran each way (`warm`, `cold`) so far, from `/metrics`: a fallback
    /// from warm to cold answers the same, so only this shows which path really ran.
    pub async fn paths_run(&self) -> std::collections::BTreeMap<String, u64> {
        let text = self.metrics().await;
        let mut paths = std::collections::BTreeMap::new();
        for line in text
            .lines()
            .filter(|line| line.starts_with("pyexec_executions_total{"))
        {
            let Some(path) = line
                .split("path=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
            else {
                continue;
            };
            let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            *paths.entry(path.to_owned()).or_default() += count;
        }
        paths
    }

    /// Names left in the app's work directory once the sweeps that follow answers are done
    /// (waits up to 5 s for them): empty when every execution cleaned up.
    pub async fn leftovers_after_sweeps(&self) -> Vec<String> {
        wait_until(|| self.leftovers().is_empty()).await;
        self.leftovers()
    }

    /// Names left in the app's work directory now (but the instance's own: the warm path's
    /// files and the jail profiles).
    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(&self.work_dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !INSTANCE_FILES.contains(&name.as_str()))
            .collect()
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }

    /// Waits (at most 5 s) for `count` sandboxes to be running at once; panics if they never are.
    pub async fn wait_for_sandboxes(&self, count: usize) {
        assert!(
            wait_until(|| self.sandboxes_running() >= count).await,
            "{count} sandboxes never ran at once"
        );
    }

    /// Processes still running as one of this app's slot uids (see [`processes_left`]).
    pub async fn processes_left(&self) -> Vec<String> {
        processes_left(self.uids.clone()).await
    }

    /// Per-execution cgroups of this app still present, on whichever cgroup version the
    /// sandbox detected.
    pub fn leftover_cgroups(&self) -> Vec<String> {
        leftover_cgroups(&self.cgroup_parents)
    }

    /// How many of this app's slots have a sandbox running now.
    pub fn sandboxes_running(&self) -> usize {
        self.uids
            .clone()
            .filter(|uid| !processes_of(*uid).is_empty())
            .count()
    }
}

/// Waits (at most 5 s) until `done` holds, so a test waits for a condition instead of
/// guessing a time; says whether it held.
pub async fn wait_until(done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    true
}

/// Groups left under `parents` (an instance's own subtree).
pub fn leftover_cgroups(parents: &[std::path::PathBuf]) -> Vec<String> {
    parents
        .iter()
        .flat_map(|parent| std::fs::read_dir(parent).into_iter().flatten().flatten())
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.path().display().to_string())
        .collect()
}

/// The router over a sandbox that was never started, for what never reaches a sandbox
/// (routing, content types, body parsing, validation): no jail, nothing on the host.
pub fn router_only(customize: impl FnOnce(&mut Config)) -> axum::Router {
    let mut config = test_config(std::path::Path::new("/nonexistent"));
    customize(&mut config);
    pyexec::router(AppState::unstarted(config))
}

/// Sends one request through `router` (no network) and returns the status, the headers and
/// the JSON body.
pub async fn oneshot(
    router: &axum::Router,
    request: axum::http::Request<axum::body::Body>,
) -> (u16, axum::http::HeaderMap, Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|error| {
        panic!(
            "body is not JSON ({error}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, headers, body)
}

/// A POST to `/execute` with this content type and body.
pub fn post_execute(
    content_type: Option<&str>,
    body: impl Into<axum::body::Body>,
) -> axum::http::Request<axum::body::Body> {
    let mut request = axum::http::Request::post("/execute");
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.body(body.into()).unwrap()
}

/// Processes running as one of `uids`, after waiting up to 2 s for killed ones to be reaped
/// (a killed jail's zombie waits for the host's init when its nsjail died first).
pub async fn processes_left(uids: std::ops::Range<u32>) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let found: Vec<String> = uids.clone().flat_map(processes_of).collect();
        if found.is_empty() || std::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The status and JSON body of a response; a non-JSON body fails the test.
pub async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("body is not JSON ({error}): {text:?}"));
    (status, body)
}

/// Asserts the error shape every non-2xx shares and returns the code.
pub fn error_code(body: &Value) -> &str {
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {body}"));
    assert!(!message.is_empty(), "{body}");
    body["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code: {body}"))
}

/// Processes currently running as `uid`, from /proc.
pub fn processes_of(uid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let owner = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next());
        if owner == Some(&uid.to_string()) {
            let name = status.lines().next().unwrap_or_default().to_owned();
            found.push(format!("{}: {name}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

/// A loopback port free now (a service binds it a moment later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
