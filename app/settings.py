"""The one settings object. Built once (``Settings()``) and passed in; nothing else
reads the environment. Every field can be set as ``FACEVERIFY_<NAME>``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.cpus import usable_cpus
from app.names import ENCODER_MODEL_NAMES, MAX_TEMPLATE_VIEWS

# manifest.json and calibration.json, shipped inside the package (package data), so a
# plain `pip install` has them; the repository's top-level models/ links here.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent / "models"


# The longest retention schedule (a century), of subjects and of the audit trail: past
# it, due dates overflowed the calendar and verify, identify and the purge failed (issue
# 37: the CLI took 5,000,000 days).
RETENTION_DAYS_MAX = 36_500


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACEVERIFY_", extra="ignore")

    # --- storage ---------------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="Folder for the SQLite gallery file.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default sqlite:///<data_dir>/faceverify.db.",
    )

    # Where identify searches. auto: in PostgreSQL with pgvector when the extension is
    # installed (replicas then hold no copy of the gallery), else in each process's
    # memory; memory: always in memory; pgvector: refuse to start without it.
    vector_search: Literal["auto", "memory", "pgvector"] = "auto"
    # The most memory (maintenance_work_mem, MB) one pgvector HNSW build may ask of the
    # database, after a bulk import or `faceverify db rebuild-vector-index`. A build
    # needs ~2 KB a face to stay in memory; past this ceiling it goes on disk and takes
    # several times longer (the log says so). Raise it for galleries past ~1M faces if
    # the database server has the memory.
    pgvector_build_memory_mb: int = Field(2048, ge=64)
    # How wide pgvector's HNSW search looks (hnsw.ef_search, 1-1000). 0: by the graph's
    # size, 200 up to 1.5M faces and in proportion past it (app/vectors/pgvector/sql.py);
    # wider is slower and finds the true nearest face more often.
    pgvector_ef_search: int = Field(0, ge=0, le=1000)
    # The in-memory index. ann: compact rows (~690 B a face against ~1.6 KB) searched
    # exactly below ANN_EXACT_BELOW faces a collection, by FAISS IVF-SQ8 candidates
    # re-ranked exactly above (app/vectors/ann.py); exact: a plain matrix, always exact.
    memory_index: Literal["ann", "exact"] = "ann"
    ann_exact_below: int = Field(1_000_000, ge=0)
    # Where the in-memory (ann) index of a large gallery is saved, so the worker
    # processes of one machine share one memory-mapped copy and a restart opens it
    # instead of rebuilding (app/vectors/snapshot.py). Default <data_dir>/index.
    index_dir: Path | None = None
    # Galleries with fewer faces are not saved (they load from the database in ~1 s).
    index_snapshot_min_faces: int = Field(200_000, ge=1)

    # --- model files -----------------------------------------------------------------
    models_dir: Path = Field(
        DEFAULT_MODELS_DIR, description="Folder holding manifest.json and calibration.json."
    )
    weights_dir: Path | None = Field(
        None,
        description="Folder with the dlib .dat files; default: the installed "
        "face_recognition_models package.",
    )
    cache_dir: Path | None = Field(
        None,
        description="Where the ONNX conversion and dlib's saved frontal detector are kept; "
        "default <data_dir>/cache.",
    )
    calibration_file: Path | None = Field(
        None, description="Calibration JSON; default <models_dir>/calibration.json."
    )

    # --- face pipeline ---------------------------------------------------------------
    # Detection runs on a copy whose longest side is at most this; HOG cost grows with
    # the pixel count. 800: every shared test photo (128 px to 2000x1428) gets its right
    # face count at 512-800 (1024 adds a false face), at a third of 1024's cost
    # (benchmarks/detection_sweep.py, docs/PERFORMANCE.md). HOG then finds faces of at
    # least ~10% of the photo's longest side.
    detect_max_side: int = Field(800, ge=64, le=8192)
    # Upsampling doubles the image before HOG looks (HOG's window is 80x80 px, so faces
    # under ~80 px are missed at 0). 0 = as is.
    detect_upsample: int = Field(0, ge=0, le=3)
    # When nothing is found, retry with one more upsampling step each time while the
    # upsampled longest side stays within this (keeps a no-face photo cheap). On the
    # 9,525 lfw-devtrain images: 0.48% missed without retry, 0.30% with, +0.6 ms/image.
    detect_retry_max_side: int = Field(1024, ge=0, le=8192)
    # When HOG still finds nothing, run dlib's CNN detector on a copy of at most this
    # side (0 = never). It found a face in all 15 lfw-devtrain View 1 images HOG missed,
    # at ~330 ms each; a photo with no face costs up to ~0.8 s more.
    detect_cnn_max_side: int = Field(400, ge=0, le=2048)
    # Which detector runs when HOG finds nothing: "yunet" (app/face/yunet.py: faces down
    # to ~20 px in a 640x480 frame, ~10 ms a pass, on a copy of at most
    # detect_yunet_max_side; where it sees no face the photo has none, so a face-less
    # photo skips the upsampled passes) or "cnn" (dlib's mmod, detect_cnn_max_side;
    # 0 there = none).
    detect_fallback: Literal["yunet", "cnn"] = "yunet"
    detect_yunet_max_side: int = Field(640, ge=64, le=4096)
    # The CNN fallback runs in this many child processes at the lowest CPU priority
    # (app/face/cnn.py): dlib's CNN holds the GIL for its whole call (~0.8 s on a photo
    # without a face), so in the server it stalled every request. Photos waiting for it
    # hold no inference slot; past one waiting a worker, 503 after inference_wait_seconds.
    detect_cnn_workers: int = Field(1, ge=1, le=16)
    # Probes (verify, identify, compare) are first searched on a copy of at most this
    # side, where HOG costs a quarter as much and finds faces of >= ~80/this of the
    # longest side; only when nothing is found there does the full search run.
    # Enrollment always runs the full search (it must see every face). 0 = off.
    detect_quick_side: int = Field(320, ge=0, le=8192)
    # dlib python_examples/face_recognition.py: jitters give "slightly more accurate"
    # embeddings at num_jitters times the encoder cost. 0 = none.
    num_jitters: int = Field(0, ge=0, le=100)
    # Average each face's embedding with its mirror image's (test-time augmentation):
    # one more encoder pass per face. See docs/ACCURACY.md for what it buys.
    flip_average: bool = True
    # Probes (verify, identify, compare) first embed the chip alone, and pay for the
    # mirror pass only when a distance lies within this of the threshold. On 58,427
    # lfw-devtrain identity-split pairs (benchmarks/flip_skip.py) 0.15 mirrored 24.5%
    # of probes, changed no decision, and moved the percent by p99 0.14 / max 3.1
    # points (0.12: 14.9%, max 5.7; 0.06 changed a decision). 2 = always mirror.
    mirror_margin: float = Field(0.15, ge=0, le=2)
    # Enrollment templates: each enrolled face is the mean embedding of this many chips,
    # the aligned chip and fixed variations of it (6% and 12% smaller and larger; past 10
    # also shifted), each with its mirror (app/face/views.py). 2 = the chip and its
    # mirror, as before templates. 10 is as accurate as 18 on lfw-devtrain at ~60% of
    # the cost (docs/ACCURACY.md); the calibration file holds for one value.
    template_views: int = Field(10, ge=2, le=MAX_TEMPLATE_VIEWS, multiple_of=2)
    # How /verify, /identify and /compare embed the photo when the request does not say
    # (field ``mode``): fast (the chip; its mirror too near the threshold) or thorough
    # (the template recipe's views: more accurate, several times the encoder's cost).
    probe_mode: Literal["fast", "thorough"] = "fast"
    # The encoder model, by its name in app/face/registry.py.
    model: str = "dlib_resnet_v1"
    # The model's runtime. onnx: dlib's ResNet converted to ONNX Runtime (same embeddings
    # within 1e-4, ~20x faster); dlib: the reference implementation.
    encoder: Literal["onnx", "dlib"] = "onnx"
    # ONNX Runtime threads per inference; 0 = one per usable CPU.
    onnx_threads: int = Field(0, ge=0, le=64)
    # AWS Rekognition documents 40x40 px as the smallest face it detects reliably;
    # faces smaller than that are refused at enrollment.
    # /enroll refuses a face whose quality score (0-100, app/face/quality.py) is under
    # this, with the reasons, and a face past a hard limit (extreme_pose, low_sharpness,
    # low_brightness: app/face/quality.py CHECKS) with face_not_enrollable; 0 turns the
    # gate off (the size limit, min_inter_eye, holds either way). At 35 it refuses 1.5% of
    # lfw-devtrain's news photos (docs/QUALITY.md). /verify, /identify and /compare
    # report the probe's score and flag one under it, without refusing it.
    enroll_min_quality: float = Field(35.0, ge=0, le=100)
    min_face_side: int = Field(40, ge=0)
    # Pixels between the eye centres under which a face is too small: /enroll refuses
    # it (face_too_small) and a probe is compared, flagged (checks: face_too_small) and
    # scored by the calibration's small_probe refit: less sure, at a tighter threshold.
    # On lfw-devtrain probes shrunk into 640x480 frames FNMR rises from ~1% to ~9% below
    # it (docs/ACCURACY.md, faces by size and pose); 16 px is about a 40 px wide face.
    min_inter_eye: float = Field(16.0, ge=0, le=1000)
    # Decoded pixel cap, checked from the header before decoding.
    max_image_pixels: int = Field(40_000_000, ge=1)

    # --- decision ----------------------------------------------------------------------
    # dlib's documented threshold: two embeddings closer than 0.6 are the same person
    # (99.38% on LFW; dlib python_examples/face_recognition.py, dlib-models README).
    threshold: float = Field(0.6, gt=0, lt=2)

    # --- access ----------------------------------------------------------------------
    # Keys from the environment, for containers: "KEY:enroll+verify,KEY2:admin". Held in
    # memory only. More keys: `faceverify keys create`. There is never a default key.
    api_keys: SecretStr = Field(SecretStr(""), description="KEY:SCOPE+SCOPE,...")

    # --- privacy (issue 27, docs/PRIVACY.md) ------------------------------------------
    # Record who used whose face data: one event a request that reads or changes it,
    # hash-chained; a request whose event cannot be written is answered 503.
    audit_trail: bool = True
    # Wait for the disk (fsync) before answering a read: its event then survives a power
    # cut too. Off: it survives faceverify's crash (kill -9) and reaches the disk with
    # the sealer's fsync within a second; ~0.4 ms less a request (docs/PERFORMANCE.md).
    audit_fsync: bool = False
    # Audit events older than this many days are pruned (0: kept for good).
    audit_retention_days: int = Field(0, ge=0, le=RETENTION_DAYS_MAX)
    # How often the retention purge (and the audit pruning) runs, in seconds.
    purge_interval_seconds: float = Field(600.0, gt=0)
    # PostgreSQL: deleted embeddings are vacuumed out of the pages within this many
    # seconds of a delete (plus the vacuum's own time).
    erase_vacuum_seconds: float = Field(30.0, ge=0)
    # PostgreSQL: that vacuum is VACUUM FULL: the tables are rewritten into new files, so
    # no stale bytes of a deleted row stay in a page's free space; it locks them while
    # it runs (docs/PRIVACY.md).
    erase_vacuum_full: bool = False
    # Encrypt embeddings at rest with AES-GCM: a base64 key of 32 bytes, or a file
    # holding one. Older keys (to read rows not yet rotated): comma-separated.
    encryption_key: SecretStr = Field(SecretStr(""), description="base64 of 32 bytes")
    encryption_key_file: Path | None = None
    encryption_old_keys: SecretStr = Field(SecretStr(""), description="base64,base64,...")
    # The key that seals the AWS credentials' secrets (issue 40) when no encryption key
    # is set: base64 of 32 bytes, made (mode 0600) by `faceverify keys create --aws`.
    # Replicas sharing a database need the same file (or the same encryption key).
    credentials_key_file: Path | None = Field(
        None, description="default <data dir>/credentials.key"
    )

    # --- serving ---------------------------------------------------------------------
    # json: one JSON object a line with the request id (for log shippers); text: for people.
    log_format: Literal["json", "text"] = "json"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    # Inference slots per process: one more than the usable CPUs (affinity and cgroup
    # quota, app/face/cores.py). A request holding a slot waits at times (the GIL, the
    # database), so one more keeps the cores busy: 8 clients, 2 cores, 70-75 -> 77-79
    # requests/s (docs/PERFORMANCE.md). More only queue.
    max_concurrent_inference: int = Field(default_factory=lambda: usable_cpus() + 1, ge=1)
    # How long a request may wait for a slot before it is answered 503.
    inference_wait_seconds: float = Field(10.0, ge=0)
    # Requests that may wait for a slot at once (per process); past that, 429 at once, so
    # there is never an unbounded queue.
    max_queued_requests: int = Field(32, ge=0)
    # Of those, how many one API key may have waiting (429 past that, for that key only),
    # so one key flooding cannot fill the queue for every other (issue 25).
    max_queued_per_key: int = Field(8, ge=0)
    # Slots beyond max_concurrent_inference that only a tenant (a key) holding no slot may
    # take: a quiet tenant's request starts at once while another floods (app/slots.py).
    tenant_reserve_slots: int = Field(1, ge=0, le=16)
    # A key's further requests while it has one in flight (a flood, a bulk job) run at a
    # lower CPU priority (app/api/lanes.py), and while another key has been served in the
    # last second they hold at most this many slots in all (0: usable CPUs - 1, at least
    # 1), so a quiet key's /verify finds the cores free. A lone busy key uses every slot.
    bulk_slots: int = Field(0, ge=0, le=64)
    # Optional rate limit of each API key, in requests a second (0: none), in each process;
    # past it 429 rate_limited with Retry-After and the RateLimit fields. The burst is the
    # bucket's size (0: one second's worth).
    rate_limit_per_second: float = Field(0.0, ge=0)
    rate_limit_burst: int = Field(0, ge=0)
    # A request taking longer than this is answered 503 request_timeout.
    request_timeout_seconds: float = Field(60.0, gt=0)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1)
    # A request body must arrive at this average rate once the grace period is over
    # (else 408 request_body_timeout): 16 KiB/s is a slow mobile uplink; a client that
    # trickles a byte every few seconds is cut off after the grace (issue 9).
    min_upload_bytes_per_second: int = Field(16 * 1024, ge=1)
    upload_grace_seconds: float = Field(10.0, gt=0)
    identify_top_k: int = Field(5, ge=1, le=100)
    # /identify names its nearest subject only at this false-positive identification
    # rate (strangers named) or lower, at the collection's size (issue 36: the 1:1
    # threshold named 92% of strangers in a gallery of 940); a collection may set its
    # own (PATCH /collections), a request only a lower one. 1%: AWS's and NIST FRTE's
    # usual operating point for 1:N.
    identify_fpir: float = Field(0.01, ge=1e-4, le=0.5)
    # Photos in one enrollment: a handful makes a good template; 20 bounds the work one
    # request can ask for (issue 9: 1,000 were allowed).
    max_enroll_images: int = Field(20, ge=1, le=1000)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in ENCODER_MODEL_NAMES:
            known = ", ".join(sorted(ENCODER_MODEL_NAMES))
            raise ValueError(f"unknown model {value!r}; known: {known}")
        return value

    @model_validator(mode="after")
    def _jitter_needs_dlib(self) -> Settings:
        if self.num_jitters and self.encoder != "dlib":
            raise ValueError(
                "FACEVERIFY_NUM_JITTERS needs FACEVERIFY_ENCODER=dlib: jittering is dlib's "
                "own (random crops and flips inside compute_face_descriptor)."
            )
        return self

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'faceverify.db'}"

    def resolved_index_dir(self) -> Path:
        return self.index_dir or self.data_dir / "index"

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"

    def resolved_calibration_file(self) -> Path:
        return self.calibration_file or self.models_dir / "calibration.json"

    def manifest_file(self) -> Path:
        return self.models_dir / "manifest.json"
