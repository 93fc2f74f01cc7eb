"""Access from a request handler to what ``create_app`` set up: the job client and settings."""

from __future__ import annotations

from quart import current_app

from engine import JobClient

from ._settings import Settings

CLIENT_KEY = "download_jobs.client"
SETTINGS_KEY = "download_jobs.settings"
STATUS_LAYER_KEY = "download_jobs.status_layer"


def current_jobs() -> JobClient:
    """Return the running supervisor's client; valid inside a request or app context."""
    client: JobClient = current_app.extensions[CLIENT_KEY]
    return client


def current_settings() -> Settings:
    settings: Settings = current_app.extensions[SETTINGS_KEY]
    return settings
