"""FaceService: the use cases, each done by a collaborator with one job, and what the
entry points may ask of the running service. Knows nothing of HTTP.

- enroll: :class:`~app.service.enroll.Enrollment` (the rules in enrollment.py);
- verify, compare, identify: :class:`~app.service.matching.Matching`;
- detect and every probe's face: :class:`~app.service.probes.ProbeSteps`;
- subjects and collections: :class:`~app.service.records.SubjectRecords`,
  :class:`~app.service.collections.Collections`;
- retention, erasure, the audit trail, the access export: app/privacy;
- where identify searches: the vector backend (app/vectors) app/service/build.py picks;
- what only the Rekognition-compatible API does (IndexFaces, users...):
  ``service.rekognition``, a :class:`~app.service.rekognition.RekognitionFaces`.

Nothing outside this package reaches into a FaceService's parts: the entry points call
its methods.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.errors import NotReady
from app.face.pipeline import FacePipeline
from app.face.recipes import Recipes
from app.gallery import Gallery
from app.keys import KeyStore, Principal, secret_box
from app.privacy.access import SubjectExport, subject_export
from app.privacy.erasure import Erasure
from app.privacy.retention import Retention
from app.privacy.trail import AuditTrail
from app.scoring.calibration import Calibration
from app.service.collections import Collections
from app.service.decisions import Decisions
from app.service.enroll import Enrollment
from app.service.enrollment import EnrollmentRules
from app.service.gates import inference_slots
from app.service.matching import Matching
from app.service.probes import ProbeSteps
from app.service.rates import Rates
from app.service.records import SubjectRecords
from app.service.rekognition import RekognitionFaces
from app.service.subject_cache import SubjectReads
from app.service.upkeep import Upkeep
from app.settings import Settings
from app.vectors import VectorBackend


@dataclass(frozen=True)
class ModelNames:
    """Which model makes the embeddings, and how (every answer names them)."""

    encoder: str
    model: str
    pipeline_version: str
    # The template recipe new enrollments are made with.
    template: str


@dataclass(frozen=True)
class ServiceInfo:
    """What /info and the logs say of the running service."""

    names: ModelNames
    calibration_version: str
    calibration: dict[str, Any]
    curves: dict[str, dict[str, Any]]
    vector_search: str
    audit_trail: bool
    encryption_at_rest: bool


class FaceService:
    def __init__(
        self,
        *,
        settings: Settings,
        pipeline: FacePipeline,
        gallery: Gallery,
        calibration: Calibration,
        vectors: VectorBackend,
    ) -> None:
        """``vectors``: where identify searches (app/service/build.py picks it, and
        joins its write side to ``gallery``)."""
        self._settings = settings
        self._pipeline = pipeline
        self._gallery = gallery
        self._calibration = calibration
        self._vectors = vectors
        self._names = ModelNames(
            pipeline.encoder_name, pipeline.model, pipeline.version, pipeline.template
        )
        recipes = Recipes(pipeline, settings.threshold, settings.mirror_margin)
        self._decisions = Decisions(settings, calibration, recipes.templates)
        slots = inference_slots(settings)
        self._erasure = Erasure(
            gallery.database,
            vectors,
            vacuum_delay=settings.erase_vacuum_seconds,
            vacuum_full=settings.erase_vacuum_full,
        )
        self._retention = Retention(gallery, self._erasure)
        # The audit trail (app/privacy/trail.py); its writer starts with the upkeep.
        self._audit = (
            AuditTrail(gallery.database, fsync=settings.audit_fsync)
            if settings.audit_trail
            else None
        )
        self._upkeep: Upkeep | None = None
        probes = self._probes = ProbeSteps(settings, pipeline, recipes, slots)
        subjects = SubjectReads(gallery, dim=pipeline.dim, encoders=pipeline.compatible)
        rates = Rates(settings, self._retention)
        rules = EnrollmentRules(settings, gallery, self._decisions.threshold)
        enrollment = Enrollment(
            pipeline=pipeline,
            gallery=gallery,
            recipes=recipes,
            rules=rules,
            probes=probes,
            retention=self._retention,
            subjects=subjects,
            slots=slots,
        )
        matching = Matching(
            settings=settings,
            pipeline=pipeline,
            gallery=gallery,
            vectors=vectors,
            probes=probes,
            decisions=self._decisions,
            retention=self._retention,
            rates=rates,
            subjects=subjects,
        )
        # The Rekognition-compatible API's own use cases (app/api/rekognition).
        self.rekognition = RekognitionFaces(
            settings=settings,
            pipeline=pipeline,
            gallery=gallery,
            recipes=recipes,
            probes=probes,
            decisions=self._decisions,
            retention=self._retention,
            erasure=self._erasure,
            slots=slots,
        )
        records = SubjectRecords(gallery, self._erasure)
        collections = Collections(gallery, self._erasure, vectors)
        # The use cases, each from the collaborator that does it.
        self.enroll = enrollment.enroll
        self.verify = matching.verify
        self.compare = matching.compare
        self.identify = matching.identify
        self.identify_face = matching.identify_face
        self.detect = probes.detect
        self.get_subject = records.get
        self.list_subjects = records.page
        self.delete_subject = records.delete
        self.delete_face = records.delete_face
        self.create_collection = collections.create
        self.ensure_collection = collections.ensure
        self.update_collection = collections.update
        self.delete_collection = collections.delete
        self.list_collections = collections.list
        self.get_collection = collections.get
        self.collection_exists = collections.exists
        self.collection_deleted = collections.deleted
        self.require_collection = collections.require
        self.gallery_counts = collections.counts
        self.collection_face_counts = collections.face_counts
        # Calibration: the curves and thresholds of the decisions.
        self.curve = self._decisions.curve
        self.threshold = self._decisions.threshold
        self.curves_in_use = self._decisions.curves_in_use
        self.curve_matches = self._decisions.curve_matches
        self.calibration_matches_pipeline = self._decisions.calibration_matches_pipeline

    # ---- lifecycle -------------------------------------------------------------------
    def start_upkeep(self) -> None:
        """The audit writer; purge, prune and erase (app/service/upkeep.py)."""
        if self._upkeep is None:
            if self._audit is not None:
                self._audit.start()
            self._upkeep = Upkeep(self._settings, self._erasure, self._retention, self._audit)
            self._upkeep.start()

    def close(self) -> None:
        """Stop the background threads and close the gallery."""
        self.stop()
        self._gallery.close()

    def stop(self) -> None:
        """Stop the background threads (the gallery stays open)."""
        if self._upkeep is not None:
            self._upkeep.stop()
            self._upkeep = None
        if self._audit is not None:
            self._audit.close()

    @property
    def index_ready(self) -> threading.Event:
        """Set once identify can search (the start-up load is done)."""
        return self._vectors.ready

    def ready(self) -> None:
        """Raise NotReady unless the database answers (the models are loaded if this
        object exists)."""
        try:
            self._gallery.database.ping()
        except Exception as exc:  # noqa: BLE001 - any failure to answer is "not ready"
            raise NotReady(f"The database does not answer: {type(exc).__name__}") from exc

    # ---- what the entry points may ask -----------------------------------------------
    def info(self) -> ServiceInfo:
        """The models, the calibration and its curves, and how the gallery is kept."""
        cal = self._calibration
        curves = {
            name: {
                **self.curve(name).info(),
                "present": cal.curve(name) is not None,
                "matches_pipeline": self.curve_matches(name),
                "threshold": self.threshold(name),
            }
            for name in self.curves_in_use()
        }
        return ServiceInfo(
            names=self.names(),
            calibration_version=cal.version,
            calibration=cal.info(),
            curves=curves,
            vector_search=self._vectors.name,
            audit_trail=self._audit is not None,
            encryption_at_rest=self._gallery.sealing.cipher is not None,
        )

    def names(self) -> ModelNames:
        return self._names

    def audit_trail(self) -> AuditTrail | None:
        """The audit trail the entry points commit their events to (None: it is off)."""
        return self._audit

    def key_store(self, env_keys: Mapping[str, Principal]) -> KeyStore:
        """The API keys of this service's database (and those of the environment)."""
        settings = self._settings
        return KeyStore(
            self._gallery.database,
            dict(env_keys),
            secret_box(settings),
            reload=lambda: secret_box(settings),
        )

    def clock(self) -> datetime:
        """The service's time (retention's clock: tests move it)."""
        return self._retention.clock()

    def set_clock(self, clock: Any) -> None:
        self._retention.clock = clock

    def instance(self) -> str:
        """This database's random id (keys the bound keys' audit cursors)."""
        return self._gallery.changes.instance()

    def export_subject(
        self, *, collection: str, subject_id: str, embeddings: bool
    ) -> SubjectExport:
        """Everything the service holds about one subject (GDPR art. 15)."""
        return subject_export(
            self._gallery,
            self._audit,
            collection=collection,
            subject_id=subject_id,
            embeddings=embeddings,
            now=self.clock(),
        )
