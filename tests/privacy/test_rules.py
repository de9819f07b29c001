"""The privacy rules, once (app/privacy/rules.py): when a subject is due, what consent
must be, and what an enrollment or an import meets where it commits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.errors import ConsentRequired, InvalidRequest, SubjectExpired
from app.gallery import CollectionPolicy, Consent, SubjectRecord, SubjectTimes
from app.privacy.rules import (
    checked_retention_days,
    due_at,
    enrollment_rules,
    import_rules,
    is_due,
    require_consent,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CONSENT = Consent("form-7", NOW - timedelta(days=1))


def subject(**times: datetime | None) -> SubjectRecord:
    return SubjectRecord(
        "ann",
        None,
        None,
        times.get("created_at") or NOW - timedelta(days=100),
        1,
        last_used_at=times.get("last_used_at"),
        expires_at=times.get("expires_at"),
    )


def test_due_is_the_expiry_or_the_schedule_whichever_comes_first() -> None:
    made = NOW - timedelta(days=10)
    assert due_at(SubjectTimes(made, None, None), None) is None
    assert due_at(SubjectTimes(made, None, None), 30) == made + timedelta(days=30)
    used = NOW - timedelta(days=2)
    assert due_at(SubjectTimes(made, used, None), 30) == used + timedelta(days=30)
    soon = NOW + timedelta(days=1)
    assert due_at(SubjectTimes(made, used, soon), 30) == soon
    naive = made.replace(tzinfo=None)  # SQLite's times are naive UTC
    assert is_due(SubjectTimes(naive, None, None), 5, NOW) == made + timedelta(days=5)
    assert is_due(SubjectTimes(made, None, None), 30, NOW) is None


def test_a_retention_schedule_is_a_whole_number_of_days() -> None:
    assert checked_retention_days(None) is None and checked_retention_days(7) == 7
    for bad in (0, -1, True, "5", 5.0, 10**9):
        with pytest.raises(ValueError):
            checked_retention_days(bad)


def test_consent_is_needed_where_the_collection_requires_it() -> None:
    strict = CollectionPolicy(consent_required=True)
    with pytest.raises(ConsentRequired):
        require_consent(strict, "door", None, held=False)
    require_consent(strict, "door", None, held=True)  # the subject has it
    require_consent(strict, "door", CONSENT, held=False)
    require_consent(CollectionPolicy(), "door", None, held=False)


def test_an_enrollment_meets_the_rules_where_it_commits() -> None:
    strict = CollectionPolicy(retention_days=30, consent_required=True)
    assert enrollment_rules(None, strict, "door", CONSENT, NOW) == CONSENT.as_json()
    with pytest.raises(ConsentRequired):
        enrollment_rules(None, strict, "door", None, NOW)
    with pytest.raises(SubjectExpired):  # unused for 100 days on a 30-day schedule
        enrollment_rules(subject(), strict, "door", CONSENT, NOW)
    ahead = Consent("form-7", NOW + timedelta(days=1))
    with pytest.raises(InvalidRequest):
        enrollment_rules(None, strict, "door", ahead, NOW)


def test_an_import_meets_the_rules_of_enroll() -> None:
    strict = CollectionPolicy(retention_days=30, consent_required=True)
    fresh = SubjectTimes(NOW - timedelta(days=1), None, None)
    stale = SubjectTimes(NOW - timedelta(days=100), None, None)
    assert import_rules("door", strict, {"ann"}, {"ann": fresh}, None, NOW) is None
    with pytest.raises(ConsentRequired):  # a new subject without consent
        import_rules("door", strict, {"ann", "bob"}, {"ann": fresh}, None, NOW)
    with pytest.raises(SubjectExpired):
        import_rules("door", strict, {"ann"}, {"ann": stale}, CONSENT, NOW)
