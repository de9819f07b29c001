"""Scoring by curve: which calibration curve scores a distance, at which threshold, and
the match it gives."""

from __future__ import annotations

from app.face.registry import curve_fingerprint
from app.face.views import CURVES, FAST
from app.scoring.calibration import Calibration, matched_threshold
from app.service.results import Match
from app.settings import Settings


class Decisions:
    """The calibration's curves and the threshold each decides at."""

    def __init__(self, settings: Settings, calibration: Calibration, templates: bool) -> None:
        self.settings = settings
        self.calibration = calibration
        self.templates = templates
        self._thresholds = {
            name: matched_threshold(calibration, self.curve(name), settings.threshold)
            for name in CURVES
        }

    def curve(self, name: str) -> Calibration:
        """The calibration curve ``name``; the fast one when the file has no such curve
        (:meth:`calibration_matches_pipeline` is then False, and answers name the curve
        that scored them)."""
        return self.calibration.curve(name) or self.calibration

    def threshold(self, curve: str) -> float:
        """The decision threshold on ``curve``: FACEVERIFY_THRESHOLD on the fast curve;
        on the others the distance with the same false match rate on their calibration
        data (:func:`matched_threshold`)."""
        return self._thresholds[curve]

    def match(self, distance: float, prior: float | None, curve: str = FAST) -> Match:
        """The decision and the calibrated percent for ``distance`` on ``curve``."""
        calibration = self.curve(curve)
        threshold = self.threshold(calibration.name)
        return Match(
            distance=round(distance, 6),
            score=calibration.percent(distance, prior),
            match=distance <= threshold,
            threshold=threshold,
            fmr=calibration.fmr(distance),
            curve=calibration.name,
        )

    def curves_in_use(self) -> tuple[str, ...]:
        """The curves this configuration scores with: fast always (compare, and faces
        enrolled before templates); mixed and thorough once templates are on."""
        return CURVES if self.templates else (FAST,)

    def calibration_matches_pipeline(self) -> bool:
        """Whether every curve in use was fitted with this pipeline's settings (a
        provisional calibration matches nothing)."""
        return all(self.curve_matches(name) for name in self.curves_in_use())

    def curve_matches(self, name: str) -> bool:
        """Whether the file has curve ``name``, fitted with this pipeline's settings."""
        curve = self.calibration.curve(name)
        return curve is not None and curve.pipeline == curve_fingerprint(self.settings, name)
