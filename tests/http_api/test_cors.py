"""Tests of CORS: Access-Control-* headers for any origin or a list, preflights, CORS_ORIGINS."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from quart.typing import TestClientProtocol as QuartTestClient

from engine import EngineSettings, SettingsError
from http_api import Settings, create_app

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

ALLOWED = "https://app.example.com"
OTHER_ALLOWED = "http://localhost:3000"
DISALLOWED = "https://evil.example.net"

EXPOSED = {
    "Location",
    "Retry-After",
    "ETag",
    "Content-Disposition",
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "Last-Modified",
    "X-Request-ID",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
}
ALLOWED_METHODS = {"GET", "HEAD", "POST", "DELETE", "OPTIONS"}
ALLOWED_REQUEST_HEADERS = {
    "Content-Type",
    "Idempotency-Key",
    "If-Match",
    "If-Modified-Since",
    "If-None-Match",
    "If-Range",
    "If-Unmodified-Since",
    "Range",
    "X-Request-ID",
}


def header_items(response, name: str) -> set[str]:
    """Split a comma-separated header into its items."""
    return {item.strip() for item in response.headers.get(name, "").split(",") if item.strip()}


def preflight_headers(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "content-type, idempotency-key",
    }


@asynccontextmanager
async def open_client(tmp_path: Path, **settings) -> AsyncIterator[QuartTestClient]:
    """Run an app with small archives and ``settings`` for the ``async with`` block."""
    engine = EngineSettings(
        results_dir=tmp_path, download_size_min_bytes=1000, download_size_max_bytes=4000
    )
    app = create_app(Settings(engine=engine, **settings))
    async with app.test_app() as test_app:
        yield test_app.test_client()


@pytest.fixture
async def listed_client(tmp_path, autojump_clock) -> AsyncIterator[QuartTestClient]:
    """A client of an app whose CORS_ORIGINS lists two origins, one written in mixed case."""
    origins = ("HTTPS://App.Example.com:443", OTHER_ALLOWED)
    async with open_client(tmp_path, cors_origins=origins) as client:
        yield client


async def test_any_origin_without_origin_header(autojump_clock, api):
    response = await api.client.get("/health")

    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert header_items(response, "Access-Control-Expose-Headers") == EXPOSED


async def test_any_origin_with_origin_header(autojump_clock, api):
    response = await api.client.get("/health", headers={"Origin": DISALLOWED})

    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert header_items(response, "Access-Control-Expose-Headers") == EXPOSED
    assert "Origin" not in header_items(response, "Vary")


async def test_any_origin_on_problem(autojump_clock, api):
    response = await api.client.get("/v1/nothing-here", headers={"Origin": ALLOWED})

    assert response.status_code == 404
    assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_listed_origin_echoed(listed_client):
    for origin in (ALLOWED, OTHER_ALLOWED):
        response = await listed_client.get("/health", headers={"Origin": origin})

        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert "Origin" in header_items(response, "Vary")
        assert header_items(response, "Access-Control-Expose-Headers") == EXPOSED


async def test_listed_origin_echoed_on_problem(listed_client):
    response = await listed_client.post(
        "/v1/download/start", json={"file_id": 1}, headers={"Origin": ALLOWED}
    )

    assert response.status_code == 400
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED


async def test_unlisted_origin_gets_no_allow_origin(listed_client):
    response = await listed_client.get("/health", headers={"Origin": DISALLOWED})

    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Expose-Headers" not in response.headers
    assert "Origin" in header_items(response, "Vary")


async def test_origin_differing_in_port_is_unlisted(listed_client):
    response = await listed_client.get(
        "/health", headers={"Origin": "https://app.example.com:8443"}
    )

    assert "Access-Control-Allow-Origin" not in response.headers


async def test_listed_mode_without_origin_varies(listed_client):
    response = await listed_client.get("/health")

    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Origin" in header_items(response, "Vary")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/download/start",
        "/v1/download/check",
        f"/v1/download/status/{uuid.uuid4()}",
        f"/v1/download/{uuid.uuid4()}",
        "/health",
    ],
)
async def test_preflight_is_204(autojump_clock, api, path):
    response = await api.client.options(path, headers=preflight_headers(ALLOWED))

    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert header_items(response, "Access-Control-Allow-Methods") == ALLOWED_METHODS
    assert header_items(response, "Access-Control-Allow-Headers") == ALLOWED_REQUEST_HEADERS
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Request-ID"]
    assert await response.get_data() == b""


async def test_preflight_listed_origin(listed_client):
    response = await listed_client.options("/v1/download/start", headers=preflight_headers(ALLOWED))

    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert header_items(response, "Access-Control-Allow-Methods") == ALLOWED_METHODS
    assert "Origin" in header_items(response, "Vary")


async def test_preflight_unlisted_origin(listed_client):
    response = await listed_client.options(
        "/v1/download/start", headers=preflight_headers(DISALLOWED)
    )

    assert response.status_code == 204
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers


async def test_preflight_unknown_route_is_404(autojump_clock, api):
    response = await api.client.options("/v1/nothing-here", headers=preflight_headers(ALLOWED))
    problem = await response.get_json(force=True)

    assert response.status_code == 404
    assert problem["code"] == "not_found"
    assert "Access-Control-Allow-Methods" not in response.headers
    assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_plain_options_lists_allowed_methods(autojump_clock, api):
    response = await api.client.options("/v1/download/start")

    assert response.status_code == 200
    assert "POST" in header_items(response, "Allow")
    assert "Access-Control-Allow-Methods" not in response.headers


@pytest.mark.parametrize(
    "value",
    [
        "app.example.com",
        "https://app.example.com/",
        "https://app.example.com/path",
        "https://user@app.example.com",
        "https://app.example.com:0",
        "https://app.example.com:99999",
        "https://[not-ipv6]",
        "https://app.example.com,,http://localhost:3000",
        "*,https://app.example.com",
        "null",
    ],
)
def test_cors_origins_invalid(value):
    with pytest.raises(SettingsError, match="CORS_ORIGINS"):
        Settings.from_environ({"CORS_ORIGINS": value})


def test_cors_origins_default_is_any():
    assert Settings.from_environ({}).cors_origins == ("*",)
    assert Settings.from_environ({"CORS_ORIGINS": "  "}).cors_origins == ("*",)


def test_cors_origins_list_parsed():
    value = " https://app.example.com , http://localhost:3000,http://[::1]:8000,http://127.0.0.1 "

    settings = Settings.from_environ({"CORS_ORIGINS": value})

    assert settings.cors_origins == (
        "https://app.example.com",
        "http://localhost:3000",
        "http://[::1]:8000",
        "http://127.0.0.1",
    )


def test_cors_origins_checked_on_construction():
    with pytest.raises(SettingsError, match="CORS_ORIGINS"):
        Settings(cors_origins=("ftp:/files.example.com",))
    with pytest.raises(SettingsError, match="CORS_ORIGINS"):
        Settings(cors_origins=())
