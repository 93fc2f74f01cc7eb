"""Tests of per-client rate limiting: budgets, headers, windows, client keys and settings."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from quart.typing import TestClientProtocol as QuartTestClient

from engine import EngineSettings, SettingsError
from http_api import Settings, create_app
from http_api._ratelimit import UNKNOWN_CLIENT, FixedWindowLimiter, client_key

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

WINDOW_MS = 60_000
WRITE_LIMIT = 3
POLL_LIMIT = 5

CLIENT = "203.0.113.5"
OTHER_CLIENT = "203.0.113.6"
PROXY = "10.0.0.1"


def peer(address: str) -> dict:
    """ASGI scope entries that make the test client's request come from ``address``."""
    return {"client": (address, 40000)}


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
async def client(tmp_path, autojump_clock) -> AsyncIterator[QuartTestClient]:
    """A client of an app with 3 writes and 5 reads per client and minute."""
    async with open_client(
        tmp_path,
        rate_limit_window_ms=WINDOW_MS,
        rate_limit_max_requests=WRITE_LIMIT,
        rate_limit_poll_max_requests=POLL_LIMIT,
        trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),),
    ) as running:
        yield running


async def check(client, address: str = CLIENT, **kwargs):
    """Send one write: POST /v1/download/check, which starts no job."""
    return await client.post(
        "/v1/download/check", json={"file_id": 70000}, scope_base=peer(address), **kwargs
    )


async def poll(client, address: str = CLIENT, **kwargs):
    return await client.get("/health", scope_base=peer(address), **kwargs)


def quota(response) -> tuple[int, int, int]:
    """Return the RateLimit-Limit, -Remaining and -Reset headers as integers."""
    return (
        int(response.headers["RateLimit-Limit"]),
        int(response.headers["RateLimit-Remaining"]),
        int(response.headers["RateLimit-Reset"]),
    )


async def test_headers_on_default_budgets(autojump_clock, api):
    write = await api.client.post("/v1/download/check", json={"file_id": 70000})
    read = await api.client.get("/health")

    assert quota(write) == (100, 99, 60)
    assert quota(read) == (1200, 1199, 60)


async def test_remaining_counts_down(client):
    for expected_remaining in range(WRITE_LIMIT - 1, -1, -1):
        response = await check(client)
        assert response.status_code == 200
        assert quota(response)[1] == expected_remaining


async def test_write_over_limit_is_429(client):
    for _ in range(WRITE_LIMIT):
        await check(client)

    response = await check(client, headers={"X-Request-ID": "trace-429"})
    problem = await response.get_json(force=True)

    assert response.status_code == 429
    assert response.mimetype == "application/problem+json"
    assert problem["code"] == "rate_limited"
    assert problem["status"] == 429
    assert problem["requestId"] == "trace-429"
    assert CLIENT in problem["detail"]
    assert response.headers["Retry-After"] == "60"
    assert quota(response) == (WRITE_LIMIT, 0, 60)


async def test_429_has_common_headers(client):
    for _ in range(WRITE_LIMIT):
        await check(client)

    response = await check(client, headers={"X-Request-ID": "trace-429"})

    assert response.status_code == 429
    assert response.headers["X-Request-ID"] == "trace-429"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_429_body_not_read(client):
    # The limit applies before the body is parsed, so even an invalid body gets 429.
    for _ in range(WRITE_LIMIT):
        await check(client)

    response = await client.post(
        "/v1/download/start",
        data=b"not json",
        headers={"Content-Type": "text/plain"},
        scope_base=peer(CLIENT),
    )

    assert response.status_code == 429


async def test_polls_work_after_writes_limited(client):
    for _ in range(WRITE_LIMIT + 2):
        await check(client)

    response = await poll(client)

    assert response.status_code == 200
    assert quota(response)[:2] == (POLL_LIMIT, POLL_LIMIT - 1)


async def test_writes_work_after_polls_limited(client):
    for _ in range(POLL_LIMIT):
        assert (await poll(client)).status_code == 200
    assert (await poll(client)).status_code == 429

    response = await check(client)

    assert response.status_code == 200
    assert quota(response)[:2] == (WRITE_LIMIT, WRITE_LIMIT - 1)


async def test_reads_of_all_kinds_share_poll_budget(client):
    # Status polls, HEAD, unknown routes and metrics all count as reads.
    paths = ["/health", "/metrics", "/v1/nothing-here", "/v1/download/status/not-a-uuid"]
    for path in paths:
        response = await client.get(path, scope_base=peer(CLIENT))
        assert response.status_code != 429, path
    await client.head("/health", scope_base=peer(CLIENT))

    response = await poll(client)

    assert response.status_code == 429


async def test_delete_counts_as_write(client):
    for _ in range(WRITE_LIMIT):
        await client.delete(
            "/v1/download/3f2b8c1e-0d4a-4c6e-9b1a-2d5e7f8a9c0b", scope_base=peer(CLIENT)
        )

    response = await check(client)

    assert response.status_code == 429


async def test_reset_counts_down(client, autojump_clock):
    first = await check(client)
    await trio.sleep(20)
    second = await check(client)
    await trio.sleep(15.5)
    third = await check(client)

    assert quota(first)[2] == 60
    assert quota(second)[2] == 40
    assert quota(third)[2] == 25  # 24.5 s rounded up


async def test_retry_after_counts_down(client, autojump_clock):
    for _ in range(WRITE_LIMIT):
        await check(client)
    await trio.sleep(45)

    response = await check(client)

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "15"
    assert quota(response)[2] == 15


async def test_window_resets(client, autojump_clock):
    for _ in range(WRITE_LIMIT):
        await check(client)
    assert (await check(client)).status_code == 429

    await trio.sleep(WINDOW_MS / 1000)
    response = await check(client)

    assert response.status_code == 200
    assert quota(response) == (WRITE_LIMIT, WRITE_LIMIT - 1, 60)


async def test_not_reset_before_window_end(client, autojump_clock):
    for _ in range(WRITE_LIMIT):
        await check(client)

    await trio.sleep(WINDOW_MS / 1000 - 0.5)
    response = await check(client)

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"


async def test_clients_limited_separately(client):
    for _ in range(WRITE_LIMIT):
        await check(client, CLIENT)
    assert (await check(client, CLIENT)).status_code == 429

    response = await check(client, OTHER_CLIENT)

    assert response.status_code == 200
    assert quota(response)[1] == WRITE_LIMIT - 1


async def test_forwarded_for_honoured_from_trusted_proxy(client):
    for _ in range(WRITE_LIMIT):
        await check(client, PROXY, headers={"X-Forwarded-For": CLIENT})
    limited = await check(client, PROXY, headers={"X-Forwarded-For": CLIENT})

    other = await check(client, PROXY, headers={"X-Forwarded-For": OTHER_CLIENT})

    assert limited.status_code == 429
    assert CLIENT in (await limited.get_json(force=True))["detail"]
    assert other.status_code == 200


async def test_forwarded_for_takes_rightmost_untrusted(client):
    chain = f"198.51.100.99, {CLIENT}, 10.0.0.2"
    for _ in range(WRITE_LIMIT):
        await check(client, PROXY, headers={"X-Forwarded-For": chain})

    # The same client behind a different left-most (client-written) address.
    response = await check(client, PROXY, headers={"X-Forwarded-For": f"192.0.2.1, {CLIENT}"})
    problem = await response.get_json(force=True)

    assert response.status_code == 429
    assert f"client {CLIENT} " in problem["detail"]


async def test_forwarded_for_ignored_from_untrusted_peer(client):
    for index in range(WRITE_LIMIT):
        await check(client, CLIENT, headers={"X-Forwarded-For": f"198.51.100.{index}"})

    response = await check(client, CLIENT, headers={"X-Forwarded-For": "198.51.100.200"})
    problem = await response.get_json(force=True)

    assert response.status_code == 429
    assert f"client {CLIENT} " in problem["detail"]


async def test_preflight_not_counted(client):
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    for _ in range(POLL_LIMIT + WRITE_LIMIT + 1):
        response = await client.options(
            "/v1/download/start", headers=preflight, scope_base=peer(CLIENT)
        )
        assert response.status_code == 204
        assert quota(response)[:2] == (POLL_LIMIT, POLL_LIMIT)

    assert (await check(client)).status_code == 200
    assert (await poll(client)).status_code == 200


async def test_plain_options_counted_as_read(client):
    await client.options("/v1/download/start", scope_base=peer(CLIENT))

    response = await poll(client)

    assert quota(response)[1] == POLL_LIMIT - 2


async def test_first_429_logged_once(client, caplog):
    with caplog.at_level(logging.WARNING, logger="http_api"):
        for _ in range(WRITE_LIMIT + 3):
            await check(client)

    warnings = [r.getMessage() for r in caplog.records if "rate limit" in r.getMessage()]
    assert len(warnings) == 1
    assert CLIENT in warnings[0]
    assert "request_id=" in warnings[0]


async def test_disabled_has_no_limit_or_headers(tmp_path, autojump_clock):
    async with open_client(
        tmp_path,
        rate_limit_enabled=False,
        rate_limit_max_requests=1,
        rate_limit_poll_max_requests=1,
    ) as client:
        for _ in range(5):
            write = await check(client)
            read = await poll(client)
            assert write.status_code == 200
            assert read.status_code == 200
            for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"):
                assert name not in write.headers
                assert name not in read.headers
            assert write.headers["X-Content-Type-Options"] == "nosniff"


def test_limiter_drops_expired_keys():
    limiter = FixedWindowLimiter(limit=2, window_seconds=10)
    limiter.hit("a", now=0)
    limiter.hit("b", now=5)
    assert len(limiter) == 2

    limiter.hit("c", now=10)

    assert len(limiter) == 2  # "a" expired at 10
    assert limiter.peek("a", now=10).remaining == 2
    assert limiter.peek("b", now=10).remaining == 1

    limiter.peek("c", now=100)
    assert len(limiter) == 0


def test_limiter_caps_keys_evicting_oldest():
    limiter = FixedWindowLimiter(limit=1, window_seconds=60, max_keys=3)
    for index, key in enumerate(["a", "b", "c"]):
        limiter.hit(key, now=index)
    assert not limiter.hit("a", now=3).allowed

    limiter.hit("d", now=4)

    assert len(limiter) == 3
    assert limiter.hit("a", now=5).allowed  # "a" was evicted, so its count restarted
    assert len(limiter) == 3
    assert limiter.peek("b", now=5).remaining == 1  # "a" coming back evicted "b"
    assert limiter.peek("c", now=5).remaining == 0


def test_limiter_rejection_does_not_count():
    limiter = FixedWindowLimiter(limit=1, window_seconds=60)
    limiter.hit("a", now=0)

    first = limiter.hit("a", now=1)
    second = limiter.hit("a", now=2)

    assert not first.allowed
    assert first.first_rejection
    assert not second.first_rejection
    assert second.remaining == 0
    assert second.reset_seconds == 58


def test_limiter_peek_does_not_count():
    limiter = FixedWindowLimiter(limit=2, window_seconds=60)

    for _ in range(3):
        assert limiter.peek("a", now=0).remaining == 2

    assert len(limiter) == 0
    assert limiter.hit("a", now=0).remaining == 1


TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))


@pytest.mark.parametrize(
    ("peer_address", "forwarded_for", "expected"),
    [
        pytest.param(CLIENT, [], CLIENT, id="untrusted-peer"),
        pytest.param(CLIENT, ["198.51.100.1"], CLIENT, id="untrusted-peer-header-ignored"),
        pytest.param(PROXY, [], PROXY, id="trusted-peer-without-header"),
        pytest.param(PROXY, [CLIENT], CLIENT, id="trusted-peer"),
        pytest.param(PROXY, [f"198.51.100.1, {CLIENT}"], CLIENT, id="rightmost"),
        pytest.param(PROXY, [f"{CLIENT}, 10.0.0.2"], CLIENT, id="skips-trusted-hops"),
        pytest.param(PROXY, ["198.51.100.1", f"{CLIENT}, 10.0.0.2"], CLIENT, id="two-headers"),
        pytest.param(PROXY, ["10.0.0.3, 10.0.0.2"], "10.0.0.3", id="all-hops-trusted"),
        pytest.param(PROXY, [f"{CLIENT}, garbage"], PROXY, id="invalid-hop-stops"),
        pytest.param(PROXY, [f"garbage, {CLIENT}"], CLIENT, id="invalid-hop-left-ignored"),
        pytest.param(PROXY, ["[2001:db9::1]"], "2001:db9::1", id="bracketed-ipv6"),
        pytest.param(PROXY, [f"{CLIENT}:1234"], CLIENT, id="ipv4-with-port"),
        pytest.param(PROXY, ["[2001:db9::1]:443"], "2001:db9::1", id="ipv6-with-port"),
        pytest.param(PROXY, [f"{CLIENT}:port"], PROXY, id="invalid-port-stops"),
        pytest.param(PROXY, ["[2001:db9::1]x"], PROXY, id="text-after-bracket-stops"),
        pytest.param("::ffff:10.0.0.1", [CLIENT], CLIENT, id="ipv4-mapped-peer"),
        pytest.param("2001:db8::5", [CLIENT], CLIENT, id="ipv6-proxy"),
        pytest.param(None, [CLIENT], UNKNOWN_CLIENT, id="no-peer"),
        pytest.param("/run/app.sock", [CLIENT], "/run/app.sock", id="non-ip-peer"),
    ],
)
def test_client_key(peer_address, forwarded_for, expected):
    assert client_key(peer_address, forwarded_for, TRUSTED) == expected


def test_settings_defaults():
    settings = Settings.from_environ({})

    assert settings.rate_limit_enabled is True
    assert settings.rate_limit_window_ms == 60_000
    assert settings.rate_limit_max_requests == 100
    assert settings.rate_limit_poll_max_requests == 1_200
    assert settings.trusted_proxies == ()


def test_settings_read():
    settings = Settings.from_environ(
        {
            "RATE_LIMIT_ENABLED": "off",
            "RATE_LIMIT_WINDOW_MS": "1000",
            "RATE_LIMIT_MAX_REQUESTS": "7",
            "RATE_LIMIT_POLL_MAX_REQUESTS": "70",
            "TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7 ,2001:db8::/32,10.1.2.3/16",
        }
    )

    assert settings.rate_limit_enabled is False
    assert settings.rate_limit_window_ms == 1000
    assert settings.rate_limit_max_requests == 7
    assert settings.rate_limit_poll_max_requests == 70
    assert [str(network) for network in settings.trusted_proxies] == [
        "10.0.0.0/8",
        "192.0.2.7/32",
        "2001:db8::/32",
        "10.1.0.0/16",
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RATE_LIMIT_ENABLED", "maybe"),
        ("RATE_LIMIT_WINDOW_MS", "0"),
        ("RATE_LIMIT_WINDOW_MS", "1.5"),
        ("RATE_LIMIT_WINDOW_MS", "a minute"),
        ("RATE_LIMIT_MAX_REQUESTS", "0"),
        ("RATE_LIMIT_MAX_REQUESTS", "-5"),
        ("RATE_LIMIT_POLL_MAX_REQUESTS", "0"),
        ("RATE_LIMIT_POLL_MAX_REQUESTS", "many"),
        ("TRUSTED_PROXIES", "proxy.example.com"),
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
        ("TRUSTED_PROXIES", "10.0.0.1,,10.0.0.2"),
        ("TRUSTED_PROXIES", "10.0.0.256"),
    ],
)
def test_settings_invalid(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_environ({name: value})


# -- status reads and long polls, which the status layer counts ---------------


async def start_and_tag(client) -> tuple[str, str]:
    """Start a job (one write) and read its status (one read); return its status path and ETag."""
    started = await client.post(
        "/v1/download/start", json={"file_id": 70000}, scope_base=peer(CLIENT)
    )
    assert started.status_code == 202
    path = (await started.get_json())["statusUrl"]
    first = await client.get(path, scope_base=peer(CLIENT))
    assert first.status_code == 200
    return path, first.headers["ETag"]


async def test_held_long_poll_counted_once(client, autojump_clock):
    path, etag = await start_and_tag(client)
    began = trio.current_time()
    held = await client.get(
        path, query_string={"wait": "5"}, headers={"If-None-Match": etag}, scope_base=peer(CLIENT)
    )
    elapsed = trio.current_time() - began
    after = await client.get(path, scope_base=peer(CLIENT))

    # 304, or 200 if a progress step passed during the wait.
    assert held.status_code in (200, 304)
    assert elapsed == 5
    assert quota(held)[1] == POLL_LIMIT - 2
    assert quota(after)[1] == POLL_LIMIT - 3


async def test_read_passed_on_to_route_counted_once(client, autojump_clock):
    # The layer counts the read, finds no job and passes it to the route, which
    # responds 404 without counting it again.
    path, _ = await start_and_tag(client)
    unknown = await client.get(
        "/v1/download/status/3f2b8c1e-0d4a-4c6e-9b1a-2d5e7f8a9c0b", scope_base=peer(CLIENT)
    )
    after = await client.get(path, scope_base=peer(CLIENT))

    assert unknown.status_code == 404
    assert quota(unknown)[1] == POLL_LIMIT - 2
    assert quota(after)[1] == POLL_LIMIT - 3


async def test_long_poll_over_budget_rejected_before_hold(client, autojump_clock):
    path, etag = await start_and_tag(client)
    for _ in range(POLL_LIMIT - 1):
        await client.get(path, scope_base=peer(CLIENT))
    began = trio.current_time()
    response = await client.get(
        path, query_string={"wait": "5"}, headers={"If-None-Match": etag}, scope_base=peer(CLIENT)
    )
    problem = await response.get_json(force=True)

    assert response.status_code == 429
    assert trio.current_time() == began
    assert problem["code"] == "rate_limited"
    assert quota(response)[1] == 0
