"""``download-jobs get``: the polling client, as a script would write it.

It starts a job, polls its status as often as the server's ``Retry-After``
asks, shows progress on one line, downloads the file to a temporary name,
checks its SHA-256 against the status document, and only then renames it.
Every failure ends with one line on stderr and exit status 1.

An output path that is a symbolic link is written through: the file it
names gets the download, and the link stays. An output that exists and is
no regular file, such as ``/dev/null`` or a named pipe, is written in
place, because a rename would replace the device or pipe itself. Its bytes
are checked as they pass, so a mismatch is reported after they are written.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

DEFAULT_SERVER = "http://127.0.0.1:8000"
DEFAULT_POLL_SECONDS = 2.0
# The server's hint is trusted within these bounds (seconds).
MIN_POLL_SECONDS = 0.2
MAX_POLL_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 30.0
DOWNLOAD_CHUNK_BYTES = 64 * 1024
# Characters of the output's name that its temporary file's name repeats, so
# that a long name still leaves room for the random part (most file systems
# allow 255 bytes).
MAX_TEMPORARY_PREFIX = 100


class GetError(Exception):
    """A failure that ends ``download-jobs get`` with a one-line reason."""


def run_get(file_id: str, *, server: str, output: str | None, quiet: bool = False) -> int:
    """Download ``file_id`` through the service at ``server``; return the exit status."""
    try:
        path = _get(file_id, server.rstrip("/"), output, quiet)
    except GetError as exc:
        print(f"download-jobs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("download-jobs: interrupted", file=sys.stderr)
        return 130
    if not quiet:
        print(path, file=sys.stderr)
    return 0


def _check_output(output: str | None) -> None:
    """Raise ``GetError`` now if ``-o`` cannot be written, before a long job runs."""
    if output is None:
        return
    if not output:
        raise GetError("output path is empty; give a file path")
    target = Path(os.path.realpath(output))
    try:
        if target.is_dir():
            raise GetError(f"output {output} is a folder; give a file path")
        folder = target.parent
        if not folder.is_dir():
            raise GetError(f"output folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise GetError(f"output folder {folder} is not writable")
    except OSError as exc:
        # A name that the file system cannot hold, such as one too long.
        raise GetError(f"cannot write {output}: {exc.strerror}") from None


def _get(file_id: str, server: str, output: str | None, quiet: bool) -> Path:
    _check_output(output)
    # Identifies the start, so that a start interrupted before its response
    # can be found again and cancelled.
    key = str(uuid.uuid4())
    try:
        with httpx.Client(base_url=server, timeout=REQUEST_TIMEOUT_SECONDS) as client:
            try:
                job = _start(client, file_id, key)
            except KeyboardInterrupt:
                _cancel_interrupted_start(client, file_id, key)
                raise
            try:
                status = _wait_until_finished(client, job, quiet)
                return _download(client, job, status, output)
            except KeyboardInterrupt:
                # The user gave up: free the server's slot instead of leaving the job running.
                _cancel_quietly(client, job["jobId"])
                raise
    except httpx.TransportError as exc:
        raise GetError(f"cannot reach {server}: {exc}") from None
    except httpx.InvalidURL as exc:
        raise GetError(f"invalid server URL {server}: {exc}") from None


def _post_start(client: httpx.Client, file_id: str, key: str, **options: Any) -> httpx.Response:
    try:
        number: int | str = int(file_id)
    except ValueError:
        number = file_id  # let the server say what is wrong with it
    return client.post(
        "/v1/download/start",
        json={"file_id": number},
        headers={"Idempotency-Key": key},
        **options,
    )


def _start(client: httpx.Client, file_id: str, key: str) -> dict[str, Any]:
    response = _post_start(client, file_id, key)
    if response.status_code != 202:
        raise GetError(f"start failed: {_describe_error(response)}")
    return _read_document(response, "start", ("jobId", "statusUrl", "resultUrl"))


def _read_document(
    response: httpx.Response, what: str, required: tuple[str, ...]
) -> dict[str, Any]:
    """Parse a JSON object with the ``required`` members, or raise ``GetError``."""
    try:
        document = response.json()
    except ValueError:
        raise GetError(f"{what} response is not JSON (HTTP {response.status_code})") from None
    if not isinstance(document, dict):
        raise GetError(f"{what} response is not a JSON object")
    missing = [name for name in required if name not in document]
    if missing:
        raise GetError(f"{what} response lacks {', '.join(missing)}")
    return document


def _wait_until_finished(client: httpx.Client, job: dict[str, Any], quiet: bool) -> dict[str, Any]:
    job_id = job["jobId"]
    # disable=None lets tqdm hide the bar when stderr is not a terminal.
    disable = True if quiet else None
    with tqdm(total=100, unit="%", desc=f"job {job_id[:8]}", disable=disable, leave=False) as bar:
        while True:
            response = client.get(job["statusUrl"])
            if response.status_code != 200:
                raise GetError(f"status of job {job_id} failed: {_describe_error(response)}")
            status = _read_document(response, "status", ("status", "progress"))
            bar.set_postfix_str(progress_label(status))
            bar.update(int(status["progress"]) - bar.n)
            if status["status"] == "done":
                return status
            if status["status"] == "failed":
                error = status.get("error") or {}
                raise GetError(
                    f"job {job_id} failed: {error.get('code', 'unknown')}: "
                    f"{error.get('message', 'no message')}"
                )
            if status["status"] == "cancelled":
                raise GetError(f"job {job_id} was cancelled")
            time.sleep(_poll_delay(response))


def progress_label(status: dict[str, Any]) -> str:
    """Return the text after the progress bar: the job's status, or the retry it waits for."""
    if "retryAt" in status:
        return f"attempt {status.get('attempt', '?')} failed, retrying"
    return str(status["status"])


def _poll_delay(response: httpx.Response) -> float:
    try:
        seconds = float(response.headers.get("Retry-After", DEFAULT_POLL_SECONDS))
    except ValueError:
        seconds = DEFAULT_POLL_SECONDS
    return min(max(seconds, MIN_POLL_SECONDS), MAX_POLL_SECONDS)


def _download(
    client: httpx.Client, job: dict[str, Any], status: dict[str, Any], output: str | None
) -> Path:
    result = status.get("result")
    if not isinstance(result, dict) or not {"fileName", "sha256", "size"} <= result.keys():
        raise GetError(f"status of job {job['jobId']} is done but describes no result")
    requested = Path(output) if output else Path(Path(str(result["fileName"])).name)
    target = Path(os.path.realpath(requested))
    # A device or a named pipe is written in place. Anything else goes to a
    # new temporary file with a random name, made with O_EXCL, so a link
    # planted at a predictable name cannot redirect the write.
    in_place = target.exists() and not target.is_file()
    partial: Path | None = None
    digest = hashlib.sha256()
    size = 0
    try:
        with client.stream("GET", job["resultUrl"]) as response:
            if response.status_code != 200:
                response.read()
                raise GetError(
                    f"download of job {job['jobId']} failed: {_describe_error(response)}"
                )
            if in_place:
                file = target.open("wb")
            else:
                descriptor, name = tempfile.mkstemp(
                    prefix=f".{target.name[:MAX_TEMPORARY_PREFIX]}.",
                    suffix=".part",
                    dir=target.parent,
                )
                partial = Path(name)
                file = os.fdopen(descriptor, "wb")
            with file:
                for chunk in response.iter_bytes(DOWNLOAD_CHUNK_BYTES):
                    file.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        if digest.hexdigest() != result["sha256"] or size != result["size"]:
            raise GetError(
                f"checksum mismatch for job {job['jobId']}: expected sha256 {result['sha256']} "
                f"and {result['size']} bytes, got {digest.hexdigest()} and {size} bytes"
            )
        if partial is not None:
            # mkstemp makes the file readable by its owner only; a download
            # gets the mode that the umask gives any new file.
            os.chmod(partial, 0o666 & ~_current_umask())
            os.replace(partial, target)
    except httpx.TransportError as exc:
        _discard(partial)
        raise GetError(f"download of job {job['jobId']} was cut off: {exc}") from None
    except OSError as exc:
        _discard(partial)
        raise GetError(f"cannot write {requested}: {exc.strerror}") from None
    except BaseException:
        _discard(partial)
        raise
    return requested


def _current_umask() -> int:
    # The only way to read the umask is to set it; the command runs in one thread.
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _discard(partial: Path | None) -> None:
    """Remove the temporary file of a failed download, if one was made."""
    if partial is not None:
        partial.unlink(missing_ok=True)


def _cancel_interrupted_start(client: httpx.Client, file_id: str, key: str) -> None:
    """Cancel the job of a start that was interrupted before its response, if there is one.

    The server may have created the job already. Sending the start again
    with the same ``Idempotency-Key`` returns that job rather than a new
    one. If the first start never arrived, the second creates the job, and
    it is cancelled at once.
    """
    try:
        response = _post_start(client, file_id, key, timeout=5.0)
        job_id = response.json().get("jobId") if response.status_code in (200, 202) else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return
    if isinstance(job_id, str):
        _cancel_quietly(client, job_id)


def _cancel_quietly(client: httpx.Client, job_id: str) -> None:
    try:
        client.delete(f"/v1/download/{job_id}", timeout=5.0)
    except httpx.HTTPError:
        pass


def _describe_error(response: httpx.Response) -> str:
    """Return the server's problem detail, or the status line when there is none."""
    try:
        problem = response.json()
        detail = problem.get("detail") if isinstance(problem, dict) else None
    except ValueError:
        detail = None
    return f"HTTP {response.status_code}: {detail or response.reason_phrase}"
