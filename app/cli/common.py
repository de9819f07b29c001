"""What the commands share: a clean exit on a bad setting or file, the model check."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from app.errors import FaceVerifyError
from app.face.onnx_convert import DlibFormatError
from app.face.weights import WeightFile
from app.settings import Settings

if TYPE_CHECKING:
    pass


T = TypeVar("T")


def or_exit(step: Callable[[], T]) -> T:
    try:
        return step()
    except (
        FaceVerifyError,  # a model file, a missing subject, an encryption key refused
        DlibFormatError,
        OSError,
        ValidationError,
        ValueError,
        SQLAlchemyError,
    ) as exc:
        typer.echo(f"faceverify: {getattr(exc, 'detail', exc)}", err=True)
        raise typer.Exit(2) from exc


def check_models(settings: Settings) -> dict[str, WeightFile]:
    from app.face.registry import load_checked_weights
    from app.scoring.calibration import Calibration

    weights = load_checked_weights(settings)
    Calibration.load(settings.resolved_calibration_file())
    return weights
