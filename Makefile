# The two commands: `make run` and `make test`. Each first installs whatever this Debian 12
# machine lacks (scripts/setup.sh: pinned nsjail, sandbox Python with numpy and pandas, Debian
# packages, Rust), which takes about 0.9 s when everything is already there. Run as root.

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: setup run test build bench lint

setup:
	@bash scripts/setup.sh

build: setup
	cargo build --release --locked

# Serves on $PORT (default 8080) in the foreground, with config/default.toml.
run: build
	PYEXEC_CONFIG=config/default.toml exec ./target/release/pyexec

# What ships besides Rust: the Dockerfile (hadolint, pinned in config/tools-requirements.txt)
# and every shell script (shellcheck, from Debian).
lint: setup
	/opt/pyexec/tools/bin/hadolint Dockerfile
	shellcheck .ci/run $$(find . -name '*.sh' -not -path './target/*' -not -path './.git/*')

# Formatting, lints, docs, the harness's own tests (with the sandbox's Python), then every
# test against the real nsjail and sandbox Python, the container image, and a browser.
test: setup lint
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --document-private-items
	PYTHONDONTWRITEBYTECODE=1 /opt/pyexec/sandbox/bin/python3 -m unittest discover -s src/harness -v
	cargo test --locked

# The benchmark: baselines and the service in one run, written to BENCHMARKS.md (~4 minutes).
bench: setup
	cargo bench --locked --bench service
