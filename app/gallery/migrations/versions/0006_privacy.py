"""The audit trail, retention, consent and encryption at rest (issue 27).

- audit_events / audit_head: one event a request that reads or changes biometric data,
  hash-chained by the sealer (app/gallery/trail.py).
- collections: retention_days, consent_required.
- subjects: last_used_at (the retention clock), expires_at, consent.
- faces: key_id (the encryption key an embedding is sealed with; NULL: plain).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64)),
        sa.Column("collection_id", sa.String(64)),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("subjects", sa.Text(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(64)),
        sa.Column("match", sa.Boolean()),
        sa.Column("score", sa.Float()),
        sa.Column("client", sa.String(64)),
        sa.Column("detail", sa.JSON()),
        sa.Column("position", sa.BigInteger(), unique=True),
        sa.Column("chain", sa.String(64)),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_index("ix_audit_events_collection_at", "audit_events", ["collection_id", "at"])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("chain", sa.String(64), nullable=False),
        sa.Column("anchor_position", sa.BigInteger(), nullable=False),
        sa.Column("anchor_chain", sa.String(64), nullable=False),
        sa.Column("anchor_at", sa.DateTime(timezone=True)),
    )
    op.bulk_insert(
        head,
        [
            {
                "id": 1,
                "position": 0,
                "chain": GENESIS,
                "anchor_position": 0,
                "anchor_chain": GENESIS,
                "anchor_at": None,
            }
        ],
    )
    # Plain ADD COLUMN (SQLite supports it): a batch copy would rewrite every face row.
    op.add_column("collections", sa.Column("retention_days", sa.Integer()))
    op.add_column(
        "collections",
        sa.Column("consent_required", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("subjects", sa.Column("last_used_at", sa.DateTime(timezone=True)))
    op.add_column("subjects", sa.Column("expires_at", sa.DateTime(timezone=True)))
    op.add_column("subjects", sa.Column("consent", sa.JSON()))
    op.add_column("faces", sa.Column("key_id", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("faces") as batch:
        batch.drop_column("key_id")
    with op.batch_alter_table("subjects") as batch:
        batch.drop_column("consent")
        batch.drop_column("expires_at")
        batch.drop_column("last_used_at")
    with op.batch_alter_table("collections") as batch:
        batch.drop_column("consent_required")
        batch.drop_column("retention_days")
    op.drop_table("audit_head")
    op.drop_index("ix_audit_events_collection_at", "audit_events")
    op.drop_index("ix_audit_events_at", "audit_events")
    op.drop_table("audit_events")
