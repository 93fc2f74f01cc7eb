"""The id of each request: sent back in ``X-Request-ID``, put in problem bodies and log lines.

A client's own ``X-Request-ID`` is kept when it is 1 to 128 visible ASCII
characters, so that a caller can match its logs with ours. Any other value,
or none, is replaced by a new UUID4, which keeps spaces, control characters
and oversized values out of response headers and log lines.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any, cast

from hypercorn.typing import HTTPScope
from quart import has_request_context, request

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128

# The id is stored in the request's ASGI scope, not in ``quart.g``, because
# ``g`` belongs to the app context, which concurrent requests can share.
_SCOPE_KEY = "download_jobs.request_id"


def is_valid_request_id(value: str) -> bool:
    """Return whether ``value`` is 1 to 128 characters from ``!`` to ``~`` (visible ASCII)."""
    if not 1 <= len(value) <= MAX_REQUEST_ID_LENGTH:
        return False
    return all("!" <= character <= "~" for character in value)


def first_header_value(scope: HTTPScope, name: bytes) -> str | None:
    """Return the first ``name`` line of the request of ``scope`` as Quart reads it, or None.

    ``name`` is lowercase, as ASGI servers pass header names.
    """
    for header, value in scope["headers"]:
        if header == name:
            return value.decode("latin-1")
    return None


def picked_request_id(scope: Mapping[str, Any]) -> str | None:
    """Return the id that ``request_id_of`` picked for the request of ``scope``, if any."""
    request_id: str | None = scope.get(_SCOPE_KEY)
    return request_id


def request_id_of(scope: HTTPScope) -> str:
    """Return the id of the request of ``scope``.

    The first call for a request picks the id: the first ``X-Request-ID``
    line if it is valid, else a new UUID4. Later calls return the same id,
    inside Quart or not.
    """
    # The id is kept in the scope, which the ASGI types do not declare.
    stash = cast(dict[str, Any], scope)
    request_id: str | None = stash.get(_SCOPE_KEY)
    if request_id is None:
        offered = first_header_value(scope, b"x-request-id") or ""
        request_id = offered if is_valid_request_id(offered) else str(uuid.uuid4())
        stash[_SCOPE_KEY] = request_id
    return request_id


def current_request_id() -> str | None:
    """Return the id of the request being handled, or None outside a request."""
    if not has_request_context():
        return None
    return request_id_of(cast(HTTPScope, request.scope))


class RequestIdLogFilter(logging.Filter):
    """A logging filter that appends ``request_id=ID`` to records logged during a request.

    The id is also stored as the record attribute ``request_id`` (None outside
    a request), for formatters that want it in a field of its own.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id()
        record.request_id = request_id
        if request_id is not None:
            # getMessage() merges the arguments first, so a "%" in the id
            # cannot be taken for a format directive.
            record.msg = f"{record.getMessage()} request_id={request_id}"
            record.args = None
        return True


REQUEST_ID_LOG_FILTER = RequestIdLogFilter()
