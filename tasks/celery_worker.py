"""What ``celery -A tasks.celery_worker`` (worker and beat) loads: this process's Celery app, made once."""

from __future__ import annotations

from tasks.backend import make_backend

app = make_backend("celery").app
