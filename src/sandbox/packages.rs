//! What the sandbox Python has installed (its version and every distribution with its version),
//! for `GET /` and the browser page. Read once, at start-up, by running a fixed script of our
//! own through the jail itself, so the list is exactly what a script can import there: the
//! same interpreter, `sys.path`, mounts and venv, whatever `sandbox.python` points at (a venv or
//! not), with no new process code and nothing run outside the jail. It costs one execution
//! (a fork of the zygote on the warm path) when the service starts, and nothing afterwards.
//!
//! Owns the script and the reading of its answer; not when it runs (`Sandbox::start`).

use serde::Deserialize;

use super::{Outcome, Sandbox};
use crate::protocol::Package;

/// Asks `importlib.metadata`, which is what `pip list` reads: every distribution on the jail's
/// `sys.path`, in path order (so the first of two copies is the one a script imports).
const LIST_PACKAGES: &str = r#"import importlib.metadata
import sys


def main():
    packages = []
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages.append({"name": name, "version": dist.version})
    return {"python": "%d.%d.%d" % sys.version_info[:3], "packages": packages}
"#;

/// The sandbox Python's version and packages; empty until read (an unstarted or broken
/// sandbox has none to tell).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Installed {
    /// `major.minor.micro`.
    pub python: Option<String>,
    /// Sorted by normalized name, one entry per name.
    pub packages: Vec<Package>,
}

/// Runs [`LIST_PACKAGES`] in the jail. A failure is logged and leaves the list empty: the
/// service still runs scripts, it only cannot say what they can import.
pub(super) async fn read(sandbox: &Sandbox) -> Installed {
    let outcome = sandbox
        .run_own(LIST_PACKAGES)
        .await
        .map(|execution| execution.outcome);
    let answer = match outcome {
        Ok(Outcome::Returned(returned)) => serde_json::from_str::<Installed>(returned.result.get())
            .map_err(|error| error.to_string()),
        Ok(Outcome::Failed(failure)) => Err(failure.to_string()),
        Err(error) => Err(error.to_string()),
    };
    match answer {
        Ok(installed) => tidy(installed),
        Err(reason) => {
            tracing::warn!(
                reason,
                "cannot list the sandbox's packages: GET / shows none"
            );
            Installed::default()
        }
    }
}

/// Sorted by normalized name, and a name listed twice (two copies on `sys.path`) kept once: the
/// first, which is the one imported.
fn tidy(mut installed: Installed) -> Installed {
    installed
        .packages
        .sort_by_cached_key(|package| normalized(&package.name));
    installed
        .packages
        .dedup_by(|later, first| normalized(&later.name) == normalized(&first.name));
    installed
}

/// The PEP 503 form of a distribution name: lower case, each run of `-`, `_` and `.` one `-`,
/// so `python_dateutil`, `Python.Dateutil` and `python-dateutil` are one name.
pub fn normalized(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, version: &str) -> Package {
        Package {
            name: name.to_owned(),
            version: version.to_owned(),
        }
    }

    #[test]
    fn names_are_compared_as_pep_503_says() {
        assert_eq!(normalized("Python_Dateutil"), "python-dateutil");
        assert_eq!(normalized("a-_.b"), "a-b");
        assert_eq!(normalized("numpy"), "numpy");
    }

    #[test]
    fn the_list_is_sorted_and_the_first_copy_of_a_name_wins() {
        let installed = tidy(Installed {
            python: Some("3.11.2".to_owned()),
            packages: vec![
                package("pandas", "3.1.1"),
                package("python_dateutil", "4.0.0"),
                package("numpy", "2.4.6"),
                package("Python-Dateutil", "1.0"),
            ],
        });
        assert_eq!(
            installed.packages,
            [
                package("numpy", "2.4.6"),
                package("pandas", "3.1.1"),
                package("python_dateutil", "4.0.0"),
            ]
        );
    }

    #[test]
    fn the_script_answers_what_the_list_reads() {
        let answer = r#"{"python": "3.11.2", "packages": [{"name": "pip", "version": "23.0.1"}]}"#;
        let installed: Installed = serde_json::from_str(answer).unwrap();
        assert_eq!(installed.python.as_deref(), Some("3.11.2"));
        assert_eq!(installed.packages, [package("pip", "23.0.1")]);
    }
}
