"""Signature Version 4 as the server checks it, against botocore's own signer: what
botocore signs verifies; any change to what was signed, a wrong secret, an old or
future date, another service, and a missing or malformed header do not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from app.api.rekognition import sigv4

AKID, SECRET = "FVAKTESTTESTTESTTEST", "s3cr3t/KEY+abcdefghijklmnopqrstuvwxyz0123"
BODY = b'{"CollectionId": "door"}'


def signed(
    body: bytes = BODY,
    *,
    secret: str = SECRET,
    service: str = "rekognition",
    region: str = "eu-west-1",
    url: str = "http://127.0.0.1:8000/",
) -> sigv4.SignedRequest:
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "RekognitionService.DescribeCollection",
        },
    )
    SigV4Auth(Credentials(AKID, secret), service, region).add_auth(request)
    headers = [(k, v) for k, v in request.headers.items()]
    headers.append(("host", "127.0.0.1:8000"))
    return sigv4.SignedRequest("POST", "/", "", headers, body)


def secrets(akid: str) -> str | None:
    return SECRET if akid == AKID else None


def test_a_request_botocore_signed_verifies_in_any_region() -> None:
    assert sigv4.verify(signed(), secrets) == AKID
    assert sigv4.verify(signed(region="ap-southeast-2"), secrets) == AKID


def kind(request: sigv4.SignedRequest, now: datetime | None = None) -> str:
    with pytest.raises(sigv4.SignatureError) as refused:
        sigv4.verify(request, secrets, now)
    return refused.value.kind


def test_a_changed_body_header_or_path_is_refused() -> None:
    good = signed()
    assert kind(sigv4.SignedRequest("POST", "/", "", good.headers, BODY + b" ")) == (
        "InvalidSignatureException"
    )
    other = "RekognitionService.DeleteCollection"
    moved = [(k, other if k.lower() == "x-amz-target" else v) for k, v in good.headers]
    assert kind(sigv4.SignedRequest("POST", "/", "", moved, BODY)) == "InvalidSignatureException"
    assert kind(sigv4.SignedRequest("POST", "/x", "", good.headers, BODY)) == (
        "InvalidSignatureException"
    )
    assert kind(sigv4.SignedRequest("POST", "/", "a=1", good.headers, BODY)) == (
        "InvalidSignatureException"
    )


def test_a_wrong_secret_an_unknown_key_and_another_service_are_refused() -> None:
    assert kind(signed(secret="wrong")) == "InvalidSignatureException"
    assert kind(signed(service="s3")) == "InvalidSignatureException"
    with pytest.raises(sigv4.SignatureError) as refused:
        sigv4.verify(signed(), lambda akid: None)
    assert refused.value.kind == "UnrecognizedClientException"


def test_a_request_more_than_five_minutes_off_the_clock_is_refused() -> None:
    request = signed()
    now = datetime.now(UTC)
    assert sigv4.verify(request, secrets, now + timedelta(minutes=4)) == AKID
    with pytest.raises(sigv4.SignatureError, match="Signature expired"):
        sigv4.verify(request, secrets, now + timedelta(minutes=6))
    with pytest.raises(sigv4.SignatureError, match="not yet current"):
        sigv4.verify(request, secrets, now - timedelta(minutes=6))


def test_missing_and_malformed_authorization_are_refused_as_aws_does() -> None:
    good = signed()
    without = [(k, v) for k, v in good.headers if k.lower() != "authorization"]
    assert kind(sigv4.SignedRequest("POST", "/", "", without, BODY)) == (
        "MissingAuthenticationTokenException"
    )
    garbled = [*without, ("Authorization", "AWS4-HMAC-SHA256 Credential=x")]
    assert kind(sigv4.SignedRequest("POST", "/", "", garbled, BODY)) == (
        "IncompleteSignatureException"
    )
    undated = [(k, v) for k, v in good.headers if k.lower() != "x-amz-date"]
    assert kind(sigv4.SignedRequest("POST", "/", "", undated, BODY)) == (
        "IncompleteSignatureException"
    )


def test_the_operation_and_faceverify_headers_must_be_signed() -> None:
    """A header added after signing is not covered: the consent of a captured
    IndexFaces (or its operation) could otherwise be changed by anyone who holds it."""
    good = signed()
    forged = sigv4.SignedRequest(
        "POST", "/", "", [*good.headers, ("X-Faceverify-Consent", "forged")], BODY
    )
    assert kind(forged) == "InvalidSignatureException"
    request = AWSRequest(method="POST", url="http://127.0.0.1:8000/", data=BODY, headers={})
    SigV4Auth(Credentials(AKID, SECRET), "rekognition", "eu-west-1").add_auth(request)
    unsigned_target = [
        *request.headers.items(),
        ("host", "127.0.0.1:8000"),
        ("X-Amz-Target", "RekognitionService.DeleteUser"),
    ]
    with pytest.raises(sigv4.SignatureError, match="x-amz-target"):
        sigv4.verify(sigv4.SignedRequest("POST", "/", "", unsigned_target, BODY), secrets)
