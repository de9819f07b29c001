"""The one face-box type, used from the detector to the database to the JSON answer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """Pixel box in the decoded (upright) photo: left, top inclusive; right, bottom
    exclusive. A stdlib dataclass, so pydantic puts it in responses as it is."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def area(self) -> int:
        return max(self.width, 0) * max(self.height, 0)

    def scaled(self, factor: float) -> Box:
        """The same box in coordinates ``factor`` times larger."""
        return Box(*(int(round(v * factor)) for v in self.as_tuple()))

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.right, self.bottom)
