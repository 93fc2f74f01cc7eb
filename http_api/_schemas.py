"""Pydantic models of the API's responses and headers, for the OpenAPI document only.

The handlers build their JSON with ``jsonify`` and ``render_snapshot``, not with
these models, so each model states the shape that code produces:
``tests/http_api/test_openapi.py`` validates real responses against the
generated schemas. Response models forbid unknown members, so a field added
to a handler without its model fails that test.

Members that the handlers leave out, rather than set to null, are typed
``X | SkipJsonSchema[None]`` with ``default=None`` (see ``_omitted``): the
schema then lists them as optional without allowing null.

Header models use each header's exact name as the field alias, and
``_openapi.py`` turns them into OpenAPI parameter and header objects.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic.json_schema import SkipJsonSchema

from engine import MAX_IDEMPOTENCY_KEY_LENGTH

from ._body import MAX_BULK_FILE_IDS, MAX_FILE_ID, MIN_FILE_ID
from ._request_id import MAX_REQUEST_ID_LENGTH

# The media types of the response bodies.
JSON_MEDIA_TYPE = "application/json"
PROBLEM_MEDIA_TYPE = "application/problem+json"
ZIP_MEDIA_TYPE = "application/zip"
# Prometheus' text exposition format is served as text/plain with a version parameter.
METRICS_MEDIA_TYPE = "text/plain"

UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# An entity tag as RFC 9110 section 8.8.3 writes it: optionally weak, always quoted.
ETAG_PATTERN = r'^(W/)?"[\x21\x23-\x7e]*"$'
# 1 to N visible ASCII characters, the rule of _request_id.py and of _idempotency_key.
VISIBLE_ASCII_PATTERN = r"^[\x21-\x7e]+$"
# Content-Range of a 206 ("bytes 0-99/1000") or of a 416 ("bytes */1000").
CONTENT_RANGE_PATTERN = r"^bytes ([0-9]+-[0-9]+|\*)/[0-9]+$"

FileId = Annotated[int, Field(ge=MIN_FILE_ID, le=MAX_FILE_ID, examples=[70000])]
JobId = Annotated[
    str, Field(pattern=UUID_PATTERN, examples=["3f2b8c1e-0d4a-4c6e-9b1a-2d5e7f8a9c0b"])
]
Timestamp = Annotated[
    str,
    Field(
        json_schema_extra={"format": "date-time"},
        description="ISO 8601 UTC time with milliseconds, such as 2026-12-04T20:32:01.111Z",
    ),
]
Path = Annotated[str, Field(json_schema_extra={"format": "uri-reference"})]
IdempotencyKey = Annotated[
    str,
    Field(min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH, pattern=VISIBLE_ASCII_PATTERN),
]

# Copies of limits in _routes.py, which imports this module. test_openapi.py
# checks that the copies agree with the originals.
MAX_WAIT_QUERY_SECONDS = 3600  # MAX_ACCEPTED_WAIT_SECONDS
RETRY_AFTER_RANGE_SECONDS = (1, 10)  # MIN_RETRY_AFTER_SECONDS, MAX_RETRY_AFTER_SECONDS

# The values of engine.JobStatus. test_openapi.py checks that the two agree.
JobStatusValue = Literal["queued", "processing", "done", "failed", "cancelled"]


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _omitted(**kwargs: Any) -> Any:
    """Declare a member that the response leaves out when it has no value."""
    field: FieldInfo = Field(default=None, json_schema_extra=_drop_default, **kwargs)
    return field


def _drop_property_titles(schema: dict[str, Any]) -> None:
    # Pydantic titles every property after its Python name ("Jobid"), which
    # only repeats the property name in the rendered docs.
    for member in schema.get("properties", {}).values():
        member.pop("title", None)


class ResponseModel(BaseModel):
    """Base of the JSON response models: camelCase names, no members beyond the declared ones."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=_drop_property_titles,
    )

    response_media_type: ClassVar[str] = JSON_MEDIA_TYPE


class ServiceIndex(ResponseModel):
    """The service's name and the paths of its documentation and main routes."""

    message: str = Field(examples=["download-jobs: long-running downloads behind a polling API"])
    docs: Path = Field(description="Interactive documentation (Swagger UI)")
    openapi: Path = Field(description="This OpenAPI document")
    health: Path = Field(description="Health check")
    start: Path = Field(description="Where to POST a download request")


class JobAccepted(ResponseModel):
    """The job was created and queued. Poll `statusUrl` until it ends."""

    job_id: JobId
    status: Literal["queued"]
    status_url: Path
    result_url: Path = Field(description="Where the file can be fetched once the job is done")


class BulkJobAccepted(ResponseModel):
    """The bulk job was created and queued. Poll `statusUrl` until it ends."""

    job_id: JobId
    status: Literal["queued"]
    total_file_ids: int = Field(
        ge=1, le=MAX_BULK_FILE_IDS, description="Distinct file ids in the job"
    )
    duplicate_file_ids: list[FileId] = Field(
        description="Ids that the request listed more than once, each fetched once, ascending"
    )
    status_url: Path
    result_url: Path


class ResultInfo(ResponseModel):
    """The finished job's file."""

    size: int = Field(ge=0, description="Bytes")
    media_type: str = Field(examples=[ZIP_MEDIA_TYPE])
    file_name: str = Field(examples=["70000.zip"])
    sha256: str = Field(pattern=SHA256_PATTERN, description="Lowercase hex SHA-256 of the file")


class JobErrorInfo(ResponseModel):
    """The reason a job failed."""

    code: str = Field(description="Stable machine-readable reason, such as timeout or not_found")
    message: str


class BulkFileState(ResponseModel):
    """One file of a bulk job."""

    file_id: FileId
    status: Literal["queued", "processing", "done", "missing", "failed", "cancelled"]


class JobStatusFields(ResponseModel):
    """Members of every status document."""

    job_id: JobId
    status: JobStatusValue
    progress: int = Field(ge=0, le=100, description="Percent, 100 exactly when done")
    created_at: Timestamp
    updated_at: Timestamp = Field(
        description="Last change of status, progress step or attempt (failed or started)"
    )
    attempt: int = Field(
        ge=0,
        description=(
            "Attempt running or last run, 0 before the job starts. For a bulk job, the "
            "highest attempt of any of its files"
        ),
    )
    status_url: Path
    queue_position: Annotated[int, Field(ge=1)] | SkipJsonSchema[None] = _omitted(
        description="1 for the next job to start, present only while queued"
    )
    retry_at: Timestamp | SkipJsonSchema[None] = _omitted(
        description=(
            "When the next attempt starts, present only while a job for one file waits "
            "to retry a failed attempt, and only if that is before deadlineAt"
        )
    )
    deadline_at: Timestamp | SkipJsonSchema[None] = _omitted(
        description="When the job fails with error code timeout, present only while unfinished"
    )
    expires_at: Timestamp | SkipJsonSchema[None] = _omitted(
        description="When the finished job and its result are removed"
    )
    result_url: Path | SkipJsonSchema[None] = _omitted(description="Only when done")
    result: ResultInfo | SkipJsonSchema[None] = _omitted(description="Only when done")
    error: JobErrorInfo | SkipJsonSchema[None] = _omitted(description="Only when failed")


class SingleJobStatus(JobStatusFields):
    """Status document of a job for one file."""

    file_id: FileId


class BulkJobStatus(JobStatusFields):
    """Status document of a bulk job, which packs several files into one archive."""

    file_ids: list[FileId] = Field(min_length=1, max_length=MAX_BULK_FILE_IDS)
    total_file_ids: int = Field(ge=1, le=MAX_BULK_FILE_IDS)
    files: list[BulkFileState]
    missing_file_ids: list[FileId] = Field(description="Ids the storage does not have")


class JobStatusDocument(RootModel[SingleJobStatus | BulkJobStatus]):
    """The job's status document."""

    response_media_type: ClassVar[str] = JSON_MEDIA_TYPE


class FileCheck(ResponseModel):
    """Whether the storage has the file. Checking starts no job."""

    # The original service names this member in snake_case, unlike the camelCase others.
    file_id: FileId = Field(alias="file_id")
    available: bool
    s3_key: str | None = Field(
        alias="s3Key", examples=["downloads/70000.zip"], description="null when not available"
    )
    size: int | None = Field(ge=0, description="Bytes of the archive, null when not available")


class HealthChecks(ResponseModel):
    storage: Literal["ok", "error"] = Field(
        description="Whether the storage responded to its probe"
    )
    jobs: Literal["draining"] | SkipJsonSchema[None] = _omitted(
        description="Present while the service drains before it stops and rejects starts"
    )


class HealthyReport(ResponseModel):
    """The storage responded to its probe and the service accepts jobs."""

    status: Literal["healthy"]
    checks: HealthChecks


class UnhealthyReport(ResponseModel):
    """The storage probe failed or took longer than 2 s, or the service is draining."""

    status: Literal["unhealthy"]
    checks: HealthChecks


class ProblemDocument(ResponseModel):
    """An RFC 9457 problem. Clients branch on `code`, a stable name."""

    response_media_type: ClassVar[str] = PROBLEM_MEDIA_TYPE

    type: str = Field(
        json_schema_extra={"format": "uri"},
        examples=["tag:download-jobs,2026:problem:job_not_found"],
        description="A tag URI (RFC 4151) ending in the code, an identifier and not a link",
    )
    title: str
    status: int = Field(ge=400, le=599, description="The response's HTTP status code")
    detail: str
    code: str = Field(pattern=r"^[a-z0-9_]+$", examples=["job_not_found"])
    field: str | SkipJsonSchema[None] = _omitted(
        description="The input field at fault, such as file_id, wait or Idempotency-Key"
    )
    request_id: str = Field(description="The same id as the X-Request-ID response header")
    job: JobStatusDocument | SkipJsonSchema[None] = _omitted(
        description="The job's status document, for errors about its state (409)"
    )


class RawBody:
    """Marker for a response body that is not JSON. ``_openapi.py`` uses ``schema`` as is."""

    response_media_type: ClassVar[str]
    schema: ClassVar[dict[str, Any]]


class ZipArchive(RawBody):
    """The job's file, or the requested byte range of it."""

    response_media_type = ZIP_MEDIA_TYPE
    schema: ClassVar[dict[str, Any]] = {"type": "string", "contentMediaType": ZIP_MEDIA_TYPE}


class MetricsText(RawBody):
    """Prometheus metrics in the text exposition format."""

    response_media_type = METRICS_MEDIA_TYPE
    schema: ClassVar[dict[str, Any]] = {"type": "string"}


class NoBody:
    """Marker for a response without a body, such as 304 Not Modified."""


# -- request headers and query ------------------------------------------------


class HeaderModel(BaseModel):
    """Base of the header models: fields are aliased to the exact header name."""

    model_config = ConfigDict(populate_by_name=True, json_schema_extra=_drop_property_titles)


class StartHeaders(HeaderModel):
    idempotency_key: IdempotencyKey | SkipJsonSchema[None] = _omitted(
        alias="Idempotency-Key",
        description=(
            "Repeating the request with the same key and body returns the existing job (200) "
            "instead of creating one. The same key with another body gets 422"
        ),
    )


class StatusHeaders(HeaderModel):
    if_none_match: str | SkipJsonSchema[None] = _omitted(
        alias="If-None-Match",
        description=(
            "The ETag of the last status document seen: 304 if it is still current. "
            "With wait, the request waits for a change first"
        ),
    )


class ResultHeaders(HeaderModel):
    range: str | SkipJsonSchema[None] = _omitted(
        alias="Range",
        examples=["bytes=0-1023"],
        description=(
            "One byte range (bytes=a-b, bytes=a- or bytes=-n) for a 206. Other units, "
            "several ranges and malformed values are ignored. GET only"
        ),
    )
    if_range: str | SkipJsonSchema[None] = _omitted(
        alias="If-Range",
        description="Apply Range only if the result still has this ETag or Last-Modified date",
    )
    if_none_match: str | SkipJsonSchema[None] = _omitted(
        alias="If-None-Match", description="304 if the result has one of these ETags"
    )
    if_modified_since: str | SkipJsonSchema[None] = _omitted(
        alias="If-Modified-Since",
        description="304 if the result is not newer. Ignored with If-None-Match",
    )
    if_match: str | SkipJsonSchema[None] = _omitted(
        alias="If-Match", description="412 unless the result has one of these ETags"
    )
    if_unmodified_since: str | SkipJsonSchema[None] = _omitted(
        alias="If-Unmodified-Since",
        description="412 if the result is newer. Ignored with If-Match",
    )


class StatusQuery(BaseModel):
    model_config = ConfigDict(json_schema_extra=_drop_property_titles)

    wait: Annotated[float, Field(ge=0, le=MAX_WAIT_QUERY_SECONDS)] | SkipJsonSchema[None] = (
        _omitted(
            description=(
                "Long poll: with If-None-Match naming the current ETag, wait up to this many "
                "seconds (at most 30 are used). Answers at once when the status changes or an "
                "attempt fails or starts, otherwise when the time is up, with the progress "
                "reached by then"
            ),
        )
    )


# -- response headers -----------------------------------------------------------

RetryAfterSeconds = Annotated[int, Field(ge=0, description="Seconds to wait before retrying")]


class AcceptedHeaders(HeaderModel):
    location: Path = Field(alias="Location", description="The job's status URL")
    retry_after: int = Field(alias="Retry-After", ge=0, description="Seconds until the first poll")


class StatusResponseHeaders(HeaderModel):
    etag: str = Field(alias="ETag", pattern=ETAG_PATTERN, description="Send as If-None-Match")
    cache_control: Literal["no-cache"] = Field(alias="Cache-Control")
    retry_after: (
        Annotated[int, Field(ge=RETRY_AFTER_RANGE_SECONDS[0], le=RETRY_AFTER_RANGE_SECONDS[1])]
        | SkipJsonSchema[None]
    ) = _omitted(
        alias="Retry-After",
        description="Seconds until the next poll is worth it, present only while unfinished",
    )


class ResultResponseHeaders(HeaderModel):
    content_length: int = Field(alias="Content-Length", ge=0)
    content_disposition: str = Field(
        alias="Content-Disposition",
        pattern=r'^attachment; filename="[^"]+"$',
        examples=['attachment; filename="70000.zip"'],
    )
    accept_ranges: Literal["bytes"] = Field(alias="Accept-Ranges")
    etag: str = Field(
        alias="ETag", pattern=r'^"[0-9a-f]{64}"$', description="The quoted SHA-256 of the file"
    )
    last_modified: str = Field(
        alias="Last-Modified", description="When the job finished, as an HTTP date"
    )
    cache_control: Literal["private, no-store"] = Field(alias="Cache-Control")


class PartialResultHeaders(ResultResponseHeaders):
    content_range: str = Field(
        alias="Content-Range", pattern=CONTENT_RANGE_PATTERN, examples=["bytes 0-1023/892665"]
    )


class ResultNotModifiedHeaders(HeaderModel):
    etag: str = Field(alias="ETag", pattern=r'^"[0-9a-f]{64}"$')
    cache_control: Literal["private, no-store"] = Field(alias="Cache-Control")


class RangeNotSatisfiableHeaders(HeaderModel):
    content_range: str = Field(
        alias="Content-Range", pattern=r"^bytes \*/[0-9]+$", examples=["bytes */892665"]
    )
    accept_ranges: Literal["bytes"] = Field(alias="Accept-Ranges")


class RetryAfterHeaders(HeaderModel):
    retry_after: RetryAfterSeconds = Field(alias="Retry-After")


class UnsupportedMediaTypeHeaders(HeaderModel):
    accept_post: Literal["application/json"] = Field(alias="Accept-Post")


class CommonResponseHeaders(HeaderModel):
    """Headers that the middleware adds to every response of the app."""

    x_request_id: str = Field(
        alias="X-Request-ID",
        min_length=1,
        max_length=MAX_REQUEST_ID_LENGTH,
        pattern=VISIBLE_ASCII_PATTERN,
        description="The request's X-Request-ID if it was 1-128 visible ASCII, else a new UUID",
    )
    x_content_type_options: Literal["nosniff"] = Field(alias="X-Content-Type-Options")
    ratelimit_limit: Annotated[int, Field(ge=1)] | SkipJsonSchema[None] = _omitted(
        alias="RateLimit-Limit",
        description="Requests allowed per window in this request's budget (reads or writes)",
    )
    ratelimit_remaining: Annotated[int, Field(ge=0)] | SkipJsonSchema[None] = _omitted(
        alias="RateLimit-Remaining", description="Requests left in the current window"
    )
    ratelimit_reset: Annotated[int, Field(ge=1)] | SkipJsonSchema[None] = _omitted(
        alias="RateLimit-Reset", description="Seconds until the window ends"
    )
    access_control_allow_origin: str | SkipJsonSchema[None] = _omitted(
        alias="Access-Control-Allow-Origin",
        description="* or the request's Origin, when CORS_ORIGINS allows it",
    )


class CommonRequestHeaders(HeaderModel):
    """Headers that every route reads."""

    x_request_id: str | SkipJsonSchema[None] = _omitted(
        alias="X-Request-ID",
        description=(
            "An id to find this request in the server's logs. Kept if it is 1-128 visible "
            "ASCII characters, else replaced by a new UUID. Never rejected"
        ),
    )
