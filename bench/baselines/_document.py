"""The status document that the floor and framework-reference baselines return.

BASELINE, not product code. It has the fields and size of the product's
status document for a processing job (``http_api._render.render_snapshot``).
"""

from __future__ import annotations

from typing import Any

# The one job both status-only baselines know; the benchmark polls this id.
JOB_ID = "3f2b8c1e-0d4a-4c6e-9b1a-2d5e7f8a9c0b"
STATUS_PATH = f"/v1/download/status/{JOB_ID}"


def processing_document(job_id: str) -> dict[str, Any]:
    """Return a status document shaped like the product's for a processing job."""
    return {
        "jobId": job_id,
        "fileId": 70000,
        "status": "processing",
        "progress": 35,
        "createdAt": "2026-12-04T20:32:01.111Z",
        "updatedAt": "2026-12-04T20:32:19.402Z",
        "attempt": 1,
        "statusUrl": f"/v1/download/status/{job_id}",
        "deadlineAt": "2026-12-04T20:37:01.111Z",
    }


def parse_port(argv: list[str]) -> int:
    """Read ``--port N`` from ``argv``; the benchmark always passes it."""
    if len(argv) != 2 or argv[0] != "--port":
        raise SystemExit("usage: python -m bench.baselines.NAME --port N")
    return int(argv[1])
