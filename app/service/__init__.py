"""The use cases (enroll, verify, identify, compare, the subject CRUD) and the one
function that builds them from settings. See core.py for the orchestration and its
modules."""

from app.service.build import build_service, open_gallery, vector_backend
from app.service.core import FaceService, ModelNames, ServiceInfo
from app.service.gates import CommitGate, commit_gate
from app.service.results import (
    Candidate,
    CompareResult,
    DetectResult,
    EnrollResult,
    FacePolicy,
    IdentifyResult,
    Match,
    ProbeFace,
    ProbeMode,
    VerifyResult,
)

__all__ = [
    "Candidate",
    "CommitGate",
    "CompareResult",
    "DetectResult",
    "EnrollResult",
    "FacePolicy",
    "FaceService",
    "IdentifyResult",
    "Match",
    "ProbeFace",
    "ModelNames",
    "ProbeMode",
    "ServiceInfo",
    "VerifyResult",
    "build_service",
    "commit_gate",
    "open_gallery",
    "vector_backend",
]
