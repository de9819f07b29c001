"""Each collection's decision rates (issue 36).

- collections.identify_fpir: the false-positive identification rate /identify names a
  subject at (NULL: FACEVERIFY_IDENTIFY_FPIR).
- collections.verify_max_fmr: the largest false match rate /verify accepts (NULL: the
  threshold's own, FACEVERIFY_THRESHOLD).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("collections", sa.Column("identify_fpir", sa.Float(), nullable=True))
    op.add_column("collections", sa.Column("verify_max_fmr", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("collections") as batch:
        batch.drop_column("verify_max_fmr")
        batch.drop_column("identify_fpir")
