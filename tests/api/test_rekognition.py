"""The Rekognition-compatible API (issue 40), driven by the real AWS SDK (boto3) and the
`aws` CLI against a real `faceverify serve`: every operation's happy path and errors,
botocore's paginators, a retry after throttling, wrong and foreign credentials, and
SearchFacesByImage against /identify. No mock of the server."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import httpx2
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.helpers import AUTH, data
from tests.server import FACEVERIFY, serving

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
AWS = str(Path(sys.executable).with_name("aws"))


def create_credential(data_dir: Path, scope: str, collection: str | None = None) -> tuple[str, str]:
    """`faceverify keys create --aws`: (access key id, secret)."""
    args = [FACEVERIFY, "keys", "create", "--aws", "--scope", scope, "--name", f"t-{scope}"]
    if collection:
        args += ["--collection", collection]
    env = {**os.environ, "FACEVERIFY_DATA_DIR": str(data_dir)}
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    akid = re.search(r"aws_access_key_id = (\S+)", out)
    secret = re.search(r"aws_secret_access_key = (\S+)", out)
    assert akid and secret, out
    return akid[1], secret[1]


def client(url: str, cred: tuple[str, str], **config: Any) -> Any:
    return boto3.client(
        "rekognition",
        endpoint_url=url,
        region_name="eu-west-1",
        aws_access_key_id=cred[0],
        aws_secret_access_key=cred[1],
        config=Config(retries=config.pop("retries", {"mode": "standard", "max_attempts": 1})),
    )


def error(call: Any, **kwargs: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    err = raised.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Message"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("rekognition")
    creds = {
        "admin": create_credential(root, "admin"),
        "door": create_credential(root, "enroll+verify", "door"),
        "door_verify": create_credential(root, "verify", "door"),
        "other": create_credential(root, "enroll+verify", "other"),
    }
    with serving({"FACEVERIFY_DATA_DIR": str(root)}) as url:
        yield {"url": url, "creds": creds, "root": root}


@pytest.fixture(scope="module")
def admin(server: dict[str, Any]) -> Any:
    return client(server["url"], server["creds"]["admin"])


@pytest.fixture(scope="module")
def door(server: dict[str, Any]) -> Any:
    return client(server["url"], server["creds"]["door"])


def image(name: str) -> dict[str, bytes]:
    return {"Bytes": data(name)}


def audit(url: str, **params: str) -> list[dict[str, Any]]:
    found = httpx2.get(url + "/audit", params={"limit": "1000", **params}, headers=AUTH)
    assert found.status_code == 200, found.text
    return list(found.json()["items"])


def test_collections_create_describe_list_and_delete(server: dict[str, Any], admin: Any) -> None:
    made = admin.create_collection(CollectionId="tmp-coll")
    assert made["StatusCode"] == 200 and made["CollectionArn"].endswith(":collection/tmp-coll")
    assert error(admin.create_collection, CollectionId="tmp-coll")[0] == (
        "ResourceAlreadyExistsException"
    )
    described = admin.describe_collection(CollectionId="tmp-coll")
    assert described["FaceCount"] == 0 and described["UserCount"] == 0
    assert "tmp-coll" in admin.list_collections()["CollectionIds"]
    assert admin.delete_collection(CollectionId="tmp-coll")["StatusCode"] == 200
    assert error(admin.describe_collection, CollectionId="tmp-coll")[:2] == (
        "ResourceNotFoundException",
        400,
    )
    # faceverify's ids are stricter than AWS's: said so, not a 500.
    code, _, message = error(admin.create_collection, CollectionId="_" + "x" * 70)
    assert code == "InvalidParameterException" and "faceverify" in message


def test_index_search_compare_and_delete_faces(server: dict[str, Any], door: Any) -> None:
    indexed = door.index_faces(
        CollectionId="door", Image=image("obama.jpg"), ExternalImageId="obama"
    )
    (record,) = indexed["FaceRecords"]
    face = record["Face"]
    assert face["ExternalImageId"] == "obama" and face["ImageId"]
    box = face["BoundingBox"]
    assert 0 < box["Left"] < 1 and 0 < box["Width"] < 1
    detail = record["FaceDetail"]
    assert {lm["Type"] for lm in detail["Landmarks"]} == {"eyeLeft", "eyeRight", "nose"}
    assert set(detail["Pose"]) == {"Roll", "Yaw", "Pitch"} and 0 < detail["Confidence"] <= 100
    obama2 = door.index_faces(CollectionId="door", Image=image("obama2.jpg"), ExternalImageId="o2")
    biden = door.index_faces(CollectionId="door", Image=image("biden.jpg"), ExternalImageId="biden")
    found = door.search_faces_by_image(CollectionId="door", Image=image("obama3.jpg"))
    ids = [m["Face"]["FaceId"] for m in found["FaceMatches"]]
    assert set(ids) == {face["FaceId"], obama2["FaceRecords"][0]["Face"]["FaceId"]}
    assert all(m["Similarity"] >= 80 for m in found["FaceMatches"])
    assert found["SearchedFaceBoundingBox"]["Width"] > 0
    by_face = door.search_faces(CollectionId="door", FaceId=face["FaceId"])
    assert [m["Face"]["FaceId"] for m in by_face["FaceMatches"]] == [
        obama2["FaceRecords"][0]["Face"]["FaceId"]
    ]
    compared = door.compare_faces(SourceImage=image("obama.jpg"), TargetImage=image("biden.jpg"))
    assert compared["FaceMatches"] == [] and len(compared["UnmatchedFaces"]) == 1
    same = door.compare_faces(SourceImage=image("obama.jpg"), TargetImage=image("obama2.jpg"))
    assert same["FaceMatches"][0]["Similarity"] > 90
    biden_id = biden["FaceRecords"][0]["Face"]["FaceId"]
    gone = door.delete_faces(
        CollectionId="door", FaceIds=[biden_id, "00000000-0000-4000-8000-000000000000"]
    )
    assert gone["DeletedFaces"] == [biden_id]
    assert gone["UnsuccessfulFaceDeletions"][0]["Reasons"] == ["FACE_NOT_FOUND"]
    # Deleted everywhere: no search finds it, its subject is gone from faceverify's API.
    again = door.search_faces_by_image(CollectionId="door", Image=image("biden.jpg"))
    assert biden_id not in [m["Face"]["FaceId"] for m in again["FaceMatches"]]
    subject = httpx2.get(f"{server['url']}/subjects/{biden_id}?collection=door", headers=AUTH)
    assert subject.status_code == 404
    actions = {e["action"] for e in audit(server["url"], collection="door")}
    assert {"aws_index_faces", "aws_search_faces_by_image", "aws_delete_faces"} <= actions


def test_a_photo_of_two_people(server: dict[str, Any], door: Any) -> None:
    one = door.index_faces(CollectionId="door", Image=image("obama_and_biden.jpg"), MaxFaces=1)
    assert len(one["FaceRecords"]) == 1
    assert one["UnindexedFaces"][0]["Reasons"] == ["EXCEEDS_MAX_FACES"]
    searched = door.search_users_by_image(CollectionId="door", Image=image("obama_and_biden.jpg"))
    (other,) = searched["UnsearchedFaces"]
    assert other["Reasons"][0] == "FACE_NOT_LARGEST" and other["FaceDetails"]["BoundingBox"]
    compared = door.compare_faces(
        SourceImage=image("obama.jpg"), TargetImage=image("obama_and_biden.jpg")
    )
    # Obama's face matches; Biden's does not.
    assert len(compared["FaceMatches"]) == 1 and len(compared["UnmatchedFaces"]) == 1
    door.delete_faces(CollectionId="door", FaceIds=[one["FaceRecords"][0]["Face"]["FaceId"]])


def test_search_faces_by_image_names_what_identify_names(server: dict[str, Any], door: Any) -> None:
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg", "curie_upright.jpg"):
        door.index_faces(CollectionId="door", Image=image(name))
    aws = door.search_faces_by_image(
        CollectionId="door", Image=image("obama3.jpg"), FaceMatchThreshold=0, MaxFaces=5
    )
    own = httpx2.post(
        f"{server['url']}/identify",
        params={"collection": "door"},
        json={"image": base64.b64encode(data("obama3.jpg")).decode(), "top_k": 5},
        headers=AUTH,
        timeout=60,
    ).json()
    assert [m["Face"]["FaceId"] for m in aws["FaceMatches"]] == [
        c["face_id"] for c in own["candidates"]
    ]
    assert [m["Similarity"] for m in aws["FaceMatches"]] == [c["score"] for c in own["candidates"]]
    # Compare: CompareFaces' similarity is /compare's score.
    compared = httpx2.post(
        f"{server['url']}/compare",
        json={
            "image_a": base64.b64encode(data("obama.jpg")).decode(),
            "image_b": base64.b64encode(data("obama3.jpg")).decode(),
        },
        headers=AUTH,
        timeout=60,
    ).json()
    aws_pair = door.compare_faces(
        SourceImage=image("obama.jpg"), TargetImage=image("obama3.jpg"), SimilarityThreshold=0
    )
    assert aws_pair["FaceMatches"][0]["Similarity"] == pytest.approx(compared["score"], abs=0.02)


def test_list_faces_pages_with_the_paginator(server: dict[str, Any], admin: Any, door: Any) -> None:
    admin.create_collection(CollectionId="pages")
    pages = client(server["url"], server["creds"]["admin"])
    for _ in range(3):
        pages.index_faces(CollectionId="pages", Image=image("obama.jpg"))
    seen = [
        f["FaceId"]
        for page in admin.get_paginator("list_faces").paginate(
            CollectionId="pages", PaginationConfig={"PageSize": 2}
        )
        for f in page["Faces"]
    ]
    assert len(seen) == len(set(seen)) == 3
    listed = admin.list_faces(CollectionId="pages", MaxResults=2)
    assert len(listed["Faces"]) == 2 and listed["NextToken"]
    (event,) = [
        e
        for e in audit(server["url"])
        if e["request_id"] == listed["ResponseMetadata"]["RequestId"]
    ]
    assert sorted(event["subjects"]) == sorted(f["FaceId"] for f in listed["Faces"])
    names = [
        c
        for page in admin.get_paginator("list_collections").paginate(
            PaginationConfig={"PageSize": 1}
        )
        for c in page["CollectionIds"]
    ]
    assert {"door", "pages", "other"} <= set(names)
    # A bound credential sees its own collection only, and ListFaces needs admin.
    assert door.list_collections()["CollectionIds"] == ["door"]
    assert error(door.list_faces, CollectionId="door")[0] == "AccessDeniedException"


def test_users_associate_search_and_delete(server: dict[str, Any], door: Any, admin: Any) -> None:
    a = door.index_faces(CollectionId="door", Image=image("obama.jpg"))["FaceRecords"][0]
    b = door.index_faces(CollectionId="door", Image=image("obama2.jpg"))["FaceRecords"][0]
    c = door.index_faces(CollectionId="door", Image=image("biden.jpg"))["FaceRecords"][0]
    ids = [a["Face"]["FaceId"], b["Face"]["FaceId"], c["Face"]["FaceId"]]
    door.create_user(CollectionId="door", UserId="barack")
    assert error(door.create_user, CollectionId="door", UserId="barack")[0] == "ConflictException"
    joined = door.associate_faces(CollectionId="door", UserId="barack", FaceIds=ids)
    assert [f["FaceId"] for f in joined["AssociatedFaces"]] == ids[:2]
    # Another person's face does not join the user (UserMatchThreshold).
    (refused,) = joined["UnsuccessfulFaceAssociations"]
    assert refused["FaceId"] == ids[2] and refused["Reasons"] == ["LOW_MATCH_CONFIDENCE"]
    assert joined["UserStatus"] == "ACTIVE"
    users = door.search_users_by_image(CollectionId="door", Image=image("obama3.jpg"))
    assert users["UserMatches"][0]["User"]["UserId"] == "barack"
    by_face = door.search_users(CollectionId="door", FaceId=ids[0])
    assert by_face["UserMatches"][0]["User"]["UserId"] == "barack"
    # Its audit event names whose data it used: the searched face's and the match's.
    (event,) = [
        e
        for e in audit(server["url"], collection="door")
        if e["request_id"] == by_face["ResponseMetadata"]["RequestId"]
    ]
    assert event["action"] == "aws_search_users" and set(ids[:2]) <= set(event["subjects"])
    listed = admin.list_faces(CollectionId="door", UserId="barack")["Faces"]
    assert sorted(f["FaceId"] for f in listed) == sorted(ids[:2])
    # A face of a user is not deleted until it leaves the user, as AWS does.
    kept = door.delete_faces(CollectionId="door", FaceIds=[ids[0]])
    assert kept["UnsuccessfulFaceDeletions"][0]["Reasons"] == ["ASSOCIATED_TO_AN_EXISTING_USER"]
    left = door.disassociate_faces(CollectionId="door", UserId="barack", FaceIds=[ids[0], ids[2]])
    assert [f["FaceId"] for f in left["DisassociatedFaces"]] == [ids[0]]
    assert left["UnsuccessfulFaceDisassociations"][0]["FaceId"] == ids[2]
    users_page = [
        u["UserId"]
        for page in admin.get_paginator("list_users").paginate(CollectionId="door")
        for u in page["Users"]
    ]
    assert "barack" in users_page
    door.delete_user(CollectionId="door", UserId="barack")
    assert error(door.delete_user, CollectionId="door", UserId="barack")[0] == (
        "ResourceNotFoundException"
    )
    assert error(door.associate_faces, CollectionId="door", UserId="nobody", FaceIds=ids[:1])[
        0
    ] == ("ResourceNotFoundException")


def test_errors_come_as_aws_sends_them(server: dict[str, Any], door: Any) -> None:
    code, status, message = error(
        door.search_faces_by_image,
        CollectionId="door",
        Image={"S3Object": {"Bucket": "photos", "Name": "obama.jpg"}},
    )
    assert (code, status) == ("InvalidParameterException", 400) and "S3Object" in message
    assert error(door.detect_faces, Image={"Bytes": b"not an image"})[0] == (
        "InvalidImageFormatException"
    )
    assert error(door.search_faces_by_image, CollectionId="door", Image=image("coffee.png"))[0] == (
        "InvalidParameterException"
    )
    assert door.detect_faces(Image=image("coffee.png"))["FaceDetails"] == []
    assert error(
        door.compare_faces, SourceImage=image("obama.jpg"), TargetImage=image("coffee.png")
    )[0] == ("InvalidParameterException")
    assert error(
        door.search_faces, CollectionId="door", FaceId="00000000-0000-4000-8000-000000000000"
    )[0] == ("ResourceNotFoundException")
    raw = httpx2.post(
        server["url"] + "/",
        content=b"{}",
        headers={
            "X-Amz-Target": "RekognitionService.ListCollections",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    assert (
        raw.status_code == 403
        and raw.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    )
    assert raw.json()["__type"] == "MissingAuthenticationTokenException"


def signed_post(url: str, cred: tuple[str, str], target: str, body: bytes) -> httpx2.Response:
    """A request signed by botocore's signer with any body (the SDK would refuse to send
    a body that is not JSON)."""
    request = AWSRequest(
        method="POST",
        url=url + "/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": f"RekognitionService.{target}",
        },
    )
    SigV4Auth(Credentials(*cred), "rekognition", "eu-west-1").add_auth(request)
    return httpx2.post(url + "/", content=body, headers=dict(request.headers.items()))


def test_bad_bodies_ids_and_tokens_are_refused_in_aws_form(server: dict[str, Any]) -> None:
    cred = server["creds"]["admin"]
    for body in (b"not json", b"\xff\xfe", b'{"CollectionId": NaN}', b"[" * 5000):
        answer = signed_post(server["url"], cred, "ListFaces", body)
        assert answer.status_code == 400 and answer.headers["x-amzn-ErrorType"] == (
            "SerializationException"
        ), body[:20]
    admin = client(server["url"], cred)
    # A trailing newline passes `$` in a Python pattern: never an id here.
    for call, fields in (
        (admin.create_collection, {"CollectionId": "zz\n"}),
        (admin.create_user, {"CollectionId": "door", "UserId": "u1\n"}),
        (
            admin.index_faces,
            {"CollectionId": "door", "Image": image("obama.jpg"), "ExternalImageId": "x\n"},
        ),
    ):
        assert error(call, **fields)[0] == "InvalidParameterException"
    for token in ("!!!", "AA==", base64.urlsafe_b64encode(b"../other").decode()):
        assert error(admin.list_faces, CollectionId="door", NextToken=token)[0] == (
            "InvalidPaginationTokenException"
        )
        assert error(admin.list_collections, NextToken=token)[0] == (
            "InvalidPaginationTokenException"
        )


def test_metadata_from_faceverifys_own_api_is_never_read_as_index_faces(
    server: dict[str, Any], admin: Any
) -> None:
    """A subject enrolled through /enroll whose metadata mimics IndexFaces' must neither
    break ListFaces (a 500 for the whole collection) nor be shown as an ExternalImageId."""
    admin.create_collection(CollectionId="own-meta")
    enrolled = httpx2.post(
        server["url"] + "/enroll",
        params={"collection": "own-meta"},
        json={
            "subject_id": "hop",
            "image": base64.b64encode(data("hopper.jpg")).decode(),
            "metadata": {
                "rekognition": {"width": "abc", "height": 7, "external_image_id": "obama"}
            },
        },
        headers=AUTH,
        timeout=60,
    )
    assert enrolled.status_code == 201, enrolled.text
    (face,) = admin.list_faces(CollectionId="own-meta")["Faces"]
    assert face["ExternalImageId"] == "hop" and "BoundingBox" not in face
    found = admin.search_faces_by_image(CollectionId="own-meta", Image=image("hopper.jpg"))
    assert found["FaceMatches"][0]["Face"]["ExternalImageId"] == "hop"


def test_a_credential_acts_only_on_its_own_collection_and_scopes(server: dict[str, Any]) -> None:
    other = client(server["url"], server["creds"]["other"])
    code, _, _ = error(other.search_faces_by_image, CollectionId="door", Image=image("obama.jpg"))
    assert code == "AccessDeniedException"
    assert error(other.delete_collection, CollectionId="other")[0] == "AccessDeniedException"
    viewer = client(server["url"], server["creds"]["door_verify"])
    assert error(viewer.index_faces, CollectionId="door", Image=image("obama.jpg"))[0] == (
        "AccessDeniedException"
    )


def test_a_wrongly_signed_or_unknown_request_reads_and_writes_nothing(
    server: dict[str, Any],
) -> None:
    before = httpx2.get(server["url"] + "/collections/door", headers=AUTH).json()["faces"]
    events = len(audit(server["url"]))
    akid, _ = server["creds"]["door"]
    wrong = client(server["url"], (akid, "x" * 40))
    code, status, _ = error(wrong.index_faces, CollectionId="door", Image=image("obama.jpg"))
    assert (code, status) == ("InvalidSignatureException", 400)
    unknown = client(server["url"], ("FVAKAAAAAAAAAAAAAAAA", "x" * 40))
    assert error(unknown.list_collections)[0] == "UnrecognizedClientException"
    assert httpx2.get(server["url"] + "/collections/door", headers=AUTH).json()["faces"] == before
    # No event for a request nobody could sign (only the two /audit reads above).
    assert len(audit(server["url"])) <= events + 2


def test_consent_is_passed_as_a_header_the_sdk_adds(server: dict[str, Any], admin: Any) -> None:
    created = httpx2.post(
        server["url"] + "/collections",
        json={"collection_id": "consented", "consent_required": True},
        headers=AUTH,
    )
    assert created.status_code == 201, created.text
    code, _, message = error(admin.index_faces, CollectionId="consented", Image=image("obama.jpg"))
    assert code == "AccessDeniedException" and "X-Faceverify-Consent" in message
    signer = client(server["url"], server["creds"]["admin"])

    def add_consent(request: Any, **_: Any) -> None:
        request.headers["X-Faceverify-Consent"] = "form-2026-12/42"

    signer.meta.events.register("before-sign.rekognition.IndexFaces", add_consent)
    face = signer.index_faces(CollectionId="consented", Image=image("obama.jpg"))["FaceRecords"][0]
    subject = httpx2.get(
        f"{server['url']}/subjects/{face['Face']['FaceId']}?collection=consented", headers=AUTH
    ).json()
    assert subject["consent"]["reference"] == "form-2026-12/42"


@pytest.mark.slow  # its own server, and botocore's back-off between retries
def test_throttling_is_retried_by_botocore(tmp_path: Path) -> None:
    cred = create_credential(tmp_path, "admin")
    env = {
        "FACEVERIFY_DATA_DIR": str(tmp_path),
        "FACEVERIFY_MAX_CONCURRENT_INFERENCE": "1",
        "FACEVERIFY_INFERENCE_WAIT_SECONDS": "0",
        "FACEVERIFY_TENANT_RESERVE_SLOTS": "0",
    }
    with serving(env) as url:
        patient = client(url, cred, retries={"mode": "standard", "max_attempts": 12})
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(
                    lambda _: patient.compare_faces(
                        SourceImage=image("obama.jpg"), TargetImage=image("obama2.jpg")
                    ),
                    range(8),
                )
            )
    assert all(a["FaceMatches"] for a in answers)
    assert sum(a["ResponseMetadata"]["RetryAttempts"] for a in answers) > 0


def test_the_aws_cli_works_with_only_the_endpoint_changed(
    server: dict[str, Any], tmp_path: Path
) -> None:
    akid, secret = server["creds"]["door"]
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": akid,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    photo = tmp_path / "obama.jpg"
    photo.write_bytes(data("obama.jpg"))

    def aws(*args: str) -> str:
        done = subprocess.run(
            [AWS, "rekognition", *args, "--endpoint-url", server["url"], "--output", "json"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert '"door"' in aws("list-collections")
    assert "eyeLeft" in aws("detect-faces", "--image-bytes", f"fileb://{photo}")
    assert "FaceMatches" in aws(
        "search-faces-by-image", "--collection-id", "door", "--image-bytes", f"fileb://{photo}"
    )


def test_a_request_past_the_timeout_is_answered_in_aws_form(tmp_path: Path) -> None:
    cred = create_credential(tmp_path, "admin")
    env = {"FACEVERIFY_DATA_DIR": str(tmp_path), "FACEVERIFY_REQUEST_TIMEOUT_SECONDS": "0.01"}
    with serving(env) as url:
        hurried = client(url, cred, retries={"mode": "standard", "max_attempts": 2})
        code, status, _ = error(
            hurried.compare_faces, SourceImage=image("obama.jpg"), TargetImage=image("obama2.jpg")
        )
    assert (code, status) == ("ThrottlingException", 500)


@pytest.mark.slow  # its own server, and botocore's back-off between retries
def test_a_keys_rate_limit_is_retried_by_botocore(tmp_path: Path) -> None:
    cred = create_credential(tmp_path, "admin")
    env = {
        "FACEVERIFY_DATA_DIR": str(tmp_path),
        "FACEVERIFY_RATE_LIMIT_PER_SECOND": "2",
        "FACEVERIFY_RATE_LIMIT_BURST": "1",
    }
    with serving(env) as url:
        impatient = client(url, cred)
        codes = []
        impatient.list_collections()  # the connection made, the bucket emptied
        for _ in range(3):
            try:
                impatient.list_collections()
            except ClientError as refused:
                codes.append(refused.response["Error"]["Code"])
        assert "ProvisionedThroughputExceededException" in codes
        patient = client(url, cred, retries={"mode": "standard", "max_attempts": 10})
        answers = [patient.list_collections() for _ in range(6)]
    assert sum(a["ResponseMetadata"]["RetryAttempts"] for a in answers) > 0


def test_concurrent_calls_give_the_answers_given_alone(server: dict[str, Any], door: Any) -> None:
    """Threads comparing different pairs at once: every Similarity is the one the same
    call gave alone (dlib's detectors and the ONNX session are per thread or pooled)."""
    pairs = [
        ("obama.jpg", "obama2.jpg"),
        ("obama.jpg", "biden.jpg"),
        ("obama3.jpg", "obama2.jpg"),
        ("biden.jpg", "obama_and_biden.jpg"),
        ("hopper.jpg", "obama.jpg"),
    ]

    def similarities(pair: tuple[str, str]) -> list[float]:
        got = door.compare_faces(
            SourceImage=image(pair[0]), TargetImage=image(pair[1]), SimilarityThreshold=0
        )
        return sorted(m["Similarity"] for m in got["FaceMatches"])

    alone = [similarities(p) for p in pairs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(similarities, pairs * 3))
    assert together == alone * 3
