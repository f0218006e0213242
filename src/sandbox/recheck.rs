//! The service's own check of what a script that returned sent back: every cap and rule the
//! harness applies, held again whatever the final frame says, since that frame comes from the
//! process that ran user code (a script can write its own on fd 3) and a client may write the
//! returned paths to its own disk.

use std::collections::HashMap;

use base64::Engine;

use crate::config::Limits;
use crate::failure::ScriptFailure;
use crate::harness::{self, Returned};
use crate::job::{self, PathRule};
use crate::protocol::{FileEncoding, Nulls, SkipReason, SkippedFile};

/// Holds what a returned frame carries to every cap and rule the harness applies, whatever
/// the frame says: it is the script process's word (a script can write its own final frame on
/// fd 3), and a client may write these paths to its own disk. A result over
/// `limits.result_bytes` fails as the harness would fail it; what one entry gets wrong costs
/// that entry, never the answer (see [`check_files`]); nulls and skipped entries are cut to the
/// harness's caps.
pub fn check_returned(mut returned: Returned, limits: &Limits) -> Result<Returned, ScriptFailure> {
    let result_bytes = returned.result.get().len();
    if result_bytes > limits.result_bytes {
        return Err(ScriptFailure::ResultTooLarge {
            result_bytes: result_bytes as u64,
            limit_bytes: limits.result_bytes as u64,
        });
    }
    returned.nulls = returned.nulls.and_then(cap_nulls);
    check_files(&mut returned, limits)
        .map_err(|problem| ScriptFailure::ResultUnreadable { problem })?;
    Ok(returned)
}

/// The first [`harness::MAX_NULL_PATHS`] paths; the count is at least the paths the frame
/// named. None when there is no null at all.
fn cap_nulls(mut nulls: Nulls) -> Option<Nulls> {
    nulls.count = nulls.count.max(nulls.paths.len() as u64);
    nulls.paths.truncate(harness::MAX_NULL_PATHS);
    (nulls.count > 0).then_some(nulls)
}

/// The returned files hold to the request's caps, and each content is what its encoding and
/// size say: else the frame is unreadable (the harness reads every file itself, so only a
/// forged or broken frame gets these wrong). A file whose path breaks a path rule of input
/// files, or whose path comes more than once (every copy: which of them is the file?), is
/// moved to `skipped_files` with its reason. Every skipped entry must then be a path a walk
/// of the working directory could list for its reason ([`walkable`]), else it is dropped,
/// and at most [`harness::MAX_SKIPPED`] are kept; `files_truncated` says when the service
/// left anything out. Skipped entries come only beside the files.
fn check_files(returned: &mut Returned, limits: &Limits) -> Result<(), String> {
    let Some(files) = returned.files.take() else {
        returned.skipped_files.clear();
        return Ok(());
    };
    if files.len() > limits.output_files {
        return Err(format!("{} files, over the cap", files.len()));
    }
    let mut times = HashMap::<String, usize>::new();
    for file in &files {
        *times.entry(file.path.clone()).or_default() += 1;
    }
    let mut left_out = false;
    let mut kept = Vec::with_capacity(files.len());
    let mut total: u64 = 0;
    for file in files {
        let verdict = if times[&file.path] > 1 {
            Verdict::Skipped(SkipReason::DuplicatePath)
        } else {
            match job::normalise(&file.path) {
                Ok(tidy) if tidy == file.path => Verdict::Kept,
                Ok(_) => Verdict::Dropped,
                Err(rule) => skip_reason(&rule).map_or(Verdict::Dropped, Verdict::Skipped),
            }
        };
        match verdict {
            Verdict::Skipped(reason) => returned.skipped_files.push(SkippedFile {
                path: file.path,
                reason,
            }),
            Verdict::Dropped => left_out = true,
            Verdict::Kept => {
                let size = match file.encoding {
                    FileEncoding::Utf8 => file.content.len(),
                    FileEncoding::Base64 => base64::engine::general_purpose::STANDARD
                        .decode(&file.content)
                        .map_err(|_| format!("file {:?} is not valid base64", file.path))?
                        .len(),
                };
                if size as u64 != file.size {
                    return Err(format!("file {:?} is not the size it claims", file.path));
                }
                total = total.saturating_add(file.size);
                kept.push(file);
            }
        }
    }
    if total > limits.output_files_bytes {
        return Err(format!("{total} bytes of files, over the cap"));
    }
    let listed = returned.skipped_files.len();
    returned
        .skipped_files
        .retain(|skipped| walkable(&skipped.path, skipped.reason));
    returned.skipped_files.truncate(harness::MAX_SKIPPED);
    if left_out || returned.skipped_files.len() < listed {
        returned.files_truncated = true;
    }
    returned.files = Some(kept);
    Ok(())
}

/// What becomes of one returned file.
enum Verdict {
    Kept,
    Skipped(SkipReason),
    /// Left out, and said to be (`files_truncated`).
    Dropped,
}

/// The reason a returned file is skipped for the path rule it breaks; None for a rule no walk
/// of the working directory can break (`..`, an absolute, empty or untidy path): such an entry
/// is dropped.
fn skip_reason(rule: &PathRule) -> Option<SkipReason> {
    match rule {
        PathRule::Character => Some(SkipReason::NameRefused),
        PathRule::TooLong | PathRule::NameTooLong => Some(SkipReason::PathTooLong),
        PathRule::TooDeep => Some(SkipReason::TooDeep),
        PathRule::Empty
        | PathRule::Absolute
        | PathRule::Parent
        | PathRule::Directory
        | PathRule::Duplicate(_)
        | PathRule::Conflict(_) => None,
    }
}

/// The most bytes one byte of a name that is not UTF-8 takes once shown lossily (U+FFFD).
const LOSSY_BYTES: usize = 3;

/// Whether a walk of the working directory could have listed `path` as skipped for `reason`:
/// names joined by `/` (none empty, `.` or `..`), at most [`job::MAX_PATH_DEPTH`] directories
/// deep, and every other path rule of input files kept but those the reason itself is about.
/// A name that is not UTF-8 is shown lossily (at most [`LOSSY_BYTES`] for each byte of its
/// own) and may hold anything else too; a refused name's path may also be long.
fn walkable(path: &str, reason: SkipReason) -> bool {
    let may_break = |rule: &PathRule| match reason {
        SkipReason::NameNotUtf8 => matches!(
            rule,
            PathRule::Character | PathRule::NameTooLong | PathRule::TooLong
        ),
        SkipReason::NameRefused => matches!(rule, PathRule::Character | PathRule::TooLong),
        SkipReason::PathTooLong => matches!(rule, PathRule::TooLong),
        SkipReason::Symlink
        | SkipReason::NotARegularFile
        | SkipReason::ChangedWhileReading
        | SkipReason::Unreadable
        | SkipReason::TooDeep
        | SkipReason::DuplicatePath => false,
    };
    let names: Vec<&str> = path.split('/').collect();
    // Each name alone, so the first rule one breaks cannot hide another (normalise stops at
    // the first): "" and "." are `Empty`, ".." is `Parent`, and one name too long for a whole
    // path is a name too long.
    names.len() <= job::MAX_PATH_DEPTH + 1
        && (path.len() <= job::MAX_PATH_BYTES || may_break(&PathRule::TooLong))
        && names.iter().all(|name| match job::normalise(name) {
            Ok(tidy) => tidy == *name,
            Err(PathRule::TooLong) => may_break(&PathRule::NameTooLong),
            Err(rule) => may_break(&rule),
        })
        && names
            .iter()
            .all(|name| name.len() <= LOSSY_BYTES * job::MAX_NAME_BYTES)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::harness::Reported;

    const STARTED: &str = "{\"event\": \"started\", \"v\": 2}\n";

    /// What the service makes of a final frame a script may have written itself.
    fn answer(frame: &serde_json::Value, limits: &Limits) -> Result<Returned, ScriptFailure> {
        let written = format!("{STARTED}{frame}\n");
        match harness::parse(written.as_bytes(), false).outcome {
            Some(Ok(Reported::Returned(returned))) => check_returned(returned, limits),
            other => panic!("{other:?}"),
        }
    }

    fn skipped(entries: &[(&str, &str)]) -> Vec<serde_json::Value> {
        entries
            .iter()
            .map(|(path, reason)| json!({"path": path, "reason": reason}))
            .collect()
    }

    fn listed(returned: &Returned) -> Vec<serde_json::Value> {
        returned
            .skipped_files
            .iter()
            .map(|entry| serde_json::to_value(entry).unwrap())
            .collect()
    }

    fn file(path: &str) -> serde_json::Value {
        json!({"path": path, "size": 1, "content": "x", "encoding": "utf-8"})
    }

    #[test]
    fn a_forged_result_over_the_limit_is_too_large_whatever_the_frame_says() {
        let limits = Limits {
            result_bytes: 100,
            ..Limits::default()
        };
        let frame = json!({"v": 2, "event": "returned", "result": "x".repeat(99)});
        assert_eq!(
            answer(&frame, &limits).unwrap_err(),
            ScriptFailure::ResultTooLarge {
                result_bytes: 101,
                limit_bytes: 100
            }
        );
        let frame = json!({"v": 2, "event": "returned", "result": "x".repeat(98)});
        assert_eq!(answer(&frame, &limits).unwrap().result.get().len(), 100);
    }

    #[test]
    fn forged_skipped_entries_are_cut_to_the_cap_and_none_leaves_the_directory() {
        let mut entries: Vec<serde_json::Value> = (0..3000)
            .map(|i| json!({"path": format!("../../etc/{i}"), "reason": "symlink"}))
            .collect();
        entries.extend((0..100).map(|i| json!({"path": format!("l{i:03}"), "reason": "symlink"})));
        entries.extend(skipped(&[
            ("/etc/passwd", "symlink"),
            ("a/./b", "symlink"),
            ("a//b", "unreadable"),
            ("dir/", "not_a_regular_file"),
            ("", "too_deep"),
        ]));
        let frame = json!({"v": 2, "event": "returned", "result": 1, "files": [],
                           "files_truncated": false, "skipped_files": entries});
        let returned = answer(&frame, &Limits::default()).unwrap();
        let expected: Vec<serde_json::Value> = (0..harness::MAX_SKIPPED)
            .map(|i| json!({"path": format!("l{i:03}"), "reason": "symlink"}))
            .collect();
        assert_eq!(listed(&returned), expected);
        assert!(returned.files_truncated);
    }

    #[test]
    fn a_skipped_path_may_break_only_the_rule_its_reason_names() {
        let long = format!("{}/f", "d".repeat(job::MAX_PATH_BYTES));
        // Names of 255 undecodable bytes each, and one byte more.
        let lossy = vec!["\u{fffd}".repeat(job::MAX_NAME_BYTES); 2].join("/");
        let huge_name = "\u{fffd}".repeat(job::MAX_NAME_BYTES + 1);
        let refused_and_long = format!("{}/a\\b", vec!["d".repeat(250); 5].join("/"));
        let kept = [
            ("reports\\2024.csv", "name_refused"),
            ("line\nbreak", "name_refused"),
            (refused_and_long.as_str(), "name_refused"),
            ("caf\u{fffd}.txt", "name_not_utf8"),
            ("caf\u{fffd}\\\u{fffd}", "name_not_utf8"),
            (lossy.as_str(), "name_not_utf8"),
            ("dir/deep", "too_deep"),
            ("caf\u{fffd}.txt", "symlink"),
        ];
        let dropped = [
            ("a\\b", "symlink"),
            ("../a\\b", "name_refused"),
            ("/a\\b", "name_refused"),
            ("a\\b/..", "name_not_utf8"),
            ("./x", "name_not_utf8"),
            (long.as_str(), "path_too_long"),
            ("x\\y", "path_too_long"),
            (long.as_str(), "name_refused"),
            ("a\\b", "duplicate_path"),
            (&huge_name, "name_not_utf8"),
        ];
        let deep = format!("{}f", "d/".repeat(job::MAX_PATH_DEPTH + 1));
        let too_long = format!("{}/f", "d".repeat(200)).repeat(6);
        let mut entries = skipped(&kept);
        entries.extend(skipped(&dropped));
        entries.extend(skipped(&[
            (&deep, "too_deep"),
            (&too_long, "path_too_long"),
        ]));
        let frame = json!({"v": 2, "event": "returned", "result": 1, "files": [],
                           "files_truncated": false, "skipped_files": entries});
        let returned = answer(&frame, &Limits::default()).unwrap();
        let mut expected = skipped(&kept);
        expected.extend(skipped(&[(&too_long, "path_too_long")]));
        assert_eq!(listed(&returned), expected);
        assert!(returned.files_truncated);
    }

    #[test]
    fn a_returned_file_with_a_refused_path_is_skipped_not_the_answer() {
        let long = format!("{}/f", "d".repeat(200)).repeat(6);
        let frame = json!({"v": 2, "event": "returned", "result": 1, "files_truncated": false,
            "files": [file("reports\\2024.csv"), file("ok.csv"), file(&long), file("a\u{1}b")],
            "skipped_files": skipped(&[("fifo", "not_a_regular_file")])});
        let returned = answer(&frame, &Limits::default()).unwrap();
        assert_eq!(
            returned.files,
            Some(vec![serde_json::from_value(file("ok.csv")).unwrap()])
        );
        assert_eq!(
            listed(&returned),
            skipped(&[
                ("fifo", "not_a_regular_file"),
                ("reports\\2024.csv", "name_refused"),
                (&long, "path_too_long"),
                ("a\u{1}b", "name_refused"),
            ])
        );
        assert!(!returned.files_truncated);
    }

    #[test]
    fn a_returned_file_that_leaves_the_directory_is_dropped_and_said_to_be() {
        let frame = json!({"v": 2, "event": "returned", "result": 1, "files_truncated": false,
            "files": [file("../../etc/cron.d/x"), file("/etc/passwd"), file("./ok"), file("ok")]});
        let returned = answer(&frame, &Limits::default()).unwrap();
        assert_eq!(
            returned.files,
            Some(vec![serde_json::from_value(file("ok")).unwrap()])
        );
        assert!(returned.skipped_files.is_empty());
        assert!(returned.files_truncated);
    }

    #[test]
    fn a_path_reported_twice_is_skipped_every_time_and_never_made_one() {
        let frame = json!({"v": 2, "event": "returned", "result": 1, "files_truncated": false,
            "files": [file("caf\u{fffd}.txt"), file("b"), file("caf\u{fffd}.txt")]});
        let returned = answer(&frame, &Limits::default()).unwrap();
        assert_eq!(
            returned.files,
            Some(vec![serde_json::from_value(file("b")).unwrap()])
        );
        assert_eq!(
            listed(&returned),
            skipped(&[
                ("caf\u{fffd}.txt", "duplicate_path"),
                ("caf\u{fffd}.txt", "duplicate_path"),
            ])
        );
    }

    #[test]
    fn skipped_entries_without_files_are_dropped() {
        let frame = json!({"v": 2, "event": "returned", "result": 1,
                           "skipped_files": skipped(&[("a", "symlink")])});
        let returned = answer(&frame, &Limits::default()).unwrap();
        assert!(returned.files.is_none());
        assert!(returned.skipped_files.is_empty());
    }

    #[test]
    fn what_only_a_lie_gets_wrong_still_makes_the_frame_unreadable() {
        let limits = Limits {
            output_files: 2,
            output_files_bytes: 2,
            ..Limits::default()
        };
        for files in [
            json!([file("a"), file("b"), file("c")]),
            json!([file("a"), file("b"), {"path": "c", "size": 1, "content": "x", "encoding": "base64"}]),
            json!([{"path": "a", "size": 5, "content": "x", "encoding": "utf-8"}]),
            json!([file("a"), {"path": "b", "size": 2, "content": "xy", "encoding": "utf-8"}]),
        ] {
            let frame = json!({"v": 2, "event": "returned", "result": 1, "files": files,
                               "files_truncated": false});
            let failure = answer(&frame, &limits).unwrap_err();
            assert!(
                matches!(failure, ScriptFailure::ResultUnreadable { .. }),
                "{files}: {failure:?}"
            );
        }
    }

    #[test]
    fn forged_null_paths_are_cut_to_the_cap_and_the_count_covers_them() {
        let paths: Vec<String> = (0..3000).map(|i| format!("result[{i}]")).collect();
        for (count, expected) in [(5, 3000), (10_000, 10_000)] {
            let frame = json!({"v": 2, "event": "returned", "result": 1,
                               "nulls": {"count": count, "paths": paths}});
            let nulls = answer(&frame, &Limits::default()).unwrap().nulls.unwrap();
            assert_eq!(nulls.count, expected);
            assert_eq!(nulls.paths, paths[..harness::MAX_NULL_PATHS]);
        }
        let frame =
            json!({"v": 2, "event": "returned", "result": 1, "nulls": {"count": 0, "paths": []}});
        assert!(answer(&frame, &Limits::default()).unwrap().nulls.is_none());
    }

    /// The golden frames the harness writes (`src/harness/golden`, checked by `test_harness.py`)
    /// pass the service's checks unchanged, under the limits they were made with; and two show
    /// the harness stopping at the service's caps: 64 skipped entries out of 70, 100 null paths
    /// out of 150, a path of 1024 bytes returned and one of 1025 skipped.
    #[test]
    fn the_harness_s_own_frames_pass_unchanged_and_its_caps_are_the_service_s() {
        let limits = Limits {
            result_bytes: 1000,
            output_files: 4,
            output_files_bytes: 1000,
            ..Limits::default()
        };
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/harness/golden");
        let golden = |name: &str| -> serde_json::Value {
            let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
            serde_json::from_str(&text).unwrap()
        };
        for name in ["files_at_their_caps", "odd_file_names", "returned_mapped"] {
            let frame = &golden(name)["frame"];
            let returned = answer(frame, &limits).unwrap();
            let result: serde_json::Value = serde_json::from_str(returned.result.get()).unwrap();
            assert_eq!(result, frame["result"], "{name}");
            assert_eq!(
                serde_json::to_value(&returned.nulls).unwrap(),
                frame["nulls"],
                "{name}"
            );
            if frame.get("files").is_some() {
                assert_eq!(
                    serde_json::to_value(&returned.files).unwrap(),
                    frame["files"]
                );
                assert_eq!(json!(returned.files_truncated), frame["files_truncated"]);
                assert_eq!(json!(listed(&returned)), frame["skipped_files"], "{name}");
            }
        }
        let caps = golden("files_at_their_caps")["frame"].clone();
        assert_eq!(
            caps["skipped_files"].as_array().unwrap().len(),
            harness::MAX_SKIPPED
        );
        assert_eq!(caps["files_truncated"], true);
        assert_eq!(
            caps["nulls"]["paths"].as_array().unwrap().len(),
            harness::MAX_NULL_PATHS
        );
        assert_eq!(caps["nulls"]["count"], 150);
        let odd = golden("odd_file_names")["frame"].clone();
        let longest = |entries: &serde_json::Value| {
            entries
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["path"].as_str().unwrap().len())
                .max()
        };
        assert_eq!(longest(&odd["files"]), Some(job::MAX_PATH_BYTES));
        let too_long: Vec<&serde_json::Value> = odd["skipped_files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["reason"] == "path_too_long")
            .collect();
        assert_eq!(too_long.len(), 1);
        assert_eq!(
            too_long[0]["path"].as_str().unwrap().len(),
            job::MAX_PATH_BYTES + 1
        );
    }
}
