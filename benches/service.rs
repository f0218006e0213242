//! `make bench`: how fast the service runs scripts, measured in one run against baselines
//! measured in the same run (this machine is shared and noisy: only ratios travel).
//!
//! - Baselines: the exact cold jail of an execution (profile flags, slot uid, directory,
//!   cgroup), spawned directly, running `python -I -S -c pass` (B0) and `python -I -c "import
//!   numpy, pandas"` (B1), one at a time and 8 at once.
//! - The service binary over HTTP on loopback: five workloads at 1, 2 and 8 clients, with the
//!   warm path on and off: p50, p99, executions per second, and ratios to B0/B1.
//! - Where one execution's time goes, phase by phase, from the service's own log.
//! - The service's RSS idle and under load, and the warm path's own memory.
//! - F0, the floor: `fork()` + `unshare(mount, IPC, UTS, net)` + `_exit` + `waitpid` from a
//!   process holding the zygote's modules (`benches/floor.py`), and the targets held against it.
//! - Where the CPU goes at 8 clients: the service's, the jail's, the client's, the kernel's.
//! - How cost grows: 32 clients against the default queue, large output, result and files.
//! - What zygote rotation costs: `return 1` with a fresh zygote every 50 executions beside the
//!   default (1000), and how long a zygote takes to start.
//!
//! Writes BENCHMARKS.md. Not a test: nothing here fails on speed. `PYEXEC_BENCH_SECONDS` sets
//! each row's length (default 4).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    reason = "a benchmark: it reports, and a failed unwrap is a failed run"
)]

#[path = "../tests/common/mod.rs"]
mod common;
mod cpu;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::guest::{Guest, Instance, Shape};
use common::service::Service;
use pyexec::config::{Config, ProfileChoice};
use pyexec::sandbox::Sandbox;
use serde_json::{Value, json};

const B0: &[&str] = &["-I", "-S", "-c", "pass"];
const B1: &[&str] = &["-I", "-c", "import numpy, pandas"];
const CLIENTS: [usize; 3] = [1, 2, 8];

/// Latencies of one measurement and how long it took in all.
struct Sample {
    latencies: Vec<Duration>,
    wall: Duration,
    /// Answers other than 200 (only the growth rows allow any: `503 busy` beyond the queue).
    refused: usize,
}

impl Sample {
    /// The latency below which `per_mille` thousandths of the sample fall.
    fn percentile(&self, per_mille: usize) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        sorted[(sorted.len() - 1) * per_mille / 1000]
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

struct Workload {
    name: &'static str,
    script: String,
    /// Which baseline it is held against.
    baseline: &'static str,
}

fn workloads() -> Vec<Workload> {
    let head = "def main():\n    return 1\n#";
    let big = format!("{head}{}", "x".repeat(100 * 1024 - head.len()));
    vec![
        Workload {
            name: "`return 1`",
            script: "def main():\n    return 1\n".to_owned(),
            baseline: "B0",
        },
        Workload {
            name: "numpy",
            script: "import numpy as np\ndef main():\n    a = np.arange(100_000)\n    return int((a * a).sum())\n".to_owned(),
            baseline: "B1",
        },
        Workload {
            name: "pandas DataFrame",
            script: "import numpy as np, pandas as pd\ndef main():\n    df = pd.DataFrame({'a': np.arange(1000), 'b': np.arange(1000) % 7})\n    sums = df.groupby('b')['a'].sum()\n    return {str(k): int(v) for k, v in sums.items()}\n".to_owned(),
            baseline: "B1",
        },
        Workload {
            name: "100 KiB script",
            script: big,
            baseline: "B0",
        },
        Workload {
            name: "prints 1 MiB",
            script: "import sys\ndef main():\n    sys.stdout.write('x' * (1 << 20))\n    return 1\n".to_owned(),
            baseline: "B0",
        },
    ]
}

#[tokio::main]
async fn main() {
    let seconds: f64 = std::env::var("PYEXEC_BENCH_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(4.0);
    let row = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut report = Report::new();

    println!("baselines ...");
    let floor = floor();
    println!("  F0: p50 {:.2} ms, {:.2} ms CPU", floor.wall, floor.cpu);
    report.floor = Some(floor);
    let baselines = baselines().await;
    for (name, (sequential, parallel)) in &baselines {
        report.baseline(name, sequential, parallel);
    }

    for warm in [false, true] {
        println!("service, warm path {} ...", if warm { "on" } else { "off" });
        let service = Service::start(
            &format!("profile = \"strict\"\nwarm = {warm}\nmax_concurrency = 0\n"),
            &[("RUST_LOG", "info,pyexec::phases=debug")],
        );
        let client = reqwest::Client::new();
        for workload in workloads() {
            // Warm up: the first executions fill caches.
            run_for(
                &service.url(),
                &client,
                &workload.script,
                1,
                Duration::from_millis(500),
            )
            .await;
        }
        let idle_rss = rss_kib(service.pid());
        service.events.lock().unwrap().clear();
        let mut peak_rss = idle_rss;
        let group = cpu::Group::around(service.pid());
        for workload in workloads() {
            for clients in CLIENTS {
                let body = json!({ "script": workload.script });
                let meter = cpu::Meter::start(service.pid(), group.as_ref());
                let (sample, peak) = run_sampling_rss(&service, &client, &body, clients, row).await;
                assert_eq!(sample.refused, 0, "every answer is 200");
                if clients == 8 {
                    report.cpu(workload.name, warm, meter.finish(sample.latencies.len()));
                }
                peak_rss = peak_rss.max(peak);
                let base = &baselines[workload.baseline];
                report.row(&workload, clients, warm, &sample, base);
                println!(
                    "  {} x{clients}: p50 {:.1} ms, {:.1}/s",
                    workload.name,
                    ms(sample.percentile(500)),
                    sample.rate()
                );
            }
            if workload.name == "`return 1`" {
                report.phases(warm, &phases_of(&service));
            }
        }
        report.memory(warm, idle_rss, peak_rss, warm_pool_kib(&service));
        if warm {
            growth(&mut report, &client, &service, group.as_ref(), row).await;
            rotation(&mut report, &client, &service, row).await;
            first_output(&mut report, &client, &service).await;
        }
        drop(service);
        drop(group);
    }
    println!("a cgroup-v2 guest ...");
    report.guest_paced = Some(guest_paced(row).await);
    println!("encoding a DataFrame result ...");
    report.encoding(&encode_frame());
    report.finish(started.elapsed());
}

/// `return 1` on a service whose zygotes serve 50 executions each, against `default` (1000),
/// and the start-up time of the zygotes it started, from its log.
async fn rotation(report: &mut Report, client: &reqwest::Client, default: &Service, row: Duration) {
    const SHORT: u64 = 50;
    println!("zygote rotation ...");
    let script = "def main():\n    return 1\n";
    let rotating = Service::start(
        &format!("profile = \"strict\"\nmax_concurrency = 0\nzygote_max_executions = {SHORT}\n"),
        &[("RUST_LOG", "info")],
    );
    for clients in [1, 8] {
        // Alternating, so both meet the same machine.
        let base = run_for(&default.url(), client, script, clients, row).await;
        let short = run_for(&rotating.url(), client, script, clients, row).await;
        report.rotation_row(clients, &base, &short);
    }
    let starts: Vec<f64> = rotating
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|event| event["message"] == "a fresh zygote took over")
        .filter_map(|event| event["took_ms"].as_f64())
        .collect();
    report.zygote_starts(&starts);
}

/// From a script's first `print` to its text reaching the client: streamed (the `stdout` event)
/// and plain (the whole answer, after the script's end), alternating, on the same service. The
/// script prints the wall clock in nanoseconds (the jail's clock is the host's), the client
/// subtracts it from its own on arrival.
async fn first_output(report: &mut Report, client: &reqwest::Client, service: &Service) {
    const RUNS: usize = 40;
    println!("first output ...");
    let script =
        "import time\ndef main():\n    print(time.time_ns())\n    time.sleep(0.1)\n    return 1\n";
    let body = json!({ "script": script });
    let url = service.url();
    let wall_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    };
    let since = |printed: &str, now: u128| {
        let printed: u128 = printed.trim().parse().unwrap();
        Duration::from_nanos(u64::try_from(now.saturating_sub(printed)).unwrap())
    };
    let mut first = [Vec::new(), Vec::new()];
    let mut whole = [Vec::new(), Vec::new()];
    let started = Instant::now();
    // The rows before may leave executions being swept: wait until a request is admitted.
    loop {
        match client
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
        {
            200 => break,
            503 => tokio::time::sleep(Duration::from_millis(100)).await,
            status => panic!("the service answered {status}"),
        }
    }
    for _ in 0..RUNS {
        let sent = Instant::now();
        let mut response = client
            .post(&url)
            .header("accept", "application/x-ndjson")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{:?}", response.headers());
        let mut buffer = Vec::new();
        let mut arrived = None;
        while let Some(chunk) = response.chunk().await.unwrap() {
            let now = wall_ns();
            buffer.extend_from_slice(&chunk);
            if arrived.is_none() {
                arrived = buffer
                    .split(|&byte| byte == b'\n')
                    .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
                    .find(|event| event["event"] == "stdout")
                    .map(|event| since(event["data"].as_str().unwrap(), now));
            }
        }
        whole[0].push(sent.elapsed());
        first[0].push(arrived.unwrap_or_else(|| {
            panic!("no stdout event in {:?}", String::from_utf8_lossy(&buffer))
        }));

        let sent = Instant::now();
        let text = client
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let now = wall_ns();
        let answer: Value = serde_json::from_str(&text).unwrap();
        whole[1].push(sent.elapsed());
        first[1].push(since(answer["stdout"].as_str().unwrap(), now));
    }
    let wall = started.elapsed();
    let sample = |latencies: &Vec<Duration>| Sample {
        latencies: latencies.clone(),
        wall,
        refused: 0,
    };
    for (index, name) in ["streamed (`Accept: application/x-ndjson`)", "plain"]
        .into_iter()
        .enumerate()
    {
        let (first, whole) = (sample(&first[index]), sample(&whole[index]));
        println!(
            "  {name}: first print to client p50 {:.2} ms, request p50 {:.1} ms",
            ms(first.percentile(500)),
            ms(whole.percentile(500))
        );
        report.first_output.push((name, first, whole));
    }
}

/// F0 (`benches/floor.py`), run as root with the sandbox's Python.
/// Milliseconds per round.
struct Floor {
    wall: f64,
    /// Charged to the process and its children.
    cpu: f64,
    /// The whole machine's busy time, the kernel's deferred work included.
    busy_cpu: f64,
}

fn floor() -> Floor {
    let output = std::process::Command::new(Config::default().sandbox.python)
        .args(["-W", "ignore"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/floor.py"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let measured: Value = serde_json::from_slice(&output.stdout).unwrap();
    let field = |name: &str| measured[name].as_f64().unwrap();
    Floor {
        wall: field("wall_p50_ms"),
        cpu: field("cpu_ms"),
        busy_cpu: field("busy_cpu_ms"),
    }
}

/// How cost grows with the work, warm: each row after the first of its pair does `work` times
/// the first's work per execution (or, for 32 clients, the same work with 4 times the clients
/// against the default queue of 16, so some are answered `503 busy`).
async fn growth(
    report: &mut Report,
    client: &reqwest::Client,
    service: &Service,
    group: Option<&cpu::Group>,
    row: Duration,
) {
    println!("how cost grows ...");
    let return_1 = json!({ "script": "def main():\n    return 1\n" });
    let prints = |bytes: usize| json!({ "script": format!("import sys\ndef main():\n    sys.stdout.write('x' * {bytes})\n    return 1\n") });
    let returns =
        |bytes: usize| json!({ "script": format!("def main():\n    return 'x' * {bytes}\n") });
    let files = |count: usize| {
        json!({
            "script": format!("def main():\n    for i in range({count}):\n        open(f'out{{i}}.txt', 'w').write('x' * 16384)\n    return {count}\n"),
            "return_files": true,
        })
    };
    let pairs = [
        (
            ("`return 1`", 8, return_1.clone()),
            ("`return 1`", 32, return_1, 1.0),
        ),
        (
            ("prints 100 KiB", 1, prints(100 << 10)),
            ("prints 1 MiB", 1, prints(1 << 20), 10.24),
        ),
        (
            ("returns 1 MiB", 1, returns(1 << 20)),
            ("returns 10 MiB", 1, returns(10 << 20), 10.0),
        ),
        (
            ("8 files of 16 KiB back", 1, files(8)),
            ("64 files of 16 KiB back", 1, files(64), 8.0),
        ),
    ];
    for ((base_name, base_clients, base_body), (name, clients, body, work)) in pairs {
        let mut measured = Vec::new();
        for (name, clients, body) in [
            (base_name, base_clients, &base_body),
            (name, clients, &body),
        ] {
            let meter = cpu::Meter::start(service.pid(), group);
            let (sample, peak) = run_sampling_rss(service, client, body, clients, row).await;
            let cpu = meter.finish(sample.latencies.len());
            println!(
                "  {name} x{clients}: p50 {:.1} ms, {:.1}/s, {} busy",
                ms(sample.percentile(500)),
                sample.rate(),
                sample.refused
            );
            measured.push((name, clients, sample, peak, cpu));
        }
        report.growth_pair(&measured, work);
    }
    let (paced, back_to_back) = paced_against_back_to_back(client, &service.url(), row / 4).await;
    println!(
        "  `return 1`, one every 100 ms: p50 {:.1} ms against {:.1} back to back",
        ms(paced.percentile(500)),
        ms(back_to_back.percentile(500))
    );
    report.paced = Some((paced, back_to_back));
}

/// Back-to-back rows hide what an idle machine adds: `return 1` sent once every 100 ms (as most
/// instances see traffic) and back to back from one client, in alternating blocks of `block`
/// (four of each) on the same warm service at `url`, so both see the same machine.
async fn paced_against_back_to_back(
    client: &reqwest::Client,
    url: &str,
    block: Duration,
) -> (Sample, Sample) {
    const ONE: &str = "def main():\n    return 1\n";
    let mut paced = Sample {
        latencies: Vec::new(),
        wall: Duration::ZERO,
        refused: 0,
    };
    let mut back_to_back = Sample {
        latencies: Vec::new(),
        wall: Duration::ZERO,
        refused: 0,
    };
    for _ in 0..4 {
        let begun = Instant::now();
        while begun.elapsed() < block {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let sent = Instant::now();
            let response = client
                .post(url)
                .json(&json!({ "script": ONE }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
            paced.latencies.push(sent.elapsed());
        }
        paced.wall += begun.elapsed();
        let sample = run_for(url, client, ONE, 1, block).await;
        back_to_back.latencies.extend(sample.latencies);
        back_to_back.wall += sample.wall;
    }
    (paced, back_to_back)
}

/// [`paced_against_back_to_back`] in a cgroup-v2 guest (`tests/common/guest.rs`), with blocks
/// twice as long: an execution there takes about 0.2 s.
async fn guest_paced(row: Duration) -> (Sample, Sample) {
    const ONE: &str = "def main():\n    return 1\n";
    let mut guest = Guest::boot(&[Instance {
        name: "bench",
        shape: Shape::Unit,
        profile: "strict",
        warm: true,
        path: "warm",
    }]);
    let client = reqwest::Client::new();
    let health = guest.health(&client, 0).await;
    assert_eq!(health["path"], "warm", "{health}");
    let url = guest.url(0, "/execute");
    run_for(&url, &client, ONE, 1, Duration::from_secs(2)).await;
    let samples = paced_against_back_to_back(&client, &url, row / 2).await;
    println!(
        "  one every 100 ms: p50 {:.1} ms against {:.1} back to back",
        ms(samples.0.percentile(500)),
        ms(samples.1.percentile(500))
    );
    guest.stop();
    samples
}

/// One pair of rows of the paced table.
fn write_paced(text: &mut String, place: &str, paced: &Sample, back_to_back: &Sample) {
    let (p50, p99, b2b) = (
        ms(paced.percentile(500)),
        ms(paced.percentile(990)),
        ms(back_to_back.percentile(500)),
    );
    let met = |ok: bool| if ok { "met" } else { "not met" };
    writeln!(
        text,
        "| {place} | paced | {} | {p50:.1} | {p99:.1} | {:.2} ({}) | {:.2} ({}) |\n\
         | {place} | back to back | {} | {b2b:.1} | {:.1} | | |",
        paced.latencies.len(),
        p50 / b2b,
        met(p50 / b2b <= 1.2),
        p99 / p50,
        met(p99 / p50 <= 2.0),
        back_to_back.latencies.len(),
        ms(back_to_back.percentile(990)),
    )
    .unwrap();
}

/// Runs `benches/encode_frame.py` with the sandbox's Python (the encoder alone: no jail, no
/// HTTP) and returns its measurement.
fn encode_frame() -> Value {
    let output = std::process::Command::new(Config::default().sandbox.python)
        .args(["-W", "ignore"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/encode_frame.py"
        ))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// B0 and B1, each one at a time and 8 at once, through a sandbox started as the service
/// starts one.
async fn baselines() -> BTreeMap<&'static str, (Sample, Sample)> {
    let work_root = tempfile::tempdir().unwrap();
    let mut config: Config = common::test_config(work_root.path());
    config.sandbox.profile = ProfileChoice::Strict;
    config.sandbox.max_concurrency = 8;
    let sandbox = Sandbox::start(config.sandbox, config.limits).await.unwrap();
    let mut baselines = BTreeMap::new();
    for (name, args, sequential, parallel) in [("B0", B0, 20, 5), ("B1", B1, 6, 2)] {
        pyexec::sandbox::bench::baseline(&sandbox, args)
            .await
            .unwrap();
        let begun = Instant::now();
        let mut one = Vec::new();
        for _ in 0..sequential {
            one.push(
                pyexec::sandbox::bench::baseline(&sandbox, args)
                    .await
                    .unwrap(),
            );
        }
        let one = Sample {
            latencies: one,
            wall: begun.elapsed(),
            refused: 0,
        };
        let begun = Instant::now();
        let workers = (0..8).map(|_| async {
            let mut times = Vec::new();
            for _ in 0..parallel {
                times.push(
                    pyexec::sandbox::bench::baseline(&sandbox, args)
                        .await
                        .unwrap(),
                );
            }
            times
        });
        let eight = Sample {
            latencies: futures::future::join_all(workers)
                .await
                .into_iter()
                .flatten()
                .collect(),
            wall: begun.elapsed(),
            refused: 0,
        };
        println!(
            "  {name}: p50 {:.1} ms alone, {:.1}/s eight at once",
            ms(one.percentile(500)),
            eight.rate()
        );
        baselines.insert(name, (one, eight));
    }
    baselines
}

/// `clients` clients sending `script` back to back for `length`; every answer must be 200.
async fn run_for(
    url: &str,
    client: &reqwest::Client,
    script: &str,
    clients: usize,
    length: Duration,
) -> Sample {
    let sample = send_for(url, client, &json!({ "script": script }), clients, length).await;
    assert_eq!(sample.refused, 0, "every answer is 200");
    sample
}

/// `clients` clients sending `body` back to back for `length`: the latencies of the 200s, and
/// how many were answered `503 busy` (anything else fails the run).
async fn send_for(
    url: &str,
    client: &reqwest::Client,
    body: &Value,
    clients: usize,
    length: Duration,
) -> Sample {
    let body = body.to_string();
    let begun = Instant::now();
    let loops = (0..clients).map(|_| {
        let (client, body) = (client.clone(), body.clone());
        async move {
            let (mut times, mut refused) = (Vec::new(), 0);
            while begun.elapsed() < length {
                let sent = Instant::now();
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let text = response.text().await.unwrap();
                if status == 503 && text.contains("\"busy\"") {
                    refused += 1;
                    // A refused client waits as a client told to retry would, a little.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                assert_eq!(status, 200, "{text}");
                times.push(sent.elapsed());
            }
            (times, refused)
        }
    });
    let (mut latencies, mut refused) = (Vec::new(), 0);
    for (times, busy) in futures::future::join_all(loops).await {
        latencies.extend(times);
        refused += busy;
    }
    Sample {
        latencies,
        wall: begun.elapsed(),
        refused,
    }
}

/// [`send_for`], sampling the service's RSS meanwhile; the sample and the peak RSS in KiB.
async fn run_sampling_rss(
    service: &Service,
    client: &reqwest::Client,
    body: &Value,
    clients: usize,
    length: Duration,
) -> (Sample, u64) {
    let pid = service.pid();
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let watching = std::sync::Arc::clone(&watching);
        tokio::spawn(async move {
            let mut peak = 0;
            while watching.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };
    let sample = send_for(&service.url(), client, body, clients, length).await;
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    (sample, sampler.await.unwrap())
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The proportional memory (Pss) of every process of the service's warm path, in KiB: the
/// processes running as the service's block whose command line names the zygote.
fn warm_pool_kib(service: &Service) -> u64 {
    let first = service.uids.start;
    let block = first..first + 1000;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let uid: u32 = status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            let cmdline = std::fs::read_to_string(entry.path().join("cmdline")).ok()?;
            (block.contains(&uid) && cmdline.contains("zygote")).then(|| {
                let rollup = std::fs::read_to_string(entry.path().join("smaps_rollup")).ok()?;
                let line = rollup.lines().find(|line| line.starts_with("Pss:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })?
        })
        .sum()
}

/// Median of each phase over the executions the service logged since the log was cleared.
fn phases_of(service: &Service) -> Vec<(String, Duration)> {
    let events = std::mem::take(&mut *service.events.lock().unwrap());
    let records: Vec<&Value> = events
        .iter()
        .filter(|event| event["message"] == "execution phases")
        .collect();
    let names = [
        "queue_us",
        "workdir_us",
        "cgroup_us",
        "jail_start_us",
        "user_code_us",
        "collect_us",
        "teardown_us",
    ];
    names
        .iter()
        .map(|name| {
            let mut values: Vec<u64> = records
                .iter()
                .filter_map(|record| record[name].as_u64())
                .collect();
            values.sort_unstable();
            let median = values.get(values.len() / 2).copied().unwrap_or(0);
            (
                name.trim_end_matches("_us").replace('_', " "),
                Duration::from_micros(median),
            )
        })
        .collect()
}

/// BENCHMARKS.md, written as the run goes.
struct Report {
    baselines: String,
    rows: String,
    phases: Vec<(bool, Vec<(String, Duration)>)>,
    memory: String,
    rotation: String,
    encoding: String,
    targets: Vec<String>,
    b0: Option<(Duration, f64)>,
    b1: Option<(Duration, f64)>,
    floor: Option<Floor>,
    cpu: String,
    growth: String,
    /// `return 1` once every 100 ms, and back to back, in alternating blocks.
    paced: Option<(Sample, Sample)>,
    /// The same in a cgroup-v2 guest.
    guest_paced: Option<(Sample, Sample)>,
    /// Streamed and plain: first print to client, and the whole request.
    first_output: Vec<(&'static str, Sample, Sample)>,
}

impl Report {
    fn new() -> Self {
        Self {
            baselines: String::new(),
            rows: String::new(),
            phases: Vec::new(),
            memory: String::new(),
            rotation: String::new(),
            encoding: String::new(),
            targets: Vec::new(),
            b0: None,
            b1: None,
            floor: None,
            cpu: String::new(),
            growth: String::new(),
            paced: None,
            guest_paced: None,
            first_output: Vec::new(),
        }
    }

    fn baseline(&mut self, name: &str, one: &Sample, eight: &Sample) {
        let args = if name == "B0" { B0 } else { B1 };
        writeln!(
            self.baselines,
            "| {name} | `python {}` | {:.1} | {:.1} | {:.1} | {:.1} |",
            args.join(" "),
            ms(one.percentile(500)),
            ms(one.percentile(990)),
            one.rate(),
            eight.rate()
        )
        .unwrap();
        let figures = Some((one.percentile(500), eight.rate()));
        if name == "B0" {
            self.b0 = figures;
        } else {
            self.b1 = figures;
        }
    }

    fn row(
        &mut self,
        workload: &Workload,
        clients: usize,
        warm: bool,
        sample: &Sample,
        base: &(Sample, Sample),
    ) {
        let (p50, rate) = (sample.percentile(500), sample.rate());
        let (base_p50, base_rate) = (base.0.percentile(500), base.1.rate());
        writeln!(
            self.rows,
            "| {} | {clients} | {} | {:.1} | {:.1} | {:.1} | {} | {:.2} | {:.2} |",
            workload.name,
            if warm { "on" } else { "off" },
            ms(p50),
            ms(sample.percentile(990)),
            rate,
            workload.baseline,
            p50.as_secs_f64() / base_p50.as_secs_f64(),
            rate / base_rate,
        )
        .unwrap();
        if !warm {
            return;
        }
        let target = match (workload.name, clients) {
            ("`return 1`", 1) => {
                Some(("p50", p50.as_secs_f64() / base_p50.as_secs_f64(), 0.6, true))
            }
            ("`return 1`", 8) => Some(("executions/s", rate / base_rate, 1.5, false)),
            ("pandas DataFrame", 1) => Some((
                "p50",
                p50.as_secs_f64() / base_p50.as_secs_f64(),
                0.25,
                true,
            )),
            ("pandas DataFrame", 8) => Some(("executions/s", rate / base_rate, 2.0, false)),
            _ => None,
        };
        self.floor_target(workload.name, clients, p50, rate);
        if let Some((what, ratio, goal, at_most)) = target {
            let met = if at_most {
                ratio <= goal
            } else {
                ratio >= goal
            };
            self.targets.push(format!(
                "| {}, {clients} client{} | {what} {} {goal} × {} | {ratio:.2} | {} |",
                workload.name,
                if clients == 1 { "" } else { "s" },
                if at_most { "≤" } else { "≥" },
                workload.baseline,
                if met { "met" } else { "missed" }
            ));
        }
    }

    /// The targets held against F0: p50 against its wall time, executions per second against
    /// what the CPUs could do if each execution cost only F0's CPU.
    fn floor_target(&mut self, workload: &str, clients: usize, p50: Duration, rate: f64) {
        let Some(floor) = &self.floor else { return };
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
        let ceiling = cpus / (floor.cpu / 1000.0);
        let (what, ratio, goal, at_most) = match (workload, clients) {
            ("`return 1`", 1) => ("p50", ms(p50) / floor.wall, 2.5, true),
            ("`return 1`", 8) => ("executions/s", rate / ceiling, 0.35, false),
            ("pandas DataFrame", 1) => ("p50", ms(p50) / floor.wall, 3.5, true),
            ("pandas DataFrame", 8) => ("executions/s", rate / ceiling, 0.25, false),
            _ => return,
        };
        let met = if at_most {
            ratio <= goal
        } else {
            ratio >= goal
        };
        let against = if at_most {
            "F0's wall"
        } else {
            "CPUs / F0's CPU"
        };
        self.targets.push(format!(
            "| {workload}, {clients} client{} | {what} {} {goal} × {against} | {ratio:.2} | {} |",
            if clients == 1 { "" } else { "s" },
            if at_most { "≤" } else { "≥" },
            if met { "met" } else { "**missed**" }
        ));
    }

    fn cpu(&mut self, workload: &str, warm: bool, cpu: cpu::Breakdown) {
        writeln!(
            self.cpu,
            "| {workload} | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} |",
            if warm { "on" } else { "off" },
            cpu.total,
            cpu.service,
            cpu.jail
                .map_or("(in the rest)".to_owned(), |jail| format!("{jail:.2}")),
            cpu.client,
            cpu.rest,
        )
        .unwrap();
    }

    /// Two rows of the growth table: the second's p50 and CPU per execution as multiples of
    /// the first's, beside how much more work it does.
    fn growth_pair(&mut self, rows: &[(&str, usize, Sample, u64, cpu::Breakdown)], work: f64) {
        let (_, _, base, _, base_cpu) = &rows[0];
        for (index, (name, clients, sample, peak, cpu)) in rows.iter().enumerate() {
            let growth = if index == 0 {
                "1 | 1 | 1".to_owned()
            } else {
                format!(
                    "{work:.2} | {:.2} | {:.2}",
                    sample.percentile(500).as_secs_f64() / base.percentile(500).as_secs_f64(),
                    cpu.total / base_cpu.total
                )
            };
            writeln!(
                self.growth,
                "| {name} | {clients} | {:.1} | {:.1} | {} | {:.1} | {:.2} | {growth} |",
                sample.rate(),
                ms(sample.percentile(500)),
                sample.refused,
                *peak as f64 / 1024.0,
                cpu.total,
            )
            .unwrap();
        }
    }

    fn phases(&mut self, warm: bool, phases: &[(String, Duration)]) {
        self.phases.push((warm, phases.to_vec()));
    }

    /// The result mapping against pandas' own encoder (`benches/encode_frame.py`'s line).
    fn encoding(&mut self, measured: &Value) {
        let ratio = measured["ratio"].as_f64().unwrap();
        writeln!(
            self.encoding,
            "| {} × {} | {} | {} | {} | {ratio:.2} |",
            measured["rows"],
            measured["columns"],
            measured["to_json_ms"],
            measured["encoder_ms"],
            measured["bytes"]
        )
        .unwrap();
        self.targets.push(format!(
            "| a 100,000-row DataFrame result, encoded | ≤ 2 × `df.to_json(orient=\"records\")` | {ratio:.2} | {} |",
            if ratio <= 2.0 { "met" } else { "**missed**" }
        ));
    }

    fn memory(&mut self, warm: bool, idle: u64, peak: u64, pool: u64) {
        writeln!(
            self.memory,
            "| {} | {:.1} | {:.1} | {} |",
            if warm { "on" } else { "off" },
            idle as f64 / 1024.0,
            peak as f64 / 1024.0,
            if warm {
                format!("{:.1}", pool as f64 / 1024.0)
            } else {
                "none".to_owned()
            }
        )
        .unwrap();
    }

    fn rotation_row(&mut self, clients: usize, base: &Sample, short: &Sample) {
        writeln!(
            self.rotation,
            "| {clients} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
            ms(base.percentile(500)),
            ms(short.percentile(500)),
            base.rate(),
            short.rate(),
            short.rate() / base.rate(),
        )
        .unwrap();
    }

    fn zygote_starts(&mut self, took_ms: &[f64]) {
        let mut sorted = took_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
        writeln!(
            self.rotation,
            "\nZygotes started in that run: {}, median {median:.0} ms from the decision to the new \
             one taking over (warmed in the background: executions keep forking from the old one \
             meanwhile). At the default of 1000 executions a zygote's start is spread over 20 times \
             as many executions as in the 50 row.",
            sorted.len()
        )
        .unwrap();
    }

    fn write_floor(&self, text: &mut String) {
        if let Some(floor) = &self.floor {
            writeln!(
                text,
                "\nF0, the floor a warm execution is made of (`benches/floor.py`): from a process \
                 holding numpy and pandas, as root, `fork()`, `unshare(mount, IPC, UTS, net)` in \
                 the child, `_exit`, `waitpid`. Median wall {:.2} ms; CPU charged to the process \
                 and its child {:.2} ms a round; the whole machine's busy CPU {:.2} ms a round \
                 (the kernel tears each network namespace down afterwards, on no process's \
                 account).",
                floor.wall, floor.cpu, floor.busy_cpu
            )
            .unwrap();
        }
    }

    fn write_cpu(&self, text: &mut String) {
        writeln!(text, "\n## Where the CPU goes\n").unwrap();
        writeln!(
            text,
            "Milliseconds of CPU per execution in the 8-client rows: all the machine's busy time \
             (`/proc/stat`), the service's own (`/proc/<pid>/stat`), the jail's (nsjail, the \
             zygote and its children: a cpuacct cgroup around the service, minus the service), \
             the bench's own HTTP client, and the rest: the kernel's work no process is charged \
             for (network namespace teardown, RCU) and anything else the shared machine ran.\n"
        )
        .unwrap();
        writeln!(
            text,
            "| workload | warm | all busy | service | jail | bench client | kernel and other |"
        )
        .unwrap();
        writeln!(text, "|---|---|---|---|---|---|---|").unwrap();
        text.push_str(&self.cpu);
    }

    fn write_growth(&self, text: &mut String) {
        writeln!(text, "\n## How cost grows\n").unwrap();
        writeln!(
            text,
            "Warm, in pairs: the second row does `work` times the first's work per execution \
             (for `return 1`, the same work from 4 times the clients against the default queue \
             of 16: what does not fit is answered `503 busy`, counted, and retried after 5 ms). \
             Growth columns are the second row's p50 and CPU per execution over the first's.\n"
        )
        .unwrap();
        writeln!(
            text,
            "| row | clients | per s | p50 ms | 503 busy | service RSS peak MiB | CPU ms per execution | work × | p50 × | CPU × |"
        )
        .unwrap();
        writeln!(text, "|---|---|---|---|---|---|---|---|---|---|").unwrap();
        text.push_str(&self.growth);
        if let Some((paced, back_to_back)) = &self.paced {
            writeln!(
                text,
                "\n`return 1` sent once every 100 ms (an idle machine between requests, as most \
                 instances are) and back to back from one client, in alternating blocks on the \
                 same warm service; the second pair in a cgroup-v2 guest (user-mode Linux, one \
                 CPU under `ptrace`, where an execution takes about 0.2 s: only its ratios mean \
                 anything), with blocks twice as long:\n\n\
                 | where | | requests | p50 ms | p99 ms | paced p50 / back-to-back p50 (target ≤ 1.2) | \
                 paced p99 / paced p50 (target ≤ 2) |\n|---|---|---|---|---|---|---|"
            )
            .unwrap();
            write_paced(text, "here", paced, back_to_back);
            if let Some((paced, back_to_back)) = &self.guest_paced {
                write_paced(text, "cgroup-v2 guest", paced, back_to_back);
            }
        }
    }

    fn write_first_output(&self, text: &mut String) {
        let [(_, streamed, streamed_whole), (_, plain, plain_whole)] = &self.first_output[..]
        else {
            return;
        };
        writeln!(text, "\n## Output as it happens\n").unwrap();
        writeln!(
            text,
            "A script that prints the wall clock, sleeps 100 ms and returns, {} times streamed \
             and plain, alternating, warm path on: from the `print` to its text reaching the \
             client (the `stdout` event; the plain answer, after the script's end), and the \
             whole request. The stream gathers output over 5 ms before it sends an event.\n",
            streamed.latencies.len()
        )
        .unwrap();
        writeln!(
            text,
            "| answer | print to client p50 ms | p99 ms | request p50 ms | request p99 ms |"
        )
        .unwrap();
        writeln!(text, "|---|---|---|---|---|").unwrap();
        for (name, first, whole) in &self.first_output {
            writeln!(
                text,
                "| {name} | {:.2} | {:.2} | {:.1} | {:.1} |",
                ms(first.percentile(500)),
                ms(first.percentile(990)),
                ms(whole.percentile(500)),
                ms(whole.percentile(990))
            )
            .unwrap();
        }
        writeln!(
            text,
            "\nStreamed / plain: print to client {:.3}, whole request {:.2} (p50s).",
            streamed.percentile(500).as_secs_f64() / plain.percentile(500).as_secs_f64(),
            streamed_whole.percentile(500).as_secs_f64()
                / plain_whole.percentile(500).as_secs_f64()
        )
        .unwrap();
    }

    fn write_rotation(&self, text: &mut String) {
        writeln!(text, "\n## Zygote rotation\n").unwrap();
        writeln!(
            text,
            "`return 1` with the warm path on: the default service (a fresh zygote every 1000 \
             executions or 600 s) against one whose zygotes serve 50 executions each, rows \
             alternating in the same run.\n"
        )
        .unwrap();
        writeln!(
            text,
            "| clients | p50 ms, every 1000 | p50 ms, every 50 | per s, every 1000 | per s, every 50 | per s ratio |"
        )
        .unwrap();
        writeln!(text, "|---|---|---|---|---|---|").unwrap();
        text.push_str(&self.rotation);
    }

    fn finish(self, took: Duration) {
        let machine = machine();
        let mut text = String::new();
        writeln!(text, "# Benchmarks\n").unwrap();
        writeln!(
            text,
            "Made by `make bench` (`cargo bench --bench service`) on {}, {machine}; it took {:.0} s. \
             Every figure below comes from that one run: the baselines were measured in it, so \
             the ratios hold even though the machine is shared and its absolute speed varies. \
             Profile `strict` throughout.\n",
            today(),
            took.as_secs_f64()
        )
        .unwrap();
        writeln!(text, "## Baselines\n").unwrap();
        writeln!(text, "The exact cold jail of an execution (profile flags, slot uid, directory, cgroup), spawned \
             directly, running Python without the harness: time from spawn to exit.\n").unwrap();
        writeln!(
            text,
            "| | runs | p50 ms | p99 ms | per s, one at a time | per s, 8 at once |"
        )
        .unwrap();
        writeln!(text, "|---|---|---|---|---|---|").unwrap();
        text.push_str(&self.baselines);
        self.write_floor(&mut text);
        writeln!(text, "\n## Targets (warm path on)\n").unwrap();
        writeln!(text, "| workload | target | ratio | |").unwrap();
        writeln!(text, "|---|---|---|---|").unwrap();
        for target in &self.targets {
            writeln!(text, "{target}").unwrap();
        }
        writeln!(text, "\n## The service over HTTP\n").unwrap();
        writeln!(text, "Each row: that many clients sending back to back on loopback; ratios are p50 / the baseline's p50 \
             (one at a time) and executions per second / the baseline's (8 at once).\n").unwrap();
        writeln!(
            text,
            "| workload | clients | warm | p50 ms | p99 ms | per s | vs | p50 ratio | per s ratio |"
        )
        .unwrap();
        writeln!(text, "|---|---|---|---|---|---|---|---|---|").unwrap();
        text.push_str(&self.rows);
        writeln!(text, "\n## Where the time goes\n").unwrap();
        writeln!(
            text,
            "Medians over the `return 1` rows, from the service's own `execution phases` log lines \
             (teardown runs after the answer is sent).\n"
        )
        .unwrap();
        let header: Vec<String> = self
            .phases
            .first()
            .map(|(_, phases)| phases.iter().map(|(name, _)| name.clone()).collect())
            .unwrap_or_default();
        writeln!(text, "| warm | {} |", header.join(" | ")).unwrap();
        writeln!(text, "|---|{}", "---|".repeat(header.len())).unwrap();
        for (warm, phases) in &self.phases {
            let cells: Vec<String> = phases
                .iter()
                .map(|(_, duration)| format!("{:.2} ms", ms(*duration)))
                .collect();
            writeln!(
                text,
                "| {} | {} |",
                if *warm { "on" } else { "off" },
                cells.join(" | ")
            )
            .unwrap();
        }
        self.write_cpu(&mut text);
        writeln!(text, "\n## Memory\n").unwrap();
        writeln!(text, "| warm | service RSS idle MiB | service RSS peak under load MiB | warm path (zygote) Pss MiB |").unwrap();
        writeln!(text, "|---|---|---|---|").unwrap();
        text.push_str(&self.memory);
        self.write_growth(&mut text);
        self.write_rotation(&mut text);
        self.write_first_output(&mut text);
        writeln!(text, "\n## Encoding a DataFrame result\n").unwrap();
        writeln!(
            text,
            "The harness's result mapping (exact floats, ISO dates, NaN as null with its place \
             recorded) against pandas' own `df.to_json(orient=\"records\")` on the same \
             DataFrame (ids, prices with a missing value in 50, quantities, regions, minutes, \
             booleans), in the sandbox's Python, alternating, medians of 9 (`benches/encode_frame.py`).\n"
        )
        .unwrap();
        writeln!(
            text,
            "| rows × columns | to_json ms | mapping ms | JSON bytes | ratio |"
        )
        .unwrap();
        writeln!(text, "|---|---|---|---|---|").unwrap();
        text.push_str(&self.encoding);
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md"), &text).unwrap();
        println!("\n{text}");
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map_or("an unknown CPU", |rest| {
            rest.trim_start_matches([' ', '\t', ':'])
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let kib: u64 = info
                .lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some(kib >> 20)
        })
        .unwrap_or(0);
    format!(
        "{cpus} CPUs ({model}), {memory} GiB, Linux {}",
        kernel.trim()
    )
}

fn today() -> String {
    let output = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
