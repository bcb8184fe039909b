"""The Celery worker for the demo app: ``celery -A worker worker`` (from the repository root).

Your own app's worker module looks the same, with your app factory and your BatchFlow instance::

    from myapp import batchflow, create_app

    celery = batchflow.celery(create_app())

The worker reads the same ``BATCHFLOW_*`` settings as the web app (``docker-compose.yml`` gives
both the same environment), and runs every step inside the app's context.
"""

from batchflow_demo import batchflow, create_app

celery = batchflow.celery(create_app())
