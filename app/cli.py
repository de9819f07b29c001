"""The ``faceverify`` command."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from app.cpus import usable_cpus
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
    from app.api.observability import configure_logging

    configure_logging(settings.log_format)
    weights = _or_exit(lambda: _check_models(settings))
    _or_exit(lambda: _first_admin_key(settings))
    from app.face.registry import prepare

    # The encoder's one-time work (the ONNX conversion) here, not in each worker at once.
    _or_exit(lambda: prepare(settings, weights))
    if workers > 1:
        # Worker processes build their own app from the environment; pass the CLI's
        # choices on through it.
        os.environ["FACEVERIFY_HOST"], os.environ["FACEVERIFY_PORT"] = host, str(port)
        uvicorn.run(
            "app.api.app:create_app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=False,  # faceverify logs each request itself, with its request id
            log_config=None,
        )
    else:
        from app.api.app import create_app

        uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_config=None)


models_cli = typer.Typer(help="Model files: check them, prepare the ONNX encoder.")
cli.add_typer(models_cli, name="models")


@models_cli.command("check")
def models_check(
    photo: Annotated[
        Path | None,
        typer.Option(help="Also run the whole pipeline on this photo (a deployment's smoke test)."),
    ] = None,
) -> None:
    """Locate the model files and check their sha256 against the manifest; with
    --photo, load the models and embed the photo's faces too (exit 1 if none is found)."""
    settings = _or_exit(Settings)
    weights = _or_exit(lambda: _check_models(settings))
    for w in weights.values():
        where = f"ONNX conversion in {settings.resolved_cache_dir()}" if w.prepared_only else w.path
        typer.echo(f"ok  {w.name:20s} {w.sha256}  {where}")
    if photo is None:
        return
    from app.face.registry import build_pipeline
    from app.face.timing import Timings

    pipeline = _or_exit(lambda: build_pipeline(settings, weights))
    data = _or_exit(photo.read_bytes)
    faces = _or_exit(lambda: pipeline.find_faces(data, Timings()))
    if not faces:
        typer.echo(f"faceverify: no face found in {photo}", err=True)
        raise typer.Exit(1)
    embeddings = pipeline.embed(faces, Timings())
    typer.echo(
        f"ok  {photo.name}: {len(faces)} face(s), {embeddings.shape[1]}-d embeddings "
        f"({pipeline.encoder_name})"
    )


@models_cli.command("prepare")
def models_prepare() -> None:
    """Do the encoder model's one-time work (convert dlib's ResNet to ONNX into the cache
    directory; done at first start otherwise), checked by sha256."""
    from app.face.registry import prepare

    settings = _or_exit(Settings)
    weights = _or_exit(lambda: _check_models(settings))
    _or_exit(lambda: prepare(settings, weights))
    typer.echo(
        f"ok  {settings.model} ({settings.encoder}) prepared in {settings.resolved_cache_dir()}"
    )


keys_cli = typer.Typer(help="API keys: create, list, revoke.")
cli.add_typer(keys_cli, name="keys")


def _key_store(settings: Settings, *, create: bool) -> Any:
    """The key table. ``create``: make the database and its schema if need be (creating a
    key writes); otherwise the database is only read, never migrated."""
    from app.gallery.store import GalleryStore
    from app.keys import KeyStore, parse_env_keys

    env_keys = parse_env_keys(settings.api_keys.get_secret_value())
    url = settings.resolved_database_url()
    store = GalleryStore.open(url) if create else GalleryStore(url)
    if store.schema_revision() is None:
        typer.echo(
            "faceverify: the database has no faceverify schema yet; start the server or run "
            "`faceverify db upgrade` first",
            err=True,
        )
        raise typer.Exit(2)
    return KeyStore(store.engine, env_keys)


@keys_cli.command("create")
def keys_create(
    scope: Annotated[str, typer.Option(help="enroll, verify, admin, joined by +.")],
    name: Annotated[str, typer.Option(help="What the key is for.")],
    collection: Annotated[
        str | None,
        typer.Option(
            help="The collection the key sees and changes (created if new). Default: "
            "'default'; an admin key without it may address every collection."
        ),
    ] = None,
) -> None:
    """Create a key and print it once (only its sha256 is stored)."""
    from app.keys import COLLECTION_ID, parse_scopes

    settings = _or_exit(Settings)
    scopes = _or_exit(lambda: parse_scopes(scope))
    if collection is not None and not COLLECTION_ID.match(collection):
        typer.echo(f"faceverify: {collection!r} is not a collection id", err=True)
        raise typer.Exit(2)
    key, record = _or_exit(
        lambda: _key_store(settings, create=True).create(
            name=name, scopes=scopes, collection=collection
        )
    )
    where = f"collection {record.collection}" if record.collection else "every collection"
    typer.echo(
        f"{key}\n(id {record.id}, scopes {'+'.join(record.scopes)}, {where}; shown only now)"
    )


@keys_cli.command("list")
def keys_list() -> None:
    """The keys in the database: id, prefix, scopes, name, revoked or not."""
    settings = _or_exit(Settings)
    store = _or_exit(lambda: _key_store(settings, create=False))
    for k in store.list():
        state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
        where = k.collection or "*"
        typer.echo(
            f"{k.id}  {k.prefix}...  {'+'.join(k.scopes):20s} {where:16s} {state:18s} {k.name}"
        )
    if store.env_keys:
        typer.echo(f"(and {len(store.env_keys)} key(s) from FACEVERIFY_API_KEYS)")


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (keys list).")]) -> None:
    """Revoke a key: it stops working at once."""
    settings = _or_exit(Settings)
    if not _or_exit(lambda: _key_store(settings, create=False).revoke(key_id=key_id)):
        typer.echo(f"faceverify: no active key with id {key_id}", err=True)
        raise typer.Exit(2)
    typer.echo(f"revoked {key_id}")


gallery_cli = typer.Typer(help="The gallery: import and export embeddings in bulk.")
cli.add_typer(gallery_cli, name="gallery")
CollectionOption = Annotated[
    str, typer.Option(help="The collection to import into / export from (created if new).")
]


@gallery_cli.command("import")
def gallery_import(
    file: Annotated[Path, typer.Argument(help=".jsonl or .npz (see docs/SCALING.md).")],
    collection: CollectionOption = "default",
) -> None:
    """Add the faces of a file to a collection: all of them or, on any bad line, none."""
    from tqdm import tqdm

    from app.face.registry import encoder_model
    from app.gallery.store import GalleryStore
    from app.gallery.transfer import read_gallery_file
    from app.keys import COLLECTION_ID
    from app.service.build import enable_vectors

    settings = _or_exit(Settings)
    if not COLLECTION_ID.match(collection):
        typer.echo(f"faceverify: {collection!r} is not a collection id", err=True)
        raise typer.Exit(2)
    spec = encoder_model(settings)
    started = time.perf_counter()
    data = _or_exit(lambda: read_gallery_file(file, dim=spec.dim))
    store = _or_exit(lambda: GalleryStore.open(settings.resolved_database_url()))
    enable_vectors(store, settings, spec.dim)  # into pgvector's table too, when there is one
    _or_exit(lambda: store.ensure_collection(collection=collection))
    with tqdm(total=len(data.subject_ids), unit="face", desc="import") as bar:
        stored, created, _ = _or_exit(
            lambda: store.import_faces(
                collection=collection,
                subject_ids=data.subject_ids,
                embeddings=data.embeddings,
                names=data.names,
                encoder=spec.name,
                pipeline_version=f"import:{file.name}"[:128],
                progress=bar.update,
            )
        )
    elapsed = time.perf_counter() - started
    typer.echo(
        f"imported {stored} faces ({created} new subjects) into {collection} in "
        f"{elapsed:.1f} s ({stored / max(elapsed, 1e-9):,.0f} faces/s)"
    )
    store.close()


@gallery_cli.command("export")
def gallery_export(
    file: Annotated[Path, typer.Argument(help=".jsonl or .npz")],
    collection: CollectionOption = "default",
) -> None:
    """Write every face of a collection (subject, face id, name, embedding)."""
    from app.gallery.models import embedding_matrix
    from app.gallery.store import GalleryStore
    from app.gallery.transfer import write_gallery_file

    settings = _or_exit(Settings)
    store = _or_exit(lambda: GalleryStore.open(settings.resolved_database_url()))
    faces, names, blobs = _or_exit(lambda: store.export_faces(collection=collection))
    dim = len(blobs[0]) // 4 if blobs else 0
    matrix = _or_exit(lambda: embedding_matrix(blobs, dim))  # refuses mixed sizes
    _or_exit(
        lambda: write_gallery_file(
            file,
            subject_ids=[f.subject_id for f in faces],
            face_ids=[f.id for f in faces],
            names=names,
            embeddings=matrix,
        )
    )
    typer.echo(f"exported {len(faces)} faces of {collection} to {file}")
    store.close()


@cli.command()
def enroll(
    folder: Annotated[
        Path, typer.Argument(help="One sub-folder per subject (its name is the id).")
    ],
    collection: CollectionOption = "default",
    report: Annotated[
        Path | None, typer.Option(help="Where to list refused photos (.csv or .jsonl).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Subjects at once; default one per usable CPU.")] = 0,
    upgrade: Annotated[
        bool,
        typer.Option(
            help="Re-enroll: once a subject has a face of the current template recipe from "
            "these photos, delete its faces of other recipes (e.g. enrolled before templates)."
        ),
    ] = False,
) -> None:
    """Enroll a folder of photos in bulk, with /enroll's rules; safe to re-run."""
    from tqdm import tqdm

    from app.bulk import enroll_folder, refusals_by_code, subjects_in, write_report
    from app.service import build_service

    settings = _or_exit(Settings)
    if not folder.is_dir():
        typer.echo(f"faceverify: {folder} is not a folder", err=True)
        raise typer.Exit(2)
    total = sum(len(p) for p in subjects_in(folder).values())
    service, _ = _or_exit(lambda: build_service(settings))
    _or_exit(lambda: service.store.ensure_collection(collection=collection))
    started = time.perf_counter()
    with tqdm(total=total, unit="photo", desc="enroll") as bar:
        outcomes = enroll_folder(
            service,
            folder,
            collection=collection,
            workers=workers or usable_cpus(),
            progress=bar.update,
            upgrade=upgrade,
        )
    elapsed = time.perf_counter() - started
    statuses = ("enrolled", "skipped", "refused", "replaced")
    counts = {s: sum(o.status == s for o in outcomes) for s in statuses}
    photos = len(outcomes) - counts["replaced"]
    if report is not None:
        write_report(report, outcomes)
    by_code = ", ".join(f"{code} {n}" for code, n in refusals_by_code(outcomes).items())
    typer.echo(
        f"{counts['enrolled']} enrolled, {counts['skipped']} already there, "
        f"{counts['refused']} refused{f' ({by_code})' if by_code else ''}"
        f"{f', listed in {report}' if report else ''}"
        + (f", {counts['replaced']} older faces replaced" if upgrade else "")
        + f"; {photos} photos in {elapsed:.1f} s ({photos / max(elapsed, 1e-9):.1f}/s)"
    )
    service.store.close()


db_cli = typer.Typer(help="The database: schema migrations, the vector index.")
cli.add_typer(db_cli, name="db")


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations (serve does this at start too)."""
    from app.gallery.store import GalleryStore

    settings = _or_exit(Settings)
    store = _or_exit(lambda: GalleryStore.open(settings.resolved_database_url()))
    typer.echo(f"schema at revision {store.schema_revision()}")
    store.close()


@db_cli.command("rebuild-vector-index")
def db_rebuild_vector_index() -> None:
    """Rebuild pgvector's HNSW index with this version's parameters (after an upgrade
    that changed them; serve says so at start). Searches and writes go on meanwhile."""
    from app.gallery import pgvector
    from app.gallery.store import GalleryStore

    settings = _or_exit(Settings)
    store = _or_exit(lambda: GalleryStore.open(settings.resolved_database_url()))
    if store.engine.dialect.name != "postgresql":
        typer.echo("not PostgreSQL: there is no vector index to rebuild", err=True)
        raise typer.Exit(1)
    started = time.perf_counter()
    pgvector.rebuild_index(store.engine, settings.pgvector_build_memory_mb)
    typer.echo(
        f"rebuilt ix_face_vectors_hnsw ({pgvector.HNSW_OPTIONS}) in "
        f"{time.perf_counter() - started:.1f} s"
    )
    store.close()


def _first_admin_key(settings: Settings) -> None:
    """There is never a default key; on a first start with none, make one and say so."""
    store = _key_store(settings, create=True)
    if store.active_count():
        return
    key, _ = store.create(name="first admin key (made by faceverify serve)", scopes=("admin",))
    typer.echo(
        "\nfaceverify: no API key existed, so an admin key was created. It is shown only now:\n"
        f"\n    {key}\n\n"
        "Send it as the X-API-Key header (or Authorization: Bearer). Narrower keys:\n"
        "    faceverify keys create --scope verify --name my-kiosk\n"
    )


def _or_exit(step: Callable[[], T]) -> T:
    try:
        return step()
    except (
        ModelFileError,
        DlibFormatError,
        OSError,
        ValidationError,
        ValueError,
        SQLAlchemyError,
    ) as exc:
        typer.echo(f"faceverify: {getattr(exc, 'detail', exc)}", err=True)
        raise typer.Exit(2) from exc


def _check_models(settings: Settings) -> dict[str, WeightFile]:
    from app.face.registry import load_checked_weights
    from app.scoring.calibration import Calibration

    weights = load_checked_weights(settings)
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
    requests: Annotated[int, typer.Option(help="Sequential HTTP requests per photo.")] = 80,
    clients: Annotated[int, typer.Option(help="Concurrent HTTP clients.")] = 8,
    load_requests: Annotated[
        int, typer.Option(help="Requests per concurrent run (12 MP: a quarter).")
    ] = 400,
    sizes: Annotated[
        str, typer.Option(help="Gallery sizes for identify, comma-separated.")
    ] = "10000,100000,1000000",
    json_out: Annotated[Path | None, typer.Option(help="Also write the JSON report here.")] = None,
    skip_http: Annotated[bool, typer.Option(help="Skip the HTTP part.")] = False,
    workers: Annotated[
        int, typer.Option(help="Server worker processes (default: FACEVERIFY_WORKERS).")
    ] = 0,
) -> None:
    """Measure encoder, pipeline, HTTP and 1:N speed; print a table and JSON."""
    from app import bench as bench_module

    bench_module.main(
        photos,
        repeats,
        requests,
        clients,
        [int(s) for s in sizes.split(",")],
        json_out,
        skip_http,
        workers=workers or Settings().workers,
        load_requests=load_requests,
    )


@cli.command()
def evaluate(
    out: Annotated[Path, typer.Option(help="Folder for pairs.tsv, report.json and plots.")],
    pairs: Annotated[Path | None, typer.Option(help="LFW-style pairs file (View 1 or 2).")] = None,
    images: Annotated[
        Path | None, typer.Option(help="Image root for --pairs (NAME/NAME_NNNN.jpg).")
    ] = None,
    identities: Annotated[
        Path | None, typer.Option(help="Folder with one sub-folder per identity.")
    ] = None,
    different: Annotated[
        int, typer.Option(help="With --identities: different-identity pairs.")
    ] = 20_000,
    max_same: Annotated[int, typer.Option(help="With --identities: same pairs per identity.")] = 30,
    seed: Annotated[int, typer.Option(help="With --identities: sampling seed.")] = 0,
    mode: Annotated[
        str,
        typer.Option(
            help="fast: both photos as fast probes; thorough: both as enrollment templates; "
            "mixed: the first photo of each pair as a template, the second as a fast probe; "
            "all: the three from one pass (written to OUT/fast, OUT/thorough, OUT/mixed)."
        ),
    ] = "fast",
) -> None:
    """Accuracy and calibration of the service's pipeline on labelled pairs."""
    from app.evaluation import MODES, run_evaluate

    if mode not in (*MODES, "all"):
        typer.echo(f"faceverify: --mode must be one of {', '.join(MODES)} or all", err=True)
        raise typer.Exit(2)
    settings = _or_exit(Settings)
    pair_list, root = _pairs(pairs, images, identities, different, max_same, seed)
    modes = MODES if mode == "all" else tuple(m for m in MODES if m == mode)
    reports = run_evaluate(settings=settings, pairs=pair_list, root=root, out=out, modes=modes)
    for name, rep in reports.items():
        tf, cal = rep["ten_fold"], rep["calibration"]
        missing = "" if rep["curve"]["present"] else " (missing: the fast curve stood in)"
        typer.echo(
            f"mode {name}, curve {rep['curve']['name']}{missing}: "
            f"{rep['pairs']['total']} pairs, {rep['identities']} identities, "
            f"{rep['failure_to_acquire']['images_without_face']} images without a face\n"
            f"  accuracy at {rep['threshold']}: {100 * rep['accuracy_at_threshold']:.2f}%  "
            f"10-fold: {100 * tf['accuracy_mean']:.2f}% +- {100 * tf['accuracy_std']:.2f}  "
            f"EER {100 * rep['eer']['rate']:.2f}%\n"
            f"  calibration {cal['version']}: Brier {cal['brier']:.4f}, log loss "
            f"{cal['log_loss']:.4f}, ECE {cal['ece_10_equal_count_bins']:.4f}"
        )
    typer.echo(f"written to {out}/")


@cli.command()
def calibrate(
    pairs: Annotated[Path | None, typer.Option(help="LFW-style pairs file (View 1 or 2).")] = None,
    images: Annotated[Path | None, typer.Option(help="Image root for --pairs.")] = None,
    identities: Annotated[
        Path | None, typer.Option(help="Folder with one sub-folder per identity.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where to write; default the configured calibration file.")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Name of the data set, recorded in the file.")
    ] = None,
    different: Annotated[
        int, typer.Option(help="With --identities: different-identity pairs.")
    ] = 100_000,
    max_same: Annotated[int, typer.Option(help="With --identities: same pairs per identity.")] = 30,
    seed: Annotated[int, typer.Option(help="With --identities: sampling seed.")] = 0,
) -> None:
    """Fit the distance -> match percent curve on labelled pairs and write it."""
    from app.evaluation import run_calibrate

    settings = _or_exit(Settings)
    pair_list, root = _pairs(pairs, images, identities, different, max_same, seed)
    target = out or settings.resolved_calibration_file()
    content = _or_exit(
        lambda: run_calibrate(
            settings=settings,
            pairs=pair_list,
            root=root,
            out=target,
            data_name=name or root.name,
        )
    )
    held = content["fit"]["held_out"]
    if not held["folds"]:
        typer.echo(
            f"w={content['params']['w']:.4f} b={content['params']['b']:.4f}; "
            f"{held['note']}\nwritten to {target}"
        )
        return
    typer.echo(
        f"w={content['params']['w']:.4f} b={content['params']['b']:.4f} from "
        f"{content['data']['pairs']} pairs of {content['data']['identities']} identities\n"
        f"held-out identities: logistic log loss {held['logistic']['log_loss']:.4f} ECE "
        f"{held['logistic']['ece']:.4f}; isotonic log loss {held['isotonic']['log_loss']:.4f} "
        f"ECE {held['isotonic']['ece']:.4f}\nwritten to {target}"
    )


def _pairs(
    pairs: Path | None,
    images: Path | None,
    identities: Path | None,
    different: int,
    max_same: int,
    seed: int,
) -> tuple[list, Path]:
    from app.scoring.pairs import identity_pairs, read_lfw_pairs

    if identities and not pairs:
        return identity_pairs(
            identities, max_same_per_identity=max_same, different=different, seed=seed
        ), identities
    if pairs and images and not identities:
        return read_lfw_pairs(pairs, images), images
    typer.echo("faceverify: give either --pairs FILE --images DIR, or --identities DIR", err=True)
    raise typer.Exit(2)


def main() -> None:
    cli(prog_name="faceverify")


if __name__ == "__main__":
    main()
