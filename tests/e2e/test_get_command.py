"""``download-jobs get`` as a user runs it, against a real server or a scripted stand-in."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from .conftest import (
    COMMAND_TIMEOUT_SECONDS,
    DOWNLOAD_JOBS,
    STAND_IN_JOB_ID,
    ServerProcess,
    StandInScript,
    child_environment,
    run_command,
    sha256_hex,
    stderr_lines,
)

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ServerProcess]
StartStandIn = Callable[[StandInScript], str]
T = TypeVar("T")

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def job_id_for_file(server: ServerProcess, file_id: int) -> str:
    """Return the id of the first job the server logged as queued for ``file_id``."""
    match = server.wait_for_log(rf"job ({_UUID}): queued \(file {file_id},")
    return match.group(1)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty folder for the command's output, apart from the servers' results folders."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def fetch_status(server: ServerProcess, job_id: str) -> dict[str, Any]:
    with httpx.Client(base_url=server.base_url, trust_env=False, timeout=5.0) as client:
        response = client.get(f"/v1/download/status/{job_id}")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def test_get_writes_checked_zip(server: ServerProcess, workdir: Path) -> None:
    output = workdir / "file.zip"

    result = run_command("get", "70000", "--server", server.base_url, "-o", str(output))

    assert result.returncode == 0, result.stderr
    status = fetch_status(server, job_id_for_file(server, 70000))
    assert status["status"] == "done"
    data = output.read_bytes()
    assert sha256_hex(data) == status["result"]["sha256"]
    assert len(data) == status["result"]["size"]
    with zipfile.ZipFile(output) as archive:
        assert archive.testzip() is None
    assert sorted(path.name for path in workdir.iterdir()) == ["file.zip"]


def test_get_writes_through_symlink(server: ServerProcess, workdir: Path) -> None:
    (workdir / "real.zip").write_bytes(b"old")
    link = workdir / "link.zip"
    link.symlink_to("real.zip")

    result = run_command("get", "70000", "--server", server.base_url, "-o", str(link))

    assert result.returncode == 0, result.stderr
    status = fetch_status(server, job_id_for_file(server, 70000))
    assert link.is_symlink()
    assert sha256_hex((workdir / "real.zip").read_bytes()) == status["result"]["sha256"]
    assert sorted(path.name for path in workdir.iterdir()) == ["link.zip", "real.zip"]


def test_get_ignores_planted_part_link(server: ServerProcess, workdir: Path) -> None:
    # Another user's link at the old predictable temporary name redirected the write.
    victim = workdir / "victim.txt"
    victim.write_bytes(b"secret")
    (workdir / "out.zip.part").symlink_to("victim.txt")
    output = workdir / "out.zip"

    result = run_command("get", "70000", "--server", server.base_url, "-o", str(output))

    assert result.returncode == 0, result.stderr
    status = fetch_status(server, job_id_for_file(server, 70000))
    assert victim.read_bytes() == b"secret"
    assert not output.is_symlink()
    assert sha256_hex(output.read_bytes()) == status["result"]["sha256"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(output.stat().st_mode) == 0o666 & ~umask
    assert sorted(path.name for path in workdir.iterdir()) == [
        "out.zip",
        "out.zip.part",
        "victim.txt",
    ]


def test_get_name_too_long_is_one_line(server: ServerProcess, workdir: Path) -> None:
    output = workdir / ("a" * 300)

    result = run_command("get", "70000", "--server", server.base_url, "-o", str(output))

    lines = stderr_lines(result.stderr)
    assert result.returncode == 1
    assert len(lines) == 1, result.stderr
    assert "File name too long" in lines[0]
    assert list(workdir.iterdir()) == []


def test_get_writes_into_named_pipe(server: ServerProcess, workdir: Path) -> None:
    pipe = workdir / "pipe.zip"
    os.mkfifo(pipe)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_bytes()))
    reader.start()
    try:
        result = run_command("get", "70000", "--server", server.base_url, "-o", str(pipe))
    finally:
        if reader.is_alive():
            # The command never opened the pipe: a writer of our own ends the read.
            with pipe.open("wb"):
                pass
        reader.join(COMMAND_TIMEOUT_SECONDS)

    assert result.returncode == 0, result.stderr
    status = fetch_status(server, job_id_for_file(server, 70000))
    assert stat.S_ISFIFO(pipe.stat().st_mode)
    assert sha256_hex(received[0]) == status["result"]["sha256"]
    assert sorted(path.name for path in workdir.iterdir()) == ["pipe.zip"]


def test_get_default_file_name(server: ServerProcess, workdir: Path) -> None:
    result = run_command("get", "70000", "--server", server.base_url, "--quiet", cwd=workdir)

    assert result.returncode == 0, result.stderr
    status = fetch_status(server, job_id_for_file(server, 70000))
    assert status["status"] == "done"
    assert sorted(path.name for path in workdir.iterdir()) == ["70000.zip"]
    data = (workdir / "70000.zip").read_bytes()
    assert sha256_hex(data) == status["result"]["sha256"]
    with zipfile.ZipFile(workdir / "70000.zip") as archive:
        assert archive.testzip() is None


def test_get_server_unreachable(unused_port: int, workdir: Path) -> None:
    url = f"http://127.0.0.1:{unused_port}"

    result = run_command("get", "70000", "--server", url, "-o", str(workdir / "out.zip"))

    assert result.returncode == 1
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "cannot reach" in lines[0]
    assert url in lines[0]
    assert list(workdir.iterdir()) == []


def test_get_job_failed(start_server: StartServer, workdir: Path) -> None:
    server = start_server(DOWNLOAD_AVAILABILITY="multiple-of-7")
    output = workdir / "out.zip"

    result = run_command("get", "70001", "--server", server.base_url, "-o", str(output), "--quiet")

    assert result.returncode == 1
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "failed" in lines[0]
    assert "not_found" in lines[0]
    job_id = job_id_for_file(server, 70001)
    assert job_id in lines[0]
    status = fetch_status(server, job_id)
    assert status["status"] == "failed"
    assert status["error"]["code"] == "not_found"
    assert not output.exists()


@pytest.mark.parametrize(
    ("file_id", "reason"),
    [
        ("abc", "must be an integer"),
        ("5", "must be from 10000 to 100000000"),
    ],
)
def test_get_invalid_file_id(
    server: ServerProcess, workdir: Path, file_id: str, reason: str
) -> None:
    result = run_command("get", file_id, "--server", server.base_url, cwd=workdir)

    assert result.returncode == 1
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert reason in lines[0]
    assert "HTTP 400" in lines[0]
    assert "queued" not in server.log
    assert list(workdir.iterdir()) == []


# Any bytes do: the client checks only the digest and the length.
PAYLOAD = b"stand-in payload" * 1000


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(StandInScript(PAYLOAD, reported_sha256=sha256_hex(b"other")), id="sha256"),
        pytest.param(StandInScript(PAYLOAD, reported_size=len(PAYLOAD) + 1), id="size"),
    ],
)
def test_get_checksum_mismatch(
    stand_in_server: StartStandIn, workdir: Path, script: StandInScript
) -> None:
    url = stand_in_server(script)
    output = workdir / "out.zip"

    result = run_command("get", "70000", "--server", url, "-o", str(output), "--quiet")

    assert result.returncode == 1
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "checksum mismatch" in lines[0]
    assert STAND_IN_JOB_ID in lines[0]
    assert list(workdir.iterdir()) == []


def interrupt_get(url: str, workdir: Path, ready: Callable[[], T]) -> tuple[int, str, T]:
    """Run ``download-jobs get 70000`` on ``url`` and send SIGINT once ``ready`` returns.

    Returns the exit status, the stderr and what ``ready`` returned.
    """
    process = subprocess.Popen(
        [str(DOWNLOAD_JOBS), "get", "70000", "--server", url, "--quiet"],
        cwd=workdir,
        env=child_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        value = ready()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=COMMAND_TIMEOUT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=COMMAND_TIMEOUT_SECONDS)
    return process.returncode, stderr, value


def test_get_interrupted_start_cancels_job(stand_in_server: StartStandIn, workdir: Path) -> None:
    # The start's response is held back, so the interrupt comes before the
    # client knows the job's id.
    script = StandInScript(PAYLOAD, first_start_delay_seconds=3.0)
    url = stand_in_server(script)

    def start_received() -> None:
        deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
        while not script.received and time.monotonic() < deadline:
            time.sleep(0.02)

    returncode, stderr, _ = interrupt_get(url, workdir, start_received)

    assert returncode == 130
    assert stderr_lines(stderr) == ["download-jobs: interrupted"]
    methods = [method for method, _, _ in script.received]
    assert methods == ["POST", "POST", "DELETE"], script.received
    first_key, second_key = (key for method, _, key in script.received if method == "POST")
    assert first_key is not None
    assert second_key == first_key
    assert script.received[2][1] == f"/v1/download/{STAND_IN_JOB_ID}"


def test_get_status_not_json(stand_in_server: StartStandIn, workdir: Path) -> None:
    url = stand_in_server(StandInScript(PAYLOAD, status_body=b"<html>proxy error</html>"))

    result = run_command("get", "70000", "--server", url, "-o", str(workdir / "out.zip"), "--quiet")

    assert result.returncode == 1
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr


def test_get_cut_download_no_leftover(stand_in_server: StartStandIn, workdir: Path) -> None:
    url = stand_in_server(StandInScript(PAYLOAD, cut_after_bytes=1000))

    result = run_command("get", "70000", "--server", url, "-o", str(workdir / "out.zip"), "--quiet")

    assert result.returncode == 1
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert [path.name for path in workdir.iterdir()] == []


def test_get_interrupt_cancels_job(start_server: StartServer, workdir: Path) -> None:
    server = start_server(DOWNLOAD_DELAY_MIN_MS="60000", DOWNLOAD_DELAY_MAX_MS="60000")

    def job_processing() -> str:
        return server.wait_for_log(rf"job ({_UUID}): queued -> processing").group(1)

    returncode, stderr, job_id = interrupt_get(server.base_url, workdir, job_processing)

    assert returncode == 130
    assert stderr_lines(stderr) == ["download-jobs: interrupted"]
    server.wait_for_log(rf"job {job_id}: processing -> cancelled \(on request\)")
    status = fetch_status(server, job_id)
    assert status["status"] == "cancelled"
    assert list(workdir.iterdir()) == []
