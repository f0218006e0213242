#!/usr/bin/env bash
# Makes local stand-ins for the Dockerfile's two base images, for hosts that cannot pull them
# (no registry access: the image test, tests/image.rs, on CI). Podman can only use an image
# that is in its local store when building with --pull=never, and a digest-pinned reference
# (what the Dockerfile names by default) can never be satisfied by an image made here, so the
# stand-ins get names of their own and the build passes them as build arguments:
#
#   BUILD_IMAGE=localhost/pyexec-stand-in/rust:<toolchain>-slim-bookworm
#     Debian 12 minbase + gcc + libc6-dev + ca-certificates (what rust:*-slim-bookworm adds
#     to debian:bookworm-slim) + the host's Rust toolchain (cargo, rustc, the std library of
#     the host's target), copied in: the toolchain cannot be downloaded here (only the Debian
#     mirrors, PyPI and crates.io are reachable) and Debian's own rustc is too old for edition
#     2024. Its version must be scripts/setup.sh's RUST_TOOLCHAIN, which the Dockerfile's
#     default build image is too.
#   RUNTIME_IMAGE=localhost/pyexec-stand-in/debian:bookworm-slim
#     Debian 12 minbase, slimmed as the official debian:bookworm-slim is (no docs, man pages
#     or locales; apt that keeps no .debs or package lists), so the image size the test
#     measures is close to the real one.
#
# Both come from `debootstrap --variant=minbase bookworm`, imported with `podman import`.
# Idempotent and cached: each image carries the hash of its recipe (this file, plus the
# toolchain's version for the builder) as a label, and is left alone when the label matches;
# the Debian part of each root file system is kept as a tar in $PYEXEC_IMAGE_CACHE (default
# /var/cache/pyexec-image, with debootstrap's downloaded .debs), so a new import after
# `podman rmi` or a toolchain update does not debootstrap again. Concurrent runs serialise on
# a lock there.
#
# Prints the build arguments on stdout, one NAME=VALUE a line; progress goes to stderr.
# Needs root, podman and debootstrap (scripts/setup.sh installs them), and the Debian mirrors
# the first time.
#
# Usage: scripts/image-stand-ins.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${PYEXEC_IMAGE_CACHE:-/var/cache/pyexec-image}
suite=bookworm
mirror=http://deb.debian.org/debian
label=io.pyexec.stand-in.recipe
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf 'image-stand-ins: %s\n' "$*" >&2; }
die() { printf 'image-stand-ins: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: debootstrap and rootful podman need it"
for tool in podman debootstrap tar flock sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: run scripts/setup.sh"
done

# One Rust version for the host, the Dockerfile and the stand-in: scripts/setup.sh's.
toolchain=$(sed -n 's/^RUST_TOOLCHAIN=\([0-9.]*\)$/\1/p' "$here/scripts/setup.sh")
[ -n "$toolchain" ] || die "no RUST_TOOLCHAIN=<version> line in scripts/setup.sh"
runtime_name=localhost/pyexec-stand-in/debian:$suite-slim
build_name=localhost/pyexec-stand-in/rust:$toolchain-slim-$suite

mkdir -p "$cache/debs"
exec 9>"$cache/lock"
flock 9

# The host's toolchain, checked to be the pinned version (rustup resolves the name).
sysroot=$(rustc +"$toolchain" --print sysroot 2>/dev/null) \
  || die "the Rust toolchain $toolchain is not installed: rustup toolchain install $toolchain"
host=$("$sysroot/bin/rustc" -vV | sed -n 's/^host: //p')
toolchain_id=$("$sysroot/bin/rustc" -vV; "$sysroot/bin/cargo" -V)
case $toolchain_id in
  "rustc $toolchain "*) ;;
  *) die "$sysroot/bin/rustc is not Rust $toolchain: $toolchain_id" ;;
esac

self_hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-64)
runtime_recipe=$(printf '%s runtime %s\n' "$self_hash" "$suite" | sha256sum | cut -c1-16)
debian_build_recipe=$(printf '%s build %s\n' "$self_hash" "$suite" | sha256sum | cut -c1-16)
build_recipe=$(printf '%s %s\n' "$debian_build_recipe" "$toolchain_id" | sha256sum | cut -c1-16)

work=
tarball=
cleanup() { [ -z "$work" ] || rm -rf "$work"; }
trap cleanup EXIT

# current NAME RECIPE: whether the local image NAME was made from RECIPE.
current() {
  [ "$(podman image inspect --format "{{index .Labels \"$label\"}}" "$1" 2>/dev/null)" = "$2" ]
}

# slim ROOT: what debuerreotype does to make debian:*-slim, and the apt settings every
# official Debian image has, so later package installs stay as small as they would there.
slim() {
  local root=$1
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# As in debian:*-slim: no documentation, manual pages or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
EOF
  find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "${root:?}"/usr/share/{info,linda,locale,man,groff}/* "$root/usr/share/lintian/overrides"
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  # The official image's sources: the release, its updates and its security updates.
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror}-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # Nothing of this host, nor of the download: the runtime provides these files.
  rm -rf "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/cache/apt/*.bin \
    "${root:?}"/var/cache/apt/archives/*.deb "${root:?}"/var/log/* "${root:?}"/tmp/*
  : >"$root/etc/resolv.conf"
  : >"$root/etc/hostname"
}

# debian_tar KIND RECIPE [PACKAGE,...]: sets $tarball to a tar of a slimmed minbase root file
# system with these extra packages, made once per recipe and kept in the cache.
debian_tar() {
  local kind=$1 recipe=$2 include=${3:-} root
  tarball="$cache/debian-$kind-$recipe.tar"
  [ -s "$tarball" ] && return 0
  work=$(mktemp -d "$cache/work.XXXXXX")
  root=$work/root
  say "debootstrap --variant=minbase $suite${include:+ with $include} (about a minute)"
  debootstrap --variant=minbase ${include:+--include="$include"} --cache-dir="$cache/debs" \
    "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || die "debootstrap failed (is $mirror reachable?); its log ends: $(tail -5 "$work/debootstrap.log")"
  slim "$root"
  tar -C "$root" --numeric-owner -cf "$tarball.partial" .
  mv "$tarball.partial" "$tarball"
  rm -rf "$work"
  work=
  # Earlier recipes' tars of this kind are of no further use.
  find "$cache" -maxdepth 1 -name "debian-$kind-*.tar" ! -name "debian-$kind-$recipe.tar" -delete
}

# import NAME RECIPE CHANGE...: imports a root file system tar from stdin as NAME, labelled
# with RECIPE; drops the image it replaces unless a container still uses it.
import() {
  local name=$1 recipe=$2 old
  shift 2
  old=$(podman image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
  local changes=(--change "LABEL $label=$recipe" --change 'CMD ["bash"]')
  for change in "$@"; do changes+=(--change "$change"); done
  podman import --quiet "${changes[@]}" - "$name" >/dev/null
  [ -z "$old" ] || podman rmi "$old" >/dev/null 2>&1 || true
}

if current "$runtime_name" "$runtime_recipe"; then
  say "$runtime_name is current"
else
  debian_tar runtime "$runtime_recipe"
  say "importing $runtime_name"
  import "$runtime_name" "$runtime_recipe" <"$tarball"
fi

if current "$build_name" "$build_recipe"; then
  say "$build_name is current"
else
  debian_tar build "$debian_build_recipe" gcc,libc6-dev,ca-certificates
  say "importing $build_name with the host's Rust $toolchain ($host)"
  work=$(mktemp -d "$cache/work.XXXXXX")
  tar -C "$work" --numeric-owner -xf "$tarball"
  # Where the official rust image keeps its toolchain, without rustup itself (the build
  # needs cargo and rustc only): the rest of the host's toolchain (docs, sources, clippy,
  # rustfmt) would only make the stand-in bigger.
  dest=$work/usr/local/rustup/toolchains/$toolchain-$host
  mkdir -p "$dest/bin" "$dest/lib/rustlib" "$work/usr/local/cargo/bin"
  cp -a "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$dest/bin/"
  cp -a "$sysroot"/lib/*.so* "$dest/lib/"
  cp -a "$sysroot/lib/rustlib/$host" "$dest/lib/rustlib/"
  chown -R 0:0 "$work/usr/local"
  for tool in cargo rustc; do
    ln -s "../../rustup/toolchains/$toolchain-$host/bin/$tool" "$work/usr/local/cargo/bin/$tool"
  done
  tar -C "$work" --numeric-owner -cf - . \
    | import "$build_name" "$build_recipe" \
      "ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
      "ENV RUSTUP_HOME=/usr/local/rustup" "ENV CARGO_HOME=/usr/local/cargo" \
      "ENV RUST_VERSION=$toolchain"
  rm -rf "$work"
  work=
fi

printf 'BUILD_IMAGE=%s\nRUNTIME_IMAGE=%s\n' "$build_name" "$runtime_name"
