"""Headers every response carries, and per-client rate limiting."""

from __future__ import annotations

from quart import Quart

from ._settings import Settings


def install_middleware(app: Quart, settings: Settings) -> None:
    """Register the request hooks that add common headers and enforce rate limits."""
