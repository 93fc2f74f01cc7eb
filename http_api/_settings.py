"""Settings of the HTTP service: the engine's plus those of the server."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from engine import EngineSettings, read_bool

# A start request is a few dozen bytes; 64 KiB leaves room for any legitimate
# body and caps what one request can make the server parse.
MAX_BODY_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``create_app`` and ``serve`` need, validated at construction."""

    engine: EngineSettings = dataclasses.field(default_factory=EngineSettings)
    host: str = "127.0.0.1"
    port: int = 8000
    # One line per request on stderr, in Hypercorn's access log format.
    access_log: bool = False
    max_body_bytes: int = MAX_BODY_BYTES

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``); ``overrides`` win.

        Raises ``engine.SettingsError`` naming the first invalid variable.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {
            "engine": EngineSettings.from_environ(environ),
            "access_log": read_bool(environ, "ACCESS_LOG", False),
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]
