//! The in-process integration suites, one test binary: `common/` is compiled once and the
//! binary linked once, instead of once per suite. Each module is one suite (run one with
//! `cargo test --test it escape::`); `tests/README.md` says which suites live where and why
//! the others are binaries of their own.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod data;
mod deploy;
mod escape;
mod examples;
mod execute;
mod observability;
mod profiles;
mod readme;
mod reliability;
mod stream;
