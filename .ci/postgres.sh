#!/usr/bin/env bash
# Start the machine's PostgreSQL 15 cluster (installed, stopped) and create the test role.
set -euo pipefail
if ! pg_lsclusters -h | grep -q "^15 *main .*online"; then
    pg_ctlcluster 15 main start
fi
for _ in $(seq 1 30); do
    su postgres -c "pg_isready -q -h 127.0.0.1 -p 5432" && break
    sleep 1
done
su postgres -c "psql -v ON_ERROR_STOP=1 -q" <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'faceverify_test') THEN
    CREATE ROLE faceverify_test LOGIN PASSWORD 'faceverify_test' CREATEDB;
  END IF;
END $$;
SQL
# pgvector (built from vendor/ by .ci/pgvector.sh when it is installed): in template1, so
# every test database has the extension (creating it needs a superuser).
if [ -f "$(pg_config --sharedir)/extension/vector.control" ]; then
    su postgres -c "psql -v ON_ERROR_STOP=1 -q -d template1 -c 'CREATE EXTENSION IF NOT EXISTS vector'"
fi
