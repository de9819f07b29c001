"""Faces in bulk: `faceverify gallery import|export` and `faceverify enroll DIR`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.cpus import usable_cpus
from app.settings import Settings

if TYPE_CHECKING:
    from app.gallery.records import Consent

from app.cli.common import or_exit

gallery_cli = typer.Typer(help="The gallery: import and export embeddings in bulk.")


CollectionOption = Annotated[
    str, typer.Option(help="The collection to import into / export from (created if new).")
]

# The consent every subject a bulk command creates gave (`enroll DIR`, `gallery import`).
ConsentReferenceOption = Annotated[
    str | None,
    typer.Option(
        help="The consent every subject it creates gave (your document id or version); a "
        "collection that requires consent needs it."
    ),
]
ConsentGivenAtOption = Annotated[
    str | None, typer.Option(help="When they gave it (ISO 8601; default now).")
]


@gallery_cli.command("import")
def gallery_import(
    file: Annotated[Path, typer.Argument(help=".jsonl or .npz (see docs/SCALING.md).")],
    collection: CollectionOption = "default",
    consent_reference: ConsentReferenceOption = None,
    consent_given_at: ConsentGivenAtOption = None,
    snapshot: Annotated[
        bool,
        typer.Option(
            help="Then save the index snapshot the next start opens (a first start then "
            "loads in seconds, not by reading and indexing every face)."
        ),
    ] = True,
) -> None:
    """Add the faces of a file to a collection: all of them or, on any bad line, none.
    Where /enroll would refuse, so does the import: new subjects of a collection that
    requires consent need --consent-reference, and no faces go to a subject past its
    retention."""
    from tqdm import tqdm

    from app.face.registry import encoder_model
    from app.gallery.transfer import read_gallery_file
    from app.keys import COLLECTION_ID
    from app.privacy.events import AuditDraft
    from app.service.build import offline
    from app.service.transfer import import_faces

    settings = or_exit(Settings)
    if not COLLECTION_ID.match(collection):
        typer.echo(f"faceverify: {collection!r} is not a collection id", err=True)
        raise typer.Exit(2)
    consent = _consent(consent_reference, consent_given_at)
    spec = encoder_model(settings)
    started = time.perf_counter()
    data = or_exit(lambda: read_gallery_file(file, dim=spec.dim))
    # Into pgvector's table too, when there is one.
    store = or_exit(lambda: offline(settings, dim=spec.dim))
    or_exit(lambda: store.collections.ensure(collection=collection))
    with tqdm(total=len(data.subject_ids), unit="face", desc="import") as bar:
        stored, created, _ = or_exit(
            lambda: import_faces(
                store.gallery,
                collection=collection,
                subject_ids=data.subject_ids,
                embeddings=data.embeddings,
                names=data.names,
                encoder=spec.name,
                pipeline_version=f"import:{file.name}"[:128],
                progress=bar.update,
                audit=AuditDraft("import", request_id="cli", client="cli", success_status=0)
                if settings.audit_trail
                else None,
                consent=consent,
            )
        )
    elapsed = time.perf_counter() - started
    typer.echo(
        f"imported {stored} faces ({created} new subjects) into {collection} in "
        f"{elapsed:.1f} s ({stored / max(elapsed, 1e-9):,.0f} faces/s)"
    )
    if snapshot:
        say_snapshot(settings, store.gallery, spec)
    store.close()


def say_snapshot(settings: Settings, gallery: Any, spec: Any) -> None:
    """Save the index snapshot the next `faceverify serve` opens, and say what was done:
    a first start after an import then loads in seconds instead of reading and indexing
    every face (issue 41)."""
    from app.service.build import save_index_snapshot

    started = time.perf_counter()
    saved = or_exit(
        lambda: save_index_snapshot(settings, gallery, dim=spec.dim, encoders=spec.compatible)
    )
    if isinstance(saved, str):
        typer.echo(f"no index snapshot: {saved}")
        return
    typer.echo(
        f"index snapshot of version {saved.version} saved in {saved.folder} in "
        f"{time.perf_counter() - started:.1f} s: the next start opens it"
    )


@gallery_cli.command("export")
def gallery_export(
    file: Annotated[Path, typer.Argument(help=".jsonl or .npz")],
    collection: CollectionOption = "default",
) -> None:
    """Write every face of a collection (subject, face id, name, embedding)."""
    from app.cli.privacy import cli_event
    from app.gallery.models import embedding_matrix
    from app.gallery.transfer import write_gallery_file
    from app.service.build import offline
    from app.service.transfer import export_faces

    settings = or_exit(Settings)
    store = or_exit(lambda: offline(settings))
    faces, names, blobs = or_exit(lambda: export_faces(store.gallery, collection=collection))
    cli_event(
        settings,
        store,
        "export",
        collection=collection,
        subjects=sorted({f.subject_id for f in faces}),
        detail={"faces": len(faces), "file": file.name},
    )
    dim = len(blobs[0]) // 4 if blobs else 0
    matrix = or_exit(lambda: embedding_matrix(blobs, dim))  # refuses mixed sizes
    or_exit(
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
    consent_reference: ConsentReferenceOption = None,
    consent_given_at: ConsentGivenAtOption = None,
) -> None:
    """Enroll a folder of photos in bulk, with /enroll's rules; safe to re-run."""
    from tqdm import tqdm

    from app.bulk import enroll_folder, refusals_by_code, subjects_in, write_report
    from app.service import build_service

    settings = or_exit(Settings)
    if not folder.is_dir():
        typer.echo(f"faceverify: {folder} is not a folder", err=True)
        raise typer.Exit(2)
    total = sum(len(p) for p in subjects_in(folder).values())
    service, _ = or_exit(lambda: build_service(settings))
    or_exit(lambda: service.ensure_collection(collection=collection))
    started = time.perf_counter()
    with tqdm(total=total, unit="photo", desc="enroll") as bar:
        outcomes = enroll_folder(
            service,
            folder,
            collection=collection,
            workers=workers or usable_cpus(),
            progress=bar.update,
            upgrade=upgrade,
            consent=_consent(consent_reference, consent_given_at),
            max_bytes=settings.max_upload_bytes,
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
    service.close()


def _consent(reference: str | None, given_at: str | None) -> Consent | None:
    from datetime import UTC, datetime

    from app.gallery import Consent
    from app.privacy.rules import checked_consent

    if reference is None:
        if given_at is not None:
            typer.echo("faceverify: --consent-given-at needs --consent-reference", err=True)
            raise typer.Exit(2)
        return None
    now = when = datetime.now(UTC)
    if given_at is not None:
        try:
            when = datetime.fromisoformat(given_at)
        except ValueError as exc:
            typer.echo(f"faceverify: {given_at!r} is not an ISO 8601 time", err=True)
            raise typer.Exit(2) from exc
    try:  # the API's rules: no consent dated in the future, a reference of 1-256
        return checked_consent(
            Consent(reference, when if when.tzinfo else when.replace(tzinfo=UTC)), now
        )
    except ValueError as exc:
        typer.echo(f"faceverify: {exc}", err=True)
        raise typer.Exit(2) from exc
