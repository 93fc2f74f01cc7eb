"""Tests of requests that match no route, or a route but not its method."""

from __future__ import annotations

import json
import uuid

import pytest
from garbage import cyclic_garbage
from werkzeug.exceptions import HTTPException

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

PROBLEM_MEDIA_TYPE = "application/problem+json"


def allowed_methods(response) -> set[str]:
    return {method.strip() for method in response.headers["Allow"].split(",")}


async def test_unknown_route_is_404(autojump_clock, api):
    response = await api.client.get("/v1/nothing-here")
    problem = await response.get_json(force=True)

    assert response.status_code == 404
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "not_found"
    assert problem["status"] == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/v1/download/status//{uuid.uuid4()}"),
        ("POST", "/v1//download/start"),
    ],
)
async def test_doubled_slash_is_404_not_redirect(autojump_clock, api, method, path):
    # Werkzeug responded 308 with an HTML body and a Location built from Host.
    response = await api.client.open(path, method=method, headers={"Host": "elsewhere.example"})
    problem = await response.get_json(force=True)

    assert response.status_code == 404
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "not_found"
    assert "Location" not in response.headers


async def test_put_on_start_is_405(autojump_clock, api):
    response = await api.client.put("/v1/download/start", json={"file_id": 70000})
    problem = await response.get_json(force=True)

    assert response.status_code == 405
    assert "POST" in allowed_methods(response)
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "method_not_allowed"


async def test_get_on_start_is_405(autojump_clock, api):
    response = await api.client.get("/v1/download/start")

    assert response.status_code == 405
    assert "POST" in allowed_methods(response)


async def test_delete_on_status_uuid_is_405(autojump_clock, api):
    response = await api.client.delete(f"/v1/download/status/{uuid.uuid4()}")

    assert response.status_code == 405
    assert "DELETE" not in allowed_methods(response)


async def test_delete_on_status_bad_id_is_404(autojump_clock, api):
    # No route serves DELETE under /status/, so a malformed id there is not a
    # job-id error but a path that matches nothing.
    response = await api.client.delete("/v1/download/status/abc")

    assert response.status_code == 404


async def test_status_without_id_is_404(autojump_clock, api):
    response = await api.client.get("/v1/download/status")

    assert response.status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/nothing-here"), ("PUT", "/v1/download/start")],
    ids=["404", "405"],
)
async def test_routing_error_leaves_no_cycle(autojump_clock, api, method, path):
    with cyclic_garbage() as garbage:
        response = await api.client.open(path, method=method)

    assert response.status_code in (404, 405)
    assert [item for item in garbage if isinstance(item, HTTPException)] == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", "/v1/nothing-here", b"", id="route-problem"),
        pytest.param("POST", "/v1/download/start", b"{", id="start-layer-problem"),
        pytest.param("GET", "/health", b"", id="success"),
    ],
)
async def test_json_bodies_share_one_encoding(autojump_clock, api, method, path, body):
    # Problems and success documents alike: compact, then one newline.
    headers = {"Content-Type": "application/json"} if body else None
    response = await api.send_raw(method, path, body, headers)

    document = json.loads(response.body)
    assert response.body == json.dumps(document, separators=(",", ":")).encode() + b"\n"
    assert int(response.headers["Content-Length"]) == len(response.body)
