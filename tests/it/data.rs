//! Data in and out: `input` for `main`, files placed in the working directory and files sent
//! back, per-request limits. The rules that never reach a sandbox are checked at the router;
//! everything else runs through the real service, nsjail and sandbox Python, in both
//! profiles and on both paths where it matters. Loopback only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

use crate::common;

use base64::Engine;
use common::{TestApp, error_code, oneshot, post_execute, router_only};
use pyexec::config::ProfileChoice;
use serde_json::{Value, json};

const SALES: &str = "region,units,price\nnorth,3,2.5\nsouth,5,1.0\nnorth,1,4.0\n";

/// The README's example: a CSV in, a computed CSV and a JSON summary out.
const ANALYSIS: &str = r#"
import pandas as pd

def main(options):
    sales = pd.read_csv("data/sales.csv")
    sales["revenue"] = sales["units"] * sales["price"]
    by_region = sales.groupby("region", as_index=False)["revenue"].sum()
    by_region.to_csv("by_region.csv", index=False)
    return {"rows": len(sales), "total": sales["revenue"].sum() * options["scale"]}
"#;

async fn post(app: &TestApp, body: Value) -> (u16, Value) {
    app.post_json(&body).await
}

async fn app(profile: ProfileChoice, warm: bool) -> TestApp {
    common::spawn_app_in(profile, warm).await
}

#[tokio::test]
async fn a_csv_goes_in_and_a_computed_csv_and_a_summary_come_back_in_every_configuration() {
    for (profile, warm) in [
        (ProfileChoice::Strict, true),
        (ProfileChoice::Strict, false),
        (ProfileChoice::CloudRun, true),
        (ProfileChoice::CloudRun, false),
    ] {
        let app = app(profile, warm).await;
        assert_eq!(app.warm, warm);
        let (status, body) = post(
            &app,
            json!({
                "script": ANALYSIS,
                "input": {"scale": 2},
                "files": [{"path": "data/sales.csv", "content": SALES}],
                "return_files": true,
            }),
        )
        .await;
        let context = format!("{profile:?} warm={warm}: {body}");
        assert_eq!(status, 200, "{context}");
        assert_eq!(
            body["result"],
            json!({"rows": 3, "total": 33.0}),
            "{context}"
        );
        // The input file is left out: it came back unchanged.
        let csv = "region,revenue\nnorth,11.5\nsouth,5.0\n";
        assert_eq!(
            body["files"],
            json!([{"path": "by_region.csv", "size": csv.len(), "content": csv, "encoding": "utf-8"}]),
            "{context}"
        );
        assert_eq!(body["files_truncated"], false, "{context}");
        assert!(body.get("skipped_files").is_none(), "{context}");
    }
}

#[tokio::test]
async fn binary_files_round_trip_and_patterns_choose_what_comes_back() {
    let app = app(ProfileChoice::Auto, true).await;
    let bytes: Vec<u8> = (0..=255).cycle().take(70_000).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let script = "import shutil\ndef main():\n    shutil.copy('in.bin', 'out/copy.bin')\n    open('note.txt', 'w').write('n')\n";
    let (status, body) = post(
        &app,
        json!({
            "script": format!("import os\nos.makedirs('out')\n{script}"),
            "files": [{"path": "./in.bin", "content": encoded, "encoding": "base64"}],
            "return_files": ["*.bin"],
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let files = body["files"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    // A pattern asks for unchanged inputs too; note.txt matches none.
    assert_eq!(paths, ["in.bin", "out/copy.bin"]);
    for file in files {
        assert_eq!(file["encoding"], "base64");
        assert_eq!(file["size"], 70_000);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(file["content"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, bytes);
    }
}

#[tokio::test]
async fn input_reaches_main_and_mismatches_are_clear_400s() {
    let app = app(ProfileChoice::Auto, true).await;
    let (status, body) = post(
        &app,
        json!({"script": "def main(data):\n    return data", "input": [1, {"a": null}]}),
    )
    .await;
    assert_eq!((status, &body["result"]), (200, &json!([1, {"a": null}])));

    let (status, body) = post(
        &app,
        json!({"script": "def main():\n    return 1", "input": 5}),
    )
    .await;
    assert_eq!((status, error_code(&body)), (400, "main_takes_no_input"));
    assert!(
        body["error"].as_str().unwrap().contains("main(input)"),
        "{body}"
    );

    let (status, body) = post(&app, json!({"script": "def main(data):\n    return data"})).await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "main_requires_arguments")
    );
    assert_eq!(body["input_given"], false);
    assert!(
        body["error"].as_str().unwrap().contains("\"input\""),
        "{body}"
    );
}

/// Sends `body` through the router alone (these are refused before any sandbox).
async fn refused(router: &axum::Router, body: &Value) -> (u16, Value) {
    let (status, _, answer) = oneshot(
        router,
        post_execute(Some("application/json"), body.to_string()),
    )
    .await;
    (status, answer)
}

/// Each rule on `files`, with one bad request each: the entry and the rule are named.
#[tokio::test]
async fn every_rule_on_files_is_a_400_naming_the_entry() {
    let router = router_only(|_| {});
    let file = |path: &str| json!({"path": path, "content": "x"});
    let cases = [
        (json!([file("a"), file("")]), 1, "is empty"),
        (json!([file("/etc/passwd")]), 0, "is absolute"),
        (json!([file("a/../../etc/passwd")]), 0, "contains `..`"),
        (json!([file("a\\b")]), 0, "backslash"),
        (json!([file("dir/")]), 0, "name a file"),
        (json!([file(&"n".repeat(256))]), 0, "255 bytes"),
        (
            json!([file(&format!("{}f", "d/".repeat(17)))]),
            0,
            "16 directories",
        ),
        (
            json!([file("a.csv"), file("./a.csv")]),
            1,
            "is also files[0]",
        ),
        (json!([file("a"), file("a/b")]), 1, "directory of files[0]"),
        (
            json!([{"path": "b", "content": "***", "encoding": "base64"}]),
            0,
            "not valid base64",
        ),
    ];
    for (files, index, rule) in cases {
        let (status, answer) = refused(
            &router,
            &json!({"script": "def main(): pass", "files": files}),
        )
        .await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, "invalid_file"),
            "{files}: {answer}"
        );
        assert_eq!(answer["index"], index, "{answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.contains(&format!("files[{index}]")) && message.contains(rule),
            "{answer}"
        );
    }

    let many: Vec<Value> = (0..65).map(|i| file(&format!("f{i}"))).collect();
    let (status, answer) = refused(
        &router,
        &json!({"script": "def main(): pass", "files": many}),
    )
    .await;
    assert_eq!(
        (status, error_code(&answer)),
        (400, "too_many_files"),
        "{answer}"
    );
    assert_eq!(
        (&answer["files"], &answer["limit_files"]),
        (&json!(65), &json!(64))
    );

    let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; (8 << 20) + 1]);
    let body = json!({"script": "def main(): pass", "files": [{"path": "big", "content": big, "encoding": "base64"}]});
    let (status, answer) = refused(&router, &body).await;
    assert_eq!(
        (status, error_code(&answer)),
        (413, "files_too_large"),
        "{answer}"
    );
    assert_eq!(answer["limit_bytes"], 8 << 20);
}

/// Each rule on `return_files`, `limits` and the file encoding, with one bad request each.
#[tokio::test]
async fn every_rule_on_patterns_and_limits_is_a_400_saying_what_fits() {
    let router = router_only(|_| {});
    for (field, value, code, words) in [
        (
            "return_files",
            json!([]),
            "invalid_return_files",
            "glob patterns",
        ),
        (
            "return_files",
            json!([""]),
            "invalid_return_files",
            "1 to 256 bytes",
        ),
        (
            "return_files",
            json!("*.csv"),
            "invalid_request",
            "list of glob patterns",
        ),
        (
            "limits",
            json!({"time_ms": 30_001}),
            "invalid_limit",
            "between 1 and 30000",
        ),
        (
            "limits",
            json!({"time_ms": 0}),
            "invalid_limit",
            "limits.time_ms",
        ),
        (
            "limits",
            json!({"memory_bytes": 1 << 20}),
            "invalid_limit",
            "67108864",
        ),
        (
            "limits",
            json!({"output_bytes": 2 << 20}),
            "invalid_limit",
            "1048576",
        ),
        (
            "limits",
            json!({"cpu": 1}),
            "invalid_request",
            "unknown field `cpu`",
        ),
        (
            "files",
            json!([{"path": "a", "content": "x", "encoding": "hex"}]),
            "invalid_request",
            "unknown variant",
        ),
    ] {
        let (status, answer) = refused(
            &router,
            &json!({"script": "def main(): pass", field: value}),
        )
        .await;
        assert_eq!(
            (status, error_code(&answer)),
            (400, code),
            "{field}={value}: {answer}"
        );
        assert!(
            answer["error"].as_str().unwrap().contains(words),
            "{answer}"
        );
        if code == "invalid_limit" {
            assert!(answer["maximum"].is_u64(), "{answer}");
        }
    }
}

#[tokio::test]
async fn per_request_limits_apply_and_the_answer_says_which() {
    let app = app(ProfileChoice::Auto, true).await;
    let (status, body) = post(
        &app,
        json!({
            "script": "def main():\n    print('x' * 100)\n    return 1",
            "limits": {"output_bytes": 10},
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stdout"], "xxxxxxxxxx");
    assert_eq!(body["stdout_truncated"], true);
    assert_eq!(
        body["limits"],
        json!({"time_ms": 30_000, "memory_bytes": 512 << 20, "output_bytes": 10})
    );

    let (status, body) = post(
        &app,
        json!({"script": "import time\ndef main():\n    time.sleep(5)", "limits": {"time_ms": 300}}),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "time_limit_exceeded"),
        "{body}"
    );
    assert_eq!(body["time_limit_ms"], 300);

    let (status, body) = post(
        &app,
        json!({
            "script": "def main():\n    block = bytearray(200 << 20)\n    return len(block)",
            "limits": {"memory_bytes": 64 << 20},
        }),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "memory_limit_exceeded"),
        "{body}"
    );
    assert_eq!(body["memory_limit_bytes"], 64 << 20);

    // Without `limits` the answer does not carry them, and the service's own apply.
    let (status, body) = post(&app, json!({"script": "def main():\n    return 1"})).await;
    assert_eq!(status, 200);
    assert!(body.get("limits").is_none(), "{body}");
}

/// Links to what a script must not read (the host's secrets, the service's files, another
/// process's environment) are skipped, never followed, in both profiles; so is a file swapped
/// for a link while it is being read.
#[tokio::test]
async fn links_are_never_followed_and_a_file_swapped_while_read_never_comes_back_wrong() {
    let service_config = format!("{}/config/default.toml", env!("CARGO_MANIFEST_DIR"));
    for profile in [ProfileChoice::Strict, ProfileChoice::CloudRun] {
        let app = app(profile, true).await;
        let script = format!(
            r#"
import os, threading
def main():
    for name, target in [("shadow", "/etc/shadow"), ("environ", "/proc/self/environ"),
                         ("service", "{service_config}"), ("passwd", "/etc/passwd"),
                         ("parent", "..")]:
        os.symlink(target, name)
    try:
        os.link("/etc/shadow", "hard")
    except OSError:
        pass
    open("plain.txt", "w").write("plain")
    stop = threading.Event()
    def swap():
        while not stop.is_set():
            try:
                os.symlink("/etc/passwd", "swap.tmp")
                os.replace("swap.tmp", "swapped")
                with open("swap.tmp", "w") as f:
                    f.write("honest")
                os.replace("swap.tmp", "swapped")
            except OSError:
                pass
    threading.Thread(target=swap, daemon=True).start()
    return "ok"
"#
        );
        for _ in 0..3 {
            let (status, body) = post(&app, json!({"script": script, "return_files": true})).await;
            assert_eq!(status, 200, "{profile:?}: {body}");
            let files = body["files"].as_array().unwrap();
            for file in files {
                let content = file["content"].as_str().unwrap();
                assert!(
                    !content.contains("root:") && !content.contains("PATH="),
                    "{profile:?}: {file}"
                );
                if file["path"] == "swapped" {
                    assert_eq!(content, "honest", "{profile:?}");
                }
            }
            let skipped: Vec<(&str, &str)> = body["skipped_files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| (s["path"].as_str().unwrap(), s["reason"].as_str().unwrap()))
                .collect();
            for link in ["environ", "parent", "passwd", "service", "shadow"] {
                assert!(
                    skipped.contains(&(link, "symlink")),
                    "{profile:?}: {skipped:?}"
                );
            }
            assert!(
                files.iter().any(|f| f["path"] == "plain.txt"),
                "{profile:?}: {body}"
            );
            assert!(
                !files.iter().any(|f| f["path"] == "hard"),
                "{profile:?}: {body}"
            );
        }
    }
}

/// What one execution leaves in its working directory is not in the next one's, even on the
/// same slot (one sandbox at a time), on both paths and in both profiles.
#[tokio::test]
async fn files_of_one_execution_never_appear_in_another_s_answer() {
    for (profile, warm) in [
        (ProfileChoice::Strict, true),
        (ProfileChoice::CloudRun, true),
        (ProfileChoice::CloudRun, false),
    ] {
        let app = app(profile, warm).await;
        let leave = json!({
            "script": "import os, tempfile\ndef main():\n    open('secret.csv', 'w').write('mine')\n    open(os.path.join(tempfile.gettempdir(), 'tmp-secret'), 'w').write('mine')\n    return os.getcwd()",
            "files": [{"path": "in/secret.txt", "content": "mine"}],
        });
        let (status, body) = post(&app, leave).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = post(
            &app,
            json!({
                "script": "import os\ndef main():\n    return sorted(os.listdir('.'))",
                "return_files": true,
            }),
        )
        .await;
        assert_eq!(status, 200, "{profile:?} warm={warm}: {body}");
        assert_eq!(body["result"], json!([]), "{profile:?} warm={warm}: {body}");
        assert_eq!(body["files"], json!([]), "{profile:?} warm={warm}: {body}");
    }
}

/// Every profile and path, for what depends on the harness and the frame it writes.
const CONFIGURATIONS: [(ProfileChoice, bool); 4] = [
    (ProfileChoice::Strict, true),
    (ProfileChoice::Strict, false),
    (ProfileChoice::CloudRun, true),
    (ProfileChoice::CloudRun, false),
];

/// `(path, reason)` of each skipped entry.
fn skipped_of(body: &Value) -> Vec<(&str, &str)> {
    body["skipped_files"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| (s["path"].as_str().unwrap(), s["reason"].as_str().unwrap()))
        .collect()
}

fn paths_of(body: &Value) -> Vec<&str> {
    body["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect()
}

/// A name the service refuses in a returned path (a backslash, as an unzipped Windows archive
/// makes; a name that is not UTF-8) costs that file alone, never the answer; and two names
/// that decode to the same text are both skipped, never made one file.
#[tokio::test]
async fn an_odd_file_name_is_skipped_with_its_reason_never_the_whole_answer() {
    let backslash = "def main():\n    open('reports\\\\2024.csv', 'w').write('a,b\\n')\n    open('summary.csv', 'w').write('n\\n1\\n')\n    return 'ok'\n";
    let not_utf8 = "import os\ndef main():\n    for name in (b'caf\\xe9.txt', b'caf\\xe8.txt'):\n        fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o600)\n        os.write(fd, name)\n        os.close(fd)\n    open('plain.txt', 'w').write('plain')\n    return 'ok'\n";
    for (profile, warm) in CONFIGURATIONS {
        let app = app(profile, warm).await;
        let (status, body) = post(&app, json!({"script": backslash, "return_files": true})).await;
        let context = format!("{profile:?} warm={warm}: {body}");
        assert_eq!(status, 200, "{context}");
        assert_eq!(
            body["files"],
            json!([{"path": "summary.csv", "size": 4, "content": "n\n1\n", "encoding": "utf-8"}]),
            "{context}"
        );
        assert_eq!(
            skipped_of(&body),
            [("reports\\2024.csv", "name_refused")],
            "{context}"
        );
        assert_eq!(body["files_truncated"], false, "{context}");

        let (status, body) = post(&app, json!({"script": not_utf8, "return_files": true})).await;
        let context = format!("{profile:?} warm={warm}: {body}");
        assert_eq!(status, 200, "{context}");
        assert_eq!(paths_of(&body), ["plain.txt"], "{context}");
        assert_eq!(body["files"][0]["content"], "plain", "{context}");
        assert_eq!(
            skipped_of(&body),
            [
                ("caf\u{fffd}.txt", "name_not_utf8"),
                ("caf\u{fffd}.txt", "name_not_utf8")
            ],
            "{context}"
        );
    }
}

/// A script that writes the final frame itself (after the harness's `started`, then leaves
/// before the harness can write anything) is held to every cap the harness applies: the result
/// size, 64 skipped entries that stay inside the working directory, 100 null paths.
#[tokio::test]
async fn a_forged_final_frame_is_held_to_every_cap_the_harness_applies() {
    // The frame is built in the script and written on fd 3, whole, before `os._exit(0)`.
    let forge = |frame: &str| {
        format!(
            "import json, os\ndef main():\n    frame = {frame}\n    data = json.dumps(frame).encode() + b'\\n'\n    view = memoryview(data)\n    while view:\n        view = view[os.write(3, view):]\n    os._exit(0)\n"
        )
    };
    let huge = forge(r#"{"v": 2, "event": "returned", "result": "x" * (24 << 20)}"#);
    let skipped = forge(
        r#"{"v": 2, "event": "returned", "result": 1, "files": [], "files_truncated": False,
             "skipped_files": [{"path": f"../../etc/{i}" if i % 2 else f"l{i:04}", "reason": "symlink"}
                               for i in range(3000)]}"#,
    );
    let nulls = forge(
        r#"{"v": 2, "event": "returned", "result": 1,
             "nulls": {"count": 1, "paths": [f"result[{i}]" for i in range(3000)]}}"#,
    );
    let limit = pyexec::config::Limits::default().result_bytes;
    for (profile, warm) in CONFIGURATIONS {
        let app = app(profile, warm).await;
        let (status, body) = post(&app, json!({"script": huge})).await;
        let context = format!("{profile:?} warm={warm}");
        // Not the body: a wrong answer would be the 24 MiB result.
        assert_eq!(status, 400, "{context}: {}", body["code"]);
        assert_eq!(error_code(&body), "result_too_large", "{context}");
        assert_eq!(
            (&body["result_bytes"], &body["limit_bytes"]),
            (&json!((24 << 20) + 2), &json!(limit)),
            "{context}"
        );

        let (status, body) = post(&app, json!({"script": skipped, "return_files": true})).await;
        assert_eq!(status, 200, "{context}: {body}");
        let listed = skipped_of(&body);
        let expected: Vec<String> = (0..128).step_by(2).map(|i| format!("l{i:04}")).collect();
        assert_eq!(
            listed.iter().map(|(path, _)| *path).collect::<Vec<_>>(),
            expected,
            "{context}"
        );
        assert!(
            listed.iter().all(|(path, _)| !path.contains("..")),
            "{context}"
        );
        assert_eq!(body["files_truncated"], true, "{context}");

        let (status, body) = post(&app, json!({"script": nulls})).await;
        assert_eq!(status, 200, "{context}: {body}");
        let paths = body["nulls"]["paths"].as_array().unwrap();
        assert_eq!(paths.len(), 100, "{context}");
        assert_eq!(paths[99], "result[99]", "{context}");
        assert_eq!(body["nulls"]["count"], 3000, "{context}");
    }
}

/// Whatever a request sends, the harness reads it inside the execution, after `started`,
/// under the execution's own limits: an integer of 5,000 digits reaches `main` and comes back
/// with every digit, and 9 MB of input under a 64 MiB memory limit is the script's own memory
/// (it fits, or 400 `memory_limit_exceeded`), never the sandbox's failure (503, as it was when
/// the warm child parsed the job before `started`). In both profiles, warm and cold.
#[tokio::test]
async fn input_the_harness_reads_is_the_script_s_own_never_a_5xx() {
    let digits = format!("1{}", "0".repeat(4999));
    let big = "x".repeat(9 << 20);
    for (profile, warm) in [
        (ProfileChoice::Strict, true),
        (ProfileChoice::Strict, false),
        (ProfileChoice::CloudRun, true),
        (ProfileChoice::CloudRun, false),
    ] {
        let app = app(profile, warm).await;
        let context = format!("{profile:?} warm={warm}");
        // serde_json's Value cannot hold the number: the body goes and comes as text.
        let text = format!(r#"{{"script": "def main(n):\n    return n", "input": {digits}}}"#);
        let response = app
            .client
            .post(app.url("/execute"))
            .header("content-type", "application/json")
            .body(text)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{context}");
        let answer = response.text().await.unwrap();
        assert!(
            answer.starts_with(&format!(r#"{{"result":{digits},"#)),
            "{context}: {}",
            answer.chars().take(300).collect::<String>()
        );

        let (status, answer) = post(
            &app,
            json!({
                "script": "def main(text):\n    return len(text)",
                "input": big,
                "limits": {"memory_bytes": 64 << 20},
            }),
        )
        .await;
        // It fits or it does not, as the script's own memory; either way never a 5xx.
        let shown = answer.to_string().chars().take(300).collect::<String>();
        match status {
            200 => assert_eq!(answer["result"], big.len(), "{context}: {shown}"),
            400 => assert_eq!(
                error_code(&answer),
                "memory_limit_exceeded",
                "{context}: {shown}"
            ),
            _ => panic!("{context}: {status} {shown}"),
        }
    }
}
