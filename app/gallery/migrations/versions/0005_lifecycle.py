"""Deleted collections, revoked environment keys, registered index snapshots (issue 25).

- deleted_collections: a deleted collection stays deleted; a key from the environment
  bound to it no longer re-creates it at start-up.
- revoked_env_keys: FACEVERIFY_API_KEYS keys revoked with their collection, by sha256.
- index_snapshots: the snapshots this database's history produced, so a snapshot newer
  than a restored backup is not trusted.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deleted_collections",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "revoked_env_keys",
        sa.Column("key_sha256", sa.String(64), primary_key=True),
        sa.Column("collection_id", sa.String(64), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "index_snapshots",
        sa.Column("token", sa.String(36), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("index_snapshots")
    op.drop_table("revoked_env_keys")
    op.drop_table("deleted_collections")
