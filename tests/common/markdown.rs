//! What the documentation tests read from Markdown: fenced blocks, and answers to compare.

use serde_json::Value;

/// (language, text) of each fenced block, in order.
pub fn fenced_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in markdown.lines() {
        match (line.strip_prefix("```"), open.take()) {
            (Some(lang), None) => open = Some((lang.trim().to_owned(), String::new())),
            (Some(_), Some(block)) => blocks.push(block),
            (None, Some((lang, mut text))) => {
                text.push_str(line);
                text.push('\n');
                open = Some((lang, text));
            }
            (None, None) => {}
        }
    }
    blocks
}

/// An answer without `duration_ms`, which varies from run to run.
pub fn without_duration(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.remove("duration_ms");
    }
    value
}
