"""Job starts: the rules of ``POST /v1/download/start``, and a layer that responds before Quart.

Every job begins with one start, so under many short-lived clients starts
are a large share of the server's work. Through Quart a start cost about
0.78 ms of server CPU, of which Quart's request handling was about 0.4 ms
(``python -m bench._cost`` and py-spy, on a 2-core AMD EPYC VM). So
``StartLayer`` responds to every start that has a JSON body of an allowed
size from the ASGI messages alone, as ``StatusLayer`` does for status reads.
There a start costs about 0.45 ms.

Both paths run the same code: ``StartSubmission.parse`` checks the body,
the ``Idempotency-Key`` and the timeout, ``StartSubmission.submit`` creates
the job, and ``StartReply`` renders the response. The route adds only what
Quart does (the content type check and reading the body), so the two
paths cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import trio
from hypercorn.typing import ASGIReceiveEvent, HTTPScope, Scope

from engine import MAX_IDEMPOTENCY_KEY_LENGTH, EngineError, JobClient, JobSnapshot

from ._asgi import (
    FrontLayer,
    HeaderList,
    Receive,
    Send,
    header_lines,
    replaying,
    request_path,
    respond,
)
from ._body import (
    StartRequest,
    body_timeout_problem,
    is_json_content_type,
    parse_json_body,
    timeout_range,
)
from ._problems import Problem, problem_from_engine_error
from ._ratelimit import IPNetwork, client_of
from ._render import POLL_INTERVAL_SECONDS, encode_json, render_snapshot, result_path, status_path
from ._request_id import first_header_value, request_id_of

logger = logging.getLogger("http_api")

START_PATH = "/v1/download/start"


def parse_idempotency_key(lines: Sequence[str]) -> str | None:
    """Return the key of the request's ``Idempotency-Key`` lines; raise a 400 problem if invalid."""
    if not lines:
        return None
    key = lines[0]
    if len(lines) > 1:
        # HTTP reads repeated lines as one comma-joined value, which is not a valid key.
        detail = f"Idempotency-Key must appear once, got {len(lines)} header lines"
    elif not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not _is_visible_ascii(key):
        detail = (
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII characters"
        )
    else:
        return key
    raise Problem(
        400, "invalid_idempotency_key", "Invalid Idempotency-Key", detail, field="Idempotency-Key"
    )


def _is_visible_ascii(text: str) -> bool:
    return all("!" <= character <= "~" for character in text)


def check_timeout(timeout_ms: int | None, max_timeout_ms: int) -> None:
    """Raise a 400 problem if a requested deadline exceeds ``max_timeout_ms`` (JOB_TIMEOUT_MS)."""
    if timeout_ms is not None and timeout_ms > max_timeout_ms:
        raise Problem(
            400,
            "invalid_body",
            "Invalid request body",
            f"timeout_ms must be {timeout_range(max_timeout_ms)}, got {timeout_ms}",
            field="timeout_ms",
        )


@dataclasses.dataclass(frozen=True, slots=True)
class StartReply:
    """The response to a start that created a job (202) or repeated an ``Idempotency-Key`` (200).

    ``headers`` are the entity headers, ``Location`` and ``Retry-After``,
    without those that the app adds to every response.
    """

    status: int
    headers: HeaderList
    body: bytes

    @classmethod
    def of(cls, snapshot: JobSnapshot, created: bool) -> StartReply:
        job_id = snapshot.job_id
        if created:
            document = {
                "jobId": job_id,
                "status": snapshot.status.value,
                "statusUrl": status_path(job_id),
                "resultUrl": result_path(job_id),
            }
        else:
            # A repeated Idempotency-Key: the existing job, as it is now.
            document = render_snapshot(snapshot)
        body = encode_json(document)
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Location", status_path(job_id)),
            ("Retry-After", str(POLL_INTERVAL_SECONDS)),
        ]
        return cls(202 if created else 200, headers, body)


@dataclasses.dataclass(frozen=True, slots=True)
class StartSubmission:
    """A start request that passed every check: the job to create, and its key if any."""

    file_id: int
    timeout_ms: int | None
    idempotency_key: str | None

    @classmethod
    def parse(cls, body: bytes, key_lines: Sequence[str], max_timeout_ms: int) -> StartSubmission:
        """Check a start's whole JSON body and its ``Idempotency-Key`` lines.

        Raises the 400 ``Problem`` of the first failed check: the body (see
        ``parse_json_body``), then the key, then a ``timeout_ms`` above
        ``max_timeout_ms``. The content type and the body's size are the
        caller's to check first.
        """
        request = parse_json_body(body, StartRequest, max_timeout_ms=max_timeout_ms)
        key = parse_idempotency_key(key_lines)
        check_timeout(request.timeout_ms, max_timeout_ms)
        return cls(request.file_id, request.timeout_ms, key)

    async def submit(self, jobs: JobClient, client: str) -> StartReply:
        """Create the job, or find the one created with the same key and body; return the reply.

        ``client`` identifies the caller (``client_of``): a key belongs to
        the client that sent it, so another client's identical key creates
        another job and cannot reach this one.

        Raises the ``EngineError`` of a rejected start: ``Overloaded``,
        ``SupervisorClosed``, or ``IdempotencyConflict`` for a key used with
        another body. One supervisor query, a checkpoint.
        """
        job_timeout = None if self.timeout_ms is None else self.timeout_ms / 1000
        snapshot, created = await jobs.submit_idempotent(
            self.file_id,
            job_timeout=job_timeout,
            idempotency_key=self.idempotency_key,
            idempotency_owner=client,
            fingerprint=(self.file_id, self.timeout_ms),
        )
        return StartReply.of(snapshot, created)


@dataclasses.dataclass(eq=False, kw_only=True)
class StartLayer(FrontLayer):
    """ASGI middleware that responds to job starts before ``app`` receives them.

    It takes a start whose ``Content-Type`` is JSON and whose declared
    ``Content-Length``, if any, is at most ``max_body_bytes``, once
    ``admit`` (when rate limiting is on) counts it within its budget. The
    layer reads the body, then responds with a ``StartReply``, or with the
    problem of a failed check or a rejected submission. Everything else
    goes to ``app`` unchanged, and so does a start whose body turns out
    longer than ``max_body_bytes``, with what the layer read replayed first,
    so that Quart rejects it with 413. A body that has not arrived whole
    ``body_timeout`` seconds after the layer starts reading gets 408, and
    the connection closes.

    ``max_timeout_ms`` is JOB_TIMEOUT_MS. ``trusted_proxies`` are the
    proxies whose ``X-Forwarded-For`` names the client, which owns its
    ``Idempotency-Key``. See ``FrontLayer`` for the others.
    """

    max_timeout_ms: int
    body_timeout: float
    trusted_proxies: Sequence[IPNetwork]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._takes(scope) and self.admits(scope):
            await self._serve(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _takes(self, scope: HTTPScope) -> bool:
        """Return whether ``scope`` is a start that declares a JSON body of an allowed size."""
        if scope["method"] != "POST" or request_path(scope) != START_PATH:
            return False
        content_type = first_header_value(scope, b"content-type")
        if content_type is None or not is_json_content_type(content_type):
            return False
        # h11 has checked that Content-Length is digits and not repeated with
        # another value.
        return all(
            int(value) <= self.max_body_bytes
            for name, value in scope["headers"]
            if name == b"content-length"
        )

    async def _serve(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        """Read the body and respond to the start, or pass the start on if its body is too long.

        Returns without a response if the client disconnects while sending
        the body. Cancellation propagates. A job whose submission the
        supervisor received is created either way.
        """
        received: list[ASGIReceiveEvent] = []
        body: bytes | None = None
        with trio.move_on_after(self.body_timeout) as reading:
            body = await self._read_body(receive, received)
        if reading.cancelled_caught:
            logger.info(
                "start body timed out after %g s request_id=%s",
                self.body_timeout,
                request_id_of(scope),
            )
            status, headers, content = self._reject(body_timeout_problem(self.body_timeout), scope)
        elif body is None:
            if received[-1]["type"] == "http.request":
                await self.app(scope, replaying(received, receive), send)
            return
        else:
            status, headers, content = await self._reply(body, scope)
        await respond(send, status, headers + self.common_headers(scope), content)

    async def _reply(self, body: bytes, scope: HTTPScope) -> tuple[int, HeaderList, bytes]:
        """Check and submit the start whose whole body is ``body``; return the response."""
        try:
            submission = StartSubmission.parse(
                body, header_lines(scope, b"idempotency-key"), self.max_timeout_ms
            )
            reply = await submission.submit(self.jobs(), client_of(scope, self.trusted_proxies))
        except Problem as problem:
            # Python unbinds ``problem`` after this block, so its traceback,
            # which refers to this frame, makes no cycle.
            return self._reject(problem, scope)
        except EngineError as error:
            return self._reject(problem_from_engine_error(error), scope)
        return reply.status, reply.headers, reply.body

    def _reject(self, problem: Problem, scope: HTTPScope) -> tuple[int, HeaderList, bytes]:
        """Log a rejected start and return its problem response's status, headers and body."""
        request_id = request_id_of(scope)
        logger.debug(
            "start rejected with %d %s: %s request_id=%s",
            problem.status,
            problem.code,
            problem.detail,
            request_id,
        )
        headers, body = problem.encode(request_id)
        return problem.status, headers, body

    async def _read_body(self, receive: Receive, received: list[ASGIReceiveEvent]) -> bytes | None:
        """Read the request's messages into ``received``; return the whole body, or None.

        The body is incomplete (None) when the client disconnected, and then
        the last message is ``http.disconnect``. It is also incomplete when it
        grew past ``max_body_bytes``: then the last message is
        ``http.request``, and the rest of the body is left unread.
        """
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                return None
            size += len(message["body"])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                return b"".join(part["body"] for part in received if part["type"] == "http.request")
