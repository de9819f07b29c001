# faceverify: the service image. Two stages: the build stage installs the package and
# prepares the models; the runtime stage copies only the virtualenv and the app.
# The installs and commands are the ones the test suite runs (tests/test_dockerfile.py,
# tests/test_container.py builds and runs it).
#
# BASE_IMAGE: any Debian-based image with Python 3.11 and venv. The official image by
# default; machines that reach no registry build one with .ci/base-image.sh.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    FACEVERIFY_CACHE_DIR=/srv/faceverify/cache
WORKDIR /srv/faceverify
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY app ./app
# A plain install: the package carries its manifest and calibration (package data).
# dlib-bin is a prebuilt wheel and face_recognition_models carries the weights: no
# compiler, and no download at run time. The ONNX encoder is converted here, once;
# then onnx (needed only to convert) leaves, and so does the 68-point landmark model
# (~100 MB, never loaded, and licensed for non-commercial use only).
RUN pip install . \
    && faceverify models check \
    && faceverify models prepare \
    && pip uninstall --yes onnx \
    && rm /opt/venv/lib/python3*/site-packages/face_recognition_models/models/shape_predictor_68_face_landmarks.dat \
    && faceverify models check

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    FACEVERIFY_DATA_DIR=/data \
    FACEVERIFY_CACHE_DIR=/srv/faceverify/cache \
    FACEVERIFY_HOST=0.0.0.0 \
    FACEVERIFY_PORT=8000 \
    FACEVERIFY_WORKERS=1
COPY --from=build /opt/venv /opt/venv
COPY --from=build /srv/faceverify/cache /srv/faceverify/cache
WORKDIR /srv/faceverify
RUN useradd --create-home --uid 10001 faceverify \
    && mkdir -p /data && chown 10001 /data
USER 10001
VOLUME ["/data"]
EXPOSE 8000
# Probes the port the app listens on (FACEVERIFY_PORT), not a fixed one.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('FACEVERIFY_PORT', '8000'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4).status != 200)"]
# Worker processes: FACEVERIFY_WORKERS (one process uses every core with the ONNX encoder).
CMD ["faceverify", "serve"]
