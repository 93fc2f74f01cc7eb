"""BASELINE (the usual alternative): the download API written the way most FastAPI users would.

Not product code. ``POST /v1/download/start`` stores the job in a
module-level dict and starts one asyncio background task per job, which
sleeps the job's delay, writes the file and marks the job done. Status
computes progress from the elapsed time, and the result is a
``FileResponse``. It has no queue, deadline, cancellation, retry or expiry,
so the benchmark measures it only on starts, plain polling, status
throughput and jobs in flight.

It reads the product's variables for the simulated work:
DOWNLOAD_DELAY_MIN_MS, DOWNLOAD_DELAY_MAX_MS, DOWNLOAD_SIZE_MIN_BYTES,
DOWNLOAD_SIZE_MAX_BYTES and RESULTS_DIR (required here).

Run: ``python -m bench.baselines.fastapi_jobs --port N``. It serves on
uvicorn with its defaults, which pick uvloop and httptools when installed
(``uvicorn[standard]``, as FastAPI's documentation installs it), with the
access log off like the product's.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from ._document import parse_port

DELAY_MIN_MS = int(os.environ.get("DOWNLOAD_DELAY_MIN_MS", "10000"))
DELAY_MAX_MS = int(os.environ.get("DOWNLOAD_DELAY_MAX_MS", "120000"))
SIZE_MIN_BYTES = int(os.environ.get("DOWNLOAD_SIZE_MIN_BYTES", "65536"))
SIZE_MAX_BYTES = int(os.environ.get("DOWNLOAD_SIZE_MAX_BYTES", "1048576"))
RESULTS_DIR = Path(os.environ.get("RESULTS_DIR", "."))

app = FastAPI()
jobs: dict[str, dict[str, Any]] = {}
# References to running tasks, so the event loop does not garbage-collect them.
background_tasks: set[asyncio.Task[None]] = set()


class StartRequest(BaseModel):
    file_id: int = Field(ge=10000, le=100000000)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def run_job(job_id: str) -> None:
    job = jobs[job_id]
    await asyncio.sleep(job["delay"])
    size = random.randint(SIZE_MIN_BYTES, SIZE_MAX_BYTES)
    path = RESULTS_DIR / f"{job_id}.bin"
    path.write_bytes(os.urandom(size))
    job.update(status="done", progress=100, updatedAt=now_iso(), path=str(path), size=size)


@app.post("/v1/download/start", status_code=202)
async def start_download(body: StartRequest, response: Response) -> dict[str, Any]:
    job_id = str(uuid.uuid4())
    jobs[job_id] = {
        "jobId": job_id,
        "fileId": body.file_id,
        "status": "processing",
        "progress": 0,
        "createdAt": now_iso(),
        "updatedAt": now_iso(),
        "started": time.monotonic(),
        "delay": random.uniform(DELAY_MIN_MS, DELAY_MAX_MS) / 1000,
    }
    task = asyncio.create_task(run_job(job_id))
    background_tasks.add(task)
    task.add_done_callback(background_tasks.discard)
    response.headers["Location"] = f"/v1/download/status/{job_id}"
    response.headers["Retry-After"] = "2"
    return {
        "jobId": job_id,
        "status": "queued",
        "statusUrl": f"/v1/download/status/{job_id}",
        "resultUrl": f"/v1/download/{job_id}",
    }


@app.get("/v1/download/status/{job_id}")
async def download_status(job_id: str, response: Response) -> dict[str, Any]:
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail="job not found")
    if job["status"] == "processing":
        elapsed = time.monotonic() - job["started"]
        job["progress"] = min(99, int(elapsed / job["delay"] * 100)) if job["delay"] else 99
        response.headers["Retry-After"] = "2"
    response.headers["Cache-Control"] = "no-cache"
    document = {
        key: job[key] for key in ("jobId", "fileId", "status", "progress", "createdAt", "updatedAt")
    }
    document["statusUrl"] = f"/v1/download/status/{job_id}"
    if job["status"] == "done":
        document["resultUrl"] = f"/v1/download/{job_id}"
        document["result"] = {"size": job["size"]}
    return document


@app.get("/v1/download/{job_id}")
async def download_result(job_id: str) -> FileResponse:
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail="job not found")
    if job["status"] != "done":
        raise HTTPException(status_code=409, detail="job not finished")
    return FileResponse(job["path"], filename=f"{job['fileId']}.bin")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "healthy"}


def main() -> None:
    uvicorn.run(
        app, host="127.0.0.1", port=parse_port(sys.argv[1:]), log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
