"""The vector backends, end to end: reading (search, rescore, counts, ready), writing
(a participant of the gallery's transactions) and their lifecycle (enable, rebuild,
erase). app/service/build.py picks one."""

from app.vectors.backend import VectorBackend
from app.vectors.index import ExactIndex, Hits, Partitions, SubjectHit, VectorIndex
from app.vectors.memory import MemorySearch

__all__ = [
    "ExactIndex",
    "Hits",
    "MemorySearch",
    "Partitions",
    "SubjectHit",
    "VectorBackend",
    "VectorIndex",
]
