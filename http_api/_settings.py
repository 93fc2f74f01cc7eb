"""Settings of the HTTP service: the engine's plus those of the server."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping

from engine import MAX_MILLISECONDS, EngineSettings, SettingsError, read_bool, read_int

from ._ratelimit import IPNetwork

# A start request is a few dozen bytes; 64 KiB leaves room for any legitimate
# body and caps what one request can make the server parse.
MAX_BODY_BYTES = 64 * 1024

# Upper bound of both request budgets, far above any sensible per-window limit.
MAX_REQUESTS_PER_WINDOW = 100_000_000

ANY_ORIGIN = "*"
# scheme://host[:port], the form of a browser's Origin header. The host is a
# DNS name, an IPv4 address or a bracketed IPv6 address. Paths, user names
# and trailing slashes are rejected, because no Origin header contains them.
_ORIGIN = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ORIGINS_EXPECTED = (
    '"*" or a comma-separated list of origins of the form scheme://host[:port], '
    "such as https://app.example.com,http://localhost:3000"
)
_PROXIES_EXPECTED = (
    "a comma-separated list of IP addresses or CIDR networks, such as 10.0.0.0/8,192.0.2.7"
)


def normalize_origin(origin: str) -> str | None:
    """Return ``origin`` as browsers serialize it, or None if it is not scheme://host[:port].

    Browsers send the scheme and host in lowercase and leave out the default
    port, so ``HTTPS://App.example.com:443`` becomes ``https://app.example.com``.
    """
    match = _ORIGIN.fullmatch(origin)
    if match is None:
        return None
    scheme = match["scheme"].lower()
    host = match["host"].lower()
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    if match["port"] is None:
        return f"{scheme}://{host}"
    port = int(match["port"])
    if not 1 <= port <= 65535:
        return None
    if _DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _split_list(environ: Mapping[str, str], name: str, expected: str) -> list[str] | None:
    """Split a comma-separated variable into stripped items; None if it is unset or blank."""
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    items = [item.strip() for item in raw.split(",")]
    if "" in items:
        raise SettingsError(name, raw, f"{expected}, without empty items")
    return items


def read_cors_origins(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Read CORS_ORIGINS: ``*`` (the default) or a list of origins, checked by ``Settings``."""
    items = _split_list(environ, "CORS_ORIGINS", _ORIGINS_EXPECTED)
    return (ANY_ORIGIN,) if items is None else tuple(items)


def read_trusted_proxies(environ: Mapping[str, str]) -> tuple[IPNetwork, ...]:
    """Read TRUSTED_PROXIES: IP addresses and CIDR networks; unset or blank trusts none."""
    items = _split_list(environ, "TRUSTED_PROXIES", _PROXIES_EXPECTED)
    if items is None:
        return ()
    networks: list[IPNetwork] = []
    for item in items:
        try:
            # strict=False accepts host bits, so 10.1.2.3/8 means 10.0.0.0/8.
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(
                "TRUSTED_PROXIES", environ["TRUSTED_PROXIES"], _PROXIES_EXPECTED
            ) from None
    return tuple(networks)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``create_app`` and ``serve`` need, validated at construction."""

    engine: EngineSettings = dataclasses.field(default_factory=EngineSettings)
    host: str = "127.0.0.1"
    port: int = 8000
    # One line per request on stderr, in Hypercorn's access log format.
    access_log: bool = False
    # How long a connection may stay open without a request in progress
    # (between requests, or while a request's headers arrive) before the
    # server closes it. A reverse proxy that keeps connections to the server open
    # should give up on them sooner, or it may send a request just as the
    # server closes one.
    keep_alive_timeout_ms: int = 5_000
    max_body_bytes: int = MAX_BODY_BYTES
    # How long a request's body may take to arrive whole, from the request's
    # head. A body of at most 64 KiB needs a few seconds even on a slow link.
    # Without a bound, a client that stops sending would hold its connection
    # open forever. A later body gets 408, and the connection closes.
    body_timeout_ms: int = 30_000
    # Origins whose pages may read responses: ("*",) for any, else the listed
    # scheme://host[:port] origins.
    cors_origins: tuple[str, ...] = (ANY_ORIGIN,)
    # Per-client request budgets, counted in fixed windows. False turns the
    # limits and their RateLimit-* headers off.
    rate_limit_enabled: bool = True
    rate_limit_window_ms: int = 60_000
    # Starts, checks, cancels and every other request that is not GET, HEAD or
    # OPTIONS, per client and window.
    rate_limit_max_requests: int = 100
    # GET, HEAD and plain OPTIONS requests (status polls, results, health,
    # metrics) per client and window. One client polling 10 jobs every 2 s
    # sends 300 requests a minute, so 1,200 leaves it 4 times that headroom,
    # for example for several browser tabs behind one address.
    rate_limit_poll_max_requests: int = 1_200
    # Peers whose X-Forwarded-For header is trusted to name the client's address.
    trusted_proxies: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        if self.cors_origins == (ANY_ORIGIN,):
            return
        if not self.cors_origins or ANY_ORIGIN in self.cors_origins:
            raise SettingsError("CORS_ORIGINS", ",".join(self.cors_origins), _ORIGINS_EXPECTED)
        for origin in self.cors_origins:
            if normalize_origin(origin) is None:
                raise SettingsError("CORS_ORIGINS", origin, _ORIGINS_EXPECTED)

    @property
    def keep_alive_timeout(self) -> float:
        """``keep_alive_timeout_ms`` in seconds."""
        return self.keep_alive_timeout_ms / 1000

    @property
    def body_timeout(self) -> float:
        """``body_timeout_ms`` in seconds."""
        return self.body_timeout_ms / 1000

    @property
    def rate_limit_window(self) -> float:
        """``rate_limit_window_ms`` in seconds."""
        return self.rate_limit_window_ms / 1000

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``); ``overrides`` win.

        Raises ``engine.SettingsError`` naming the first invalid variable.
        """
        environ = os.environ if environ is None else environ
        defaults = cls()
        values: dict[str, object] = {
            "engine": EngineSettings.from_environ(environ),
            "access_log": read_bool(environ, "ACCESS_LOG", False),
            "keep_alive_timeout_ms": read_int(
                environ,
                "KEEP_ALIVE_TIMEOUT_MS",
                defaults.keep_alive_timeout_ms,
                minimum=1,
                maximum=MAX_MILLISECONDS,
                unit="milliseconds",
            ),
            "body_timeout_ms": read_int(
                environ,
                "BODY_TIMEOUT_MS",
                defaults.body_timeout_ms,
                minimum=1,
                maximum=MAX_MILLISECONDS,
                unit="milliseconds",
            ),
            "cors_origins": read_cors_origins(environ),
            "rate_limit_enabled": read_bool(
                environ, "RATE_LIMIT_ENABLED", defaults.rate_limit_enabled
            ),
            "rate_limit_window_ms": read_int(
                environ,
                "RATE_LIMIT_WINDOW_MS",
                defaults.rate_limit_window_ms,
                minimum=1,
                maximum=MAX_MILLISECONDS,
                unit="milliseconds",
            ),
            "rate_limit_max_requests": read_int(
                environ,
                "RATE_LIMIT_MAX_REQUESTS",
                defaults.rate_limit_max_requests,
                minimum=1,
                maximum=MAX_REQUESTS_PER_WINDOW,
                unit="requests",
            ),
            "rate_limit_poll_max_requests": read_int(
                environ,
                "RATE_LIMIT_POLL_MAX_REQUESTS",
                defaults.rate_limit_poll_max_requests,
                minimum=1,
                maximum=MAX_REQUESTS_PER_WINDOW,
                unit="requests",
            ),
            "trusted_proxies": read_trusted_proxies(environ),
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]
