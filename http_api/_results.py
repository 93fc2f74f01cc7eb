"""The result download: ``GET`` and ``HEAD /v1/download/{jobId}``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio
from quart import Blueprint, Response, request

from ._context import current_jobs
from ._problems import Problem

RESULT_CHUNK_BYTES = 64 * 1024

results = Blueprint("results", __name__)


@results.get("/v1/download/<job_id:job_id>")
async def download_result(job_id: str) -> Response:
    result = await current_jobs().open_result(job_id)
    try:
        file = await trio.open_file(result.path, "rb")
    except FileNotFoundError:
        raise Problem(
            410,
            "result_unavailable",
            "Result unavailable",
            f"the result of job {job_id} was removed",
        ) from None

    info = result.info
    if request.method == "HEAD":
        await file.aclose()
        response = Response(b"", status=200, content_type=info.media_type)
    else:
        response = Response(_stream(file), status=200, content_type=info.media_type)
    response.headers["Content-Length"] = str(info.size)
    response.headers["Content-Disposition"] = f'attachment; filename="{info.file_name}"'
    response.headers["ETag"] = f'"{info.sha256}"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


async def _stream(file: trio.abc.AsyncResource) -> AsyncIterator[bytes]:
    """Yield the open file in chunks and close it, also when the client goes away."""
    async with file:
        while chunk := await file.read(RESULT_CHUNK_BYTES):  # type: ignore[attr-defined]
            yield chunk
