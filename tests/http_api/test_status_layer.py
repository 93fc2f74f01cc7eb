"""Tests of which requests the status layer serves and holds, read straight from ASGI scopes.

What a held request returns, and when, is tested through the app in
test_polling.py and test_rate_limit.py, and over real sockets in
tests/e2e/test_longpoll_e2e.py. test_status_reads.py checks that the layer
and the status route respond alike.
"""

from __future__ import annotations

from typing import Any

import pytest

from http_api._status_layer import MAX_WAIT_SECONDS, StatusRead

JOB_ID = "3f2b8c1e-0d4a-4c6e-9b1a-2d5e7f8a9c0b"
STATUS_PATH = f"/v1/download/status/{JOB_ID}"
TAG = '"0123456789abcdef01234567"'


def scope(
    *,
    method: str = "GET",
    path: str = STATUS_PATH,
    query: bytes = b"wait=10",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Any:
    """Return the scope of an HTTP request; by default a long poll the layer holds."""
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": [(b"if-none-match", TAG.encode())] if headers is None else headers,
    }


HELD = StatusRead(JOB_ID, 10.0, (TAG,), has_body=False)


def test_long_poll_held():
    read = StatusRead.from_scope(scope())

    assert read == HELD
    assert read.is_long_poll


def test_head_held_and_job_id_lowercased():
    read = StatusRead.from_scope(scope(method="HEAD", path=f"/v1/download/status/{JOB_ID.upper()}"))
    assert read == HELD


def test_wait_capped_and_first_value_used():
    read = StatusRead.from_scope(scope(query=b"wait=3600&wait=5"))

    assert read is not None
    assert read.seconds == MAX_WAIT_SECONDS


def test_every_if_none_match_line_kept():
    headers = [(b"if-none-match", b'"first"'), (b"if-none-match", b'"second"')]

    read = StatusRead.from_scope(scope(headers=headers))

    assert read is not None
    assert read.if_none_match == ('"first"', '"second"')


def test_percent_encoded_wait_decoded():
    read = StatusRead.from_scope(scope(query=b"w%61it=%32.5"))

    assert read is not None
    assert read.seconds == 2.5


@pytest.mark.parametrize(
    ("request_scope", "expected"),
    [
        pytest.param(scope(headers=[]), StatusRead(JOB_ID, 10.0, (), False), id="no-if-none-match"),
        pytest.param(scope(query=b""), StatusRead(JOB_ID, 0.0, (TAG,), False), id="no-wait"),
        pytest.param(
            scope(query=b"wait=0"), StatusRead(JOB_ID, 0.0, (TAG,), False), id="zero-wait"
        ),
    ],
)
def test_answered_at_once(request_scope, expected):
    read = StatusRead.from_scope(request_scope)

    assert read == expected
    assert not read.is_long_poll


@pytest.mark.parametrize(
    "request_scope",
    [
        pytest.param(scope(query=b"wait=abc"), id="malformed-wait"),
        pytest.param(scope(query=b"wait=-1"), id="negative-wait"),
        pytest.param(scope(query=b"wait=3601"), id="wait-over-limit"),
        pytest.param(scope(query=b"wait=inf"), id="infinite-wait"),
        pytest.param(scope(method="POST"), id="post"),
        pytest.param(scope(method="DELETE"), id="delete"),
        pytest.param(scope(method="OPTIONS"), id="preflight"),
        pytest.param(scope(path=STATUS_PATH + "/"), id="trailing-slash"),
        pytest.param(scope(path="/v1/download/status/not-a-uuid"), id="malformed-job-id"),
        pytest.param(scope(path=f"/v1/download/{JOB_ID}"), id="result-route"),
        pytest.param(scope(query=b"wait=&wait=5"), id="empty-first-wait"),
        pytest.param(scope(query=b"wait&wait=5"), id="bare-first-wait"),
    ],
)
def test_passed_to_the_app(request_scope):
    # The app responds to each of these, with a problem or from another route.
    assert StatusRead.from_scope(request_scope) is None


def test_absolute_form_target_held():
    read = StatusRead.from_scope(scope(path=f"http://127.0.0.1:8000{STATUS_PATH}"))

    assert read == HELD


@pytest.mark.parametrize(
    "header",
    [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
    ids=["content-length", "chunked"],
)
def test_declared_body_noticed(header):
    read = StatusRead.from_scope(scope(headers=[(b"if-none-match", TAG.encode()), header]))

    assert read == StatusRead(JOB_ID, 10.0, (TAG,), has_body=True)
    assert read.is_long_poll


def test_empty_content_length_is_no_body():
    headers = [(b"if-none-match", TAG.encode()), (b"content-length", b"0")]

    assert StatusRead.from_scope(scope(headers=headers)) == HELD
