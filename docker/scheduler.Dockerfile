# Control-plane image (no GPU, no bpy): the scheduler CLI (`python -m scheduler ...`), the one-shot
# bucket init (`python -m scheduler init-storage`), the reconciler, the exporter and Flower
# (`celery -A worker.celery_app flower ...`).
#
# Build:  docker compose build scheduler    (or: docker build -f docker/scheduler.Dockerfile .)
#
# Same pinned Debian 12 slim base and first layer as the worker image (see worker.Dockerfile).
ARG DEBIAN_IMAGE=debian:12.15-slim@sha256:88200866dfff7ea7f5cbcb6ec7c8a701889efe6fe859fe64d6990e4b07ea4171
FROM ${DEBIAN_IMAGE}

ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# The package with its "control" extra (Flower, the report's plots) and without "render":
# the control plane never imports bpy.
# ca_bundle: optional extra CA certificates for pip, as in worker.Dockerfile.
WORKDIR /app
COPY pyproject.toml README.md ./
COPY farm/ farm/
COPY worker/ worker/
COPY scheduler/ scheduler/
COPY devtools/ devtools/
COPY bench/ bench/
COPY configs/ configs/
RUN --mount=type=secret,id=ca_bundle,required=false \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && pip install "/app[control]"

# Unprivileged user. /data is Flower's state directory: a fresh named volume mounted there
# inherits this ownership, so Flower (running as farm) can write its database.
RUN groupadd --system --gid 10001 farm \
 && useradd --system --no-log-init --uid 10001 --gid farm --create-home --home-dir /home/farm \
        --shell /usr/sbin/nologin farm \
 && install -d -o farm -g farm -m 0750 /data

ENV FARM_CONFIGS=/app/configs

# Numeric so runtimes can verify it is non-root without reading /etc/passwd (= farm).
USER 10001:10001

CMD ["python", "-m", "scheduler", "--help"]
