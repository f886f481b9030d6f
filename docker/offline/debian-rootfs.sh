#!/usr/bin/env bash
# Builds the stand-in for the Debian base image from Debian's own packages and imports it:
#   docker/offline/debian-rootfs.sh TAG
# debootstrap --variant=minbase bookworm, trimmed the way the official "-slim" images are (no
# documentation, man pages or locales; empty apt lists and caches). Only for machines that reach
# Debian's mirror but no image registry (the project's CI); everywhere else the Dockerfiles pull
# the pinned debian:*-slim image.
set -euo pipefail
tag=${1:?usage: debian-rootfs.sh TAG}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d /tmp/bl30k-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
# As in debian:*-slim: dpkg skips documentation and locales from now on, and what came is removed.
cat > "$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
CFG
find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{man,info,lintian}/* "$root"/var/cache/apt/*.bin \
       "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
# apt in containers, as the official images set it: no recommends, no cached .debs or package
# caches left in a layer.
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    > "$root/etc/apt/apt.conf.d/docker-no-recommends"
cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG

tar --numeric-owner -C "$root" -c . | docker import \
    --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$tag" >/dev/null
echo "$tag: Debian $(cat "$root/etc/debian_version") minbase, $(du -sh "$root" | cut -f1)"
