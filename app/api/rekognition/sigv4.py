"""AWS Signature Version 4, checked by the server (the SDKs sign; this verifies).

The client sends ``Authorization: AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/
aws4_request, SignedHeaders=a;b;c, Signature=hex`` and ``X-Amz-Date``. The server
rebuilds the canonical request from what it received (method, path, query, the signed
headers, the body's sha256), derives the signing key from the credential's secret, and
compares signatures in constant time. Any region is accepted (a self-hosted endpoint has
none of its own); the service must be ``rekognition``; the request time must lie within
:data:`MAX_SKEW` of the server's clock, as AWS requires (so a captured request cannot be
replayed later). The steps follow AWS's "Create a signed AWS API request" guide; the
test vectors are botocore's own signatures (tests/api/test_sigv4.py).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "rekognition"
# AWS refuses a request signed more than 5 minutes from its clock ("Signature expired").
MAX_SKEW = timedelta(minutes=5)
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)
_SPACES = re.compile(r"\s+")


class SignatureError(Exception):
    """A request whose signature cannot be accepted. ``kind`` is the AWS error type:
    MissingAuthenticationTokenException, IncompleteSignatureException,
    UnrecognizedClientException or InvalidSignatureException."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class SignedRequest:
    """What the server received, as the canonical request needs it."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Credential:
    access_key_id: str
    date: str
    region: str
    service: str


def _header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in headers if k.lower() == name]
    return ",".join(values) if values else None


def parse(request: SignedRequest) -> tuple[Credential, list[str], str, datetime]:
    """The Authorization header's parts and the request time (SignatureError)."""
    auth = _header(request.headers, "authorization")
    if not auth:
        raise SignatureError("MissingAuthenticationTokenException", "Missing Authentication Token")
    found = _AUTH.match(auth.strip())
    if found is None:
        raise SignatureError(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' "
            f"with the {ALGORITHM} algorithm.",
        )
    parts = found["credential"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise SignatureError("IncompleteSignatureException", "Credential is malformed.")
    credential = Credential(parts[0], parts[1], parts[2], parts[3])
    if credential.service != SERVICE:
        raise SignatureError(
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: '{SERVICE}'.",
        )
    signed = found["signed"].split(";")
    # What the request is (its operation) and every header of faceverify's own (the
    # consent of an IndexFaces) must be signed: an unsigned one could be changed or
    # added by anyone who captured the request (a captured IndexFaces given consent).
    required = {"host", "x-amz-target"} | {
        k.lower() for k, _ in request.headers if k.lower().startswith("x-faceverify-")
    }
    if missing := sorted(required - set(signed)):
        raise SignatureError(
            "InvalidSignatureException",
            "SignedHeaders must include " + ", ".join(missing) + ".",
        )
    if signed != sorted(signed):
        raise SignatureError("InvalidSignatureException", "SignedHeaders must be sorted.")
    stamp = _header(request.headers, "x-amz-date")
    if not stamp:
        raise SignatureError("IncompleteSignatureException", "X-Amz-Date is missing.")
    try:
        when = datetime.strptime(stamp.strip(), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError("IncompleteSignatureException", "X-Amz-Date is malformed.") from None
    if when.strftime("%Y%m%d") != credential.date:
        raise SignatureError(
            "InvalidSignatureException", "Credential date does not match X-Amz-Date."
        )
    return credential, signed, found["signature"], when


def canonical_request(request: SignedRequest, signed: list[str]) -> str:
    headers = []
    for name in signed:
        value = _header(request.headers, name)
        if value is None:
            raise SignatureError(
                "InvalidSignatureException", f"The signed header {name!r} is missing."
            )
        headers.append(f"{name}:{_SPACES.sub(' ', value.strip())}\n")
    return "\n".join(
        [
            request.method,
            quote(request.path or "/", safe="/~"),
            _canonical_query(request.query),
            "".join(headers),
            ";".join(signed),
            hashlib.sha256(request.body).hexdigest(),
        ]
    )


def _canonical_query(query: str) -> str:
    pairs = []
    for part in filter(None, query.split("&")):
        name, _, value = part.partition("=")
        pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def signing_key(secret: str, credential: Credential) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (credential.date, credential.region, credential.service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signature(
    secret: str, request: SignedRequest, signed: list[str], when: datetime, c: Credential
) -> str:
    scope = f"{c.date}/{c.region}/{c.service}/aws4_request"
    digest = hashlib.sha256(canonical_request(request, signed).encode()).hexdigest()
    to_sign = "\n".join([ALGORITHM, when.strftime("%Y%m%dT%H%M%SZ"), scope, digest])
    return hmac.new(signing_key(secret, c), to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Pending:
    """A request whose headers passed (a known credential, a current date): its body
    is still to be read and the signature checked (:func:`confirm`)."""

    credential: Credential
    signed: list[str]
    given: str
    when: datetime
    secret: str


def authenticate(
    request: SignedRequest,
    secret_for: Callable[[str], str | None],
    now: datetime | None = None,
) -> Pending:
    """The header checks, before any of the body is read: the Authorization header's
    form, a known access key id, a request time within :data:`MAX_SKEW`."""
    credential, signed, given, when = parse(request)
    secret = secret_for(credential.access_key_id)
    if secret is None:
        raise SignatureError(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    moment = now or datetime.now(UTC)
    if abs(moment - when) > MAX_SKEW:
        raise SignatureError(
            "InvalidSignatureException",
            f"Signature expired: {when:%Y%m%dT%H%M%SZ} is now earlier than "
            f"{moment - MAX_SKEW:%Y%m%dT%H%M%SZ} ({moment:%Y%m%dT%H%M%SZ} - 5 min.)"
            if when < moment
            else f"Signature not yet current: {when:%Y%m%dT%H%M%SZ} is still later than "
            f"{moment + MAX_SKEW:%Y%m%dT%H%M%SZ} ({moment:%Y%m%dT%H%M%SZ} + 5 min.)",
        )
    return Pending(credential, signed, given, when, secret)


def confirm(pending: Pending, request: SignedRequest) -> str:
    """The access key id, once the signature over the whole request (its body too)
    is the one the secret makes; InvalidSignatureException otherwise."""
    expected = signature(pending.secret, request, pending.signed, pending.when, pending.credential)
    if not hmac.compare_digest(expected, pending.given):
        raise SignatureError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
        )
    return pending.credential.access_key_id


def verify(
    request: SignedRequest,
    secret_for: Callable[[str], str | None],
    now: datetime | None = None,
) -> str:
    """The access key id of a correctly signed, current request; SignatureError
    otherwise. ``secret_for``: the secret of an access key id (None: unknown)."""
    return confirm(authenticate(request, secret_for, now), request)
