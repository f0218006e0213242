//! The deployment manifests in `deploy/` against the code they deploy. Each manifest's numbers
//! follow from the service's configuration as that manifest sets it: the image's environment
//! (the Dockerfile's `ENV`), then the manifest's own `env`, loaded through [`Config::load`]
//! exactly as the service loads it at start-up. From that configuration this file recomputes
//! what each number must be (the port, what one instance admits, the request backstop, the
//! shutdown grace, the memory one instance can use) and checks the probe and metrics paths
//! against the router itself, so a change on either side that leaves them apart fails here.
//!
//! It needs neither kubectl nor a cluster: the Kubernetes manifests are read as kustomize
//! would assemble them (the base's `resources`, and the unprivileged component's JSON patch
//! applied to the Deployment), and the Cloud Run service is one file. Every Kubernetes object
//! as kustomize would apply it, in both variants, is also checked against the Kubernetes API's
//! own schemas, offline, by kubernetes-validate (pinned in config/tools-requirements.txt, which
//! ships them). The Cloud Run service gets no such check: no package ships a schema of
//! Knative's `serving.knative.dev/v1` Service that it could be checked against strictly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, header};
use common::{error_code, oneshot, router_only};
use pyexec::Config;
use pyexec::config::{LogFormat, Profile, ProfileChoice};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
/// The warm path's zygote with numpy and pandas imported: 65.9 MiB Pss in BENCHMARKS.md,
/// rounded up.
const ZYGOTE_BYTES: u64 = 96 * MIB;
/// The service's own resident memory under load: 17.3 MiB in BENCHMARKS.md, rounded up. Its
/// bounded buffers (bodies, outputs, results) are added separately.
const SERVICE_RSS_BYTES: u64 = 32 * MIB;
/// After the shutdown grace the service gives stopped executions up to 3 s to answer and up to
/// 3 s more for their sweeps (`ANSWER_AFTER_CANCEL`, twice, in src/server.rs).
const STOP_AFTER_GRACE: Duration = Duration::from_secs(6);
/// Cloud Run sends SIGKILL this long after SIGTERM, whatever the service asks.
const CLOUD_RUN_SIGKILL_AFTER: Duration = Duration::from_secs(10);
/// The longest the zygote may take to import what it preloads (`START_TIMEOUT` in
/// src/sandbox/zygote.rs); the service listens only once it is up or has given up.
const ZYGOTE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Where an instance keeps the lock of its block of uids (`LOCK_DIR` in src/sandbox/block.rs).
const LOCK_DIR: &str = "/run/pyexec";
/// The directories scripts without a mount namespace can write, which the service sweeps per
/// uid and which must keep their sticky bit (`SHARED_TMP` in src/sandbox/cleanup.rs).
const SHARED_TMP: [&str; 4] = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"];
/// Capabilities the unprivileged variant may add back, each for a reason written beside it in
/// deploy/kubernetes/unprivileged/deployment-patch.yaml. Anything else needs a reason first.
const UNPRIVILEGED_CAPABILITIES: [&str; 8] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "KILL",
    "SETUID",
    "SETGID",
    "SETPCAP",
    "SYS_PTRACE",
];

/// The Kubernetes API checker, installed by scripts/setup.sh with the other test tools.
const KUBERNETES_VALIDATE: &str = "/opt/pyexec/tools/bin/kubernetes-validate";
/// The Kubernetes release whose API schemas the manifests are checked against: the newest that
/// the pinned kubernetes-validate ships.
const KUBERNETES_VERSION: &str = "1.37.0";

// Cloud Run (and Knative).

#[tokio::test]
async fn the_cloud_run_service_matches_the_code() {
    let service = yaml("deploy/cloudrun/service.yaml");
    assert_eq!(
        (&service["apiVersion"], &service["kind"]),
        (&json!("serving.knative.dev/v1"), &json!("Service"))
    );
    let template = &service["spec"]["template"];
    let annotations = &template["metadata"]["annotations"];
    let spec = &template["spec"];
    let container = only_container(spec);

    let ports = container["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1, "Cloud Run serves exactly one port");
    assert!(
        ["http1", "h2c"].contains(&ports[0]["name"].as_str().unwrap()),
        "Cloud Run and Knative name the port http1 or h2c: {ports:?}"
    );
    let port = u16::try_from(ports[0]["containerPort"].as_u64().unwrap()).unwrap();

    let manifest = container_env(container);
    for reserved in ["PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"] {
        assert!(
            !manifest.contains_key(reserved),
            "{reserved} is set by Cloud Run; the manifest may not set it"
        );
    }
    // What the service sees: the image's environment, the manifest's, and Cloud Run's PORT.
    let mut env = image_env();
    env.extend(manifest);
    env.insert("PORT".to_owned(), port.to_string());
    let config = resolve(&env);
    assert_eq!(config.server.port, port);
    assert_eq!(
        config.server.log_format,
        LogFormat::Json,
        "Cloud Logging reads JSON lines"
    );

    // The second generation runs `strict`; requiring it makes anything weaker fail closed.
    assert_eq!(
        annotations["run.googleapis.com/execution-environment"],
        "gen2"
    );
    assert_eq!(config.sandbox.require, Profile::Strict);
    if config.sandbox.warm {
        assert_eq!(
            annotations["run.googleapis.com/cpu-throttling"], "false",
            "the warm path restarts its zygote and sweeps slots outside requests: it needs CPU there"
        );
    }
    let scale = |name: &str| -> u32 {
        annotations[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} is set, as a string"))
            .parse()
            .unwrap()
    };
    assert!(scale("autoscaling.knative.dev/maxScale") >= scale("autoscaling.knative.dev/minScale"));

    let limits = &container["resources"]["limits"];
    let admits = check_admission(&config, cpus(&limits["cpu"]));
    assert_eq!(
        spec["containerConcurrency"].as_u64(),
        Some(admits),
        "containerConcurrency is what one instance admits: sandboxes plus queue"
    );

    let timeout = Duration::from_secs(spec["timeoutSeconds"].as_u64().expect("timeoutSeconds"));
    assert!(
        timeout > config.request_timeout(),
        "Cloud Run's timeout ({timeout:?}) must exceed the service's own backstop ({:?}), so \
         the service, which kills the jail, answers first",
        config.request_timeout()
    );
    assert!(
        config.server.shutdown_grace() < CLOUD_RUN_SIGKILL_AFTER,
        "the shutdown grace must end before Cloud Run's SIGKILL"
    );

    let memory = bytes(&limits["memory"]);
    let needed = memory_needed(&config, 0);
    assert!(
        memory >= needed,
        "memory limit {memory} is below what one instance can use: {needed}"
    );

    for probe in ["startupProbe", "livenessProbe"] {
        let probe = &container[probe];
        assert!(
            probe["httpGet"]["port"].is_null() || probe["httpGet"]["port"] == json!(port),
            "a probe goes to the serving port"
        );
        assert_reports_health(probe_path(probe)).await;
    }
    assert_startup_window(&container["startupProbe"], &config);
}

// Kubernetes.

#[tokio::test]
async fn the_kubernetes_manifests_match_the_code() {
    let cluster = Cluster::load();
    cluster.check().await;
    let deployment = cluster.deployment();
    let container = cluster.container();
    assert_eq!(
        container["securityContext"]["privileged"], true,
        "the base runs `strict` with cgroups, which needs a privileged container (see deployment.yaml)"
    );
    assert_eq!(cluster.config().sandbox.require, Profile::Strict);
    assert!(
        deployment["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|volume| volume["emptyDir"]["medium"] == "Memory"),
        "in memory, as the memory limit assumes"
    );
}

#[tokio::test]
async fn the_unprivileged_component_matches_the_code() {
    let mut cluster = Cluster::load();
    let component = Path::new("deploy/kubernetes/unprivileged");
    let kustomization = yaml(component.join("kustomization.yaml"));
    assert_eq!(kustomization["kind"], "Component");
    let base = yaml("deploy/kubernetes/kustomization.yaml");
    assert!(
        std::fs::read_to_string(repo("deploy/kubernetes/kustomization.yaml"))
            .unwrap()
            .contains("#   - unprivileged"),
        "the base offers the component (commented out) under `components:`"
    );
    assert!(
        base["components"].is_null(),
        "the base is the privileged one"
    );
    for patch in kustomization["patches"].as_array().unwrap() {
        assert_eq!(
            (&patch["target"]["kind"], &patch["target"]["name"]),
            (
                &json!("Deployment"),
                &cluster.deployment()["metadata"]["name"]
            )
        );
        let operations = yaml(component.join(patch["path"].as_str().unwrap()));
        json_patch(cluster.deployment_mut(), &operations);
    }
    cluster.check().await;

    let config = cluster.config();
    assert_eq!(
        (config.sandbox.profile, config.sandbox.require),
        (ProfileChoice::CloudRun, Profile::CloudRun),
        "the weaker profile is chosen, not fallen back to"
    );
    let context = &cluster.container()["securityContext"];
    assert_ne!(context["privileged"], true);
    assert_eq!(context["allowPrivilegeEscalation"], false);
    assert_eq!(context["capabilities"]["drop"], json!(["ALL"]));
    let added: Vec<&str> = context["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|capability| capability.as_str().unwrap())
        .collect();
    assert!(
        added
            .iter()
            .all(|capability| UNPRIVILEGED_CAPABILITIES.contains(capability)),
        "{added:?}: each capability needs its reason in deployment-patch.yaml"
    );
}

/// Every file in deploy/kubernetes is one that kustomize reads, a resource of the base or a
/// patch of its component, so the checks here (the API schemas' included) see every manifest.
#[test]
fn kustomize_reads_every_kubernetes_manifest() {
    let mut directories = vec![PathBuf::from("deploy/kubernetes")];
    let mut unread = Vec::new();
    while let Some(directory) = directories.pop() {
        let kustomization = yaml(directory.join("kustomization.yaml"));
        let resources = kustomization["resources"].as_array().into_iter().flatten();
        let patches = kustomization["patches"].as_array().into_iter().flatten();
        let read: Vec<&str> = resources
            .chain(patches.map(|patch| &patch["path"]))
            .map(|file| file.as_str().unwrap())
            .collect();
        for entry in std::fs::read_dir(repo(&directory)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if entry.file_type().unwrap().is_dir() {
                // A component: it has a kustomization of its own.
                directories.push(directory.join(name));
            } else if name != "kustomization.yaml" && !read.contains(&name.as_str()) {
                unread.push(directory.join(name));
            }
        }
    }
    assert!(
        unread.is_empty(),
        "{unread:?}: no kustomization lists these, so neither kustomize nor this file reads them"
    );
}

/// The schema check of `Cluster::check` fails where the API server would refuse: an unknown
/// field (strict mode), at the top or deep in the pod template, a value of the wrong type, and
/// a kind it has no schema for (which the tool itself only warns about).
#[test]
fn the_api_schema_check_fails_on_what_the_api_refuses() {
    let cluster = Cluster::load();
    let deployment = cluster.deployment();
    api_schema_check(std::slice::from_ref(deployment)).unwrap();

    let mut misspelt = deployment.clone();
    misspelt["spec"]["replicaz"] = json!(2);
    let mut deep = deployment.clone();
    deep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilegd"] = json!(true);
    let mut mistyped = deployment.clone();
    mistyped["spec"]["revisionHistoryLimit"] = json!("five");
    let knative = yaml("deploy/cloudrun/service.yaml");
    for (object, expected) in [
        (misspelt, "'replicaz' was unexpected"),
        (deep, "'privilegd' was unexpected"),
        (mistyped, "'five' is not of type 'integer'"),
        (
            knative,
            "Couldn't find schema for kind Service with api version serving.knative.dev/v1",
        ),
    ] {
        let report =
            api_schema_check(&[object]).expect_err(&format!("the check must fail with {expected}"));
        assert!(report.contains(expected), "{expected}, not:\n{report}");
    }
}

/// The Kubernetes objects `kubectl apply -k deploy/kubernetes` creates, as kustomize assembles
/// them (the namespace and image transformers aside).
struct Cluster {
    namespace: String,
    objects: Vec<Value>,
}

impl Cluster {
    fn load() -> Self {
        let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
        assert_eq!(kustomization["kind"], "Kustomization");
        let objects = kustomization["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|file| yaml(Path::new("deploy/kubernetes").join(file.as_str().unwrap())))
            .collect();
        assert!(
            kustomization["images"]
                .as_array()
                .unwrap()
                .iter()
                .any(|image| image["name"] == "pyexec"),
            "the image is set in one place, under `images:`"
        );
        Self {
            namespace: kustomization["namespace"].as_str().unwrap().to_owned(),
            objects,
        }
    }

    fn object(&self, kind: &str) -> &Value {
        let mut found = self.objects.iter().filter(|object| object["kind"] == kind);
        let object = found
            .next()
            .unwrap_or_else(|| panic!("no {kind} in the kustomization"));
        assert!(found.next().is_none(), "one {kind}");
        object
    }

    fn deployment(&self) -> &Value {
        self.object("Deployment")
    }

    fn deployment_mut(&mut self) -> &mut Value {
        self.objects
            .iter_mut()
            .find(|object| object["kind"] == "Deployment")
            .unwrap()
    }

    fn pod(&self) -> &Value {
        &self.deployment()["spec"]["template"]
    }

    fn container(&self) -> &Value {
        only_container(&self.pod()["spec"])
    }

    /// The port the container serves on, by its name `http`.
    fn port(&self) -> u16 {
        let port = self.container()["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|port| port["name"] == "http")
            .expect("a container port named http");
        u16::try_from(port["containerPort"].as_u64().unwrap()).unwrap()
    }

    /// The configuration the service runs with: the image's environment, then the pod's.
    fn config(&self) -> Config {
        let mut env = image_env();
        env.extend(container_env(self.container()));
        resolve(&env)
    }

    /// Everything both variants must hold.
    async fn check(&self) {
        let config = self.config();
        let pod = self.pod();
        let labels = &pod["metadata"]["labels"];
        let spec = &pod["spec"];
        let container = self.container();
        let port = self.port();
        assert_eq!(
            config.server.port, port,
            "the service listens on the port the pod exposes"
        );
        assert_eq!(config.server.log_format, LogFormat::Json);

        let deployment = self.deployment();
        assert!(
            deployment["spec"]["replicas"].is_null(),
            "the autoscaler owns the replica count; a value here would reset it at every apply"
        );
        assert_selects(&deployment["spec"]["selector"]["matchLabels"], labels);
        assert_eq!(spec["automountServiceAccountToken"], false);
        for host in ["hostNetwork", "hostPID", "hostIPC", "hostUsers"] {
            assert!(spec[host].is_null(), "{host} stays the default");
        }

        // Admission and sizing.
        let resources = &container["resources"];
        check_admission(&config, cpus(&resources["requests"]["cpu"]));
        assert_eq!(
            resources["requests"]["memory"], resources["limits"]["memory"],
            "memory requested is memory usable"
        );
        let in_memory: u64 = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|volume| volume["emptyDir"]["medium"] == "Memory")
            .map(|volume| bytes(&volume["emptyDir"]["sizeLimit"]))
            .sum();
        let memory = bytes(&resources["limits"]["memory"]);
        let needed = memory_needed(&config, in_memory);
        assert!(
            memory >= needed,
            "memory limit {memory} is below what one pod can use: {needed}"
        );

        // Probes and metrics, on the serving port, at paths the router serves.
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let probe = &container[probe];
            assert!(
                [json!("http"), json!(port)].contains(&probe["httpGet"]["port"]),
                "{probe}"
            );
            assert_reports_health(probe_path(probe)).await;
        }
        assert_startup_window(&container["startupProbe"], &config);
        let scrape = &pod["metadata"]["annotations"];
        assert_eq!(scrape["prometheus.io/scrape"], "true");
        assert_eq!(scrape["prometheus.io/port"], port.to_string());
        assert_serves_metrics(scrape["prometheus.io/path"].as_str().unwrap()).await;

        // Shutdown: every admitted request finishes, then the stop, within the pod's grace.
        let admitted_for =
            Duration::from_millis(config.sandbox.queue_timeout_ms) + config.limits.time_limit();
        assert!(
            config.server.shutdown_grace() >= admitted_for,
            "a rollout or drain lets every admitted request finish ({admitted_for:?})"
        );
        let pre_stop = &container["lifecycle"]["preStop"]["exec"]["command"];
        assert_eq!(pre_stop[0], "/bin/sleep");
        let pre_stop = Duration::from_secs(pre_stop[1].as_str().unwrap().parse().unwrap());
        let grace = Duration::from_secs(spec["terminationGracePeriodSeconds"].as_u64().unwrap());
        let used = pre_stop + config.server.shutdown_grace() + STOP_AFTER_GRACE;
        assert!(
            grace >= used,
            "terminationGracePeriodSeconds ({grace:?}) must cover the preStop sleep, the \
             shutdown grace and the stop ({used:?})"
        );

        self.check_security(&config);
        self.check_others(port, labels);
        if let Err(report) = api_schema_check(&self.objects) {
            panic!("the Kubernetes API would refuse these manifests:\n{report}");
        }
    }

    /// What the container may do, against what the configuration needs.
    fn check_security(&self, config: &Config) {
        let container = self.container();
        let context = &container["securityContext"];
        let privileged = context["privileged"] == true;
        assert_eq!(
            (&context["runAsUser"], &context["runAsNonRoot"]),
            (&json!(0), &json!(false)),
            "the service runs as root to give each execution a uid of its own"
        );
        let mounts: Vec<&str> = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|mount| mount["mountPath"].as_str().unwrap())
            .collect();
        if context["readOnlyRootFilesystem"] == true {
            let work_root = config.sandbox.work_root.to_str().unwrap();
            for needed in [work_root, LOCK_DIR] {
                assert!(
                    mounts
                        .iter()
                        .any(|mount| Path::new(needed).starts_with(mount)),
                    "{needed} must be writable on a read-only root: {mounts:?}"
                );
            }
        }
        if config.sandbox.require < Profile::Strict {
            // Without a mount namespace scripts write the container's shared temp
            // directories; an emptyDir there would lack the sticky bit.
            for mount in &mounts {
                assert!(
                    !SHARED_TMP
                        .iter()
                        .any(|dir| Path::new(dir).starts_with(mount)),
                    "{mount} would hide a shared temp directory's sticky bit"
                );
            }
        }
        let unconfined = privileged || context["seccompProfile"]["type"] == "Unconfined";
        let namespace = self.object("Namespace");
        assert_eq!(namespace["metadata"]["name"], self.namespace.as_str());
        if unconfined {
            assert_eq!(
                namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged",
                "only the privileged Pod Security level admits this pod"
            );
        }
    }

    /// The Service, the autoscaler, the disruption budget and the network policy, against
    /// the Deployment.
    fn check_others(&self, port: u16, labels: &Value) {
        let by_port = |target: &Value| [json!("http"), json!(port)].contains(target);
        let service = self.object("Service");
        assert_selects(&service["spec"]["selector"], labels);
        for service_port in service["spec"]["ports"].as_array().unwrap() {
            assert!(by_port(&service_port["targetPort"]), "{service_port}");
        }

        let deployment = self.deployment();
        let autoscaler = self.object("HorizontalPodAutoscaler");
        let target = &autoscaler["spec"]["scaleTargetRef"];
        assert_eq!(
            (&target["kind"], &target["name"], &target["apiVersion"]),
            (
                &deployment["kind"],
                &deployment["metadata"]["name"],
                &deployment["apiVersion"]
            )
        );
        let min = autoscaler["spec"]["minReplicas"].as_u64().unwrap();
        assert!(min >= 2, "one pod draining never leaves none");
        assert!(autoscaler["spec"]["maxReplicas"].as_u64().unwrap() >= min);
        for metric in autoscaler["spec"]["metrics"].as_array().unwrap() {
            let resource = metric["resource"]["name"].as_str().unwrap();
            assert!(
                !self.container()["resources"]["requests"][resource].is_null(),
                "utilization of {resource} is relative to its request"
            );
        }

        let budget = self.object("PodDisruptionBudget");
        assert_selects(&budget["spec"]["selector"]["matchLabels"], labels);
        let unavailable = budget["spec"]["maxUnavailable"].as_u64();
        let available = budget["spec"]["minAvailable"].as_u64();
        assert!(
            unavailable.is_some_and(|n| n >= 1) || available.is_some_and(|n| n < min),
            "a drain must be able to evict a pod"
        );

        let policy = self.object("NetworkPolicy");
        assert_selects(&policy["spec"]["podSelector"]["matchLabels"], labels);
        assert_eq!(
            (&policy["spec"]["policyTypes"], &policy["spec"]["egress"]),
            (&json!(["Ingress", "Egress"]), &json!([])),
            "no egress at all: neither scripts nor the service connect anywhere"
        );
        for rule in policy["spec"]["ingress"].as_array().unwrap() {
            for rule_port in rule["ports"].as_array().unwrap() {
                assert!(by_port(&rule_port["port"]), "{rule_port}");
            }
        }
    }
}

// What every platform must hold.

/// What one instance admits (sandboxes plus queue), after checking it is set explicitly and
/// fits the instance's CPUs, body budget and connections.
fn check_admission(config: &Config, cpus: f64) -> u64 {
    let sandbox = &config.sandbox;
    assert_ne!(
        sandbox.max_concurrency, 0,
        "set PYEXEC_MAX_CONCURRENCY: 0 counts the CPUs the container sees, which the manifest \
         cannot know (and without a CPU limit they are the node's)"
    );
    let slots = sandbox.concurrency();
    assert!(
        f64::from(u32::try_from(slots).unwrap()) <= cpus,
        "{slots} sandboxes on {cpus} CPUs: scripts are CPU-bound and single-threaded"
    );
    let admits = slots + sandbox.max_queue;
    let server = &config.server;
    assert!(
        admits * server.max_body_bytes <= server.body_budget_bytes,
        "every admitted request's body fits the body budget"
    );
    assert!(admits <= server.max_connections);
    u64::try_from(admits).unwrap()
}

/// The most memory one instance uses: each sandbox at its limit, the zygote, the service's
/// bounded buffers (bodies being received, the queue's bodies, each execution's output and
/// result, as README.md's "Load, overload and shutdown" counts them) and its own resident
/// memory, plus what in-memory volumes may hold.
fn memory_needed(config: &Config, volumes: u64) -> u64 {
    let (server, limits) = (&config.server, &config.limits);
    let slots = u64::try_from(config.sandbox.concurrency()).unwrap();
    let queue = u64::try_from(config.sandbox.max_queue).unwrap();
    let wide = |bytes: usize| u64::try_from(bytes).unwrap();
    let buffers = wide(server.body_budget_bytes)
        + queue * wide(server.max_body_bytes)
        + slots * (2 * wide(limits.output_bytes) + wide(limits.result_bytes));
    let zygote = if config.sandbox.warm { ZYGOTE_BYTES } else { 0 };
    slots * limits.memory_bytes + zygote + buffers + SERVICE_RSS_BYTES + volumes
}

/// The startup probe waits out the worst start: the canary under `strict` and then under
/// `cloudrun` (to say why `strict` failed), each up to the time limit, and the zygote's start.
fn assert_startup_window(probe: &Value, config: &Config) {
    let seconds = |field: &str| probe[field].as_u64().unwrap_or(0);
    let window = Duration::from_secs(
        seconds("initialDelaySeconds") + seconds("periodSeconds") * seconds("failureThreshold"),
    );
    let zygote = if config.sandbox.warm {
        ZYGOTE_START_TIMEOUT
    } else {
        Duration::ZERO
    };
    let worst = 2 * config.limits.time_limit() + zygote;
    assert!(
        window >= worst,
        "the startup probe gives up after {window:?}, before the worst start ({worst:?})"
    );
}

/// `path` is the health check: on a sandbox that never started it answers 503
/// `sandbox_unavailable`, as only `GET /health` does.
async fn assert_reports_health(path: &str) {
    let router = router_only(|_| {});
    let request = Request::get(path).body(Body::empty()).unwrap();
    let (status, _, body) = oneshot(&router, request).await;
    assert_eq!(
        (status, error_code(&body), &body["status"]),
        (503, "sandbox_unavailable", &json!("unhealthy")),
        "the probe at {path} must report the sandbox's health"
    );
}

/// `path` answers OpenMetrics text.
async fn assert_serves_metrics(path: &str) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = Request::get(path).body(Body::empty()).unwrap();
    let response = router_only(|_| {}).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert!(text.ends_with(b"# EOF\n"), "a whole exposition");
}

/// Checks `objects` against the Kubernetes API's schemas for [`KUBERNETES_VERSION`] with
/// kubernetes-validate, offline. Strict: a field the API does not have fails, as a value of the
/// wrong type does. So does an object whose kind has no schema there, which the tool only warns
/// about (exiting 0): each object must pass. Errs with the tool's report.
fn api_schema_check(objects: &[Value]) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(KUBERNETES_VALIDATE)
        .args(["--kubernetes-version", KUBERNETES_VERSION, "--strict", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("{KUBERNETES_VALIDATE}: {error} (scripts/setup.sh installs it)")
        });
    // One YAML document per object, each written as JSON (which YAML reads as it is).
    let documents: Vec<String> = objects.iter().map(Value::to_string).collect();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(documents.join("\n---\n").as_bytes())
        .unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let version = KUBERNETES_VERSION.rsplit_once('.').unwrap().0;
    let passed = |line: &str| {
        line.starts_with("INFO - passed for resource ")
            && line.ends_with(&format!(" against version {version}"))
    };
    let lines: Vec<&str> = report.lines().collect();
    if output.status.success()
        && lines.len() == objects.len()
        && lines.iter().all(|line| passed(line))
    {
        Ok(())
    } else {
        Err(report)
    }
}

// Reading the manifests.

fn repo(path: impl AsRef<Path>) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn yaml(path: impl AsRef<Path>) -> Value {
    let path = repo(path);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn only_container(pod_spec: &Value) -> &Value {
    let containers = pod_spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// The container's literal environment (a value from elsewhere could not be checked here).
fn container_env(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|variable| {
            let value = variable["value"]
                .as_str()
                .unwrap_or_else(|| panic!("{variable}: values are strings, written out"));
            (
                variable["name"].as_str().unwrap().to_owned(),
                value.to_owned(),
            )
        })
        .collect()
}

/// The environment the image sets: the `ENV` instructions of the Dockerfile's last stage.
fn image_env() -> BTreeMap<String, String> {
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let joined = dockerfile.replace("\\\n", " ");
    let lines: Vec<&str> = joined.lines().map(str::trim).collect();
    let last_stage = lines
        .iter()
        .rposition(|line| line.starts_with("FROM "))
        .expect("a FROM");
    let mut env = BTreeMap::new();
    for line in &lines[last_stage..] {
        let Some(assignments) = line.strip_prefix("ENV ") else {
            continue;
        };
        for assignment in assignments.split_whitespace() {
            let (name, value) = assignment
                .split_once('=')
                .unwrap_or_else(|| panic!("ENV {assignments}: write NAME=value"));
            env.insert(name.to_owned(), value.trim_matches('"').to_owned());
        }
    }
    env
}

/// Loads the configuration as the service does from `env`. The image's paths under its
/// working directory `/app` (where the Dockerfile copies `config/`) are this repository's.
fn resolve(env: &BTreeMap<String, String>) -> Config {
    Config::load(|name| {
        let value = env.get(name)?.clone();
        match (name, value.strip_prefix("/app/")) {
            ("PYEXEC_CONFIG", Some(inside)) => Some(repo(inside).to_str().unwrap().to_owned()),
            _ => Some(value),
        }
    })
    .unwrap_or_else(|error| panic!("the service would not start: {error}"))
}

fn probe_path(probe: &Value) -> &str {
    probe["httpGet"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("an HTTP probe: {probe}"))
}

/// Every label `selector` asks for is on the pods.
fn assert_selects(selector: &Value, labels: &Value) {
    let selector = selector.as_object().expect("a selector");
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(&labels[key], value, "the pods carry {key}");
    }
}

/// A Kubernetes CPU quantity: `2`, `1.5` or `500m`.
fn cpus(quantity: &Value) -> f64 {
    let text = match quantity {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    match text.strip_suffix('m') {
        Some(millis) => millis.parse::<f64>().unwrap() / 1000.0,
        None => text.parse().unwrap(),
    }
}

/// A Kubernetes memory quantity in bytes: `2Gi`, `512Mi`, `1G` or plain bytes.
fn bytes(quantity: &Value) -> u64 {
    let text = quantity.as_str().expect("a quantity, as a string");
    let units: [(&str, u64); 6] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    units
        .iter()
        .find_map(|(suffix, unit)| {
            text.strip_suffix(suffix)
                .map(|number| number.parse::<u64>().unwrap() * unit)
        })
        .unwrap_or_else(|| text.parse().unwrap())
}

/// Applies a JSON patch (RFC 6902: add, remove, replace, test), as kustomize does.
fn json_patch(document: &mut Value, operations: &Value) {
    for operation in operations.as_array().expect("a list of operations") {
        let path = operation["path"].as_str().unwrap();
        let (parent, key) = path.rsplit_once('/').unwrap();
        let key = key.replace("~1", "/").replace("~0", "~");
        let value = operation["value"].clone();
        if operation["op"] == "test" {
            assert_eq!(document.pointer(path), Some(&value), "test of {path}");
            continue;
        }
        let Some(target) = document.pointer_mut(if operation["op"] == "replace" {
            path
        } else {
            parent
        }) else {
            panic!("{path} is not in the document");
        };
        match (operation["op"].as_str().unwrap(), target) {
            ("replace", target) => *target = value,
            ("add", Value::Object(map)) => {
                map.insert(key, value);
            }
            ("add", Value::Array(list)) if key == "-" => list.push(value),
            ("add", Value::Array(list)) => list.insert(key.parse().unwrap(), value),
            ("remove", Value::Object(map)) => {
                assert!(map.remove(&key).is_some(), "{path} is not in the document");
            }
            ("remove", Value::Array(list)) => {
                list.remove(key.parse().unwrap());
            }
            (other, _) => panic!("cannot {other} at {path}"),
        }
    }
}

/// What `systemd-analyze verify` says of the unit `text`, with its `ExecStart` pointed at the
/// binary built here (the check needs the program to exist): every error and warning.
fn systemd_verify(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("pyexec.service");
    let program = format!("ExecStart={}", env!("CARGO_BIN_EXE_pyexec"));
    std::fs::write(
        &unit,
        text.replace("ExecStart=/usr/local/bin/pyexec", &program),
    )
    .unwrap();
    let output = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd, installed by scripts/setup.sh)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        if output.status.success() {
            ""
        } else {
            "failed"
        }
    )
}

/// The systemd unit is one systemd takes without a word, and hands the service its cgroup
/// subtree (`tests/cgroup_v2.rs` runs the service in that shape); a misspelt key is caught.
#[test]
fn the_systemd_unit_is_valid_and_delegates() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/pyexec.service")).unwrap();
    assert!(unit.lines().any(|line| line == "Delegate=yes"), "{unit}");
    assert!(
        unit.lines().any(|line| line == "KillMode=control-group"),
        "{unit}"
    );
    assert_eq!(systemd_verify(&unit), "");
    let misspelt = systemd_verify(&unit.replace("Delegate=yes", "Delegat=yes"));
    assert!(misspelt.contains("Unknown key 'Delegat'"), "{misspelt}");
}
