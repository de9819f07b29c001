#!/usr/bin/env bash
# A Debian bookworm base image with Python 3.11, made locally with debootstrap: for
# machines that reach the package mirrors but no container registry (CI here). Builds
# `faceverify-base:bookworm-<hash>` once (later runs reuse it) and prints its name. Then:
#   docker build --network=host --build-arg BASE_IMAGE="$(bash .ci/base-image.sh)" .
set -euo pipefail
# The tag follows this script's content, so a changed recipe builds a new base.
NAME=${1:-faceverify-base:bookworm-$(sha256sum "$0" | cut -c1-12)}
if docker image inspect "$NAME" >/dev/null 2>&1; then
  echo "$NAME"
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
# Nothing a container reads: translations, manuals, documentation, glibc's iconv
# character sets (Python has its own codecs), Python's 2to3 and help() texts: 65 of
# 169 MB. Each package's copyright file stays: it is the licence a redistributed image
# must carry (docs/LICENSES.md).
find "$ROOTFS"/usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
  "$ROOTFS"/usr/share/locale/* "$ROOTFS"/usr/share/man/* \
  "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/lib/x86_64-linux-gnu/gconv \
  "$ROOTFS"/usr/lib/python3.11/lib2to3 "$ROOTFS"/usr/lib/python3.11/pydoc_data
tar -C "$ROOTFS" -c . | docker import - "$NAME" >/dev/null
echo "$NAME"
