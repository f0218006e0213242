//! Load, faults and hostile clients against the real service, nsjail and sandbox Python, on
//! loopback only: admission control, cancellation, slow clients, a sandbox that breaks or is
//! killed while running, a full disk, graceful shutdown.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{error_code, spawn_app, spawn_app_with};
use pyexec::config::ProfileChoice;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SLEEP: &str = "import time\ndef main():\n    time.sleep({SECONDS})\n    return 'slept'\n";

fn sleep_for(seconds: f64) -> String {
    SLEEP.replace("{SECONDS}", &seconds.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_far_above_the_limit_gets_only_200s_and_503s_at_once() {
    let app = spawn_app_with(|config| {
        config.sandbox.max_concurrency = 2;
        config.sandbox.max_queue = 4;
    })
    .await;
    let script = sleep_for(0.3);
    let started = Instant::now();
    let requests = (0..60).map(|_| {
        let request = app
            .client
            .post(app.url("/execute"))
            .json(&json!({ "script": script }));
        async move {
            let response = request.send().await.expect("no connection error");
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let (status, body) = common::read(response).await;
            (status, body, retry_after)
        }
    });
    let answers = futures::future::join_all(requests).await;
    let mut by_status = BTreeMap::new();
    for (status, body, retry_after) in &answers {
        *by_status.entry(*status).or_insert(0) += 1;
        match status {
            200 => assert_eq!(body["result"], "slept"),
            503 => {
                assert_eq!(error_code(body), "busy", "{body}");
                assert_eq!(retry_after.as_deref(), Some("1"));
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    eprintln!(
        "burst: 60 requests against 2 sandboxes and a queue of 4: {by_status:?} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        by_status[&200] >= 6,
        "2 running + 4 queued at least: {by_status:?}"
    );
    assert!(by_status[&503] >= 30, "{by_status:?}");
    // The refusals came at once: the whole burst took about as long as the admitted work.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(app.processes_left().await.is_empty());
}

#[tokio::test]
async fn a_request_that_waits_too_long_for_a_sandbox_gets_503() {
    let app = spawn_app_with(|config| {
        config.sandbox.max_concurrency = 1;
        config.sandbox.queue_timeout_ms = 300;
    })
    .await;
    let long = app.spawn_execute(&sleep_for(2.0));
    app.wait_for_sandboxes(1).await;
    let (status, body) = app.execute("def main():\n    return 1\n").await;
    assert_eq!((status, error_code(&body)), (503, "busy"), "{body}");
    // Which limit refused it (the queue timeout) is logged; the body says busy's sentence.
    assert_eq!(
        body["error"], "the service is busy; retry shortly",
        "{body}"
    );
    assert_eq!(long.await.unwrap().0, 200);
}

/// Sends `head` and then `body` one byte every `every`, in a task of its own; the answer's first
/// line arrives when the task ends (empty if the server hung up without one).
fn trickle(
    addr: std::net::SocketAddr,
    body_len: usize,
    every: Duration,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let sender = tokio::spawn(async move {
            for _ in 0..body_len {
                if writer.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
        let mut answer = Vec::new();
        let _ = reader.read_to_end(&mut answer).await;
        sender.abort();
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    })
}

/// Whether the server closes `stream` (without an answer) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buffer)).await {
            Err(_elapsed) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_trickled_body_is_cut_off_at_the_whole_body_deadline() {
    let app = spawn_app_with(|config| config.server.body_read_timeout_ms = 600).await;
    let started = Instant::now();
    // 4,000 bytes at a byte every 100 ms: each chunk is quick, the whole is not.
    let answer = trickle(app.addr, 4000, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_hold_no_sandbox_and_no_queue_place() {
    let app = spawn_app_with(|config| {
        config.sandbox.max_concurrency = 1;
        config.sandbox.max_queue = 0;
        config.server.body_read_timeout_ms = 4000;
    })
    .await;
    let tricklers: Vec<_> = (0..8)
        .map(|_| trickle(app.addr, 4000, Duration::from_millis(200)))
        .collect();
    let (status, body) = app.execute("def main():\n    return 'through'\n").await;
    assert_eq!(
        (status, &body["result"]),
        (200, &json!("through")),
        "{body}"
    );
    for trickler in tricklers {
        let answer = trickler.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_beyond_the_budget_are_refused_at_once() {
    let app = spawn_app_with(|config| {
        config.server.max_body_bytes = 200_000;
        config.server.body_budget_bytes = 200_000;
        config.server.body_read_timeout_ms = 3000;
    })
    .await;
    // Two bodies that each announce more than half the budget and trickle: whichever comes
    // second cannot have room, and is told so before sending its body.
    let started = Instant::now();
    let first = trickle(app.addr, 150_000, Duration::from_millis(100));
    let second = trickle(app.addr, 150_000, Duration::from_millis(100));
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    let mut answers = [first.as_str(), second.as_str()];
    answers.sort_unstable();
    assert!(
        answers[0].starts_with("HTTP/1.1 408") && answers[1].starts_with("HTTP/1.1 503"),
        "{answers:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    // The room comes back: a small body fits.
    assert_eq!(app.execute("def main():\n    return 1\n").await.0, 200);
}

#[tokio::test]
async fn a_connection_that_brings_no_request_is_closed_at_the_deadline() {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // An empty SETTINGS frame: the h2c preface is complete, then nothing.
    const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let app = spawn_app_with(|config| config.server.header_read_timeout_ms = 300).await;
    let cases: [(&str, Vec<u8>); 3] = [
        ("nothing", Vec::new()),
        ("23 bytes of the HTTP/2 preface", PREFACE[..23].to_vec()),
        ("the h2c preface and SETTINGS", [PREFACE, SETTINGS].concat()),
    ];
    for (what, sent) in cases {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(&sent).await.unwrap();
        assert!(
            closed_within(&mut stream, Duration::from_secs(3)).await,
            "{what}: still open"
        );
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let app = spawn_app_with(|config| config.server.idle_timeout_ms = 300).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0; 4096];
    let n = stream.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await);
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_503_at_once_and_idle_ones_are_reclaimed() {
    let app = spawn_app_with(|config| {
        config.server.max_connections = 20;
        config.server.header_read_timeout_ms = 1000;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let mut refused = TcpStream::connect(app.addr).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(2), refused.read_to_string(&mut answer))
        .await
        .expect("answered at once")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"code\":\"busy\""), "{answer}");
    // The idle ones are closed at their deadline, and the service answers again.
    let reclaimed = || async {
        reqwest::get(app.url("/health"))
            .await
            .is_ok_and(|response| response.status() == 200)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !reclaimed().await {
        assert!(Instant::now() < deadline, "still refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(idle);
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_execution() {
    let app = spawn_app_with(|config| config.sandbox.max_concurrency = 1).await;
    let body = json!({ "script": sleep_for(30.0) }).to_string();
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Wait until the jail runs, then hang up.
    app.wait_for_sandboxes(1).await;
    drop(stream);
    let left = app.processes_left().await;
    assert!(
        left.is_empty(),
        "the sandbox was killed when the client left: {left:?}"
    );
    // And its only slot is free again.
    let started = Instant::now();
    let (status, _) = app.execute("def main():\n    return 1\n").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let app = spawn_app_with(|config| config.server.header_read_timeout_ms = 300).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /execute HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "the server closed the connection");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_body_gets_408() {
    let app = spawn_app_with(|config| config.server.body_read_timeout_ms = 300).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = "POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"scr";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0; 4096];
        while !String::from_utf8_lossy(&buffer).contains("\"code\"") {
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&buffer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
}

#[tokio::test]
async fn nsjail_disappearing_while_running_is_503_not_500() {
    let dir = tempfile::tempdir().unwrap();
    let nsjail = dir.path().join("nsjail");
    std::os::unix::fs::symlink("/opt/pyexec/bin/nsjail", &nsjail).unwrap();
    // The cold path, which starts nsjail for every execution (the warm path's zygote keeps
    // running without the file; its own failure is the next test's).
    let app = spawn_app_with(|config| {
        config.sandbox.nsjail.clone_from(&nsjail);
        config.sandbox.warm = false;
    })
    .await;
    assert_eq!(app.execute("def main():\n    return 1\n").await.0, 200);
    std::fs::remove_file(&nsjail).unwrap();
    let (status, body) = app.execute("def main():\n    return 1\n").await;
    assert_eq!(
        (status, error_code(&body)),
        (503, "sandbox_unavailable"),
        "{body}"
    );
    // Why (nsjail is gone, at which path) is the log's and /health's, never the caller's.
    assert_eq!(
        body["error"], "the sandbox is unavailable; retry shortly",
        "{body}"
    );
    let (status, body) = app.get("/health").await;
    assert_eq!(
        (status, error_code(&body)),
        (503, "sandbox_unavailable"),
        "{body}"
    );
    assert!(app.leftovers_after_sweeps().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zygote_killed_from_outside_costs_no_request_and_comes_back() {
    let app = spawn_app().await;
    assert!(app.warm, "the warm path runs");
    let zygote = app.uids.start - app.uids.start % 1000 + 999;
    let pids: Vec<i32> = common::processes_of(zygote)
        .iter()
        .map(|process| process.split(':').next().unwrap().parse().unwrap())
        .collect();
    assert!(!pids.is_empty(), "the zygote runs as the block's last uid");
    for pid in pids {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    // Meanwhile scripts run cold; then the warm path is back.
    for _ in 0..3 {
        let (status, body) = app
            .execute("def main():\n    return 'still served'\n")
            .await;
        assert_eq!(
            (status, &body["result"]),
            (200, &json!("still served")),
            "{body}"
        );
    }
    let back = common::wait_until(|| !common::processes_of(zygote).is_empty()).await;
    assert!(back, "a new zygote started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_killed_from_outside_fails_only_its_own_request() {
    let app = spawn_app_with(|config| config.sandbox.max_concurrency = 2).await;
    // The script waits in a child of its own: once that child shows on the host, the harness
    // has run the script, so what is killed is a running script, not a starting interpreter.
    let victim = app.spawn_execute(
        "import subprocess\ndef main():\n    subprocess.run(['/bin/sleep', '20'])\n    return 'woke'\n",
    );
    let sleeping = || {
        app.uids
            .clone()
            .flat_map(common::processes_of)
            .any(|process| process.ends_with("Name:\tsleep"))
    };
    assert!(common::wait_until(sleeping).await, "the script never ran");
    let bystander = app.spawn_execute(&sleep_for(0.5));
    let pids: Vec<i32> = app
        .uids
        .clone()
        .flat_map(common::processes_of)
        .filter(|process| !process.ends_with("Name:\tsleep"))
        .map(|process| process.split(':').next().unwrap().parse().unwrap())
        .collect();
    for pid in pids {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let (status, body) = victim.await.unwrap();
    assert_eq!(
        (status, error_code(&body)),
        (400, "script_crashed"),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("SIGKILL"),
        "{body}"
    );
    let (status, body) = bystander.await.unwrap();
    assert_eq!((status, &body["result"]), (200, &json!("slept")), "{body}");
}

#[tokio::test]
async fn a_full_disk_is_503() {
    // Without a mount namespace (cloudrun) an execution makes its directory on the work disk;
    // a namespaced one writes nothing there at all, so a full disk costs it nothing.
    for profile in [ProfileChoice::CloudRun, ProfileChoice::Strict] {
        let mount = TmpfsMount::new(256 * 1024);
        let app = spawn_app_with(|config| {
            config.sandbox.profile = profile;
            config.sandbox.work_root = mount.path().to_owned();
            config.sandbox.warm = false;
        })
        .await;
        assert_eq!(app.execute("def main():\n    return 1\n").await.0, 200);
        assert!(app.leftovers_after_sweeps().await.is_empty());
        // The disk fills up while the service runs: every inode taken.
        let filler = mount.path().join("filler");
        std::fs::create_dir(&filler).unwrap();
        for n in 0.. {
            if std::fs::write(filler.join(n.to_string()), "").is_err() {
                break;
            }
        }
        let (status, body) = app.execute("def main():\n    return 1\n").await;
        if profile == ProfileChoice::Strict {
            assert_eq!(status, 200, "{body}");
            continue;
        }
        assert_eq!(
            (status, error_code(&body)),
            (503, "sandbox_unavailable"),
            "{body}"
        );
        // "No space left", and on which path, is the log's.
        assert_eq!(
            body["error"], "the sandbox is unavailable; retry shortly",
            "{body}"
        );
        drop(app);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_runs_queued_requests_within_the_grace() {
    let mut app = spawn_app_with(|config| {
        config.sandbox.max_concurrency = 1;
        config.server.shutdown_grace_ms = 8000;
    })
    .await;
    let requests: Vec<_> = (0..3).map(|_| app.spawn_execute(&sleep_for(1.0))).collect();
    app.wait_for_sandboxes(1).await;
    app.shutdown.take().unwrap().send(()).unwrap();
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!((status, &body["result"]), (200, &json!("slept")), "{body}");
    }
    tokio::time::timeout(Duration::from_secs(5), &mut app.server)
        .await
        .unwrap()
        .unwrap();
}

/// The grace is far longer than what the quick request has left, so it finishes within it
/// however busy the machine is; the slow one cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish_then_stops_the_rest() {
    let grace = Duration::from_secs(4);
    let mut app = spawn_app_with(|config| {
        config.sandbox.max_concurrency = 2;
        config.server.shutdown_grace_ms = u64::try_from(grace.as_millis()).unwrap();
    })
    .await;
    let quick = app.spawn_execute(&sleep_for(0.8));
    let slow = app.spawn_execute(&sleep_for(30.0));
    app.wait_for_sandboxes(2).await;
    let started = Instant::now();
    app.shutdown.take().unwrap().send(()).unwrap();
    let (status, body) = quick.await.unwrap();
    assert_eq!(
        (status, &body["result"]),
        (200, &json!("slept")),
        "finished within the grace: {body}"
    );
    let (status, body) = slow.await.unwrap();
    assert_eq!(
        (status, error_code(&body)),
        (503, "shutting_down"),
        "{body}"
    );
    tokio::time::timeout(Duration::from_secs(5), &mut app.server)
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(
        took + Duration::from_millis(100) >= grace && took < grace + Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        TcpStream::connect(app.addr).await.is_err(),
        "no longer accepting"
    );
    assert!(app.processes_left().await.is_empty());
    assert!(app.leftovers_after_sweeps().await.is_empty());
}

/// A small tmpfs, unmounted on drop (also when the test fails).
struct TmpfsMount(tempfile::TempDir);

impl TmpfsMount {
    fn new(bytes: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},nr_inodes=4096"),
                "pyexec-test",
                dir.path().to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        Self(dir)
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}
