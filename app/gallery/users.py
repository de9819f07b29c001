"""Rekognition's users (issue 40): names within a collection that faces are associated
with (at most one user a face). Written through a transaction (:class:`UserRows`), read
by key (:class:`UserReads`), with the faces listing the Rekognition API pages through.
A face's association goes with the face, by any path (ON DELETE CASCADE)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.gallery.models import (
    Face,
    RekognitionUser,
    RekognitionUserFace,
    Subject,
    keyed_in,
    utcnow,
)
from app.geometry import Box

if TYPE_CHECKING:
    from app.gallery.unit import Transaction

# Why a face was not (dis)associated: Rekognition's reason codes.
FACE_NOT_FOUND = "FACE_NOT_FOUND"
OTHER_USER = "ASSOCIATED_TO_A_DIFFERENT_USER"


@dataclass(frozen=True)
class ListedFace:
    """A face as ListFaces shows it: its row, its subject's name and metadata (where the
    Rekognition API keeps ExternalImageId and ImageId) and its user."""

    id: str
    subject_id: str
    box: Box
    detector_score: float
    created_at: datetime
    name: str | None
    metadata: dict[str, Any] | None
    user_id: str | None


class UserRows:
    """A transaction's user rows."""

    def __init__(self, tx: Transaction) -> None:
        self.session = tx.session

    def exists(self, collection: str, user_id: str) -> bool:
        return self.session.get(RekognitionUser, (collection, user_id)) is not None

    def create(self, collection: str, user_id: str, token: str | None = None) -> bool:
        """A new user; False if the collection has one of that id (made by a request
        with another ``token``: a retry of the request that made it is True again)."""
        found = self.session.get(RekognitionUser, (collection, user_id))
        if found is not None:
            return token is not None and found.request_token == token
        self.session.add(
            RekognitionUser(
                collection_id=collection, id=user_id, created_at=utcnow(), request_token=token
            )
        )
        self.session.flush()
        return True

    def delete(self, collection: str, user_id: str) -> bool:
        """The user and its associations (its faces stay); False if there is none."""
        found = self.session.execute(
            delete(RekognitionUser).where(
                RekognitionUser.collection_id == collection, RekognitionUser.id == user_id
            )
        )
        self.session.execute(
            delete(RekognitionUserFace).where(
                RekognitionUserFace.collection_id == collection,
                RekognitionUserFace.user_id == user_id,
            )
        )
        return bool(found.rowcount)  # type: ignore[attr-defined]

    def associate(
        self, collection: str, user_id: str, face_ids: list[str]
    ) -> tuple[list[str], dict[str, str]]:
        """Associate ``face_ids`` with the user: the ids done and, for the others, why not."""
        known = _faces_and_users(self.session, collection, face_ids)
        done: list[str] = []
        failed: dict[str, str] = {}
        for face_id in face_ids:
            if face_id not in known:
                failed[face_id] = FACE_NOT_FOUND
            elif known[face_id] not in (None, user_id):
                failed[face_id] = OTHER_USER
            else:
                if known[face_id] is None:
                    self.session.add(
                        RekognitionUserFace(
                            face_id=face_id, collection_id=collection, user_id=user_id
                        )
                    )
                done.append(face_id)
        self.session.flush()
        return done, failed

    def owners(
        self, collection: str, face_ids: Collection[str]
    ) -> dict[str, tuple[str, str | None]]:
        """The faces of ``face_ids`` the collection has -> (subject, user or None)."""
        stmt = (
            select(Face.id, Face.subject_id, RekognitionUserFace.user_id)
            .outerjoin(RekognitionUserFace, RekognitionUserFace.face_id == Face.id)
            .where(keyed_in(Face.id, face_ids, Face.collection_id, collection))
        )
        return {f: (s, u) for f, s, u in self.session.execute(stmt)}

    def disassociate(
        self, collection: str, user_id: str, face_ids: list[str]
    ) -> tuple[list[str], dict[str, str]]:
        known = _faces_and_users(self.session, collection, face_ids)
        done = [f for f in face_ids if f in known and known[f] == user_id]
        failed = {
            f: FACE_NOT_FOUND if f not in known else OTHER_USER for f in face_ids if f not in done
        }
        if done:
            self.session.execute(
                delete(RekognitionUserFace).where(RekognitionUserFace.face_id.in_(done))
            )
        return done, failed


def _faces_and_users(
    session: Session, collection: str, face_ids: Collection[str]
) -> dict[str, str | None]:
    """The faces of ``face_ids`` the collection has -> the user each is associated with."""
    stmt = (
        select(Face.id, RekognitionUserFace.user_id)
        .outerjoin(RekognitionUserFace, RekognitionUserFace.face_id == Face.id)
        .where(keyed_in(Face.id, face_ids, Face.collection_id, collection))
    )
    return {face_id: user for face_id, user in session.execute(stmt)}


class UserReads:
    """Users and the faces listing, read by key."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def exists(self, *, collection: str, user_id: str) -> bool:
        with Session(self.engine) as session:
            return session.get(RekognitionUser, (collection, user_id)) is not None

    def page(self, *, collection: str, after: str | None, limit: int) -> list[tuple[str, int]]:
        """Users in id order after ``after``, with how many faces each has."""
        faces = (
            select(func.count())
            .select_from(RekognitionUserFace)
            .where(
                RekognitionUserFace.collection_id == collection,
                RekognitionUserFace.user_id == RekognitionUser.id,
            )
            .scalar_subquery()
        )
        stmt = select(RekognitionUser.id, faces).where(RekognitionUser.collection_id == collection)
        if after is not None:
            stmt = stmt.where(RekognitionUser.id > after)
        stmt = stmt.order_by(RekognitionUser.id).limit(limit)
        with Session(self.engine) as session:
            return [(str(u), int(n or 0)) for u, n in session.execute(stmt).tuples()]

    def count(self, *, collection: str) -> int:
        stmt = select(func.count()).select_from(RekognitionUser)
        with Session(self.engine) as session:
            return int(session.scalar(stmt.where(RekognitionUser.collection_id == collection)) or 0)

    def of_faces_known(self, *, collection: str, face_ids: Collection[str]) -> list[str]:
        """The faces of ``face_ids`` the collection has, not associated with a user."""
        stmt = (
            select(Face.id)
            .outerjoin(RekognitionUserFace, RekognitionUserFace.face_id == Face.id)
            .where(
                keyed_in(Face.id, face_ids, Face.collection_id, collection),
                RekognitionUserFace.user_id.is_(None),
            )
        )
        with Session(self.engine) as session:
            return list(session.scalars(stmt))

    def of_faces(self, *, collection: str, face_ids: Collection[str]) -> dict[str, str]:
        """face id -> its user, for the faces of ``face_ids`` that have one."""
        stmt = select(RekognitionUserFace.face_id, RekognitionUserFace.user_id).where(
            keyed_in(
                RekognitionUserFace.face_id,
                face_ids,
                RekognitionUserFace.collection_id,
                collection,
            ),
        )
        with Session(self.engine) as session:
            return {f: u for f, u in session.execute(stmt)}

    def faces(
        self,
        *,
        collection: str,
        after: str | None,
        limit: int,
        face_ids: Collection[str] | None = None,
        user_id: str | None = None,
    ) -> list[ListedFace]:
        """The collection's faces in id order after ``after`` (only ``face_ids``, or only
        those of ``user_id``, when given)."""
        stmt = (
            select(Face, Subject.name, Subject.meta, RekognitionUserFace.user_id)
            .join(
                Subject,
                (Subject.collection_id == Face.collection_id) & (Subject.id == Face.subject_id),
            )
            .outerjoin(RekognitionUserFace, RekognitionUserFace.face_id == Face.id)
            .where(
                Face.collection_id == collection
                if face_ids is None
                else keyed_in(Face.id, face_ids, Face.collection_id, collection)
            )
        )
        if after is not None:
            stmt = stmt.where(Face.id > after)
        if user_id is not None:
            stmt = stmt.where(RekognitionUserFace.user_id == user_id)
        with Session(self.engine) as session:
            rows = session.execute(stmt.order_by(Face.id).limit(limit)).tuples().all()
            return [_listed(face, name, meta, user) for face, name, meta, user in rows]


def _listed(
    face: Face, name: str | None, meta: dict[str, Any] | None, user: str | None
) -> ListedFace:
    box = Box(face.box_left, face.box_top, face.box_right, face.box_bottom)
    return ListedFace(
        face.id, face.subject_id, box, face.detector_score, face.created_at, name, meta, user
    )
