"""Load patterns shared by the scenarios: open loop, closed loop, bulk starts, metric reads.

Every request has a timeout (``REQUEST_TIMEOUT_SECONDS``), so a stuck server
ends a run with errors counted instead of hanging it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from collections.abc import Callable

import h11
import trio

from ._http import JSON_HEADERS, HttpConnection, Parser, ProtocolError, Response

REQUEST_TIMEOUT_SECONDS = 30.0
CONNECTION_ERRORS = (OSError, trio.BrokenResourceError, ProtocolError, h11.ProtocolError)

# One request to send: method, target, extra headers, body.
RequestSpec = tuple[str, str, list[tuple[str, str]] | None, bytes]


@dataclasses.dataclass
class Tally:
    """Latencies (seconds) and outcomes of a set of requests."""

    latencies: list[float] = dataclasses.field(default_factory=list)
    statuses: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    @property
    def attempts(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    def share_other_than(self, status: int) -> float:
        """Return the share of attempts that did not get ``status`` (errors included)."""
        attempts = self.attempts
        return (attempts - self.statuses[status]) / attempts if attempts else float("nan")


async def send(connection: HttpConnection, spec: RequestSpec, tally: Tally) -> Response | None:
    """Send ``spec`` on ``connection``; count the outcome and return the response, or None."""
    method, target, headers, body = spec
    with trio.move_on_after(REQUEST_TIMEOUT_SECONDS):
        try:
            response = await connection.request(method, target, headers=headers, body=body)
        except CONNECTION_ERRORS as exc:
            tally.errors[type(exc).__name__] += 1
            return None
        tally.statuses[response.status] += 1
        return response
    tally.errors["timeout"] += 1
    await connection.aclose()
    return None


def start_body(file_id: int, timeout_ms: int | None = None) -> bytes:
    document: dict[str, int] = {"file_id": file_id}
    if timeout_ms is not None:
        document["timeout_ms"] = timeout_ms
    return json.dumps(document).encode()


def start_spec(file_id: int, timeout_ms: int | None = None) -> RequestSpec:
    return ("POST", "/v1/download/start", JSON_HEADERS, start_body(file_id, timeout_ms))


def perf_offset() -> float:
    """Return perf_counter() minus trio's clock, to turn trio times into perf_counter times."""
    return time.perf_counter() - trio.current_time()


async def open_loop(
    port: int,
    *,
    rate: float,
    duration: float,
    build: Callable[[int], RequestSpec],
    parser: Parser,
    tally: Tally,
    initial_connections: int = 16,
) -> float:
    """Send ``rate * duration`` requests evenly spaced, whatever the responses take.

    Each latency is measured from the request's scheduled time, so time spent
    waiting for a free connection counts (no coordinated omission). A
    request whose connection is busy gets a new one. Returns the seconds
    from the first scheduled request to the last response.
    """
    idle = [HttpConnection(port, parser) for _ in range(initial_connections)]
    for connection in idle:
        await connection.connect()
    count = round(rate * duration)
    offset = perf_offset()
    first = trio.current_time() + 0.05
    last_finish = first

    async def one(index: int, scheduled: float) -> None:
        nonlocal last_finish
        connection = idle.pop() if idle else HttpConnection(port, parser)
        response = await send(connection, build(index), tally)
        if response is not None:
            tally.latencies.append(response.finished_at - (scheduled + offset))
        last_finish = max(last_finish, trio.current_time())
        idle.append(connection)

    async with trio.open_nursery() as nursery:
        for index in range(count):
            scheduled = first + index / rate
            await trio.sleep_until(scheduled)
            nursery.start_soon(one, index, scheduled)
    for connection in idle:
        await connection.aclose()
    return last_finish - first


async def closed_loop(
    port: int,
    *,
    connections: int,
    warmup: float,
    duration: float,
    spec: RequestSpec,
    parser: Parser,
    tally: Tally,
    on_window: Callable[[str], None],
) -> int:
    """Keep ``connections`` requests outstanding; count responses that end inside the window.

    The window starts ``warmup`` seconds in and lasts ``duration`` seconds;
    ``on_window`` is called with "start" and "end" at its edges, for CPU
    readings. Latencies of responses inside the window go to ``tally``.
    Returns the number of responses completed inside the window.
    """
    offset = perf_offset()
    window_start = trio.current_time() + warmup
    window_end = window_start + duration
    completed = 0

    async def worker() -> None:
        nonlocal completed
        connection = HttpConnection(port, parser)
        while trio.current_time() < window_end:
            response = await send(connection, spec, tally)
            if response is None:
                await trio.sleep(0.01)
                continue
            finished = response.finished_at - offset
            if window_start <= finished < window_end:
                completed += 1
                tally.latencies.append(response.latency)
        await connection.aclose()

    async def edges() -> None:
        await trio.sleep_until(window_start)
        on_window("start")
        await trio.sleep_until(window_end)
        on_window("end")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(edges)
        for _ in range(connections):
            nursery.start_soon(worker)
    return completed


async def start_jobs(
    port: int,
    count: int,
    *,
    connections: int,
    parser: Parser,
    first_file_id: int = 10_000,
    timeout_ms: Callable[[int], int | None] | None = None,
) -> tuple[list[str], Tally]:
    """Start ``count`` jobs as fast as ``connections`` keep-alive connections allow.

    Returns the job ids in submission order (failed starts are left out) and
    the tally of the start requests.
    """
    tally = Tally()
    job_ids: list[str | None] = [None] * count
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        connection = HttpConnection(port, parser)
        while next_index < count:
            index = next_index
            next_index += 1
            deadline = timeout_ms(index) if timeout_ms is not None else None
            response = await send(connection, start_spec(first_file_id + index, deadline), tally)
            if response is not None and response.status == 202:
                tally.latencies.append(response.latency)
                job_ids[index] = json.loads(response.body)["jobId"]
        await connection.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(min(connections, count)):
            nursery.start_soon(worker)
    return [job_id for job_id in job_ids if job_id is not None], tally


async def read_metrics(port: int, parser: Parser) -> dict[str, float]:
    """Return the product's Prometheus samples, keyed by name with labels, e.g. 'a{b="c"}'."""
    connection = HttpConnection(port, parser)
    try:
        response = await connection.request("GET", "/metrics")
    finally:
        await connection.aclose()
    samples: dict[str, float] = {}
    for line in response.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                samples[name] = float(value)
            except ValueError:
                continue
    return samples
