"""The HTTP front end: a Quart-Trio app that turns requests into supervisor calls.

It keeps no job state; every response comes from ``engine.JobClient``.
"""

from ._app import create_app as create_app
from ._server import serve as serve
from ._settings import Settings as Settings

__all__ = ["Settings", "create_app", "serve"]
