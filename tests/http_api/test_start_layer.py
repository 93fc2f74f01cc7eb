"""The start layer responds to job starts exactly as the start route would.

Each comparison sends one start through the app as served, where
``StartLayer`` responds to it, and the same start through Quart alone, with
the layers taken off the app for that request. A ``before_request`` hook
records which requests reached Quart, so a test fails if the layer stops
serving what it should, or serves what it should pass on.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio.testing
from garbage import cyclic_garbage
from quart import Quart, request
from quart.typing import TestClientProtocol as QuartTestClient
from scopes import http_scope
from test_start_validation import BAD_REQUESTS, BadRequest

from engine import EngineSettings
from http_api import Settings, create_app
from http_api._context import CLIENT_KEY
from http_api._problems import Problem

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

START = "/v1/download/start"
FILE_ID = 72_000
REQUEST_ID = "start-comparison"
ALLOWED_ORIGIN = "https://app.example"
JSON = {"Content-Type": "application/json"}
# The budget left goes down by one per request, so the two responses differ there.
COUNTED_HEADER = "ratelimit-remaining"
_JOB_ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

Answer = tuple[int, list[tuple[str, str]], bytes]


class Starter:
    """A test client, the app, and the paths of the requests that reached Quart."""

    def __init__(self, client: QuartTestClient, app: Quart) -> None:
        self.client = client
        self.app = app
        self.reached_quart: list[str] = []

        @app.before_request
        async def record() -> None:
            self.reached_quart.append(request.path)

    async def send(self, body: bytes, headers: dict[str, str] | None = None) -> Answer:
        """POST ``body`` to the start route; return the status, headers and body, job ids masked.

        ``headers`` replace the default ``Content-Type: application/json``.
        """
        sent = {"X-Request-ID": REQUEST_ID, **(JSON if headers is None else headers)}
        response = await self.client.post(START, headers=sent, data=body)
        headers_kept = [
            (name.lower(), _JOB_ID.sub(b"<job>", value.encode()).decode())
            for name, value in response.headers.items()
            if name.lower() != COUNTED_HEADER
        ]
        return response.status_code, headers_kept, _JOB_ID.sub(b"<job>", await response.get_data())

    async def layer_and_route(
        self, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[Answer, Answer, bool]:
        """Send a start as served, then through Quart alone.

        Returns both responses and whether the first reached Quart.
        """
        before = len(self.reached_quart)
        layer = await self.send(body, headers)
        reached = len(self.reached_quart) > before
        with quart_only(self.app):
            route = await self.send(body, headers)
        assert len(self.reached_quart) == before + 1 + reached
        return layer, route, reached

    async def jobs(self) -> int:
        return (await self.app.extensions[CLIENT_KEY].stats()).jobs


@contextlib.contextmanager
def quart_only(app: Quart) -> Iterator[None]:
    """Take the ASGI layers off ``app`` for the ``with`` block."""
    layers = app.asgi_app
    # The layers are an attribute of the instance; without it, Quart's own
    # method of the class handles the request.
    del app.asgi_app
    try:
        yield
    finally:
        app.asgi_app = layers  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def open_starter(tmp_path: Path, **engine: Any) -> AsyncIterator[Starter]:
    settings = EngineSettings(
        results_dir=tmp_path / "results",
        download_delay_min_ms=60_000,
        download_delay_max_ms=60_000,
        download_size_min_bytes=1000,
        download_size_max_bytes=2000,
        job_timeout_ms=300_000,
        **engine,
    )
    app = create_app(Settings(engine=settings, cors_origins=(ALLOWED_ORIGIN,)))
    async with app.test_app() as test_app:
        yield Starter(test_app.test_client(), app)


@pytest.fixture
async def starter(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> AsyncIterator[Starter]:
    async with open_starter(tmp_path) as running:
        yield running


def start_body(**members: Any) -> bytes:
    return json.dumps({"file_id": FILE_ID, **members}).encode()


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param(start_body(), JSON, id="plain"),
        pytest.param(start_body(timeout_ms=60_000), JSON, id="timeout"),
        pytest.param(start_body(extra=[1, 2]), JSON, id="unknown-member"),
        pytest.param(start_body(), {**JSON, "Origin": ALLOWED_ORIGIN}, id="allowed-origin"),
        pytest.param(start_body(), {**JSON, "Origin": "https://other.example"}, id="other-origin"),
        pytest.param(
            start_body(), {"Content-Type": "Application/Problem+JSON; charset=UTF8"}, id="json-type"
        ),
    ],
)
async def test_same_202(starter, body, headers):
    layer, route, reached = await starter.layer_and_route(body, headers)

    assert not reached
    assert layer == route
    assert layer[0] == 202
    names = {name for name, _ in layer[1]}
    assert {"location", "retry-after", "x-request-id", "ratelimit-limit", "vary"} <= names
    assert await starter.jobs() == 2


async def test_same_200_for_repeated_key(starter):
    key = {**JSON, "Idempotency-Key": "repeat-me"}
    first = await starter.send(start_body(), key)

    layer, route, reached = await starter.layer_and_route(start_body(), key)

    assert not reached
    assert layer == route
    assert first[0] == 202
    assert layer[0] == 200
    assert b'"fileId":72000' in layer[2]
    assert await starter.jobs() == 1


async def test_same_422_for_reused_key(starter):
    key = {**JSON, "Idempotency-Key": "reused"}
    await starter.send(start_body(), key)

    layer, route, reached = await starter.layer_and_route(start_body(timeout_ms=1000), key)

    assert not reached
    assert layer == route
    assert layer[0] == 422
    assert json.loads(layer[2])["code"] == "idempotency_key_reused"
    assert json.loads(layer[2])["requestId"] == REQUEST_ID


@pytest.mark.parametrize(
    ("body", "headers", "code"),
    [
        pytest.param(
            start_body(), {**JSON, "Idempotency-Key": " spaced"}, "invalid_idempotency_key"
        ),
        pytest.param(start_body(timeout_ms=300_001), JSON, "invalid_body", id="timeout-over-max"),
        pytest.param(start_body(timeout_ms=0), JSON, "invalid_body", id="timeout-zero"),
    ],
)
async def test_same_400_for_bad_key_or_timeout(starter, body, headers, code):
    layer, route, reached = await starter.layer_and_route(body, headers)

    assert not reached
    assert layer == route
    assert layer[0] == 400
    assert json.loads(layer[2])["code"] == code


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[case.id for case in BAD_REQUESTS])
async def test_same_problem_for_bad_request(starter, case: BadRequest):
    layer, route, reached = await starter.layer_and_route(case.body, case.headers)

    # Quart rejects a content type other than JSON and a body over the limit,
    # and the layer responds to everything else.
    assert reached == (case.status in (413, 415))
    assert layer == route
    assert layer[0] == case.status
    assert json.loads(layer[2])["code"] == case.code
    assert await starter.jobs() == 0


async def test_same_503_when_overloaded(tmp_path, autojump_clock):
    async with open_starter(tmp_path, max_concurrent_jobs=1, max_queued_jobs=1) as starter:
        await starter.send(start_body())
        await starter.send(start_body())

        layer, route, reached = await starter.layer_and_route(start_body())

        assert not reached
        assert layer == route
        assert layer[0] == 503
        assert json.loads(layer[2])["code"] == "overloaded"
        assert "retry-after" in {name for name, _ in layer[1]}
        assert await starter.jobs() == 2


async def asgi_start(app: Quart, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Call ``app`` with a start request whose body arrives as ``messages``; return what it sent."""
    # No Content-Length: the body's size is known only as it arrives.
    scope = http_scope("POST", START, [(b"content-type", b"application/json")])
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_body_in_parts_served_by_layer(starter):
    body = start_body()
    parts = [body[:5], body[5:9], body[9:]]
    messages = [{"type": "http.request", "body": part, "more_body": True} for part in parts]
    messages.append({"type": "http.request", "body": b"", "more_body": False})

    sent = await asgi_start(starter.app, messages)

    assert sent[0]["status"] == 202
    assert b'"status":"queued"' in sent[1]["body"]
    assert starter.reached_quart == []
    assert await starter.jobs() == 1


async def test_body_growing_past_limit_passed_to_quart(starter):
    # 17 parts of 4 KiB: the layer stops reading after the 16th and Quart reads
    # the rest, from the first byte, and rejects the whole.
    part = b"x" * 4096
    messages = [{"type": "http.request", "body": part, "more_body": True} for _ in range(17)]
    messages.append({"type": "http.request", "body": b"", "more_body": False})

    sent = await asgi_start(starter.app, messages)

    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["code"] == "request_entity_too_large"
    assert starter.reached_quart == [START]
    assert await starter.jobs() == 0


async def test_disconnect_mid_body_creates_nothing(starter):
    messages = [
        {"type": "http.request", "body": b'{"file_id"', "more_body": True},
        {"type": "http.disconnect"},
    ]

    sent = await asgi_start(starter.app, messages)

    assert sent == []
    assert starter.reached_quart == []
    assert await starter.jobs() == 0


async def test_stalled_body_gets_408_on_both_paths(starter, autojump_clock):
    # The client sends part of the body, then nothing more.
    messages = [{"type": "http.request", "body": b'{"file_id"', "more_body": True}]

    began = trio.current_time()
    layer = await asgi_start(starter.app, messages)
    layer_seconds = trio.current_time() - began
    with quart_only(starter.app):
        quart = await asgi_start(starter.app, messages)

    for sent in (layer, quart):
        assert sent[0]["status"] == 408
        headers = {name.lower(): value for name, value in sent[0]["headers"]}
        assert headers[b"connection"] == b"close"
        problem = json.loads(sent[1]["body"])
        assert problem["code"] == "body_timeout"
        assert problem["detail"] == (
            "the request body timed out after 30 seconds: send all of it within that time"
        )
    assert layer_seconds == pytest.approx(30)
    assert starter.reached_quart == [START]
    assert await starter.jobs() == 0


async def test_rejected_start_leaves_no_cycle(starter):
    with cyclic_garbage() as garbage:
        response = await starter.send(b"{not json")

    assert response[0] == 400
    assert [item for item in garbage if isinstance(item, Problem)] == []
