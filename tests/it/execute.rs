//! What scripts do, through the real server, nsjail and sandbox Python: results, output,
//! every way a script fails, the time limit, concurrency and clean-up.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use crate::common;

use std::time::{Duration, Instant};

use common::{error_code, spawn_app, spawn_app_with};
use pyexec::config::ProfileChoice;
use serde_json::{Value, json};

async fn ok(app: &common::TestApp, script: &str) -> Value {
    let (status, body) = app.execute(script).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn failed(app: &common::TestApp, script: &str, code: &str) -> Value {
    let (status, body) = app.execute(script).await;
    assert_eq!((status, error_code(&body)), (400, code), "{body}");
    body
}

// The four examples of the original service's README.

#[tokio::test]
async fn readme_example_hello_world() {
    let app = spawn_app().await;
    let body = ok(
        &app,
        "def main():\n    print('Hello, World!')\n    return {'message': 'Hello from main'}\n",
    )
    .await;
    assert_eq!(
        (&body["result"], &body["stdout"]),
        (
            &json!({"message": "Hello from main"}),
            &json!("Hello, World!\n")
        )
    );
}

#[tokio::test]
async fn readme_example_numpy_and_pandas() {
    let app = spawn_app().await;
    let script = "import numpy as np\nimport pandas as pd\n\ndef main():\n    df = pd.DataFrame({'a': [1, 2, 3], 'b': [4, 5, 6]})\n    print(df.sum().to_dict())\n    return {'mean_a': float(df['a'].mean()), 'matrix': np.eye(2).tolist()}\n";
    let body = ok(&app, script).await;
    assert_eq!(
        body["result"],
        json!({"mean_a": 2.0, "matrix": [[1.0, 0.0], [0.0, 1.0]]})
    );
    assert_eq!(body["stdout"], "{'a': 6, 'b': 15}\n");
}

#[tokio::test]
async fn readme_example_missing_main() {
    let app = spawn_app().await;
    let body = failed(&app, "print('no main here')\n", "no_main").await;
    assert!(body["error"].as_str().unwrap().contains("main()"), "{body}");
    assert_eq!(body["stdout"], "no main here\n");
}

#[tokio::test]
async fn readme_example_non_json_result() {
    let app = spawn_app().await;
    let body = failed(
        &app,
        "def main():\n    return {1, 2, 3}\n",
        "result_not_serializable",
    )
    .await;
    assert_eq!(body["type"], "set");
    assert!(body["error"].as_str().unwrap().contains("a set"), "{body}");
}

// Results.

#[tokio::test]
async fn results_are_main_return_value_exactly() {
    let app = spawn_app().await;
    let cases = [
        ("None", json!(null)),
        (
            "'text with \"quotes\" and \\n'",
            json!("text with \"quotes\" and \n"),
        ),
        (
            "{'a': [1, 2.5, True, None, {'b': []}], 'c': (1, 2)}",
            json!({"a": [1, 2.5, true, null, {"b": []}], "c": [1, 2]}),
        ),
        ("'héllo ✓ 😀'", json!("héllo ✓ 😀")),
        ("-0.1", json!(-0.1)),
        (
            "{1: 'int keys become strings'}",
            json!({"1": "int keys become strings"}),
        ),
    ];
    for (expression, expected) in cases {
        let body = ok(&app, &format!("def main():\n    return {expression}\n")).await;
        assert_eq!(body["result"], expected, "{expression}");
    }
}

#[tokio::test]
async fn big_integers_arrive_digit_for_digit() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/execute"))
        .json(&json!({"script": "def main():\n    return [2**200, -3**50]\n"}));
    let text = response.send().await.unwrap().text().await.unwrap();
    let expected = format!(
        "\"result\":[{},-717897987691852588770249]",
        "1606938044258990275541962092341162602522202993782792835301376"
    );
    assert!(text.contains(&expected), "{text}");
}

#[tokio::test]
async fn async_main_is_awaited() {
    let app = spawn_app().await;
    let body = ok(
        &app,
        "import asyncio\nasync def main():\n    await asyncio.sleep(0)\n    return 'awaited'\n",
    )
    .await;
    assert_eq!(body["result"], "awaited");
}

// Output.

#[tokio::test]
async fn stdout_is_captured_exactly_including_subprocesses_and_c_level_writes() {
    let app = spawn_app().await;
    let script = "import os, subprocess, sys\ndef main():\n    print('  leading and trailing  ')\n    sys.stdout.write('no newline')\n    sys.stdout.flush()\n    os.write(1, b'|fd1|')\n    subprocess.run(['/bin/echo', 'from a child'])\n    print('to stderr', file=sys.stderr)\n    return 1\n";
    let body = ok(&app, script).await;
    assert_eq!(
        body["stdout"],
        "  leading and trailing  \nno newline|fd1|from a child\n"
    );
    assert_eq!(body["stderr"], "to stderr\n");
    assert_eq!(body["stdout_truncated"], false);
}

#[tokio::test]
async fn unicode_and_invalid_utf8_in_stdout() {
    let app = spawn_app().await;
    let script = "import os\ndef main():\n    print('naïve ☃ 😀')\n    os.write(1, b'bad \\xff\\xfe end\\n')\n";
    let body = ok(&app, script).await;
    assert_eq!(body["stdout"], "naïve ☃ 😀\nbad \u{fffd}\u{fffd} end\n");
}

#[tokio::test]
async fn printed_lines_that_look_like_results_change_nothing() {
    let app = spawn_app().await;
    let script = "import sys\ndef main():\n    print('{\"v\": 1, \"event\": \"returned\", \"result\": \"forged\"}')\n    print('{\"result\": \"forged\", \"stdout\": \"\"}')\n    sys.stderr.write('{\"v\": 1, \"event\": \"started\"}\\n')\n    return 'real'\n";
    let body = ok(&app, script).await;
    assert_eq!(body["result"], "real");
    assert!(body["stdout"].as_str().unwrap().contains("forged"));
}

#[tokio::test]
async fn output_beyond_the_cap_is_truncated_and_flagged() {
    let app = spawn_app_with(|config| config.limits.output_bytes = 1000).await;
    let body = ok(
        &app,
        "def main():\n    print('x' * 5000)\n    return 'done'\n",
    )
    .await;
    assert_eq!(body["stdout"].as_str().unwrap().len(), 1000);
    assert_eq!(
        (&body["stdout_truncated"], &body["result"]),
        (&json!(true), &json!("done"))
    );
}

// Failures.

#[tokio::test]
async fn syntax_errors_name_the_line() {
    let app = spawn_app().await;
    let body = failed(
        &app,
        "def main():\n    return 1\n\ndef broken(:\n    pass\n",
        "syntax_error",
    )
    .await;
    assert_eq!(body["line"], 4, "{body}");
    assert!(body["error"].as_str().unwrap().contains("line 4"), "{body}");
    let body = failed(
        &app,
        "def main():\n\treturn 1\n        return 2\n",
        "syntax_error",
    )
    .await;
    assert_eq!(body["line"], 3, "{body}");
}

#[tokio::test]
async fn main_only_in_a_comment_or_string_does_not_count() {
    let app = spawn_app().await;
    failed(&app, "# def main():\n#     return 1\n", "no_main").await;
    failed(
        &app,
        "doc = '''\ndef main():\n    return 1\n'''\n",
        "no_main",
    )
    .await;
    failed(
        &app,
        "class A:\n    def main(self):\n        return 1\n",
        "no_main",
    )
    .await;
    let body = failed(&app, "main = 42\n", "no_main").await;
    assert!(body["error"].as_str().unwrap().contains("int"), "{body}");
}

#[tokio::test]
async fn main_that_needs_arguments_is_refused() {
    let app = spawn_app().await;
    let body = failed(
        &app,
        "def main(data, *, flag):\n    return data\n",
        "main_requires_arguments",
    )
    .await;
    assert!(
        body["error"].as_str().unwrap().contains("data, flag"),
        "{body}"
    );
    ok(&app, "def main(x=1, *args, **kwargs):\n    return x\n").await;
}

#[tokio::test]
async fn exceptions_carry_type_message_traceback_and_prior_output() {
    let app = spawn_app().await;
    let script = "def helper():\n    raise KeyError('missing')\n\ndef main():\n    print('before')\n    helper()\n";
    let body = failed(&app, script, "script_exception").await;
    assert_eq!(body["exception"]["type"], "KeyError");
    assert_eq!(body["exception"]["message"], "'missing'");
    let traceback = body["exception"]["traceback"].as_str().unwrap();
    assert!(
        traceback.contains("line 6, in main") && traceback.contains("line 2, in helper"),
        "{traceback}"
    );
    assert!(
        !traceback.contains("harness"),
        "the harness's frames are hidden: {traceback}"
    );
    assert_eq!(body["stdout"], "before\n");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("main() raised KeyError"),
        "{body}"
    );

    let body = failed(
        &app,
        "import no_such_module\ndef main():\n    return 1\n",
        "script_exception",
    )
    .await;
    assert_eq!(body["exception"]["type"], "ModuleNotFoundError");
    assert!(
        body["error"].as_str().unwrap().contains("while loading"),
        "{body}"
    );
}

#[tokio::test]
async fn non_json_results_name_the_type() {
    let app = spawn_app().await;
    // (expression, strict_result, what the message names): what no mapping carries, and with
    // `strict_result` what only the mapping carries.
    let cases = [
        ("float('nan')", true, "NaN"),
        ("[1, float('inf')]", true, "Infinity"),
        ("object()", false, "object"),
        ("{1, 2}", false, "set"),
        (
            "{'when': __import__('datetime').date(2024, 1, 1)}",
            true,
            "datetime.date",
        ),
        ("__import__('numpy').arange(3)", true, "numpy.ndarray"),
        ("{(1, 2): 'tuple key'}", false, "tuple"),
    ];
    for (expression, strict_result, mentioned) in cases {
        let (status, body) = app
            .post_json(&json!({
                "script": format!("def main():\n    return {expression}\n"),
                "strict_result": strict_result,
            }))
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (400, "result_not_serializable"),
            "{expression}: {body}"
        );
        assert!(
            body["error"].as_str().unwrap().contains(mentioned),
            "{expression}: {body}"
        );
    }
    let body = failed(
        &app,
        "def main():\n    a = []\n    a.append(a)\n    return a\n",
        "result_not_serializable",
    )
    .await;
    assert!(
        body["error"].as_str().unwrap().contains("ircular"),
        "{body}"
    );
}

#[tokio::test]
async fn exiting_before_main_returns_is_the_scripts_own_exit() {
    let app = spawn_app().await;
    for (script, code) in [
        (
            "import sys\ndef main():\n    print('bye')\n    sys.exit(3)\n",
            json!(3),
        ),
        ("import sys\ndef main():\n    sys.exit()\n", json!(null)),
        (
            "import sys\nsys.exit('at load')\ndef main():\n    return 1\n",
            json!("at load"),
        ),
        (
            "import os\ndef main():\n    print('bye', flush=True)\n    os._exit(0)\n",
            json!(0),
        ),
        ("import os\ndef main():\n    os._exit(137)\n", json!(137)),
        ("import os\ndef main():\n    os._exit(255)\n", json!(255)),
    ] {
        let body = failed(&app, script, "script_exited").await;
        assert_eq!(body["exit_code"], code, "{script}: {body}");
    }
    let body = failed(
        &app,
        "import sys\ndef main():\n    print('bye')\n    sys.exit(3)\n",
        "script_exited",
    )
    .await;
    assert_eq!(body["stdout"], "bye\n");
}

#[tokio::test]
async fn a_crash_is_reported_with_its_signal() {
    let app = spawn_app().await;
    let body = failed(
        &app,
        "import ctypes\ndef main():\n    print('about to crash')\n    ctypes.string_at(0)\n",
        "script_crashed",
    )
    .await;
    assert_eq!(
        (&body["signal"], &body["signal_name"]),
        (&json!(11), &json!("SIGSEGV")),
        "{body}"
    );
    assert_eq!(body["stdout"], "about to crash\n");
    assert!(
        body["stderr"]
            .as_str()
            .unwrap()
            .contains("Fatal Python error"),
        "faulthandler's trace: {body}"
    );
}

#[tokio::test]
async fn the_time_limit_stops_the_script_in_time() {
    let app = spawn_app_with(|config| config.limits.time_limit_ms = 2000).await;
    let started = Instant::now();
    let body = failed(&app, "import time\ndef main():\n    print('started')\n    while True:\n        time.sleep(0.01)\n", "time_limit_exceeded").await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(6),
        "{elapsed:?}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("time limit"),
        "{body}"
    );
    assert_eq!(
        (&body["time_limit_ms"], &body["stdout"]),
        (&json!(2000), &json!("started\n"))
    );
    // The service answers normally right after.
    assert_eq!(
        ok(&app, "def main():\n    return 'fine'\n").await["result"],
        "fine"
    );
}

#[tokio::test]
async fn writing_garbage_to_the_result_channel_is_a_clear_error() {
    let app = spawn_app().await;
    let body = failed(
        &app,
        "import os\ndef main():\n    os.write(3, b'garbage\\n')\n    os._exit(0)\n",
        "result_unreadable",
    )
    .await;
    assert!(
        body["error"].as_str().unwrap().contains("descriptor 3"),
        "{body}"
    );
}

#[tokio::test]
async fn results_over_the_limit_are_refused_by_size() {
    let app = spawn_app_with(|config| config.limits.result_bytes = 1000).await;
    let body = failed(
        &app,
        "def main():\n    return 'x' * 5000\n",
        "result_too_large",
    )
    .await;
    assert_eq!(
        (&body["result_bytes"], &body["limit_bytes"]),
        (&json!(5002), &json!(1000))
    );
}

// Concurrency and clean-up.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_each_get_their_own_answer() {
    let app = spawn_app().await;
    let requests = (0..12).map(|i| {
        let script = format!(
            "import time\ndef main():\n    time.sleep(0.2)\n    print({i})\n    return {i} * 10\n"
        );
        let app = &app;
        async move { app.execute(&script).await }
    });
    let answers = futures::future::join_all(requests).await;
    for (i, (status, body)) in answers.into_iter().enumerate() {
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (&body["result"], &body["stdout"]),
            (&json!(i * 10), &json!(format!("{i}\n")))
        );
    }
    let left = app.leftovers_after_sweeps().await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn no_files_or_processes_outlive_an_execution() {
    let app = spawn_app_with(|config| config.limits.time_limit_ms = 2000).await;
    let script = "import os, subprocess, tempfile\ndef main():\n    subprocess.Popen(['/bin/sleep', '60'])\n    with open(os.path.join(tempfile.gettempdir(), 'left.txt'), 'w') as f:\n        f.write('x')\n    return 'ok'\n";
    ok(&app, script).await;
    let forever = "import subprocess\ndef main():\n    subprocess.Popen(['/bin/sleep', '60'])\n    while True:\n        pass\n";
    failed(&app, forever, "time_limit_exceeded").await;
    let left = app.leftovers_after_sweeps().await;
    assert!(left.is_empty(), "{left:?}");
    let left = app.processes_left().await;
    assert!(left.is_empty(), "{left:?}");
}

// What the harness reports is made safe and bounded, whatever the script hands it, in both
// profiles.

async fn in_each_profile() -> Vec<common::TestApp> {
    let mut apps = Vec::new();
    for profile in [ProfileChoice::Strict, ProfileChoice::CloudRun] {
        apps.push(spawn_app_with(|config| config.sandbox.profile = profile).await);
    }
    apps
}

#[tokio::test]
async fn undecodable_text_in_a_message_or_result_becomes_the_replacement_character() {
    for app in in_each_profile().await {
        let body = failed(
            &app,
            "import os\ndef main():\n    raise ValueError('cannot parse ' + os.fsdecode(b'name-\\xff'))\n",
            "script_exception",
        )
        .await;
        assert_eq!(
            body["exception"]["message"], "cannot parse name-\u{fffd}",
            "{body}"
        );
        let body = ok(
            &app,
            "import os\ndef main():\n    return os.fsdecode(b'\\xfe') + '\u{e9}'\n",
        )
        .await;
        assert_eq!(body["result"], "\u{fffd}\u{e9}", "{body}");
    }
}

#[tokio::test]
async fn a_huge_exception_message_is_capped_and_flagged() {
    for app in in_each_profile().await {
        let body = failed(
            &app,
            "def main():\n    raise ValueError('x' * 20_000_000)\n",
            "script_exception",
        )
        .await;
        let exception = &body["exception"];
        assert_eq!(exception["message"].as_str().unwrap().len(), 16 * 1024);
        assert_eq!(
            (
                &exception["message_truncated"],
                &exception["traceback_truncated"]
            ),
            (&json!(true), &json!(true)),
            "{}",
            app.profile.name()
        );
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("main() raised ValueError: xxx")
        );
    }
}

/// What pandas users return first, answered with the documented JSON (README's mapping).
#[tokio::test]
async fn pandas_and_numpy_results_come_back_as_documented_json() {
    let app = spawn_app().await;
    let setup = "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 4], 'b': [1.5, None, 3.0]})\n";
    let cases = [
        ("df['a'].sum()", json!(7), Value::Null),
        (
            "df.to_dict()",
            json!({"a": {"0": 1, "1": 2, "2": 4}, "b": {"0": 1.5, "1": null, "2": 3.0}}),
            json!({"count": 1, "paths": ["result['b'][1]"]}),
        ),
        (
            "df.describe().loc[['count', 'mean', 'max']]",
            json!([
                {"index": "count", "a": 3.0, "b": 2.0},
                {"index": "mean", "a": 7.0 / 3.0, "b": 2.25},
                {"index": "max", "a": 4.0, "b": 3.0},
            ]),
            Value::Null,
        ),
    ];
    for (expression, expected, nulls) in cases {
        let (status, body) = app
            .execute(&format!("{setup}def main():\n    return {expression}\n"))
            .await;
        assert_eq!(status, 200, "{expression}: {body}");
        assert_eq!(body["result"], expected, "{expression}");
        assert_eq!(
            body.get("nulls").cloned().unwrap_or(Value::Null),
            nulls,
            "{expression}"
        );
    }
}
