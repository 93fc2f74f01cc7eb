"""The access log escapes control characters that a request target decodes to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypercorn.config import Config

from http_api._server import _AccessLogger


def status_scope(path: str) -> Any:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1"),
        "query_string": b"",
        "headers": [(b"user-agent", b"test")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


@pytest.fixture
def logger(log_file: Path) -> Iterator[_AccessLogger]:
    config = Config()
    config.accesslog = str(log_file)
    access_logger = _AccessLogger(config)
    yield access_logger
    # Hypercorn installs the handler on the shared "hypercorn.access" logger.
    assert access_logger.access_logger is not None
    for handler in access_logger.access_logger.handlers:
        handler.close()
    access_logger.access_logger.handlers.clear()


async def test_decoded_line_break_escaped(logger, log_file):
    # What Hypercorn puts in the scope for /v1/download/status/x%0AFORGED%00
    await logger.access(status_scope("/v1/download/status/x\nFORGED\x00"), None, 0.01)
    written = log_file.read_text()

    assert written.count("\n") == 1
    assert "/v1/download/status/x\\x0aFORGED\\x00" in written
    assert "\x00" not in written


async def test_plain_path_unchanged(logger, log_file):
    await logger.access(status_scope("/v1/download/status/x"), None, 0.01)

    assert '"GET /v1/download/status/x 1.1"' in log_file.read_text()
