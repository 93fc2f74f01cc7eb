"""BASELINE (the floor): a bare ASGI app on Hypercorn's trio worker, no framework.

For ``GET /v1/download/status/{id}`` it returns the same JSON document and
headers as the product, from a dict, and 404 for anything else. The
benchmark compares the product's status throughput against it: no Python
server on this stack can answer faster than this app.

Run: ``python -m bench.baselines.floor_asgi --port N`` (binds 127.0.0.1).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from ._document import JOB_ID, parse_port, processing_document

STATUS_PREFIX = "/v1/download/status/"
JOBS: dict[str, dict[str, Any]] = {JOB_ID: processing_document(JOB_ID)}


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
    document = JOBS.get(path[len(STATUS_PREFIX) :]) if path.startswith(STATUS_PREFIX) else None
    if document is None or scope["method"] != "GET":
        body = b'{"title":"Not Found"}'
        status = 404
        headers = [(b"content-type", b"application/json")]
    else:
        body = json.dumps(document, separators=(",", ":")).encode()
        status = 200
        headers = [
            (b"content-type", b"application/json"),
            (b"cache-control", b"no-cache"),
            (b"retry-after", b"2"),
        ]
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
