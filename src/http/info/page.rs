//! The browser page of `GET /`: one self-contained HTML document (markup, style and script
//! embedded in the binary, no other request but its own `POST /execute`), with the service's
//! description and the examples of `examples/` embedded as a JSON data block the script renders.
//!
//! Its Content-Security-Policy allows exactly this page's own style and script, by their SHA-256
//! (both are fixed at build time, so hashes need no per-request nonce and the page stays a pure
//! function of its data), nothing from anywhere else, and only same-origin `fetch`. An injected
//! `<script>`, inline event handler (`onerror=`), image or style would not run or load, and
//! Trusted Types forbid HTML string sinks (`innerHTML`) altogether: a second line behind the
//! script's rule of building the DOM from text only. Owns the document; not the negotiation.

use std::sync::LazyLock;

use serde::Serialize;

use crate::protocol::InfoResponse;

const TEMPLATE: &str = include_str!("index.html");
const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// What the page may do. The two hashes are of [`STYLE`] and [`SCRIPT`]; a unit test checks
/// them (and prints the right ones after an edit of either file).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
    script-src 'sha256-69WxRvh1vEWdEKrst9Fnx2mzhSa7PGwMWiyfPeVA7ek='; \
    style-src 'sha256-bap1hAoQ3nJmdaYFLlO8CnUt46jTEcM6nbPJaURsKIs='; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
    require-trusted-types-for 'script'; trusted-types 'none'";

/// `examples/NAME.py`, named.
macro_rules! example {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!("../../../examples/", $name, ".py")),
        )
    };
}

/// The scripts of `examples/`, by name: the same files `tests/it/examples.rs` runs and
/// `examples/README.md` lists, so what the page offers is tested (and a file missing here
/// fails that test).
const EXAMPLE_FILES: [(&str, &str); 10] = [
    example!("hello"),
    example!("numpy_stats"),
    example!("pandas_groupby"),
    example!("exception"),
    example!("syntax_error"),
    example!("no_main"),
    example!("not_serializable"),
    example!("result_too_large"),
    example!("time_limit"),
    example!("memory_limit"),
];

/// An example as the page offers it.
#[derive(Debug, Serialize)]
struct Example {
    /// The file's name without `.py`.
    name: &'static str,
    /// The file's first line, a comment saying what it shows.
    title: &'static str,
    /// Its `# expect:` line: the status, and the `code` of an error.
    expect: &'static str,
    script: &'static str,
}

static EXAMPLES: LazyLock<Vec<Example>> = LazyLock::new(|| {
    EXAMPLE_FILES
        .iter()
        .map(|&(name, script)| {
            let comment = |line: &'static str| line.strip_prefix("# ");
            let mut header = script.lines().map_while(comment);
            let title = header.next().unwrap_or(name);
            let expect = header
                .find_map(|line| line.strip_prefix("expect: "))
                .unwrap_or("");
            Example {
                name,
                title,
                expect,
                script,
            }
        })
        .collect()
});

/// The document around its data: built once, the data goes between the two halves.
static HALVES: LazyLock<(String, String)> = LazyLock::new(|| {
    let page = TEMPLATE
        .replacen("{{style}}", STYLE, 1)
        .replacen("{{script}}", SCRIPT, 1);
    let (before, after) = page.split_once("{{data}}").unwrap_or((&page, ""));
    (before.to_owned(), after.to_owned())
});

/// The whole page for `info`.
pub fn render(info: &InfoResponse) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    struct Data<'a> {
        info: &'a InfoResponse,
        examples: &'a [Example],
    }
    let data = serde_json::to_string(&Data {
        info,
        examples: &EXAMPLES,
    })?;
    let (before, after) = &*HALVES;
    let mut page = String::with_capacity(before.len() + data.len() + after.len());
    page.push_str(before);
    push_inert(&mut page, &data);
    page.push_str(after);
    Ok(page)
}

/// Appends `json` so that it cannot end its `<script>` block early (with `</script` or
/// `<!--`): outside strings JSON has none of `<>&`, and inside them the escapes read back the same.
fn push_inert(page: &mut String, json: &str) {
    for c in json.chars() {
        match c {
            '<' => page.push_str("\\u003c"),
            '>' => page.push_str("\\u003e"),
            '&' => page.push_str("\\u0026"),
            c => page.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use sha2::Digest as _;

    use super::*;

    fn hash(text: &str) -> String {
        let digest = sha2::Sha256::digest(text.as_bytes());
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    }

    #[test]
    fn the_policy_allows_exactly_this_style_and_script() {
        let script = format!("script-src {};", hash(SCRIPT));
        let style = format!("style-src {};", hash(STYLE));
        assert!(
            CONTENT_SECURITY_POLICY.contains(&script),
            "page.js changed: put `{script}` in CONTENT_SECURITY_POLICY"
        );
        assert!(
            CONTENT_SECURITY_POLICY.contains(&style),
            "page.css changed: put `{style}` in CONTENT_SECURITY_POLICY"
        );
        // What the hashes cover must be exactly what the page embeds.
        let (before, after) = &*HALVES;
        let page = format!("{before}{after}");
        assert!(page.contains(&format!("<style>{STYLE}</style>")));
        assert!(page.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(!page.contains("{{"), "every placeholder is filled");
    }

    #[test]
    fn every_example_has_a_title_and_an_expectation() {
        for example in EXAMPLES.iter() {
            assert!(!example.title.is_empty(), "{}", example.name);
            let status = example.expect.split(' ').next().unwrap_or_default();
            assert!(
                matches!(status, "200" | "400"),
                "{}: {}",
                example.name,
                example.expect
            );
        }
    }

    #[test]
    fn data_cannot_close_its_script_block() {
        let json = serde_json::to_string("</script><!--&").unwrap();
        let mut page = String::new();
        push_inert(&mut page, &json);
        assert!(!page.contains(['<', '>', '&']), "{page}");
        let back: String = serde_json::from_str(&page).unwrap();
        assert_eq!(back, "</script><!--&");
    }
}
