# syntax=docker/dockerfile:1
# spegel-py image: `docker build -t spegel-py .` (BuildKit; the runtime stage bind-mounts the
# builder's wheels so they never become a layer of the final image).
#
# Stage 1 compiles: py-libp2p depends on fastecdsa, which has no wheel for this platform on PyPI
# and builds from source against GMP (gcc + libgmp-dev), so every dependency is turned into a
# wheel here. Stage 2 holds only the installed wheels and GMP's runtime library.
# tests/packaging/test_wheel.py runs the same `pip wheel` command as the builder and installs the
# result into a fresh virtualenv; tests/packaging/test_dockerfile.py checks this file's shape.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libgmp-dev \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is built from (see .dockerignore), so unrelated edits keep the cache.
COPY pyproject.toml README.md ./
COPY spegel_py ./spegel_py
# The project's wheel first (the exact command the wheel test runs), then one wheel per
# dependency, compiled where PyPI has none (fastecdsa).
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --wheel-dir /wheels /wheels/spegel_py-*.whl

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="spegel-py" \
      org.opencontainers.image.description="Node-local, peer-to-peer OCI image mirror for Kubernetes, wire-compatible with Spegel" \
      org.opencontainers.image.source="https://github.com/spegel-py/spegel-py" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}"
# libgmp10: fastecdsa's runtime library (the only native library not bundled in a wheel).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgmp10 \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Offline install from the builder's wheels only; pip compiles the bytecode now, since the chart
# runs the container with a read-only root filesystem.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels spegel-py \
 && spegel-py version
# No USER: the process must open containerd's socket and read its content store, both owned by
# root on the node (srw-rw---- root:root). The chart runs it as uid 0 with every capability
# dropped, no privilege escalation and a read-only root filesystem; cleanup-wait, which touches
# nothing on the host, runs as 65534.
ENTRYPOINT ["spegel-py"]
CMD ["--help"]
