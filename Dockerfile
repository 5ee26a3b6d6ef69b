# The CDR service image: `cdr` is the entrypoint; the chart runs `cdr api`,
# `cdr ingest` and `cdr migrate` from this one image.

# The base image, by tag. Pin it by digest where you build, so a rebuild cannot change the
# base under an unchanged Dockerfile:
#   docker buildx imagetools inspect python:3.11-slim-bookworm   # the index digest
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> .
# (This repository's CI has no registry access to resolve one; no digest is guessed here.)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The Rust toolchain that builds the compiled validator (rust/cdr-validate) in the build
# stage only: the image ships its wheel, no compiler. Pin it by digest too where you build.
ARG RUST_IMAGE=rust:1.95-slim-bookworm

FROM ${RUST_IMAGE} AS rust

FROM ${PYTHON_IMAGE} AS build
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PIP_NO_CACHE_DIR=1 \
    RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH
# rustc links with the C toolchain: the base image's Debian release's gcc (not pinned to a
# package version, which Debian's point releases remove; the base image is what to pin).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY --from=rust /usr/local/rustup /usr/local/rustup
COPY --from=rust /usr/local/cargo /usr/local/cargo
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /src
# Dependencies first (a layer that changes only with the lock file and the validator's
# sources; uv sync builds the validator's wheel with maturin).
COPY pyproject.toml uv.lock README.md ./
COPY rust ./rust
RUN uv sync --frozen --no-dev --no-install-project
COPY services ./services
COPY schemas ./schemas
# No extra: the embedded engine (chdb, ~530 MB, the `embedded` extra) stays out of the
# image; its pods reach a ClickHouse server (CDR_CLICKHOUSE_URL). .ci/image-env.sh builds
# this same environment without Docker and runs `cdr --help` and `--check-config` from it.
RUN uv sync --frozen --no-dev --no-editable

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin cdr
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CDR_API_HOST=0.0.0.0 \
    CDR_DATA_DIR=/data
USER 10001:10001
EXPOSE 8000 9100
ENTRYPOINT ["cdr"]
CMD ["api"]
