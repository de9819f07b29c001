"""Rekognition's face operations, each a function of one signed call: its fields read
and checked (shapes.Params), the service asked, the answer built in Rekognition's shape.

Collections are faceverify's collections; a face indexed by IndexFaces is a subject of
its own whose id is the FaceId (app/service/rekognition.py); users are Rekognition's
users (names that faces are associated with). Similarity is faceverify's calibrated
match percent, so a FaceMatchThreshold of 80 keeps the pairs the calibration puts at
80% or more (docs/REKOGNITION.md says what false match rate that is).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeGuard

from fastapi import Request

from app.api.deps import target_collection
from app.api.rekognition import shapes
from app.api.rekognition.errors import AwsError, access_denied, invalid, not_found
from app.api.rekognition.shapes import Params, bounding_box, landmarks, pose, quality
from app.errors import ConsentRequired, Forbidden
from app.face.detect import DetectedFace
from app.face.quality import CHECKS, FaceMeasures
from app.gallery import Consent
from app.gallery.models import COLLECTION_ID_PATTERN
from app.gallery.users import ListedFace
from app.keys import COLLECTION_ID, KeyStore, Principal
from app.privacy.events import note
from app.service import FaceService, IdentifyResult, ProbeFace
from app.service.rekognition import FACE_NOT_LARGEST, META, confidence
from app.settings import Settings

# Rekognition's defaults (its API reference).
DEFAULT_THRESHOLD = 80.0
DEFAULT_ASSOCIATE_THRESHOLD = 75.0
MAX_FACES = 4096
# The first search asks for this many faces; only when all of them pass the threshold is
# the search run again for MaxFaces (each is one /identify: scoring 4,096 candidates
# that a threshold of 80 then drops costs ~40 ms for nothing).
FIRST_FETCH = 64


@dataclass
class Call:
    """One signed request: who sent it, what it asks, and the service."""

    request: Request
    service: FaceService
    keys: KeyStore
    settings: Settings
    principal: Principal
    region: str
    params: Params
    operation: str = ""

    def need(self, scope: str) -> None:
        """AccessDeniedException unless the credential has ``scope`` (or admin)."""
        if scope not in self.principal.scopes and "admin" not in self.principal.scopes:
            raise access_denied(
                f"This credential lacks the {scope!r} scope this operation needs "
                f"(it has {'+'.join(self.principal.scopes)})."
            )

    def collection(self) -> str:
        """The CollectionId, checked: one the credential may use, and that exists."""
        name = self.params.required("CollectionId", pattern=shapes.COLLECTION_ID)
        if not COLLECTION_ID.fullmatch(name):
            raise invalid(
                f"CollectionId {name!r}: faceverify's collection ids match "
                f"{COLLECTION_ID_PATTERN} (up to 64 characters)."
            )
        try:
            found = target_collection(self.request, name)
        except Forbidden as exc:
            raise access_denied(exc.detail) from None
        note(collection=found)
        return found

    def arn(self, collection: str) -> str:
        return f"arn:aws:rekognition:{self.region}:000000000000:collection/{collection}"

    @property
    def model_version(self) -> str:
        return self.service.names().pipeline_version

    def consent(self) -> Consent | None:
        """The consent an IndexFaces carries: header X-Faceverify-Consent (the record's
        reference) and optionally X-Faceverify-Consent-Given-At (ISO 8601; default
        now). Rekognition's IndexFaces has no field for it (docs/REKOGNITION.md)."""
        headers = self.request.headers
        reference = headers.get("x-faceverify-consent")
        if reference is None:
            return None
        given = headers.get("x-faceverify-consent-given-at")
        try:
            at = datetime.fromisoformat(given) if given else datetime.now(UTC)
        except ValueError:
            raise invalid("X-Faceverify-Consent-Given-At must be an ISO 8601 time.") from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        return Consent(reference.strip(), at)


# ---- face details ---------------------------------------------------------------------
def face_detail(face: DetectedFace, measures: FaceMeasures) -> dict[str, Any]:
    return {
        "BoundingBox": bounding_box(face.box, face.frame),
        "Landmarks": landmarks(face),
        "Pose": pose(measures),
        "Quality": quality(measures),
        "Confidence": confidence(measures),
    }


def compared_face(probe: ProbeFace) -> dict[str, Any]:
    return face_detail(probe.face, probe.measures)


def listed_face(face: ListedFace, version: str) -> dict[str, Any]:
    """A stored face as ListFaces and the searches show it. Only a face IndexFaces made
    (its subject's id is its own) is read with IndexFaces' metadata, and each value only
    when it has the type IndexFaces wrote: metadata stored through faceverify's own API
    is the caller's, never read as this. Other faces have no ImageId, and their subject
    id as ExternalImageId."""
    out: dict[str, Any] = {"FaceId": face.id, "IndexFacesModelVersion": version}
    about = face.metadata.get(META) if isinstance(face.metadata, dict) else None
    if face.subject_id != face.id or not isinstance(about, dict):
        out["ExternalImageId"] = face.subject_id
    else:
        width, height = about.get("width"), about.get("height")
        if _positive_int(width) and _positive_int(height):
            out["BoundingBox"] = bounding_box(face.box, (width, height))
        for key, field in (("image_id", "ImageId"), ("external_image_id", "ExternalImageId")):
            if isinstance(about.get(key), str) and about[key]:
                out[field] = about[key]
        score = about.get("confidence")
        if isinstance(score, int | float) and not isinstance(score, bool) and 0 <= score <= 100:
            out["Confidence"] = score
    if face.user_id:
        out["UserId"] = face.user_id
    return out


def _positive_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# ---- collections ----------------------------------------------------------------------
def create_collection(call: Call) -> dict[str, Any]:
    call.need("admin")
    name = call.params.required("CollectionId", pattern=shapes.COLLECTION_ID)
    if not COLLECTION_ID.fullmatch(name):
        raise invalid(f"CollectionId {name!r}: faceverify's ids match {COLLECTION_ID_PATTERN}.")
    bound = call.principal.collection
    if bound is not None:
        if bound == name and call.service.collection_exists(collection=name):
            raise AwsError("ResourceAlreadyExistsException", f"Collection {name} already exists.")
        raise access_denied(f"This credential is bound to collection {bound!r}.")
    note(collection=name)
    call.service.create_collection(collection=name)
    return {
        "StatusCode": 200,
        "CollectionArn": call.arn(name),
        "FaceModelVersion": call.model_version,
    }


def delete_collection(call: Call) -> dict[str, Any]:
    call.need("admin")
    if call.principal.collection is not None:
        raise access_denied("Deleting a collection needs an admin credential of every collection.")
    name = call.collection()
    call.service.delete_collection(
        collection=name, env_key_hashes=call.keys.env_keys_bound_to(name)
    )
    return {"StatusCode": 200}


def list_collections(call: Call) -> dict[str, Any]:
    after = call.params.token(shapes.COLLECTION_ID)
    limit = call.params.integer("MaxResults", 1000, 0, 4096)
    bound = call.principal.collection
    names = [bound] if bound is not None else [c.id for c in call.service.list_collections()]
    names = sorted(n for n in names if after is None or n > after)
    page = names[:limit]
    out: dict[str, Any] = {
        "CollectionIds": page,
        "FaceModelVersions": [call.model_version] * len(page),
    }
    if len(names) > limit and page:
        out["NextToken"] = shapes.next_token(page[-1])
    return out


def describe_collection(call: Call) -> dict[str, Any]:
    name = call.collection()
    record = call.service.get_collection(collection=name)
    return {
        "FaceCount": record.faces,
        "UserCount": call.service.rekognition.user_count(collection=name),
        "FaceModelVersion": call.model_version,
        "CollectionARN": call.arn(name),
        "CreationTimestamp": record.created_at.replace(
            tzinfo=record.created_at.tzinfo or UTC
        ).timestamp(),
    }


# ---- faces ----------------------------------------------------------------------------
def index_faces(call: Call) -> dict[str, Any]:
    call.need("enroll")
    name = call.collection()
    p = call.params
    external = p.string("ExternalImageId", pattern=shapes.EXTERNAL_IMAGE_ID)
    max_faces = p.integer("MaxFaces", 100, 1, 100)
    filtered = p.choice("QualityFilter", shapes.QUALITY_FILTERS, "AUTO") != "NONE"
    try:
        result = call.service.rekognition.index_faces(
            collection=name,
            image=p.image("Image"),
            external_image_id=external,
            max_faces=max_faces,
            filtered=filtered,
            consent=call.consent(),
        )
    except ConsentRequired:
        raise access_denied(
            f"Collection {name!r} requires consent for each new face: send the consent "
            "record's reference in the X-Faceverify-Consent header, signed with the "
            "request (docs/REKOGNITION.md)."
        ) from None
    version = call.model_version
    records = []
    for face_id, one in result.indexed:
        face: dict[str, Any] = {
            "FaceId": face_id,
            "BoundingBox": bounding_box(one.face.box, result.frame),
            "ImageId": result.image_id,
            "Confidence": confidence(one),
            "IndexFacesModelVersion": version,
        }
        if external:
            face["ExternalImageId"] = external
        records.append({"Face": face, "FaceDetail": face_detail(one.face, one.measures)})
    note(subjects=[f for f, _ in result.indexed])
    return {
        "FaceRecords": records,
        "FaceModelVersion": version,
        "UnindexedFaces": [
            {"Reasons": reasons, "FaceDetail": face_detail(one.face, one.measures)}
            for one, reasons in result.unindexed
        ],
    }


def list_faces(call: Call) -> dict[str, Any]:
    call.need("admin")
    name = call.collection()
    p = call.params
    after = p.token(shapes.FACE_ID)
    limit = p.integer("MaxResults", 1000, 0, 4096)
    user = p.string("UserId", pattern=shapes.USER_ID, max_len=128)
    wanted = p.ids("FaceIds", shapes.FACE_ID, 4096, required=False) or None
    rows = call.service.rekognition.list_faces(
        collection=name, after=after, limit=limit + 1, face_ids=wanted, user_id=user
    )
    page = rows[:limit]
    note(subjects=sorted({f.subject_id for f in page}))
    out: dict[str, Any] = {
        "Faces": [listed_face(f, call.model_version) for f in page],
        "FaceModelVersion": call.model_version,
    }
    if len(rows) > limit and page:
        out["NextToken"] = shapes.next_token(page[-1].id)
    return out


def delete_faces(call: Call) -> dict[str, Any]:
    call.need("enroll")
    name = call.collection()
    face_ids = call.params.ids("FaceIds", shapes.FACE_ID, 4096, required=True)
    users = call.service.rekognition.users_of(collection=name, face_ids=face_ids)
    deleted, failed = call.service.rekognition.delete_faces(collection=name, face_ids=face_ids)
    note(detail={"faces_deleted": len(deleted)})
    return {
        "DeletedFaces": deleted,
        "UnsuccessfulFaceDeletions": [
            {"FaceId": f, "Reasons": [why], **({"UserId": users[f]} if f in users else {})}
            for f, why in failed.items()
        ],
    }


# ---- searches -------------------------------------------------------------------------
def _matches(
    call: Call, name: str, result: IdentifyResult, threshold: float
) -> list[dict[str, Any]]:
    """The candidates at or above ``threshold`` percent, in /identify's order, with
    their faces as ListFaces shows them."""
    kept = [c for c in result.candidates if c.result.score >= threshold]
    faces = {
        f.id: f
        for f in call.service.rekognition.list_faces(
            collection=name, after=None, limit=len(kept) + 1, face_ids=[c.face_id for c in kept]
        )
    }
    # A search by a stored face uses its owner's data too (as /identify records it).
    owner = [result.probe_subject] if result.probe_subject else []
    note(subjects=[*owner, *(c.subject_id for c in kept)])
    return [
        {"Similarity": c.result.score, "Face": listed_face(faces[c.face_id], call.model_version)}
        for c in kept
        if c.face_id in faces
    ]


def _search(
    call: Call, threshold: float, max_faces: int, run: Callable[[int], IdentifyResult]
) -> IdentifyResult:
    """Search for FIRST_FETCH first; again for ``max_faces`` only if all passed."""
    first = min(max_faces, FIRST_FETCH)
    result = run(first)
    full = len(result.candidates) == first and first < max_faces
    if full and result.candidates[-1].result.score >= threshold:
        result = run(max_faces)
    return result


def search_faces(call: Call) -> dict[str, Any]:
    call.need("verify")
    name = call.collection()
    p = call.params
    face_id = p.required("FaceId", pattern=shapes.FACE_ID)
    threshold = p.number("FaceMatchThreshold", DEFAULT_THRESHOLD, 0, 100)
    max_faces = p.integer("MaxFaces", MAX_FACES, 1, MAX_FACES)
    result = _search(
        call,
        threshold,
        max_faces,
        lambda k: call.service.identify_face(collection=name, face_id=face_id, top_k=k),
    )
    return {
        "SearchedFaceId": face_id,
        "FaceMatches": _matches(call, name, result, threshold),
        "FaceModelVersion": call.model_version,
    }


def _searched(
    call: Call, image: bytes, probe: ProbeFace | None, filtered: bool
) -> list[dict[str, Any]]:
    """UnsearchedFaces: the photo's other faces (only looked for when the probe saw more
    than one), with FACE_NOT_LARGEST and the hard limits they fail."""
    if probe is None:
        return []
    if filtered and probe.checks:
        raise invalid(
            "The largest face does not pass the quality filter: "
            + ", ".join(CHECKS[c] for c in probe.checks)
        )
    if probe.faces_detected < 2:
        return []
    others = [f for f in call.service.detect(image=image).faces if not _same(f[0], probe.face)]
    return [
        {
            "FaceDetails": face_detail(face, measures),
            "Reasons": [FACE_NOT_LARGEST, *(CHECKS[c] for c in checks)],
        }
        for face, measures, _, checks in others
    ]


def _same(a: DetectedFace, b: DetectedFace) -> bool:
    """Whether two detections are one face (their boxes overlap by more than half)."""
    left, top = max(a.box.left, b.box.left), max(a.box.top, b.box.top)
    right, bottom = min(a.box.right, b.box.right), min(a.box.bottom, b.box.bottom)
    inter = max(0, right - left) * max(0, bottom - top)
    return inter > 0.5 * min(a.box.area, b.box.area)


def search_faces_by_image(call: Call) -> dict[str, Any]:
    call.need("verify")
    name = call.collection()
    p = call.params
    image = p.image("Image")
    threshold = p.number("FaceMatchThreshold", DEFAULT_THRESHOLD, 0, 100)
    max_faces = p.integer("MaxFaces", MAX_FACES, 1, MAX_FACES)
    filtered = p.choice("QualityFilter", shapes.QUALITY_FILTERS, "NONE") != "NONE"
    result = _search(
        call,
        threshold,
        max_faces,
        lambda k: call.service.identify(collection=name, image=image, top_k=k),
    )
    probe = result.probe
    assert probe is not None
    unsearched = _searched(call, image, probe, filtered)
    return {
        "SearchedFaceBoundingBox": bounding_box(probe.face.box, probe.face.frame),
        "SearchedFaceConfidence": confidence(probe.measures),
        "FaceMatches": _matches(call, name, result, threshold),
        "FaceModelVersion": call.model_version,
        "UnsearchedFaces": unsearched,
    }


def compare_faces(call: Call) -> dict[str, Any]:
    call.need("verify")
    p = call.params
    threshold = p.number("SimilarityThreshold", DEFAULT_THRESHOLD, 0, 100)
    filtered = p.choice("QualityFilter", shapes.QUALITY_FILTERS, "NONE") != "NONE"
    result = call.service.rekognition.compare_faces(
        source=p.image("SourceImage"), target=p.image("TargetImage")
    )
    if filtered and result.source.checks:
        raise invalid("The source image's face does not pass the quality filter.")
    targets = [(t, m) for t, m in result.targets if not (filtered and t.checks)]
    # The surest match first (the target's other faces: largest first).
    surest = sorted(((t, m) for t, m in targets if m.score >= threshold), key=lambda p: -p[1].score)
    matched = [{"Similarity": m.score, "Face": compared_face(t)} for t, m in surest]
    note(match=bool(matched), score=max((m.score for _, m in targets), default=None))
    source = result.source
    return {
        "SourceImageFace": {
            "BoundingBox": bounding_box(source.face.box, source.face.frame),
            "Confidence": confidence(source.measures),
        },
        "FaceMatches": matched,
        "UnmatchedFaces": [compared_face(t) for t, m in targets if m.score < threshold],
    }


def detect_faces(call: Call) -> dict[str, Any]:
    call.need("verify")
    p = call.params
    attributes = p.raw.get("Attributes", ["DEFAULT"])
    if not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes):
        raise invalid("'Attributes' must be a list of strings.")
    result = call.service.detect(image=p.image("Image"))
    note(detail={"faces": len(result.faces)})
    return {"FaceDetails": [face_detail(face, m) for face, m, _, _ in result.faces]}


# ---- users ----------------------------------------------------------------------------
def _user_id(call: Call) -> str:
    return call.params.required("UserId", pattern=shapes.USER_ID, max_len=128)


def create_user(call: Call) -> dict[str, Any]:
    call.need("enroll")
    name = call.collection()
    user = _user_id(call)
    token = call.params.string("ClientRequestToken", max_len=64)
    if not call.service.rekognition.create_user(collection=name, user_id=user, token=token):
        raise AwsError("ConflictException", f"User {user} already exists in collection {name}.")
    return {}


def delete_user(call: Call) -> dict[str, Any]:
    call.need("enroll")
    name = call.collection()
    user = _user_id(call)
    if not call.service.rekognition.delete_user(collection=name, user_id=user):
        raise not_found(f"User {user} does not exist in collection {name}.")
    return {}


def list_users(call: Call) -> dict[str, Any]:
    call.need("admin")
    name = call.collection()
    after = call.params.token(shapes.USER_ID)
    limit = call.params.integer("MaxResults", 500, 1, 500)
    rows = call.service.rekognition.list_users(collection=name, after=after, limit=limit + 1)
    page = rows[:limit]
    out: dict[str, Any] = {
        "Users": [{"UserId": u, "UserStatus": "ACTIVE" if n else "CREATED"} for u, n in page]
    }
    if len(rows) > limit and page:
        out["NextToken"] = shapes.next_token(page[-1][0])
    return out


def _status(call: Call, name: str, user: str) -> str:
    faces = call.service.rekognition.list_faces(collection=name, after=None, limit=1, user_id=user)
    return "ACTIVE" if faces else "CREATED"


def associate_faces(call: Call) -> dict[str, Any]:
    call.need("enroll")
    name = call.collection()
    user = _user_id(call)
    face_ids = call.params.ids("FaceIds", shapes.FACE_ID, 100, required=True)
    threshold = call.params.number("UserMatchThreshold", DEFAULT_ASSOCIATE_THRESHOLD, 0, 100)
    done, failed, scores = call.service.rekognition.associate_checked(
        collection=name, user_id=user, face_ids=face_ids, threshold=threshold
    )
    return {
        "AssociatedFaces": [{"FaceId": f} for f in done],
        "UnsuccessfulFaceAssociations": [
            {
                "FaceId": f,
                "UserId": user,
                "Reasons": [why],
                **({"Confidence": scores[f]} if f in scores else {}),
            }
            for f, why in failed.items()
        ],
        "UserStatus": _status(call, name, user),
    }


def disassociate_faces(call: Call) -> dict[str, Any]:
    call.need("enroll")
    name = call.collection()
    user = _user_id(call)
    face_ids = call.params.ids("FaceIds", shapes.FACE_ID, 100, required=True)
    done, failed = call.service.rekognition.associate(
        collection=name, user_id=user, face_ids=face_ids, dissociate=True
    )
    return {
        "DisassociatedFaces": [{"FaceId": f} for f in done],
        "UnsuccessfulFaceDisassociations": [
            {"FaceId": f, "UserId": user, "Reasons": [why]} for f, why in failed.items()
        ],
        "UserStatus": _status(call, name, user),
    }


def _user_matches(
    call: Call,
    name: str,
    result: IdentifyResult,
    threshold: float,
    max_users: int,
    skip: str | None,
    touched: list[str],
) -> list[dict[str, Any]]:
    """The users of the candidates, each once at its best face's similarity; the
    subjects whose data it used are added to ``touched`` (the audit event's)."""
    users = call.service.rekognition.users_of(
        collection=name, face_ids=[c.face_id for c in result.candidates]
    )
    best: dict[str, float] = {}
    for c in result.candidates:
        user = users.get(c.face_id)
        if user is not None and user != skip and c.result.score >= threshold:
            best.setdefault(user, c.result.score)
    touched.extend(c.subject_id for c in result.candidates if users.get(c.face_id) in best)
    if result.probe_subject:
        touched.append(result.probe_subject)
    note(subjects=sorted(set(touched)))
    ranked = sorted(best.items(), key=lambda kv: -kv[1])[:max_users]
    return [{"Similarity": s, "User": {"UserId": u, "UserStatus": "ACTIVE"}} for u, s in ranked]


def search_users(call: Call) -> dict[str, Any]:
    call.need("verify")
    name = call.collection()
    p = call.params
    user = p.string("UserId", pattern=shapes.USER_ID, max_len=128)
    face_id = p.string("FaceId", pattern=shapes.FACE_ID)
    if (user is None) == (face_id is None):
        raise invalid("Send exactly one of UserId and FaceId.")
    threshold = p.number("UserMatchThreshold", DEFAULT_THRESHOLD, 0, 100)
    max_users = p.integer("MaxUsers", 500, 1, 500)
    if face_id is not None:
        probes = [face_id]
        searched: dict[str, Any] = {"SearchedFace": {"FaceId": face_id}}
    else:
        assert user is not None
        if not call.service.rekognition.user_exists(collection=name, user_id=user):
            raise not_found(f"User {user} does not exist in collection {name}.")
        probes = call.service.rekognition.faces_of_user(collection=name, user_id=user)
        searched = {"SearchedUser": {"UserId": user}}
    found: dict[str, dict[str, Any]] = {}
    touched: list[str] = []
    for probe in probes:
        result = call.service.identify_face(collection=name, face_id=probe, top_k=FIRST_FETCH * 4)
        for match in _user_matches(call, name, result, threshold, max_users, user, touched):
            uid = match["User"]["UserId"]
            if uid not in found or found[uid]["Similarity"] < match["Similarity"]:
                found[uid] = match
    ranked = sorted(found.values(), key=lambda m: -m["Similarity"])[:max_users]
    return {"UserMatches": ranked, "FaceModelVersion": call.model_version, **searched}


def search_users_by_image(call: Call) -> dict[str, Any]:
    call.need("verify")
    name = call.collection()
    p = call.params
    image = p.image("Image")
    threshold = p.number("UserMatchThreshold", DEFAULT_THRESHOLD, 0, 100)
    max_users = p.integer("MaxUsers", 500, 1, 500)
    filtered = p.choice("QualityFilter", shapes.QUALITY_FILTERS, "NONE") != "NONE"
    result = call.service.identify(collection=name, image=image, top_k=FIRST_FETCH * 4)
    probe = result.probe
    assert probe is not None
    unsearched = _searched(call, image, probe, filtered)
    return {
        "UserMatches": _user_matches(call, name, result, threshold, max_users, None, []),
        "FaceModelVersion": call.model_version,
        "SearchedFace": {"FaceDetail": face_detail(probe.face, probe.measures)},
        "UnsearchedFaces": unsearched,
    }


OPERATIONS: dict[str, Callable[[Call], dict[str, Any]]] = {
    "CreateCollection": create_collection,
    "DeleteCollection": delete_collection,
    "ListCollections": list_collections,
    "DescribeCollection": describe_collection,
    "IndexFaces": index_faces,
    "ListFaces": list_faces,
    "DeleteFaces": delete_faces,
    "SearchFaces": search_faces,
    "SearchFacesByImage": search_faces_by_image,
    "CompareFaces": compare_faces,
    "DetectFaces": detect_faces,
    "CreateUser": create_user,
    "DeleteUser": delete_user,
    "ListUsers": list_users,
    "AssociateFaces": associate_faces,
    "DisassociateFaces": disassociate_faces,
    "SearchUsers": search_users,
    "SearchUsersByImage": search_users_by_image,
}
