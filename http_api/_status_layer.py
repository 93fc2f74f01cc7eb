"""Status reads served by an ASGI layer in front of Quart, long polls included.

Clients read ``GET /v1/download/status/{jobId}`` far more often than
anything else. For such a small response, Quart's request handling costs
about as much as everything else together. A read took about 0.6 ms of
server CPU through Quart and 0.35-0.38 ms without it, on a 2-core Xeon.
So ``StatusLayer`` responds to every status read that succeeds from the
ASGI scope alone. It sends the ``StatusReply`` that the status route
renders too, plus the headers that the app adds to every response.

A long poll (``?wait=N`` whose ``If-None-Match`` names the current ETag)
spends nearly all its life waiting. Held in this layer, it keeps only the
scope, its own task, which reads the request's messages to notice the
client leaving, and the engine's ``JobChange`` of the job. That is about 60
fewer tracked objects per poll than a poll held inside a Quart route (140
instead of 200, counted with 2,000 polls open), and every garbage
collection walks them while the whole process stops. Reading in the
poll's own task, rather than in a second one, saved another 11 objects (49
instead of 60 on top of the connection's own) and 0.05 ms of server CPU
per poll.

Everything else passes to Quart unchanged: other routes, preflights, and
every status read that ends in an error (malformed ``wait``, unknown or
expired job, stopping server, over its rate limit) or has a body. So Quart
writes every error response, and the status route stays complete.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import urllib.parse

import trio
from hypercorn.typing import ASGIReceiveEvent, HTTPScope, Scope

from engine import EngineError, JobWatch

from ._asgi import (
    FrontLayer,
    Receive,
    Send,
    replaying,
    request_path,
    respond,
)
from ._problems import Problem
from ._render import StatusReply

logger = logging.getLogger("http_api")

# A job id as the routes accept it: a UUID in 8-4-4-4-12 hex form.
JOB_ID_REGEX = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_STATUS_PATH = re.compile(rf"/v1/download/status/({JOB_ID_REGEX})")

# A long poll waits at most this long, well below the 60 s and 100 s after
# which nginx and Cloudflare give up on a request by default (seconds).
MAX_WAIT_SECONDS = 30.0
# Larger ?wait= values are rejected as mistakes rather than capped.
MAX_ACCEPTED_WAIT_SECONDS = 3600
# Characters of a rejected ?wait= value that its problem detail repeats.
MAX_SHOWN_WAIT_CHARACTERS = 40
# The forms ?wait= accepts: a non-negative decimal number in ASCII, with an
# optional exponent, as the OpenAPI document's "number" type allows.
_WAIT_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def parse_wait(raw: str | None) -> float:
    """Return the long-poll time in seconds from ``?wait=``, capped at ``MAX_WAIT_SECONDS``.

    Raises a 400 ``Problem`` (code ``invalid_wait``) for anything but a
    number from 0 to ``MAX_ACCEPTED_WAIT_SECONDS``. No ``wait`` means 0.
    """
    if raw is None:
        return 0.0
    # float() alone would also take "1_0", " 1", "+1", "inf" and digits of
    # other scripts.
    seconds = float(raw) if _WAIT_PATTERN.fullmatch(raw) else math.nan
    if not 0 <= seconds <= MAX_ACCEPTED_WAIT_SECONDS:  # also rejects NaN
        excerpt = raw[:MAX_SHOWN_WAIT_CHARACTERS]
        if len(raw) > MAX_SHOWN_WAIT_CHARACTERS:
            excerpt += "..."
        raise Problem(
            400,
            "invalid_wait",
            "Invalid wait",
            f"wait must be a number of seconds from 0 to {MAX_ACCEPTED_WAIT_SECONDS}, "
            f"got {excerpt!r}",
            field="wait",
        )
    return min(seconds, MAX_WAIT_SECONDS)


@dataclasses.dataclass(frozen=True, slots=True)
class StatusRead:
    """A status read that ``StatusLayer`` may serve, parsed as the status route parses it.

    ``seconds`` is the requested wait, capped at ``MAX_WAIT_SECONDS``, and 0
    without one. ``if_none_match`` contains every ``If-None-Match`` line.
    ``has_body`` is whether the request declares a body.
    """

    job_id: str
    seconds: float
    if_none_match: tuple[str, ...]
    has_body: bool

    @property
    def is_long_poll(self) -> bool:
        """Whether to hold the read while the client's tag is current."""
        return self.seconds > 0 and bool(self.if_none_match)

    @classmethod
    def from_scope(cls, scope: HTTPScope) -> StatusRead | None:
        """Return the status read that ``scope`` requests, or None if it is not one.

        Reads the request the way the status route does: the first ``wait``
        in the query, and every ``If-None-Match`` line. Returns None for
        other methods and paths, and for a ``wait`` the route rejects, so the
        route rejects it.
        """
        if scope["method"] not in ("GET", "HEAD"):
            return None
        match = _STATUS_PATH.fullmatch(request_path(scope))
        if match is None:
            return None
        seconds = 0.0
        if scope["query_string"]:
            query = urllib.parse.parse_qsl(
                scope["query_string"].decode("latin-1"), keep_blank_values=True
            )
            raw_wait = next((value for name, value in query if name == "wait"), None)
            try:
                seconds = parse_wait(raw_wait)
            except Problem:
                return None
        tags: list[str] = []
        has_body = False
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                tags.append(value.decode("latin-1"))
            elif name == b"transfer-encoding" or (
                name == b"content-length" and value.strip() not in (b"", b"0")
            ):
                has_body = True
        return cls(match.group(1).lower(), seconds, tuple(tags), has_body)


@dataclasses.dataclass(eq=False)
class StatusLayer(FrontLayer):
    """ASGI middleware that serves status reads and holds long polls before ``app`` sees them.

    It buffers at most ``max_body_bytes`` of a held request's body (a GET
    rarely has one). A larger body ends the hold, and the app then handles
    the request as usual. See ``FrontLayer`` for the other parameters.
    """

    _held_scopes: set[trio.CancelScope] = dataclasses.field(default_factory=set, init=False)
    _released: bool = dataclasses.field(default=False, init=False)

    def release(self) -> None:
        """End every hold now and hold no request from now on; call when the server stops.

        Released polls get their response at once, from the document as it
        is, so that no client loses its connection without a response when the
        server closes the connections still open after its grace period.
        Not a checkpoint.
        """
        self._released = True
        for scope in self._held_scopes:
            scope.cancel()
        logger.info("released %d held long polls", len(self._held_scopes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            read = StatusRead.from_scope(scope)
            if read is not None and (read.is_long_poll or not read.has_body) and self.admits(scope):
                await self._serve(read, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(
        self, read: StatusRead, scope: HTTPScope, receive: Receive, send: Send
    ) -> None:
        """Respond to ``read``, holding it first if it is a long poll; else pass it to the app.

        Reads the job once, or twice for a poll that waited: before and after
        the wait. An ``EngineError`` passes the request to the app, whose
        route reads the job again and reports the problem.
        """
        jobs = self.jobs()
        reply: StatusReply | None = None
        try:
            if read.is_long_poll and not self._released:
                watch = await jobs.watch(read.job_id)
                reply = StatusReply.of(watch.snapshot, read.if_none_match)
                if reply.status == 304:
                    held = await self._hold(read, watch, receive)
                    if held is None:
                        return
                    receive = held
                    reply = None  # The document may have changed during the wait.
            if not read.has_body and reply is None:
                reply = StatusReply.of(await jobs.status(read.job_id), read.if_none_match)
        except EngineError:
            reply = None
        if reply is None or read.has_body:
            # The app reports the problem, or reads the body (the rest of it
            # after a hold) before it responds.
            await self.app(scope, receive, send)
            return
        body = b"" if scope["method"] == "HEAD" else reply.body
        await respond(send, reply.status, reply.headers + self.common_headers(scope), body)

    async def _hold(self, read: StatusRead, watch: JobWatch, receive: Receive) -> Receive | None:
        """Wait until ``watch`` reports a change, the wait ends, or the client leaves.

        The watch reports the job's next status transition or retry, or its
        removal. Progress and queue position never end the wait. Returns the
        ``receive`` to pass on, which first replays the messages read while
        waiting. Returns None once the client has disconnected, because no
        client is left to receive a response. ``release`` also ends the
        wait. Cancellation propagates; the job never notices either way.

        One task does all of it: it reads the request's messages in a cancel
        scope that has the wait's deadline and that the change, or
        ``release``, cancels.
        """
        if self._released:
            return receive
        received: list[ASGIReceiveEvent] = []
        with trio.CancelScope(deadline=trio.current_time() + read.seconds) as hold:
            self._held_scopes.add(hold)
            try:
                with watch.changed.cancelling(hold):
                    await self._read_while_held(receive, received)
            finally:
                self._held_scopes.discard(hold)
        if received and received[-1]["type"] == "http.disconnect":
            logger.debug("client left during the long poll of job %s", read.job_id)
            return None
        return replaying(received, receive)

    async def _read_while_held(self, receive: Receive, received: list[ASGIReceiveEvent]) -> None:
        """Store what ``receive`` returns until the client leaves or its body passes the limit.

        Most held requests have no body: this reads one empty
        ``http.request`` message, then blocks until ``http.disconnect`` or
        until the hold is cancelled. A body larger than ``max_body_bytes``
        also returns, so that the app reads or rejects the rest.
        """
        body_bytes = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] == "http.disconnect":
                return
            if message["type"] == "http.request":
                body_bytes += len(message["body"])
            if body_bytes > self.max_body_bytes:
                return
