# faceverify: a first working image (the production issue hardens it: multi-stage,
# ONNX model prepared at build time). Installs the way `make run` does.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FACEVERIFY_DATA_DIR=/data \
    FACEVERIFY_CACHE_DIR=/srv/faceverify/cache \
    FACEVERIFY_HOST=0.0.0.0 \
    FACEVERIFY_PORT=8000 \
    FACEVERIFY_WORKERS=1

WORKDIR /srv/faceverify
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
# Editable, as `make run` installs it: models/ (manifest, calibration) is found beside app/.
# dlib-bin is a prebuilt wheel and face_recognition_models carries the weights: no
# compiler, no download at run time.
RUN pip install -e . \
    && faceverify models check \
    && faceverify models prepare \
    && useradd --create-home --uid 10001 faceverify \
    && mkdir -p /data && chown faceverify /data

USER 10001
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
CMD ["faceverify", "serve"]
