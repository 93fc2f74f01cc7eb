"""Tests of the OpenAPI document at ``/openapi.json``, the ``/`` route and the docs page.

The document must be valid OpenAPI 3.1, list every route of the app, and
describe what the routes really send. Each route test below drives its route
into every status code that the route documents, except those listed as not
reachable in-process. It checks each response's status, media type, body
and headers against the document with jsonschema.

Requests pause the autojump clock, because the result route reads files in
worker threads, as ``Api.fetch_result`` in conftest.py explains.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest
import quart.typing
import trio
import trio.testing
from openapi_spec_validator import OpenAPIV31SpecValidator
from quart_schema import OpenAPIProvider
from werkzeug.datastructures import Headers

from engine import EngineSettings, JobStatus, SourceError
from http_api import (
    Settings,
    _render as render_module,
    _status_layer as status_layer_module,
    create_app,
)
from http_api._context import CLIENT_KEY
from http_api._openapi import build_document
from http_api._schemas import (
    MAX_WAIT_QUERY_SECONDS,
    RETRY_AFTER_RANGE_SECONDS,
    JobStatusValue,
)

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

# As in conftest.py: 1-4 KB archives, and a wait past the longest delay (120 s).
SMALL_ARCHIVES: dict[str, Any] = {
    "download_size_min_bytes": 1000,
    "download_size_max_bytes": 4000,
    "download_random_seed": 1,
}
PAST_ANY_DELAY_SECONDS = 200
# Jobs of exactly 10 s and a time to live of 100 s, so a test can tell when
# each job is done and when it expires.
FIXED_DELAY = {"download_delay_min_ms": 10_000, "download_delay_max_ms": 10_000}
PAST_FIXED_DELAY_SECONDS = 15
TTL_MS = 100_000
PAST_TTL_SECONDS = 200

FILE_ID = 70_000
MISSING_FILE_ID = 70_001  # not a multiple of 7
UNKNOWN_JOB_ID = "3f2b8c1e-0d4a-4c6e-9b1a-2d5e7f8a9c0b"
STALE_ETAG = '"' + "0" * 64 + '"'
JSON_HEADERS = {"Content-Type": "application/json"}

START = "/v1/download/start"
INITIATE = "/v1/download/initiate"
CHECK = "/v1/download/check"
STATUS = "/v1/download/status/{job_id}"
JOB = "/v1/download/{job_id}"

# Every app error handler can send 500, and the rate limiter 429 on every
# route. test_rate_limited_responses_conform covers 429.
NOT_DRIVEN = {429, 500}
# SupervisorClosed (503 shutting_down) reaches these routes only while the
# server stops, after the supervisor has stopped.
NOT_DRIVEN_WHILE_RUNNING = NOT_DRIVEN | {503}


def json_body(value: Any) -> bytes:
    return json.dumps(value).encode()


@contextmanager
def autojump_paused(clock: trio.testing.MockClock) -> Iterator[None]:
    threshold = clock.autojump_threshold
    clock.autojump_threshold = math.inf
    try:
        yield
    finally:
        clock.autojump_threshold = threshold


@dataclasses.dataclass(frozen=True)
class RawResponse:
    """A response with the headers the app sent (the test client rewrites Content-Length)."""

    status: int
    headers: Headers
    body: bytes

    @property
    def media_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip()

    def json(self) -> Any:
        return json.loads(self.body)


async def send_raw(
    client: quart.typing.TestClientProtocol,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> RawResponse:
    """Send one request and return the status, headers and body that the app sent.

    The body is read while the app sends it, because the test connection
    buffers only 10 chunks and would block the app on a larger body.
    """
    chunks: list[bytes] = []
    connection = client.request(path, method=method, headers=headers)
    async with connection:
        await connection.send(body)
        await connection.send_complete()
        while True:
            try:
                chunks.append(await connection.receive())
            except trio.EndOfChannel:
                break
    assert connection.status_code is not None
    assert connection.headers is not None
    return RawResponse(connection.status_code, Headers(connection.headers), b"".join(chunks))


@dataclasses.dataclass
class Exchange:
    """One request of a test and the response the app sent."""

    method: str
    template: str  # the document's path, such as /v1/download/status/{job_id}
    response: RawResponse


class Contract:
    """The OpenAPI document, and checks of real responses against it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def operation(self, method: str, template: str) -> dict[str, Any]:
        operation: dict[str, Any] = self.document["paths"][template][method.lower()]
        return operation

    def declared_statuses(self, method: str, template: str) -> set[int]:
        return {int(status) for status in self.operation(method, template)["responses"]}

    def resolve(self, item: dict[str, Any]) -> dict[str, Any]:
        """Follow a local ``$ref`` such as ``#/components/headers/X-Request-ID``."""
        reference = item.get("$ref")
        if reference is None:
            return item
        resolved: Any = self.document
        for part in reference.removeprefix("#/").split("/"):
            resolved = resolved[part]
        return dict(resolved)

    def validate_json(self, schema: dict[str, Any], instance: Any) -> None:
        # References such as #/components/schemas/X resolve against the root
        # of the schema, so the document's components go along with it.
        rooted = {**schema, "components": self.document["components"]}
        validator = jsonschema.Draft202012Validator(
            rooted, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        validator.validate(instance)

    def check(self, exchange: Exchange) -> None:
        """Assert that a response is one the document declares, with its body and headers."""
        method, template, response = exchange.method, exchange.template, exchange.response
        label = f"{method} {template} -> {response.status}"
        responses = self.operation(method, template)["responses"]
        assert str(response.status) in responses, f"{label}: status not declared"
        declared = responses[str(response.status)]

        content = declared.get("content")
        if content is None:
            assert response.body == b"", f"{label}: body sent where none is declared"
        else:
            assert response.media_type in content, (
                f"{label}: media type {response.media_type!r} not in {sorted(content)}"
            )
            is_json = response.media_type.endswith("json")
            if method != "HEAD" and is_json:
                self.validate_json(content[response.media_type]["schema"], response.json())

        for name, header in declared.get("headers", {}).items():
            header = self.resolve(header)
            value = response.headers.get(name)
            if value is None:
                assert not header.get("required"), f"{label}: required header {name} missing"
                continue
            schema = header["schema"]
            typed: Any = int(value) if schema.get("type") == "integer" else value
            self.validate_json(schema, typed)


class Harness:
    """A running app, the document it serves, and the exchanges a test has made."""

    def __init__(
        self,
        client: quart.typing.TestClientProtocol,
        clock: trio.testing.MockClock,
        contract: Contract,
    ) -> None:
        self.client = client
        self.clock = clock
        self.contract = contract
        self.exchanges: list[Exchange] = []

    async def send(
        self,
        method: str,
        template: str,
        *,
        job_id: str | None = None,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        query: str = "",
    ) -> RawResponse:
        """Send one request, check its response against the document, and return it."""
        path = template.replace("{job_id}", job_id or "") + query
        with autojump_paused(self.clock):
            response = await send_raw(self.client, method, path, body, headers)
        exchange = Exchange(method, template, response)
        self.contract.check(exchange)
        self.exchanges.append(exchange)
        return response

    async def start(self, file_id: int = FILE_ID) -> str:
        response = await self.send(
            "POST", START, body=json_body({"file_id": file_id}), headers=JSON_HEADERS
        )
        assert response.status == 202, response.body
        job_id: str = response.json()["jobId"]
        return job_id

    def observed(self, method: str, template: str) -> set[int]:
        return {
            exchange.response.status
            for exchange in self.exchanges
            if exchange.method == method and exchange.template == template
        }

    def assert_all_declared_observed(self, method: str, template: str, exempt: set[int]) -> None:
        declared = self.contract.declared_statuses(method, template)
        missing = declared - exempt - self.observed(method, template)
        assert not missing, (
            f"{method} {template}: declared statuses never driven: {sorted(missing)}"
        )


async def fetch_document(client: quart.typing.TestClientProtocol) -> dict[str, Any]:
    response = await send_raw(client, "GET", "/openapi.json")
    assert response.status == 200
    assert response.media_type == "application/json"
    document: dict[str, Any] = response.json()
    return document


@asynccontextmanager
async def open_harness(
    tmp_path: Path,
    clock: trio.testing.MockClock,
    settings: dict[str, Any] | None = None,
    **engine_overrides: Any,
) -> AsyncIterator[Harness]:
    """Run an app with small archives, ``settings`` and ``engine_overrides``."""
    engine = EngineSettings(
        results_dir=tmp_path / f"results-{uuid.uuid4()}", **{**SMALL_ARCHIVES, **engine_overrides}
    )
    app = create_app(Settings(engine=engine, **(settings or {})))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        with autojump_paused(clock):
            document = await fetch_document(client)
        yield Harness(client, clock, Contract(document))


@pytest.fixture
async def harness(tmp_path, autojump_clock) -> AsyncIterator[Harness]:
    async with open_harness(tmp_path, autojump_clock) as running:
        yield running


# -- the document ---------------------------------------------------------------


async def test_document_is_openapi_3_1(autojump_clock, harness):
    document = harness.contract.document

    assert document["openapi"].startswith("3.1.")
    assert document["info"]["title"] == "download-jobs"


async def test_document_validates(autojump_clock, harness):
    OpenAPIV31SpecValidator(harness.contract.document).validate()


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[OpenAPIProvider]:
    """Record every build of an OpenAPI document from now on, by its provider."""
    built: list[OpenAPIProvider] = []
    build = OpenAPIProvider.schema

    def counting_build(provider: OpenAPIProvider) -> dict[str, Any]:
        built.append(provider)
        return build(provider)

    monkeypatch.setattr(OpenAPIProvider, "schema", counting_build)
    return built


async def test_document_built_once(autojump_clock, harness, builds):
    # The harness has fetched the document once already.
    built_before = len(builds)
    again = await fetch_document(harness.client)

    assert again == harness.contract.document
    assert len(builds) == built_before


async def test_document_built_ahead_of_requests(autojump_clock, tmp_path, builds):
    engine = EngineSettings(results_dir=tmp_path / "results", **SMALL_ARCHIVES)
    app = create_app(Settings(engine=engine))
    # The way the server builds it: in a worker thread, before any request.
    await trio.to_thread.run_sync(build_document, app)
    built_before_requests = len(builds)
    async with app.test_app() as test_app:
        document = await fetch_document(test_app.test_client())

    assert built_before_requests == 1
    assert len(builds) == 1
    assert document["info"]["title"] == "download-jobs"


async def test_document_lists_every_route(autojump_clock, tmp_path):
    engine = EngineSettings(results_dir=tmp_path / "results", **SMALL_ARCHIVES)
    app = create_app(Settings(engine=engine))
    async with app.test_app() as test_app:
        document = await fetch_document(test_app.test_client())

    expected: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "docs.static", "openapi", "swagger_ui"):
            continue
        path = rule.rule.replace("<job_id:job_id>", "{job_id}")
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                expected.add((method.lower(), path))
    expected.add(("head", JOB))  # HEAD of the result is part of its contract
    documented = {(method, path) for path, item in document["paths"].items() for method in item}

    assert documented == expected


async def test_document_declares_statuses(autojump_clock, harness):
    declared = {
        (method.upper(), path): sorted(int(status) for status in operation["responses"])
        for path, item in harness.contract.document["paths"].items()
        for method, operation in item.items()
    }

    assert declared == {
        ("GET", "/"): [200, 429, 500],
        ("GET", "/health"): [200, 429, 500, 503],
        ("GET", "/metrics"): [200, 429, 500],
        ("POST", START): [200, 202, 400, 413, 415, 422, 429, 500, 503],
        ("POST", INITIATE): [200, 202, 400, 413, 415, 422, 429, 500, 503],
        ("POST", CHECK): [200, 400, 413, 415, 429, 500],
        ("GET", STATUS): [200, 304, 400, 404, 410, 413, 429, 500, 503],
        ("GET", JOB): [200, 206, 304, 400, 404, 409, 410, 412, 416, 429, 500, 503],
        ("HEAD", JOB): [200, 304, 400, 404, 409, 410, 412, 429, 500, 503],
        ("DELETE", JOB): [200, 400, 404, 409, 410, 429, 500, 503],
    }


async def test_document_declares_headers(autojump_clock, harness):
    contract = harness.contract
    start = contract.operation("POST", START)
    status = contract.operation("GET", STATUS)
    result = contract.operation("GET", JOB)

    assert {p["name"] for p in start["parameters"]} == {"Idempotency-Key", "X-Request-ID"}
    assert set(start["responses"]["202"]["headers"]) >= {"Location", "Retry-After", "X-Request-ID"}
    assert {p["name"] for p in status["parameters"]} == {
        "job_id",
        "wait",
        "If-None-Match",
        "X-Request-ID",
    }
    assert set(status["responses"]["200"]["headers"]) >= {"ETag", "Retry-After"}
    assert {p["name"] for p in result["parameters"]} >= {"Range", "If-Range", "If-None-Match"}
    assert set(result["responses"]["206"]["headers"]) >= {
        "Content-Range",
        "Content-Disposition",
        "Accept-Ranges",
        "ETag",
        "Last-Modified",
    }
    assert set(result["responses"]["416"]["headers"]) >= {"Content-Range"}
    assert set(contract.document["components"]["headers"]) >= {
        "X-Request-ID",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
    }


async def test_document_media_types(autojump_clock, harness):
    result = harness.contract.operation("GET", JOB)["responses"]
    start = harness.contract.operation("POST", START)["responses"]

    assert list(result["200"]["content"]) == ["application/zip"]
    assert list(result["206"]["content"]) == ["application/zip"]
    assert "content" not in result["304"]
    assert list(start["202"]["content"]) == ["application/json"]
    assert list(start["400"]["content"]) == ["application/problem+json"]


async def test_document_caps_timeout_at_setting(autojump_clock, tmp_path):
    async with open_harness(tmp_path, autojump_clock, job_timeout_ms=45_000) as running:
        operation = running.contract.operation("POST", START)

    body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    integer = next(
        option
        for option in body_schema["properties"]["timeout_ms"]["anyOf"]
        if option.get("type") == "integer"
    )
    assert integer["maximum"] == 45_000
    assert operation["requestBody"]["required"] is True


def test_copied_limits_match_routes():
    assert MAX_WAIT_QUERY_SECONDS == status_layer_module.MAX_ACCEPTED_WAIT_SECONDS
    assert RETRY_AFTER_RANGE_SECONDS == (
        render_module.MIN_RETRY_AFTER_SECONDS,
        render_module.MAX_RETRY_AFTER_SECONDS,
    )


def test_status_values_match_engine():
    assert set(get_args(JobStatusValue)) == {status.value for status in JobStatus}


# -- real responses against the document ----------------------------------------


async def test_root_responses_conform(autojump_clock, harness):
    response = await harness.send("GET", "/")

    assert response.status == 200
    assert response.json() == {
        "message": "download-jobs: long-running downloads behind a polling API",
        "docs": "/docs",
        "openapi": "/openapi.json",
        "health": "/health",
        "start": "/v1/download/start",
    }
    harness.assert_all_declared_observed("GET", "/", NOT_DRIVEN)


async def test_health_responses_conform(autojump_clock, harness, monkeypatch):
    healthy = await harness.send("GET", "/health")

    async def failing_probe() -> None:
        raise SourceError("storage probe failed")

    client = harness.client.app.extensions[CLIENT_KEY]
    monkeypatch.setattr(client, "check_health", failing_probe)
    unhealthy = await harness.send("GET", "/health")

    assert healthy.status == 200
    assert unhealthy.status == 503
    harness.assert_all_declared_observed("GET", "/health", NOT_DRIVEN)


async def test_metrics_responses_conform(autojump_clock, harness):
    response = await harness.send("GET", "/metrics")

    assert response.status == 200
    harness.assert_all_declared_observed("GET", "/metrics", NOT_DRIVEN)


async def test_start_responses_conform(autojump_clock, harness, tmp_path):
    send = harness.send
    created = await send("POST", START, body=json_body({"file_id": FILE_ID}), headers=JSON_HEADERS)
    keyed = {**JSON_HEADERS, "Idempotency-Key": "order-17"}
    first = await send("POST", START, body=json_body({"file_id": FILE_ID}), headers=keyed)
    repeated = await send("POST", START, body=json_body({"file_id": FILE_ID}), headers=keyed)
    reused = await send("POST", START, body=json_body({"file_id": FILE_ID + 7}), headers=keyed)
    bad_key = await send(
        "POST",
        START,
        body=json_body({"file_id": FILE_ID}),
        headers={**JSON_HEADERS, "Idempotency-Key": "a b"},
    )
    bad_body = await send("POST", START, body=json_body({"file_id": "70000"}), headers=JSON_HEADERS)
    bad_json = await send("POST", START, body=b"{", headers=JSON_HEADERS)
    too_large = await send("POST", START, body=b" " * 70_000, headers=JSON_HEADERS)
    not_json = await send(
        "POST", START, body=b"file_id=70000", headers={"Content-Type": "text/plain"}
    )

    assert created.status == 202
    assert first.status == 202
    assert repeated.status == 200
    assert reused.status == 422
    assert bad_key.status == 400
    assert bad_body.status == 400
    assert bad_json.status == 400
    assert too_large.status == 413
    assert not_json.status == 415

    async with open_harness(
        tmp_path, autojump_clock, max_concurrent_jobs=1, max_queued_jobs=1
    ) as crowded:
        await crowded.start(FILE_ID)
        await crowded.start(FILE_ID + 7)
        overloaded = await crowded.send(
            "POST", START, body=json_body({"file_id": FILE_ID + 14}), headers=JSON_HEADERS
        )
    assert overloaded.status == 503
    harness.exchanges.extend(crowded.exchanges)
    harness.assert_all_declared_observed("POST", START, NOT_DRIVEN)


async def test_initiate_responses_conform(autojump_clock, harness, tmp_path):
    send = harness.send
    created = await send(
        "POST",
        INITIATE,
        body=json_body({"file_ids": [FILE_ID, FILE_ID + 7, FILE_ID]}),
        headers=JSON_HEADERS,
    )
    empty = await send("POST", INITIATE, body=json_body({"file_ids": []}), headers=JSON_HEADERS)
    too_large = await send("POST", INITIATE, body=b" " * 70_000, headers=JSON_HEADERS)
    not_json = await send("POST", INITIATE, body=b"[]", headers={"Content-Type": "text/plain"})
    keyed = {**JSON_HEADERS, "Idempotency-Key": "bulk-17"}
    first = await send("POST", INITIATE, body=json_body({"file_ids": [FILE_ID]}), headers=keyed)
    repeated = await send("POST", INITIATE, body=json_body({"file_ids": [FILE_ID]}), headers=keyed)
    reused = await send(
        "POST", INITIATE, body=json_body({"file_ids": [FILE_ID + 7]}), headers=keyed
    )

    assert created.status == 202
    assert created.json()["duplicateFileIds"] == [FILE_ID]
    assert first.status == 202
    assert repeated.status == 200
    assert reused.status == 422
    assert empty.status == 400
    assert too_large.status == 413
    assert not_json.status == 415

    async with open_harness(
        tmp_path, autojump_clock, max_concurrent_jobs=1, max_queued_jobs=1
    ) as crowded:
        await crowded.start(FILE_ID)
        await crowded.start(FILE_ID + 7)
        overloaded = await crowded.send(
            "POST", INITIATE, body=json_body({"file_ids": [FILE_ID]}), headers=JSON_HEADERS
        )
    assert overloaded.status == 503
    harness.exchanges.extend(crowded.exchanges)
    harness.assert_all_declared_observed("POST", INITIATE, NOT_DRIVEN)


async def test_check_responses_conform(autojump_clock, tmp_path):
    async with open_harness(
        tmp_path, autojump_clock, download_availability="multiple-of-7"
    ) as harness:
        send = harness.send
        available = await send(
            "POST", CHECK, body=json_body({"file_id": FILE_ID}), headers=JSON_HEADERS
        )
        missing = await send(
            "POST", CHECK, body=json_body({"file_id": MISSING_FILE_ID}), headers=JSON_HEADERS
        )
        invalid = await send("POST", CHECK, body=json_body({"file_id": 1}), headers=JSON_HEADERS)
        too_large = await send("POST", CHECK, body=b" " * 70_000, headers=JSON_HEADERS)
        not_json = await send("POST", CHECK, body=b"", headers={"Content-Type": "text/plain"})

        assert available.status == 200
        assert available.json()["available"] is True
        assert missing.status == 200
        assert missing.json() == {
            "file_id": MISSING_FILE_ID,
            "available": False,
            "s3Key": None,
            "size": None,
        }
        assert invalid.status == 400
        assert too_large.status == 413
        assert not_json.status == 415
        harness.assert_all_declared_observed("POST", CHECK, NOT_DRIVEN)


async def test_status_responses_conform(autojump_clock, tmp_path):
    async with open_harness(
        tmp_path,
        autojump_clock,
        max_concurrent_jobs=1,
        download_availability="multiple-of-7",
        job_ttl_ms=TTL_MS,
        **FIXED_DELAY,
    ) as harness:
        send = harness.send
        processing_id = await harness.start(FILE_ID)
        queued_id = await harness.start(FILE_ID + 7)
        processing = await send("GET", STATUS, job_id=processing_id)
        queued = await send("GET", STATUS, job_id=queued_id)
        etag = processing.headers["ETag"]
        not_modified = await send(
            "GET", STATUS, job_id=processing_id, headers={"If-None-Match": etag}
        )
        bad_wait = await send("GET", STATUS, job_id=processing_id, query="?wait=soon")
        malformed = await send("GET", STATUS, job_id="not-a-job-id")
        unknown = await send("GET", STATUS, job_id=UNKNOWN_JOB_ID)
        # Quart's test client declares no length for a GET body; HTTP framing would.
        too_large = await send(
            "GET",
            STATUS,
            job_id=processing_id,
            body=b" " * 70_000,
            headers={"Content-Length": "70000"},
        )

        await trio.sleep(PAST_FIXED_DELAY_SECONDS)
        done = await send("GET", STATUS, job_id=processing_id)
        failed_id = await harness.start(MISSING_FILE_ID)
        bulk = await send(
            "POST",
            INITIATE,
            body=json_body({"file_ids": [FILE_ID, MISSING_FILE_ID]}),
            headers=JSON_HEADERS,
        )
        bulk_id = bulk.json()["jobId"]
        bulk_queued = await send("GET", STATUS, job_id=bulk_id)
        await trio.sleep(4 * PAST_FIXED_DELAY_SECONDS)
        failed = await send("GET", STATUS, job_id=failed_id)
        bulk_done = await send("GET", STATUS, job_id=bulk_id)
        await trio.sleep(PAST_TTL_SECONDS)
        expired = await send("GET", STATUS, job_id=processing_id)

        assert processing.json()["status"] == "processing"
        assert queued.json()["status"] == "queued"
        assert queued.json()["queuePosition"] == 1
        assert not_modified.status == 304
        assert bad_wait.status == 400
        assert malformed.status == 400
        assert unknown.status == 404
        assert too_large.status == 413
        assert done.json()["status"] == "done"
        assert "result" in done.json()
        assert bulk_queued.json()["status"] == "queued"
        assert "fileIds" in bulk_queued.json()
        assert failed.json()["status"] == "failed"
        assert "error" in failed.json()
        assert bulk_done.json()["status"] == "done"
        assert bulk_done.json()["missingFileIds"] == [MISSING_FILE_ID]
        assert expired.status == 410
        harness.assert_all_declared_observed("GET", STATUS, NOT_DRIVEN_WHILE_RUNNING)


async def test_cancel_responses_conform(autojump_clock, tmp_path):
    async with open_harness(tmp_path, autojump_clock, job_ttl_ms=TTL_MS, **FIXED_DELAY) as harness:
        send = harness.send
        running_id = await harness.start(FILE_ID)
        done_id = await harness.start(FILE_ID + 1)
        cancelled = await send("DELETE", JOB, job_id=running_id)
        again = await send("DELETE", JOB, job_id=running_id)
        malformed = await send("DELETE", JOB, job_id="not-a-job-id")
        unknown = await send("DELETE", JOB, job_id=UNKNOWN_JOB_ID)
        await trio.sleep(PAST_FIXED_DELAY_SECONDS)
        finished = await send("DELETE", JOB, job_id=done_id)
        await trio.sleep(PAST_TTL_SECONDS)
        expired = await send("DELETE", JOB, job_id=done_id)

        assert cancelled.status == 200
        assert cancelled.json()["status"] == "cancelled"
        assert again.status == 200
        assert malformed.status == 400
        assert unknown.status == 404
        assert finished.status == 409
        assert finished.json()["job"]["status"] == "done"
        assert expired.status == 410
        harness.assert_all_declared_observed("DELETE", JOB, NOT_DRIVEN_WHILE_RUNNING)


async def test_result_responses_conform(autojump_clock, tmp_path):
    async with open_harness(tmp_path, autojump_clock, job_ttl_ms=600_000) as harness:
        send = harness.send
        job_id = await harness.start(FILE_ID)
        cancelled_id = await harness.start(FILE_ID + 1)
        not_ready = await send("GET", JOB, job_id=job_id)
        not_ready_head = await send("HEAD", JOB, job_id=job_id)
        await send("DELETE", JOB, job_id=cancelled_id)
        gone = await send("GET", JOB, job_id=cancelled_id)
        gone_head = await send("HEAD", JOB, job_id=cancelled_id)
        malformed = await send("GET", JOB, job_id="not-a-job-id")
        malformed_head = await send("HEAD", JOB, job_id="not-a-job-id")
        unknown = await send("GET", JOB, job_id=UNKNOWN_JOB_ID)
        unknown_head = await send("HEAD", JOB, job_id=UNKNOWN_JOB_ID)

        await trio.sleep(PAST_ANY_DELAY_SECONDS)
        whole = await send("GET", JOB, job_id=job_id)
        head = await send("HEAD", JOB, job_id=job_id)
        etag = whole.headers["ETag"]
        part = await send("GET", JOB, job_id=job_id, headers={"Range": "bytes=0-99"})
        unsatisfiable = await send("GET", JOB, job_id=job_id, headers={"Range": "bytes=999999999-"})
        not_modified = await send("GET", JOB, job_id=job_id, headers={"If-None-Match": etag})
        not_modified_head = await send("HEAD", JOB, job_id=job_id, headers={"If-None-Match": etag})
        failed_precondition = await send(
            "GET", JOB, job_id=job_id, headers={"If-Match": STALE_ETAG}
        )
        failed_precondition_head = await send(
            "HEAD", JOB, job_id=job_id, headers={"If-Match": STALE_ETAG}
        )

        assert not_ready.status == 409
        assert not_ready_head.status == 409
        assert gone.status == 410
        assert gone_head.status == 410
        assert malformed.status == 400
        assert malformed_head.status == 400
        assert unknown.status == 404
        assert unknown_head.status == 404
        assert whole.status == 200
        assert head.status == 200
        assert part.status == 206
        assert len(part.body) == 100
        assert unsatisfiable.status == 416
        assert not_modified.status == 304
        assert not_modified_head.status == 304
        assert failed_precondition.status == 412
        assert failed_precondition_head.status == 412
        harness.assert_all_declared_observed("GET", JOB, NOT_DRIVEN_WHILE_RUNNING)
        harness.assert_all_declared_observed("HEAD", JOB, NOT_DRIVEN_WHILE_RUNNING)


async def test_rate_limited_responses_conform(autojump_clock, tmp_path):
    limits = {"rate_limit_max_requests": 1, "rate_limit_poll_max_requests": 1}
    operations = [
        ("GET", "/", {}),
        ("GET", "/health", {}),
        ("GET", "/metrics", {}),
        ("POST", START, {"body": json_body({"file_id": FILE_ID}), "headers": JSON_HEADERS}),
        ("POST", INITIATE, {"body": json_body({"file_ids": [FILE_ID]}), "headers": JSON_HEADERS}),
        ("POST", CHECK, {"body": json_body({"file_id": FILE_ID}), "headers": JSON_HEADERS}),
        ("GET", STATUS, {"job_id": UNKNOWN_JOB_ID}),
        ("GET", JOB, {"job_id": UNKNOWN_JOB_ID}),
        ("HEAD", JOB, {"job_id": UNKNOWN_JOB_ID}),
        ("DELETE", JOB, {"job_id": UNKNOWN_JOB_ID}),
    ]
    for method, template, request in operations:
        # A fresh app per operation, so each starts with a full budget.
        async with open_harness(tmp_path, autojump_clock, settings=limits) as harness:
            await harness.send(method, template, **request)
            limited = await harness.send(method, template, **request)

        assert limited.status == 429, f"{method} {template}"
        assert "Retry-After" in limited.headers, f"{method} {template}"


# -- the docs page --------------------------------------------------------------


class _AssetCollector(HTMLParser):
    """Collects the src and href URLs of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


async def test_docs_page_uses_local_assets(autojump_clock, harness):
    page = await send_raw(harness.client, "GET", "/docs")
    collector = _AssetCollector()
    collector.feed(page.body.decode())

    assert page.status == 200
    assert page.media_type == "text/html"
    assert collector.urls, "the page references no script or stylesheet"
    for url in collector.urls:
        assert url.startswith("/"), url
        assert not url.startswith("//"), url
    assert "/openapi.json" in page.body.decode()


async def test_docs_assets_are_served(autojump_clock, harness):
    page = await send_raw(harness.client, "GET", "/docs")
    collector = _AssetCollector()
    collector.feed(page.body.decode())
    expected_types = {".js": ("application/javascript", "text/javascript"), ".css": ("text/css",)}

    for url in collector.urls:
        with autojump_paused(harness.clock):
            asset = await send_raw(harness.client, "GET", url)
        suffix = Path(url).suffix
        assert asset.status == 200, url
        assert len(asset.body) > 10_000, url
        assert asset.media_type in expected_types[suffix], (url, asset.media_type)
