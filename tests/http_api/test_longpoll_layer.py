"""Tests of which requests the long-poll layer holds, read straight from ASGI scopes.

What a held request returns, and when, is tested through the app in
test_polling.py and test_rate_limit.py, and over real sockets in
tests/e2e/test_longpoll_e2e.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from http_api._longpoll import MAX_WAIT_SECONDS, LongPoll

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


def test_long_poll_held():
    poll = LongPoll.from_scope(scope())

    assert poll == LongPoll(JOB_ID, 10.0, TAG)


def test_head_held_and_job_id_lowercased():
    poll = LongPoll.from_scope(scope(method="HEAD", path=f"/v1/download/status/{JOB_ID.upper()}"))
    assert poll == LongPoll(JOB_ID, 10.0, TAG)


def test_wait_capped_and_first_value_used():
    poll = LongPoll.from_scope(scope(query=b"wait=3600&wait=5"))

    assert poll is not None
    assert poll.seconds == MAX_WAIT_SECONDS


def test_if_none_match_lines_joined():
    headers = [(b"if-none-match", b'"first"'), (b"if-none-match", b'"second"')]

    poll = LongPoll.from_scope(scope(headers=headers))

    assert poll is not None
    assert poll.if_none_match == '"first", "second"'


def test_percent_encoded_wait_decoded():
    poll = LongPoll.from_scope(scope(query=b"w%61it=%32.5"))

    assert poll is not None
    assert poll.seconds == 2.5


@pytest.mark.parametrize(
    "request_scope",
    [
        pytest.param(scope(headers=[]), id="no-if-none-match"),
        pytest.param(scope(query=b""), id="no-wait"),
        pytest.param(scope(query=b"wait=0"), id="zero-wait"),
        pytest.param(scope(query=b"wait=abc"), id="malformed-wait"),
        pytest.param(scope(query=b"wait=-1"), id="negative-wait"),
        pytest.param(scope(query=b"wait=3601"), id="wait-over-limit"),
        pytest.param(scope(query=b"wait=inf"), id="infinite-wait"),
        pytest.param(scope(method="POST"), id="post"),
        pytest.param(scope(method="DELETE"), id="delete"),
        pytest.param(scope(path=STATUS_PATH + "/"), id="trailing-slash"),
        pytest.param(scope(path="/v1/download/status/not-a-uuid"), id="malformed-job-id"),
        pytest.param(scope(path=f"/v1/download/{JOB_ID}"), id="result-route"),
        pytest.param(scope(query=b"wait=&wait=5"), id="empty-first-wait"),
        pytest.param(scope(query=b"wait&wait=5"), id="bare-first-wait"),
    ],
)
def test_passed_through_unheld(request_scope):
    # The route responds to each of these at once, with a document, 304 or a problem.
    assert LongPoll.from_scope(request_scope) is None


def test_absolute_form_target_held():
    poll = LongPoll.from_scope(scope(path=f"http://127.0.0.1:8000{STATUS_PATH}"))

    assert poll == LongPoll(JOB_ID, 10.0, TAG)


def test_request_with_body_held():
    headers = [(b"if-none-match", TAG.encode()), (b"content-length", b"5")]

    assert LongPoll.from_scope(scope(headers=headers)) == LongPoll(JOB_ID, 10.0, TAG)
