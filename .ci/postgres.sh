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
-- A test drops its database WITH (FORCE). An autovacuum worker in it (after a bulk
-- import) has no role, and only a member of pg_signal_backend may end it: without
-- this the drop fails "must be a member of the role whose process is being terminated".
GRANT pg_signal_backend TO faceverify_test;
SQL
# pgvector (built from vendor/ by .ci/pgvector.sh when it is installed): in template1, so
# every test database has the extension (creating it needs a superuser).
if [ -f "$(pg_config --sharedir)/extension/vector.control" ]; then
    su postgres -c "psql -v ON_ERROR_STOP=1 -q -d template1 -c 'CREATE EXTENSION IF NOT EXISTS vector'"
fi
