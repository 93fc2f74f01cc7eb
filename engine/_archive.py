"""Deterministic ZIP archives for the simulated source.

The same file id always gives the same bytes: the content comes from a PRNG
seeded with the file id, and every ZIP header field that could vary (member
time stamp, permissions) is fixed. Members are stored uncompressed because
pseudo-random content does not compress, so the archive is the content size
plus about 150 bytes of headers.

The archive is built on the trio thread in chunks of ``CHUNK_BYTES`` with a
checkpoint after each. A worker thread would not run it in parallel (the
PRNG holds the GIL), would make tests on a mock clock depend on real time,
and could only be cancelled between chunks anyway. Each chunk holds the event
loop for about a millisecond on a 2 GHz core (an estimate from
``random.randbytes`` at roughly 300 MiB/s), and only one chunk is in memory.

An archive whose content fits in one chunk is built in memory instead and
written with one call. Streaming it costs about 25 system calls: the ZIP
writer seeks back and forth to patch its headers, and the hash needs the
file read back. On a 2-core VM with an ext4 disk that took 0.78 ms of the
event loop per archive, against 0.07 ms on tmpfs, enough for a burst of
finishing jobs to delay everything else by hundreds of milliseconds.

Creating a file happens in a worker thread (``create_file``), and so does
writing an archive built in memory. Creating 2,000 files in a loop on that
disk took 0.04-0.6 ms of CPU time each, varying from one run to the
next. On the trio thread, 2,500 jobs finishing within a few seconds (in the
storm benchmark's engine harness) then made timeouts fire up to 1 s late.
"""

from __future__ import annotations

import hashlib
import io
import random
import zipfile
from pathlib import Path
from typing import BinaryIO

import trio

from ._snapshot import ResultInfo

MEDIA_TYPE = "application/zip"
CHUNK_BYTES = 256 * 1024
_FIXED_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # the earliest time a ZIP header can store


def content_size(file_id: int, minimum: int, maximum: int) -> int:
    """Return the content size for ``file_id``: fixed per id, within ``[minimum, maximum]``."""
    digest = hashlib.sha256(f"download-jobs size {file_id}".encode()).digest()
    return minimum + int.from_bytes(digest[:8], "big") % (maximum - minimum + 1)


def archive_name(file_id: int) -> str:
    return f"{file_id}.zip"


def _member_name(file_id: int) -> str:
    return f"{file_id}.bin"


def archive_size(file_id: int, size: int) -> int:
    """Return the exact size of the archive ``build_archive`` writes for ``size`` bytes of content.

    One stored member without ZIP64 records: a local header, the content, a
    central directory entry and the end record, with the member name in both
    headers. ``EngineSettings`` caps the content below the ZIP64 threshold.
    """
    name_length = len(_member_name(file_id).encode())
    local_header = 30 + name_length
    central_entry = 46 + name_length
    end_record = 22
    return local_header + size + central_entry + end_record


async def build_archive(file_id: int, size: int, destination: Path) -> ResultInfo:
    """Write the archive for ``file_id`` with ``size`` bytes of content to ``destination``.

    Cancellation: checkpoints after every chunk. A call cancelled before it
    creates the file creates none. Once a worker thread creates the file, or
    writes an archive built in memory, a cancel waits for the thread and
    takes effect at the next checkpoint. A cancelled call may leave a
    partial or complete file behind, which the caller deletes.
    """
    if size <= CHUNK_BYTES:
        data = _archive_in_memory(file_id, size)
        await trio.to_thread.run_sync(destination.write_bytes, data)
        return ResultInfo(
            size=len(data),
            media_type=MEDIA_TYPE,
            file_name=archive_name(file_id),
            sha256=hashlib.sha256(data).hexdigest(),
        )

    rng = random.Random(file_id)
    file = await create_file(destination)
    with file, zipfile.ZipFile(file, "w") as archive:
        with archive.open(_member(file_id, size), "w") as stream:
            remaining = size
            while remaining > 0:
                chunk = min(remaining, CHUNK_BYTES)
                stream.write(rng.randbytes(chunk))
                remaining -= chunk
                await trio.lowlevel.checkpoint()

    return await describe_archive(destination, archive_name(file_id))


async def create_file(path: Path) -> BinaryIO:
    """Create or truncate ``path`` in a worker thread; return it open for binary writing.

    A checkpoint. A call cancelled before the thread starts creates nothing.
    Once the thread runs, a cancel waits for it and the open file is
    returned, so that the caller closes it.
    """
    file: BinaryIO = await trio.to_thread.run_sync(path.open, "wb")
    return file


def _archive_in_memory(file_id: int, size: int) -> bytes:
    """Return the bytes that the streamed build writes for content of at most one chunk."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        with archive.open(_member(file_id, size), "w") as stream:
            stream.write(random.Random(file_id).randbytes(size))
    return buffer.getvalue()


def _member(file_id: int, size: int) -> zipfile.ZipInfo:
    """Return the header of the archive's one member, every varying field fixed."""
    member = zipfile.ZipInfo(_member_name(file_id), date_time=_FIXED_TIMESTAMP)
    member.external_attr = 0o644 << 16
    member.compress_type = zipfile.ZIP_STORED
    member.file_size = size
    return member


async def describe_archive(path: Path, file_name: str) -> ResultInfo:
    """Measure and hash a finished archive in chunks, with a checkpoint after each.

    The ZIP writer seeks back to patch member headers, so the digest is taken
    from the finished file rather than while writing.
    """
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as written:
        while block := written.read(CHUNK_BYTES):
            digest.update(block)
            size += len(block)
            await trio.lowlevel.checkpoint()
    return ResultInfo(
        size=size, media_type=MEDIA_TYPE, file_name=file_name, sha256=digest.hexdigest()
    )
