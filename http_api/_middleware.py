"""Headers every response carries, CORS, and per-client rate limiting.

``install_middleware`` registers one ``before_request`` and one
``after_request`` hook. Quart runs after-request hooks for every response
that passes through the app's error handlers too, so 404, 405, 413, 429 and
500 problems get the same headers as successful responses. Responses that
Hypercorn writes itself, such as 400 for a request it cannot parse, never
reach the app and carry none of them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, cast

import trio
from hypercorn.typing import HTTPScope
from quart import Quart, Response, after_this_request, request
from quart.typing import ResponseTypes
from werkzeug.exceptions import RequestEntityTooLarge

from ._body import discard_body
from ._problems import Problem
from ._ratelimit import FixedWindowLimiter, Quota, client_of
from ._request_id import (
    REQUEST_ID_HEADER,
    REQUEST_ID_LOG_FILTER,
    current_request_id,
    first_header_value,
    request_id_of,
)
from ._settings import ANY_ORIGIN, Settings, normalize_origin

logger = logging.getLogger("http_api")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    # Browsers ignore this header on plain HTTP (RFC 6797), so it takes effect
    # once a TLS-terminating proxy serves the API over HTTPS.
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Referrer-Policy": "no-referrer",
    # "cross-origin" because pages on other origins download results. Browsers
    # check this header on cross-origin loads made without CORS (mode
    # "no-cors"), and "same-origin" or "same-site" would block those loads.
    "Cross-Origin-Resource-Policy": "cross-origin",
}

# Response headers that scripts on allowed origins may read.
EXPOSED_HEADERS = (
    "Location, Retry-After, ETag, Content-Disposition, Content-Length, Content-Range, "
    "Accept-Ranges, Last-Modified, X-Request-ID, "
    "RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"
)
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET, HEAD, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": (
        "Content-Type, Idempotency-Key, If-Match, If-Modified-Since, If-None-Match, "
        "If-Range, If-Unmodified-Since, Range, X-Request-ID"
    ),
    # Seconds a browser may cache this preflight result.
    "Access-Control-Max-Age": "600",
}

# Methods counted against the poll budget; every other method uses the write budget.
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class CorsPolicy:
    """The origins allowed to read responses, and the CORS headers that grant them access."""

    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any_origin = origins == (ANY_ORIGIN,)
        normalized = (normalize_origin(origin) for origin in origins)
        self.origins = frozenset(origin for origin in normalized if origin is not None)

    def allow_origin(self, origin: str | None) -> str | None:
        """Return the Access-Control-Allow-Origin value for ``origin``, or None to send none."""
        if self.any_origin:
            return ANY_ORIGIN
        if origin is not None and origin in self.origins:
            return origin
        return None

    def apply(self, response: Response, origin: str | None) -> None:
        """Add the CORS headers for a request from ``origin`` to ``response``."""
        if not self.any_origin:
            response.vary.add("Origin")
        response.headers.extend(self._grant(origin))

    def headers(self, origin: str | None) -> list[tuple[str, str]]:
        """Return the CORS headers for a request from ``origin``, ``Vary`` included."""
        vary = [] if self.any_origin else [("Vary", "Origin")]
        return vary + self._grant(origin)

    def _grant(self, origin: str | None) -> list[tuple[str, str]]:
        # With a list of origins, the response depends on the Origin header, so
        # the callers add "Vary: Origin". Shared caches then do not reuse one
        # origin's response for another, nor a response without Origin for a browser.
        allowed = self.allow_origin(origin)
        if allowed is None:
            return []
        return [
            ("Access-Control-Allow-Origin", allowed),
            ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
        ]


# Scope key of the verdict of ``RateLimits._count``, so that a status read
# that the status layer counted and passed on to Quart is not counted again.
_COUNTED_KEY = "download_jobs.rate_limit"


@dataclasses.dataclass(frozen=True, slots=True)
class _Counted:
    key: str
    is_read: bool
    quota: Quota


class RateLimits:
    """The two per-client budgets: one for polls and reads, one for writes."""

    def __init__(self, settings: Settings) -> None:
        window = settings.rate_limit_window
        self.trusted_proxies = settings.trusted_proxies
        self.writes = FixedWindowLimiter(settings.rate_limit_max_requests, window)
        self.polls = FixedWindowLimiter(settings.rate_limit_poll_max_requests, window)

    def admit(self, scope: HTTPScope) -> bool:
        """Count the request of ``scope`` in its budget; return whether it is within it."""
        return self._count(scope).quota.allowed

    def headers(self, scope: HTTPScope) -> list[tuple[str, str]]:
        """Return the RateLimit-* headers for the request of ``scope``, counting it if not yet."""
        return _quota_headers(self._count(scope).quota)

    def _count(self, scope: HTTPScope, *, preflight: bool = False) -> _Counted:
        """Count the request of ``scope`` once, however often this is called.

        Preflights are not counted, and report the current quota of the poll budget.
        """
        # The verdict is kept in the scope, which the ASGI types do not declare.
        stash = cast(dict[str, Any], scope)
        counted: _Counted | None = stash.get(_COUNTED_KEY)
        if counted is not None:
            return counted
        key = client_of(scope, self.trusted_proxies)
        is_read = scope["method"] in _READ_METHODS
        limiter = self.polls if is_read else self.writes
        now = trio.current_time()
        quota = limiter.peek(key, now) if preflight else limiter.hit(key, now)
        counted = _Counted(key, is_read, quota)
        stash[_COUNTED_KEY] = counted
        return counted

    def apply(self, *, preflight: bool) -> None:
        """Count the current request in its budget and add RateLimit-* headers to its response.

        Raises a 429 ``Problem`` with Retry-After when the budget is used up.
        """
        counted = self._count(cast(HTTPScope, request.scope), preflight=preflight)
        quota = counted.quota

        @after_this_request
        async def add_rate_limit_headers(response: ResponseTypes) -> ResponseTypes:
            response.headers.update(_quota_headers(quota))
            return response

        if quota.allowed:
            return
        kind = "read" if counted.is_read else "write"
        limiter = self.polls if counted.is_read else self.writes
        window_text = f"{limiter.window_seconds:g} s"
        if quota.first_rejection:
            logger.warning(
                "client %s exceeded the %s rate limit of %d requests per %s",
                counted.key,
                kind,
                quota.limit,
                window_text,
            )
        raise Problem(
            429,
            "rate_limited",
            "Too many requests",
            f"client {counted.key} sent more than {quota.limit} {kind} requests in {window_text}; "
            f"retry after {quota.reset_header} s",
            headers={"Retry-After": quota.reset_header},
        )


def _quota_headers(quota: Quota) -> list[tuple[str, str]]:
    return [
        ("RateLimit-Limit", str(quota.limit)),
        ("RateLimit-Remaining", str(quota.remaining)),
        ("RateLimit-Reset", quota.reset_header),
    ]


class CommonHeaders:
    """The headers the app adds to every response: rate limit, request id, security and CORS."""

    def __init__(self, cors: CorsPolicy, limits: RateLimits | None) -> None:
        self.cors = cors
        self.limits = limits

    def for_scope(self, scope: HTTPScope) -> list[tuple[str, str]]:
        """Return them for a response to the request of ``scope`` written outside Quart.

        They come in the order in which Quart's hooks add them. The rate-limit headers
        report the verdict that ``RateLimits.admit`` recorded for the request.
        """
        headers = [] if self.limits is None else self.limits.headers(scope)
        headers.append((REQUEST_ID_HEADER, request_id_of(scope)))
        headers.extend(SECURITY_HEADERS.items())
        origin = first_header_value(scope, b"origin")
        headers.extend(self.cors.headers(origin))
        return headers


def _is_preflight() -> bool:
    return (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )


def install_middleware(app: Quart, settings: Settings) -> CommonHeaders:
    """Register the hooks that add common headers, handle preflights and limit request rates.

    Returns the same headers and the rate limits (None when rate limiting is
    off) for responses written outside Quart.
    """
    cors = CorsPolicy(settings.cors_origins)
    limits = RateLimits(settings) if settings.rate_limit_enabled else None
    # Logger.addFilter ignores a filter that is already installed, so apps
    # created one after another (as in tests) do not stack copies.
    logger.addFilter(REQUEST_ID_LOG_FILTER)

    @app.before_request
    async def limit_and_answer_preflight() -> Response | None:
        # Pick the id now, so every log line and problem of the request uses it.
        current_request_id()
        preflight = _is_preflight()

        if limits is not None:
            limits.apply(preflight=preflight)

        # A preflight on a path that matches no route falls through to the 404.
        if preflight and request.routing_exception is None:
            response = Response(b"", status=204)
            if cors.allow_origin(request.headers.get("Origin")) is not None:
                response.headers.update(PREFLIGHT_HEADERS)
            return response
        return None

    @app.after_request
    async def add_common_headers(response: Response) -> Response:
        request_id = current_request_id()
        assert request_id is not None  # after_request runs inside the request context
        # ``add`` appends where item assignment would first search for the
        # name, and no route sets these headers itself.
        response.headers.add(REQUEST_ID_HEADER, request_id)
        response.headers.extend(SECURITY_HEADERS)
        cors.apply(response, request.headers.get("Origin"))
        if "close" not in response.headers.get("Connection", "").lower() and (
            _may_have_unread_body()
        ):
            # A response sent before the body was read (an error, or a GET
            # route, which ignores bodies) leaves that body on the connection,
            # and Hypercorn 0.18 then never responds to the next request sent
            # on it. Reading the body clears it. A body too large, or one that
            # is late, closes the connection instead, so a client that stops
            # sending cannot delay the response.
            try:
                read = await discard_body()
            except RequestEntityTooLarge:
                read = False
            if not read:
                logger.debug(
                    "%s %s: body not read in time, closing the connection after the response",
                    request.method,
                    request.path,
                )
                response.headers["Connection"] = "close"
        return response

    return CommonHeaders(cors, limits)


def _may_have_unread_body() -> bool:
    """Return whether the request declared a body, which an early error may have left unread."""
    if request.headers.get("Transfer-Encoding"):
        return True
    length = request.headers.get("Content-Length", "0").strip()
    return length not in ("", "0")
