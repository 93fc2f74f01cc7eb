"""Bench-only: server CPU per request, one kind of request at a time, on each system.

Run ``python -m bench._cost`` (about three minutes). It starts the product,
the floor (bare ASGI on Hypercorn) and the FastAPI baseline on 127.0.0.1,
with jobs that outlast the run. For each kind of request it sends
``--requests`` of them over ``--connections`` keep-alive connections, one
request at a time per connection, to each system in turn. The figure is
the server's CPU time (user plus system, from psutil) over the batch
divided by the number of requests, as the median, min and max of
``--rounds`` batches. The systems take turns within each round, so a
change in the machine's speed during the run reaches all of them alike.

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

The kinds that need a tag run only on systems that send ``ETag``, so the
FastAPI baseline, which sends none, has no figure for them.

The load generator runs in this process, so the machine needs a second
core for the figures to mean server CPU alone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
from collections.abc import Awaitable, Callable

import trio

from ._http import HttpConnection, Response
from ._load import start_spec
from ._servers import (
    FASTAPI,
    FLOOR,
    PRODUCT,
    SYSTEMS,
    ServerProcess,
    System,
    product_settings,
    running_server,
)

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


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of request: how to send it, the status it must return, and what it needs."""

    send: Send
    expected: int
    needs_tag: bool = False


def _kinds(jobs: _Jobs) -> dict[str, Kind]:
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

    return {
        "start": Kind(_start, 202),
        "status": Kind(status, 200),
        "status-304": Kind(status_304, 304, needs_tag=True),
        "status-new-connection": Kind(status_new_connection, 200),
        "long-poll-10ms": Kind(long_poll, 304, needs_tag=True),
        "arrival": Kind(arrival, 304, needs_tag=True),
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
    """Start ``count`` jobs, and record their status paths and the tags the server sends."""
    connection = HttpConnection(port)
    try:
        for index in range(count):
            started = await _start(connection, index)
            if started.status != 202:
                raise RuntimeError(f"start returned {started.status}: {started.body!r}")
            path = json.loads(started.body)["statusUrl"]
            read = await connection.request("GET", path)
            jobs.paths.append(path)
            if "etag" in read.headers:
                jobs.tags[path] = read.headers["etag"]
    finally:
        await connection.aclose()


def measure(
    servers: dict[str, ServerProcess], requests: int, connections: int, rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Return each kind's server CPU per request in milliseconds, by system, one value per round.

    ``servers`` maps system keys to running servers. A kind that needs a
    tag is left out for a server that sent none.
    """
    kinds_by_system: dict[str, dict[str, Kind]] = {}
    for key, server in servers.items():
        jobs = _Jobs()
        trio.run(_prepare, server.port, jobs, connections * 4)
        kinds_by_system[key] = {
            name: kind for name, kind in _kinds(jobs).items() if jobs.tags or not kind.needs_tag
        }
    figures: dict[str, dict[str, list[float]]] = {}
    # Every kind in its usual order; each system measures those it supports.
    for name in _kinds(_Jobs()):
        measured = {key: kinds[name] for key, kinds in kinds_by_system.items() if name in kinds}
        for key, kind in measured.items():
            port = servers[key].port
            trio.run(_batch, port, kind.send, kind.expected, WARM_UP_REQUESTS, connections)
        for _ in range(rounds):
            for key, kind in measured.items():
                server = servers[key]
                before = server.cpu_seconds()
                trio.run(_batch, server.port, kind.send, kind.expected, requests, connections)
                used = server.cpu_seconds() - before
                figures.setdefault(name, {}).setdefault(key, []).append(used / requests * 1000)
    return figures


def _systems(text: str) -> list[System]:
    keys = [key.strip() for key in text.split(",") if key.strip()]
    unknown = [key for key in keys if key not in SYSTEMS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"invalid systems {text!r}: expected a comma-separated list of {', '.join(SYSTEMS)}"
        )
    return [SYSTEMS[key] for key in keys]


def _cell(values: list[float] | None) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench._cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per batch")
    parser.add_argument("--connections", type=int, default=8, help="connections per batch")
    parser.add_argument("--rounds", type=int, default=3, help="batches per kind and system")
    parser.add_argument(
        "--systems",
        type=_systems,
        default=[PRODUCT, FLOOR, FASTAPI],
        help=f"comma-separated systems to measure, of {', '.join(SYSTEMS)} "
        "(default: product,floor,fastapi)",
    )
    options = parser.parse_args()
    # The start and arrival kinds start one job per request.
    capacity = 2 * (options.requests + WARM_UP_REQUESTS) * options.rounds + 4 * options.connections
    settings = product_settings(
        capacity,
        DOWNLOAD_DELAY_MIN_MS=str(JOB_DELAY_MS),
        DOWNLOAD_DELAY_MAX_MS=str(JOB_DELAY_MS),
        JOB_TIMEOUT_MS=str(2 * JOB_DELAY_MS),
    )
    with contextlib.ExitStack() as stack:
        servers = {
            system.key: stack.enter_context(running_server(system, settings))
            for system in options.systems
        }
        figures = measure(servers, options.requests, options.connections, options.rounds)
    print(
        f"server CPU per request (ms), {options.requests} requests over "
        f"{options.connections} connections, median (min-max) of {options.rounds} batches"
    )
    width = 22
    print(f"  {'kind':<24}" + "".join(f"{system.key:<{width}}" for system in options.systems))
    for name, by_system in figures.items():
        cells = "".join(
            f"{_cell(by_system.get(system.key)):<{width}}" for system in options.systems
        )
        print(f"  {name:<24}{cells}")


if __name__ == "__main__":
    main()
