"""Logging, metrics and the HTTP health endpoint."""
