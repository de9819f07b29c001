#!/usr/bin/env bash
# Build and install pgvector (vendor/, PostgreSQL License) into Debian's PostgreSQL 15,
# which has no package for it. ~4 s after the -dev package. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f "$(pg_config --sharedir)/extension/vector.control" ]; then
    exit 0
fi
if ! command -v pg_config >/dev/null 2>&1 || [ ! -d "$(pg_config --includedir-server)" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-server-dev-15 >/dev/null
fi
tmp=$(mktemp -d)
tar xzf vendor/pgvector-0.8.6.tar.gz -C "$tmp"
make -s -C "$tmp/pgvector-0.8.6" >/dev/null
make -s -C "$tmp/pgvector-0.8.6" install >/dev/null
rm -rf "$tmp"
# Installing the -dev package can upgrade the server's own libraries under a running
# cluster (then plpgsql fails to load): restart it on the new ones.
if pg_lsclusters -h 2>/dev/null | grep -q "^15 *main .*online"; then
    pg_ctlcluster 15 main restart
fi
