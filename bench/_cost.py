"""Bench-only: server CPU per request, one kind of request at a time.

Run ``python -m bench._cost`` (about half a minute). It starts the product
on 127.0.0.1 with jobs that outlast the run, and for each kind of request
sends ``--requests`` of them over ``--connections`` keep-alive connections,
one request at a time per connection. The figure is the server's CPU time
(user plus system, from psutil) over the batch divided by the number of
requests, as the median, min and max of ``--rounds`` batches.

Kinds:

- ``start``: ``POST /v1/download/start``.
- ``status``: a status read that returns 200.
- ``status-304``: a status read whose ``If-None-Match`` names the current tag.
- ``status-new-connection``: a status read on a new connection, closed
  after the response, so the figure includes the connection's set-up.
- ``long-poll-10ms``: ``?wait=0.01`` with the current tag, held until its
  wait ends, then returns 304.
- ``arrival``: what a new long-poll client costs: a new connection, a start,
  a status read of the new job, a 10 ms long poll on it, and the close.

The load generator runs in this process, so the machine needs a second
core for the figures to mean server CPU alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Awaitable, Callable

import trio

from ._http import HttpConnection, Response
from ._load import start_spec
from ._servers import PRODUCT, ServerProcess, product_settings, running_server

WARM_UP_REQUESTS = 200
# Job delay (ms): long enough that no job's progress reaches its first step
# (5%) during a run, so tags stay current.
JOB_DELAY_MS = 3_600_000


# Sends one request of a kind on a connection; the int numbers the request.
Send = Callable[[HttpConnection, int], Awaitable[Response]]


class _Jobs:
    """Status paths and current tags of jobs started for the status kinds."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.tags: dict[str, str] = {}


async def _start(connection: HttpConnection, index: int) -> Response:
    method, target, headers, body = start_spec(10_000 + index % 1000)
    return await connection.request(method, target, headers=headers, body=body)


def _kinds(jobs: _Jobs) -> dict[str, tuple[Send, int]]:
    async def status(connection: HttpConnection, index: int) -> Response:
        return await connection.request("GET", jobs.paths[index % len(jobs.paths)])

    async def status_304(connection: HttpConnection, index: int) -> Response:
        path = jobs.paths[index % len(jobs.paths)]
        return await connection.request("GET", path, headers=[("If-None-Match", jobs.tags[path])])

    async def status_new_connection(connection: HttpConnection, index: int) -> Response:
        response = await status(connection, index)
        await connection.aclose()
        return response

    async def long_poll(connection: HttpConnection, index: int) -> Response:
        path = jobs.paths[index % len(jobs.paths)]
        return await connection.request(
            "GET", f"{path}?wait=0.01", headers=[("If-None-Match", jobs.tags[path])]
        )

    async def arrival(connection: HttpConnection, index: int) -> Response:
        started = await _start(connection, index)
        path = json.loads(started.body)["statusUrl"]
        read = await connection.request("GET", path)
        poll_response = await connection.request(
            "GET", f"{path}?wait=0.01", headers=[("If-None-Match", read.headers["etag"])]
        )
        await connection.aclose()
        return poll_response

    # Each kind's request, and the status it must return.
    return {
        "start": (_start, 202),
        "status": (status, 200),
        "status-304": (status_304, 304),
        "status-new-connection": (status_new_connection, 200),
        "long-poll-10ms": (long_poll, 304),
        "arrival": (arrival, 304),
    }


async def _batch(
    port: int,
    send: Send,
    expected: int,
    requests: int,
    connections: int,
) -> None:
    """Send ``requests`` requests over ``connections`` connections; raise on another status."""

    async def worker(offset: int) -> None:
        connection = HttpConnection(port)
        try:
            for index in range(offset, requests, connections):
                response = await send(connection, index)
                if response.status != expected:
                    raise RuntimeError(f"expected {expected}, got {response.status}")
        finally:
            await connection.aclose()

    async with trio.open_nursery() as nursery:
        for offset in range(connections):
            nursery.start_soon(worker, offset)


async def _prepare(port: int, jobs: _Jobs, count: int) -> None:
    connection = HttpConnection(port)
    try:
        for index in range(count):
            started = await _start(connection, index)
            if started.status != 202:
                raise RuntimeError(f"start returned {started.status}: {started.body!r}")
            path = json.loads(started.body)["statusUrl"]
            read = await connection.request("GET", path)
            jobs.paths.append(path)
            jobs.tags[path] = read.headers["etag"]
    finally:
        await connection.aclose()


def measure(
    server: ServerProcess, requests: int, connections: int, rounds: int
) -> dict[str, list[float]]:
    """Return each kind's server CPU per request, in milliseconds, one value per round."""
    jobs = _Jobs()
    trio.run(_prepare, server.port, jobs, connections * 4)
    figures: dict[str, list[float]] = {}
    for name, (send, expected) in _kinds(jobs).items():
        trio.run(_batch, server.port, send, expected, WARM_UP_REQUESTS, connections)
        for _ in range(rounds):
            before = server.cpu_seconds()
            trio.run(_batch, server.port, send, expected, requests, connections)
            used = server.cpu_seconds() - before
            figures.setdefault(name, []).append(used / requests * 1000)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench._cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per batch")
    parser.add_argument("--connections", type=int, default=8, help="connections per batch")
    parser.add_argument("--rounds", type=int, default=3, help="batches per kind")
    options = parser.parse_args()
    # The start and arrival kinds start one job per request.
    capacity = 2 * (options.requests + WARM_UP_REQUESTS) * options.rounds + 4 * options.connections
    settings = product_settings(
        capacity,
        DOWNLOAD_DELAY_MIN_MS=str(JOB_DELAY_MS),
        DOWNLOAD_DELAY_MAX_MS=str(JOB_DELAY_MS),
        JOB_TIMEOUT_MS=str(2 * JOB_DELAY_MS),
    )
    with running_server(PRODUCT, settings) as server:
        figures = measure(server, options.requests, options.connections, options.rounds)
    print(
        f"server CPU per request (ms), {options.requests} requests over "
        f"{options.connections} connections, median (min-max) of {options.rounds} batches"
    )
    for name, values in figures.items():
        print(f"  {name:<24} {statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")


if __name__ == "__main__":
    main()
