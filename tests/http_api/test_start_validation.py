"""Tests of invalid requests to ``POST /v1/download/start``.

Every invalid body must get a 4xx ``application/problem+json`` response and
never a 500.
"""

from __future__ import annotations

import dataclasses

import pytest

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

PROBLEM_MEDIA_TYPE = "application/problem+json"
JSON = {"Content-Type": "application/json"}
MAX_BODY_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class BadRequest:
    """One invalid request and the problem it must get."""

    id: str
    body: bytes
    headers: dict[str, str]
    status: int
    code: str
    field: str | None = None


def file_id_body(literal: str) -> bytes:
    return b'{"file_id": ' + literal.encode() + b"}"


BAD_REQUESTS = [
    # Bodies that are not a JSON object.
    BadRequest("not-json", b"{file_id: 70000", JSON, 400, "invalid_json"),
    BadRequest("empty-body", b"", JSON, 400, "invalid_json"),
    BadRequest("json-array", b"[70000]", JSON, 400, "invalid_body"),
    BadRequest("json-string", b'"70000"', JSON, 400, "invalid_body"),
    BadRequest("json-number", b"70000", JSON, 400, "invalid_body"),
    BadRequest("json-null", b"null", JSON, 400, "invalid_body"),
    BadRequest("trailing-data", b'{"file_id": 70000} {}', JSON, 400, "invalid_json"),
    BadRequest(
        "invalid-utf8", b'{"file_id": 70000, "name": "\xff\xfe"}', JSON, 400, "invalid_json"
    ),
    BadRequest("utf16", '{"file_id": 70000}'.encode("utf-16"), JSON, 400, "invalid_json"),
    BadRequest("deep-nesting", b"[" * 60_000, JSON, 400, "invalid_json"),
    # Content type.
    BadRequest(
        "text-plain",
        file_id_body("70000"),
        {"Content-Type": "text/plain"},
        415,
        "unsupported_media_type",
    ),
    BadRequest(
        "form",
        b"file_id=70000",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "unsupported_media_type",
    ),
    BadRequest("no-content-type", file_id_body("70000"), {}, 415, "unsupported_media_type"),
    BadRequest(
        "latin1-charset",
        file_id_body("70000"),
        {"Content-Type": "application/json; charset=latin-1"},
        415,
        "unsupported_media_type",
    ),
    # The file_id member.
    BadRequest("file-id-missing", b'{"fileId": 70000}', JSON, 400, "invalid_body", "file_id"),
    BadRequest("file-id-string", file_id_body('"70000"'), JSON, 400, "invalid_body", "file_id"),
    BadRequest("file-id-boolean", file_id_body("true"), JSON, 400, "invalid_body", "file_id"),
    BadRequest("file-id-float", file_id_body("70000.0"), JSON, 400, "invalid_body", "file_id"),
    BadRequest("file-id-exponent", file_id_body("7e4"), JSON, 400, "invalid_body", "file_id"),
    BadRequest("file-id-null", file_id_body("null"), JSON, 400, "invalid_body", "file_id"),
    BadRequest(
        "file-id-object", file_id_body('{"id": 70000}'), JSON, 400, "invalid_body", "file_id"
    ),
    BadRequest("file-id-array", file_id_body("[70000]"), JSON, 400, "invalid_body", "file_id"),
    BadRequest("file-id-below-range", file_id_body("9999"), JSON, 400, "invalid_body", "file_id"),
    BadRequest(
        "file-id-above-range", file_id_body("100000001"), JSON, 400, "invalid_body", "file_id"
    ),
    BadRequest("file-id-negative", file_id_body("-70000"), JSON, 400, "invalid_body", "file_id"),
    BadRequest("file-id-10e30", file_id_body(str(10**30)), JSON, 400, "invalid_body", "file_id"),
    # Python's int() rejects more than 4,300 digits, so the parser fails first
    # and no single field is blamed.
    BadRequest("file-id-5000-digits", file_id_body("9" * 5000), JSON, 400, "invalid_json"),
    BadRequest(
        "file-id-float-overflow", file_id_body("1e400"), JSON, 400, "invalid_body", "file_id"
    ),
    BadRequest("file-id-nan", file_id_body("NaN"), JSON, 400, "invalid_json"),
    BadRequest("file-id-infinity", file_id_body("Infinity"), JSON, 400, "invalid_json"),
    BadRequest("file-id-minus-infinity", file_id_body("-Infinity"), JSON, 400, "invalid_json"),
    # Size.
    BadRequest(
        "body-over-64-kib",
        b'{"file_id": 70000, "padding": "' + b"a" * MAX_BODY_BYTES + b'"}',
        JSON,
        413,
        "request_entity_too_large",
    ),
    BadRequest(
        "declared-length-1-tb",
        file_id_body("70000"),
        {**JSON, "Content-Length": str(10**12)},
        413,
        "request_entity_too_large",
    ),
]


@pytest.fixture(params=BAD_REQUESTS, ids=[case.id for case in BAD_REQUESTS])
def bad_request(request) -> BadRequest:
    return request.param


async def test_start_rejects_with_status(autojump_clock, api, bad_request):
    response = await api.client.post(
        "/v1/download/start", data=bad_request.body, headers=bad_request.headers
    )

    assert response.status_code == bad_request.status


async def test_start_rejects_with_problem(autojump_clock, api, bad_request):
    response = await api.client.post(
        "/v1/download/start", data=bad_request.body, headers=bad_request.headers
    )
    problem = await response.get_json(force=True)

    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["type"].endswith(f":{bad_request.code}")
    assert problem["title"]
    assert problem["status"] == response.status_code
    assert problem["detail"]
    assert problem["code"] == bad_request.code
    assert problem.get("field") == bad_request.field


async def test_start_415_lists_accept_post(autojump_clock, api):
    response = await api.client.post(
        "/v1/download/start", data=file_id_body("70000"), headers={"Content-Type": "text/plain"}
    )

    assert response.status_code == 415
    assert response.headers["Accept-Post"] == "application/json"


@pytest.mark.parametrize("path", ["/v1/download/start", "/v1/download/initiate"])
@pytest.mark.parametrize("timeout_ms", [0, -5, 300_001, 10**12])
async def test_timeout_out_of_range_names_one_range(autojump_clock, api, path, timeout_ms):
    # Below the schema's minimum, above JOB_TIMEOUT_MS (300000 by default) or
    # above the schema's maximum: one message states the range.
    body = {"file_id": 70_000} if path.endswith("start") else {"file_ids": [70_000]}
    response = await api.client.post(path, json={**body, "timeout_ms": timeout_ms})
    problem = await response.get_json()

    assert response.status_code == 400
    assert problem["field"] == "timeout_ms"
    assert problem["detail"] == (
        f"timeout_ms must be from 1 to JOB_TIMEOUT_MS (300000), got {timeout_ms}"
    )


async def test_huge_number_shortened_in_detail(autojump_clock, api):
    huge = int("9" * 4000)
    response = await api.client.post(
        "/v1/download/start", data=f'{{"file_id": {huge}}}', headers=JSON
    )
    problem = await response.get_json()

    assert response.status_code == 400
    assert problem["field"] == "file_id"
    assert problem["detail"] == (
        f"file_id must be from 10000 to 100000000, got {'9' * 24}... (4000 characters)"
    )
