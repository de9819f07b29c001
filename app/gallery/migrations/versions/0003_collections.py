"""Collections: separate galleries in one database.

Subjects are keyed by (collection, id), faces point at their subject through both, the
change log and idempotency records name the collection, and API keys may be bound to
one. Existing data moves into the collection ``default``; existing keys without the admin
scope are bound to it (they saw exactly that gallery before).

SQLite cannot change a primary key in place, and dropping a table that others reference
with ON DELETE CASCADE would delete their rows, so subjects and faces are rebuilt:
new tables, copy, drop the old faces then the old subjects, rename.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DEFAULT = "default"


def upgrade() -> None:
    collections = op.create_table(
        "collections",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.bulk_insert(collections, [{"id": DEFAULT, "created_at": datetime.now(UTC)}])

    op.create_table(
        "subjects_v3",
        sa.Column(
            "collection_id",
            sa.String(64),
            sa.ForeignKey("collections.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(256), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute(
        "INSERT INTO subjects_v3 (collection_id, id, name, metadata, created_at) "
        f"SELECT '{DEFAULT}', id, name, metadata, created_at FROM subjects"
    )
    op.create_table(
        "faces_v3",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("collection_id", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.String(128), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("box_left", sa.Integer(), nullable=False),
        sa.Column("box_top", sa.Integer(), nullable=False),
        sa.Column("box_right", sa.Integer(), nullable=False),
        sa.Column("box_bottom", sa.Integer(), nullable=False),
        sa.Column("detector_score", sa.Float(), nullable=False),
        sa.Column("encoder", sa.String(64), nullable=False),
        sa.Column("pipeline_version", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["collection_id", "subject_id"],
            ["subjects_v3.collection_id", "subjects_v3.id"],
            ondelete="CASCADE",
        ),
    )
    columns = (
        "id, subject_id, embedding, box_left, box_top, box_right, box_bottom, "
        "detector_score, encoder, pipeline_version, created_at"
    )
    op.execute(
        f"INSERT INTO faces_v3 (collection_id, {columns}) SELECT '{DEFAULT}', {columns} FROM faces"
    )
    op.drop_table("faces")
    op.drop_table("subjects")
    op.rename_table("subjects_v3", "subjects")
    op.rename_table("faces_v3", "faces")
    op.create_index("ix_faces_collection_subject", "faces", ["collection_id", "subject_id"])

    for table in ("gallery_events", "idempotency_records"):
        op.add_column(
            table,
            sa.Column("collection_id", sa.String(64), nullable=False, server_default=DEFAULT),
        )
    with op.batch_alter_table("gallery_events") as batch:
        batch.alter_column("kind", type_=sa.String(32), existing_type=sa.String(16))
    op.add_column("api_keys", sa.Column("collection_id", sa.String(64), nullable=True))
    op.execute(f"UPDATE api_keys SET collection_id = '{DEFAULT}' WHERE scopes NOT LIKE '%admin%'")


def downgrade() -> None:
    raise NotImplementedError("collections cannot be merged back into one gallery")
