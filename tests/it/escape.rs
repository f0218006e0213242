//! The escape suite: one small attack per case (the table is `common::escape_cases`, shared
//! with the image test), each run through the real service, nsjail and sandbox Python, in the
//! `strict` profile, in `cloudrun` with cgroups, and in `cloudrun` with rlimits only (what Cloud
//! Run's first generation allows). Each case states the outcome it expects per profile next to
//! its script; SECURITY.md's table is checked against these expectations, so the docs cannot
//! drift from the code. After every case the service must still answer a plain script, and no
//! process, file or cgroup of the execution may remain.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use crate::common;

use std::collections::BTreeSet;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixListener};
use std::path::{Path, PathBuf};

use common::escape_cases::{self, Placeholders, cases, mismatch};
use common::{TestApp, spawn_app_with};
use pyexec::config::{Profile, ProfileChoice};

/// Small limits, so the bombs hit them fast. The time limit leaves the CPU limit (1 s) reachable
/// on a busy machine: with both cores taken by other work, `burn_cpu` got under half a CPU and
/// met a 2 s time limit first.
async fn escape_app(profile: ProfileChoice, cgroups: bool, warm: bool) -> TestApp {
    let app = spawn_app_with(|config| {
        config.sandbox.profile = profile;
        config.sandbox.cgroups = cgroups;
        config.sandbox.warm = warm;
        config.sandbox.max_concurrency = 2;
        let limits = &mut config.limits;
        limits.time_limit_ms = 6000;
        limits.cpu_secs = 1;
        limits.memory_bytes = 256 << 20;
        limits.processes = 32;
        limits.tmp_bytes = 16 << 20;
        limits.file_bytes = 32 << 20;
        limits.result_bytes = 1 << 20;
    })
    .await;
    assert_eq!(app.warm, warm, "the suite runs on the path it names");
    app
}

fn values(app: &TestApp) -> Placeholders {
    Placeholders {
        service_pid: std::process::id(),
        service_port: app.addr.port(),
        nonce: app.uids.start,
        unix_socket: unix_socket_name(app),
        // Well within the suite's time limit.
        hold_secs: 2.0,
    }
}

fn fill(script: &str, app: &TestApp, before: &str) -> String {
    escape_cases::fill(script, &values(app), before)
}

/// The name of the Unix sockets the suite listens on, abstract and in the host's `/tmp`.
fn unix_socket_name(app: &TestApp) -> String {
    format!("pyexec-escape-{}.sock", app.uids.start)
}

/// Host Unix sockets a script must not reach: one abstract (no permission check at all) and
/// one on disk that anybody may connect to. Both accept (into the backlog) while they live.
struct HostUnixSockets {
    _abstract: UnixListener,
    _on_disk: UnixListener,
    path: PathBuf,
}

impl HostUnixSockets {
    fn listen(app: &TestApp) -> Self {
        let name = unix_socket_name(app);
        let address = UnixSocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let path = Path::new("/tmp").join(&name);
        let _ = std::fs::remove_file(&path);
        let on_disk = UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        Self {
            _abstract: UnixListener::bind_addr(&address).unwrap(),
            _on_disk: on_disk,
            path,
        }
    }
}

impl Drop for HostUnixSockets {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn run_suite(app: TestApp) {
    run_cases(&app).await;
    // Every execution of the suite ran on the path it names: a warm child that fails falls
    // back to cold with the same answer, so the answers alone cannot tell.
    let paths = app.paths_run().await;
    let other = if app.warm { "cold" } else { "warm" };
    assert_eq!(
        paths.get(other),
        None,
        "executions on the {other} path: {paths:?}"
    );
}

async fn run_cases(app: &TestApp) {
    let mounts_before = host_mounts();
    let _sockets = HostUnixSockets::listen(app);
    let mut failures = Vec::new();
    for case in cases() {
        let expect = if app.profile == Profile::Strict {
            case.strict
        } else {
            case.cloudrun
        };
        let before = match case.before {
            Some(script) => {
                let (status, body) = app.execute(&fill(script, app, "")).await;
                assert_eq!(
                    status, 200,
                    "{}: the first execution failed: {body}",
                    case.name
                );
                body["result"].as_str().unwrap().to_owned()
            }
            None => String::new(),
        };
        let neighbour = match &case.during {
            Some(spec) => match spec
                .start(&app.client, &app.url("/execute"), &values(app))
                .await
            {
                Ok(events) => Some((spec, events)),
                Err(problem) => {
                    failures.push(format!("{}: {problem}", case.name));
                    continue;
                }
            },
            None => None,
        };
        let (status, body) = app.execute(&fill(case.script, app, &before)).await;
        if let Some(problem) = mismatch(expect, status, &body) {
            failures.push(format!("{}: {problem}", case.name));
        }
        if let Some((spec, events)) = neighbour
            && let Some(harm) = spec.harm(events).await
        {
            failures.push(format!("{}: {harm}", case.name));
        }
        let (status, body) = app.execute("def main():\n    return 'still fine'\n").await;
        if status != 200 || body["result"] != "still fine" {
            failures.push(format!("{}: the service broke: {status} {body}", case.name));
        }
        let left = app.processes_left().await;
        if !left.is_empty() {
            failures.push(format!(
                "{}: processes outlived the execution: {left:?}",
                case.name
            ));
        }
    }
    common::wait_until(|| app.leftovers().is_empty() && app.leftover_cgroups().is_empty()).await;
    let leftovers = app.leftovers();
    assert!(
        leftovers.is_empty(),
        "execution directories left: {leftovers:?}"
    );
    assert_eq!(
        host_mounts(),
        mounts_before,
        "the host's mount table changed"
    );
    let cgroups = app.leftover_cgroups();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    assert!(
        failures.is_empty(),
        "{} profile:\n{}",
        app.profile.name(),
        failures.join("\n")
    );
}

fn host_mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/1/mountinfo")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

// Each profile twice: the warm path (a child of the zygote) and the cold one (a jail of its own).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_suite_strict() {
    let app = escape_app(ProfileChoice::Strict, true, true).await;
    assert_eq!(app.profile, Profile::Strict);
    run_suite(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_suite_strict_cold() {
    let app = escape_app(ProfileChoice::Strict, true, false).await;
    assert_eq!(app.profile, Profile::Strict);
    run_suite(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_suite_cloudrun() {
    run_suite(escape_app(ProfileChoice::CloudRun, true, true).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_suite_cloudrun_cold() {
    run_suite(escape_app(ProfileChoice::CloudRun, true, false).await).await;
}

/// Cloud Run's first generation: no namespaces and no cgroups, rlimits only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_suite_cloudrun_without_cgroups() {
    run_suite(escape_app(ProfileChoice::CloudRun, false, true).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_suite_cloudrun_without_cgroups_cold() {
    run_suite(escape_app(ProfileChoice::CloudRun, false, false).await).await;
}

#[test]
fn security_md_states_every_case_with_its_outcomes() {
    let security =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/SECURITY.md")).unwrap();
    let mut missing = Vec::new();
    for case in cases() {
        let row = security
            .lines()
            .find(|line| line.starts_with(&format!("| `{}` |", case.name)));
        let cells: Vec<&str> = row
            .map(|row| row.split('|').map(str::trim).collect())
            .unwrap_or_default();
        let (strict, cloudrun) = (case.strict.to_string(), case.cloudrun.to_string());
        if cells.len() < 5 || cells[3] != strict || cells[4] != cloudrun {
            missing.push(format!(
                "| `{}` | <claim> | {strict} | {cloudrun} |",
                case.name
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "SECURITY.md lacks or misstates these rows:\n{}",
        missing.join("\n")
    );
}

/// SECURITY.md's table of what differs under gVisor states exactly the outcomes the image
/// test expects there, with the reason.
#[test]
fn security_md_states_what_differs_under_gvisor() {
    let security =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/SECURITY.md")).unwrap();
    let table: Vec<&str> = security
        .lines()
        .skip_while(|line| !line.starts_with("| case | under gVisor | why |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .collect();
    let expected: Vec<String> = common::escape_cases::GVISOR_DIFFERS
        .iter()
        .map(|(name, outcome, why)| format!("| `{name}` | {outcome} | {why} |"))
        .collect();
    assert_eq!(table, expected, "SECURITY.md's gVisor table");
}

/// Every proof SECURITY.md's guarantee table names exists: an escape case, or a test function
/// in the file it names (`tests/it/data.rs` `name`, `src/harness/test_harness.py`
/// `Class.test_name`), so no claim points at a test that is gone.
#[test]
fn security_md_names_only_proofs_that_exist() {
    let root = env!("CARGO_MANIFEST_DIR");
    let security = std::fs::read_to_string(format!("{root}/SECURITY.md")).unwrap();
    let cases: BTreeSet<&str> = cases().iter().map(|case| case.name).collect();
    let table = security
        .lines()
        .skip_while(|line| !line.starts_with("| guarantee |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'));
    let mut checked = 0;
    let mut missing = Vec::new();
    for row in table {
        let proofs = row.trim_end_matches('|').rsplit('|').next().unwrap();
        // Names are in backticks; a file name in backticks applies to the names after it.
        let mut file: Option<String> = None;
        for (index, name) in proofs.split('`').enumerate() {
            if index % 2 == 0 {
                if name.contains(';') {
                    file = None;
                }
                continue;
            }
            let extension = std::path::Path::new(name).extension();
            if extension.is_some_and(|extension| extension == "rs" || extension == "py") {
                file = Some(name.to_owned());
                continue;
            }
            checked += 1;
            let found = match &file {
                None => cases.contains(name),
                Some(file) => {
                    let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
                    let function = name.rsplit('.').next().unwrap();
                    text.contains(&format!("fn {function}("))
                        || text.contains(&format!("def {function}("))
                }
            };
            if !found {
                missing.push(format!(
                    "{} {name}",
                    file.as_deref().unwrap_or("escape case")
                ));
            }
        }
    }
    assert!(checked > 30, "read {checked} proofs");
    assert!(
        missing.is_empty(),
        "SECURITY.md names proofs that do not exist: {missing:?}"
    );
}

/// What a fork cannot renew: the hash secret, the address layout (libc, heap, stack) and the
/// `AT_RANDOM` bytes (the stack canary, glibc's pointer guard). SECURITY.md documents that the
/// children of one zygote share them; these are exactly the names `same_state_...` leaves out.
const SHARED_PROBE: &str = r#"
import ctypes, json, struct
def main():
    maps = open("/proc/self/maps").read().splitlines()
    start = lambda word: next((line.split("-")[0] for line in maps if word in line), None)
    auxv = open("/proc/self/auxv", "rb").read()
    pairs = struct.iter_unpack("QQ", auxv)
    at_random = next(value for key, value in pairs if key == 25)
    return json.dumps({
        "hash secret": hash("pyexec"),
        "libc": start("libc.so"),
        "heap": start("[heap]"),
        "stack": start("[stack]"),
        "AT_RANDOM": ctypes.string_at(at_random, 16).hex(),
    })
"#;

/// The children of one zygote share `SHARED_PROBE`'s values, at most
/// `sandbox.zygote_max_executions` of them: then a fresh zygote takes over and every value is
/// new; cold executions share none of it. In both profiles.
#[tokio::test]
async fn what_a_fork_cannot_renew_is_shared_by_one_zygote_s_children_only() {
    for profile in [ProfileChoice::Strict, ProfileChoice::CloudRun] {
        let cold = escape_app(profile, true, false).await;
        let (first, second) = (probe_shared(&cold).await, probe_shared(&cold).await);
        for (name, value) in &first {
            assert_ne!(
                second.get(name),
                Some(value),
                "{profile:?} cold: {name} is shared"
            );
        }

        let app = spawn_app_with(|config| {
            config.sandbox.profile = profile;
            config.sandbox.max_concurrency = 1;
            config.sandbox.zygote_max_executions = 4;
        })
        .await;
        assert!(app.warm);
        // The canary took the zygote's first fork; these its second and third.
        let (first, second) = (probe_shared(&app).await, probe_shared(&app).await);
        assert_eq!(
            first, second,
            "{profile:?}: children of one zygote share them"
        );
        // Within the bound, a fresh zygote's children share none of the old one's.
        let mut renewed = None;
        for _ in 0..50 {
            let now = probe_shared(&app).await;
            if first
                .iter()
                .all(|(name, value)| now.get(name) != Some(value))
                && probe_shared(&app).await == now
            {
                renewed = Some(now);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            renewed.is_some(),
            "{profile:?}: no fresh zygote took over after 4 executions"
        );
    }
}

async fn probe_shared(app: &TestApp) -> std::collections::BTreeMap<String, serde_json::Value> {
    let (status, body) = app.execute(SHARED_PROBE).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(body["result"].as_str().unwrap()).unwrap()
}

/// Everything a script can learn about the jail it runs in: its ids, every capability set,
/// its mounts, rlimits, environment, working directory, open descriptors, seccomp and
/// `no_new_privs`, its session, umask, hostname and the root's listing.
const JAIL_PROBE: &str = r#"
import ctypes, json, os, resource
def main():
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    keep = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "Seccomp", "NoNewPrivs"]
    mounts = []
    for line in open("/proc/self/mountinfo").read().splitlines():
        left, right = line.split(" - ")
        fields = left.split()
        options = sorted(set(fields[5].split(",")) & {"ro", "rw", "nosuid", "nodev", "noexec"})
        mounts.append([fields[4], right.split()[0], ",".join(options)])
    fds = {}
    for fd in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        fds[fd] = target.split(":")[0] if ":" in target else target
    limits = {name: resource.getrlimit(getattr(resource, name))
              for name in sorted(dir(resource)) if name.startswith("RLIMIT_")}
    umask = os.umask(0o077)
    return json.dumps({
        "ids": [os.getresuid(), os.getresgid(), os.getgroups()],
        "status": {key: status.get(key, "").strip() for key in keep},
        "no_new_privs": ctypes.CDLL(None).prctl(39, 0, 0, 0, 0),
        "mounts": sorted(mounts),
        "rlimits": limits,
        "env": dict(sorted(os.environ.items())),
        "cwd": os.getcwd(),
        "fds": fds,
        "session_leader": os.getsid(0) == os.getpid(),
        "group_leader": os.getpgid(0) == os.getpid(),
        "pid_1": os.getpid() == 1,
        "umask": oct(umask),
        "hostname": os.uname().nodename,
        "root": sorted(os.listdir("/")),
        "tmpdir": [oct(os.stat(os.environ["TMPDIR"]).st_mode), os.stat(os.environ["TMPDIR"]).st_uid],
    }, sort_keys=True)
"#;

/// Warm and cold are one jail: the probe reads the same in both, per profile (with and without
/// cgroups), but for what names the execution itself (its slot's uid, its directory).
#[tokio::test]
async fn the_jail_is_the_same_warm_and_cold() {
    for (profile, cgroups) in [
        (ProfileChoice::Strict, true),
        (ProfileChoice::CloudRun, true),
        (ProfileChoice::CloudRun, false),
    ] {
        let mut seen = Vec::new();
        for warm in [true, false] {
            let app = escape_app(profile, cgroups, warm).await;
            let (status, body) = app.execute(JAIL_PROBE).await;
            assert_eq!(status, 200, "{body}");
            let path = if warm { "warm" } else { "cold" };
            assert_eq!(app.paths_run().await.keys().collect::<Vec<_>>(), [path]);
            seen.push(normalized(&app, body["result"].as_str().unwrap()));
        }
        let (warm, cold) = (&seen[0], &seen[1]);
        let differs: Vec<String> = warm
            .as_object()
            .unwrap()
            .iter()
            .filter(|(key, value)| cold.get(key.as_str()) != Some(value))
            .map(|(key, value)| format!("{key}: warm {value}, cold {}", cold[key.as_str()]))
            .collect();
        assert!(
            differs.is_empty(),
            "{profile:?} cgroups={cgroups}:\n{}",
            differs.join("\n")
        );
    }
}

/// The probe's JSON with the execution's own names replaced: a slot uid (host, or inside a
/// user namespace) by `SLOT`, its directory on the host by `WORKDIR`.
fn normalized(app: &TestApp, probe: &str) -> serde_json::Value {
    let mut value: serde_json::Value = serde_json::from_str(probe).unwrap();
    let cwd = value["cwd"].as_str().unwrap().to_owned();
    let workdir = cwd.find("/run-").map(|at| {
        let end = cwd[at + 1..]
            .find('/')
            .map_or(cwd.len(), |slash| at + 1 + slash);
        cwd[..end].to_owned()
    });
    let slots = app.uids.clone();
    let inner = 1..=u32::try_from(slots.len()).unwrap();
    let slot = |number: &mut serde_json::Value| {
        let raw = u32::try_from(number.as_u64().unwrap()).unwrap();
        if slots.contains(&raw) || inner.contains(&raw) {
            *number = "SLOT".into();
        }
    };
    for id in value["ids"].as_array_mut().unwrap().iter_mut().take(2) {
        id.as_array_mut().unwrap().iter_mut().for_each(slot);
    }
    slot(&mut value["tmpdir"][1]);
    let mut text = value.to_string();
    if let Some(workdir) = workdir {
        text = text.replace(&workdir, "WORKDIR");
    }
    serde_json::from_str(&text).unwrap()
}
