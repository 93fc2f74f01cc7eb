"""HTTP routes: each one parses the request, sends it to the supervisor and renders the reply."""

from __future__ import annotations

import logging

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, jsonify, request
from quart_schema import document_headers, document_querystring, document_request
from werkzeug.datastructures import Headers

from engine import JobStatus, SourceError, SupervisorClosed

from ._body import (
    CheckRequest,
    InitiateRequest,
    StartRequest,
    check_json_content_type,
    discard_body,
    read_json_body,
)
from ._context import current_client, current_jobs, current_settings
from ._openapi import DOCS_PATH, OPENAPI_PATH, operation, responds
from ._render import (
    POLL_INTERVAL_SECONDS,
    StatusReply,
    not_modified,
    render_snapshot,
    result_path,
    status_path,
)
from ._schemas import (
    AcceptedHeaders,
    BulkJobAccepted,
    FileCheck,
    HealthyReport,
    JobAccepted,
    JobStatusDocument,
    MetricsText,
    NoBody,
    ProblemDocument,
    RetryAfterHeaders,
    ServiceIndex,
    StartHeaders,
    StatusHeaders,
    StatusQuery,
    StatusResponseHeaders,
    UnhealthyReport,
    UnsupportedMediaTypeHeaders,
)
from ._start import StartSubmission, check_timeout, parse_idempotency_key
from ._status_layer import parse_wait

logger = logging.getLogger("http_api")

# Maximum time a storage probe may take before /health reports it as failed (seconds).
HEALTH_PROBE_TIMEOUT_SECONDS = 2.0

routes = Blueprint("download", __name__)

SERVICE_MESSAGE = "download-jobs: long-running downloads behind a polling API"

# Descriptions of problem responses that several routes document.
_BODY_TOO_LARGE = "Body larger than 64 KiB"
_NOT_JSON = "Content-Type is not application/json or application/*+json with UTF-8"
_MALFORMED_JOB_ID = "The job id is not a UUID (code invalid_job_id)"
_UNKNOWN_JOB = "No job has this id (code job_not_found)"
_EXPIRED_JOB = "The job finished and was removed after its time to live (code expired)"
_SHUTTING_DOWN = "The server is shutting down (code shutting_down)"


@routes.get("/")
@operation(
    "Describe the service", "Links to the documentation, the health check and the start route."
)
@responds(200, ServiceIndex, "The service's name and links")
async def service_index() -> Response:
    return jsonify(
        {
            "message": SERVICE_MESSAGE,
            "docs": DOCS_PATH,
            "openapi": OPENAPI_PATH,
            "health": "/health",
            "start": "/v1/download/start",
        }
    )


@routes.post("/v1/download/start")
@operation(
    "Start a download job",
    """
    Creates a job for one file and returns 202 at once, without waiting for
    the file. Poll the status URL in `Location` until the job ends.
    """,
)
@document_request(StartRequest)
@document_headers(StartHeaders)
@responds(202, JobAccepted, "Job created and queued", AcceptedHeaders)
@responds(
    200,
    JobStatusDocument,
    "The Idempotency-Key was used before with the same body: the existing job as it is now",
    AcceptedHeaders,
)
@responds(
    400,
    ProblemDocument,
    "Invalid JSON (code invalid_json), a body that does not match the schema or a timeout_ms "
    "above JOB_TIMEOUT_MS (code invalid_body, with field), or an invalid Idempotency-Key",
)
@responds(413, ProblemDocument, _BODY_TOO_LARGE)
@responds(415, ProblemDocument, _NOT_JSON, UnsupportedMediaTypeHeaders)
@responds(
    422,
    ProblemDocument,
    "The Idempotency-Key was used before with a different body (code idempotency_key_reused)",
)
@responds(
    503,
    ProblemDocument,
    "The queue or job table is full (code overloaded), or the server is shutting down "
    "(code shutting_down)",
    RetryAfterHeaders,
)
async def start_download() -> Response:
    """Create a job. ``StartLayer`` serves most starts before Quart receives them, with this code.

    This route handles what the layer passes on: a Content-Type other than
    JSON (415), a body over the size limit (413), and a request over its
    rate limit (429, from the ``before_request`` hook).
    """
    check_json_content_type()
    raw = await request.get_data(cache=False, as_text=False)
    assert isinstance(raw, bytes)
    submission = StartSubmission.parse(
        raw, request.headers.getlist("Idempotency-Key"), current_settings().engine.job_timeout_ms
    )
    reply = await submission.submit(current_jobs(), current_client())
    return Response(reply.body, status=reply.status, headers=Headers(reply.headers))


@routes.post("/v1/download/initiate")
@operation(
    "Start a bulk download job",
    """
    Creates one job that packs every listed file into one archive. Repeated
    ids are fetched once and listed in `duplicateFileIds`. Ids the storage
    lacks end up in the status document's `missingFileIds`.
    """,
)
@document_request(InitiateRequest)
@document_headers(StartHeaders)
@responds(202, BulkJobAccepted, "Bulk job created and queued", AcceptedHeaders)
@responds(
    200,
    JobStatusDocument,
    "The Idempotency-Key was used before with the same body: the existing job as it is now",
    AcceptedHeaders,
)
@responds(
    400,
    ProblemDocument,
    "Invalid JSON (code invalid_json), a body that does not match the schema or a "
    "timeout_ms above JOB_TIMEOUT_MS (code invalid_body, with field), or an invalid "
    "Idempotency-Key",
)
@responds(413, ProblemDocument, _BODY_TOO_LARGE)
@responds(415, ProblemDocument, _NOT_JSON, UnsupportedMediaTypeHeaders)
@responds(
    422,
    ProblemDocument,
    "The Idempotency-Key was used before with a different body (code idempotency_key_reused)",
)
@responds(
    503,
    ProblemDocument,
    "The queue or job table is full (code overloaded), or the server is shutting down "
    "(code shutting_down)",
    RetryAfterHeaders,
)
async def initiate_bulk_download() -> Response:
    max_timeout_ms = current_settings().engine.job_timeout_ms
    body = await read_json_body(InitiateRequest, max_timeout_ms=max_timeout_ms)
    key = parse_idempotency_key(request.headers.getlist("Idempotency-Key"))
    check_timeout(body.timeout_ms, max_timeout_ms)
    unique = tuple(dict.fromkeys(body.file_ids))
    duplicates = sorted({file_id for file_id in body.file_ids if body.file_ids.count(file_id) > 1})
    job_timeout = None if body.timeout_ms is None else body.timeout_ms / 1000
    snapshot, created = await current_jobs().submit_bulk_idempotent(
        unique,
        job_timeout=job_timeout,
        idempotency_key=key,
        idempotency_owner=current_client(),
        # Never equal to a start's fingerprint, so a key cannot switch kinds.
        fingerprint=("bulk", tuple(body.file_ids), body.timeout_ms),
    )
    if created:
        response = jsonify(
            {
                "jobId": snapshot.job_id,
                "status": snapshot.status.value,
                "totalFileIds": len(unique),
                "duplicateFileIds": duplicates,
                "statusUrl": status_path(snapshot.job_id),
                "resultUrl": result_path(snapshot.job_id),
            }
        )
        response.status_code = 202
    else:
        # A repeated Idempotency-Key: the existing job, as it is now.
        response = jsonify(render_snapshot(snapshot))
    response.headers["Location"] = status_path(snapshot.job_id)
    response.headers["Retry-After"] = str(POLL_INTERVAL_SECONDS)
    return response


@routes.get("/metrics")
@operation("Read the Prometheus metrics")
@responds(200, MetricsText, "Metrics in the Prometheus text exposition format")
async def metrics() -> Response:
    body = generate_latest(current_jobs().metrics_registry)
    return Response(body, status=200, content_type=CONTENT_TYPE_LATEST)


@routes.post("/v1/download/check")
@operation(
    "Check whether a file exists",
    "Asks the storage for the file's archive size without starting a job.",
)
@document_request(CheckRequest)
@responds(200, FileCheck, "Whether the file exists, and its storage key and size if it does")
@responds(
    400,
    ProblemDocument,
    "Invalid JSON (code invalid_json), or a body that does not match the schema "
    "(code invalid_body, with field)",
)
@responds(413, ProblemDocument, _BODY_TOO_LARGE)
@responds(415, ProblemDocument, _NOT_JSON, UnsupportedMediaTypeHeaders)
async def check_download() -> Response:
    body = await read_json_body(CheckRequest)
    size = await current_jobs().check_file(body.file_id)
    return jsonify(
        {
            "file_id": body.file_id,
            "available": size is not None,
            "s3Key": f"downloads/{body.file_id}.zip" if size is not None else None,
            "size": size,
        }
    )


@routes.get("/health")
@operation(
    "Check the service's health",
    """
    Probes the storage, waiting at most 2 s, and reports whether the service
    accepts new jobs. After a stop signal it drains: it still serves polls
    and downloads but rejects starts, and this check returns 503 so that a
    load balancer sends new clients elsewhere.
    """,
)
@responds(200, HealthyReport, "The storage responded and the service accepts jobs")
@responds(
    503,
    UnhealthyReport,
    "The storage probe failed or timed out, or the service is draining before it stops",
)
async def health() -> Response:
    jobs = current_jobs()
    storage = "error"
    with trio.move_on_after(HEALTH_PROBE_TIMEOUT_SECONDS) as probe:
        try:
            await jobs.check_health()
        except SourceError as exc:
            logger.warning("health check failed: %s", exc)
        else:
            storage = "ok"
    if probe.cancelled_caught:
        logger.warning(
            "health check failed: storage probe timed out after %g s", HEALTH_PROBE_TIMEOUT_SECONDS
        )
    try:
        accepting = (await jobs.stats()).accepting
    except SupervisorClosed:
        accepting = False
    healthy = storage == "ok" and accepting
    # The original service's report has the storage check only, so the jobs
    # check appears only when it fails.
    checks = {"storage": storage} if accepting else {"storage": storage, "jobs": "draining"}
    response = jsonify({"status": "healthy" if healthy else "unhealthy", "checks": checks})
    if not healthy:
        response.status_code = 503
    return response


@routes.get("/v1/download/status/<job_id:job_id>")
@operation(
    "Read a job's status document",
    """
    Poll at about the interval in `Retry-After`. Send the last `ETag` in
    `If-None-Match` to get 304 while nothing changed. Add `wait` to hold the
    request for up to that many seconds (at most 30): it answers at once when
    the status or attempt changes, and otherwise when the time is up, with
    the progress reached by then or 304 if nothing changed.
    """,
)
@document_querystring(StatusQuery)
@document_headers(StatusHeaders)
@responds(200, JobStatusDocument, "The job's current status document", StatusResponseHeaders)
@responds(
    304,
    NoBody,
    "If-None-Match names the current ETag: the document has not changed",
    StatusResponseHeaders,
)
@responds(
    400,
    ProblemDocument,
    _MALFORMED_JOB_ID + ", or wait is not a number from 0 to 3600 (code invalid_wait)",
)
@responds(404, ProblemDocument, _UNKNOWN_JOB)
@responds(410, ProblemDocument, _EXPIRED_JOB)
@responds(413, ProblemDocument, "The request has a body larger than 64 KiB")
@responds(503, ProblemDocument, _SHUTTING_DOWN, RetryAfterHeaders)
async def download_status(job_id: str) -> Response:
    """Return the job's status document, or 304 when ``If-None-Match`` names its ETag.

    ``StatusLayer`` answers most reads of this route before Quart sees them,
    from the same ``StatusReply``, and holds long polls (``?wait=N``)
    until the job's status or attempt changes or N seconds (at most
    ``MAX_WAIT_SECONDS``) are up. This route answers what the layer passes
    on: errors (malformed ``wait``, unknown or expired job, stopping
    server, rate limit), requests with a body, and so on. It always
    responds at once, from the document as it is now. Progress and queue
    position alone do not end a wait. A client sets how often it receives
    them by its choice of N, and a job that moves through twenty progress
    steps costs one response per N seconds rather than twenty.
    """
    # A read has no use for a body. One over the size limit gets 413 (Quart
    # raises it while reading) rather than staying on the connection, and a
    # late one closes the connection after the response.
    body_read = await discard_body()
    parse_wait(request.args.get("wait"))
    snapshot = await current_jobs().status(job_id)
    reply = StatusReply.of(snapshot, request.headers.getlist("If-None-Match"))
    response = not_modified() if reply.status == 304 else Response(reply.body)
    response.headers.update(reply.headers)
    if not body_read:
        response.headers["Connection"] = "close"
    return response


@routes.delete("/v1/download/<job_id:job_id>")
@operation(
    "Cancel a job",
    "Cancels a queued or processing job. Cancelling a cancelled job again returns the same "
    "document.",
)
@responds(200, JobStatusDocument, "The job's status document, now cancelled")
@responds(400, ProblemDocument, _MALFORMED_JOB_ID)
@responds(404, ProblemDocument, _UNKNOWN_JOB)
@responds(
    409,
    ProblemDocument,
    "The job already ended as done or failed (code job_already_finished), and job has its document",
)
@responds(410, ProblemDocument, _EXPIRED_JOB)
@responds(503, ProblemDocument, _SHUTTING_DOWN, RetryAfterHeaders)
async def cancel_download(job_id: str) -> Response:
    snapshot = await current_jobs().cancel(job_id)
    assert snapshot.status is JobStatus.CANCELLED
    return jsonify(render_snapshot(snapshot))
