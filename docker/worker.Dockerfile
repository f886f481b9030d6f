# Render worker: a Celery worker that renders videos with the bpy 5.0.1 module (Cycles:
# OptiX/CUDA on NVIDIA GPUs, the CPU otherwise).
#
# Build:  docker compose build worker       (or: docker build -f docker/worker.Dockerfile .)
#
# Base: Debian 12 (bookworm) slim, pinned by version and digest. Its python3 is 3.11, the only
# Python the bpy 5.0.1 wheel is built for, and it is the same base as the scheduler image, so
# the two share their first layers. No CUDA base image: Cycles ships its own CUDA cubins, PTX and
# OptiX kernels and talks to the GPU through the driver API alone (libcuda, libnvoptix), which
# the NVIDIA container toolkit mounts from the host when NVIDIA_DRIVER_CAPABILITIES asks for
# compute (CUDA), utility (nvidia-smi) and graphics (OptiX ships with the graphics driver).
# Machines without a registry build the same base from Debian's packages: docker/offline/.
ARG DEBIAN_IMAGE=debian:12.15-slim@sha256:88200866dfff7ea7f5cbcb6ec7c8a701889efe6fe859fe64d6990e4b07ea4171
FROM ${DEBIAN_IMAGE}

ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Shared with the scheduler image (same instruction, same layer). Versions are the point
# release's: bookworm's security-maintained packages, fixed by the pinned base.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# Libraries the bpy wheel links from the system: X11/XKB/SM/ICE/Xt/Xext, and libGL/libEGL (glvnd's
# dispatch libraries). Vulkan, TBB, OIDN and embree ship inside the wheel. glvnd's packages
# depend on Mesa (~250 MB with LLVM), which Cycles never uses: it renders through CUDA/OptiX or on
# the CPU, and on a GPU host the NVIDIA toolkit mounts the NVIDIA GL vendor libraries. A local
# package stands in for Mesa's two GL vendor packages so that apt installs glvnd alone.
# hadolint ignore=DL3008
RUN mkdir -p /tmp/gl-vendor/DEBIAN \
 && printf '%s\n' 'Package: bl30k-gl-vendor' 'Version: 1' 'Architecture: all' \
        'Maintainer: bl30k farm' 'Provides: libglx-mesa0, libegl-mesa0' \
        'Description: GL vendor libraries come from the NVIDIA container toolkit at run time' \
        > /tmp/gl-vendor/DEBIAN/control \
 && dpkg-deb --build /tmp/gl-vendor /tmp/gl-vendor.deb >/dev/null \
 && dpkg -i /tmp/gl-vendor.deb \
 && rm -rf /tmp/gl-vendor /tmp/gl-vendor.deb \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
        libx11-6 libxext6 libxrender1 libxxf86vm1 libxfixes3 libxi6 libxkbcommon0 \
        libsm6 libice6 libxt6 libgl1 libegl1 libglvnd0 \
 && rm -rf /var/lib/apt/lists/*

# bpy (~820 MB installed) in its own layer, so code changes never download it again.
# ca_bundle: an optional build secret holding extra CA certificates for pip (a build host behind
# a TLS-inspecting proxy); a secret, not a build argument, so it is never stored in the image.
ARG BPY_VERSION=5.0.1
RUN --mount=type=secret,id=ca_bundle,required=false \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && pip install "bpy==${BPY_VERSION}"

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
 && pip install "/app[render]"

# Unprivileged runtime user. /scratch holds a video's frames until they are uploaded: mode 1777
# like /tmp, because a tmpfs mounted there (compose) takes this folder's mode and root owner
# (runc < 1.1.8 ignores compose's tmpfs.mode), and the worker must be able to write it either way.
# /kernel-cache holds the GPU kernels compiled on first use (worker/warmup.py); a fresh named
# volume mounted there takes this owner.
RUN groupadd --system --gid 10001 farm \
 && useradd --system --no-log-init --uid 10001 --gid farm --create-home --home-dir /home/farm \
        --shell /usr/sbin/nologin farm \
 && install -d -m 1777 /scratch \
 && install -d -o farm -g farm -m 0750 /kernel-cache

# compute/utility/graphics: CUDA, nvidia-smi (FARM_GPUS=auto), OptiX. CUDA_DEVICE_ORDER makes
# CUDA's device numbers match nvidia-smi's indices, which the worker writes into
# CUDA_VISIBLE_DEVICES after claiming a GPU.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics \
    CUDA_DEVICE_ORDER=PCI_BUS_ID \
    FARM_CONFIGS=/app/configs \
    FARM_SCRATCH=/scratch \
    FARM_KERNEL_CACHE=/kernel-cache \
    FARM_GPUS=auto

# Numeric so runtimes can verify it is non-root without reading /etc/passwd (= farm).
USER 10001:10001

# One worker per GPU, FARM_RENDERS_PER_GPU videos at a time (its Celery concurrency, set in
# worker/celery_app.py); events on for Flower; only the render queue. Before it consumes, the
# worker warms the render kernels (worker/warmup.py) and then writes its health file.
CMD ["celery", "-A", "worker.celery_app", "worker", "--loglevel=INFO", "-E", "-Q", "render", "--hostname=worker@%h"]
