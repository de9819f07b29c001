"""The ``faceverify`` command."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.accuracy import bench, calibrate, evaluate
from app.cli.common import check_models, or_exit
from app.cli.gallery import enroll, gallery_cli
from app.cli.privacy import audit_cli, collections_cli, encryption_cli, purge, subjects_cli
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

    settings = or_exit(Settings)
    host = host or settings.host
    port = port or settings.port
    workers = workers or settings.workers
    from app.logs import configure_logging

    configure_logging(settings.log_format)
    # With one worker, a restart's index snapshot hashes and the ONNX sessions load on
    # threads while this process imports the service (issue 41).
    if workers == 1:
        _prehash_snapshot(settings)
    weights = or_exit(lambda: check_models(settings))
    from app.face.registry import load_ahead, prepare

    # The encoder's one-time work (the ONNX conversion) here, not in each worker at once.
    or_exit(lambda: prepare(settings, weights))
    if workers == 1:
        or_exit(lambda: load_ahead(settings, weights))
    or_exit(lambda: _first_admin_key(settings))
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


def _prehash_snapshot(settings: Settings) -> None:
    """A restart's index snapshot hashed while the server imports and loads its models
    (app/vectors/snapshot.py prehash; issue 41). Only where a snapshot can be opened:
    the in-memory ANN index, without encryption at rest (which never keeps one)."""
    sealed = bool(settings.encryption_key.get_secret_value() or settings.encryption_key_file)
    if settings.memory_index != "ann" or settings.vector_search == "pgvector" or sealed:
        return
    from app.vectors.snapshot import prehash

    prehash(settings.resolved_index_dir())


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
    settings = or_exit(Settings)
    weights = or_exit(lambda: check_models(settings))
    for w in weights.values():
        where = f"ONNX conversion in {settings.resolved_cache_dir()}" if w.prepared_only else w.path
        typer.echo(f"ok  {w.name:20s} {w.sha256}  {where}")
    if photo is None:
        return
    from app.face.registry import build_pipeline
    from app.face.timing import Timings

    pipeline = or_exit(lambda: build_pipeline(settings, weights))
    data = or_exit(photo.read_bytes)
    faces = or_exit(lambda: pipeline.find_faces(data, Timings()))
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
    """Do the models' one-time work into the cache directory, checked by sha256: convert
    dlib's ResNet to ONNX, and save dlib's frontal face detector (done at first start
    otherwise)."""
    from app.face.registry import prepare

    settings = or_exit(Settings)
    weights = or_exit(lambda: check_models(settings))
    or_exit(lambda: prepare(settings, weights))
    typer.echo(
        f"ok  {settings.model} ({settings.encoder}) prepared in {settings.resolved_cache_dir()}"
    )


@cli.command()
def sbom(
    build: Annotated[
        Path | None,
        typer.Option(
            help="Image build only: the environment's CycloneDX BOM from cyclonedx-py, to "
            "which the model files are added; written to the SBOM's place."
        ),
    ] = None,
    install_report: Annotated[
        Path | None,
        typer.Option(help="With --build: pip's --report of the install, for the wheels' sha256."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="With --build: write here instead of the SBOM's place.")
    ] = None,
) -> None:
    """Print where this environment's SBOM (CycloneDX JSON) and licence list are. The
    image has both; an environment made by `make run` has neither (exit 1)."""
    from app.sbom import LICENSES_NAME, SBOM_NAME, SHARE_DIR, build_for, shipped_file

    if build is not None:
        settings = or_exit(Settings)
        target = out or SHARE_DIR / SBOM_NAME
        bom = or_exit(lambda: build_for(settings, build, install_report, target))
        typer.echo(f"wrote {target}: {len(bom['components'])} components")
        return
    found = {name: shipped_file(name) for name in (SBOM_NAME, LICENSES_NAME)}
    for name, path in found.items():
        typer.echo(f"{name:15s} {path or f'none in {SHARE_DIR} (the image has one)'}")
    if None in found.values():
        raise typer.Exit(1)


keys_cli = typer.Typer(help="API keys: create, list, revoke.")
cli.add_typer(keys_cli, name="keys")


def _key_store(settings: Settings, *, create: bool, aws: bool = False) -> Any:
    """The key table. ``create``: make the database and its schema if need be (creating a
    key writes); otherwise the database is only read, never migrated. ``aws``: make the
    credentials key file if no key seals AWS secrets yet."""
    from app.gallery import Database
    from app.keys import KeyStore, parse_env_keys, secret_box

    env_keys = parse_env_keys(settings.api_keys.get_secret_value())
    database = Database(settings.resolved_database_url())
    if create:
        database.migrate()
    if database.schema_revision() is None:
        typer.echo(
            "faceverify: the database has no faceverify schema yet; start the server or run "
            "`faceverify db upgrade` first",
            err=True,
        )
        raise typer.Exit(2)
    return KeyStore(database, env_keys, secret_box(settings, create=aws))


def _cli_draft(settings: Settings, action: str) -> None:
    """The command's write records its audit event in its transaction (the trail on)."""
    from app.privacy.events import cli_draft

    if settings.audit_trail:
        cli_draft(action, success_status=0)


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
    aws: Annotated[
        bool,
        typer.Option(
            "--aws",
            help="An AWS credential (access key id and secret) for the Rekognition-"
            "compatible API (docs/REKOGNITION.md); its secret is stored sealed.",
        ),
    ] = False,
) -> None:
    """Create a key and print it once (only its sha256 is stored; an AWS credential's
    secret is stored sealed, as SigV4 needs it)."""
    from app.keys import COLLECTION_ID, parse_scopes

    settings = or_exit(Settings)
    _cli_draft(settings, "create_key")
    scopes = or_exit(lambda: parse_scopes(scope))
    if collection is not None and not COLLECTION_ID.match(collection):
        typer.echo(f"faceverify: {collection!r} is not a collection id", err=True)
        raise typer.Exit(2)
    if aws:
        access_key_id, secret, record = or_exit(
            lambda: _key_store(settings, create=True, aws=True).create_aws(
                name=name, scopes=scopes, collection=collection
            )
        )
        where = f"collection {record.collection}" if record.collection else "every collection"
        typer.echo(
            f"aws_access_key_id = {access_key_id}\naws_secret_access_key = {secret}\n"
            f"(id {record.id}, scopes {'+'.join(record.scopes)}, {where}; the secret is "
            "shown only now)"
        )
        return
    key, record = or_exit(
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
    settings = or_exit(Settings)
    store = or_exit(lambda: _key_store(settings, create=False))
    for k in store.list():
        state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
        where = k.collection or "*"
        shown = k.access_key_id or f"{k.prefix}..."
        typer.echo(f"{k.id}  {shown}  {'+'.join(k.scopes):20s} {where:16s} {state:18s} {k.name}")
    if store.env_keys:
        typer.echo(f"(and {len(store.env_keys)} key(s) from FACEVERIFY_API_KEYS)")


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (keys list).")]) -> None:
    """Revoke a key: it stops working at once."""
    settings = or_exit(Settings)
    _cli_draft(settings, "revoke_key")
    if not or_exit(lambda: _key_store(settings, create=False).revoke(key_id=key_id)):
        typer.echo(f"faceverify: no active key with id {key_id}", err=True)
        raise typer.Exit(2)
    typer.echo(f"revoked {key_id}")


db_cli = typer.Typer(help="The database: schema migrations, the vector index.")
cli.add_typer(db_cli, name="db")


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations (serve does this at start too)."""
    from app.gallery import Database

    settings = or_exit(Settings)
    database = Database(settings.resolved_database_url())
    typer.echo(f"schema at revision {or_exit(database.migrate)}")
    database.close()


@db_cli.command("vacuum")
def db_vacuum(
    full: Annotated[
        bool, typer.Option(help="VACUUM FULL: rewrite the tables (locks them meanwhile).")
    ] = False,
) -> None:
    """Erase deleted embeddings from the database's files now: PostgreSQL's VACUUM of the
    tables that hold them; SQLite's WAL checkpoint."""
    from app.service.build import offline

    settings = or_exit(Settings)
    store = or_exit(lambda: offline(settings))
    started = time.perf_counter()
    if store.gallery.database.dialect == "postgresql":
        or_exit(lambda: store.erasure.vacuum(full=full))
    else:
        or_exit(lambda: store.erasure.erased([]))
    typer.echo(f"erased in {time.perf_counter() - started:.1f} s")
    store.close()


@db_cli.command("snapshot-index")
def db_snapshot_index() -> None:
    """Build the in-memory index's snapshot from the database now (after a restore, a
    migration, or for a new replica), so the next start opens it in seconds."""
    from app.cli.gallery import say_snapshot
    from app.face.registry import encoder_model
    from app.service.build import open_gallery

    settings = or_exit(Settings)
    gallery = or_exit(lambda: open_gallery(settings))
    try:
        say_snapshot(settings, gallery, encoder_model(settings))
    finally:
        gallery.close()


@db_cli.command("rebuild-vector-index")
def db_rebuild_vector_index() -> None:
    """Rebuild pgvector's HNSW index with this version's parameters (after an upgrade
    that changed them; serve says so at start). Searches and writes go on meanwhile."""
    from app.gallery import Gallery
    from app.vectors.pgvector import PgvectorSearch, sql

    settings = or_exit(Settings)
    gallery = or_exit(lambda: Gallery.open(settings.resolved_database_url()))
    if gallery.database.dialect != "postgresql":
        typer.echo("not PostgreSQL: there is no vector index to rebuild", err=True)
        raise typer.Exit(1)
    started = time.perf_counter()
    backend = PgvectorSearch(
        gallery, dim=0, encoders=(), build_memory_mb=settings.pgvector_build_memory_mb
    )
    backend.rebuild()
    typer.echo(
        f"rebuilt ix_face_vectors_hnsw ({sql.HNSW_OPTIONS}) in "
        f"{time.perf_counter() - started:.1f} s"
    )
    gallery.close()


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


def main() -> None:
    cli(prog_name="faceverify")


# The commands of the other modules (app/cli/*.py), registered in help's order.
cli.command()(enroll)
cli.command()(bench)
cli.command()(evaluate)
cli.command()(calibrate)
cli.add_typer(gallery_cli, name="gallery")
cli.command()(purge)
cli.add_typer(audit_cli, name="audit")
cli.add_typer(collections_cli, name="collections")
cli.add_typer(subjects_cli, name="subjects")
cli.add_typer(encryption_cli, name="encryption")
