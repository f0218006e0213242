//! Choosing the profile at start-up, with the real nsjail: `auto` takes `strict` where it
//! works, falls back to `cloudrun` where it does not (saying why), tries both again while
//! neither works, and `sandbox.require` fails closed.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use crate::common;

use std::path::Path;

use pyexec::config::{Profile, ProfileChoice};
use pyexec::{AppState, Config};

fn config_with(work_root: &Path, profile: ProfileChoice, require: Profile) -> Config {
    let mut config = common::test_config(work_root);
    config.sandbox.profile = profile;
    config.sandbox.require = require;
    config
}

/// A profile directory whose `strict.cfg` this host cannot run (as where namespaces are refused).
fn broken_strict(dir: &Path) -> std::path::PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("nsjail");
    let target = dir.join("profiles");
    std::fs::create_dir(&target).unwrap();
    std::fs::copy(source.join("cloudrun.cfg"), target.join("cloudrun.cfg")).unwrap();
    let strict = std::fs::read_to_string(source.join("strict.cfg")).unwrap();
    std::fs::write(
        target.join("strict.cfg"),
        strict.replace("clone_newuser: true", "clone_newuser: maybe"),
    )
    .unwrap();
    target
}

#[tokio::test]
async fn auto_picks_strict_where_the_kernel_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = AppState::start(config_with(
        dir.path(),
        ProfileChoice::Auto,
        Profile::Strict,
    ))
    .await
    .unwrap();
    assert_eq!(state.sandbox.profile(), Profile::Strict);
    assert!(state.sandbox.health().await.is_ok());
}

#[tokio::test]
async fn auto_falls_back_to_cloudrun_when_strict_does_not_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_with(dir.path(), ProfileChoice::Auto, Profile::CloudRun);
    config.sandbox.profile_dir = broken_strict(dir.path());
    let state = AppState::start(config).await.unwrap();
    assert_eq!(state.sandbox.profile(), Profile::CloudRun);
    assert!(state.sandbox.health().await.is_ok());
    assert!(
        !state.sandbox.isolation().not_isolated.is_empty(),
        "cloudrun says what it does not isolate"
    );
    let failed = state.sandbox.failed_profiles();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].profile, Profile::Strict);
    assert!(failed[0].reason.contains("strict.cfg"), "{failed:?}");
    assert!(
        state.sandbox.warm_state().on,
        "the warm path runs on cloudrun too"
    );
}

#[tokio::test]
async fn requiring_strict_refuses_to_start_rather_than_degrade() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_with(dir.path(), ProfileChoice::Auto, Profile::Strict);
    config.sandbox.profile_dir = broken_strict(dir.path());
    let error = AppState::start(config).await.unwrap_err();
    assert!(error.to_string().contains("refusing to start"), "{error}");
}

#[tokio::test]
async fn a_sandbox_that_does_not_work_at_all_starts_unhealthy_with_every_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_with(dir.path(), ProfileChoice::Auto, Profile::CloudRun);
    config.sandbox.python = "/nonexistent/python3".into();
    let state = AppState::start(config).await.unwrap();
    assert_eq!(state.sandbox.profile(), Profile::Strict);
    let reason = state.sandbox.health().await.unwrap_err();
    assert!(
        reason.starts_with("strict: ") && reason.contains("; cloudrun: "),
        "{reason}"
    );
    assert_eq!(
        reason.matches("/nonexistent/python3").count(),
        2,
        "{reason}"
    );
    let failed: Vec<Profile> = state
        .sandbox
        .failed_profiles()
        .iter()
        .map(|failure| failure.profile)
        .collect();
    assert_eq!(failed, [Profile::Strict, Profile::CloudRun]);
}

/// Neither works at start (strict is broken, cloudrun's profile is missing); once cloudrun's
/// profile is back, the next health check (10 s later) finds it and the warm path starts:
/// the stronger profile failing first never leaves a working one unused.
#[tokio::test]
async fn a_profile_that_starts_working_later_is_taken_by_the_next_health_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_with(dir.path(), ProfileChoice::Auto, Profile::CloudRun);
    let profiles = broken_strict(dir.path());
    let cloudrun = std::fs::read(profiles.join("cloudrun.cfg")).unwrap();
    std::fs::remove_file(profiles.join("cloudrun.cfg")).unwrap();
    config.sandbox.profile_dir = profiles.clone();
    let state = AppState::start(config).await.unwrap();
    let reason = state.sandbox.health().await.unwrap_err();
    assert!(reason.contains("cloudrun: "), "{reason}");
    assert!(!state.sandbox.warm_state().on);

    std::fs::write(profiles.join("cloudrun.cfg"), cloudrun).unwrap();
    assert!(
        state.sandbox.health().await.is_err(),
        "re-checked at most every 10 s"
    );
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    state.sandbox.health().await.unwrap();
    assert_eq!(state.sandbox.profile(), Profile::CloudRun);
    let failed = state.sandbox.failed_profiles();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].profile, Profile::Strict);
    assert!(
        state.sandbox.warm_state().on,
        "the warm path starts with it"
    );
    assert!(!state.sandbox.installed().packages.is_empty());
}

/// Runs the service binary with a config file of `toml` and the environment `env` until it
/// exits (it must: each case is a start-up failure); its exit code and its stderr lines.
fn start_binary(toml: &str, env: &[(&str, &str)]) -> (Option<i32>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let config = format!(
        "[server]\nhost = \"127.0.0.1\"\nport = 0\n[sandbox]\nprofile_dir = \"{}/nsjail\"\n\
         work_root = \"{}\"\nmax_concurrency = 1\n{toml}",
        env!("CARGO_MANIFEST_DIR"),
        dir.path().display()
    );
    std::fs::write(&path, config).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pyexec"));
    command
        .env_clear()
        .env("PYEXEC_CONFIG", &path)
        .env("RUST_LOG", "error")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    // Bounded: a service that started instead of failing would never exit.
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the service started instead of refusing to");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr.lines().map(str::to_owned).collect())
}

#[test]
fn a_malformed_setting_stops_the_binary_with_one_worded_line_and_exit_code_2() {
    let (code, lines) = start_binary("", &[("PORT", "eighty")]);
    assert_eq!(code, Some(2), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("pyexec: invalid value \"eighty\" in environment variable PORT"),
        "{lines:?}"
    );
}

#[test]
fn requiring_strict_where_only_cloudrun_may_run_is_one_line_and_exit_code_2() {
    let profiles = tempfile::tempdir().unwrap();
    let broken = broken_strict(profiles.path());
    let (code, lines) = start_binary(
        "require = \"strict\"\ncgroups = false\n",
        &[("PYEXEC_PROFILE_DIR", broken.to_str().unwrap())],
    );
    assert_eq!(code, Some(2), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("refusing to start"), "{lines:?}");
    assert!(
        !lines[0].contains("ProfileTooWeak"),
        "no Debug struct: {lines:?}"
    );
    assert!(
        !lines[0].contains("Set sandbox.require"),
        "no advice to set what is set: {lines:?}"
    );
}
