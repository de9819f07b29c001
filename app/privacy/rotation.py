"""Key rotation (issue 27, hardened in issue 37): every embedding not sealed with the
current key in the current form is rewritten with it, a batch a transaction; a row
that is not faceverify's is left as it is and named."""

from __future__ import annotations

from dataclasses import dataclass

from app.gallery import Gallery, SealPolicy, Transaction
from app.gallery.crypto import readable
from app.gallery.faces import StoredFace


@dataclass
class Rotation:
    """Rows rewritten, the ids of the rows left, and of the plain rows sealed."""

    done: int = 0
    left: list[str] | None = None
    sealed_plain: list[str] | None = None


def rotate_encryption(
    gallery: Gallery, *, batch: int = 1000, seal_plain: bool = False
) -> tuple[int, list[str], list[str]]:
    """Rewrite every embedding not sealed with the current key in the current form (an
    older key's, the older form, or plain) with the current key, ``batch`` rows a
    transaction. A row that does not open as the gallery's policy allows (plaintext in
    a gallery sealed with a key, changed, moved, or of a key not given) is not
    faceverify's: it is left as it is, never sealed into a real one (issue 37), and its
    id returned. With no key set: decrypt every row to plain.

    Returns: rows rewritten, the ids of the rows left, and of the plain rows sealed."""
    sealing = gallery.sealing
    current = sealing.cipher.current if sealing.cipher is not None else None
    # Plain rows are what a rotation seals (the operator's act; the CLI lists them); a
    # sealed row must open as the gallery's policy says. In a gallery already sealed
    # with a key no faceverify writes plain rows (a keyed start refuses to serve beside
    # them): those are sealed only when the operator says they predate the key.
    policy = SealPolicy(
        refuse_plain=sealing.policy.keyed and not seal_plain,
        refuse_legacy=sealing.policy.refuse_legacy,
    )
    out = Rotation(left=[], sealed_plain=[])
    after = ""
    while True:
        with gallery.transaction(versioned=False) as tx:
            rows = tx.faces.stale(current, after, batch)
            for face in rows:
                _rewrite(tx, face, policy, out)
            if len(rows) < batch and not out.left:
                tx.faces.all_resealed()
        if len(rows) < batch:
            break
        after = rows[-1].id
    assert out.left is not None and out.sealed_plain is not None
    if not out.left:
        keyed = sealing.cipher is not None
        sealing.policy = SealPolicy(refuse_plain=keyed, refuse_legacy=keyed)
    return out.done, out.left, out.sealed_plain


def _rewrite(tx: Transaction, face: StoredFace, policy: SealPolicy, out: Rotation) -> None:
    assert out.left is not None and out.sealed_plain is not None
    cipher = tx.sealing.cipher
    data = readable(cipher, face.embedding, face.owner, face.key_id, policy=policy)
    if data is None:
        out.left.append(face.id)
        return
    if face.key_id is None and cipher is not None:
        out.sealed_plain.append(face.id)
    tx.faces.rewrite(face.id, *tx.sealing.seal(data, face.owner))
    out.done += 1
