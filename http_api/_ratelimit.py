"""Per-client request counting in fixed windows, and the client address behind trusted proxies.

Nothing here reads a clock or a request: callers pass the current time
(``trio.current_time()`` in the app, so tests can run it on a mock clock)
and the addresses, which keeps both parts testable on their own.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import math
from collections.abc import Iterable, Sequence

from hypercorn.typing import HTTPScope

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Clients tracked per budget at most. 100,000 IPv4 or IPv6 keys took 24 MB
# (tracemalloc, CPython 3.11 on x86-64). Beyond the cap, the client whose
# window started first is dropped, which resets its count early.
MAX_TRACKED_CLIENTS = 100_000

# The key of requests without a peer address, such as those of a test client.
UNKNOWN_CLIENT = "unknown"


@dataclasses.dataclass(slots=True)
class _Window:
    start: float
    count: int = 0
    rejected: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Quota:
    """One client's standing in one budget, as the ``RateLimit-*`` headers report it."""

    limit: int
    remaining: int
    # Seconds until the client's window ends and its count starts again from zero.
    reset_seconds: float
    # False when this request went over the limit and must be rejected.
    allowed: bool = True
    # True only for the first rejected request of a window, so callers can log
    # a client going over its limit once instead of once per request.
    first_rejection: bool = False

    @property
    def reset_header(self) -> str:
        """``reset_seconds`` rounded up to whole seconds, at least 1, for RateLimit-Reset."""
        return str(max(1, math.ceil(self.reset_seconds)))


class FixedWindowLimiter:
    """Allows each key ``limit`` requests per window of ``window_seconds``.

    A key's window starts with its first request and ends ``window_seconds``
    later, when its count is dropped. A client can therefore send up to twice
    the limit in a short time around the end of one window and the start of
    the next, which fixed windows accept in exchange for O(1) memory per key.

    Windows are kept in an ordered dict in the order they started. Because all
    windows have the same length, they also end in that order, so expired ones
    are always at the front and each request drops them in amortized O(1).
    """

    def __init__(
        self, limit: int, window_seconds: float, *, max_keys: int = MAX_TRACKED_CLIENTS
    ) -> None:
        if limit < 1 or window_seconds <= 0 or max_keys < 1:
            raise ValueError(
                f"limit ({limit}), window_seconds ({window_seconds}) and max_keys "
                f"({max_keys}) must all be positive"
            )
        self.limit = limit
        self.window_seconds = window_seconds
        self.max_keys = max_keys
        self._windows: collections.OrderedDict[str, _Window] = collections.OrderedDict()

    def __len__(self) -> int:
        """Return the number of keys whose window is stored."""
        return len(self._windows)

    def hit(self, key: str, now: float) -> Quota:
        """Count one request of ``key`` at time ``now`` unless it is over the limit."""
        self._drop_expired(now)
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self.max_keys:
                self._windows.popitem(last=False)
            window = _Window(start=now)
            self._windows[key] = window

        reset_seconds = window.start + self.window_seconds - now
        if window.count >= self.limit:
            window.rejected += 1
            return Quota(
                self.limit,
                0,
                reset_seconds,
                allowed=False,
                first_rejection=window.rejected == 1,
            )
        window.count += 1
        return Quota(self.limit, self.limit - window.count, reset_seconds)

    def peek(self, key: str, now: float) -> Quota:
        """Return the quota of ``key`` at time ``now`` without counting a request."""
        self._drop_expired(now)
        window = self._windows.get(key)
        if window is None:
            return Quota(self.limit, self.limit, self.window_seconds)
        reset_seconds = window.start + self.window_seconds - now
        return Quota(self.limit, max(0, self.limit - window.count), reset_seconds)

    def _drop_expired(self, now: float) -> None:
        while self._windows:
            oldest = next(iter(self._windows.values()))
            if oldest.start + self.window_seconds > now:
                return
            self._windows.popitem(last=False)


def parse_ip_address(text: str) -> IPAddress | None:
    """Parse an IP address, unwrapping IPv4-mapped IPv6; return None if ``text`` is not one.

    Forms that some proxies write are accepted too: square brackets around
    an IPv6 address, and a port after an address (``192.0.2.7:1234``,
    ``[2001:db8::1]:443``).
    """
    candidate = text.strip()
    if candidate.startswith("[") and "]" in candidate:
        address_part, _, port = candidate[1:].partition("]")
        if port and not (port.startswith(":") and port[1:].isdigit()):
            return None
        candidate = address_part
    elif candidate.count(":") == 1:
        address_part, _, port = candidate.partition(":")
        if not port.isdigit():
            return None
        candidate = address_part
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: IPAddress, trusted_proxies: Iterable[IPNetwork]) -> bool:
    return any(address in network for network in trusted_proxies)


def client_of(scope: HTTPScope, trusted_proxies: Sequence[IPNetwork]) -> str:
    """Return the address that identifies the client of the request of ``scope``.

    See ``client_key``. Rate limits count requests by it, and idempotency
    keys belong to it.
    """
    forwarded_for = [
        value.decode("latin-1") for name, value in scope["headers"] if name == b"x-forwarded-for"
    ]
    peer = scope.get("client")
    return client_key(None if peer is None else peer[0], forwarded_for, trusted_proxies)


def client_key(
    peer: str | None,
    forwarded_for: Sequence[str],
    trusted_proxies: Sequence[IPNetwork],
) -> str:
    """Return the address that identifies the client of a request, for rate limiting.

    ``peer`` is the address of the TCP peer and ``forwarded_for`` the values of
    the request's ``X-Forwarded-For`` headers, in order. The header is used
    only when the peer is a trusted proxy, because anyone else can write any
    address in it. Each proxy appends the address it received the request
    from, so the right-most address that is not itself a trusted proxy is the
    client. A value that is not an IP address stops the search, and the last
    address checked is used, since a trusted proxy would not have written it.
    """
    if peer is None:
        return UNKNOWN_CLIENT
    peer_address = parse_ip_address(peer)
    if peer_address is None:
        return peer
    if not _is_trusted(peer_address, trusted_proxies):
        return str(peer_address)

    hops = [hop for value in forwarded_for for hop in value.split(",")]
    client = peer_address
    for hop in reversed(hops):
        hop_address = parse_ip_address(hop)
        if hop_address is None:
            break
        client = hop_address
        if not _is_trusted(hop_address, trusted_proxies):
            break
    return str(client)
