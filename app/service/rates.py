"""The decision rates a request is held to (issue 36): its collection's, or the server's
default, and a request may only ask for a stricter one."""

from __future__ import annotations

from app.errors import RateNotStricter
from app.privacy.retention import Retention
from app.settings import Settings


class Rates:
    """/identify's false-positive identification rate and /verify's largest false match
    rate, per collection (read with its retention policy, once per gallery version)."""

    def __init__(self, settings: Settings, retention: Retention) -> None:
        self.settings = settings
        self.retention = retention

    def identify_fpir(self, collection: str, requested: float | None) -> float:
        """The FPIR an identify decides at: the request's, if no looser than the
        collection's (RateNotStricter), else the collection's or the server's."""
        own = self.retention.policy(collection).identify_fpir
        allowed = self.settings.identify_fpir if own is None else own
        return _stricter("fpir", requested, allowed)

    def verify_max_fmr(
        self, collection: str, requested: float | None, version: int | None = None
    ) -> float | None:
        """The largest false match rate a verify accepts: the request's, if no looser
        than the collection's (RateNotStricter); None: the threshold's own. ``version``:
        the gallery version just read (no second read of it)."""
        allowed = self.retention.policy(collection, version).verify_max_fmr
        if allowed is None:
            return requested
        return _stricter("max_fmr", requested, allowed)


def _stricter(field: str, requested: float | None, allowed: float) -> float:
    if requested is None:
        return allowed
    if requested > allowed:
        raise RateNotStricter(
            f"{field}={requested:g} is looser than this collection's {allowed:g}: a request "
            "may only ask for a stricter rate (an admin sets the collection's with PATCH "
            "/collections).",
            field=field,
            requested=requested,
            allowed=allowed,
        )
    return requested
