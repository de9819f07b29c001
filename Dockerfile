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
# Every package from the lock (requirements/run.txt), each file checked against its
# sha256: two builds of one commit install the same files (tests/test_image_contents.py
# compares them). pip's --report records which file each package came from, for the
# SBOM. The lock pins pip and setuptools too, so the base image's do not matter.
COPY requirements/run.txt requirements/sbom.txt ./requirements/
RUN python -m venv /opt/venv \
    && pip install --require-hashes --no-deps --report /tmp/install-report.json -r requirements/run.txt \
    && pip check
COPY pyproject.toml README.md ./
COPY app ./app
# faceverify itself, built by the locked setuptools (no build isolation: nothing unlocked
# is fetched). The package carries its manifest and calibration (package data).
# dlib-bin is a prebuilt wheel and face_recognition_models carries the weights: no
# compiler, and no download at run time. The ONNX encoder is converted here, once, and
# stands in for the ResNet's .dat (checked by sha256 at every start); dlib's frontal face
# detector is saved beside it (a start loads it in ~2 ms, not 0.3 s); then onnx (needed
# only to convert) leaves, and so do the .dat and the 68-point landmark model (~100 MB,
# never loaded, and licensed for non-commercial use only): three model files remain.
RUN pip install --no-deps --no-build-isolation . \
    && faceverify models check \
    && faceverify models prepare \
    && pip uninstall --yes onnx \
    && MODELS=/opt/venv/lib/python3.11/site-packages/face_recognition_models/models \
    && rm "$MODELS"/shape_predictor_68_face_landmarks.dat "$MODELS"/dlib_face_recognition_resnet_model_v1.dat \
    && faceverify models check
# What serving never loads (issue 14; docs/DEPLOYMENT.md has the sizes): debug symbols in
# the shared libraries (not in the wheels' *.libs folders: auditwheel's patched libraries
# break when stripped), test suites, onnxruntime's model tools and its C-API library (the
# Python module does not link it), numpy's Fortran tooling, Swagger UI's source maps and
# the bundles /docs does not load, SQLAlchemy's test kit and the dialects of databases
# faceverify does not run on, type stubs, pip and setuptools, and rich with pygments (typer's
# pretty output; off with TYPER_USE_RICH=0). The last command loads the models and
# embeds a real face, so a cut too many fails the build.
COPY tests/data/obama.jpg /tmp/face.jpg
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends binutils >/dev/null \
    && SITE=/opt/venv/lib/python3.11/site-packages \
    && find /opt/venv -name "*.so*" -type f -not -path "*.libs/*" -exec strip --strip-unneeded {} + \
    && find "$SITE" -depth -type d -name tests -exec rm -rf {} + \
    && rm -rf "$SITE"/onnxruntime/transformers "$SITE"/onnxruntime/tools \
        "$SITE"/onnxruntime/quantization "$SITE"/onnxruntime/capi/libonnxruntime.so.* \
        "$SITE"/numpy/f2py "$SITE"/numpy/distutils "$SITE"/swagger_ui_bundle/vendor/*/*.map \
        "$SITE"/swagger_ui_bundle/vendor/*/swagger-ui-es-bundle* "$SITE"/swagger_ui_bundle/vendor/*/swagger-ui.js \
        "$SITE"/sqlalchemy/testing "$SITE"/sqlalchemy/dialects/mssql "$SITE"/sqlalchemy/dialects/mysql \
        "$SITE"/sqlalchemy/dialects/oracle \
    && find "$SITE" -name "*.pyi" -delete \
    && pip uninstall --yes --quiet rich pygments markdown-it-py mdurl setuptools pip \
    && TYPER_USE_RICH=0 faceverify models check --photo /tmp/face.jpg
# The SBOM of the finished environment (docs/DEPLOYMENT.md): cyclonedx-py, from the lock,
# in a venv of its own that the image leaves behind, lists every package; faceverify adds
# the model files and the wheels' sha256; the result is validated against CycloneDX's
# schema. Reproducible: no timestamp or random serial number. The licence list beside it.
COPY tools/validate_sbom.py /tmp/validate_sbom.py
COPY docs/LICENSES.md /opt/venv/share/faceverify/LICENSES.md
RUN python -m venv /opt/sbom \
    && /opt/sbom/bin/pip install --quiet --require-hashes --no-deps -r requirements/sbom.txt \
    && /opt/sbom/bin/cyclonedx-py environment --pyproject pyproject.toml --output-reproducible \
        -o /tmp/env.cdx.json /opt/venv/bin/python \
    && TYPER_USE_RICH=0 faceverify sbom --build /tmp/env.cdx.json --install-report /tmp/install-report.json \
    && /opt/sbom/bin/python /tmp/validate_sbom.py /opt/venv/share/faceverify/sbom.cdx.json \
    && faceverify sbom

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    FACEVERIFY_DATA_DIR=/data \
    FACEVERIFY_CACHE_DIR=/srv/faceverify/cache \
    FACEVERIFY_HOST=0.0.0.0 \
    FACEVERIFY_PORT=8000 \
    FACEVERIFY_WORKERS=1 \
    TYPER_USE_RICH=0
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
