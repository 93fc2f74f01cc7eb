"""The result download: ``GET`` and ``HEAD /v1/download/{jobId}``, with byte ranges.

A done job's file is sent with a strong ``ETag`` (its SHA-256) and a
``Last-Modified`` date (when the job finished), so a client can resume an
interrupted download with ``Range`` and ``If-Range`` (RFC 9110).

Conditional headers are evaluated in the order of RFC 9110 section 13.2.2:
``If-Match`` (else ``If-Unmodified-Since``) fails with 412,
``If-None-Match`` (else ``If-Modified-Since``) gives 304, and only a request
that would otherwise get the whole file reaches ``If-Range`` and ``Range``.
A job that is not done gets its 409, 410 or 404 before any of this, so a
``Range`` request never receives part of an unfinished file.

``Range`` is applied to ``GET`` only, and only when it contains exactly one
``bytes`` range that parses:

- ``bytes=a-b``, ``bytes=a-`` and ``bytes=-n`` get 206 with ``Content-Range``.
  An end past the file is clamped to the last byte, and a suffix longer than
  the file selects the whole file.
- A start at or past the end of the file, and ``bytes=-0``, get 416 with
  ``Content-Range: bytes */SIZE``.
- Another unit, a malformed header (``b`` below ``a`` included), several
  ranges and several ``Range`` lines are ignored: the whole file is sent
  with 200, which RFC 9110 allows.
- ``HEAD`` ignores ``Range`` and gets 200, as RFC 9110 section 14.2 requires.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol

import trio
from quart import Blueprint, Response, request
from quart.wrappers.response import ResponseBody
from quart_schema import document_headers
from werkzeug.http import http_date, parse_date

from engine import ResultFile

from ._context import current_jobs
from ._openapi import operation, responds
from ._problems import Problem
from ._render import not_modified, parse_tag_lines
from ._schemas import (
    NoBody,
    PartialResultHeaders,
    ProblemDocument,
    RangeNotSatisfiableHeaders,
    ResultHeaders,
    ResultNotModifiedHeaders,
    ResultResponseHeaders,
    RetryAfterHeaders,
    ZipArchive,
)

# Bytes read from a result file per worker-thread call. A call cost about
# 0.3 ms of CPU on a 2-core Xeon VM (an estimate from download timings), more
# than copying 256 KiB from the page cache, so larger chunks make a download
# cheaper. A download in progress buffers one chunk at most.
RESULT_CHUNK_BYTES = 256 * 1024

# A cached copy could outlive the job's expiry, so no cache may store a result.
CACHE_CONTROL = "private, no-store"

# Positions with more digits than this are beyond any file (up to 1 GiB of
# content), so they are capped instead of converted. By default int() rejects
# strings of more than 4300 digits (sys.get_int_max_str_digits).
_MAX_POSITION_DIGITS = 18
_MAX_POSITION: int = 10**_MAX_POSITION_DIGITS

# One range-spec of RFC 9110 section 14.1.1: "first-last", "first-" or "-suffix".
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")

logger = logging.getLogger("http_api")

results = Blueprint("results", __name__)


@dataclasses.dataclass(frozen=True, slots=True)
class RangeSpec:
    """The one byte range of a ``Range`` header, before it is checked against the file size.

    ``first`` is None for a suffix range, and then ``last`` is the suffix length.
    """

    first: int | None
    last: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class ByteRange:
    """A satisfiable byte range of the file: ``start`` to ``end``, both inclusive."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@dataclasses.dataclass(frozen=True, slots=True)
class Validators:
    """The result's ``ETag`` header value and its ``Last-Modified`` time in whole seconds."""

    etag: str
    last_modified: datetime

    @classmethod
    def of(cls, result: ResultFile) -> Validators:
        # The job's file never changes once it is done, so the finish time is a
        # strong validator even at one-second precision (RFC 9110 section 8.8.2.2).
        finished_at = result.snapshot.updated_at.replace(microsecond=0)
        return cls(etag=f'"{result.info.sha256}"', last_modified=finished_at)


def parse_range(value: str) -> RangeSpec | None:
    """Parse a ``Range`` header that contains one byte range.

    Returns None, so that the header is ignored, for another unit, a malformed
    header, a range whose last position is below its first, and more than one
    range. Empty list elements are skipped, as RFC 9110 section 5.6.1 requires.
    """
    unit, separator, range_set = value.partition("=")
    if not separator or unit.lower() != "bytes":
        return None

    specs = [item.strip(" \t") for item in range_set.split(",")]
    specs = [spec for spec in specs if spec]
    if len(specs) != 1:
        return None

    match = _RANGE_SPEC.fullmatch(specs[0])
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None

    first = _parse_position(first_text) if first_text else None
    last = _parse_position(last_text) if last_text else None
    if first is not None and last is not None and last < first:
        return None
    return RangeSpec(first, last)


def _parse_position(digits: str) -> int:
    significant = digits.lstrip("0")
    if len(significant) > _MAX_POSITION_DIGITS:
        return _MAX_POSITION
    return int(significant or "0")


def resolve_range(spec: RangeSpec, size: int) -> ByteRange | None:
    """Return what ``spec`` selects in a file of ``size`` bytes, or None if it is unsatisfiable."""
    if size == 0:
        return None
    if spec.first is None:
        suffix_length = spec.last or 0
        if suffix_length == 0:
            return None
        return ByteRange(max(size - suffix_length, 0), size - 1)
    if spec.first >= size:
        return None
    end = size - 1 if spec.last is None else min(spec.last, size - 1)
    return ByteRange(spec.first, end)


def _precondition_failed(detail: str) -> Problem:
    return Problem(
        412,
        "precondition_failed",
        "Precondition failed",
        detail,
        headers={"Cache-Control": CACHE_CONTROL},
    )


def _evaluate_preconditions(validators: Validators) -> bool:
    """Evaluate If-Match and If-None-Match, or their date forms, and return True for a 304.

    Raises a 412 problem when ``If-Match`` or ``If-Unmodified-Since`` fails.
    An invalid date is ignored, as RFC 9110 sections 13.1.3 and 13.1.4 require.
    """
    etag = validators.etag.strip('"')
    last_modified = http_date(validators.last_modified)

    if_match = request.headers.getlist("If-Match")
    if if_match:
        # Strong comparison: a weak tag never matches.
        if not parse_tag_lines(if_match).contains(etag):
            raise _precondition_failed(
                f"If-Match does not contain the result's ETag {validators.etag}"
            )
    else:
        unmodified_since = _header_date("If-Unmodified-Since")
        if unmodified_since is not None and validators.last_modified > unmodified_since:
            raise _precondition_failed(
                f"the result was last modified at {last_modified}, after If-Unmodified-Since"
            )

    if_none_match = request.headers.getlist("If-None-Match")
    if if_none_match:
        # Weak comparison, so W/"<sha256>" also matches.
        return parse_tag_lines(if_none_match).contains_weak(etag)
    modified_since = _header_date("If-Modified-Since")
    return modified_since is not None and validators.last_modified <= modified_since


def _if_range_matches(validators: Validators) -> bool:
    """Return whether ``If-Range`` is absent or names the current result.

    An entity tag must equal the current ``ETag`` (a weak tag never does) and
    a date must equal ``Last-Modified`` exactly. An unparsable value does not match.
    """
    value = request.headers.get("If-Range")
    if value is None:
        return True
    value = value.strip(" \t")
    if value.startswith('"'):
        return value == validators.etag
    if value.startswith("W/"):
        return False
    date = _parse_http_date(value)
    return date is not None and date == validators.last_modified


def _header_date(name: str) -> datetime | None:
    """Return the date in request header ``name``, or None if it is missing or invalid."""
    value = request.headers.get(name)
    return None if value is None else _parse_http_date(value)


def _parse_http_date(value: str) -> datetime | None:
    """Return the HTTP date in ``value``, or None if it is not one.

    Werkzeug's ``parse_date`` returns None for most invalid dates, but
    raises ``OverflowError`` for a year too large for a C integer, such
    as 2147483648.
    """
    try:
        return parse_date(value)
    except (OverflowError, ValueError):
        return None


def _select_range(validators: Validators, size: int) -> ByteRange | None:
    """Return the range to send with 206, or None for the whole file with 200.

    Raises a 416 problem for an unsatisfiable range.
    """
    lines = request.headers.getlist("Range")
    # Range is a single-value field, so several lines are as malformed as
    # several ranges on one line.
    if request.method != "GET" or len(lines) != 1:
        return None
    value = lines[0]
    if not _if_range_matches(validators):
        return None
    spec = parse_range(value)
    if spec is None:
        return None

    selected = resolve_range(spec, size)
    if selected is None:
        raise Problem(
            416,
            "range_not_satisfiable",
            "Range not satisfiable",
            f"Range {value!r} selects no byte of the {size}-byte result",
            headers={
                "Content-Range": f"bytes */{size}",
                "Accept-Ranges": "bytes",
                "Cache-Control": CACHE_CONTROL,
            },
        )
    return selected


class _AsyncBinaryFile(Protocol):
    """The methods of ``trio.open_file(path, "rb")`` that the body uses."""

    async def seek(self, offset: int, /) -> int: ...

    async def read(self, size: int, /) -> bytes: ...

    async def aclose(self) -> None: ...


class FileRangeBody(ResponseBody):
    """A response body that reads ``length`` bytes from ``start`` of an open file.

    It reads RESULT_CHUNK_BYTES at a time, so memory stays bounded whatever the
    size, and closes the file when Quart finishes sending, also when the
    client goes away. ``file`` must be freshly opened, at position 0: a
    body from the first byte then reads without a seek.
    """

    def __init__(self, file: _AsyncBinaryFile, start: int, length: int, job_id: str) -> None:
        self._file = file
        self._start = start
        self._remaining = length
        self._job_id = job_id

    async def __aenter__(self) -> FileRangeBody:
        # Each file operation is a worker-thread call, so skip the seek where
        # the position is already right.
        if self._start:
            await self._file.seek(self._start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._file.aclose()

    def __aiter__(self) -> FileRangeBody:
        return self

    async def __anext__(self) -> bytes:
        if self._remaining == 0:
            raise StopAsyncIteration
        chunk = await self._file.read(min(RESULT_CHUNK_BYTES, self._remaining))
        if not chunk:
            # The file is shorter than its recorded size. Ending here leaves
            # the response short of its Content-Length, so the server aborts
            # the connection and the client sees an incomplete transfer.
            logger.error(
                "result file of job %s ended %d bytes early", self._job_id, self._remaining
            )
            raise StopAsyncIteration
        self._remaining -= len(chunk)
        return chunk


class _DamagedResult(Exception):
    """The stored result is not a regular file of the recorded size."""


def _open_stored(path: Path, size: int) -> BinaryIO:
    """Open the result at ``path`` for reading. It blocks, so call it in a worker thread.

    Raises ``_DamagedResult`` unless it is a regular file of ``size`` bytes.
    ``O_NONBLOCK`` keeps the open from waiting for a writer when something
    has replaced the file with a named pipe. It changes nothing for the
    reads of a regular file.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise _DamagedResult(f"not a regular file (mode {stat.filemode(status.st_mode)})")
        if status.st_size != size:
            raise _DamagedResult(f"{status.st_size} bytes where {size} were recorded")
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def _read_stored(path: Path, size: int) -> bytes:
    """Return the whole result at ``path``, checked as ``_open_stored`` checks it."""
    with _open_stored(path, size) as file:
        content = file.read()
    if len(content) != size:
        raise _DamagedResult(f"{len(content)} bytes read where {size} were recorded")
    return content


async def _open_result_file(result: ResultFile) -> _AsyncBinaryFile:
    """Open the result of ``result`` in a worker thread, or raise a 410 ``Problem``."""
    try:
        file = await trio.to_thread.run_sync(_open_stored, result.path, result.info.size)
    except (FileNotFoundError, _DamagedResult) as error:
        raise _result_unavailable(result, error) from None
    return trio.wrap_file(file)


async def _read_small_result(result: ResultFile) -> bytes:
    """Return the whole file of ``result``, read in one worker-thread call.

    Meant for a file of at most RESULT_CHUNK_BYTES: opening, reading and
    closing it in one call replaces the three calls of the streamed path.
    Raises a 410 ``Problem`` if the file was removed or damaged.
    """
    try:
        return await trio.to_thread.run_sync(_read_stored, result.path, result.info.size)
    except (FileNotFoundError, _DamagedResult) as error:
        raise _result_unavailable(result, error) from None


def _result_unavailable(result: ResultFile, error: Exception) -> Problem:
    """Return the 410 for a result file that was removed or damaged, and log the damage."""
    job_id = result.snapshot.job_id
    if isinstance(error, FileNotFoundError):
        return Problem(
            410,
            "result_unavailable",
            "Result unavailable",
            f"the result of job {job_id} was removed",
        )
    logger.error("result file of job %s is damaged: %s", job_id, error)
    return Problem(
        410,
        "result_unavailable",
        "Result unavailable",
        f"the stored result of job {job_id} is damaged; start a new job for the file",
    )


@results.get("/v1/download/<job_id:job_id>")
@operation(
    "Download a finished job's file",
    """
    Send `Range` (with `If-Range`) to resume an interrupted download. HEAD
    returns the same headers without the body and ignores `Range`.
    """,
    head=True,
)
@document_headers(ResultHeaders)
@responds(200, ZipArchive, "The whole file", ResultResponseHeaders)
@responds(206, ZipArchive, "The requested byte range of the file", PartialResultHeaders)
@responds(
    304,
    NoBody,
    "If-None-Match or If-Modified-Since matches: the client's copy is current",
    ResultNotModifiedHeaders,
)
@responds(400, ProblemDocument, "The job id is not a UUID (code invalid_job_id)")
@responds(404, ProblemDocument, "No job has this id (code job_not_found)")
@responds(
    409,
    ProblemDocument,
    "The job is queued or processing (code result_not_ready), and job has its document",
    RetryAfterHeaders,
)
@responds(
    410,
    ProblemDocument,
    "The job failed or was cancelled (code result_unavailable, with job), its file was "
    "removed or damaged, or the job expired (code expired)",
)
@responds(
    412,
    ProblemDocument,
    "If-Match or If-Unmodified-Since does not match the file (code precondition_failed)",
)
@responds(
    416,
    ProblemDocument,
    "Range selects no byte of the file (code range_not_satisfiable)",
    RangeNotSatisfiableHeaders,
)
@responds(
    503, ProblemDocument, "The server is shutting down (code shutting_down)", RetryAfterHeaders
)
async def download_result(job_id: str) -> Response:
    result = await current_jobs().open_result(job_id)
    # The file is read or opened before the headers are chosen, so a removed or
    # damaged file gets 410 on every path, and the bytes stay readable if the
    # file is removed while they are sent.
    if result.info.size <= RESULT_CHUNK_BYTES:
        content = await _read_small_result(result)
        return _build_response(result, lambda start, length: content[start : start + length])
    file = await _open_result_file(result)
    try:
        response = _build_response(
            result,
            lambda start, length: FileRangeBody(file, start, length, result.snapshot.job_id),
        )
    except BaseException:
        await file.aclose()
        raise
    if not isinstance(response.response, FileRangeBody):
        await file.aclose()
    return response


def _build_response(
    result: ResultFile, body_of: Callable[[int, int], bytes | FileRangeBody]
) -> Response:
    """Build the 200, 206 or 304 response.

    ``body_of(start, length)`` returns the body of the selected bytes. Only
    a 200 or 206 to GET calls it.
    """
    info = result.info
    validators = Validators.of(result)

    if _evaluate_preconditions(validators):
        response = not_modified()
        response.headers["ETag"] = validators.etag
        response.headers["Cache-Control"] = CACHE_CONTROL
        return response

    selected = _select_range(validators, info.size)
    start, length = (0, info.size) if selected is None else (selected.start, selected.length)
    if request.method == "HEAD":
        response = Response(b"", status=200, content_type=info.media_type)
    else:
        response = Response(body_of(start, length), status=200, content_type=info.media_type)

    if selected is not None:
        response.status_code = 206
        response.headers["Content-Range"] = f"bytes {selected.start}-{selected.end}/{info.size}"
    response.headers["Content-Length"] = str(length)
    response.headers["Content-Disposition"] = f'attachment; filename="{info.file_name}"'
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["ETag"] = validators.etag
    response.headers["Last-Modified"] = http_date(validators.last_modified)
    response.headers["Cache-Control"] = CACHE_CONTROL
    return response
