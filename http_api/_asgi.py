"""ASGI plumbing shared by the layers that respond to requests before Quart receives them."""

from __future__ import annotations

import collections
import dataclasses
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence

from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    HTTPScope,
    Scope,
)

from engine import JobClient

Receive = ASGIReceiveCallable
Send = ASGISendCallable
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# Response header fields as (name, value) text, encoded as Latin-1 when sent.
HeaderList = list[tuple[str, str]]
# The headers that the app adds to every response to one request (see CommonHeaders).
CommonHeadersOf = Callable[[HTTPScope], HeaderList]
# Counts one request in its rate-limit budget; returns whether it is within it.
Admit = Callable[[HTTPScope], bool]


def request_path(scope: HTTPScope) -> str:
    """Return the path of the request, also for an absolute-form target ("GET http://host/p")."""
    path = scope["path"]
    if not path.startswith("/"):
        # As sent to proxies; Quart reads the path out of it the same way.
        path = urllib.parse.urlsplit(path).path
    return path


def header_lines(scope: HTTPScope, name: bytes) -> list[str]:
    """Return every ``name`` line of the request, decoded as Latin-1; ``name`` is lowercase."""
    return [value.decode("latin-1") for header, value in scope["headers"] if header == name]


async def respond(send: Send, status: int, headers: HeaderList, body: bytes) -> None:
    """Send a whole response: the head, then ``body`` as the one and last body message.

    Two checkpoints. Cancelled between them, the client gets the head only,
    and the server closes the connection when the task ends.
    """
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def replaying(received: Sequence[ASGIReceiveEvent], receive: Receive) -> Receive:
    """Return a ``receive`` that returns ``received`` in order, then calls ``receive``.

    A layer that read some of a request and then passes it on hands this to
    the app, which reads the request from its start.
    """
    if not received:
        return receive
    pending = collections.deque(received)

    async def replay() -> ASGIReceiveEvent:
        if pending:
            return pending.popleft()
        return await receive()

    return replay


@dataclasses.dataclass(eq=False)
class FrontLayer:
    """Base of the ASGI middleware that serves some requests before ``app`` receives them.

    ``jobs`` returns the running supervisor's client. It is called per
    request, so the layer can be built before the supervisor starts.
    ``common_headers`` returns the headers that the app adds to every
    response to a request (request id, security, CORS and rate-limit
    headers), which the layer sends after its response's own. ``admit``
    counts a request in its rate-limit budget and returns whether it is
    within it. A layer calls it once per request it takes, and the app must
    not count that request again (see ``RateLimits``). ``max_body_bytes``
    bounds what a layer buffers of a request's body.
    """

    app: ASGIApp
    jobs: Callable[[], JobClient]
    common_headers: CommonHeadersOf
    admit: Admit | None = None
    _: dataclasses.KW_ONLY
    max_body_bytes: int

    def admits(self, scope: HTTPScope) -> bool:
        """Count the request in its rate-limit budget; return whether the layer may serve it."""
        return self.admit is None or self.admit(scope)
