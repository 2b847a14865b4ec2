"""Persistence: SQLAlchemy models, the per-process engine and the repositories that hold every query."""
