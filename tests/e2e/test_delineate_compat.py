"""Compatibility with clients of the Delineate download microservice, over real HTTP.

Each test replays a call that a client of the original service makes, with
the same method, path and body, and checks the parts of the response that
such a client reads. The one intended difference is ``POST
/v1/download/start``: it returns 202 with a job at once instead of holding
the request until the file is ready.

The server runs with ``DOWNLOAD_AVAILABILITY=multiple-of-7``, the original
mock storage, so 70000 and 70007 exist and 70001 does not. Every CORS and
rate-limit variable is set, so none is inherited from the environment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import FAST_SETTINGS, ServerProcess

pytestmark = pytest.mark.e2e

REQUEST_TIMEOUT_SECONDS = 5.0
# Every download takes 3 s, so a start that waited for the file, as the
# original did, would take at least that long.
DOWNLOAD_DELAY_MS = 3000
MAX_START_SECONDS = 1.5

AVAILABLE_FILE_ID = 70000
MISSING_FILE_ID = 70001

DELINEATE_SETTINGS = {
    **FAST_SETTINGS,
    "DOWNLOAD_DELAY_MIN_MS": str(DOWNLOAD_DELAY_MS),
    "DOWNLOAD_DELAY_MAX_MS": str(DOWNLOAD_DELAY_MS),
    # Jobs still running when the server stops are cancelled at once.
    "SHUTDOWN_GRACE_MS": "0",
    "DOWNLOAD_AVAILABILITY": "multiple-of-7",
    "CORS_ORIGINS": "*",
    "RATE_LIMIT_ENABLED": "true",
    # The 10-minute window outlasts any slow run, so counts never reset mid-test.
    "RATE_LIMIT_WINDOW_MS": "600000",
    "RATE_LIMIT_MAX_REQUESTS": "100",
    "RATE_LIMIT_POLL_MAX_REQUESTS": "1000",
    "TRUSTED_PROXIES": "",
}


@pytest.fixture(scope="module")
def delineate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module's read-mostly calls. It must exit with status 0."""
    results_dir: Path = tmp_path_factory.mktemp("delineate-results")
    server = ServerProcess({**DELINEATE_SETTINGS, "RESULTS_DIR": str(results_dir)})
    try:
        server.wait_until_listening()
        yield server
    finally:
        status = server.stop()
    assert status == 0, f"server exited with status {status}; log:\n{server.log}"


@pytest.fixture
def client(delineate_server: ServerProcess) -> Iterator[httpx.Client]:
    # trust_env=False keeps proxy variables from routing 127.0.0.1 elsewhere.
    with httpx.Client(
        base_url=delineate_server.base_url, trust_env=False, timeout=REQUEST_TIMEOUT_SECONDS
    ) as http:
        yield http


# -- the calls of the original contract ---------------------------------------


def test_root_returns_message(client: httpx.Client) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert (
        response.json()["message"] == "download-jobs: long-running downloads behind a polling API"
    )


def test_health_reports_storage(client: httpx.Client) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "healthy", "checks": {"storage": "ok"}}


def test_check_available_file(client: httpx.Client) -> None:
    response = client.post("/v1/download/check", json={"file_id": AVAILABLE_FILE_ID})
    body = response.json()

    assert response.status_code == 200
    assert list(body) == ["file_id", "available", "s3Key", "size"]
    assert body["file_id"] == AVAILABLE_FILE_ID
    assert body["available"] is True
    assert body["s3Key"] == "downloads/70000.zip"
    assert isinstance(body["size"], int)
    assert body["size"] > 0


def test_check_missing_file(client: httpx.Client) -> None:
    response = client.post("/v1/download/check", json={"file_id": MISSING_FILE_ID})

    assert response.status_code == 200
    assert response.json() == {
        "file_id": MISSING_FILE_ID,
        "available": False,
        "s3Key": None,
        "size": None,
    }


def test_initiate_bulk_download(client: httpx.Client) -> None:
    response = client.post("/v1/download/initiate", json={"file_ids": [70000, 70007]})
    body = response.json()

    assert response.status_code == 202
    assert body["status"] == "queued"
    assert body["totalFileIds"] == 2
    assert isinstance(body["jobId"], str)
    assert response.headers["location"] == f"/v1/download/status/{body['jobId']}"


def test_start_returns_job_at_once(client: httpx.Client) -> None:
    started = time.monotonic()
    response = client.post("/v1/download/start", json={"file_id": AVAILABLE_FILE_ID})
    elapsed = time.monotonic() - started
    body = response.json()

    assert response.status_code == 202
    assert elapsed < MAX_START_SECONDS
    assert body["status"] == "queued"
    assert response.headers["location"] == f"/v1/download/status/{body['jobId']}"
    assert response.headers["retry-after"] == "2"
    status = client.get(response.headers["location"])
    assert status.status_code == 200
    assert status.json()["fileId"] == AVAILABLE_FILE_ID


# -- headers every response carries -------------------------------------------


def test_request_id_echoed(client: httpx.Client) -> None:
    response = client.get("/health", headers={"X-Request-ID": "delineate-client-42"})

    assert response.headers["x-request-id"] == "delineate-client-42"


def test_request_id_generated(client: httpx.Client) -> None:
    response = client.get("/health")

    assert response.headers["x-request-id"]


def test_nosniff_on_success_and_error(client: httpx.Client) -> None:
    success = client.get("/health")
    error = client.post("/v1/download/check", json={"file_id": "70000"})

    assert success.headers["x-content-type-options"] == "nosniff"
    assert error.status_code == 400
    assert error.headers["x-content-type-options"] == "nosniff"


def test_cors_any_origin_without_origin(client: httpx.Client) -> None:
    response = client.get("/health")

    assert response.headers["access-control-allow-origin"] == "*"


def test_cors_any_origin_with_origin(client: httpx.Client) -> None:
    response = client.post(
        "/v1/download/check",
        json={"file_id": AVAILABLE_FILE_ID},
        headers={"Origin": "https://dashboard.example.com"},
    )

    assert response.headers["access-control-allow-origin"] == "*"


def test_rate_limit_counts_down_on_writes(start_server: Callable[..., ServerProcess]) -> None:
    # A server of its own, so no other test's requests are in its counts.
    server = start_server(**{**DELINEATE_SETTINGS, "RATE_LIMIT_MAX_REQUESTS": "5"})
    with httpx.Client(
        base_url=server.base_url, trust_env=False, timeout=REQUEST_TIMEOUT_SECONDS
    ) as http:
        responses = [
            http.post("/v1/download/check", json={"file_id": AVAILABLE_FILE_ID}) for _ in range(3)
        ]

    assert [response.status_code for response in responses] == [200, 200, 200]
    assert [response.headers["ratelimit-limit"] for response in responses] == ["5", "5", "5"]
    assert [response.headers["ratelimit-remaining"] for response in responses] == ["4", "3", "2"]
