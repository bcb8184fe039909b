"""The Celery worker: ``celery -A worker worker --loglevel INFO``, run from examples/tutorial/."""

from myapp import batchflow, create_app

celery = batchflow.celery(create_app())
