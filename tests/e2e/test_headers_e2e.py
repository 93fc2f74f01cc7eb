"""Common headers, CORS and rate limiting of a real server, over a socket on 127.0.0.1."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from .conftest import ServerProcess, run_command, stderr_lines

pytestmark = pytest.mark.e2e

REQUEST_TIMEOUT_SECONDS = 5.0
ALLOWED_ORIGIN = "https://app.example.com"

# Every rate-limit and CORS variable is set, so none is inherited from the
# environment of the test run. The 10-minute window outlasts any slow run.
LIMITED = {
    "CORS_ORIGINS": ALLOWED_ORIGIN,
    "RATE_LIMIT_ENABLED": "true",
    "RATE_LIMIT_WINDOW_MS": "600000",
    "RATE_LIMIT_MAX_REQUESTS": "2",
    "RATE_LIMIT_POLL_MAX_REQUESTS": "1000",
    "TRUSTED_PROXIES": "",
}

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "SAMEORIGIN",
    "strict-transport-security": "max-age=31536000; includeSubDomains",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "cross-origin",
}


def open_client(server: ServerProcess) -> httpx.Client:
    # trust_env=False keeps proxy variables from routing 127.0.0.1 elsewhere.
    return httpx.Client(base_url=server.base_url, trust_env=False, timeout=REQUEST_TIMEOUT_SECONDS)


def check(client: httpx.Client, **headers: str) -> httpx.Response:
    """Send one write that starts no job: POST /v1/download/check."""
    return client.post("/v1/download/check", json={"file_id": 70000}, headers=headers)


def assert_common_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert response.headers.get("x-request-id")


def test_headers_over_socket(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(**LIMITED)
    with open_client(server) as client:
        response = client.get(
            "/health", headers={"X-Request-ID": "e2e-trace-1", "Origin": ALLOWED_ORIGIN}
        )

    assert response.status_code == 200
    assert_common_headers(response)
    assert response.headers["x-request-id"] == "e2e-trace-1"
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "Origin" in response.headers["vary"]
    assert response.headers["ratelimit-limit"] == "1000"
    assert response.headers["ratelimit-remaining"] == "999"


def test_status_read_headers_over_socket(start_server: Callable[..., ServerProcess]) -> None:
    # The status layer serves these reads before Quart, with the same headers.
    server = start_server(**LIMITED)
    with open_client(server) as client:
        started = client.post("/v1/download/start", json={"file_id": 70000})
        status_url = started.json()["statusUrl"]
        sent = {"X-Request-ID": "e2e-status-read", "Origin": ALLOWED_ORIGIN}
        got = client.get(status_url, headers=sent)
        head = client.head(status_url, headers=sent)
        # The connection stays usable after a HEAD response without a body.
        again = client.get(status_url, headers={"If-None-Match": got.headers["etag"]})

    for response in (got, head):
        assert response.status_code == 200
        assert_common_headers(response)
        assert response.headers["x-request-id"] == "e2e-status-read"
        assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert response.headers["vary"] == "Origin"
        assert response.headers["ratelimit-limit"] == "1000"
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-cache"
    assert head.content == b""
    assert head.headers["content-length"] == str(len(got.content))
    assert head.headers["etag"] == got.headers["etag"]
    assert int(head.headers["ratelimit-remaining"]) == int(got.headers["ratelimit-remaining"]) - 1
    assert again.status_code == 304
    assert_common_headers(again)


def test_replaced_request_id_over_socket(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(**LIMITED)
    with open_client(server) as client:
        response = client.get("/v1/nothing-here", headers={"X-Request-ID": "x" * 200})

    assert response.status_code == 404
    assert_common_headers(response)
    request_id = response.headers["x-request-id"]
    assert uuid.UUID(request_id).version == 4
    assert response.json()["requestId"] == request_id


def test_preflight_over_socket(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(**LIMITED)
    with open_client(server) as client:
        response = client.options(
            "/v1/download/start",
            headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"},
        )

    assert response.status_code == 204
    assert_common_headers(response)
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-max-age"] == "600"


def test_429_over_socket(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(**LIMITED)
    with open_client(server) as client:
        allowed = [check(client) for _ in range(2)]
        limited = check(client, **{"X-Request-ID": "e2e-trace-429", "Origin": ALLOWED_ORIGIN})
        poll = client.get("/health")

    assert [response.status_code for response in allowed] == [200, 200]
    assert limited.status_code == 429
    assert limited.headers["content-type"] == "application/problem+json"
    assert_common_headers(limited)
    assert limited.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert 1 <= int(limited.headers["retry-after"]) <= 600
    assert limited.headers["ratelimit-limit"] == "2"
    assert limited.headers["ratelimit-remaining"] == "0"
    problem = limited.json()
    assert problem["code"] == "rate_limited"
    assert problem["requestId"] == "e2e-trace-429"
    assert "127.0.0.1" in problem["detail"]
    # Polls have a budget of their own.
    assert poll.status_code == 200
    server.wait_for_log(r"exceeded the write rate limit .* request_id=e2e-trace-429")


def test_trusted_proxy_over_socket(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(**{**LIMITED, "TRUSTED_PROXIES": "127.0.0.1"})
    with open_client(server) as client:
        first_client = [check(client, **{"X-Forwarded-For": "198.51.100.1"}) for _ in range(3)]
        second_client = check(client, **{"X-Forwarded-For": "198.51.100.2"})

    assert [response.status_code for response in first_client] == [200, 200, 429]
    assert "198.51.100.1" in first_client[-1].json()["detail"]
    assert second_client.status_code == 200


def test_invalid_cors_origins_stops_server() -> None:
    result = run_command(
        "serve", "--port", "0", settings={**LIMITED, "CORS_ORIGINS": "app.example.com"}
    )

    assert result.returncode == 2
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "CORS_ORIGINS" in lines[0]
