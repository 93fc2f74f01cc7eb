"""Long polls held in an ASGI layer in front of Quart, before a Quart request exists.

A long poll (``GET /v1/download/status/{jobId}?wait=N`` whose
``If-None-Match`` names the current ETag) spends nearly all its life
waiting. Held inside a Quart route, each waiting poll also keeps Quart's
request, its contexts and its message task alive. That is about 60 more
tracked objects per poll (200 instead of 140, counted with 2,000 polls
open). Every garbage collection walks them while the whole process stops,
and with thousands of clients those pauses, not CPU, limit how many a
process serves. So
``LongPollLayer`` waits first, holding only the ASGI scope, one task that
watches for the client leaving, and the engine's change event of
the job. When the wait ends it passes the request on to Quart unchanged,
and the status route handles it like any conditional request: 304 while
the document is unchanged, else 200 with the current document.

Anything else passes straight through, including every long poll that the
route must reject or respond to at once (malformed ``wait``, unknown job,
stale tag, over its rate limit), so Quart alone writes every response.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import re
import urllib.parse
from collections.abc import Awaitable, Callable

import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    HTTPScope,
    Scope,
)

from engine import EngineError, JobClient, JobSnapshot

from ._problems import Problem
from ._render import encode_document, parse_tag_lines, render_snapshot

logger = logging.getLogger("http_api")

Receive = ASGIReceiveCallable
Send = ASGISendCallable
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A job id as the routes accept it: a UUID in 8-4-4-4-12 hex form.
JOB_ID_REGEX = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_STATUS_PATH = re.compile(rf"/v1/download/status/({JOB_ID_REGEX})")

# A long poll waits at most this long, well below the 60 s and 100 s after
# which nginx and Cloudflare give up on a request by default (seconds).
MAX_WAIT_SECONDS = 30.0
# Larger ?wait= values are rejected as mistakes rather than capped.
MAX_ACCEPTED_WAIT_SECONDS = 3600
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
        raise Problem(
            400,
            "invalid_wait",
            "Invalid wait",
            f"wait must be a number of seconds from 0 to {MAX_ACCEPTED_WAIT_SECONDS}, got {raw!r}",
            field="wait",
        )
    return min(seconds, MAX_WAIT_SECONDS)


@dataclasses.dataclass(frozen=True, slots=True)
class LongPoll:
    """A request to hold: whose status, for how long, and the tags the client has."""

    job_id: str
    seconds: float
    if_none_match: str

    @classmethod
    def from_scope(cls, scope: HTTPScope) -> LongPoll | None:
        """Return the long poll that ``scope`` requests, or None if it is not one to hold.

        Reads the request the way the status route does: the first ``wait``
        in the query, and every ``If-None-Match`` line as one list of tags. A request with a
        ``wait`` the route rejects is not held, so the route rejects it at once.
        """
        if scope["method"] not in ("GET", "HEAD"):
            return None
        path = scope["path"]
        if not path.startswith("/"):
            # An absolute-form request line ("GET http://host/path"), as sent to proxies.
            path = urllib.parse.urlsplit(path).path
        match = _STATUS_PATH.fullmatch(path)
        if match is None:
            return None
        tags = [value for name, value in scope["headers"] if name == b"if-none-match"]
        if not tags:
            return None
        query = urllib.parse.parse_qsl(
            scope["query_string"].decode("latin-1"), keep_blank_values=True
        )
        raw_wait = next((value for name, value in query if name == "wait"), None)
        try:
            seconds = parse_wait(raw_wait)
        except Problem:
            return None
        if seconds <= 0:
            return None
        if_none_match = ", ".join(tag.decode("latin-1") for tag in tags)
        return cls(match.group(1).lower(), seconds, if_none_match)


class LongPollLayer:
    """ASGI middleware that holds long polls before handing them to ``app``.

    ``jobs`` returns the running supervisor's client; it is called per held
    request, so the layer can be built before the supervisor starts.
    ``admit`` counts a request in its rate-limit budget and returns whether
    it is within it. The layer calls it once before holding a request, and
    the app must not count that request again (see ``RateLimits``).
    ``max_body_bytes`` bounds what the layer buffers of a held request's
    body (a GET rarely has one). A larger body ends the hold, and the app
    then handles the request as usual.
    """

    def __init__(
        self,
        app: ASGIApp,
        jobs: Callable[[], JobClient],
        admit: Callable[[HTTPScope], bool] | None = None,
        *,
        max_body_bytes: int,
    ) -> None:
        self._app = app
        self._jobs = jobs
        self._admit = admit
        self._max_body_bytes = max_body_bytes
        self._holds: set[trio.CancelScope] = set()
        self._released = False

    def release(self) -> None:
        """End every hold now and hold no request from now on; call when the server stops.

        Released polls get their response at once, from the document as it
        is, so that no client loses its connection without a response when the
        server closes the connections still open after its grace period.
        Not a checkpoint.
        """
        self._released = True
        for scope in self._holds:
            scope.cancel()
        logger.info("released %d held long polls", len(self._holds))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._released:
            poll = LongPoll.from_scope(scope)
            if poll is not None and (self._admit is None or self._admit(scope)):
                held = await self._hold(poll, receive)
                if held is None:
                    return
                receive = held
        await self._app(scope, receive, send)

    async def _hold(self, poll: LongPoll, receive: Receive) -> Receive | None:
        """Wait until the job's status or attempt changes, the wait ends, or the client leaves.

        Returns the ``receive`` to pass on, which first replays the messages
        read while waiting. Returns None once the client has disconnected,
        because no client is left to receive a response. Returns at once,
        without waiting, when the tag does not match or the job cannot be
        read. The route then responds with the document or the problem.
        ``release`` also ends the wait. Cancellation propagates; the job
        never notices either way.
        """
        jobs = self._jobs()
        try:
            snapshot = await jobs.status(poll.job_id)
        except EngineError:
            return receive
        _, etag = encode_document(render_snapshot(snapshot))
        if self._released or not parse_tag_lines([poll.if_none_match]).contains_weak(etag):
            return receive

        state = (snapshot.status, snapshot.attempt)

        def changed(candidate: JobSnapshot) -> bool:
            return (candidate.status, candidate.attempt) != state

        received: list[ASGIReceiveEvent] = []
        async with trio.open_nursery() as nursery:
            hold = nursery.cancel_scope
            hold.deadline = trio.current_time() + poll.seconds
            self._holds.add(hold)
            try:
                nursery.start_soon(self._read_while_held, receive, received, hold)
                try:
                    await jobs.wait_for_change(poll.job_id, changed)
                except EngineError:
                    pass  # The job was removed or the server is stopping; the route reports it.
                hold.cancel()
            finally:
                self._holds.discard(hold)
        if received and received[-1]["type"] == "http.disconnect":
            logger.debug("client left during the long poll of job %s", poll.job_id)
            return None
        return _replaying(received, receive)

    async def _read_while_held(
        self, receive: Receive, received: list[ASGIReceiveEvent], hold: trio.CancelScope
    ) -> None:
        """Store what ``receive`` returns; cancel ``hold`` when the client leaves.

        Most held requests have no body: this reads one empty
        ``http.request`` message, then blocks until ``http.disconnect``. A
        body larger than ``max_body_bytes`` also cancels ``hold``, so the app
        reads or rejects the rest.
        """
        body_bytes = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] == "http.disconnect":
                hold.cancel()
                return
            if message["type"] == "http.request":
                body_bytes += len(message["body"])
            if body_bytes > self._max_body_bytes:
                hold.cancel()
                return


def _replaying(received: list[ASGIReceiveEvent], receive: Receive) -> Receive:
    """Return a ``receive`` that returns ``received`` in order, then calls ``receive``."""
    if not received:
        return receive
    pending = collections.deque(received)

    async def replay() -> ASGIReceiveEvent:
        if pending:
            return pending.popleft()
        return await receive()

    return replay
