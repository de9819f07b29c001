"""Scoring by curve: which calibration curve scores a distance, at which threshold, and
the match it gives."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from app.errors import InvalidRequest
from app.face.registry import curve_fingerprint
from app.face.views import CURVES, FAST
from app.scoring.calibration import Calibration, matched_threshold
from app.scoring.openset import FAR, NEIGHBOURS, OpenSetDecision
from app.service.results import Match, ProbeFace
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

    def small(self, *probes: ProbeFace | None) -> bool:
        """Whether a comparison of these probes is scored as one of a face too small to
        enroll (app/scoring/calibration.py SmallProbe): the smallest face decides."""
        eyes = [p.measures.inter_eye for p in probes if p is not None]
        return bool(eyes) and self.calibration.is_small(min(eyes))

    def match(
        self,
        distance: float,
        prior: float | None,
        curve: str = FAST,
        max_fmr: float | None = None,
        *,
        small: bool = False,
    ) -> Match:
        """The decision and the calibrated percent for ``distance`` on ``curve``; with
        ``max_fmr`` the threshold is also no looser than the distance at that false
        match rate (:meth:`threshold_for_fmr`); ``small``: the probe's face is too small
        to enroll (:meth:`small`), which makes the percent less sure, not the decision
        looser."""
        calibration = self.curve(curve)
        threshold = self.threshold(calibration.name)
        if max_fmr is not None:
            threshold = min(threshold, self.threshold_for_fmr(calibration.name, max_fmr))
        threshold = calibration.decision_threshold(threshold, small=small)
        return Match(
            distance=round(distance, 6),
            score=calibration.percent(distance, prior, small=small),
            match=distance <= threshold,
            threshold=threshold,
            fmr=calibration.fmr(distance),
            curve=calibration.name,
            max_fmr=max_fmr,
            small_probe=small,
        )

    def threshold_for_fmr(self, curve: str, rate: float) -> float:
        """The distance at which ``curve``'s impostor pairs reach the false match rate
        ``rate``, rounded down. InvalidRequest when the calibration cannot support so
        low a rate (or has no impostor counts at all)."""
        found = self.curve(curve).distance_for_max_fmr(rate)
        if found is None or not found[1]:
            raise InvalidRequest(
                f"max_fmr={rate:g} is below what this calibration's impostor pairs can "
                "support; ask for a larger max_fmr."
            )
        return math.floor(found[0] * 10_000) / 10_000

    def open_set(
        self,
        distances: list[float],
        subjects: int,
        fpir: float,
        prior: float | None,
        curve: str,
        within_threshold: bool,
        small: bool = False,
    ) -> OpenSetDecision:
        """Whether a search of ``subjects`` whose nearest subjects lie at ``distances``
        names the nearest (app/scoring/openset.py), at the false-positive
        identification rate ``fpir``; never when the nearest fails the 1:1 threshold
        (``within_threshold``). A calibration file without an open-set rule decides by
        the nearest distance alone, at the 1:1 false match rate fpir / N."""
        calibration = self.curve(curve)
        rule = calibration.open_set
        distances = _neighbours(distances, subjects)
        if rule is not None:
            decision = rule.decide(np.asarray(distances), subjects, fpir, prior)
            # Never more sure that the nearest is the person than that the pair is one
            # person (the 1:1 curve at the same prior): it cannot be the person otherwise.
            # Clipped as the percent is (0.1-99.9%: no search makes anything certain).
            pair = float(calibration.probability(distances[0], prior, small=small))
            if decision.probability is not None:
                low, high = calibration.clip_low / 100, calibration.clip_high / 100
                clipped = min(max(min(decision.probability, pair), low), high)
                decision = replace(decision, probability=clipped)
        else:
            decision = self._nearest_distance(calibration, distances, subjects, fpir, prior)
        if not within_threshold and decision.supported:
            return replace(decision, named=False, reason="outside_1to1_threshold")
        return decision

    def _nearest_distance(
        self,
        calibration: Calibration,
        distances: list[float],
        subjects: int,
        fpir: float,
        prior: float | None,
    ) -> OpenSetDecision:
        """The fallback rule: name the nearest when it is closer than the distance at
        which one comparison's false match rate is 1 - (1 - fpir)^(1/N)."""
        rate = -math.expm1(math.log1p(-fpir) / max(subjects, 1))
        found = calibration.distance_for_max_fmr(rate)
        supported = found is not None and found[1]
        named = bool(supported and found is not None and distances and distances[0] <= found[0])
        return OpenSetDecision(
            named=named,
            probability=None,
            prior=calibration.prior if prior is None else prior,
            fpir=fpir,
            subjects=subjects,
            supported=supported,
            rule=f"nearest-distance/{calibration.version}",
            curve=calibration.name,
            reason=None
            if named
            else ("below_open_set_threshold" if supported else "fpir_unsupported"),
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


def _neighbours(distances: list[float], subjects: int) -> list[float]:
    """The nearest subjects' distances as the rule may read them. Fewer than NEIGHBOURS
    from a collection that has more subjects (expired ones were left out, or a distance
    was not finite and is dropped) are filled with the last one found, not with FAR: a
    gap the rule would read as a wide margin must not be made up. Only a collection of
    fewer than NEIGHBOURS subjects is filled with FAR (the rule's own padding,
    app/scoring/openset.py features). A nearest that is not finite counts as FAR."""
    first = distances[0] if distances and math.isfinite(distances[0]) else FAR
    out = [first] + [d for d in distances[1:] if math.isfinite(d)]
    while len(out) < min(NEIGHBOURS, subjects):
        out.append(out[-1])
    return out
