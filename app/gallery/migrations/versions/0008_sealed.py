"""Which keys the gallery is sealed with, and its plaintext rows indexed (issue 37).

- gallery_state.key_ids: a JSON list of the key ids some embedding is sealed with, so a
  start with a wrong or missing key is refused before anything is read or written.
- gallery_state.sealed: every embedding is sealed in the current form (face, collection
  and subject as associated data); from then on a row of the older form is refused as a
  copy. Set by `faceverify encryption rotate`, and at the first start with a key on an
  empty gallery.
- ix_faces_plain: the faces stored in plaintext (key_id NULL), a partial index: a start
  with a key finds any in no time (it refuses to serve beside them).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("gallery_state", sa.Column("key_ids", sa.Text(), nullable=True))
    op.add_column(
        "gallery_state",
        sa.Column("sealed", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "ix_faces_plain",
        "faces",
        ["id"],
        sqlite_where=sa.text("key_id IS NULL"),
        postgresql_where=sa.text("key_id IS NULL"),
    )
    bind = op.get_bind()
    kids: list[str] = sorted(
        bind.execute(sa.text("SELECT DISTINCT key_id FROM faces WHERE key_id IS NOT NULL"))
        .scalars()
        .all()
    )
    bind.execute(sa.text("UPDATE gallery_state SET key_ids = :k"), {"k": json.dumps(kids)})


def downgrade() -> None:
    op.drop_index("ix_faces_plain", table_name="faces")
    with op.batch_alter_table("gallery_state") as batch:
        batch.drop_column("sealed")
        batch.drop_column("key_ids")
