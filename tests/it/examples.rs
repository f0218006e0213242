//! The examples cannot rot: every script in `examples/` runs through the real service and
//! answers what its header says (`# expect: 200`, `# expect: 400 <code>`), and
//! `examples/README.md` shows, for each, a curl command naming it and exactly the answer the
//! service gives (but for `duration_ms`). The page embeds the same files. Also here, since it
//! is what the page and `GET /` document: the packages `GET /` lists are the pinned ones.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use common::markdown::{fenced_blocks, without_duration};
use pyexec::sandbox::package_name;
use serde_json::Value;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

/// An example script and what its header says it answers.
#[derive(Debug)]
struct Example {
    name: String,
    script: String,
    status: u16,
    code: Option<String>,
}

/// Every `examples/*.py`, by name.
fn examples() -> Vec<Example> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(EXAMPLES).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|extension| extension != "py") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let script = std::fs::read_to_string(&path).unwrap();
        let expect = script
            .lines()
            .map_while(|line| line.strip_prefix("# "))
            .find_map(|line| line.strip_prefix("expect: "))
            .unwrap_or_else(|| panic!("{name}.py has no `# expect:` line in its header"));
        let (status, code) = match expect.split_once(' ') {
            Some((status, code)) => (status, Some(code.to_owned())),
            None => (expect, None),
        };
        found.push(Example {
            status: status.parse().unwrap(),
            code,
            name,
            script,
        });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// The command README shows for an example: jq makes the JSON body from the file as it is.
fn command_for(name: &str) -> String {
    format!(
        "jq -Rs '{{script: .}}' examples/{name}.py | \
         curl -s localhost:8080/execute -H 'Content-Type: application/json' -d @-"
    )
}

/// README's answer for each example, by name, from each `sh` block's curl line and the `json`
/// block after it. Every curl line must be [`command_for`] an example that exists.
fn readme_answers(examples: &[Example]) -> BTreeMap<String, Value> {
    let readme = std::fs::read_to_string(Path::new(EXAMPLES).join("README.md")).unwrap();
    let blocks = fenced_blocks(&readme);
    let mut answers = BTreeMap::new();
    for (index, (lang, text)) in blocks.iter().enumerate() {
        for line in text.lines().filter(|line| line.contains("curl")) {
            let name = examples
                .iter()
                .map(|example| example.name.as_str())
                .find(|name| line.trim() == command_for(name))
                .unwrap_or_else(|| {
                    panic!(
                        "examples/README.md: this curl line names no example as \
                         `{}` would:\n{line}",
                        command_for("NAME")
                    )
                });
            assert_eq!(lang, "sh", "{name}'s command is in an sh block");
            let (next_lang, answer) = blocks
                .get(index + 1)
                .unwrap_or_else(|| panic!("{name}'s command is followed by its answer"));
            assert_eq!(next_lang, "json", "{name}'s answer is a json block");
            let answer: Value = serde_json::from_str(answer)
                .unwrap_or_else(|error| panic!("{name}'s answer in README is not JSON: {error}"));
            assert!(
                answers.insert(name.to_owned(), answer).is_none(),
                "{name} is shown twice"
            );
        }
    }
    answers
}

#[test]
fn the_readme_shows_every_example_and_only_examples() {
    let examples = examples();
    assert!(examples.len() >= 10, "{examples:?}");
    let answers = readme_answers(&examples);
    let missing: Vec<_> = examples
        .iter()
        .filter(|example| !answers.contains_key(&example.name))
        .map(|example| command_for(&example.name))
        .collect();
    assert!(
        missing.is_empty(),
        "examples/README.md lacks these examples:\n{}",
        missing.join("\n")
    );
}

/// The page offers exactly these files, unchanged (its list is written out in
/// `src/http/info/page.rs`, so a new example must be added there too).
#[tokio::test]
async fn the_page_embeds_every_example() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let router = common::router_only(|_| {});
    let request = axum::http::Request::get("/")
        .header("accept", "text/html")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let page = String::from_utf8(bytes.to_vec()).unwrap();
    let start = r#"<script type="application/json" id="pyexec-data">"#;
    let data = &page[page.find(start).unwrap() + start.len()..];
    let data: Value = serde_json::from_str(&data[..data.find("</script>").unwrap()]).unwrap();
    let mut embedded: Vec<(String, String)> = data["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|example| {
            (
                example["name"].as_str().unwrap().to_owned(),
                example["script"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    embedded.sort();
    let files: Vec<(String, String)> = examples()
        .into_iter()
        .map(|example| (example.name, example.script))
        .collect();
    assert_eq!(embedded, files);
}

/// The time-limit example takes the whole default limit (30 s): they all run at once, so the
/// test takes about that long. jq and curl are installed by `scripts/setup.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_answers_what_it_expects_and_what_the_readme_shows() {
    let app = common::spawn_app_with(|config| config.sandbox.max_concurrency = 4).await;
    let examples = examples();
    let answers = readme_answers(&examples);
    // Each example's own command from examples/README.md, run as a reader would (jq and curl,
    // from the repository's root), against this service.
    let runs: Vec<_> = examples
        .iter()
        .map(|example| {
            let command = format!(
                "{} -w '\\n%{{http_code}}'",
                command_for(&example.name).replace("localhost:8080", &app.addr.to_string())
            );
            tokio::task::spawn_blocking(move || {
                let output = std::process::Command::new("bash")
                    .arg("-c")
                    .arg(&command)
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .output()
                    .unwrap();
                let text = String::from_utf8(output.stdout.clone()).unwrap();
                let (body, status) = text
                    .rsplit_once('\n')
                    .unwrap_or_else(|| panic!("{command}: {text:?} {output:?}"));
                let body: Value = serde_json::from_str(body)
                    .unwrap_or_else(|error| panic!("{command}: {error}: {body:?}"));
                (status.parse::<u16>().unwrap(), body)
            })
        })
        .collect();
    let mut wrong = Vec::new();
    for (example, run) in examples.iter().zip(runs) {
        let (status, body) = run.await.unwrap();
        let code = body["code"].as_str().map(str::to_owned);
        if (status, &code) != (example.status, &example.code) {
            wrong.push(format!(
                "{}.py expects {} {:?}, answered {status}: {body}",
                example.name, example.status, example.code
            ));
            continue;
        }
        let shown = answers[&example.name].clone();
        if without_duration(shown) != without_duration(body.clone()) {
            wrong.push(format!(
                "examples/README.md shows another answer for {}.py; the service answers:\n{body}",
                example.name
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// `GET /` lists what the sandbox has installed: every package `config/sandbox-requirements.txt`
/// pins, with the pinned version, and nothing else but the venv's own pip and setuptools
/// (`python -m venv` puts them there; scripts can import them, so they are listed).
#[tokio::test]
async fn the_packages_listed_are_the_pinned_ones() {
    let requirements = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/sandbox-requirements.txt"
    ))
    .unwrap();
    let pinned: BTreeMap<String, String> = requirements
        .lines()
        .filter(|line| !line.starts_with([' ', '#']) && !line.trim().is_empty())
        .map(|line| {
            let requirement = line.split([' ', ';', '\\']).next().unwrap();
            let (name, version) = requirement
                .split_once("==")
                .unwrap_or_else(|| panic!("not pinned with ==: {line}"));
            (package_name(name), version.to_owned())
        })
        .collect();
    assert!(pinned.contains_key("numpy") && pinned.contains_key("pandas"));

    let app = common::spawn_app().await;
    let (status, info) = app.get("/").await;
    assert_eq!(status, 200);
    assert!(
        info["python"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{info}"
    );
    let listed: BTreeMap<String, String> = info["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| {
            let name = package["name"].as_str().unwrap();
            (
                package_name(name),
                package["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (name, version) in &pinned {
        assert_eq!(listed.get(name), Some(version), "{name}: {info}");
    }
    let extra: Vec<_> = listed
        .keys()
        .filter(|name| {
            !pinned.contains_key(*name) && !["pip", "setuptools"].contains(&name.as_str())
        })
        .collect();
    assert!(extra.is_empty(), "installed but not pinned: {extra:?}");
    let names: Vec<_> = info["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| package_name(package["name"].as_str().unwrap()))
        .collect();
    assert!(names.is_sorted(), "sorted by name: {names:?}");
}
