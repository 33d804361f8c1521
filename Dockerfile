# syntax=docker/dockerfile:1
# The Evalfleet image: one image for every process (`evalfleet sampler`, `worker`, `relay`,
# `review-api`, `otlp-receiver`, ...); compose and the Kubernetes manifests pick the subcommand.
#
# Two stages: the first builds the wheel and installs it with its dependencies into a virtualenv,
# the second copies only that virtualenv into a clean image that runs as an unprivileged user.
# The base is pinned to a patch release; add its digest (python:3.11.15-slim-bookworm@sha256:…)
# where your policy wants bit-for-bit rebuilds.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Exactly what the wheel is built from: the package, and what pyproject.toml's force-include
# puts into it (judge files, sample traces, golden datasets). tests/test_docker_image.py builds
# the wheel from the files these COPY lines name (no Docker engine needed), so a path missing
# here fails a test instead of `docker compose up`.
COPY pyproject.toml README.md ./
COPY evaluator ./evaluator
COPY judges ./judges
COPY datasets ./datasets
RUN python -m venv /opt/evalfleet \
    && /opt/evalfleet/bin/pip install --no-cache-dir .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/evalfleet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1
# A fixed unprivileged uid/gid (the Kubernetes manifests run as 10001 with a read-only root
# filesystem and a writable /tmp); /app is its home and working directory.
RUN groupadd --system --gid 10001 evalfleet \
    && useradd --system --no-log-init --uid 10001 --gid evalfleet --home-dir /app \
        --create-home --shell /usr/sbin/nologin evalfleet
COPY --from=build /opt/evalfleet /opt/evalfleet
WORKDIR /app
USER 10001:10001
# 9108: /metrics, /healthz, /readyz of sampler, workers and relay (EVALFLEET_METRICS_PORT);
# 8080: review-api; 4318: otlp-receiver (each serves /metrics, /healthz, /readyz itself).
EXPOSE 9108 8080 4318
# Liveness of a long-running process on its metrics port. review-api and otlp-receiver serve
# /healthz on their own port: docker-compose.yml overrides this check for them.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('EVALFLEET_METRICS_PORT') or '9108'), timeout=4)"]
ENTRYPOINT ["evalfleet"]
CMD ["--help"]
