//! The Python side of an execution and the wire protocol it speaks: the harness source
//! (embedded so binary and harness never drift), the files an execution needs, and the parser
//! for the frames the harness writes on its result descriptor.
//!
//! The frames come from the same process that runs untrusted code, so the parser treats them
//! as untrusted input: the service caps their size, parses them strictly and never lets them
//! override what it observed itself (deadline, exit status, signal). Only the `started` frame,
//! written before any user code runs, is evidence about the sandbox itself.

use std::io;
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::failure::ScriptFailure;
use crate::protocol::{Nulls, OutputFile, SkippedFile};

/// The Python the service runs, by file name: the harness (run as `python harness.py
/// SETTINGS`, the job on a descriptor), its modules, and the warm path's zygote, which imports
/// the harness from beside itself.
const FILES: [(&str, &str); 5] = [
    (HARNESS_FILE, include_str!("harness.py")),
    ("pyexec_confine.py", include_str!("pyexec_confine.py")),
    ("pyexec_files.py", include_str!("pyexec_files.py")),
    ("pyexec_mapping.py", include_str!("pyexec_mapping.py")),
    (ZYGOTE_FILE, include_str!("zygote.py")),
];
/// The harness's file name in the installed directory.
pub const HARNESS_FILE: &str = "harness.py";
/// The zygote's.
pub const ZYGOTE_FILE: &str = "zygote.py";
/// The protocol version this service understands.
const PROTOCOL_VERSION: u32 = 2;
/// The most `skipped_files` entries an answer carries: the harness's `MAX_SKIPPED`, which the
/// service holds every frame to as well (`sandbox::outcome`); `golden/files_at_their_caps.json`
/// shows the harness stopping there.
pub const MAX_SKIPPED: usize = 64;
/// The most `nulls.paths` an answer carries: the harness's `MAX_NULL_PATHS`, held the same way.
pub const MAX_NULL_PATHS: usize = 100;

/// Writes the service's Python into `dir` (made if need be), root's and readable by everyone:
/// every jail runs it from there read-only, as the slot's uid.
pub fn install(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .mode(0o755)
        .recursive(true)
        .create(dir)?;
    for (name, text) in FILES {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// What the harness reported, read from its frames.
#[derive(Debug)]
pub struct Report {
    /// The harness ran: the interpreter started and the sandbox works.
    pub started: bool,
    /// The final frame, if one arrived.
    pub outcome: Option<Result<Reported, ProtocolError>>,
}

/// The final frame: what `main()` did, as the harness saw it.
#[derive(Debug)]
pub enum Reported {
    /// `main()` returned.
    Returned(Returned),
    /// One of the failures only the harness can see (see
    /// [`ScriptFailure::reportable_by_harness`]).
    Failed(ScriptFailure),
}

/// The frames could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unknown protocol version {0}")]
    Version(u32),
    #[error("a {0} frame where the final frame belongs")]
    Misplaced(&'static str),
    #[error("a `{0}` failure, which only the service itself can observe")]
    Forged(&'static str),
    #[error("the result exceeded the size limit")]
    Truncated,
}

/// What a script that returned sent back. Written by a process that ran user code: the
/// files are checked against the request's limits before anyone sees them
/// (`sandbox::outcome`).
#[derive(Debug)]
pub struct Returned {
    /// `main()`'s value, exactly as the harness encoded it.
    pub result: Box<RawValue>,
    /// Where the result mapping made values `null`.
    pub nulls: Option<Nulls>,
    /// With `return_files`: the files, whether some were left out, and what was skipped.
    pub files: Option<Vec<OutputFile>>,
    pub files_truncated: bool,
    pub skipped_files: Vec<SkippedFile>,
}

/// One line on the result descriptor. Which fields an event carries is checked in
/// [`Frame::into_reported`]; unknown fields are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Frame {
    v: u32,
    event: Event,
    #[serde(default, deserialize_with = "present")]
    result: Option<Box<RawValue>>,
    failure: Option<ScriptFailure>,
    nulls: Option<Nulls>,
    files: Option<Vec<OutputFile>>,
    files_truncated: Option<bool>,
    skipped_files: Option<Vec<SkippedFile>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Event {
    /// Written before any user code runs.
    Started,
    Returned,
    Failed,
}

/// A present `result` is `Some` even when it is JSON `null` (plain `Option` would make it `None`).
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

/// Whether the first frame read from the result descriptor is `started`: the harness ran
/// before any user code could (the rest is not read).
pub fn started(bytes: &[u8]) -> bool {
    let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    serde_json::from_slice::<Frame>(first)
        .is_ok_and(|frame| frame.v == PROTOCOL_VERSION && frame.event == Event::Started)
}

/// Parses the bytes read from the result descriptor. `truncated` says the reader hit its cap.
pub fn parse(bytes: &[u8], truncated: bool) -> Report {
    let started = started(bytes);
    let mut lines = bytes.split(|&b| b == b'\n');
    lines.next();
    if !started {
        return Report {
            started,
            outcome: None,
        };
    }
    let outcome = match lines.next() {
        None | Some([]) if truncated => Some(Err(ProtocolError::Truncated)),
        None | Some([]) => None,
        Some(_) if truncated => Some(Err(ProtocolError::Truncated)),
        Some(line) => Some(
            serde_json::from_slice::<Frame>(line)
                .map_err(ProtocolError::from)
                .and_then(Frame::into_reported),
        ),
    };
    Report { started, outcome }
}

impl Frame {
    fn into_reported(self) -> Result<Reported, ProtocolError> {
        if self.v != PROTOCOL_VERSION {
            return Err(ProtocolError::Version(self.v));
        }
        let extras = self.nulls.is_some()
            || self.files.is_some()
            || self.files_truncated.is_some()
            || self.skipped_files.is_some();
        match (self.event, self.result, self.failure) {
            (Event::Returned, Some(result), None) => Ok(Reported::Returned(Returned {
                result,
                nulls: self.nulls,
                files: self.files,
                files_truncated: self.files_truncated.unwrap_or(false),
                skipped_files: self.skipped_files.unwrap_or_default(),
            })),
            (Event::Failed | Event::Started, ..) if extras => Err(ProtocolError::Misplaced(
                "a result's fields in another frame",
            )),
            (Event::Failed, None, Some(failure)) if failure.reportable_by_harness() => {
                Ok(Reported::Failed(failure))
            }
            (Event::Failed, None, Some(failure)) => Err(ProtocolError::Forged(failure.code())),
            (Event::Started, ..) => Err(ProtocolError::Misplaced("second `started`")),
            (Event::Returned, ..) => Err(ProtocolError::Misplaced("`returned` without one result")),
            (Event::Failed, ..) => Err(ProtocolError::Misplaced("`failed` without one failure")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::{Value, json};

    use super::*;

    const STARTED: &str = "{\"event\": \"started\", \"v\": 2}\n";

    fn parse_str(text: &str) -> Report {
        parse(text.as_bytes(), false)
    }

    fn final_frame(frame: &Value) -> Report {
        parse_str(&format!("{STARTED}{frame}\n"))
    }

    #[test]
    fn nothing_written_means_the_harness_never_started() {
        let report = parse_str("");
        assert!(!report.started);
        assert!(report.outcome.is_none());
    }

    #[test]
    fn a_forged_first_frame_is_not_a_start() {
        assert!(!parse_str("{\"event\": \"started\", \"v\": 1}\n").started);
        assert!(!parse_str("garbage\n").started);
    }

    #[test]
    fn started_without_a_final_frame_has_no_outcome() {
        let report = parse_str(STARTED);
        assert!(report.started);
        assert!(report.outcome.is_none());
    }

    #[test]
    fn the_result_is_kept_verbatim() {
        let big = "{\"v\": 2, \"event\": \"returned\", \"result\": [1267650600228229401496703205376, 0.1, \"\\u00e9\"]}\n";
        let report = parse_str(&format!("{STARTED}{big}"));
        let Some(Ok(Reported::Returned(raw))) = report.outcome else {
            panic!("{report:?}")
        };
        assert_eq!(
            raw.result.get(),
            "[1267650600228229401496703205376, 0.1, \"\\u00e9\"]"
        );
    }

    #[test]
    fn a_null_result_is_a_result() {
        let report = final_frame(&json!({"v": 2, "event": "returned", "result": null}));
        let Some(Ok(Reported::Returned(raw))) = report.outcome else {
            panic!("{report:?}")
        };
        assert_eq!(raw.result.get(), "null");
    }

    #[test]
    fn garbage_after_the_start_is_a_protocol_error() {
        let report = parse_str(&format!("{STARTED}not json\n"));
        assert!(
            matches!(report.outcome, Some(Err(ProtocolError::Malformed(_)))),
            "{report:?}"
        );
        for frame in [
            json!({"v": 2, "event": "returned"}),
            json!({"v": 2, "event": "failed"}),
            json!({"v": 2, "event": "started"}),
        ] {
            let report = final_frame(&frame);
            assert!(
                matches!(report.outcome, Some(Err(ProtocolError::Misplaced(_)))),
                "{frame}: {report:?}"
            );
        }
        let extra = json!({"v": 2, "event": "returned", "result": 1, "stdout": "x"});
        assert!(matches!(
            final_frame(&extra).outcome,
            Some(Err(ProtocolError::Malformed(_)))
        ));
    }

    #[test]
    fn a_failure_only_the_service_can_observe_is_a_forgery() {
        let frame = json!({"v": 2, "event": "failed", "failure": {"code": "time_limit_exceeded", "time_limit_ms": 1}});
        let report = final_frame(&frame);
        assert!(
            matches!(
                report.outcome,
                Some(Err(ProtocolError::Forged("time_limit_exceeded")))
            ),
            "{report:?}"
        );
    }

    #[test]
    fn a_truncated_report_is_not_parsed() {
        let report = parse(
            format!("{STARTED}{{\"v\": 2, \"event\": \"returned\", \"result\": [1,").as_bytes(),
            true,
        );
        assert!(
            matches!(report.outcome, Some(Err(ProtocolError::Truncated))),
            "{report:?}"
        );
    }

    /// The golden frames the Python tests check the harness writes (`test_harness.py`): each
    /// must parse, carry its failure through the Rust type unchanged, and read as its message.
    #[test]
    fn golden_frames_parse_into_the_failure_type_unchanged() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/harness/golden");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                continue;
            }
            let golden: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let frame = &golden["frame"];
            let name = path.display();
            match final_frame(frame).outcome {
                Some(Ok(Reported::Failed(failure))) => {
                    assert_eq!(
                        serde_json::to_value(&failure).unwrap(),
                        frame["failure"],
                        "{name}"
                    );
                    assert_eq!(failure.to_string(), golden["message"], "{name}");
                }
                Some(Ok(Reported::Returned(returned))) => {
                    let result: Value = serde_json::from_str(returned.result.get()).unwrap();
                    assert_eq!(result, frame["result"], "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
            seen += 1;
        }
        assert!(seen >= 10, "golden frames in {}: {seen}", dir.display());
    }
}
