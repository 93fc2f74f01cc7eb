"""WebSocket handshakes get a problem document, or a close without the response extension."""

from __future__ import annotations

import json
from typing import Any

from http_api._websocket import WebSocketRejector


async def never_called(scope, receive, send) -> None:
    raise AssertionError("the app received a WebSocket scope")


def websocket_scope(**extra: Any) -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": "/health",
        "headers": [(b"x-request-id", b"probe-1")],
        **extra,
    }


async def run_layer(scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the layer read from the client")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await WebSocketRejector(never_called)(scope, receive, send)  # type: ignore[arg-type]
    return sent


async def test_handshake_gets_400_problem():
    sent = await run_layer(websocket_scope(extensions={"websocket.http.response": {}}))

    start, body = sent
    headers = dict(start["headers"])
    document = json.loads(body["body"])
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 400
    assert headers[b"Content-Type"] == b"application/problem+json"
    assert headers[b"X-Request-ID"] == b"probe-1"
    assert body["type"] == "websocket.http.response.body"
    assert body["more_body"] is False
    assert document["code"] == "websocket_not_supported"
    assert document["requestId"] == "probe-1"


async def test_handshake_closed_without_extension():
    sent = await run_layer(websocket_scope())

    assert [message["type"] for message in sent] == ["websocket.close"]


async def test_http_scope_passes_to_app():
    seen: list[str] = []

    async def app(scope, receive, send) -> None:
        seen.append(scope["type"])

    await WebSocketRejector(app)({"type": "http"}, None, None)  # type: ignore[arg-type]

    assert seen == ["http"]
