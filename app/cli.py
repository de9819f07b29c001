"""The ``faceverify`` command."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError

from app.errors import ModelFileError
from app.face.onnx_convert import DlibFormatError
from app.face.weights import WeightFile
from app.settings import Settings

T = TypeVar("T")
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

    settings = _or_exit(Settings)
    host = host or settings.host
    port = port or settings.port
    workers = workers or settings.workers
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    weights = _or_exit(lambda: _check_models(settings))
    if settings.encoder == "onnx":
        from app.face.weights import prepared_onnx_model

        # Convert once here, not in each worker at once.
        _or_exit(
            lambda: prepared_onnx_model(weights["dlib_resnet_v1"], settings.resolved_cache_dir())
        )
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


models_cli = typer.Typer(help="Model files: check them, prepare the ONNX encoder.")
cli.add_typer(models_cli, name="models")


@models_cli.command("check")
def models_check() -> None:
    """Locate the model files and check their sha256 against models/manifest.json."""
    settings = _or_exit(Settings)
    weights = _or_exit(lambda: _check_models(settings))
    for w in weights.values():
        typer.echo(f"ok  {w.name:20s} {w.sha256}  {w.path}")


@models_cli.command("prepare")
def models_prepare() -> None:
    """Convert dlib's ResNet to ONNX into the cache directory (done at first start
    otherwise), checked by sha256."""
    from app.face.weights import prepared_onnx_model

    settings = _or_exit(Settings)
    weights = _or_exit(lambda: _check_models(settings))
    path = _or_exit(
        lambda: prepared_onnx_model(weights["dlib_resnet_v1"], settings.resolved_cache_dir())
    )
    typer.echo(f"ok  onnx encoder  {path}")


def _or_exit(step: Callable[[], T]) -> T:
    try:
        return step()
    except (ModelFileError, DlibFormatError, OSError, ValidationError) as exc:
        typer.echo(f"faceverify: {getattr(exc, 'detail', exc)}", err=True)
        raise typer.Exit(2) from exc


def _check_models(settings: Settings) -> dict[str, WeightFile]:
    from app.face.weights import load_weights
    from app.scoring.calibration import Calibration

    weights = load_weights(settings.models_dir / "manifest.json", settings.weights_dir)
    Calibration.load(settings.resolved_calibration_file())
    return weights


@cli.command()
def bench(
    photos: Annotated[
        Path,
        typer.Option(
            help="Folder with obama.jpg, obama3.jpg, biden.jpg, two_people.jpg, obama2.jpg."
        ),
    ] = Path("tests/data"),
    repeats: Annotated[int, typer.Option(help="Timed runs per encoder/pipeline measurement.")] = 30,
    requests: Annotated[int, typer.Option(help="HTTP requests per photo and mode.")] = 80,
    clients: Annotated[int, typer.Option(help="Concurrent HTTP clients.")] = 8,
    sizes: Annotated[
        str, typer.Option(help="Gallery sizes for identify, comma-separated.")
    ] = "10000,100000,1000000",
    json_out: Annotated[Path | None, typer.Option(help="Also write the JSON report here.")] = None,
    skip_http: Annotated[bool, typer.Option(help="Skip the HTTP part.")] = False,
) -> None:
    """Measure encoder, pipeline, HTTP and 1:N speed; print a table and JSON."""
    from app import bench as bench_module

    bench_module.main(
        photos, repeats, requests, clients, [int(s) for s in sizes.split(",")], json_out, skip_http
    )


def main() -> None:
    cli(prog_name="faceverify")


if __name__ == "__main__":
    main()
