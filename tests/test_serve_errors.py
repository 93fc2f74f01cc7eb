"""``download-jobs serve`` reports a host that does not resolve in one line, in process.

The name lookup is outside the product, so its failure is simulated where
Hypercorn makes the listening sockets: no lookup leaves the machine.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from hypercorn.config import Config

from download_jobs._main import main


def test_unresolvable_host_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail_lookup(self: Config) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(Config, "create_sockets", fail_lookup)
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))

    status = main(["serve", "--host", "db.example", "--port", "0"])

    err = capsys.readouterr().err
    assert status == 1
    assert err.strip().splitlines()[-1] == (
        "download-jobs: cannot listen on db.example port 0: Name or service not known"
    )
    assert "Traceback" not in err
