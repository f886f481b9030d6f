# syntax=docker/dockerfile:1
# GPU render worker: Celery worker that renders videos with the bpy 5.0.1 module (Cycles CUDA/OptiX).
#
# Build:  docker build -f docker/worker.Dockerfile -t bl30k-worker .
# Run:    via docker-compose.yml (GPU reservation, env, asset mounts).
#
# Why the CUDA "base" flavour and not "runtime": Blender ships its own CUDA cubins / OptiX PTX and
# talks to the GPU through the driver API only (libcuda, libnvoptix, both mounted from the host by
# the NVIDIA container toolkit). Nothing in bpy links cuBLAS/cuFFT/..., so the ~2 GB "runtime"
# libraries would be dead weight. The image still carries NVIDIA's CUDA environment setup.
FROM nvidia/cuda:12.8.1-base-ubuntu22.04

# compute: CUDA; utility: nvidia-smi (GPU discovery for FARM_GPUS=auto); graphics: libnvoptix
# (OptiX is part of the graphics driver component) and the GL/EGL/Vulkan driver libraries.
# NVIDIA_DISABLE_REQUIRE: the toolkit would otherwise refuse hosts whose driver is older than the
# image's CUDA 12.8 (< r570); Blender itself needs only r535+ for OptiX and uses no CUDA runtime.
# CUDA_DEVICE_ORDER: make CUDA device numbers match nvidia-smi's indices, which the worker
# writes into CUDA_VISIBLE_DEVICES after claiming a GPU (CUDA's default is "fastest first").
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics \
    NVIDIA_DISABLE_REQUIRE=1 \
    CUDA_DEVICE_ORDER=PCI_BUS_ID \
    DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Python 3.11 from the deadsnakes PPA (Ubuntu 22.04 ships 3.10; the bpy 5.0.1 wheel is cp311).
# Runtime libraries of the bpy wheel (checked with readelf on the wheel): X11/XKB/SM/ICE/Xt/Xext
# are linked directly, libGL/libEGL/Xxf86vm are loaded at run time (glvnd dispatch libraries; the
# toolkit mounts the NVIDIA vendor libraries behind them). Vulkan, TBB, OIDN etc. ship in the wheel.
# Versions are not pinned: they come from the distribution's security-maintained jammy(-updates)
# pockets and the PPA, which do not keep old versions around; the base image tag is pinned instead.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gnupg gpg-agent software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv \
        libx11-6 libxext6 libxrender1 libxxf86vm1 libxfixes3 libxi6 libxkbcommon0 \
        libsm6 libice6 libxt6 libgl1 libegl1 libglvnd0 \
 && apt-get purge -y --auto-remove gnupg gpg-agent software-properties-common \
 && rm -rf /var/lib/apt/lists/*

# A virtualenv keeps pip away from the distribution's Python.
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# bpy is ~400 MB: install it in its own layer so code changes do not download it again.
# (pyproject.toml pins the same version; pip keeps this copy when it already satisfies the pin.)
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

# Unprivileged runtime user; /scratch holds per-task render output until it is uploaded
# (compose mounts a tmpfs there; the directory keeps `docker run` without compose working too).
# /kernel-cache holds the GPU kernels compiled on first use (OptiX and CUDA JIT caches; see
# worker/warmup.py); compose mounts a per-host volume there, which starts with this owner.
RUN groupadd --system --gid 10001 farm \
 && useradd --system --no-log-init --uid 10001 --gid farm --create-home --home-dir /home/farm \
        --shell /usr/sbin/nologin farm \
 && install -d -o farm -g farm -m 0750 /scratch /kernel-cache

ENV FARM_CONFIGS=/app/configs \
    FARM_SCRATCH=/scratch \
    FARM_KERNEL_CACHE=/kernel-cache \
    FARM_GPUS=auto

# Numeric so runtimes can verify it is non-root without reading /etc/passwd (= farm).
USER 10001:10001

# One worker per GPU, FARM_RENDERS_PER_GPU videos at a time (its Celery concurrency, set in
# worker/celery_app.py); events on for Flower; only the render queue. Before it consumes, the
# worker warms the render kernels (worker/warmup.py) and then writes its health file.
CMD ["celery", "-A", "worker.celery_app", "worker", "--loglevel=INFO", "-E", "-Q", "render", "--hostname=worker@%h"]
