"""BASELINE (the floor): a bare ASGI app on Hypercorn's trio worker, no framework.

For ``GET /v1/download/status/{id}`` it returns the same JSON document and
headers as the product, from a dict, and 404 for anything else. The
benchmark compares the product's status throughput against it: no Python
server on this stack can answer faster than this app.

For the polling staircase it also creates jobs (``POST /v1/download/start``
answers 202 and adds a document that never changes) and holds long polls:
a status request with ``?wait=N`` whose ``If-None-Match`` names the
document's ETag sleeps N seconds (at most 30), then answers 304. It does
not watch for the client leaving. This shows how many open long polls the
bare server keeps open while it still responds to other requests quickly.

Run: ``python -m bench.baselines.floor_asgi --port N`` (binds 127.0.0.1).
"""

from __future__ import annotations

import itertools
import json
import sys
import urllib.parse
import uuid
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from ._document import JOB_ID, parse_port, processing_document

STATUS_PREFIX = "/v1/download/status/"
START_PATH = "/v1/download/start"
JOBS: dict[str, dict[str, Any]] = {JOB_ID: processing_document(JOB_ID)}
# A job's document never changes, so one tag fits every job.
ETAG = b'"floor"'
MAX_WAIT_SECONDS = 30.0
_job_numbers = itertools.count()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return

    path: str = scope["path"]
    if path == START_PATH and scope["method"] == "POST":
        # Read the body: Hypercorn 0.18 responds to no later request on a connection
        # whose body was left unread.
        while (await receive()).get("more_body"):
            pass
        await _respond(send, 202, _start_job(), [])
        return
    document = JOBS.get(path[len(STATUS_PREFIX) :]) if path.startswith(STATUS_PREFIX) else None
    if document is None or scope["method"] != "GET":
        await _respond(send, 404, b'{"title":"Not Found"}', [])
        return
    headers = [(b"cache-control", b"no-cache"), (b"retry-after", b"2"), (b"etag", ETAG)]
    if (b"if-none-match", ETAG) in scope["headers"]:
        wait = _wait_seconds(scope["query_string"])
        if wait > 0:
            await trio.sleep(wait)
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    await _respond(send, 200, json.dumps(document, separators=(",", ":")).encode(), headers)


def _start_job() -> bytes:
    job_id = str(uuid.UUID(int=next(_job_numbers) + 1))
    JOBS[job_id] = processing_document(job_id)
    return json.dumps(
        {
            "jobId": job_id,
            "status": "processing",
            "statusUrl": f"{STATUS_PREFIX}{job_id}",
            "resultUrl": f"/v1/download/{job_id}",
        }
    ).encode()


def _wait_seconds(query_string: bytes) -> float:
    """Return ``?wait=`` in seconds, at most ``MAX_WAIT_SECONDS``, or 0 if missing or invalid."""
    values = urllib.parse.parse_qs(query_string.decode("latin-1")).get("wait", ["0"])
    try:
        seconds = float(values[0])
    except ValueError:
        return 0.0
    return min(max(seconds, 0.0), MAX_WAIT_SECONDS)


async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", b"application/json"), *headers]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{parse_port(sys.argv[1:])}"]
    config.accesslog = None
    trio.run(serve, app, config)


if __name__ == "__main__":
    main()
