"""The collections migration (0003) on a database made by the previous schema (0002),
with data in it: nothing lost, every face still verifies, keys keep their reach. SQLite
and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from app.errors import SubjectNotFound
from app.gallery import Gallery
from app.keys import KeyStore, digest
from app.settings import Settings
from tests.fakes import face, fake_image, unit_vector
from tests.helpers import service_on

SUBJECTS = {"ann": [1, 11], "bob": [2], "cy": []}  # subject -> seeds of its faces


@pytest.fixture(params=["sqlite", "postgres"])
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database at schema 0002, filled as the previous release would have."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
        yield from _filled(url)
        return
    from tests.helpers import fresh_postgres_database

    databases = fresh_postgres_database()
    yield from _filled(next(databases))
    next(databases, None)


def _filled(url: str) -> Iterator[str]:
    store = Gallery.connect(url)
    assert store.database.migrate("0002") == "0002"
    now = datetime.now(UTC)
    face_ids: dict[str, list[str]] = {}
    with store.database.engine.begin() as conn:
        version = 0
        for subject, seeds in SUBJECTS.items():
            conn.execute(
                text(
                    "INSERT INTO subjects (id, name, metadata, created_at) "
                    "VALUES (:id, :name, NULL, :now)"
                ),
                {"id": subject, "name": subject.title(), "now": now},
            )
            for seed in seeds:
                version += 1
                fid = str(uuid.uuid4())
                face_ids.setdefault(subject, []).append(fid)
                conn.execute(
                    text(
                        "INSERT INTO faces (id, subject_id, embedding, box_left, box_top, "
                        "box_right, box_bottom, detector_score, encoder, pipeline_version, "
                        "created_at) VALUES (:id, :s, :e, 10, 10, 110, 110, 1.0, 'fake', "
                        "'fake-1', :now)"
                    ),
                    {"id": fid, "s": subject, "e": unit_vector(seed).tobytes(), "now": now},
                )
                conn.execute(
                    text(
                        "INSERT INTO gallery_events (version, kind, subject_id, face_id) "
                        "VALUES (:v, 'add_face', :s, :f)"
                    ),
                    {"v": version, "s": subject, "f": fid},
                )
        conn.execute(text("UPDATE gallery_state SET version = :v"), {"v": version})
        for key, scopes in (
            ("old-verify-key-0123456789", "verify"),
            ("old-admin-key-01234", "admin"),
        ):
            conn.execute(
                text(
                    "INSERT INTO api_keys (id, name, prefix, key_sha256, scopes, created_at) "
                    "VALUES (:id, :name, :prefix, :sha, :scopes, :now)"
                ),
                {
                    "id": str(uuid.uuid4()),
                    "name": scopes,
                    "prefix": key[:10],
                    "sha": digest(key),
                    "scopes": scopes,
                    "now": now,
                },
            )
        conn.execute(
            text(
                "INSERT INTO idempotency_records (owner, key, request_sha256, subject_id, "
                "face_ids, created_at) VALUES ('o', 'k', 'h', 'bob', :ids, :now)"
            ),
            {"ids": f'["{face_ids["bob"][0]}"]', "now": now},
        )
    store.close()
    yield url


def test_an_old_database_moves_into_the_default_collection(
    old_database: str, tmp_path: Path
) -> None:
    store = Gallery.open(old_database)
    assert store.database.schema_revision() == "0009"
    settings = Settings(data_dir=tmp_path)
    service = service_on(settings, store)
    try:
        (default,) = store.collections.all()
        assert (default.id, default.subjects, default.faces) == ("default", 3, 3)
        # Every face still verifies, against its own subject only.
        for subject, seeds in SUBJECTS.items():
            got = service.get_subject(collection="default", subject_id=subject)[0]
            assert (got.name, got.face_count) == (subject.title(), len(seeds))
            for seed in seeds:
                image = fake_image(face(seed))
                result = service.verify(collection="default", subject_id=subject, image=image)
                assert result.result.match and result.result.distance == 0.0
        assert (
            service.verify(
                collection="default", subject_id="ann", image=fake_image(face(2))
            ).result.match
            is False
        )
        hits = service.identify(collection="default", image=fake_image(face(11)))
        assert hits.best is not None and hits.best.subject_id == "ann"
        # The change log still replays: a second process starts from the migrated log.
        other = service_on(settings, Gallery.connect(old_database))
        service.delete_subject(collection="default", subject_id="bob")
        with pytest.raises(SubjectNotFound):
            other.verify(collection="default", subject_id="bob", image=fake_image(face(2)))
        other.close()
        # Keys keep their reach: a verify key saw the one gallery, now "default"; an
        # admin key still reaches every collection.
        keys = KeyStore(store.database, {})
        verify = keys.principal_for("old-verify-key-0123456789")
        admin = keys.principal_for("old-admin-key-01234")
        assert verify is not None and (verify.scopes, verify.collection) == (("verify",), "default")
        assert admin is not None and (admin.scopes, admin.collection) == (("admin",), None)
        record = store.idempotency.find(owner="o", key="k")
        assert record is not None and (record.collection, record.subject_id) == ("default", "bob")
    finally:
        store.close()


def test_the_head_revision_is_alembics_and_a_current_database_skips_alembic(
    tmp_path: Path,
) -> None:
    """A start on a database already at the newest schema does not load Alembic and its
    scripts (~0.2 s, twice a start: issue 41). HEAD_REVISION must follow the scripts."""
    import subprocess
    import sys

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from app.gallery.database import HEAD_REVISION, MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION
    url = f"sqlite:///{tmp_path / 'g.db'}"
    assert Gallery.open(url).database.schema_revision() == HEAD_REVISION
    opened = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from app.gallery import Gallery; "
            f"Gallery.open({url!r}); print('alembic' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert opened.stdout.strip() == "False"
