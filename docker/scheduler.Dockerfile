# syntax=docker/dockerfile:1
# Control-plane image (no GPU): the scheduler CLI (`python -m scheduler ...`), the one-shot bucket
# init (`python -m scheduler init-storage`) and Flower (`celery -A worker.celery_app flower ...`).
#
# Build:  docker build -f docker/scheduler.Dockerfile -t bl30k-scheduler .
#
# The package depends on bpy, so pip installs it here too (the scheduler never imports it, but one
# dependency set for the whole project is simpler than an optional extra).
FROM python:3.11.13-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# bpy is ~400 MB: its own layer, so code changes do not download it again (pyproject pins it too).
ARG BPY_VERSION=5.0.1
RUN pip install --no-cache-dir "bpy==${BPY_VERSION}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY farm/ farm/
COPY worker/ worker/
COPY scheduler/ scheduler/
COPY bench/ bench/
COPY configs/ configs/
RUN pip install --no-cache-dir /app

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
