"""Alembic environment: migrations run on a connection the caller hands in
(app/gallery/store.py, `faceverify db upgrade`), never from a URL in a config file."""

from __future__ import annotations

from alembic import context

from app.gallery.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying tables
)
with context.begin_transaction():
    context.run_migrations()
