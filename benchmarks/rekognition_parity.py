"""A script written for Amazon Rekognition, run against faceverify with only the
endpoint and the credentials changed, side by side with faceverify's own API: do they
decide alike? (issue 40)

    python benchmarks/rekognition_parity.py [--people 150] [--strangers 150] [--pairs 300]

On LFW View 1 training people (../shared/data/lfw-devtrain, read in place), in one
`faceverify serve`:

1. IndexFaces of each enrolled person's first photo (ExternalImageId: the name).
2. Each enrolled person's second photo and each stranger's first photo searched with
   SearchFacesByImage (MaxFaces 5, FaceMatchThreshold 0) and with /identify (top_k 5):
   the same faces in the same order with the same percent? And at Rekognition's default
   threshold of 80: how often is the right person first, and how often does a stranger
   get a match (the 1:N false match rate of a threshold, at this gallery's size)?
3. CompareFaces and /compare of View 1 pairs: the same percent; the same decision at 80.
4. Users: one per enrolled person with both photos associated; SearchUsersByImage.
5. DeleteFaces of everything: the collection is empty, no search finds anything.

These people are the calibration's own (in-sample): the agreement is what this measures;
the rates are indicative.
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import httpx2
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import FACEVERIFY, bench_env, serving  # noqa: E402

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw-devtrain"
KEY = "parity-" + uuid.uuid4().hex


def photo(name: str, number: int) -> bytes:
    return (LFW / "images" / name / f"{name}_{number:04d}.jpg").read_bytes()


def people() -> tuple[list[str], list[str]]:
    """(people with two photos or more, people with one), in name order."""
    many, one = [], []
    for folder in sorted((LFW / "images").iterdir()):
        count = len(list(folder.glob("*.jpg")))
        (many if count >= 2 else one).append(folder.name)
    return many, one


def width(data: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return int(image.width)


def credential(data_dir: Path) -> tuple[str, str]:
    out = subprocess.run(
        [FACEVERIFY, "keys", "create", "--aws", "--scope", "admin", "--name", "parity"],
        env=bench_env(data_dir, KEY + ":admin"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    akid = re.search(r"aws_access_key_id = (\S+)", out)
    secret = re.search(r"aws_secret_access_key = (\S+)", out)
    assert akid and secret
    return akid[1], secret[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=150)
    parser.add_argument("--strangers", type=int, default=150)
    parser.add_argument("--pairs", type=int, default=300)
    args = parser.parse_args()
    many, one = people()
    enrolled, strangers = many[: args.people], one[: args.strangers]
    data_dir = Path(tempfile.mkdtemp(prefix="fv-parity-"))
    akid, secret = credential(data_dir)
    with serving(data_dir, KEY + ":admin") as url:
        aws = boto3.client(
            "rekognition",
            endpoint_url=url,
            region_name="eu-west-1",
            aws_access_key_id=akid,
            aws_secret_access_key=secret,
            config=Config(retries={"mode": "standard", "max_attempts": 5}),
        )
        own = httpx2.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=120)
        run(aws, own, enrolled, strangers, args.pairs)


def run(
    aws: object, own: httpx2.Client, enrolled: list[str], strangers: list[str], pairs: int
) -> None:
    aws.create_collection(CollectionId="parity")  # type: ignore[attr-defined]
    face_of: dict[str, str] = {}
    start = time.perf_counter()
    for name in enrolled:
        got = aws.index_faces(  # type: ignore[attr-defined]
            CollectionId="parity", Image={"Bytes": photo(name, 1)}, ExternalImageId=name
        )
        if got["FaceRecords"]:
            face_of[name] = got["FaceRecords"][0]["Face"]["FaceId"]
    print(
        f"IndexFaces: {len(face_of)} of {len(enrolled)} people "
        f"in {time.perf_counter() - start:.1f} s"
    )

    same_list = same_scores = right_first = named_enrolled = stranger_named = 0
    probes = [(n, photo(n, 2), True) for n in face_of] + [
        (n, photo(n, 1), False) for n in strangers
    ]
    for name, data, known in probes:
        found = aws.search_faces_by_image(  # type: ignore[attr-defined]
            CollectionId="parity", Image={"Bytes": data}, MaxFaces=5, FaceMatchThreshold=0
        )
        mine = own.post(
            "/identify",
            params={"collection": "parity"},
            json={"image": base64.b64encode(data).decode(), "top_k": 5},
        ).json()
        aws_ids = [m["Face"]["FaceId"] for m in found["FaceMatches"]]
        own_ids = [c["face_id"] for c in mine["candidates"]]
        same_list += aws_ids == own_ids
        same_scores += [m["Similarity"] for m in found["FaceMatches"]] == [
            c["score"] for c in mine["candidates"]
        ]
        top = found["FaceMatches"][0] if found["FaceMatches"] else None
        at80 = top is not None and top["Similarity"] >= 80
        if known:
            named_enrolled += at80
            right_first += at80 and top["Face"].get("ExternalImageId") == name
        else:
            stranger_named += at80
    n = len(probes)
    print(
        f"SearchFacesByImage vs /identify: same faces in the same order {same_list}/{n}, "
        f"same percents {same_scores}/{n}"
    )
    print(
        f"  enrolled probes ({len(face_of)}): top match >= 80 {named_enrolled}, the right "
        f"person {right_first} ({right_first / max(len(face_of), 1):.1%})"
    )
    print(
        f"  strangers ({len(strangers)}): a match >= 80 for {stranger_named} "
        f"({stranger_named / max(len(strangers), 1):.1%}) in a gallery of {len(face_of)}"
    )

    lines = (LFW / "pairsDevTrain.txt").read_text().split("\n")[1:]
    chosen = [line.split("\t") for line in lines if line.strip()][:pairs]
    agree = close = several = 0
    worst = 0.0
    for parts in chosen:
        if len(parts) == 3:
            a, b = photo(parts[0], int(parts[1])), photo(parts[0], int(parts[2]))
        else:
            a, b = photo(parts[0], int(parts[1])), photo(parts[2], int(parts[3]))
        pair = aws.compare_faces(  # type: ignore[attr-defined]
            SourceImage={"Bytes": a}, TargetImage={"Bytes": b}, SimilarityThreshold=0
        )
        mine = own.post(
            "/compare",
            json={"image_a": base64.b64encode(a).decode(), "image_b": base64.b64encode(b).decode()},
        ).json()
        if "score" not in mine:
            continue
        # The target face /compare chose (its main face): the one whose box is /compare's.
        box = mine["probe_b"]["box"]
        same_face = [
            m
            for m in pair["FaceMatches"]
            if abs(m["Face"]["BoundingBox"]["Left"] * width(b) - box["left"]) <= 2
        ]
        if len(pair["FaceMatches"]) > 1:
            several += 1
        if not same_face:
            continue
        similarity = same_face[0]["Similarity"]
        gap = abs(similarity - mine["score"])
        worst = max(worst, gap)
        close += gap <= 0.02
        agree += (similarity >= 80) == (mine["score"] >= 80)
    print(
        f"CompareFaces vs /compare ({len(chosen)} View 1 pairs; {several} targets with "
        f"several faces, each compared at /compare's face): percent within 0.02 {close}, "
        f"decision at 80 agrees {agree}, largest gap {worst:.3f}"
    )

    users = list(face_of)[:30]
    for name in users:
        second = aws.index_faces(  # type: ignore[attr-defined]
            CollectionId="parity", Image={"Bytes": photo(name, 2)}, ExternalImageId=name
        )["FaceRecords"]
        user_id = re.sub(r"[^a-zA-Z0-9_.\-:]", "_", name)
        aws.create_user(CollectionId="parity", UserId=user_id)  # type: ignore[attr-defined]
        ids = [face_of[name]] + [r["Face"]["FaceId"] for r in second]
        aws.associate_faces(CollectionId="parity", UserId=user_id, FaceIds=ids)  # type: ignore[attr-defined]
    hits = 0
    for name in users:
        got = aws.search_users_by_image(  # type: ignore[attr-defined]
            CollectionId="parity", Image={"Bytes": photo(name, 2)}
        )["UserMatches"]
        hits += bool(got) and got[0]["User"]["UserId"] == re.sub(r"[^a-zA-Z0-9_.\-:]", "_", name)
    print(f"SearchUsersByImage: the right user first for {hits} of {len(users)}")

    for name in users:
        user_id = re.sub(r"[^a-zA-Z0-9_.\-:]", "_", name)
        aws.delete_user(CollectionId="parity", UserId=user_id)  # type: ignore[attr-defined]
    listed = [
        f["FaceId"]
        for page in aws.get_paginator("list_faces").paginate(CollectionId="parity")  # type: ignore[attr-defined]
        for f in page["Faces"]
    ]
    for start in range(0, len(listed), 1000):
        aws.delete_faces(CollectionId="parity", FaceIds=listed[start : start + 1000])  # type: ignore[attr-defined]
    left = aws.describe_collection(CollectionId="parity")["FaceCount"]  # type: ignore[attr-defined]
    print(f"DeleteFaces of all {len(listed)} faces: {left} left")


if __name__ == "__main__":
    main()
