# faceverify: the service image. Two stages: the build stage installs the package and
# prepares the models; the runtime stage copies only the virtualenv and the app.
# The installs and commands are the ones the test suite runs (tests/test_dockerfile.py).

FROM python:3.11-slim AS build
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
# compiler, and no download at run time. The ONNX encoder is converted here, once.
RUN pip install . \
    && faceverify models check \
    && faceverify models prepare

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    FACEVERIFY_DATA_DIR=/data \
    FACEVERIFY_CACHE_DIR=/srv/faceverify/cache \
    FACEVERIFY_HOST=0.0.0.0 \
    FACEVERIFY_PORT=8000 \
    FACEVERIFY_WORKERS=1
COPY --from=build /opt/venv /opt/venv
COPY --from=build /srv/faceverify /srv/faceverify
WORKDIR /srv/faceverify
RUN useradd --create-home --uid 10001 faceverify \
    && mkdir -p /data && chown 10001 /data
USER 10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
# Worker processes: FACEVERIFY_WORKERS (one process uses every core with the ONNX encoder).
CMD ["faceverify", "serve"]
