"""The gallery: collections, subjects and faces in SQL, read by key and written through
a unit of work (:class:`Gallery`, :meth:`Gallery.transaction`). Storage only: the
privacy rules (app/privacy) and the vector backends (app/vectors) sit above it and
join its transactions."""

from app.gallery.crypto import (
    EmbeddingCipher,
    EncryptionKeyError,
    Sealing,
    SealPolicy,
    cipher_from,
)
from app.gallery.database import Database
from app.gallery.faces import ImportBatch
from app.gallery.records import (
    Added,
    Change,
    ChangeKind,
    CollectionPolicy,
    CollectionRecord,
    Consent,
    EmbeddingRows,
    FaceRecord,
    IdempotencyClaim,
    IdempotencyKeyTaken,
    IdempotentEnrollment,
    NewFace,
    SubjectRecord,
    SubjectTimes,
    utc,
)
from app.gallery.store import Gallery
from app.gallery.unit import Mirror, Participant, Transaction

__all__ = [
    "Added",
    "Change",
    "ChangeKind",
    "CollectionPolicy",
    "CollectionRecord",
    "Consent",
    "Database",
    "EmbeddingCipher",
    "EmbeddingRows",
    "EncryptionKeyError",
    "FaceRecord",
    "Gallery",
    "IdempotencyClaim",
    "IdempotencyKeyTaken",
    "IdempotentEnrollment",
    "ImportBatch",
    "Mirror",
    "NewFace",
    "Participant",
    "SealPolicy",
    "Sealing",
    "SubjectRecord",
    "SubjectTimes",
    "Transaction",
    "cipher_from",
    "utc",
]
