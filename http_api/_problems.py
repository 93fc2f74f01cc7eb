"""RFC 9457 problem details: the one place where errors become HTTP responses.

Every error response of the service is ``application/problem+json`` with
``type``, ``title``, ``status`` and ``detail``, plus ``code`` (a stable,
machine-readable name), ``field`` where one input field is at fault, and
``job`` where the error is about an existing job's state. Every problem also
carries ``requestId``, the id in the response's ``X-Request-ID`` header.

The ``type`` URIs are tag URIs (RFC 4151): stable identifiers that are not
meant to be dereferenced, which RFC 9457 allows.
"""

from __future__ import annotations

import math
from typing import Any

from quart import Response
from werkzeug.datastructures import Headers

from engine import (
    EngineError,
    IdempotencyConflict,
    JobAlreadyFinished,
    JobConflict,
    JobExpired,
    JobNotFound,
    Overloaded,
    ResultNotReady,
    ResultUnavailable,
    SupervisorClosed,
)

from ._render import encode_json, render_snapshot
from ._request_id import current_request_id

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_PREFIX = "tag:download-jobs,2026:problem:"

# Engine errors and the HTTP response each one gets: (status, code, title).
_ENGINE_ERRORS: dict[type[EngineError], tuple[int, str, str]] = {
    JobNotFound: (404, "job_not_found", "Job not found"),
    JobExpired: (410, "expired", "Job expired"),
    IdempotencyConflict: (422, "idempotency_key_reused", "Idempotency key reused"),
    Overloaded: (503, "overloaded", "Too many jobs"),
    JobAlreadyFinished: (409, "job_already_finished", "Job already finished"),
    ResultNotReady: (409, "result_not_ready", "Result not ready"),
    ResultUnavailable: (410, "result_unavailable", "Result unavailable"),
    SupervisorClosed: (503, "shutting_down", "Service shutting down"),
}


class Problem(Exception):
    """An error that the service returns as a problem+json response."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.field = field
        self.headers = headers or {}
        self.extra = extra or {}

    def document(self) -> dict[str, Any]:
        """Return the problem document, without the request id that ``to_response`` adds."""
        body: dict[str, Any] = {
            "type": _TYPE_PREFIX + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.field is not None:
            body["field"] = self.field
        body.update(self.extra)
        return body

    def encode(self, request_id: str | None) -> tuple[list[tuple[str, str]], bytes]:
        """Return the response's headers and body, with ``request_id`` in the document.

        The headers are the entity headers, then the problem's own (such as
        Retry-After), without those that the app adds to every response.
        """
        document = self.document()
        if request_id is not None:
            document["requestId"] = request_id
        body = encode_json(document)
        headers = [("Content-Type", PROBLEM_MEDIA_TYPE), ("Content-Length", str(len(body)))]
        return headers + list(self.headers.items()), body

    def to_response(self) -> Response:
        headers, body = self.encode(current_request_id())
        return Response(body, status=self.status, headers=Headers(headers))


def problem_from_engine_error(error: EngineError) -> Problem:
    """Translate an engine error into the problem the client receives."""
    status, code, title = 500, "internal_error", "Internal server error"
    for error_type in type(error).__mro__:
        if error_type in _ENGINE_ERRORS:
            status, code, title = _ENGINE_ERRORS[error_type]
            break

    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if isinstance(error, JobConflict):
        extra["job"] = render_snapshot(error.snapshot)
    if isinstance(error, ResultNotReady):
        headers["Retry-After"] = "2"
    if isinstance(error, SupervisorClosed):
        headers["Retry-After"] = "5"
    if isinstance(error, Overloaded):
        headers["Retry-After"] = str(math.ceil(error.retry_after))
    return Problem(status, code, title, str(error), headers=headers, extra=extra)
