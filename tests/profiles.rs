//! Choosing the profile at start-up, with the real nsjail: `auto` takes `strict` where it
//! works, falls back to `cloudrun` where it does not, and `sandbox.require` fails closed.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod common;

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
    for file in ["cloudrun.cfg", "seccomp.kafel"] {
        std::fs::copy(source.join(file), target.join(file)).unwrap();
    }
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
}

#[tokio::test]
async fn requiring_strict_refuses_to_start_rather_than_degrade() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_with(dir.path(), ProfileChoice::Auto, Profile::Strict);
    config.sandbox.profile_dir = broken_strict(dir.path());
    let error = AppState::start(config).await.unwrap_err();
    assert!(error.to_string().contains("refusing to start"), "{error}");

    let configured_weaker = config_with(dir.path(), ProfileChoice::CloudRun, Profile::Strict);
    let error = AppState::start(configured_weaker).await.unwrap_err();
    assert!(error.to_string().contains("`strict`"), "{error}");
}

#[tokio::test]
async fn a_sandbox_that_does_not_work_at_all_starts_unhealthy_on_the_stronger_profile() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_with(dir.path(), ProfileChoice::Auto, Profile::CloudRun);
    config.sandbox.python = "/nonexistent/python3".into();
    let state = AppState::start(config).await.unwrap();
    assert_eq!(state.sandbox.profile(), Profile::Strict);
    let reason = state.sandbox.health().await.unwrap_err();
    assert!(reason.contains("/nonexistent/python3"), "{reason}");
}
