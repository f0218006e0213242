//! Every `curl` example in README.md, run against the real service: the answer must be the JSON
//! the README shows next to it (but for `duration_ms`, which varies).
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use crate::common;

use common::markdown::{fenced_blocks, without_duration};
use serde_json::Value;

#[tokio::test]
async fn readme_curl_examples_answer_what_the_readme_says() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks = fenced_blocks(&readme);
    let examples: Vec<_> = blocks
        .windows(2)
        .filter(|pair| {
            pair[0].0 == "sh"
                && pair[0].1.starts_with("curl")
                && ["json", "ndjson"].contains(&pair[1].0.as_str())
        })
        .map(|pair| (pair[0].1.clone(), pair[1].1.clone()))
        .collect();
    assert!(
        examples.len() >= 5,
        "README.md has its curl examples: {}",
        examples.len()
    );

    let app = common::spawn_app().await;
    for (command, expected) in examples {
        let command = command.replace("localhost:8080", &app.addr.to_string());
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("bash")
                .arg("-c")
                .arg(&command)
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        let answer = String::from_utf8(output.stdout).unwrap();
        assert_eq!(comparable(&answer), comparable(&expected), "{answer}");
    }
}

/// An answer as the README test compares it: without `duration_ms`, which varies. A stream
/// (more than one line) is its events, each output event merged with the next of its stream,
/// since how output is gathered into events depends on timing.
fn comparable(answer: &str) -> Vec<Value> {
    let mut events: Vec<Value> = Vec::new();
    for line in answer.lines().filter(|line| !line.is_empty()) {
        let mut value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if let Some(body) = value.get_mut("body") {
            *body = without_duration(body.take());
        }
        let value = without_duration(value);
        let event = value["event"].clone();
        match events.last_mut() {
            Some(last) if last["event"] == event && value.get("data").is_some() => {
                let data = format!(
                    "{}{}",
                    last["data"].as_str().unwrap(),
                    value["data"].as_str().unwrap()
                );
                last["data"] = Value::String(data);
            }
            _ => events.push(value),
        }
    }
    events
}

/// Every setting of `config/default.toml` has a row in README's configuration table, with the
/// same default and the environment variable the file names for it.
#[test]
fn readme_documents_every_setting_with_its_default_and_variable() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))
        .unwrap();
    let mut section = String::new();
    let mut wrong = Vec::new();
    for line in file.lines() {
        if let Some(name) = line.strip_prefix('[') {
            section = name.trim_end_matches(']').to_owned();
            continue;
        }
        // A commented-out setting has no default (an example value follows).
        let (line, no_default) = match line.strip_prefix("# ") {
            Some(setting) => (setting, true),
            None => (line, false),
        };
        let Some((key, rest)) = line.split_once(" = ") else {
            continue;
        };
        let (value, comment) = rest.split_once('#').unwrap_or((rest, ""));
        let value = value.trim().trim_matches('"');
        let variable = comment
            .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .find(|word| {
                word.starts_with("PYEXEC_") || ["PORT", "GOOGLE_CLOUD_PROJECT"].contains(word)
            });
        let row_start = if no_default {
            format!("| `{section}.{}` | none |", key.trim())
        } else {
            format!("| `{section}.{}` | `{value}`", key.trim())
        };
        let row = readme.lines().find(|row| row.starts_with(&row_start));
        let documented = row.is_some_and(|row| {
            variable.is_none_or(|variable| row.contains(&format!("`{variable}`")))
        });
        if !documented {
            wrong.push(format!("{row_start} | {} |", variable.unwrap_or("")));
        }
    }
    assert!(
        wrong.is_empty(),
        "README.md lacks or misstates these settings:\n{}",
        wrong.join("\n")
    );
}

/// README's table of error codes lists exactly the codes `/openapi.json` documents (which come
/// from the failure and error types themselves), so neither can gain a code the other lacks.
#[tokio::test]
async fn readme_lists_every_error_code_the_api_documents() {
    let router = common::router_only(|_| {});
    let request = axum::http::Request::get("/openapi.json")
        .body(axum::body::Body::empty())
        .unwrap();
    let (_, _, document) = common::oneshot(&router, request).await;
    let schemas = &document["components"]["schemas"];
    let mut documented: Vec<String> = ["ServiceError", "ScriptFailure"]
        .iter()
        .flat_map(|name| schemas[name]["oneOf"].as_array().unwrap())
        .map(|variant| {
            variant["properties"]["code"]["enum"][0]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    documented.sort();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut listed: Vec<String> = readme
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let status_cell = cells.get(1)?;
            let code = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
            (status_cell.len() == 3 && status_cell.parse::<u16>().is_ok()).then(|| code.to_owned())
        })
        .collect();
    listed.sort();
    assert_eq!(listed, documented);
}
