"""The Quart-Trio application: routes, error handlers and the supervisor's lifetime."""

from __future__ import annotations

import logging
import re

from quart import Quart, Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestTimeout
from werkzeug.routing import BaseConverter

from engine import EngineError, JobClient, Supervisor

from ._body import body_timeout_problem
from ._context import CLIENT_KEY, SETTINGS_KEY, STATUS_LAYER_KEY
from ._middleware import install_middleware
from ._openapi import install_openapi
from ._problems import Problem, problem_from_engine_error
from ._results import results
from ._routes import routes
from ._settings import Settings
from ._start import StartLayer
from ._status_layer import JOB_ID_REGEX, StatusLayer
from ._websocket import WebSocketRejector

logger = logging.getLogger("http_api")

# Paths and methods of the job routes. A 404 on one of them means the job id
# did not match the UUID syntax, which is the client's input error (400). The
# fixed names are excluded because "/v1/download/status" and friends are
# routes (or route prefixes) of their own, not malformed ids.
_STATUS_ROUTE_SHAPE = re.compile(r"^/v1/download/status/[^/]+$")
_RESULT_ROUTE_SHAPE = re.compile(r"^/v1/download/(?!(?:status|start|check|initiate)$)[^/]+$")


def _is_malformed_job_route(method: str, path: str) -> bool:
    if method in ("GET", "HEAD") and _STATUS_ROUTE_SHAPE.match(path):
        return True
    return method in ("GET", "HEAD", "DELETE") and _RESULT_ROUTE_SHAPE.match(path) is not None


# Extra time the app's background nursery gets, after the server stops, for the
# supervisor to cancel unfinished jobs and log them before it is cancelled.
SUPERVISOR_STOP_SECONDS = 5.0


class JobIdConverter(BaseConverter):
    """Matches a UUID in 8-4-4-4-12 hex form only, so job routes never shadow fixed ones."""

    regex = JOB_ID_REGEX

    def to_python(self, value: str) -> str:
        return value.lower()


def create_app(settings: Settings) -> Quart:
    """Build the app. The supervisor starts before the first request and stops with the server."""
    app = QuartTrio(__name__)
    # Werkzeug redirects a path with doubled slashes (308, an HTML body, and
    # a Location built from the Host header). Such a path matches no route,
    # so it gets the 404 problem that any other unknown path gets.
    app.url_map.merge_slashes = False
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        # A large result sent to a slow client may take longer than Quart's
        # 60 s default; the transfer ends when the client stops reading.
        RESPONSE_TIMEOUT=None,
        BODY_TIMEOUT=settings.body_timeout,
        BACKGROUND_TASK_SHUTDOWN_TIMEOUT=SUPERVISOR_STOP_SECONDS,
    )
    # Before sort_keys: quart-schema replaces app.json with its own provider.
    install_openapi(app)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.converters["job_id"] = JobIdConverter
    app.register_blueprint(routes)
    app.register_blueprint(results)
    common_headers = install_middleware(app, settings)
    limits = common_headers.limits
    _register_error_handlers(app)

    # Quart's documented way to add ASGI middleware. The layers read the client
    # per request because the supervisor starts after the app is built. Status
    # reads, the most frequent requests, meet the first layer.
    def jobs() -> JobClient:
        client: JobClient = app.extensions[CLIENT_KEY]
        return client

    admit = None if limits is None else limits.admit
    start_layer = StartLayer(
        app.asgi_app,
        jobs,
        common_headers.for_scope,
        admit,
        max_body_bytes=settings.max_body_bytes,
        max_timeout_ms=settings.engine.job_timeout_ms,
        body_timeout=settings.body_timeout,
        trusted_proxies=settings.trusted_proxies,
    )
    status_layer = StatusLayer(
        start_layer,
        jobs,
        common_headers.for_scope,
        admit,
        max_body_bytes=settings.max_body_bytes,
    )
    app.asgi_app = WebSocketRejector(status_layer)  # type: ignore[method-assign]
    app.extensions[STATUS_LAYER_KEY] = status_layer

    app.extensions[SETTINGS_KEY] = settings
    supervisor = Supervisor(settings.engine)

    @app.teardown_request
    async def drop_routing_exception(_: BaseException | None) -> None:
        # Werkzeug's routing error (404, 405) is stored on the request, and its
        # traceback refers back to the request. That cycle would keep the
        # connection's objects until a full collection, which is rare here
        # (see engine.manage_garbage_collection).
        request.routing_exception = None

    @app.before_serving
    async def start_supervisor() -> None:
        client: JobClient = await app.nursery.start(supervisor.run)
        app.extensions[CLIENT_KEY] = client

    @app.after_serving
    async def stop_supervisor() -> None:
        client: JobClient = app.extensions[CLIENT_KEY]
        await client.shutdown()

    return app


def _register_error_handlers(app: Quart) -> None:
    @app.errorhandler(Problem)
    async def handle_problem(problem: Problem) -> Response:
        return problem.to_response()

    @app.errorhandler(EngineError)
    async def handle_engine_error(error: EngineError) -> Response:
        return problem_from_engine_error(error).to_response()

    @app.errorhandler(HTTPException)
    async def handle_http_exception(error: HTTPException) -> Response:
        status = error.code or 500
        if isinstance(error, RequestTimeout):
            timeout = app.config["BODY_TIMEOUT"]
            logger.info(
                "%s %s: request body timed out after %g s", request.method, request.path, timeout
            )
            return body_timeout_problem(timeout).to_response()
        if status == 404 and _is_malformed_job_route(request.method, request.path):
            return Problem(
                400,
                "invalid_job_id",
                "Invalid job id",
                "job id must be a UUID such as 3f2b8c1e-0d4a-4c6e-9b1a-2d5e7f8a9c0b",
                field="jobId",
            ).to_response()
        detail = {
            404: f"no route matches {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
            413: f"request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes",
        }.get(status, error.description or "")
        code = (error.name or "error").lower().replace(" ", "_")
        problem = Problem(status, code, error.name or "Error", detail)
        response = problem.to_response()
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    async def handle_unexpected(error: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return Problem(
            500,
            "internal_error",
            "Internal server error",
            "the server failed to handle the request",
        ).to_response()
