"""Tests of ``GET /health``."""

from __future__ import annotations

import pytest

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)


async def test_health_is_healthy(autojump_clock, api):
    response = await api.client.get("/health")

    assert response.status_code == 200
    assert await response.get_json() == {"status": "healthy", "checks": {"storage": "ok"}}
