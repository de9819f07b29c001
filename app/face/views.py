"""Augmented views of a face: the fixed set of crops a thorough embedding averages over.

A face's fast embedding averages two encoder passes, its aligned chip and the chip's
mirror image. A thorough one (enrollment templates, and probes with ``mode=thorough``)
averages more: the chip cut a little larger or smaller, turned a few degrees, shifted,
each with its mirror. dlib's model reaches its published LFW accuracy by averaging 100
randomly jittered copies; these views are a fixed list instead, so the same photo always
gives the same template (benchmarks/augment_views.py measured the list on lfw-devtrain).

Each view is cut from the photo itself (not from the 150 px chip), so a larger crop sees
real pixels around the face rather than a border.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class View:
    """One crop, relative to the encoder's standard alignment.

    Attributes:
        scale: the crop's side against the standard one (above 1: more around the face).
        angle: turned by this many degrees.
        dx, dy: the crop's centre moved by this fraction of its side, along the chip's
            own axes (dx right, dy down).
        mirror: flipped left to right after cutting.
    """

    scale: float = 1.0
    angle: float = 0.0
    dx: float = 0.0
    dy: float = 0.0
    mirror: bool = False

    @property
    def crop(self) -> tuple[float, float, float, float]:
        """What is cut from the photo (the mirror is applied afterwards)."""
        return (self.scale, self.angle, self.dx, self.dy)


STANDARD = View()
# The fast embedding: the chip and its mirror (what every face had before templates).
FAST_VIEWS = (STANDARD, View(mirror=True))

# The template recipe, in order: ``FACEVERIFY_TEMPLATE_VIEWS`` = n takes the first n (the
# chip and its mirror first, so a template's first two views are the fast embedding's).
# Measured on lfw-devtrain's identity-split pairs (benchmarks/augment_views.py,
# docs/ACCURACY.md): crops a little larger and smaller help most, shifted ones a little;
# turning the crop by 3 or 6 degrees did not (the alignment already levels the eyes).
# The default takes 10: the five scales and their mirrors.
RECIPE: tuple[View, ...] = tuple(
    v
    for crop in (
        STANDARD,
        View(scale=0.94),
        View(scale=1.06),
        View(scale=0.88),
        View(scale=1.12),
        View(dx=-0.025),
        View(dx=0.025),
        View(dy=-0.025),
        View(dy=0.025),
    )
    for v in (crop, View(*crop.crop, mirror=True))
)
MAX_VIEWS = len(RECIPE)

# What a stored face's pipeline version ends with when its embedding is a template of
# several views ("/tpl-views16"); a face without it was embedded the fast way.
TEMPLATE_MARK = "/tpl-"
FAST = "fast"
# Which calibration curve scores a distance: by how many of its two sides were embedded
# with the template recipe (a thorough probe is embedded as a template is).
CURVES = ("fast", "mixed", "thorough")


def recipe_views(n: int) -> tuple[View, ...]:
    """The first ``n`` views of the recipe (2: the chip and its mirror)."""
    if not 2 <= n <= MAX_VIEWS:
        raise ValueError(f"a template has 2 to {MAX_VIEWS} views, not {n}")
    return RECIPE[:n]


def recipe_name(n: int) -> str:
    """What a face made with ``n`` views records: ``fast`` for the chip and its mirror."""
    return FAST if n <= 2 else f"views{n}"


def versioned(pipeline_version: str, recipe: str) -> str:
    """The pipeline version a face made with ``recipe`` is stored with."""
    return pipeline_version if recipe == FAST else f"{pipeline_version}{TEMPLATE_MARK}{recipe}"


def recipe_of(pipeline_version: str) -> str:
    """The template recipe a stored face's pipeline version names (faces stored before
    templates existed name none: ``fast``)."""
    _, mark, recipe = pipeline_version.partition(TEMPLATE_MARK)
    return recipe if mark else FAST


def curve_for(recipe_a: str, recipe_b: str) -> str:
    """The calibration curve for a distance between embeddings of these two recipes."""
    return CURVES[(recipe_a != FAST) + (recipe_b != FAST)]


# What each curve scores, for /info and the docs.
CURVE_USES = {
    "fast": "two fast embeddings: /compare in fast mode, and fast probes against faces "
    "enrolled without templates",
    "mixed": "a fast probe against an enrollment template (the default for /verify and "
    "/identify), or a thorough probe against a face enrolled without templates",
    "thorough": "two templates: a thorough probe against an enrollment template, and "
    "/compare in thorough mode",
}
