#!/usr/bin/env bash
# The compose stack's PostgreSQL where no registry is reachable: .ci/postgres-image/
# on the local base image, with the pgvector that .ci/pgvector.sh built on this machine.
# Prints the image name; reuses it when it exists.
#   usage: .ci/postgres-image.sh BASE_IMAGE
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=$1
NAME=faceverify-postgres:15-pgvector-$( (cat .ci/postgres-image/* .ci/postgres-image.sh; echo "$BASE") | sha256sum | cut -c1-12)
if docker image inspect "$NAME" >/dev/null 2>&1; then
  echo "$NAME"
  exit 0
fi
bash .ci/pgvector.sh >&2
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp .ci/postgres-image/* "$context/"
cp "$(pg_config --pkglibdir)/vector.so" "$context/"
mkdir "$context/extension"
cp "$(pg_config --sharedir)"/extension/vector* "$context/extension/"
docker build -q --network=host --build-arg BASE_IMAGE="$BASE" -t "$NAME" "$context" >&2
echo "$NAME"
