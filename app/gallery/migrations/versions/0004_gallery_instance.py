"""A random id for each gallery database, set once.

Index snapshots on disk (app/gallery/snapshot.py) record the database they were made
from by this id and a gallery version: version numbers alone would match a database
that was dropped and made again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gallery_state") as batch:
        batch.add_column(sa.Column("instance", sa.String(36), nullable=True))
    op.execute(sa.text("UPDATE gallery_state SET instance = :i").bindparams(i=str(uuid.uuid4())))


def downgrade() -> None:
    with op.batch_alter_table("gallery_state") as batch:
        batch.drop_column("instance")
