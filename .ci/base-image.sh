#!/usr/bin/env bash
# A Debian bookworm base image with Python 3.11, made locally with debootstrap: for
# machines that reach the package mirrors but no container registry (CI here). Builds
# `faceverify-base:bookworm` once; later runs reuse it. The Dockerfile then builds with
#   docker build --network=host --build-arg BASE_IMAGE=faceverify-base:bookworm .
set -euo pipefail
NAME=${1:-faceverify-base:bookworm}
if docker image inspect "$NAME" >/dev/null 2>&1; then
  echo "base image $NAME exists"
  exit 0
fi
# The mirror apt on this machine already uses.
MIRROR=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
  | awk '{print $2}' | head -1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOTFS=$(mktemp -d)
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
  bookworm "$ROOTFS" "$MIRROR" >/dev/null
# Certificates this machine trusts locally (an egress proxy's CA), or pip inside the
# build cannot reach the index.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
  chroot "$ROOTFS" update-ca-certificates >/dev/null
fi
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | docker import - "$NAME" >/dev/null
echo "built base image $NAME"
