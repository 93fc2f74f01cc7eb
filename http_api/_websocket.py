"""Rejecting WebSocket handshakes: the service has no WebSocket endpoints."""

from __future__ import annotations

import dataclasses
import logging

from hypercorn.typing import Scope

from ._asgi import ASGIApp, Receive, Send
from ._problems import Problem
from ._request_id import request_id_of

logger = logging.getLogger("http_api")

WEBSOCKET_PROBLEM = Problem(
    400,
    "websocket_not_supported",
    "WebSocket not supported",
    "The service has no WebSocket endpoints. Poll the status with plain HTTP "
    "requests, using ?wait=N for a long poll.",
)


@dataclasses.dataclass(eq=False)
class WebSocketRejector:
    """ASGI middleware that rejects every WebSocket handshake with a 400 problem document.

    Quart would route the handshake as a WebSocket request and fail in the
    app's request hooks. The service's own server rejects handshakes before
    they reach the app (see ``http_api._server``), so this layer responds to
    only those that another ASGI server passes on. The response goes out
    over the ASGI WebSocket HTTP response extension, which Hypercorn offers.
    Without the extension the handshake is closed instead, and the server
    then sends 403. Other scopes pass to ``app`` unchanged. Two checkpoints,
    both sends. The layer never reads from the client.
    """

    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        logger.debug("WebSocket handshake for %s rejected", scope["path"])
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1000, "reason": ""})
            return
        # request_id_of reads only the scope's headers, which both scope types have.
        request_id = request_id_of(scope)  # type: ignore[arg-type]
        headers, body = WEBSOCKET_PROBLEM.encode(request_id)
        headers.append(("X-Request-ID", request_id))
        await send(
            {
                "type": "websocket.http.response.start",
                "status": WEBSOCKET_PROBLEM.status,
                "headers": [
                    (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
