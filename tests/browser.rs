//! The browser page, in a real browser: headless Chromium driven through `WebDriver`
//! (chromedriver, on a loopback port of its own) loads `/` from the real service, shows what
//! `GET /` says as JSON (profile, guarantees, limits, Python and packages), runs examples
//! through its form, with the mouse and with the keyboard, and shows the same answers the API
//! gives; what a script prints or raises stays text (no markup from it is ever parsed, and the
//! policy reports no violation). Leaves a screenshot at `target/browser/page.png`.
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
const PAYLOAD: &str =
    r#"<img src=x onerror="document.title=1"><script>document.title=2</script><b>bold</b>"#;

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
    shows_what_get_says(&client, &info).await;
    runs_a_success_with_the_mouse(&client, &app).await;
    shows_markup_as_text(&client).await;
    runs_an_error_with_the_keyboard(&client, &app).await;
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
    assert_eq!(answered(client, 4).await, "400");
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
