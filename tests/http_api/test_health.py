"""Tests of ``GET /health``: the storage probe and whether the service accepts jobs."""

from __future__ import annotations

import pytest
import trio

from engine import SourceError
from http_api._context import CLIENT_KEY
from http_api._routes import HEALTH_PROBE_TIMEOUT_SECONDS

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)


async def test_health_is_healthy(autojump_clock, api):
    response = await api.client.get("/health")

    assert response.status_code == 200
    assert await response.get_json() == {
        "status": "healthy",
        "checks": {"storage": "ok"},
    }


async def test_health_failed_storage_probe(autojump_clock, api, monkeypatch):
    async def failing_probe() -> None:
        raise SourceError("storage probe failed")

    monkeypatch.setattr(api.client.app.extensions[CLIENT_KEY], "check_health", failing_probe)
    response = await api.client.get("/health")

    assert response.status_code == 503
    assert await response.get_json() == {
        "status": "unhealthy",
        "checks": {"storage": "error"},
    }


async def test_health_slow_storage_probe(autojump_clock, api, monkeypatch):
    async def stalled_probe() -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(api.client.app.extensions[CLIENT_KEY], "check_health", stalled_probe)
    began = trio.current_time()
    response = await api.client.get("/health")

    assert trio.current_time() - began == pytest.approx(HEALTH_PROBE_TIMEOUT_SECONDS)
    assert response.status_code == 503
    assert (await response.get_json())["checks"]["storage"] == "error"


async def test_health_draining_is_unhealthy(autojump_clock, api):
    await api.client.app.extensions[CLIENT_KEY].drain(0.0)
    response = await api.client.get("/health")

    assert response.status_code == 503
    assert await response.get_json() == {
        "status": "unhealthy",
        "checks": {"storage": "ok", "jobs": "draining"},
    }
