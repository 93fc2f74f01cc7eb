"""BASELINE (the framework reference): one minimal Quart-Trio route on Hypercorn's trio worker.

The product's status route with the supervisor taken out: the same JSON
document and headers, read from a dict. The benchmark compares the
product's status throughput against it to isolate what the engine adds.

Run: ``python -m bench.baselines.quart_minimal --port N`` (binds 127.0.0.1).
"""

from __future__ import annotations

import sys
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, jsonify
from quart_trio import QuartTrio

from ._document import JOB_ID, parse_port, processing_document

JOBS: dict[str, dict[str, Any]] = {JOB_ID: processing_document(JOB_ID)}

app = QuartTrio(__name__)
app.json.sort_keys = False  # type: ignore[attr-defined]


@app.get("/v1/download/status/<job_id>")
async def download_status(job_id: str) -> Response | tuple[dict[str, str], int]:
    document = JOBS.get(job_id)
    if document is None:
        return {"title": "Not Found"}, 404
    response = jsonify(document)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Retry-After"] = "2"
    return response


def main() -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{parse_port(sys.argv[1:])}"]
    config.accesslog = None
    trio.run(serve, app, config)


if __name__ == "__main__":
    main()
