"""Which keys a gallery is sealed with, checked before a process reads or writes (issue 37).

A start with a wrong, missing or mismatched key used to come up "ready": verify answered
500, enroll stored rows under the wrong key (two keys mixed in one table), and identify
stayed 503 for good once the right key came back. Now the database records the ids of
the keys its embeddings are sealed with (gallery_state.key_ids, kept by every write that
seals), and :func:`check_keys` refuses, before anything is read or written:

- a key set while embeddings are sealed with another that is not given either as the
  key or in FACEVERIFY_ENCRYPTION_OLD_KEYS (a wrong key);
- no key while embeddings are sealed (a missing key).

A key's id is a hash of the key, so a matching id is the right key; a row that does not
open under it was changed, and is left out and logged (crypto.readable).

With a key set every write seals, so a plaintext row is never used (crypto.readable;
issue 37: a forged plain row matched), and a start with a key refuses to serve beside
plaintext rows until `encryption rotate` has sealed them (the operator's act, which
lists them): the gallery is never half plain while a keyed server runs.
``gallery_state.sealed`` says every embedding is sealed in the current form (face,
collection and subject bound in): set by ``encryption rotate`` when it finishes, and at
the first start with a key on an empty gallery; from then on a row of the older form is
left out too. A state with no key ids beside sealed rows was changed: the start stops.
"""

from __future__ import annotations

import json

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.gallery.crypto import OPEN, EmbeddingCipher, EncryptionKeyError, SealPolicy
from app.gallery.models import Face, GalleryState


def _kids(text: str | None) -> list[str]:
    return sorted(json.loads(text)) if text else []


def note_key(session: Session, cipher: EmbeddingCipher) -> None:
    """In a write that seals with ``cipher``'s current key: record that key's id."""
    text = session.scalar(select(GalleryState.key_ids).where(GalleryState.id == 1))
    kids = _kids(text)
    if cipher.current not in kids:
        session.execute(
            update(GalleryState)
            .where(GalleryState.id == 1)
            .values(key_ids=json.dumps(sorted([*kids, cipher.current])))
        )


def resealed(session: Session, cipher: EmbeddingCipher | None) -> None:
    """Every row was rewritten with ``cipher`` (None: to plain): the key ids are that
    one alone, and the gallery is wholly sealed in the current form (or not at all)."""
    session.execute(
        update(GalleryState)
        .where(GalleryState.id == 1)
        .values(
            key_ids=json.dumps([cipher.current] if cipher is not None else []),
            sealed=cipher is not None,
        )
    )


def check_keys(
    engine: Engine, cipher: EmbeddingCipher | None, *, rotating: bool = False
) -> SealPolicy:
    """Refuse (EncryptionKeyError, saying what to do) a key that cannot open this
    gallery, or plaintext rows beside a key (unless ``rotating``: the rotation seals
    them); else which rows are not faceverify's (crypto.SealPolicy). An empty gallery
    opened with a key is marked sealed from the start."""
    with Session(engine) as session:
        state = session.get(GalleryState, 1)
        if state is None:
            raise RuntimeError("the gallery_state row is missing (run the migrations)")
        kids, sealed = _kids(state.key_ids), bool(state.sealed)
    if cipher is None:
        if kids:
            raise EncryptionKeyError(
                f"the gallery's embeddings are sealed with key {', '.join(kids)}, and no "
                "FACEVERIFY_ENCRYPTION_KEY (or _KEY_FILE) is set; set it and start again"
            )
        return OPEN
    _key_given(kids, cipher)
    if not rotating:
        _no_plain_rows(engine)
    if not kids:
        _no_stray_sealed_rows(engine)
    sealed = sealed or _sealed_if_empty(engine)
    # With a key set every write seals: a plaintext row is not faceverify's.
    return SealPolicy(refuse_plain=True, refuse_legacy=sealed, keyed=bool(kids))


def _key_given(kids: list[str], cipher: EmbeddingCipher) -> None:
    missing = [k for k in kids if k not in cipher.key_ids]
    if missing:
        raise EncryptionKeyError(
            f"the gallery's embeddings are sealed with key {', '.join(missing)}, which is "
            f"not given (the key given is {cipher.current}): this is the wrong key. Set "
            "the right one, or put it in FACEVERIFY_ENCRYPTION_OLD_KEYS and run "
            "`faceverify encryption rotate`; nothing was read or written"
        )


def _no_plain_rows(engine: Engine) -> None:
    with engine.connect() as conn:  # through ix_faces_plain: at once
        plain_rows = conn.execute(
            select(func.count()).select_from(Face).where(Face.key_id.is_(None))
        ).scalar_one()
    if plain_rows:
        raise EncryptionKeyError(
            f"{plain_rows} faces are stored in plaintext beside the key: with a key set none "
            "is ever used (one slipped in would match). Seal them first with `faceverify "
            "encryption rotate` (it lists them), or delete them; nothing was read or written"
        )


def _no_stray_sealed_rows(engine: Engine) -> None:
    with engine.connect() as conn:
        stray = conn.execute(
            select(Face.id, Face.key_id).where(Face.key_id.is_not(None)).limit(1)
        ).first()
    if stray is not None:
        raise EncryptionKeyError(
            f"face {stray[0]} is sealed with key {stray[1]}, but the gallery's state "
            "names no key: gallery_state was changed outside faceverify. Restore it "
            "from a backup; nothing was read or written"
        )


def _sealed_if_empty(engine: Engine) -> bool:
    """An empty gallery opened with a key is sealed from the start."""
    with Session(engine) as session, session.begin():
        if session.scalar(select(Face.id).limit(1)) is not None:
            return False
        session.execute(update(GalleryState).where(GalleryState.id == 1).values(sealed=True))
        return True
