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

/// The harness, run as `python harness.py SETTINGS SCRIPT`.
const HARNESS: &str = include_str!("harness.py");
/// The harness's file name inside an execution's directory.
pub const HARNESS_FILE: &str = "harness.py";
/// The script's file name: tracebacks name it, so it reads as the caller's file.
pub const SCRIPT_FILE: &str = "main.py";
/// The protocol version this service understands.
const PROTOCOL_VERSION: u32 = 1;

/// Writes the harness and the script into an execution's directory.
pub fn install(dir: &Path, script: &str) -> io::Result<()> {
    std::fs::write(dir.join(HARNESS_FILE), HARNESS)?;
    std::fs::write(dir.join(SCRIPT_FILE), script)
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
    Returned(Box<RawValue>),
    SyntaxError {
        message: String,
        line: Option<u64>,
        column: Option<u64>,
        text: Option<String>,
    },
    NoMain {
        message: String,
    },
    MainRequiresArguments {
        message: String,
    },
    Exception {
        during_load: bool,
        type_name: String,
        message: String,
        traceback: String,
        /// Which limit caused it, when the harness could tell (`EFBIG`, `EAGAIN`, ...).
        hint: Option<String>,
    },
    /// `MemoryError`: the address-space limit was reached.
    Memory,
    /// `SIGXCPU`: the CPU-time limit was reached.
    Cpu,
    NotSerializable {
        type_name: String,
        message: String,
    },
    ResultTooLarge {
        bytes: u64,
        limit: u64,
    },
    /// `sys.exit(code)`: `code` is the JSON of the exit argument (number, string or null).
    Exit {
        code: serde_json::Value,
    },
}

/// The frames could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unknown protocol version {0}")]
    Version(u32),
    #[error("unknown frame {event:?}/{kind:?}")]
    Unknown { event: String, kind: Option<String> },
    #[error("the result exceeded the size limit")]
    Truncated,
}

#[derive(Deserialize)]
struct Frame {
    v: u32,
    event: String,
    kind: Option<String>,
    #[serde(default, deserialize_with = "present")]
    result: Option<Box<RawValue>>,
    phase: Option<String>,
    #[serde(rename = "type")]
    type_name: Option<String>,
    message: Option<String>,
    traceback: Option<String>,
    line: Option<u64>,
    column: Option<u64>,
    text: Option<String>,
    code: Option<serde_json::Value>,
    hint: Option<String>,
    bytes: Option<u64>,
    limit: Option<u64>,
}

/// A present `result` is `Some` even when it is JSON `null` (plain `Option` would make it `None`).
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

/// Parses the bytes read from the result descriptor. `truncated` says the reader hit its cap.
pub fn parse(bytes: &[u8], truncated: bool) -> Report {
    let mut lines = bytes.split(|&b| b == b'\n');
    let started = lines
        .next()
        .and_then(|line| serde_json::from_slice::<Frame>(line).ok())
        .is_some_and(|frame| frame.v == PROTOCOL_VERSION && frame.event == "started");
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
        let text = |field: Option<String>| field.unwrap_or_default();
        let reported = match (self.event.as_str(), self.kind.as_deref()) {
            ("returned", _) => match self.result {
                Some(result) => Reported::Returned(result),
                None => return Err(self.unknown()),
            },
            ("failed", Some("syntax_error")) => Reported::SyntaxError {
                message: text(self.message),
                line: self.line,
                column: self.column,
                text: self.text,
            },
            ("failed", Some("no_main")) => Reported::NoMain {
                message: text(self.message),
            },
            ("failed", Some("main_requires_arguments")) => Reported::MainRequiresArguments {
                message: text(self.message),
            },
            ("failed", Some("exception")) => Reported::Exception {
                during_load: self.phase.as_deref() == Some("load"),
                type_name: text(self.type_name),
                message: text(self.message),
                traceback: text(self.traceback),
                hint: self.hint,
            },
            ("failed", Some("memory")) => Reported::Memory,
            ("failed", Some("cpu")) => Reported::Cpu,
            ("failed", Some("not_serializable")) => Reported::NotSerializable {
                type_name: text(self.type_name),
                message: text(self.message),
            },
            ("failed", Some("result_too_large")) => Reported::ResultTooLarge {
                bytes: self.bytes.unwrap_or_default(),
                limit: self.limit.unwrap_or_default(),
            },
            ("failed", Some("exit")) => Reported::Exit {
                code: self.code.unwrap_or_default(),
            },
            _ => return Err(self.unknown()),
        };
        Ok(reported)
    }

    fn unknown(self) -> ProtocolError {
        ProtocolError::Unknown {
            event: self.event,
            kind: self.kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STARTED: &str = "{\"event\": \"started\", \"v\": 1}\n";

    fn parse_str(text: &str) -> Report {
        parse(text.as_bytes(), false)
    }

    #[test]
    fn nothing_written_means_the_harness_never_started() {
        let report = parse_str("");
        assert!(!report.started);
        assert!(report.outcome.is_none());
    }

    #[test]
    fn a_forged_first_frame_is_not_a_start() {
        assert!(!parse_str("{\"event\": \"started\", \"v\": 2}\n").started);
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
        let big = "{\"v\": 1, \"event\": \"returned\", \"result\": [1267650600228229401496703205376, 0.1, \"\\u00e9\"]}\n";
        let report = parse_str(&format!("{STARTED}{big}"));
        let Some(Ok(Reported::Returned(raw))) = report.outcome else {
            panic!("{report:?}")
        };
        assert_eq!(
            raw.get(),
            "[1267650600228229401496703205376, 0.1, \"\\u00e9\"]"
        );
    }

    #[test]
    fn a_null_result_is_a_result() {
        let report = parse_str(&format!(
            "{STARTED}{{\"v\": 1, \"event\": \"returned\", \"result\": null}}\n"
        ));
        let Some(Ok(Reported::Returned(raw))) = report.outcome else {
            panic!("{report:?}")
        };
        assert_eq!(raw.get(), "null");
    }

    #[test]
    fn failures_are_decoded() {
        let frame = "{\"event\": \"failed\", \"kind\": \"exception\", \"phase\": \"main\", \"type\": \"ValueError\", \"message\": \"boom\", \"traceback\": \"tb\", \"v\": 1}\n";
        let report = parse_str(&format!("{STARTED}{frame}"));
        let Some(Ok(Reported::Exception {
            during_load,
            type_name,
            message,
            traceback,
            hint: None,
        })) = report.outcome
        else {
            panic!("{report:?}")
        };
        assert!(!during_load);
        assert_eq!(
            (type_name.as_str(), message.as_str(), traceback.as_str()),
            ("ValueError", "boom", "tb")
        );
    }

    #[test]
    fn garbage_after_the_start_is_a_protocol_error() {
        let report = parse_str(&format!("{STARTED}not json\n"));
        assert!(
            matches!(report.outcome, Some(Err(ProtocolError::Malformed(_)))),
            "{report:?}"
        );
        let report = parse_str(&format!("{STARTED}{{\"v\": 1, \"event\": \"returned\"}}\n"));
        assert!(
            matches!(report.outcome, Some(Err(ProtocolError::Unknown { .. }))),
            "{report:?}"
        );
    }

    #[test]
    fn a_truncated_report_is_not_parsed() {
        let report = parse(
            format!("{STARTED}{{\"v\": 1, \"event\": \"returned\", \"result\": [1,").as_bytes(),
            true,
        );
        assert!(
            matches!(report.outcome, Some(Err(ProtocolError::Truncated))),
            "{report:?}"
        );
    }
}
