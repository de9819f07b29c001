"""Model sessions made ahead on threads while `faceverify serve` imports (issue 41)."""

from __future__ import annotations

import threading

import pytest

from app.face import ahead, dlib_resnet, yunet
from app.settings import Settings


def test_what_was_made_ahead_is_taken_once_then_made_anew() -> None:
    threads: list[str] = []

    def make() -> object:
        threads.append(threading.current_thread().name)
        return object()

    ahead.ahead(("test", 1), make)
    ahead.ahead(("test", 1), make)  # started once
    first = ahead.made(("test", 1), make)
    second = ahead.made(("test", 1), make)  # no one shares a session made for another
    assert first is not second
    assert threads == ["model-ahead", threading.current_thread().name]


def test_an_error_ahead_is_raised_where_the_session_is_taken() -> None:
    def broken() -> object:
        raise OSError("the model file went away")

    ahead.ahead(("test", 2), broken)
    with pytest.raises(OSError, match="went away"):
        ahead.made(("test", 2), object)


@pytest.mark.model
def test_the_pipeline_takes_the_sessions_serve_started_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`serve` (one worker) starts the ResNet's and YuNet's sessions on threads after
    `prepare`; the pipeline built in the lifespan makes none of its own."""
    from app.face.registry import build_pipeline, load_ahead, load_checked_weights, prepare

    made: list[str] = []
    for module in (dlib_resnet, yunet):
        original = module._session

        def counted(*args: object, _original=original) -> object:  # type: ignore[no-untyped-def]
            made.append(threading.current_thread().name)
            return _original(*args)

        monkeypatch.setattr(module, "_session", counted)
    settings = Settings(detect_fallback="yunet")
    weights = load_checked_weights(settings)
    prepare(settings, weights)
    load_ahead(settings, weights)
    pipeline = build_pipeline(settings, weights)
    assert made == ["model-ahead", "model-ahead"]
    assert pipeline.detector.yunet is not None
    pipeline.warm()
