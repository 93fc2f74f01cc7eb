"""Access from a request handler to what ``create_app`` set up: the job client and settings."""

from __future__ import annotations

from typing import cast

from hypercorn.typing import HTTPScope
from quart import current_app, request

from engine import JobClient

from ._ratelimit import client_of
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


def current_client() -> str:
    """Return the address that identifies the client of the current request (see ``client_of``)."""
    return client_of(cast(HTTPScope, request.scope), current_settings().trusted_proxies)
