"""The privacy commands (issue 27; docs/PRIVACY.md): the audit trail, the retention
purge, collection schedules, and the encryption key."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.common import or_exit
from app.settings import RETENTION_DAYS_MAX, Settings

audit_cli = typer.Typer(help="The audit trail: verify its hash chain, export it, prune it.")
encryption_cli = typer.Typer(help="Embeddings encrypted at rest: a new key, key rotation.")
collections_cli = typer.Typer(help="A collection's retention schedule and consent rule.")


def _offline(settings: Settings, *, rotating: bool = False) -> Any:
    from app.service.build import offline

    return or_exit(lambda: offline(settings, rotating=rotating))


def _when(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        typer.echo(f"faceverify: {option} {text!r} is not an ISO 8601 time", err=True)
        raise typer.Exit(2) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cli_event(settings: Settings, tools: Any, action: str, **fields: Any) -> None:
    """Record a command's read of biometric data (the trail on)."""
    from app.privacy.events import AuditDraft
    from app.privacy.trail import AuditTrail

    if not settings.audit_trail:
        return
    draft = AuditDraft(action, request_id="cli", client="cli", **fields)
    or_exit(lambda: AuditTrail(tools.gallery.database).write([draft.row(0, None)]))


@audit_cli.command("verify")
def audit_verify(
    expect: Annotated[
        str | None,
        typer.Option(
            help="POSITION:CHAIN printed by an earlier run (kept outside the database): "
            "the chain must still pass through it."
        ),
    ] = None,
) -> None:
    """Seal what is unsealed, recompute the hash chain from its anchor, and name the
    first event that was changed, removed or reordered (exit 1)."""
    from app.privacy.trail import AuditTrail

    settings = or_exit(Settings)
    store = _offline(settings)
    trail = AuditTrail(store.gallery.database)
    pinned = None
    if expect is not None:
        position, _, chain = expect.partition(":")
        if not position.isdigit() or len(chain) != 64:
            typer.echo("faceverify: --expect takes POSITION:CHAIN (64 hex digits)", err=True)
            raise typer.Exit(2)
        pinned = (int(position), chain)
    trail.drain_spool()  # what processes that died left beside the database
    or_exit(trail.seal)
    verdict = or_exit(lambda: trail.verify(expect=pinned))
    spool = trail.spool_status()
    if not verdict.ok:
        typer.echo(f"FAILED: {verdict.problem}")
        raise typer.Exit(1)
    typer.echo(
        f"ok: {verdict.events} events chained, positions {verdict.first_position + 1}.."
        f"{verdict.last_position} (earlier ones pruned)"
        if verdict.first_position
        else f"ok: {verdict.events} events chained, positions 1..{verdict.last_position}"
    )
    typer.echo(f"head {verdict.last_position}:{verdict.head_chain}")
    for line in verdict.notes:
        typer.echo(f"note: {line}")
    if verdict.unsealed:
        typer.echo(f"({verdict.unsealed} events written since are not sealed yet)")
    if spool is not None and spool.pending:
        typer.echo(
            f"({spool.pending} events wait in spool files beside the database; they are "
            "moved in once the database takes them)"
        )
    if spool is not None and spool.rejected:
        typer.echo(
            f"WARNING: {spool.rejected} spooled lines were not events as faceverify spools "
            f"them (torn by a crash, or altered) and were set aside, outside the chain, in "
            f"{spool.rejected_file}: inspect them"
        )
    store.close()


@audit_cli.command("export")
def audit_export(
    file: Annotated[Path, typer.Argument(help="JSON Lines, one event a line; - for stdout.")],
    since: Annotated[str | None, typer.Option(help="ISO 8601: events from then on.")] = None,
) -> None:
    """Write the audit events (oldest first) as JSON Lines."""
    from app.privacy.trail import AuditTrail

    settings = or_exit(Settings)
    start = _when(since, "--since")
    store = _offline(settings)
    trail = AuditTrail(store.gallery.database)
    out = sys.stdout if str(file) == "-" else or_exit(lambda: file.open("w"))
    count = 0
    for event in trail.export(since=start):
        out.write(json.dumps(event) + "\n")
        count += 1
    if out is not sys.stdout:
        out.close()
        typer.echo(f"exported {count} audit events to {file}")
    cli_event(settings, store, "export", detail={"audit_events": count})
    store.close()


@audit_cli.command("prune")
def audit_prune(
    days: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=RETENTION_DAYS_MAX,
            help="Keep this many days (default AUDIT_RETENTION_DAYS).",
        ),
    ] = None,
) -> None:
    """Remove audit events older than the retention, keeping the chain verifiable."""
    from datetime import timedelta

    from app.privacy.trail import AuditTrail

    settings = or_exit(Settings)
    keep = days if days is not None else settings.audit_retention_days
    if not keep:
        typer.echo("faceverify: no retention: pass --days or set AUDIT_RETENTION_DAYS", err=True)
        raise typer.Exit(2)
    store = _offline(settings)
    before = datetime.now(UTC) - timedelta(days=keep)
    removed = or_exit(lambda: AuditTrail(store.gallery.database).prune(before=before))
    typer.echo(f"pruned {removed} audit events older than {before:%Y-%m-%d %H:%M} UTC")
    store.close()


def purge(
    now: Annotated[
        str | None,
        typer.Option(help="ISO 8601: purge as of this time instead of now (tests, planning)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="List what is due; delete nothing.")] = False,
) -> None:
    """Delete every subject past its expiry or its collection's retention, each with its
    audit event; running servers drop them before their next search."""
    settings = or_exit(Settings)
    moment = _when(now, "--now")
    store = _offline(settings)
    retention = store.retention
    if dry_run:
        due = or_exit(lambda: retention.due(now=moment))
        for collection, subject_id in due:
            typer.echo(f"{collection}\t{subject_id}")
        typer.echo(f"{len(due)} subjects due")
    else:
        deleted = or_exit(lambda: retention.purge(now=moment, request_id="cli"))
        typer.echo(f"purged {deleted} subjects")
    store.close()


def _whole(text: str) -> int | str:
    """A whole number of days, as written (ASCII digits); else the text (refused)."""
    return int(text) if text.isascii() and text.isdigit() else text


@collections_cli.command("schedule")
def collections_schedule(
    collection: Annotated[str, typer.Argument(help="The collection id.")],
    retention_days: Annotated[
        str | None, typer.Option(help="Days after last use, or 'none' to keep until deleted.")
    ] = None,
    consent_required: Annotated[
        bool | None, typer.Option("--consent-required/--no-consent-required")
    ] = None,
) -> None:
    """Set (or show) a collection's retention schedule and consent rule."""
    from app.privacy.events import cli_draft
    from app.privacy.rules import checked_retention_days

    settings = or_exit(Settings)
    store = _offline(settings)
    changes: dict[str, Any] = {}
    if retention_days is not None:
        days = None if retention_days == "none" else _whole(retention_days)
        try:  # the API's bounds (issue 37: 0 expired everyone, 5000000 broke verify)
            changes["retention_days"] = checked_retention_days(days)
        except ValueError as exc:
            typer.echo(f"faceverify: --retention-days: {exc}", err=True)
            raise typer.Exit(2) from exc
    if consent_required is not None:
        changes["consent_required"] = consent_required
    if changes:
        if settings.audit_trail:
            cli_draft("update_collection")
        or_exit(lambda: store.collections.update(collection=collection, changes=changes))
    record = or_exit(lambda: store.collections.get(collection=collection))
    days = record.retention_days
    typer.echo(
        f"{record.id}: retention {f'{days} days after last use' if days else 'none'}, "
        f"consent {'required' if record.consent_required else 'not required'}"
    )
    store.close()


@encryption_cli.command("new-key")
def encryption_new_key() -> None:
    """Print a fresh key (base64 of 32 random bytes) for FACEVERIFY_ENCRYPTION_KEY."""
    from app.gallery.crypto import new_key

    typer.echo(new_key())


@encryption_cli.command("rotate")
def encryption_rotate(
    seal_plaintext: Annotated[
        bool,
        typer.Option(
            help="Also seal plaintext rows in a gallery already sealed with a key: only "
            "if they predate turning encryption on (a gallery never rotated since)."
        ),
    ] = False,
    delete_left: Annotated[
        bool,
        typer.Option(
            help="Delete the rows that do not open (slipped in, changed, or moved to "
            "another subject), each as a delete_face audit event."
        ),
    ] = False,
) -> None:
    """Rewrite every embedding with the current key (older keys in
    ENCRYPTION_OLD_KEYS, plain rows too); with no key set, decrypt every row."""
    from app.privacy.rotation import rotate_encryption

    settings = or_exit(Settings)
    store = _offline(settings, rotating=True)
    done, left, plain = or_exit(lambda: rotate_encryption(store.gallery, seal_plain=seal_plaintext))
    or_exit(lambda: store.erasure.erased([]))
    cli_event(settings, store, "rotate_encryption", detail={"faces": done, "left": len(left)})
    cipher = store.gallery.sealing.cipher
    key = cipher.current if cipher is not None else "none (plain)"
    typer.echo(f"rewrote {done} embeddings with key {key}")
    if plain:
        typer.echo(
            f"{len(plain)} of them were stored in plaintext (faces {_some(plain)}): rows "
            "written before the key was set; every one is now sealed and used"
        )
    if left and delete_left:
        _delete_faces(settings, store, left)
        typer.echo(f"deleted {len(left)} rows that do not open (each an audit event)")
        left = []
    store.close()
    if left:
        typer.echo(
            f"WARNING: {len(left)} rows were left as they are: they do not open (plaintext "
            "in a gallery sealed with a key, changed, moved to another subject, or of a key "
            f"not given), so they were not written by faceverify: faces {_some(left)}. They "
            "are never used. Rows slipped in: run again with --delete-left; plaintext rows "
            "from before encryption was turned on: run again with --seal-plaintext.",
            err=True,
        )
        raise typer.Exit(1)


def _subject_id(store: Any, collection: str, text: str) -> str:
    """The subject ``text`` names: itself if stored so (an id stored before issue 37 that
    the API cannot address stays reachable here), else as the API reads it (NFKC:
    "ｅｘｐ" is "exp"), so an access or erasure request from the command line finds
    whom the API would."""
    from app.errors import SubjectNotFound
    from app.gallery.ids import nfkc

    try:
        store.gallery.subjects.get(collection=collection, subject_id=text)
        return text
    except SubjectNotFound:
        return str(nfkc(text))


def _some(ids: list[str]) -> str:
    return ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")


def _delete_faces(settings: Settings, store: Any, face_ids: list[str]) -> None:
    from sqlalchemy import select

    from app.errors import FaceVerifyError
    from app.gallery.models import Face
    from app.privacy.events import cli_draft

    with store.gallery.database.engine.connect() as conn:
        owners = conn.execute(
            select(Face.id, Face.collection_id, Face.subject_id).where(Face.id.in_(face_ids))
        ).all()
    for face_id, collection, subject_id in owners:
        if settings.audit_trail:
            cli_draft("delete_face")
        try:
            store.subjects.delete_face(
                collection=collection, subject_id=subject_id, face_id=face_id
            )
        except FaceVerifyError as exc:
            typer.echo(f"faceverify: face {face_id}: {exc.detail}", err=True)


subjects_cli = typer.Typer(help="One subject: export what is held about them, delete them.")
CollectionOpt = Annotated[str, typer.Option(help="The collection.")]


@subjects_cli.command("export")
def subjects_export(
    subject_id: Annotated[
        str, typer.Argument(help="The subject's id (read as the API reads it: NFKC).")
    ],
    file: Annotated[Path, typer.Argument(help="Where to write the JSON; - for stdout.")],
    collection: CollectionOpt = "default",
    include_embeddings: Annotated[bool, typer.Option(help="Add the embeddings.")] = False,
) -> None:
    """Everything held about one person (an access request), as GET
    /subjects/{id}/export gives it."""
    from app.api.routes.privacy import export_out
    from app.privacy.access import subject_export
    from app.privacy.trail import AuditTrail

    settings = or_exit(Settings)
    store = _offline(settings)
    subject_id = _subject_id(store, collection, subject_id)
    audit = AuditTrail(store.gallery.database) if settings.audit_trail else None
    found = or_exit(
        lambda: subject_export(
            store.gallery,
            audit,
            collection=collection,
            subject_id=subject_id,
            embeddings=include_embeddings,
        )
    )
    cli_event(
        settings,
        store,
        "export_subject",
        collection=collection,
        subjects=[subject_id],
        detail={"include_embeddings": include_embeddings},
    )
    text = export_out(found).model_dump_json(indent=2)
    if str(file) == "-":
        typer.echo(text)
    else:
        or_exit(lambda: file.write_text(text + "\n"))
        typer.echo(f"exported {subject_id} ({len(found.faces)} faces) to {file}")
    store.close()


@subjects_cli.command("delete")
def subjects_delete(
    subject_id: Annotated[
        str, typer.Argument(help="The subject's id (read as the API reads it: NFKC).")
    ],
    collection: CollectionOpt = "default",
) -> None:
    """Delete a subject and every embedding of it, erased from the database's files and
    this machine's index snapshots (an erasure request); running servers drop it before
    their next search."""
    from app.privacy.events import cli_draft

    settings = or_exit(Settings)
    store = _offline(settings)
    subject_id = _subject_id(store, collection, subject_id)
    if settings.audit_trail:
        cli_draft("delete_subject", success_status=0)
    faces = or_exit(lambda: store.subjects.delete(collection=collection, subject_id=subject_id))
    typer.echo(f"deleted {subject_id} ({faces} faces) from {collection}")
    store.close()
