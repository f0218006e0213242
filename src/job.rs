//! A request's job, checked before any sandbox is spent on it: the script, the input for
//! `main`, the files to place in its working directory, which files to send back, and the
//! limits it runs under. Every rule here exists for a clear 400 naming the entry and the rule;
//! the jail is the security boundary. The same path rules hold for the files a script sends
//! back: that frame comes from a process that ran user code, and a client may write what it
//! gets to its own disk.

use base64::Engine;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::Limits;
use crate::protocol::{ExecuteRequest, FileEncoding, InputFile, RequestLimits, ReturnFiles};
use crate::validate::{self, Script, ValidationError};

/// Directories a file path may have above it.
pub const MAX_PATH_DEPTH: usize = 16;
/// Bytes in one name of a path (Linux's own limit).
pub const MAX_NAME_BYTES: usize = 255;
/// Bytes in a whole path.
pub const MAX_PATH_BYTES: usize = 1024;
/// Glob patterns in `return_files`, and the bytes of each.
pub const MAX_PATTERNS: usize = 16;
pub const MAX_PATTERN_BYTES: usize = 256;
/// Arrays and objects nested in `input`: Python's `json` reads a few hundred levels and
/// serde's own default limit is 128, so 100 is more than data needs, and a 400 here is
/// better than a failure deep in the sandbox.
pub const MAX_INPUT_DEPTH: usize = 100;

/// Everything a sandbox needs for one execution, checked.
#[derive(Debug)]
pub struct Job {
    pub script: Script,
    /// `main`'s argument, exactly as sent; `None` calls `main()`.
    pub input: Option<Box<RawValue>>,
    /// With normalised paths, content as sent (the harness decodes it inside the jail).
    pub files: Vec<InputFile>,
    pub return_files: ReturnFiles,
    pub strict_result: bool,
    /// The limits this execution runs under: the configured ones, lowered where asked.
    pub limits: Limits,
    /// Whether the request asked for its own limits (the answer then says which applied).
    pub limits_requested: bool,
}

/// What the harness reads of a job (`src/harness/harness.py`'s `run`); fields it need not
/// see are left out.
#[derive(Debug, Serialize)]
pub struct HarnessJob<'a> {
    script: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    files: &'a [InputFile],
    #[serde(skip_serializing_if = "Option::is_none")]
    return_files: Option<&'a ReturnFiles>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    strict_result: bool,
}

/// Why a request's job was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Script(#[from] ValidationError),
    #[error("input nests arrays and objects {depth} deep; at most {limit} levels may be sent")]
    InputTooDeep { depth: usize, limit: usize },
    #[error("files[{index}] ({path:?}): the path {rule}")]
    FilePath {
        index: usize,
        path: String,
        rule: PathRule,
    },
    #[error(
        "files[{index}] ({path:?}): the content is not valid base64 (standard alphabet, with padding)"
    )]
    FileContent { index: usize, path: String },
    #[error("{count} files; at most {limit} may be sent")]
    TooManyFiles { count: usize, limit: usize },
    #[error("the files hold {bytes} bytes once decoded; at most {limit} may be sent")]
    FilesTooLarge { bytes: u64, limit: u64 },
    #[error("return_files: {0}")]
    Pattern(String),
    #[error(
        "limits.{name} is {value}; it must be between {min} and {max} (this service's maximum)"
    )]
    Limit {
        name: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
}

/// What a file path must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathRule {
    #[error("is empty")]
    Empty,
    #[error("is absolute: give it relative to the working directory")]
    Absolute,
    #[error("contains `..`")]
    Parent,
    #[error("contains a NUL, a control character or a backslash")]
    Character,
    #[error("ends with `/`: name a file")]
    Directory,
    #[error("is deeper than {MAX_PATH_DEPTH} directories")]
    TooDeep,
    #[error("has a name longer than {MAX_NAME_BYTES} bytes")]
    NameTooLong,
    #[error("is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("is also files[{0}]")]
    Duplicate(usize),
    #[error("is a directory of files[{0}], or files[{0}] is one of it")]
    Conflict(usize),
}

impl Job {
    /// Checks everything a request asks for against `limits` (the configured maximum).
    pub fn from_request(request: ExecuteRequest, limits: &Limits) -> Result<Self, JobError> {
        let script = validate::validate(request.script, limits.script_bytes)?;
        check_input(request.input.as_deref())?;
        let files = check_files(request.files, limits)?;
        check_patterns(&request.return_files)?;
        let limits_requested = request.limits.is_some();
        let limits = apply(request.limits.unwrap_or_default(), limits)?;
        Ok(Self {
            script,
            input: request.input,
            files,
            return_files: request.return_files,
            strict_result: request.strict_result,
            limits,
            limits_requested,
        })
    }

    /// The job as the harness reads it (`job.json`, or the warm path's memfd): the input and
    /// the files exactly as they came, never parsed or copied again.
    pub fn to_harness(&self) -> HarnessJob<'_> {
        HarnessJob {
            script: self.script.as_str(),
            input: self.input.as_deref(),
            files: &self.files,
            return_files: (self.return_files != ReturnFiles::All(false))
                .then_some(&self.return_files),
            strict_result: self.strict_result,
        }
    }

    /// A job that runs `script` alone, with `limits`: the canary and the benchmark's.
    pub fn script_only(script: Script, limits: Limits) -> Self {
        Self {
            script,
            input: None,
            files: Vec::new(),
            return_files: ReturnFiles::All(false),
            strict_result: false,
            limits,
            limits_requested: false,
        }
    }
}

/// `path` with `.` and empty names dropped, if it obeys every rule.
pub fn normalise(path: &str) -> Result<String, PathRule> {
    if path.is_empty() {
        return Err(PathRule::Empty);
    }
    if path.starts_with('/') {
        return Err(PathRule::Absolute);
    }
    if path
        .chars()
        .any(|c| c.is_control() || c == '\\' || c == '\0')
    {
        return Err(PathRule::Character);
    }
    if path.ends_with('/') {
        return Err(PathRule::Directory);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathRule::TooLong);
    }
    let names: Vec<&str> = path
        .split('/')
        .filter(|name| !name.is_empty() && *name != ".")
        .collect();
    if names.is_empty() {
        return Err(PathRule::Empty);
    }
    if names.contains(&"..") {
        return Err(PathRule::Parent);
    }
    if names.iter().any(|name| name.len() > MAX_NAME_BYTES) {
        return Err(PathRule::NameTooLong);
    }
    if names.len() > MAX_PATH_DEPTH + 1 {
        return Err(PathRule::TooDeep);
    }
    Ok(names.join("/"))
}

/// Refuses `input` nested deeper than [`MAX_INPUT_DEPTH`].
fn check_input(input: Option<&RawValue>) -> Result<(), JobError> {
    let depth = input.map_or(0, |input| nesting_depth(input.get()));
    if depth > MAX_INPUT_DEPTH {
        return Err(JobError::InputTooDeep {
            depth,
            limit: MAX_INPUT_DEPTH,
        });
    }
    Ok(())
}

/// How deeply arrays and objects nest in `json`, which serde has read as valid JSON: `1` is
/// 0, `[1]` and `{}` are 1. One pass over the text counting brackets outside strings (an
/// escaped quote does not end one), with no recursion, so any depth costs only its length.
pub fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0_usize, 0_usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Checks every path and the caps, and returns the files with normalised paths.
fn check_files(files: Vec<InputFile>, limits: &Limits) -> Result<Vec<InputFile>, JobError> {
    if files.len() > limits.input_files {
        return Err(JobError::TooManyFiles {
            count: files.len(),
            limit: limits.input_files,
        });
    }
    let mut total: u64 = 0;
    let mut seen: Vec<String> = Vec::with_capacity(files.len());
    let mut checked = Vec::with_capacity(files.len());
    for (index, mut file) in files.into_iter().enumerate() {
        let path_error = |rule| JobError::FilePath {
            index,
            path: file.path.clone(),
            rule,
        };
        let path = normalise(&file.path).map_err(path_error)?;
        if let Some(other) = seen.iter().position(|earlier| *earlier == path) {
            return Err(path_error(PathRule::Duplicate(other)));
        }
        if let Some(other) = seen.iter().position(|earlier| nested(earlier, &path)) {
            return Err(path_error(PathRule::Conflict(other)));
        }
        let size = match file.encoding {
            FileEncoding::Utf8 => file.content.len() as u64,
            FileEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(&file.content)
                .map_err(|_| JobError::FileContent {
                    index,
                    path: file.path.clone(),
                })?
                .len() as u64,
        };
        total = total.saturating_add(size);
        if total > limits.input_bytes {
            return Err(JobError::FilesTooLarge {
                bytes: total,
                limit: limits.input_bytes,
            });
        }
        seen.push(path.clone());
        file.path = path;
        checked.push(file);
    }
    Ok(checked)
}

/// Whether one path is a directory above the other.
fn nested(a: &str, b: &str) -> bool {
    let under = |dir: &str, path: &str| {
        path.strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
    };
    under(a, b) || under(b, a)
}

fn check_patterns(wanted: &ReturnFiles) -> Result<(), JobError> {
    let ReturnFiles::Matching(patterns) = wanted else {
        return Ok(());
    };
    if patterns.is_empty() || patterns.len() > MAX_PATTERNS {
        return Err(JobError::Pattern(format!(
            "give true, false, or 1 to {MAX_PATTERNS} glob patterns such as \"*.csv\""
        )));
    }
    match patterns.iter().find(|pattern| {
        pattern.is_empty() || pattern.len() > MAX_PATTERN_BYTES || pattern.contains('\0')
    }) {
        Some(pattern) => Err(JobError::Pattern(format!(
            "{pattern:?}: a pattern must be 1 to {MAX_PATTERN_BYTES} bytes without NUL"
        ))),
        None => Ok(()),
    }
}

/// The configured limits, lowered where the request asks.
fn apply(requested: RequestLimits, limits: &Limits) -> Result<Limits, JobError> {
    let mut applied = limits.clone();
    let check = |name, value: Option<u64>, min: u64, max: u64| match value {
        Some(value) if !(min..=max).contains(&value) => Err(JobError::Limit {
            name,
            value,
            min,
            max,
        }),
        _ => Ok(value),
    };
    if let Some(time) = check("time_ms", requested.time_ms, 1, limits.time_limit_ms)? {
        applied.time_limit_ms = time;
    }
    let memory_floor = limits.memory_floor();
    if let Some(memory) = check(
        "memory_bytes",
        requested.memory_bytes,
        memory_floor,
        limits.memory_bytes,
    )? {
        applied.memory_bytes = memory;
    }
    let output_max = limits.output_bytes as u64;
    if let Some(output) = check("output_bytes", requested.output_bytes, 0, output_max)? {
        applied.output_bytes = usize::try_from(output).unwrap_or(limits.output_bytes);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_or_refused_by_rule() {
        assert_eq!(normalise("./data//sales.csv").unwrap(), "data/sales.csv");
        for (path, rule) in [
            ("", PathRule::Empty),
            ("./", PathRule::Directory),
            (".", PathRule::Empty),
            ("/etc/passwd", PathRule::Absolute),
            ("a/../../etc/passwd", PathRule::Parent),
            ("..", PathRule::Parent),
            ("a\0b", PathRule::Character),
            ("a\nb", PathRule::Character),
            ("a\\b", PathRule::Character),
            ("dir/", PathRule::Directory),
        ] {
            assert_eq!(normalise(path), Err(rule), "{path:?}");
        }
        assert_eq!(normalise(&"n".repeat(256)), Err(PathRule::NameTooLong));
        assert!(normalise(&"n".repeat(255)).is_ok());
        assert_eq!(normalise(&"d/".repeat(17).add("f")), Err(PathRule::TooDeep));
        assert!(normalise(&"d/".repeat(16).add("f")).is_ok());
        assert_eq!(
            normalise(&"a/".repeat(600).add("f")),
            Err(PathRule::TooLong)
        );
    }

    trait Add {
        fn add(self, tail: &str) -> String;
    }

    impl Add for String {
        fn add(mut self, tail: &str) -> String {
            self.push_str(tail);
            self
        }
    }

    #[test]
    fn depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
        for (json, depth) in [
            ("1", 0),
            ("\"[[[\"", 0),
            ("[]", 1),
            ("{}", 1),
            ("[[1], {\"a\": [2]}]", 3),
            ("[[], [], []]", 2),
            (r#"{"a\"[[": "]]\\", "b": [[{}]]}"#, 4),
            (r#"["\\\"[", ["\\"], "{"]"#, 2),
        ] {
            assert_eq!(nesting_depth(json), depth, "{json}");
        }
        let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        assert_eq!(nesting_depth(&deep), 200_000);
    }

    #[test]
    fn nesting_is_seen_both_ways_but_not_in_shared_prefixes() {
        assert!(nested("a", "a/b"));
        assert!(nested("a/b", "a"));
        assert!(!nested("a", "ab/c"));
        assert!(!nested("a/b", "a/c"));
    }
}
