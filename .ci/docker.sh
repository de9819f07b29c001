#!/usr/bin/env bash
# A container engine for the container tests: install Docker, debootstrap and
# docker-compose if missing, start dockerd (no iptables: this kind of machine has no
# NAT for containers; builds use the host network), wait until it answers.
set -euo pipefail
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1 \
    || ! command -v docker-compose >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap docker-compose >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    nohup dockerd --iptables=false >/tmp/dockerd.log 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
fi
docker info >/dev/null
