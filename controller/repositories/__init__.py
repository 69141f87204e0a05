"""Repositories: queries, adds and flushes on a session the caller's transaction owns."""
