"""The ``faceverify`` command."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from app.errors import ModelFileError
from app.settings import Settings

cli = typer.Typer(help="faceverify: face verification service.", no_args_is_help=True)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (FACEVERIFY_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (FACEVERIFY_PORT).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (FACEVERIFY_WORKERS).")
    ] = None,
) -> None:
    """Start the HTTP service (OpenAPI docs at /docs)."""
    import uvicorn

    settings = Settings()
    host = host or settings.host
    port = port or settings.port
    workers = workers or settings.workers
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        _check_models(settings)
    except ModelFileError as exc:
        typer.echo(f"faceverify: cannot start: {exc.detail}", err=True)
        raise typer.Exit(2) from exc
    if workers > 1:
        # Worker processes build their own app from the environment; pass the CLI's
        # choices on through it.
        os.environ["FACEVERIFY_HOST"], os.environ["FACEVERIFY_PORT"] = host, str(port)
        uvicorn.run(
            "app.api.app:create_app_from_env", factory=True, host=host, port=port, workers=workers
        )
    else:
        from app.api.app import create_app

        uvicorn.run(create_app(settings), host=host, port=port)


@cli.command("check-models")
def check_models() -> None:
    """Locate the model files and check their sha256 against models/manifest.json."""
    settings = Settings()
    try:
        weights = _check_models(settings)
    except ModelFileError as exc:
        typer.echo(f"faceverify: {exc.detail}", err=True)
        raise typer.Exit(2) from exc
    for w in weights.values():
        typer.echo(f"ok  {w.name:20s} {w.sha256}  {w.path}")


def _check_models(settings: Settings) -> dict:
    from app.face.weights import load_weights
    from app.scoring.calibration import Calibration

    weights = load_weights(settings.models_dir / "manifest.json", settings.weights_dir)
    Calibration.load(settings.resolved_calibration_file())
    return weights


def main() -> None:
    cli(prog_name="faceverify")


if __name__ == "__main__":
    main()
