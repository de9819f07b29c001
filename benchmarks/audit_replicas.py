"""The audit trail's cost with two replicas on one PostgreSQL (issue 27): do replicas
serialise their verifies on one lock?

    FACEVERIFY_TEST_POSTGRES_URL=postgresql+psycopg://... python benchmarks/audit_replicas.py

Two fresh databases (trail off, trail on), two `faceverify serve` replicas on each,
8 clients spread over a side's replicas, sides alternated (app/bench/audit.py).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app.bench.audit import bench_audit, print_audit  # noqa: E402
from app.bench.measure import make_photos  # noqa: E402


def main() -> None:
    base = os.environ["FACEVERIFY_TEST_POSTGRES_URL"]
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    names = [f"fv_audit_{side}_{uuid.uuid4().hex[:8]}" for side in ("off", "on")]
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        urls = tuple(base.rsplit("/", 1)[0] + "/" + name for name in names)
        photo = make_photos(Path(__file__).resolve().parent.parent / "tests" / "data")["640x480"]
        report = bench_audit(photo, 150, 8, 400, database_urls=(urls[0], urls[1]), replicas=2)
        print_audit(report, 8)
        print(json.dumps(report, indent=2))
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
