"""The Rekognition-compatible API (issue 40).

- api_keys.access_key_id / secret_sealed: an AWS credential is an API key whose secret
  the server must hold to check Signature Version 4; it is stored sealed (AES-256-GCM,
  app/keys.py SecretBox), never in clear.
- rekognition_users: Rekognition's users of a collection (CreateUser), with the
  ClientRequestToken that made each (a retry with it succeeds again).
- rekognition_user_faces: which user a face is associated with (AssociateFaces); a face
  deleted by any path (DeleteFaces, a subject's deletion, retention, the collection's
  deletion) takes its association with it (ON DELETE CASCADE).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("access_key_id", sa.String(32), nullable=True))
    op.add_column("api_keys", sa.Column("secret_sealed", sa.LargeBinary(), nullable=True))
    op.create_index("ix_api_keys_access_key_id", "api_keys", ["access_key_id"], unique=True)
    op.create_table(
        "rekognition_users",
        sa.Column(
            "collection_id",
            sa.String(64),
            sa.ForeignKey("collections.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_token", sa.String(64), nullable=True),
    )
    op.create_table(
        "rekognition_user_faces",
        sa.Column(
            "face_id",
            sa.String(36),
            sa.ForeignKey("faces.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("collection_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.ForeignKeyConstraint(
            ["collection_id", "user_id"],
            ["rekognition_users.collection_id", "rekognition_users.id"],
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_rekognition_user_faces_user",
        "rekognition_user_faces",
        ["collection_id", "user_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_rekognition_user_faces_user", "rekognition_user_faces")
    op.drop_table("rekognition_user_faces")
    op.drop_table("rekognition_users")
    op.drop_index("ix_api_keys_access_key_id", "api_keys")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("secret_sealed")
        batch.drop_column("access_key_id")
