"""The status layer responds to status reads exactly as the status route would.

``StatusLayer`` passes every status read that has a body on to Quart, so
the same read sent with a one-byte body gets the route's response. Each test
sends both and compares them, and a ``before_request`` hook records which
requests reached Quart, so that a test fails if the layer stops serving them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio.testing
from quart import Quart, request
from quart.typing import TestClientProtocol as QuartTestClient

from engine import EngineSettings
from http_api import Settings, create_app

FILE_ID = 71_000
ALLOWED_ORIGIN = "https://app.example"
REQUEST_ID = "status-read-comparison"
# The budget left goes down by one per request, so the two responses differ there.
COUNTED_HEADER = "ratelimit-remaining"


class Reader:
    """A test client plus the paths of the requests that reached Quart."""

    def __init__(self, client: QuartTestClient, app: Quart) -> None:
        self.client = client
        self.reached_quart: list[str] = []

        @app.before_request
        async def record() -> None:
            self.reached_quart.append(request.path)

    async def start(self, **body: Any) -> str:
        response = await self.client.post("/v1/download/start", json={"file_id": FILE_ID, **body})
        assert response.status_code == 202
        path: str = (await response.get_json())["statusUrl"]
        return path

    async def layer_and_route(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[tuple[int, list[tuple[str, str]], bytes], ...]:
        """Send one read without a body and one with; return both as (status, headers, body)."""
        headers = {"X-Request-ID": REQUEST_ID, **(headers or {})}
        responses = []
        for data in (b"", b"x"):
            before = len(self.reached_quart)
            sent = {**headers, "Content-Length": str(len(data))} if data else headers
            response = await self.client.open(path, method=method, headers=sent, data=data)
            reached = len(self.reached_quart) > before
            assert reached == bool(data), "the read without a body must not reach Quart"
            kept = [
                (name.lower(), value)
                for name, value in response.headers.items()
                if name.lower() != COUNTED_HEADER
            ]
            responses.append((response.status_code, kept, await response.get_data()))
        return tuple(responses)


def _without_length(
    response: tuple[int, list[tuple[str, str]], bytes],
) -> tuple[int, list[tuple[str, str]], bytes]:
    status, headers, body = response
    return status, [(name, value) for name, value in headers if name != "content-length"], body


@pytest.fixture
async def reader(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> AsyncIterator[Reader]:
    engine = EngineSettings(
        results_dir=tmp_path / "results",
        download_delay_min_ms=60_000,
        download_delay_max_ms=60_000,
        download_size_min_bytes=1000,
        download_size_max_bytes=2000,
    )
    app = create_app(Settings(engine=engine, cors_origins=(ALLOWED_ORIGIN,)))
    async with app.test_app() as test_app:
        yield Reader(test_app.test_client(), app)


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        pytest.param("GET", {}, 200, id="get"),
        pytest.param("HEAD", {}, 200, id="head"),
        pytest.param("GET", {"If-None-Match": '"stale"'}, 200, id="stale-tag"),
        pytest.param("GET", {"Origin": ALLOWED_ORIGIN}, 200, id="allowed-origin"),
        pytest.param("GET", {"Origin": "https://other.example"}, 200, id="other-origin"),
    ],
)
async def test_same_response(reader, method, headers, status):
    path = await reader.start()

    layer, route = await reader.layer_and_route(method, path, headers)

    if method == "HEAD":
        # Quart leaves dropping a HEAD response's body to the server, and the test
        # client counts the body it receives as Content-Length. The e2e tests check
        # HEAD over a real connection.
        layer, route = _without_length(layer), _without_length(route)
        assert layer[2] == b""
    else:
        assert layer[2] == route[2]
    assert layer[:2] == route[:2]
    assert layer[0] == status
    names = {name for name, _ in layer[1]}
    assert {"etag", "retry-after", "x-request-id", "ratelimit-limit", "vary"} <= names


async def test_same_304(reader):
    path = await reader.start()
    etag = (await reader.client.get(path)).headers["ETag"]

    layer, route = await reader.layer_and_route("GET", path, {"If-None-Match": f"W/{etag}"})

    assert layer == route
    assert layer[0] == 304
    assert layer[2] == b""


async def test_same_response_for_finished_job(reader, autojump_clock):
    path = await reader.start()
    await trio.sleep(120)

    layer, route = await reader.layer_and_route("GET", path)

    assert layer == route
    assert b'"status":"done"' in layer[2]
    assert "retry-after" not in {name for name, _ in layer[1]}


async def test_held_poll_answered_by_layer(reader):
    path = await reader.start()
    etag = (await reader.client.get(path)).headers["ETag"]
    before = len(reader.reached_quart)

    started = trio.current_time()
    response = await reader.client.get(f"{path}?wait=0.5", headers={"If-None-Match": etag})

    assert 0.5 <= trio.current_time() - started < 0.6
    assert response.status_code in (200, 304)
    assert response.headers["X-Request-ID"]
    assert len(reader.reached_quart) == before


async def test_stale_long_poll_with_body_to_route(reader):
    # The layer does not wait, and leaves the unread body to Quart.
    path = await reader.start()
    before = len(reader.reached_quart)

    response = await reader.client.get(
        f"{path}?wait=5",
        headers={"If-None-Match": '"stale"', "Content-Length": "1"},
        data=b"x",
    )

    assert response.status_code == 200
    assert len(reader.reached_quart) == before + 1


async def test_unknown_job_passed_to_route(reader):
    path = "/v1/download/status/3f2b8c1e-0d4a-4c6e-9b1a-2d5e7f8a9c0b"

    response = await reader.client.get(path)

    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/problem+json"
    assert reader.reached_quart == [path]
