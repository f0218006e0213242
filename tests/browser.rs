//! The browser page, in a real browser: headless Chromium driven through `WebDriver`
//! (chromedriver, on a loopback port of its own) loads `/` from the real service, shows what
//! `GET /` says as JSON (profile, guarantees, limits, Python and packages), runs examples
//! through its form, with the mouse and with the keyboard, and shows the same answers the API
//! gives; what a script prints, raises or returns in a `DataFrame` stays text (no markup from it
//! is ever parsed, and the policy reports no violation). The form's other fields: a JSON input
//! and uploaded files (a CSV and binary bytes) with `return_files` and a time limit make the
//! request a direct `POST /execute` would, and the page shows its answer (the `DataFrame` as a
//! table, the returned file, the nulls); a bad input, limit or file set is refused with a
//! message and sends nothing; `strict_result` turns the mapping off. Leaves a screenshot of
//! the `DataFrame`'s answer at `target/browser/page.png`.
//! Also, at the router: which clients get the page, and its headers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed unwrap is a failed test"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The browser itself rather than Debian's `/usr/bin/chromium` wrapper script, whose
/// `/etc/chromium.d` flags would make the run depend on the host.
const CHROMIUM: [&str; 2] = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"];

/// A script whose output and result are markup: they must show as text.
const INJECTION: &str = r#"PAYLOAD = '<img src=x onerror="document.title=1"><script>document.title=2</script><b>bold</b>'


def main():
    print(PAYLOAD)
    return PAYLOAD
"#;
/// ... and one whose error message (and so the traceback) is.
const INJECTION_RAISED: &str = r#"PAYLOAD = '<img src=x onerror="document.title=1"><script>document.title=2</script><b>bold</b>'


def main():
    raise ValueError(PAYLOAD)
"#;
/// ... and one that returns it in a `DataFrame`, as a cell and as a column's name.
const INJECTION_TABLE: &str = r#"import pandas as pd

PAYLOAD = '<img src=x onerror="document.title=1"><script>document.title=2</script><b>bold</b>'


def main():
    return pd.DataFrame({"cell": [PAYLOAD], PAYLOAD: [1]})
"#;
const PAYLOAD: &str =
    r#"<img src=x onerror="document.title=1"><script>document.title=2</script><b>bold</b>"#;

/// Reads an uploaded CSV with pandas and a binary file, scales by its input, writes a CSV and
/// returns a `DataFrame`, a NaN and scalars.
const SALES: &str = r#"import pandas as pd


def main(options):
    sales = pd.read_csv("sales.csv")
    sales["revenue"] = sales["units"] * sales["price"] * options["scale"]
    by_region = sales.groupby("region", as_index=False)["revenue"].sum()
    by_region.to_csv("by_region.csv", index=False)
    with open("weights.bin", "rb") as weights:
        checksum = sum(weights.read())
    return {
        "rows": len(sales),
        "by_region": by_region,
        "checksum": checksum,
        "missing": float("nan"),
    }
"#;
const SALES_CSV: &str = "region,units,price\nnorth,3,2.5\nsouth,5,1.0\nnorth,1,4.0\n";

/// chromedriver on a free loopback port, in a process group of its own with the browsers it
/// starts: dropping it kills the group, so a failed test leaves no browser behind.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    async fn start() -> Self {
        // A port the kernel just gave out and took back: free, but for a race nobody runs here.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = {
            use std::os::unix::process::CommandExt as _;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|error| {
                    panic!("cannot run {CHROMEDRIVER} ({error}): `make test` installs it")
                })
        };
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        // Ready once its status says so; it takes a fraction of a second.
        let status = format!("{}/status", driver.url);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = http.get(&status).send().await
                && let Ok(body) = response.json::<Value>().await
                && body["value"]["ready"] == true
            {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A headless browser that reaches nothing but loopback: names resolve to nothing, and
    /// every other address goes to a proxy that is not there (Chromium never proxies loopback).
    async fn browser(&self, profile: &Path) -> Client {
        let binary = CHROMIUM
            .into_iter()
            .find(|path| Path::new(path).exists())
            .expect("chromium is installed: `make test` installs it");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=1280,1000",
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                    "--proxy-server=127.0.0.1:9",
                    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-default-apps",
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let group = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }
}

async fn find(client: &Client, css: &str) -> Element {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("{css}: {error}"))
}

/// The element's `textContent`: exactly its text, unlike `WebDriver`'s rendered text.
async fn text(client: &Client, css: &str) -> String {
    find(client, css)
        .await
        .prop("textContent")
        .await
        .unwrap()
        .unwrap_or_default()
}

/// The `textContent` of every element `css` matches, in document order.
async fn texts(client: &Client, css: &str) -> Vec<String> {
    let mut found = Vec::new();
    for element in client.find_all(Locator::Css(css)).await.unwrap() {
        found.push(
            element
                .prop("textContent")
                .await
                .unwrap()
                .unwrap_or_default(),
        );
    }
    found
}

/// Replaces what a field holds by typing `keys` (nothing: empties it).
async fn type_into(client: &Client, css: &str, keys: &str) {
    let field = find(client, css).await;
    field.clear().await.unwrap();
    if !keys.is_empty() {
        field.send_keys(keys).await.unwrap();
    }
}

/// The bodies the page has sent to `/execute`, as sent.
async fn sent(client: &Client) -> Vec<Value> {
    let sent = client.execute("return window.sent;", vec![]).await.unwrap();
    sent.as_array()
        .unwrap()
        .iter()
        .map(|body| serde_json::from_str(body.as_str().unwrap()).unwrap())
        .collect()
}

/// How many answers the form has shown.
async fn runs(client: &Client) -> Option<String> {
    find(client, "#outcome")
        .await
        .attr("data-runs")
        .await
        .unwrap()
}

/// Waits for the form's `runs`-th answer and returns its status.
async fn answered(client: &Client, runs: u32) -> String {
    let css = format!("#outcome[data-state='done'][data-runs='{runs}']");
    let outcome = client
        .wait()
        .at_most(Duration::from_secs(60))
        .for_element(Locator::Css(&css))
        .await
        .unwrap_or_else(|error| panic!("no answer {runs} on the page: {error}"));
    outcome.attr("data-status").await.unwrap().unwrap()
}

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.py")),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_service_and_runs_scripts_as_the_api_does() {
    let app = common::spawn_app().await;
    let (_, info) = app.get("/").await;
    let driver = ChromeDriver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let client = driver.browser(profile.path()).await;
    client.goto(&app.url("/")).await.unwrap();
    client
        .wait()
        .for_element(Locator::Css("#packages tr[data-package]"))
        .await
        .expect("the page's script ran (the policy allows it) and listed the packages");
    assert_eq!(client.title().await.unwrap(), "pyexec");
    // Every request the page sends, as sent.
    client
        .execute(
            "window.sent = []; const send = window.fetch;\
             window.fetch = function (url, options) {\
               window.sent.push(options.body); return send.apply(this, arguments); };",
            vec![],
        )
        .await
        .unwrap();
    shows_what_get_says(&client, &info).await;
    runs_a_success_with_the_mouse(&client, &app).await;
    shows_markup_as_text(&client).await;
    runs_an_error_with_the_keyboard(&client, &app).await;
    refuses_what_it_cannot_send(&client, &info).await;
    strict_result_turns_the_mapping_off(&client, &app).await;
    runs_a_dataframe_with_input_and_files(&client, &app).await;
    shows_output_while_the_script_runs(&client).await;
    let path = screenshot(&client).await;
    eprintln!("screenshot: {}", path.display());
    client.close().await.unwrap();
}

/// What `GET /` says as JSON is on the page: profile, guarantees, limits, Python, packages.
async fn shows_what_get_says(client: &Client, info: &Value) {
    assert_eq!(text(client, "#profile").await, info["isolation"]["profile"]);
    assert_eq!(
        text(client, "#limits-backend").await,
        info["isolation"]["limits"]
    );
    for (list, field) in [
        ("#guarantees", "guarantees"),
        ("#not-isolated", "not_isolated"),
    ] {
        let mut shown = Vec::new();
        for item in client
            .find_all(Locator::Css(&format!("{list} li:not([data-none])")))
            .await
            .unwrap()
        {
            shown.push(Value::from(
                item.prop("textContent").await.unwrap().unwrap(),
            ));
        }
        assert_eq!(Value::from(shown), info["isolation"][field], "{field}");
    }
    for (name, value) in info["limits"].as_object().unwrap() {
        let shown = find(client, &format!("tr[data-limit='{name}'] data"))
            .await
            .attr("value")
            .await
            .unwrap();
        assert_eq!(shown, Some(value.to_string()), "{name}");
    }
    assert_eq!(text(client, "#python").await, info["python"]);
    let mut packages = Vec::new();
    for row in client
        .find_all(Locator::Css("#packages tr[data-package]"))
        .await
        .unwrap()
    {
        let cells = row.find_all(Locator::Css("th, td")).await.unwrap();
        packages.push(json!({
            "name": cells[0].text().await.unwrap(),
            "version": cells[1].text().await.unwrap(),
        }));
    }
    assert_eq!(Value::from(packages), info["packages"]);
    assert!(!info["packages"].as_array().unwrap().is_empty());
    find(client, "label[for='script']").await;
}

/// A click puts the example's script in the form, a click runs it: the page shows the
/// result, stdout and stderr the API answers.
async fn runs_a_success_with_the_mouse(client: &Client, app: &common::TestApp) {
    find(client, "button[data-example='hello']")
        .await
        .click()
        .await
        .unwrap();
    let hello = example("hello");
    let script = find(client, "#script").await;
    assert_eq!(script.prop("value").await.unwrap(), Some(hello.clone()));
    find(client, "#run").await.click().await.unwrap();
    assert_eq!(answered(client, 1).await, "200");
    let (status, api) = app.execute(&hello).await;
    assert_eq!(status, 200);
    let result: Value = serde_json::from_str(&text(client, "#result").await).unwrap();
    assert_eq!(result, api["result"]);
    assert_eq!(text(client, "#stdout").await, api["stdout"]);
    assert_eq!(api["stdout"], "Hello, World!\n");
    assert_eq!(text(client, "#stderr").await, api["stderr"]);
}

/// Markup in what a script prints and returns stays text: no element is made from it, no
/// handler runs, and the policy had nothing to block.
async fn shows_markup_as_text(client: &Client) {
    client
        .execute(
            "window.violations = [];\
             document.addEventListener('securitypolicyviolation',\
               (event) => window.violations.push(event.violatedDirective));",
            vec![],
        )
        .await
        .unwrap();
    let run = async |script: &str| {
        client
            .execute(
                "document.getElementById('script').value = arguments[0];",
                vec![json!(script)],
            )
            .await
            .unwrap();
        find(client, "#run").await.click().await.unwrap();
    };
    run(INJECTION).await;
    assert_eq!(answered(client, 2).await, "200");
    assert_eq!(text(client, "#stdout").await, format!("{PAYLOAD}\n"));
    let result: Value = serde_json::from_str(&text(client, "#result").await).unwrap();
    assert_eq!(result, PAYLOAD);
    run(INJECTION_RAISED).await;
    assert_eq!(answered(client, 3).await, "400");
    assert_eq!(
        text(client, "#error-message").await,
        format!("main() raised ValueError: {PAYLOAD}")
    );
    assert_eq!(
        text(client, "#error-details dd[data-field='message']").await,
        PAYLOAD
    );
    run(INJECTION_TABLE).await;
    assert_eq!(answered(client, 4).await, "200");
    let table = "#result-tables table[data-key='']";
    assert_eq!(
        texts(client, &format!("{table} thead th")).await,
        ["cell", PAYLOAD]
    );
    assert_eq!(
        texts(client, &format!("{table} tbody td")).await,
        [PAYLOAD, "1"]
    );
    let made = client
        .execute(
            "return {images: document.images.length, bold: document.querySelectorAll('b').length,\
                     scripts: document.scripts.length, title: document.title,\
                     violations: window.violations};",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        made,
        json!({"images": 0, "bold": 0, "scripts": 2, "title": "pyexec", "violations": []}),
        "the script's output was parsed as markup"
    );
}

/// Without a mouse: Enter on the example's button fills the form and focuses the script,
/// Ctrl+Enter there runs it; the page shows the error's code, message and details, and
/// what the script printed, as the API answers them.
async fn runs_an_error_with_the_keyboard(client: &Client, app: &common::TestApp) {
    let button = find(client, "button[data-example='exception']").await;
    client
        .execute(
            "arguments[0].focus();",
            vec![serde_json::to_value(&button).unwrap()],
        )
        .await
        .unwrap();
    button.send_keys(&Key::Enter.to_string()).await.unwrap();
    let failing = example("exception");
    let focused = client.active_element().await.unwrap();
    assert_eq!(focused.attr("id").await.unwrap().as_deref(), Some("script"));
    assert_eq!(focused.prop("value").await.unwrap(), Some(failing.clone()));
    focused
        .send_keys(&format!("{}{}", Key::Control, Key::Enter))
        .await
        .unwrap();
    assert_eq!(answered(client, 5).await, "400");
    let (status, api) = app.execute(&failing).await;
    assert_eq!(
        (status, common::error_code(&api)),
        (400, "script_exception")
    );
    assert_eq!(text(client, "#error-code").await, api["code"]);
    assert_eq!(text(client, "#error-message").await, api["error"]);
    assert_eq!(
        text(client, "#error-details > dd[data-field='phase']").await,
        api["phase"]
    );
    assert_eq!(
        text(client, "#error-details dd[data-field='type']").await,
        api["exception"]["type"]
    );
    assert_eq!(
        text(client, "#error-details dd[data-field='traceback'] pre").await,
        api["exception"]["traceback"]
    );
    assert_eq!(text(client, "#stdout").await, api["stdout"]);
    assert_eq!(api["stdout"], "looking up a pear\n");
}

/// What the form cannot send it does not send: input that is not JSON, a limit out of the
/// service's range, files over `limits.input_bytes`. Each says why by its field, which gets the
/// focus (the limits open), and the status says "Not sent".
async fn refuses_what_it_cannot_send(client: &Client, info: &Value) {
    let sent_before = sent(client).await.len();
    let runs_before = runs(client).await;

    type_into(client, "#input", r#"{"scale": 2,}"#).await;
    let message = refused(client, "input", "#input-error").await;
    assert!(message.starts_with("The input is not JSON ("), "{message}");
    type_into(client, "#input", "").await;
    let error = find(client, "#input-error").await;
    assert!(
        error.attr("hidden").await.unwrap().is_some(),
        "editing clears it"
    );

    find(client, "#run-limits summary")
        .await
        .click()
        .await
        .unwrap();
    type_into(client, "#limit-memory", "63").await;
    let message = refused(client, "limit-memory", "#limits-error").await;
    let max_mib = info["limits"]["memory_bytes"].as_u64().unwrap() >> 20;
    assert_eq!(
        message,
        format!("The memory must be a whole number of MiB from 64 to {max_mib}.")
    );
    type_into(client, "#limit-memory", "").await;
    let max_ms = info["limits"]["time_limit_ms"].as_u64().unwrap();
    type_into(client, "#limit-time", &(max_ms + 1).to_string()).await;
    let message = refused(client, "limit-time", "#limits-error").await;
    assert!(message.starts_with("The wall time must be"), "{message}");
    type_into(client, "#limit-time", "").await;

    refuses_files_too_large(client, info).await;
    assert_eq!(sent(client).await.len(), sent_before, "nothing was sent");
    assert_eq!(runs(client).await, runs_before, "no answer changed");
}

/// Clicks Run, expecting the message `error` by the field `id`, which has the focus and is
/// marked invalid, and "Not sent" with the message in the status; returns the message.
async fn refused(client: &Client, id: &str, error: &str) -> String {
    find(client, "#run").await.click().await.unwrap();
    let shown = client
        .wait()
        .for_element(Locator::Css(&format!("{error}:not([hidden])")))
        .await
        .unwrap_or_else(|problem| panic!("no message in {error}: {problem}"));
    let message = shown.prop("textContent").await.unwrap().unwrap();
    let focused = client.active_element().await.unwrap();
    assert_eq!(focused.attr("id").await.unwrap().as_deref(), Some(id));
    assert_eq!(
        focused.attr("aria-invalid").await.unwrap().as_deref(),
        Some("true"),
        "{id}"
    );
    assert_eq!(
        text(client, "#status").await,
        format!("Not sent: {message}")
    );
    message
}

/// Files over `limits.input_bytes` are refused by their size alone (a sparse file the page
/// never reads), as soon as chosen and again on Run; "Clear files" empties the picker.
async fn refuses_files_too_large(client: &Client, info: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.csv");
    let limit = info["limits"]["input_bytes"].as_u64().unwrap();
    std::fs::File::create(&big)
        .unwrap()
        .set_len(limit + 1)
        .unwrap();
    find(client, "#files")
        .await
        .send_keys(big.to_str().unwrap())
        .await
        .unwrap();
    let summary = text(client, "#files-summary").await;
    assert!(
        summary.contains("Not sent:") && summary.contains("(limits.input_bytes)"),
        "{summary}"
    );
    find(client, "#run").await.click().await.unwrap();
    client
        .wait()
        .for_element(Locator::XPath(
            "//*[@id='status'][starts-with(., 'Not sent: ')]",
        ))
        .await
        .unwrap();
    let focused = client.active_element().await.unwrap();
    assert_eq!(focused.attr("id").await.unwrap().as_deref(), Some("files"));
    assert_eq!(
        focused.attr("aria-invalid").await.unwrap().as_deref(),
        Some("true")
    );
    find(client, "#files-clear").await.click().await.unwrap();
    assert_eq!(text(client, "#files-summary").await, "No files chosen.");
}

/// With "strict result" checked the request says so, and a NaN is an error as the API says.
async fn strict_result_turns_the_mapping_off(client: &Client, app: &common::TestApp) {
    let nan = "def main():\n    return float(\"nan\")\n";
    client
        .execute(
            "document.getElementById('script').value = arguments[0];",
            vec![json!(nan)],
        )
        .await
        .unwrap();
    let strict = find(client, "#strict-result").await;
    strict.click().await.unwrap();
    find(client, "#run").await.click().await.unwrap();
    assert_eq!(answered(client, 6).await, "400");
    let request = json!({"script": nan, "strict_result": true});
    assert_eq!(sent(client).await.last(), Some(&request));
    let (status, api) = app.post_json(&request).await;
    assert_eq!(
        (status, common::error_code(&api)),
        (400, "result_not_serializable")
    );
    assert_eq!(text(client, "#error-code").await, api["code"]);
    assert_eq!(text(client, "#error-message").await, api["error"]);
    assert_eq!(
        text(client, "#error-details dd[data-field='problem']").await,
        api["problem"]
    );
    strict.click().await.unwrap();
}

/// A JSON input, a CSV and a binary file chosen in the picker, "return the files" checked and
/// a time limit, sent with Ctrl+Enter from the input: the page sends what a program would (the
/// files in base64 under their names) and shows the API's answer to it: the `DataFrame` as a
/// table, the file it wrote with its size and contents, ready to download, the NaN that came
/// back as null, the limits it ran under.
async fn runs_a_dataframe_with_input_and_files(client: &Client, app: &common::TestApp) {
    use base64::Engine as _;
    let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let dir = tempfile::tempdir().unwrap();
    let weights: Vec<u8> = (0..=255).collect();
    std::fs::write(dir.path().join("sales.csv"), SALES_CSV).unwrap();
    std::fs::write(dir.path().join("weights.bin"), &weights).unwrap();
    let paths = ["sales.csv", "weights.bin"].map(|name| dir.path().join(name));
    let paths = paths.map(|path| path.to_str().unwrap().to_owned());
    find(client, "#files")
        .await
        .send_keys(&paths.join("\n"))
        .await
        .unwrap();
    assert_eq!(
        texts(client, "#files-summary code[data-chosen]").await,
        ["sales.csv", "weights.bin"]
    );
    let summary = text(client, "#files-summary").await;
    let total = SALES_CSV.len() + weights.len();
    assert!(
        summary.starts_with(&format!("2 files, {total} bytes in all: ")),
        "{summary}"
    );
    client
        .execute(
            "document.getElementById('script').value = arguments[0];",
            vec![json!(SALES)],
        )
        .await
        .unwrap();
    find(client, "#return-files").await.click().await.unwrap();
    type_into(client, "#limit-time", "20000").await;
    type_into(client, "#input", r#"{"scale": 2}"#).await;
    find(client, "#input")
        .await
        .send_keys(&format!("{}{}", Key::Control, Key::Enter))
        .await
        .unwrap();
    assert_eq!(answered(client, 7).await, "200");

    let request = json!({
        "script": SALES,
        "files": [
            {"path": "sales.csv", "content": base64(SALES_CSV.as_bytes()), "encoding": "base64"},
            {"path": "weights.bin", "content": base64(&weights), "encoding": "base64"},
        ],
        "return_files": true,
        "limits": {"time_ms": 20000},
        "input": {"scale": 2},
    });
    assert_eq!(sent(client).await.last(), Some(&request));
    let (status, api) = app.post_json(&request).await;
    assert_eq!(status, 200, "{api}");
    shows_the_dataframe(client, &api).await;
    shows_the_returned_file(client, &api).await;
    // The NaN, and where it was; the limits it ran under.
    assert_eq!(
        api["nulls"],
        json!({"count": 1, "paths": ["result['missing']"]})
    );
    assert_eq!(
        text(client, "#nulls").await,
        "1 value was NaN/NaT/NA/±Infinity and came back as null: result['missing']"
    );
    assert_eq!(api["limits"]["time_ms"], 20000);
    let limits = text(client, "#applied-limits").await;
    assert!(limits.contains("time_ms 20 s"), "{limits}");
    let violations = client
        .execute("return window.violations;", vec![])
        .await
        .unwrap();
    assert_eq!(violations, json!([]), "the policy blocked nothing");
}

/// What a script prints shows while it runs (streamed, as text), then the answer as ever.
async fn shows_output_while_the_script_runs(client: &Client) {
    // The last step's files are gone with its directory.
    find(client, "#files-clear").await.click().await.unwrap();
    let script = "import time\n\ndef main(options):\n    print('tick <b>bold</b>')\n    time.sleep(3)\n    print('tock')\n    return options\n";
    client
        .execute(
            "document.getElementById('script').value = arguments[0];",
            vec![json!(script)],
        )
        .await
        .unwrap();
    find(client, "#run").await.click().await.unwrap();
    let live = client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(
            "#outcome[data-state='running'] #live-stdout:not(:empty)",
        ))
        .await
        .expect("the first line showed while the script ran");
    assert_eq!(
        live.prop("textContent").await.unwrap().as_deref(),
        Some("tick <b>bold</b>\n")
    );
    assert_eq!(answered(client, 8).await, "200");
    assert_eq!(text(client, "#stdout").await, "tick <b>bold</b>\ntock\n");
    let bold = client
        .execute("return document.querySelectorAll('b').length;", vec![])
        .await
        .unwrap();
    assert_eq!(bold, json!(0), "streamed output was parsed as markup");
}

/// The result as JSON and its `DataFrame` as a table (one per top-level value that is one).
async fn shows_the_dataframe(client: &Client, api: &Value) {
    assert_eq!(api["result"]["checksum"], 255 * 256 / 2);
    let result: Value = serde_json::from_str(&text(client, "#result").await).unwrap();
    assert_eq!(result, api["result"]);

    let rows = api["result"]["by_region"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let table = "#result-tables table[data-key='by_region']";
    assert_eq!(
        texts(client, &format!("{table} thead th")).await,
        ["region", "revenue"]
    );
    let mut cells = Vec::new();
    for row in rows {
        for column in ["region", "revenue"] {
            cells.push(match &row[column] {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            });
        }
    }
    assert_eq!(texts(client, &format!("{table} tbody td")).await, cells);
    assert_eq!(texts(client, "#result-tables table").await.len(), 1);
}

/// The file the script wrote, as the API returns it: path, size, encoding, contents, and a
/// download link.
async fn shows_the_returned_file(client: &Client, api: &Value) {
    let files = api["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{api}");
    let file = &files[0];
    assert_eq!(file["path"], "by_region.csv");
    let row = find(client, "#returned-files tr[data-file='by_region.csv']").await;
    let size = row
        .find(Locator::Css("data"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap();
    assert_eq!(size, Some(file["size"].to_string()));
    let cells = row.find_all(Locator::Css("th, td")).await.unwrap();
    assert_eq!(cells[0].text().await.unwrap(), file["path"]);
    assert_eq!(cells[2].text().await.unwrap(), file["encoding"]);
    let link = row.find(Locator::Css("a[download]")).await.unwrap();
    assert_eq!(
        link.attr("download").await.unwrap().as_deref(),
        Some("by_region.csv")
    );
    let href = link.attr("href").await.unwrap().unwrap();
    assert!(href.starts_with("blob:"), "{href}");
    assert_eq!(
        text(client, "details[data-preview='by_region.csv'] pre").await,
        file["content"]
    );
    assert_eq!(file["content"], "region,revenue\nnorth,23.0\nsouth,10.0\n");
    assert_eq!(api["files_truncated"], false);
}

/// The whole page, as a person sees it, in `target/browser/page.png`.
async fn screenshot(client: &Client) -> PathBuf {
    let height = client
        .execute("return document.documentElement.scrollHeight;", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    let height = u32::try_from(height.clamp(800, 8000)).unwrap();
    // The window is the page's height plus what the browser's frame takes of it.
    client.set_window_size(1280, height + 140).await.unwrap();
    let png = client.screenshot().await.unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser/page.png");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, png).unwrap();
    path
}

/// At the router, without a sandbox: browsers get the page with its policy, everything else
/// today's JSON; both say they vary by `Accept`.
#[tokio::test]
async fn browsers_get_the_page_and_programs_json() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let router = common::router_only(|_| {});
    let get = |accept: Option<&str>| {
        let mut request = axum::http::Request::get("/");
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        request.body(axum::body::Body::empty()).unwrap()
    };
    let chromium = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,\
                    image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7";
    for (accept, html) in [
        (None, false),
        (Some("*/*"), false),
        (Some("application/json"), false),
        (Some("application/json, text/html;q=0.9"), false),
        (Some(chromium), true),
        (Some("text/html"), true),
    ] {
        let response = router.clone().oneshot(get(accept)).await.unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        assert_eq!(headers["vary"], "accept", "{accept:?}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        if html {
            assert_eq!(headers["content-type"], "text/html; charset=utf-8");
            let policy = headers["content-security-policy"].to_str().unwrap();
            assert!(
                policy.starts_with("default-src 'none'; script-src 'sha256-"),
                "{policy}"
            );
            assert!(!policy.contains("unsafe-inline"), "{policy}");
            let page = String::from_utf8(body.to_vec()).unwrap();
            assert!(page.starts_with("<!doctype html>"), "{accept:?}");
        } else {
            assert_eq!(headers["content-type"], "application/json", "{accept:?}");
            let info: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(info["name"], "pyexec");
            // Unstarted: nothing was run to read them.
            assert_eq!(
                (&info["python"], &info["packages"]),
                (&json!(null), &json!([]))
            );
        }
    }
}
