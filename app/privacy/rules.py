"""The privacy rules, once (issues 27 and 37): when a subject is due for deletion, what
a consent must be, what a retention schedule may be. Called from inside the write's
transaction (app/gallery/unit.py) wherever a subject is written, and by the reads that
keep a due subject from matching."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.errors import ConsentRequired, InvalidRequest, SubjectExpired
from app.gallery import CollectionPolicy, Consent, SubjectRecord, SubjectTimes, utc
from app.settings import RETENTION_DAYS_MAX


def due_at(times: SubjectTimes, retention_days: int | None) -> datetime | None:
    """When a subject is due for deletion: its expiry, or ``retention_days`` after its
    last use (its creation if never used), whichever comes first; None: never."""
    due = [utc(times.expires_at)] if times.expires_at is not None else []
    if retention_days is not None:
        used = times.last_used_at or times.created_at
        due.append(utc(used) + timedelta(days=retention_days))
    return min(due, default=None)


# A consent given later than this ahead of the server's clock is refused (clock skew).
CONSENT_SKEW = timedelta(minutes=5)


def checked_retention_days(value: object) -> int | None:
    """``value`` if it is a retention schedule the API takes (None, or a whole number of
    days from 1 to RETENTION_DAYS_MAX; not true, not "5"); else ValueError."""
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= RETENTION_DAYS_MAX:
        raise ValueError(
            f"retention_days is a whole number of days from 1 to {RETENTION_DAYS_MAX}, or none"
        )
    return value


def checked_consent(consent: Consent, now: datetime) -> Consent:
    """``consent`` if it was given no later than now; else ValueError (issue 37: a
    consent dated 2999 was stored)."""
    consent_not_ahead(consent.given_at, now)
    if not consent.reference.strip() or len(consent.reference) > 256:
        raise ValueError("consent.reference is 1 to 256 characters")
    return consent


def consent_not_ahead(given_at: datetime, now: datetime | None = None) -> datetime:
    """A consent time no later than ``now`` (the API's validator); else ValueError."""
    if utc(given_at) > (now or datetime.now(UTC)) + CONSENT_SKEW:
        raise ValueError("consent cannot be given in the future")
    return given_at


def is_due(times: SubjectTimes, retention_days: int | None, now: datetime) -> datetime | None:
    """When the subject became due, if it is due at ``now``; else None."""
    due = due_at(times, retention_days)
    return due if due is not None and utc(now) >= due else None


def times_of(subject: SubjectRecord) -> SubjectTimes:
    return SubjectTimes(subject.created_at, subject.last_used_at, subject.expires_at)


def retention_days(days: int | None) -> int | None:
    """The API's bounds on a retention schedule, for every caller (the CLI too):
    InvalidRequest otherwise."""
    try:
        return checked_retention_days(days)
    except ValueError as exc:
        raise InvalidRequest(f"{exc}.") from exc


def consent_record(consent: Consent, now: datetime) -> dict[str, str]:
    """``consent`` as stored, if it is one the API takes (InvalidRequest)."""
    try:
        return checked_consent(consent, now).as_json()
    except ValueError as exc:
        raise InvalidRequest(f"{exc}.") from exc


def require_consent(
    policy: CollectionPolicy, collection: str, consent: Consent | None, *, held: bool
) -> None:
    """ConsentRequired when the collection requires consent and neither the request
    (``consent``) nor the subject (``held``: it has a consent stored) has it."""
    if policy.consent_required and consent is None and not held:
        raise ConsentRequired.for_collection(collection)


def enrollment_rules(
    subject: SubjectRecord | None,
    policy: CollectionPolicy,
    collection: str,
    consent: Consent | None,
    now: datetime,
) -> dict[str, str] | None:
    """The rules an enrollment meets where it commits (``subject``: the one it adds
    to, None for a new one): no adding to a subject past its retention (decided in the
    transaction: checked before the photos were read, it could become due meanwhile;
    issue 37), and consent where the collection requires it (not dated in the future).
    Returns the consent to store (None: keep the subject's)."""
    if subject is not None and (due := is_due(times_of(subject), policy.retention_days, now)):
        raise SubjectExpired.for_subject(subject.id, due)
    stored = consent_record(consent, now) if consent is not None else None
    require_consent(policy, collection, consent, held=bool(subject and subject.consent))
    return stored


def import_rules(
    collection: str,
    policy: CollectionPolicy,
    wanted: set[str],
    existing: dict[str, SubjectTimes],
    consent: Consent | None,
    now: datetime,
) -> dict[str, str] | None:
    """What an import of faces for ``wanted`` subjects meets where /enroll would refuse
    (issue 37), checked in its transaction before anything is written: no faces for a
    subject past its retention or expiry (SubjectExpired), no new subject without
    consent where the collection requires it (ConsentRequired). Returns the consent to
    store with the new subjects."""
    expired = sorted(
        (subject_id, due)
        for subject_id, times in existing.items()
        if subject_id in wanted and (due := is_due(times, policy.retention_days, now))
    )
    if expired:
        first, due = expired[0]
        raise SubjectExpired(
            f"{len(expired)} subjects of the file are past their retention in {collection!r} "
            f"(first {first!r}, due {due.isoformat()}): they no longer match, so no faces "
            "are added to them. Run `faceverify purge` first (then they are created anew), "
            "or leave them out of the file; nothing was stored.",
            subject_id=first,
            due_at=due.isoformat(),
        )
    if wanted - existing.keys():
        require_consent(policy, collection, consent, held=False)
    return consent_record(consent, now) if consent is not None else None
