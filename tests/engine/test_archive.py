"""Tests of ``engine._archive``: deterministic ZIP archives."""

from __future__ import annotations

import hashlib
import threading
import zipfile
from pathlib import Path

import pytest
import trio

import engine._archive
from engine import archive_size, build_archive, content_size

pytestmark = pytest.mark.deadline(60)


def test_content_size_within_range():
    sizes = [content_size(file_id, 1000, 5000) for file_id in range(500)]

    assert min(sizes) >= 1000
    assert max(sizes) <= 5000


def test_content_size_fixed_per_id():
    first = [content_size(file_id, 1000, 5000) for file_id in range(100)]
    second = [content_size(file_id, 1000, 5000) for file_id in range(100)]

    assert first == second


def test_content_size_varies_between_ids():
    sizes = {content_size(file_id, 0, 1 << 20) for file_id in range(100)}

    assert len(sizes) > 90


def test_content_size_equal_bounds():
    assert content_size(12, 2048, 2048) == 2048


def test_content_size_zero_range():
    assert content_size(12, 0, 0) == 0


async def test_build_archive_same_id_same_bytes(autojump_clock, tmp_path):
    first = await build_archive(70_000, 5000, tmp_path / "first.zip")
    second = await build_archive(70_000, 5000, tmp_path / "second.zip")
    first_bytes = (tmp_path / "first.zip").read_bytes()

    assert first_bytes == (tmp_path / "second.zip").read_bytes()
    assert first == second
    assert first.sha256 == hashlib.sha256(first_bytes).hexdigest()


async def test_build_archive_other_id_other_bytes(autojump_clock, tmp_path):
    first = await build_archive(1, 5000, tmp_path / "first.zip")
    second = await build_archive(2, 5000, tmp_path / "second.zip")

    assert first.sha256 != second.sha256


async def test_build_archive_is_valid_zip(autojump_clock, tmp_path):
    path = tmp_path / "result.zip"
    info = await build_archive(70_000, 6000, path)

    assert info.file_name == "70000.zip"
    assert info.media_type == "application/zip"
    assert info.size == path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        (member,) = archive.infolist()
        content = archive.read(member)
    assert member.filename == "70000.bin"
    assert member.compress_type == zipfile.ZIP_STORED
    assert member.date_time == (1980, 1, 1, 0, 0, 0)
    assert member.file_size == 6000
    assert len(content) == 6000


@pytest.mark.parametrize("size", [0, 1, 4096, 64 * 1024])
async def test_archive_size_matches_file(autojump_clock, tmp_path, size):
    path = tmp_path / "result.zip"
    info = await build_archive(123_456, size, path)

    assert archive_size(123_456, size) == path.stat().st_size
    assert info.size == path.stat().st_size


async def test_build_archive_empty_content(autojump_clock, tmp_path):
    path = tmp_path / "empty.zip"
    await build_archive(5, 0, path)

    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert archive.read("5.bin") == b""


async def test_build_archive_in_many_chunks(autojump_clock, tmp_path, monkeypatch):
    monkeypatch.setattr(engine._archive, "CHUNK_BYTES", 1000)
    path = tmp_path / "chunked.zip"
    info = await build_archive(9, 64 * 1024 + 3, path)

    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.size == archive_size(9, 64 * 1024 + 3)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None


@pytest.mark.parametrize("size", [0, 5000, 256 * 1024])
async def test_in_memory_archive_equals_streamed(autojump_clock, tmp_path, monkeypatch, size):
    in_memory = await build_archive(31, size, tmp_path / "in-memory.zip")
    monkeypatch.setattr(engine._archive, "CHUNK_BYTES", 1000)
    streamed = await build_archive(31, size, tmp_path / "streamed.zip")

    assert (tmp_path / "in-memory.zip").read_bytes() == (tmp_path / "streamed.zip").read_bytes()
    assert in_memory == streamed


@pytest.mark.parametrize("size", [100, 300 * 1024], ids=["in-memory", "streamed"])
async def test_build_archive_cancelled_before_writes_nothing(autojump_clock, tmp_path, size):
    path = tmp_path / "never.zip"
    with trio.CancelScope() as scope:
        scope.cancel()
        await build_archive(9, size, path)

    assert scope.cancelled_caught
    assert not path.exists()


async def test_build_archive_writes_in_worker_thread(autojump_clock, tmp_path, monkeypatch):
    threads: list[threading.Thread] = []
    write_bytes = Path.write_bytes

    def recording_write(self: Path, data: bytes) -> int:
        threads.append(threading.current_thread())
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", recording_write)
    await build_archive(9, 100, tmp_path / "small.zip")

    assert len(threads) == 1
    assert threads[0] is not threading.main_thread()


async def test_build_archive_cancelled_leaves_partial_file(autojump_clock, tmp_path, monkeypatch):
    monkeypatch.setattr(engine._archive, "CHUNK_BYTES", 1000)
    path = tmp_path / "partial.zip"
    size = 64 * 1000
    async with trio.open_nursery() as nursery:
        nursery.start_soon(build_archive, 9, size, path)
        # Both tasks take one step per scheduler pass, so after ten passes
        # the builder has written about ten of its 64 chunks.
        for _ in range(10):
            await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()

    assert nursery.cancel_scope.cancelled_caught
    assert path.exists()
    assert path.stat().st_size < archive_size(9, size)
