"""JSON shapes of the API: engine values rendered with the contract's camelCase names."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from quart import Response
from werkzeug.datastructures import ETags
from werkzeug.http import parse_etags

from engine import JobSnapshot, JobStatus

# The client polls status about this often while a job runs, unless the
# engine can estimate its next change (seconds).
POLL_INTERVAL_SECONDS = 2
# Bounds of the Retry-After of a status response (seconds).
MIN_RETRY_AFTER_SECONDS = 1
MAX_RETRY_AFTER_SECONDS = 10


def status_path(job_id: str) -> str:
    return f"/v1/download/status/{job_id}"


def result_path(job_id: str) -> str:
    return f"/v1/download/{job_id}"


def render_time(moment: datetime) -> str:
    """Render an aware datetime as ISO 8601 UTC with milliseconds and a ``Z`` suffix."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_snapshot(snapshot: JobSnapshot) -> dict[str, Any]:
    """Render a snapshot as the status document of ``GET /v1/download/status/{jobId}``."""
    body: dict[str, Any] = {
        "jobId": snapshot.job_id,
        "fileId": snapshot.file_id,
        "status": snapshot.status.value,
        "progress": snapshot.progress,
        "createdAt": render_time(snapshot.created_at),
        "updatedAt": render_time(snapshot.updated_at),
        "attempt": snapshot.attempt,
        "statusUrl": status_path(snapshot.job_id),
    }
    if snapshot.queue_position is not None:
        body["queuePosition"] = snapshot.queue_position
    if snapshot.retry_at is not None:
        body["retryAt"] = render_time(snapshot.retry_at)
    if snapshot.deadline_at is not None:
        body["deadlineAt"] = render_time(snapshot.deadline_at)
    if snapshot.expires_at is not None:
        body["expiresAt"] = render_time(snapshot.expires_at)
    if snapshot.status is JobStatus.DONE and snapshot.result is not None:
        body["resultUrl"] = result_path(snapshot.job_id)
        body["result"] = {
            "size": snapshot.result.size,
            "mediaType": snapshot.result.media_type,
            "fileName": snapshot.result.file_name,
            "sha256": snapshot.result.sha256,
        }
    if snapshot.error is not None:
        body["error"] = {"code": snapshot.error.code, "message": snapshot.error.message}
    if snapshot.file_ids is not None:
        del body["fileId"]
        body["fileIds"] = list(snapshot.file_ids)
        body["totalFileIds"] = len(snapshot.file_ids)
        body["files"] = [
            {"fileId": file_id, "status": state} for file_id, state in snapshot.file_states or ()
        ]
        body["missingFileIds"] = list(snapshot.missing_file_ids or ())
    return body


def encode_document(document: dict[str, Any]) -> tuple[bytes, str]:
    """Return a status document's JSON body and its entity tag (unquoted).

    The tag is a hash of the body, so it changes exactly when the document
    does: every field that moves (status, progress step, queue position,
    attempt, error, result) is in it, and nothing that changes by itself
    with time is. ``render_snapshot`` builds keys in a fixed order, so an
    unchanged document always encodes to the same bytes. The body is
    serialized once, for the tag and the response alike.
    """
    body = encode_json(document)
    return body, hashlib.blake2b(body, digest_size=12).hexdigest()


def encode_json(document: dict[str, Any]) -> bytes:
    """Return a JSON response body: compact, ASCII only, keys in insertion order, then a newline."""
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def parse_tag_lines(lines: Sequence[str]) -> ETags:
    """Parse every line of an ``If-Match`` or ``If-None-Match`` header as one list of tags.

    RFC 9110 section 5.3 reads repeated lines of a list header as one
    comma-separated value, so a tag on the second line counts too.
    """
    return parse_etags(", ".join(lines))


def not_modified() -> Response:
    """Return an empty 304 response without the entity headers a 304 must not misstate.

    A 304 has no body, so it sends no Content-Type, and no Content-Length
    because the one it could send would describe the 200 response.
    """
    response = Response(b"", status=304)
    del response.headers["Content-Type"]
    del response.headers["Content-Length"]
    return response


@dataclasses.dataclass(frozen=True, slots=True)
class StatusReply:
    """A successful response to a status read, without the headers that every response carries.

    ``status`` is 200 with the document as ``body``, or 304 with an empty
    body when one of the client's ``If-None-Match`` tags names the current
    ETag. ``headers`` contains the entity and caching headers, in order. The
    status route and ``StatusLayer`` both respond with it, so the two paths
    cannot drift apart.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @classmethod
    def of(cls, snapshot: JobSnapshot, if_none_match: Sequence[str]) -> StatusReply:
        """Return the reply to a read of ``snapshot`` with these ``If-None-Match`` lines."""
        body, etag = encode_document(render_snapshot(snapshot))
        # If-None-Match uses the weak comparison (RFC 9110 section 13.1.2), so a
        # tag that a proxy marked weak, W/"...", still matches.
        if parse_tag_lines(if_none_match).contains_weak(etag):
            status, headers, body = 304, [], b""
        else:
            status = 200
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        headers += [("ETag", f'"{etag}"'), ("Cache-Control", "no-cache")]
        if not snapshot.status.is_terminal:
            headers.append(("Retry-After", str(retry_after_seconds(snapshot))))
        return cls(status, headers, body)


def retry_after_seconds(snapshot: JobSnapshot) -> int:
    """Return when polling again is worth it: the next expected change, within 1-10 s."""
    estimate = snapshot.next_change_seconds
    if estimate is None:
        return POLL_INTERVAL_SECONDS
    return int(min(max(math.ceil(estimate), MIN_RETRY_AFTER_SECONDS), MAX_RETRY_AFTER_SECONDS))
