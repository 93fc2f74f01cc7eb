"""Tests of byte ranges and conditional requests on ``GET /v1/download/{jobId}``.

Each range's bytes are compared with the same slice of the whole file. The
requests pause the autojump clock while the app reads the file in worker
threads, as ``Api.fetch_result`` in conftest.py explains. Every app test takes
``autojump_clock`` itself, because pytest-trio passes to ``trio.run`` only a
clock among the test function's own arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from werkzeug.datastructures import Headers
from werkzeug.http import http_date

from http_api._results import (
    RESULT_CHUNK_BYTES,
    ByteRange,
    FileRangeBody,
    RangeSpec,
    parse_range,
    resolve_range,
)

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

FILE_ID = 70_000
PROBLEM_MEDIA_TYPE = "application/problem+json"
STALE_ETAG = '"' + "0" * 64 + '"'
# Far beyond the archives of these tests (at most 768 KiB).
BEYOND_ANY_FILE = 10**9
# More digits than Python's int() accepts by default (4300).
HUGE_POSITION = "9" * 5000


@contextmanager
def autojump_paused(clock: trio.testing.MockClock) -> Iterator[None]:
    """Stop the autojump clock from jumping while the app reads the file in worker threads."""
    threshold = clock.autojump_threshold
    clock.autojump_threshold = math.inf
    try:
        yield
    finally:
        clock.autojump_threshold = threshold


@dataclasses.dataclass
class FinishedResult:
    """A done job of the running app and the facts a range test checks against."""

    api: Any  # conftest.Api
    clock: trio.testing.MockClock
    job_id: str
    body: bytes  # the whole file, from a GET without Range
    sha256: str
    finished_at: datetime  # the status document's updatedAt, in whole seconds

    @property
    def size(self) -> int:
        return len(self.body)

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'

    @property
    def last_modified(self) -> str:
        return http_date(self.finished_at)

    async def request(self, headers: dict[str, str] | None = None, method: str = "GET") -> Any:
        with autojump_paused(self.clock):
            return await self.api.send_raw(method, f"/v1/download/{self.job_id}", headers=headers)


@pytest.fixture
async def finished(result_api, autojump_clock: trio.testing.MockClock) -> FinishedResult:
    """A done job; the whole file is read in one call, or streamed in chunks."""
    api = result_api
    job_id = await api.start(FILE_ID)
    status = await api.wait_until_finished(job_id)
    assert status["status"] == "done"
    whole = await api.fetch_result(job_id)
    assert whole.status == 200
    updated_at = datetime.fromisoformat(status["updatedAt"]).replace(microsecond=0)
    return FinishedResult(
        api=api,
        clock=autojump_clock,
        job_id=job_id,
        body=whole.body,
        sha256=status["result"]["sha256"],
        finished_at=updated_at,
    )


def assert_whole_file(response, result: FinishedResult) -> None:
    assert response.status == 200
    assert response.body == result.body
    assert response.headers["Content-Length"] == str(result.size)
    assert "Content-Range" not in response.headers


# --- the whole file ------------------------------------------------------------


async def test_whole_file_headers(autojump_clock, finished):
    response = await finished.request()

    assert response.status == 200
    assert response.headers["Content-Type"] == "application/zip"
    assert response.headers["Content-Length"] == str(finished.size)
    assert response.headers["Content-Disposition"] == f'attachment; filename="{FILE_ID}.zip"'
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"] == finished.etag
    assert response.headers["Last-Modified"] == finished.last_modified
    assert response.headers["Cache-Control"] == "private, no-store"
    assert "Content-Range" not in response.headers
    assert hashlib.sha256(response.body).hexdigest() == finished.sha256


async def test_head_same_headers_no_body(autojump_clock, finished):
    get = await finished.request()
    head = await finished.request(method="HEAD")

    assert head.status == 200
    assert head.body == b""
    for name in (
        "Content-Type",
        "Content-Length",
        "Content-Disposition",
        "Accept-Ranges",
        "ETag",
        "Last-Modified",
        "Cache-Control",
    ):
        assert head.headers[name] == get.headers[name], name


async def test_head_ignores_range(autojump_clock, finished):
    response = await finished.request({"Range": "bytes=0-9"}, method="HEAD")

    assert response.status == 200
    assert response.headers["Content-Length"] == str(finished.size)
    assert "Content-Range" not in response.headers
    assert response.body == b""


# --- satisfiable ranges: 206 -----------------------------------------------------

# (Range header for a file of `size` bytes, the (start, end) it selects, end inclusive).
SATISFIABLE_RANGES: list[tuple[str, Callable[[int], str], Callable[[int], tuple[int, int]]]] = [
    ("first bytes", lambda size: "bytes=0-99", lambda size: (0, 99)),
    ("middle", lambda size: "bytes=100-199", lambda size: (100, 199)),
    ("one byte", lambda size: "bytes=10-10", lambda size: (10, 10)),
    ("open end", lambda size: "bytes=100-", lambda size: (100, size - 1)),
    ("from zero", lambda size: "bytes=0-", lambda size: (0, size - 1)),
    ("last byte", lambda size: f"bytes={size - 1}-", lambda size: (size - 1, size - 1)),
    ("suffix", lambda size: "bytes=-100", lambda size: (size - 100, size - 1)),
    ("suffix of all", lambda size: f"bytes=-{size}", lambda size: (0, size - 1)),
    ("end clamped", lambda size: "bytes=50-999999999", lambda size: (50, size - 1)),
    ("end at size", lambda size: f"bytes=5-{size}", lambda size: (5, size - 1)),
    ("suffix clamped", lambda size: "bytes=-999999999", lambda size: (0, size - 1)),
    ("huge end", lambda size: f"bytes=7-{HUGE_POSITION}", lambda size: (7, size - 1)),
    ("huge suffix", lambda size: f"bytes=-{HUGE_POSITION}", lambda size: (0, size - 1)),
    ("unit uppercase", lambda size: "BYTES=0-9", lambda size: (0, 9)),
    ("leading zeros", lambda size: "bytes=0010-0019", lambda size: (10, 19)),
    ("empty list element", lambda size: "bytes=0-9, ", lambda size: (0, 9)),
]


@pytest.mark.parametrize(
    ("header", "expected"),
    [pytest.param(header, expected, id=name) for name, header, expected in SATISFIABLE_RANGES],
)
async def test_range_partial_content(autojump_clock, finished, header, expected):
    range_header = header(finished.size)
    start, end = expected(finished.size)

    response = await finished.request({"Range": range_header})

    assert response.status == 206, range_header
    assert response.body == finished.body[start : end + 1]
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/{finished.size}"
    assert response.headers["Content-Length"] == str(end - start + 1)
    assert response.headers["Content-Type"] == "application/zip"
    assert response.headers["ETag"] == finished.etag
    assert response.headers["Last-Modified"] == finished.last_modified
    assert response.headers["Cache-Control"] == "private, no-store"
    assert response.headers["Accept-Ranges"] == "bytes"


async def test_range_parts_rebuild_file(autojump_clock, finished):
    split = finished.size // 3

    first = await finished.request({"Range": f"bytes=0-{split - 1}"})
    rest = await finished.request({"Range": f"bytes={split}-"})

    assert first.status == 206
    assert rest.status == 206
    assert hashlib.sha256(first.body + rest.body).hexdigest() == finished.sha256


# --- unsatisfiable ranges: 416 ---------------------------------------------------

UNSATISFIABLE_RANGES: list[tuple[str, Callable[[int], str]]] = [
    ("start at size", lambda size: f"bytes={size}-"),
    ("start past size", lambda size: f"bytes={size + 10}-{size + 20}"),
    ("empty suffix", lambda size: "bytes=-0"),
    ("huge start", lambda size: f"bytes={HUGE_POSITION}-"),
]


@pytest.mark.parametrize(
    "header", [pytest.param(header, id=name) for name, header in UNSATISFIABLE_RANGES]
)
async def test_range_not_satisfiable(autojump_clock, finished, header):
    range_header = header(finished.size)

    response = await finished.request({"Range": range_header})
    problem = response.json()

    assert response.status == 416, range_header
    assert response.headers["Content-Range"] == f"bytes */{finished.size}"
    assert response.media_type == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "range_not_satisfiable"
    assert problem["status"] == 416


# --- ignored Range headers: 200 with the whole file ------------------------------

IGNORED_RANGES = [
    pytest.param("items=0-9", id="other unit"),
    pytest.param("bytes=0-9,20-29", id="two ranges"),
    pytest.param("bytes=0-9, 0-9", id="same range twice"),
    pytest.param("bytes=9-0", id="last below first"),
    pytest.param("bytes=abc", id="not a range"),
    pytest.param("bytes=", id="empty range set"),
    pytest.param("bytes=-", id="dash only"),
    pytest.param("bytes=1-2-3", id="two dashes"),
    pytest.param("bytes=+1-2", id="plus sign"),
    pytest.param("bytes=0x10-", id="hex"),
    pytest.param("bytes=1 -2", id="space inside"),
    pytest.param("bytes =0-9", id="space before equals"),
    pytest.param("0-9", id="no unit"),
    pytest.param("bytes=\u0661-", id="non-ascii digit"),
]


@pytest.mark.parametrize("header", IGNORED_RANGES)
async def test_range_ignored_sends_whole_file(autojump_clock, finished, header):
    response = await finished.request({"Range": header})

    assert_whole_file(response, finished)


# --- If-Range --------------------------------------------------------------------


async def test_two_range_lines_send_whole_file(autojump_clock, finished):
    with autojump_paused(finished.clock):
        response = await finished.api.send_raw(
            "GET",
            f"/v1/download/{finished.job_id}",
            headers=Headers([("Range", "bytes=0-9"), ("Range", "bytes=20-29")]),
        )

    assert_whole_file(response, finished)


async def test_if_range_current_etag_applies(autojump_clock, finished):
    response = await finished.request({"Range": "bytes=10-19", "If-Range": finished.etag})

    assert response.status == 206
    assert response.body == finished.body[10:20]


async def test_if_range_stale_etag_whole_file(autojump_clock, finished):
    response = await finished.request({"Range": "bytes=10-19", "If-Range": STALE_ETAG})

    assert_whole_file(response, finished)


async def test_if_range_weak_etag_whole_file(autojump_clock, finished):
    response = await finished.request({"Range": "bytes=10-19", "If-Range": f"W/{finished.etag}"})

    assert_whole_file(response, finished)


async def test_if_range_current_date_applies(autojump_clock, finished):
    response = await finished.request({"Range": "bytes=10-19", "If-Range": finished.last_modified})

    assert response.status == 206
    assert response.body == finished.body[10:20]


@pytest.mark.parametrize("offset_seconds", [-1, 1])
async def test_if_range_other_date_whole_file(autojump_clock, finished, offset_seconds):
    other_date = http_date(finished.finished_at + timedelta(seconds=offset_seconds))

    response = await finished.request({"Range": "bytes=10-19", "If-Range": other_date})

    assert_whole_file(response, finished)


async def test_if_range_invalid_whole_file(autojump_clock, finished):
    response = await finished.request({"Range": "bytes=10-19", "If-Range": "yesterday"})

    assert_whole_file(response, finished)


async def test_if_range_stale_skips_416(autojump_clock, finished):
    response = await finished.request({"Range": f"bytes={finished.size}-", "If-Range": STALE_ETAG})

    assert_whole_file(response, finished)


async def test_if_range_without_range_ignored(autojump_clock, finished):
    response = await finished.request({"If-Range": STALE_ETAG})

    assert_whole_file(response, finished)


# --- If-None-Match and If-Modified-Since: 304 ------------------------------------


@pytest.mark.parametrize(
    "validator",
    [
        pytest.param(lambda etag: etag, id="current"),
        pytest.param(lambda etag: f"W/{etag}", id="weak"),
        pytest.param(lambda etag: "*", id="star"),
        pytest.param(lambda etag: f"{STALE_ETAG}, {etag}", id="in list"),
    ],
)
async def test_if_none_match_current_304(autojump_clock, finished, validator):
    response = await finished.request({"If-None-Match": validator(finished.etag)})

    assert response.status == 304
    assert response.body == b""
    assert response.headers["ETag"] == finished.etag
    assert response.headers["Cache-Control"] == "private, no-store"
    assert "Content-Length" not in response.headers


async def test_if_none_match_head_304(autojump_clock, finished):
    response = await finished.request({"If-None-Match": finished.etag}, method="HEAD")

    assert response.status == 304
    assert response.body == b""


async def test_if_none_match_stale_whole_file(autojump_clock, finished):
    response = await finished.request({"If-None-Match": STALE_ETAG})

    assert_whole_file(response, finished)


async def test_if_none_match_beats_range(autojump_clock, finished):
    response = await finished.request({"If-None-Match": finished.etag, "Range": "bytes=0-9"})

    assert response.status == 304
    assert "Content-Range" not in response.headers


async def test_if_none_match_stale_range_applies(autojump_clock, finished):
    response = await finished.request({"If-None-Match": STALE_ETAG, "Range": "bytes=0-9"})

    assert response.status == 206
    assert response.body == finished.body[:10]


async def test_if_modified_since_current_304(autojump_clock, finished):
    response = await finished.request({"If-Modified-Since": finished.last_modified})

    assert response.status == 304
    assert response.body == b""


async def test_if_modified_since_earlier_whole_file(autojump_clock, finished):
    earlier = http_date(finished.finished_at - timedelta(seconds=1))

    response = await finished.request({"If-Modified-Since": earlier})

    assert_whole_file(response, finished)


async def test_if_none_match_overrides_modified_since(autojump_clock, finished):
    response = await finished.request(
        {"If-None-Match": STALE_ETAG, "If-Modified-Since": finished.last_modified}
    )

    assert_whole_file(response, finished)


# --- If-Match and If-Unmodified-Since: 412 ---------------------------------------


async def test_if_match_current_whole_file(autojump_clock, finished):
    response = await finished.request({"If-Match": finished.etag})

    assert_whole_file(response, finished)


async def test_if_match_current_range_applies(autojump_clock, finished):
    response = await finished.request({"If-Match": finished.etag, "Range": "bytes=5-9"})

    assert response.status == 206
    assert response.body == finished.body[5:10]


@pytest.mark.parametrize(
    "validator",
    [
        pytest.param(lambda etag: STALE_ETAG, id="stale"),
        pytest.param(lambda etag: f"W/{etag}", id="weak"),
    ],
)
async def test_if_match_fails_412(autojump_clock, finished, validator):
    response = await finished.request({"If-Match": validator(finished.etag), "Range": "bytes=0-9"})
    problem = response.json()

    assert response.status == 412
    assert response.media_type == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "precondition_failed"


async def test_if_unmodified_since_earlier_412(autojump_clock, finished):
    earlier = http_date(finished.finished_at - timedelta(seconds=1))

    response = await finished.request({"If-Unmodified-Since": earlier})

    assert response.status == 412
    assert response.json()["code"] == "precondition_failed"


async def test_if_unmodified_since_current_whole_file(autojump_clock, finished):
    response = await finished.request({"If-Unmodified-Since": finished.last_modified})

    assert_whole_file(response, finished)


# --- jobs without a result: the same responses as without Range --------------------


async def test_range_processing_is_409(autojump_clock, api):
    job_id = await api.start(FILE_ID)

    with autojump_paused(autojump_clock):
        response = await api.send_raw(
            "GET", f"/v1/download/{job_id}", headers={"Range": "bytes=0-9"}
        )
    problem = response.json()

    assert response.status == 409
    assert problem["code"] == "result_not_ready"
    assert problem["job"]["status"] == "processing"
    assert response.headers["Retry-After"] == "2"
    assert "Content-Range" not in response.headers


async def test_conditional_processing_is_409(autojump_clock, api):
    job_id = await api.start(FILE_ID)

    with autojump_paused(autojump_clock):
        response = await api.send_raw(
            "GET",
            f"/v1/download/{job_id}",
            headers={"If-None-Match": "*", "Range": "bytes=-0"},
        )

    assert response.status == 409
    assert response.json()["code"] == "result_not_ready"


async def test_range_queued_is_409(autojump_clock, single_slot_api):
    await single_slot_api.start(FILE_ID)
    queued_id = await single_slot_api.start(FILE_ID + 1)

    with autojump_paused(autojump_clock):
        response = await single_slot_api.send_raw(
            "GET", f"/v1/download/{queued_id}", headers={"Range": "bytes=0-9"}
        )

    assert response.status == 409
    assert response.json()["job"]["status"] == "queued"


async def test_range_cancelled_is_410(autojump_clock, api):
    job_id = await api.start(FILE_ID)
    cancel = await api.client.delete(f"/v1/download/{job_id}")
    assert cancel.status_code == 200

    with autojump_paused(autojump_clock):
        response = await api.send_raw(
            "GET", f"/v1/download/{job_id}", headers={"Range": "bytes=0-9"}
        )
    problem = response.json()

    assert response.status == 410
    assert problem["code"] == "result_unavailable"
    assert problem["job"]["status"] == "cancelled"


async def test_range_failed_is_410(autojump_clock, sevens_api):
    missing_file_id = 70_001  # not divisible by 7
    job_id = await sevens_api.start(missing_file_id)
    status = await sevens_api.wait_until_finished(job_id)

    with autojump_paused(autojump_clock):
        response = await sevens_api.send_raw(
            "GET", f"/v1/download/{job_id}", headers={"Range": "bytes=0-9"}
        )

    assert status["status"] == "failed"
    assert response.status == 410
    assert response.json()["job"]["status"] == "failed"


async def test_range_removed_file_is_410(autojump_clock, finished, tmp_path):
    archives = list(tmp_path.glob("*.zip"))
    assert len(archives) == 1
    archives[0].unlink()

    response = await finished.request({"Range": "bytes=0-9"})

    assert response.status == 410
    assert response.json()["code"] == "result_unavailable"


async def test_result_worker_thread_calls(autojump_clock, finished, monkeypatch):
    calls = []
    run_sync = trio.to_thread.run_sync

    async def counting(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(function, "__name__", repr(function)))
        return await run_sync(function, *args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    response = await finished.request()

    assert_whole_file(response, finished)
    if finished.size <= RESULT_CHUNK_BYTES:
        assert calls == ["_read_stored"]
    else:
        # Open, one read per chunk, close.
        chunks = -(-finished.size // RESULT_CHUNK_BYTES)
        assert len(calls) == 2 + chunks


def stored_archive(tmp_path: Path) -> Path:
    (archive,) = tmp_path.glob("*.zip")
    return archive


async def test_file_longer_than_recorded_is_410(autojump_clock, finished, tmp_path, caplog):
    with stored_archive(tmp_path).open("ab") as archive:
        archive.write(b"appended")

    response = await finished.request()

    assert response.status == 410
    assert response.json()["code"] == "result_unavailable"
    assert "damaged" in response.json()["detail"]
    assert f"result file of job {finished.job_id} is damaged" in caplog.text


async def test_truncated_file_is_410(autojump_clock, finished, tmp_path):
    archive = stored_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[:-10])

    response = await finished.request({"Range": "bytes=0-9"})

    assert response.status == 410
    assert response.json()["code"] == "result_unavailable"


async def test_named_pipe_in_place_of_file_is_410(autojump_clock, finished, tmp_path):
    archive = stored_archive(tmp_path)
    archive.unlink()
    os.mkfifo(archive)

    stop = threading.Event()

    def release_readers() -> None:
        # An open for reading waits for a writer. Opening for writing every
        # second ends such waits, so a server that waits fails the test
        # instead of hanging it.
        while not stop.wait(1.0):
            with contextlib.suppress(OSError):
                os.close(os.open(archive, os.O_WRONLY | os.O_NONBLOCK))

    releaser = threading.Thread(target=release_readers)
    releaser.start()
    try:
        response = await finished.request()
    finally:
        stop.set()
        releaser.join()

    assert response.status == 410
    assert response.json()["code"] == "result_unavailable"


async def test_directory_in_place_of_file_is_410(autojump_clock, finished, tmp_path):
    archive = stored_archive(tmp_path)
    archive.unlink()
    archive.mkdir()

    response = await finished.request()

    assert response.status == 410
    assert response.json()["code"] == "result_unavailable"


@pytest.mark.parametrize("header", ["If-Modified-Since", "If-Unmodified-Since", "If-Range"])
async def test_date_with_huge_year_ignored(autojump_clock, finished, header):
    headers = {header: "Sun, 06 Nov 2147483648 08:49:37 GMT"}
    if header == "If-Range":
        headers["Range"] = "bytes=0-9"

    response = await finished.request(headers)

    assert_whole_file(response, finished)


async def test_range_unknown_job_is_404(autojump_clock, api):
    with autojump_paused(autojump_clock):
        response = await api.send_raw(
            "GET", f"/v1/download/{uuid.uuid4()}", headers={"Range": "bytes=0-9"}
        )

    assert response.status == 404
    assert response.json()["code"] == "job_not_found"


# --- the Range parser and the streamed body, without the app ---------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", RangeSpec(0, 9)),
        ("bytes=5-", RangeSpec(5, None)),
        ("bytes=-7", RangeSpec(None, 7)),
        ("bytes=-0", RangeSpec(None, 0)),
        ("Bytes=3-3", RangeSpec(3, 3)),
        ("bytes=,4-8,", RangeSpec(4, 8)),
        (f"bytes={HUGE_POSITION}-", RangeSpec(10**18, None)),
        ("bytes=0-9,10-19", None),
        ("bytes=9-0", None),
        ("bytes=", None),
        ("bytes", None),
        ("", None),
    ],
)
def test_parse_range(header, expected):
    assert parse_range(header) == expected


@pytest.mark.parametrize(
    ("spec", "size", "expected"),
    [
        (RangeSpec(0, 9), 100, ByteRange(0, 9)),
        (RangeSpec(90, 200), 100, ByteRange(90, 99)),
        (RangeSpec(99, None), 100, ByteRange(99, 99)),
        (RangeSpec(100, None), 100, None),
        (RangeSpec(None, 10), 100, ByteRange(90, 99)),
        (RangeSpec(None, 500), 100, ByteRange(0, 99)),
        (RangeSpec(None, 0), 100, None),
        (RangeSpec(0, None), 0, None),
    ],
)
def test_resolve_range(spec, size, expected):
    assert resolve_range(spec, size) == expected


class RecordingFile:
    """A trio file that records the calls the body makes on it."""

    def __init__(self, file: trio.abc.AsyncResource) -> None:
        self._file = file
        self.calls: list[tuple[str, int]] = []
        self.closed = False

    async def seek(self, offset: int, /) -> int:
        self.calls.append(("seek", offset))
        return await self._file.seek(offset)  # type: ignore[attr-defined, no-any-return]

    async def read(self, size: int, /) -> bytes:
        self.calls.append(("read", size))
        return await self._file.read(size)  # type: ignore[attr-defined, no-any-return]

    async def aclose(self) -> None:
        self.closed = True
        await self._file.aclose()


async def test_body_seeks_reads_only_range(tmp_path: Path):
    content = bytes(range(256)) * 4800  # 1,228,800 bytes: several chunks
    path = tmp_path / "result.zip"
    path.write_bytes(content)
    start, length = 70_000, 600_000
    file = RecordingFile(await trio.open_file(path, "rb"))

    chunks = []
    async with FileRangeBody(file, start, length, "job") as body:
        async for chunk in body:
            chunks.append(chunk)

    assert b"".join(chunks) == content[start : start + length]
    assert file.calls[0] == ("seek", start)
    reads = [size for name, size in file.calls[1:] if name == "read"]
    assert all(size <= RESULT_CHUNK_BYTES for size in reads)
    assert sum(reads) == length
    assert all(0 < len(chunk) <= RESULT_CHUNK_BYTES for chunk in chunks)
    assert file.closed


async def test_body_from_first_byte_never_seeks(tmp_path: Path):
    content = bytes(range(256)) * 2400  # 614,400 bytes: three chunks
    path = tmp_path / "result.zip"
    path.write_bytes(content)
    file = RecordingFile(await trio.open_file(path, "rb"))

    chunks = []
    async with FileRangeBody(file, 0, len(content), "job") as body:
        async for chunk in body:
            chunks.append(chunk)

    assert b"".join(chunks) == content
    assert [name for name, _ in file.calls] == ["read"] * 3
    assert file.closed


async def test_body_closes_file_unread(tmp_path: Path):
    path = tmp_path / "result.zip"
    path.write_bytes(b"x" * 100)
    file = RecordingFile(await trio.open_file(path, "rb"))

    async with FileRangeBody(file, 0, 100, "job"):
        pass

    assert file.closed
