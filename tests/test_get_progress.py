"""The text that ``download-jobs get`` shows after its progress bar."""

from __future__ import annotations

from download_jobs._get import progress_label


def test_label_is_status():
    assert progress_label({"status": "processing", "attempt": 1}) == "processing"


def test_label_names_failed_attempt():
    status = {"status": "processing", "attempt": 2, "retryAt": "2026-12-05T17:50:01.000Z"}

    assert progress_label(status) == "attempt 2 failed, retrying"
