# The demo app and its worker, for docker-compose.yml. Your own app's image looks the same with
# your package installed instead of (or beside) batchflow.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The whole source (less what .dockerignore leaves out): setup.cfg maps templates/ and static/
# into the package, and `celery -A worker` imports worker/ from this folder.
COPY . .
RUN pip install ".[server]"

# Not root: the worker refuses to be comfortable as root, and nothing here needs it. /data is the
# files volume shared by web and worker (exports, and the demo's SQLite file).
RUN useradd --create-home --uid 1000 batchflow \
    && mkdir -p /data/files /data/demo \
    && chown -R batchflow:batchflow /data
USER batchflow

ENV BATCHFLOW_FILES_DIR=/data/files \
    BATCHFLOW_DEMO_DATA=/data/demo

EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "-k", "gthread", "--threads", "32", "batchflow_demo:create_app()"]
