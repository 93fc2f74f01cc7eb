"""Tests of the headers every response carries, and of the request id in problems and logs."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from quart import Quart, Response
from quart.typing import TestClientProtocol as QuartTestClient

from engine import EngineSettings
from http_api import Settings, create_app

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

PROBLEM_MEDIA_TYPE = "application/problem+json"
JSON_HEADERS = {"Content-Type": "application/json"}

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "cross-origin",
}


def assert_common_headers(response) -> str:
    """Check the headers that every response carries and return its X-Request-ID."""
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert response.headers.get("Access-Control-Allow-Origin") == "*"
    assert "RateLimit-Limit" in response.headers
    assert "RateLimit-Remaining" in response.headers
    assert "RateLimit-Reset" in response.headers
    request_id = response.headers.get("X-Request-ID")
    assert request_id
    return request_id


async def assert_problem_with_request_id(response, status: int) -> None:
    """Check a problem response: its status, common headers and body ``requestId``."""
    assert response.status_code == status
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    request_id = assert_common_headers(response)
    problem = await response.get_json(force=True)
    assert problem["requestId"] == request_id


def is_uuid4(text: str) -> bool:
    try:
        return uuid.UUID(text).version == 4
    except ValueError:
        return False


async def test_request_id_echoed(autojump_clock, api):
    sent = "client-42_req.7~!#"

    response = await api.client.get("/health", headers={"X-Request-ID": sent})

    assert response.headers["X-Request-ID"] == sent


async def test_request_id_of_128_characters_echoed(autojump_clock, api):
    sent = "a" * 128

    response = await api.client.get("/health", headers={"X-Request-ID": sent})

    assert response.headers["X-Request-ID"] == sent


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param("a" * 129, id="too-long"),
        pytest.param("two words", id="space"),
        pytest.param("café", id="non-ascii"),
        pytest.param("", id="empty"),
        pytest.param("tab\there", id="control-character"),
    ],
)
async def test_request_id_replaced(autojump_clock, api, sent):
    response = await api.client.get("/health", headers={"X-Request-ID": sent})

    returned = response.headers["X-Request-ID"]
    assert returned != sent
    assert is_uuid4(returned)


async def test_request_id_generated_without_header(autojump_clock, api):
    first = await api.client.get("/health")
    second = await api.client.get("/health")

    assert is_uuid4(first.headers["X-Request-ID"])
    assert is_uuid4(second.headers["X-Request-ID"])
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


async def test_start_202_has_headers(autojump_clock, api):
    response = await api.client.post("/v1/download/start", json={"file_id": 70000})

    assert response.status_code == 202
    assert_common_headers(response)


async def test_status_200_has_headers(autojump_clock, api):
    job_id = await api.start(70000)

    response = await api.client.get(f"/v1/download/status/{job_id}")

    assert response.status_code == 200
    assert_common_headers(response)


async def test_result_200_has_headers(autojump_clock, api):
    job_id = await api.start(70000)
    await api.wait_until_finished(job_id)

    for method in ("GET", "HEAD"):
        response = await api.fetch_result(job_id, method)
        assert response.status == 200, method
        assert_common_headers(response)


async def test_health_head_has_headers(autojump_clock, api):
    response = await api.client.head("/health")

    assert response.status_code == 200
    assert_common_headers(response)


async def test_404_unknown_route_has_headers(autojump_clock, api):
    response = await api.client.get("/v1/nothing-here", headers={"X-Request-ID": "trace-404"})

    await assert_problem_with_request_id(response, 404)
    assert response.headers["X-Request-ID"] == "trace-404"


async def test_404_unknown_job_has_headers(autojump_clock, api):
    response = await api.client.get(f"/v1/download/status/{uuid.uuid4()}")

    await assert_problem_with_request_id(response, 404)


async def test_405_has_headers(autojump_clock, api):
    response = await api.client.put("/v1/download/start", json={"file_id": 70000})

    await assert_problem_with_request_id(response, 405)


async def test_413_has_headers(autojump_clock, api):
    body = b'{"file_id": 70000, "padding": "' + b"x" * (70 * 1024) + b'"}'

    response = await api.client.post("/v1/download/start", data=body, headers=JSON_HEADERS)

    await assert_problem_with_request_id(response, 413)


async def test_415_has_headers(autojump_clock, api):
    response = await api.client.post(
        "/v1/download/start", data=b"file_id=70000", headers={"Content-Type": "text/plain"}
    )

    await assert_problem_with_request_id(response, 415)


async def test_400_invalid_body_has_headers(autojump_clock, api):
    response = await api.client.post("/v1/download/start", json={"file_id": "70000"})

    await assert_problem_with_request_id(response, 400)


async def test_400_malformed_job_id_has_headers(autojump_clock, api):
    response = await api.client.get("/v1/download/status/not-a-uuid")

    await assert_problem_with_request_id(response, 400)


async def test_problem_request_id_is_echoed_id(autojump_clock, api):
    response = await api.client.get("/v1/nothing-here", headers={"X-Request-ID": "trace-1"})
    problem = await response.get_json(force=True)

    assert problem["requestId"] == "trace-1"


@asynccontextmanager
async def open_app_with_extra_routes(tmp_path: Path) -> AsyncIterator[QuartTestClient]:
    """Run an app with a route of its own that raises an unexpected exception."""
    engine = EngineSettings(
        results_dir=tmp_path, download_size_min_bytes=1000, download_size_max_bytes=4000
    )
    app: Quart = create_app(Settings(engine=engine))

    async def fail() -> Response:
        raise RuntimeError("simulated bug")

    app.add_url_rule("/test/fail", "fail", fail)
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def test_500_has_headers(autojump_clock, tmp_path):
    async with open_app_with_extra_routes(tmp_path) as client:
        response = await client.get("/test/fail")

        await assert_problem_with_request_id(response, 500)


async def test_500_log_has_request_id(autojump_clock, tmp_path, caplog):
    async with open_app_with_extra_routes(tmp_path) as client:
        with caplog.at_level(logging.ERROR, logger="http_api"):
            await client.get("/test/fail", headers={"X-Request-ID": "trace-500"})

    messages = [record.getMessage() for record in caplog.records if record.name == "http_api"]
    assert any("request_id=trace-500" in message for message in messages), messages
    records = [record for record in caplog.records if record.name == "http_api"]
    assert records[0].request_id == "trace-500"


async def test_304_has_headers(autojump_clock, api):
    job_id = await api.start(70000)
    await api.wait_until_finished(job_id)
    first = await api.client.get(f"/v1/download/status/{job_id}")

    response = await api.client.get(
        f"/v1/download/status/{job_id}", headers={"If-None-Match": first.headers["ETag"]}
    )

    assert response.status_code == 304
    assert_common_headers(response)
