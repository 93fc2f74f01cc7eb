"""Command-line entry point: ``download-jobs serve`` and ``download-jobs get``."""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys
from collections.abc import Sequence

import trio

from engine import SettingsError

from ._get import DEFAULT_SERVER, run_get

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected 0-65535") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected 0-65535")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="download-jobs",
        description="Serve long-running downloads behind a polling API, or fetch one.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run the HTTP service. Engine settings come from environment "
        "variables; see the README for the list.",
    )
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=_port, default=None, help="TCP port; 0 picks a free one (default 8000)"
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        default=None,
        help="log one line per request to stdout (default off; env ACCESS_LOG)",
    )
    serve.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="minimum level of log lines (default INFO)",
    )

    get = commands.add_parser(
        "get",
        help="download one file through a running service",
        description="Start a job, poll its status, download the file and check its SHA-256.",
    )
    get.add_argument("file_id", help="file id to download, an integer from 10000 to 100000000")
    get.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        help=f"base URL of the service (default {DEFAULT_SERVER})",
    )
    get.add_argument(
        "-o",
        "--output",
        default=None,
        help="where to write the file (default: the server's file name, in the current folder)",
    )
    get.add_argument("--quiet", action="store_true", help="show no progress line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the process exit status."""
    args = _build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return run_get(args.file_id, server=args.server, output=args.output, quiet=args.quiet)


def _serve(args: argparse.Namespace) -> int:
    # Imported here so that ``download-jobs get`` does not load the server stack.
    from http_api import Settings, serve

    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    try:
        settings = Settings.from_environ(host=args.host, port=args.port, access_log=args.access_log)
    except SettingsError as exc:
        print(f"download-jobs: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(serve, settings)
    except BaseExceptionGroup as group:
        failed, others = group.split(_is_listen_error)
        if failed is None or others is not None:
            raise
        error = _first_leaf(failed)
    except OSError as exc:
        if not _is_listen_error(exc):
            raise
        error = exc
    else:
        return 0
    print(
        f"download-jobs: cannot listen on {settings.host} port {settings.port}: {error.strerror}",
        file=sys.stderr,
    )
    return 1


# Errors of binding the listening socket: the address is taken, is not one of
# this machine's, or needs privileges.
_BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def _is_listen_error(error: BaseException) -> bool:
    """Return whether ``error`` means that the server cannot listen on the requested address.

    That is a bind error, or a host name that does not resolve.
    """
    if isinstance(error, socket.gaierror):
        return True
    return isinstance(error, OSError) and error.errno in _BIND_ERRNOS


def _first_leaf(group: BaseExceptionGroup[OSError]) -> OSError:
    """Return the first exception of ``group`` that is not itself a group."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
