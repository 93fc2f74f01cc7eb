"""Request bodies: content type, size, JSON syntax and schema, each with its own 4xx.

The checks run in this order, and the first failure answers:

1. ``Content-Type`` must be JSON (``application/json`` or ``application/*+json``,
   charset UTF-8 if one is given), else 415.
2. The body must fit ``MAX_CONTENT_LENGTH``, else 413. Quart raises before
   reading when the declared ``Content-Length`` is already too large.
   It must also arrive whole within ``BODY_TIMEOUT_MS``, else 408 and the
   server closes the connection.
3. The body must be UTF-8 JSON without NaN or Infinity, with integers of at
   most 4,300 digits and nesting the parser can follow, else 400.
4. The JSON must match the request model (strict types: no strings, floats
   or booleans for integers), else 400 naming the field.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

import trio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import g, request
from werkzeug.exceptions import RequestTimeout
from werkzeug.http import parse_options_header

from engine import MAX_MILLISECONDS

from ._problems import Problem

MIN_FILE_ID = 10_000
MAX_FILE_ID = 100_000_000

FileId = Annotated[int, Field(ge=MIN_FILE_ID, le=MAX_FILE_ID)]

# How long a response that has no use for the request's body waits for that
# body (seconds). A later body is left unread, and the connection closes.
UNREAD_BODY_WAIT_SECONDS = 2.0
# Maximum length of a number that a problem's detail quotes whole; longer ones are cut.
MAX_SHOWN_DIGITS = 24
# Request-context flag (on ``g``): ``discard_body`` gave up on the body.
_BODY_LATE_KEY = "download_jobs_body_late"

ModelT = TypeVar("ModelT", bound=BaseModel)


class StartRequest(BaseModel):
    """Body of ``POST /v1/download/start``. Unknown members are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")

    file_id: FileId
    # Deadline from submission, queue time included; at most JOB_TIMEOUT_MS.
    timeout_ms: Annotated[int, Field(ge=1, le=MAX_MILLISECONDS)] | None = None


# The original service's limit on file ids per bulk request.
MAX_BULK_FILE_IDS = 1000


class InitiateRequest(BaseModel):
    """Body of ``POST /v1/download/initiate``. Unknown members are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")

    file_ids: Annotated[list[FileId], Field(min_length=1, max_length=MAX_BULK_FILE_IDS)]
    timeout_ms: Annotated[int, Field(ge=1, le=MAX_MILLISECONDS)] | None = None


class CheckRequest(BaseModel):
    """Body of ``POST /v1/download/check``. Unknown members are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")

    file_id: FileId


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _invalid_body(detail: str, *, code: str = "invalid_body", field: str | None = None) -> Problem:
    return Problem(400, code, "Invalid request body", detail, field=field)


def is_json_content_type(content_type: str) -> bool:
    """Return whether a ``Content-Type`` value declares a JSON body that the routes read.

    That is ``application/json`` or ``application/*+json``, in any case, with
    no charset or a UTF-8 one. Parsed as Quart parses the request's
    ``mimetype``, so an ASGI layer in front of Quart decides the same way.
    """
    mimetype, parameters = parse_options_header(content_type)
    mimetype = mimetype.lower()
    is_json = mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )
    return is_json and parameters.get("charset", "utf-8").lower() in ("utf-8", "utf8")


async def discard_body() -> bool:
    """Read the request's body and drop it; return False if it has not arrived in time.

    Waits at most ``UNREAD_BODY_WAIT_SECONDS``. After False the rest of the
    body is still on the connection, where it would be read as the next
    request, so the caller closes the connection after its response. Raises
    Quart's ``RequestEntityTooLarge`` (413) for a body over the size limit.
    A body already read returns True at once, and a body already found late
    returns False at once.
    """
    if g.get(_BODY_LATE_KEY, False):
        return False
    with trio.move_on_after(UNREAD_BODY_WAIT_SECONDS):
        try:
            await request.get_data(cache=False)
        except RequestTimeout:
            pass
        else:
            return True
    setattr(g, _BODY_LATE_KEY, True)
    return False


def body_timeout_problem(seconds: float) -> Problem:
    """Return the 408 problem of a body that did not arrive whole within ``seconds``.

    Its ``Connection: close`` ends the connection after the response: the
    rest of the body may still come, and it would be read as the next
    request.
    """
    return Problem(
        408,
        "body_timeout",
        "Request body timed out",
        f"the request body timed out after {seconds:g} seconds: send all of it within that time",
        headers={"Connection": "close"},
    )


def check_json_content_type() -> None:
    """Raise a 415 problem unless the request declares a JSON body."""
    declared = request.headers.get("Content-Type")
    if not is_json_content_type(declared or ""):
        raise Problem(
            415,
            "unsupported_media_type",
            "Unsupported media type",
            f"expected Content-Type: application/json, got {declared or 'no Content-Type'}",
            headers={"Accept-Post": "application/json"},
        )


async def read_json_body(model: type[ModelT], *, max_timeout_ms: int | None = None) -> ModelT:
    """Read, parse and validate the request body as ``model``; raise a ``Problem`` if invalid.

    See ``parse_json_body`` for ``max_timeout_ms``.
    """
    check_json_content_type()
    raw = await request.get_data(cache=False, as_text=False)
    assert isinstance(raw, bytes)
    return parse_json_body(raw, model, max_timeout_ms=max_timeout_ms)


def parse_json_body(
    raw: bytes, model: type[ModelT], *, max_timeout_ms: int | None = None
) -> ModelT:
    """Parse and validate a whole body as ``model``; raise a 400 ``Problem`` if invalid.

    Checks 3 and 4 of the module's list, without the request: the caller has
    checked the content type and the size. ``max_timeout_ms`` is the
    ``JOB_TIMEOUT_MS`` that the caller checks ``timeout_ms`` against (see
    ``timeout_range``), so that a value out of the schema's range gets the
    same message as one above the setting.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid_body("body is not valid UTF-8", code="invalid_json") from None
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise _invalid_body("body is nested too deeply", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise _invalid_body(f"body is not valid JSON: {exc}", code="invalid_json") from None
    except ValueError as exc:
        # NaN or Infinity (from _reject_constant), or an integer of more than
        # 4,300 digits, which Python refuses to convert.
        detail = (
            str(exc) if "not valid JSON" in str(exc) else "body contains a number too long to parse"
        )
        raise _invalid_body(detail, code="invalid_json") from None

    if not isinstance(document, dict):
        raise _invalid_body(f"body must be a JSON object, got {_json_type_name(document)}")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise _problem_from_validation(exc, max_timeout_ms) from None


def timeout_range(max_timeout_ms: int | None) -> str:
    """Return the range of ``timeout_ms`` as the problem documents state it."""
    if max_timeout_ms is None:
        return f"from 1 to {MAX_MILLISECONDS}"
    return f"from 1 to JOB_TIMEOUT_MS ({max_timeout_ms})"


def _shown_number(value: Any) -> str:
    """Return ``value`` as a problem's detail quotes it: whole up to 24 digits, else shortened."""
    text = str(value)
    if len(text) <= MAX_SHOWN_DIGITS:
        return text
    return f"{text[:MAX_SHOWN_DIGITS]}... ({len(text)} characters)"


def _problem_from_validation(error: ValidationError, max_timeout_ms: int | None) -> Problem:
    first = error.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    value = first.get("input")
    kind = first["type"]
    is_file_id = field is not None and field.split(".")[0] in ("file_id", "file_ids")
    if kind == "missing":
        detail = f"{field} is required"
    elif kind == "too_short":
        detail = f"{field} must contain at least one file id"
    elif kind == "too_long":
        detail = f"{field} may contain at most {MAX_BULK_FILE_IDS} file ids"
    elif kind == "list_type":
        detail = f"{field} must be an array of integers, got {_json_type_name(value)}"
    elif kind in ("greater_than_equal", "less_than_equal") and is_file_id:
        detail = f"{field} must be from {MIN_FILE_ID} to {MAX_FILE_ID}, got {_shown_number(value)}"
    elif kind in ("greater_than_equal", "less_than_equal"):
        detail = f"{field} must be {timeout_range(max_timeout_ms)}, got {_shown_number(value)}"
    elif kind.startswith("int_"):
        detail = f"{field} must be an integer, got {_json_type_name(value)}"
    else:
        detail = f"{field}: {first['msg']}"
    return _invalid_body(detail, field=field)
