# syntax=docker/dockerfile:1
# One image per imgflow deployable: MEMBER is api (the HTTP API), worker (libvips jobs) or operator
# (ImageJobs and autoscaling). Build from the repository root (the context is the whole uv workspace):
#   docker build --build-arg MEMBER=api -t imgflow-api .
# Without Docker, `make images` builds the same file with buildah on a locally built Debian base
# (scripts/images.sh), passing PYTHON_IMAGE and UV_IMAGE.
# Only imgflow-$MEMBER and what it depends on (imgflow-core, the locked third-party packages) are
# installed: no compiler, no other member's code. The image runs as UID/GID 10001, the UID the Helm
# chart sets, and writes nothing outside /tmp, so it runs with a read-only root filesystem.

ARG PYTHON_IMAGE=python:3.11-slim
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS build
ARG MEMBER
# uv's own certificate roots know only public CAs; this lets a build behind a TLS-inspecting proxy
# use the CA bundle it mounts there (scripts/images.sh mounts the build machine's).
ARG SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# 1. Third-party dependencies, from the lockfile: a layer rebuilt only when uv.lock or a
#    pyproject.toml changes. uv reads every member's pyproject.toml to resolve the workspace.
COPY uv.lock pyproject.toml ./
COPY core/pyproject.toml core/
COPY api/pyproject.toml api/
COPY worker/pyproject.toml worker/
COPY operator/pyproject.toml operator/
RUN --mount=type=cache,target=/root/.cache/uv \
    test -n "$MEMBER" && uv sync --frozen --no-dev --no-install-workspace --package "imgflow-$MEMBER"
# 2. imgflow's own packages, installed as wheels (not editable) so /src is not needed at runtime.
COPY core/src core/src
COPY ${MEMBER}/src ${MEMBER}/src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package "imgflow-$MEMBER" \
    && ln -s "imgflow-$MEMBER" /app/.venv/bin/imgflow-entrypoint

FROM ${PYTHON_IMAGE}
ARG MEMBER
LABEL org.opencontainers.image.title="imgflow-${MEMBER}" \
      org.opencontainers.image.description="imgflow ${MEMBER}: Kubernetes-native asynchronous image processing"
RUN groupadd --system --gid 10001 imgflow \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin imgflow
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    IMGFLOW_API_HOST=0.0.0.0
WORKDIR /tmp
USER 10001:10001
# api: 8000; worker: 9100 (metrics, health); operator: 8080 (health), 9090 (metrics)
EXPOSE 8000 8080 9090 9100
ENTRYPOINT ["imgflow-entrypoint"]
