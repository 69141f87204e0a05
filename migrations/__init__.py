"""Alembic migrations for the controller database (PostgreSQL and SQLite)."""
