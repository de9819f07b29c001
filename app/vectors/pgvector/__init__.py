"""PostgreSQL with pgvector as the vector backend."""

from app.vectors.pgvector.search import PgvectorMirror, PgvectorSearch, table_exists

__all__ = ["PgvectorMirror", "PgvectorSearch", "table_exists"]
