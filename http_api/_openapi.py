"""The OpenAPI 3.1 document at ``/openapi.json`` and the offline Swagger UI at ``/docs``.

quart-schema builds the document from the routes and the models attached to
them by its ``document_*`` decorators. Only those decorators are used, because
its ``validate_*`` decorators would reject invalid input with their own 400
response instead of the problems of ``_body.py``. ``DocumentProvider`` adjusts what
quart-schema (0.25) produces:

- each response gets the media type of its model (problem+json, zip, text)
  or no content, and its headers go in the response's ``headers`` map,
  where quart-schema 0.25 misplaces them under ``content``;
- header parameters keep their exact names and say which are required;
- every operation gets the headers and responses that the middleware adds
  to every route: ``X-Request-ID``, ``RateLimit-*``, 429 and 500;
- the request body of the start routes gets the running server's
  ``JOB_TIMEOUT_MS`` as the largest ``timeout_ms``, because larger values
  are rejected with 400;
- the 202 responses carry OpenAPI links to the job's status, result and
  cancel operations, which Schemathesis follows in its stateful phase.

Swagger UI is served from the files of the openapi-ui-bundles package under
``/docs/static/``, so the page loads nothing from other hosts.
"""

from __future__ import annotations

import copy
import importlib.metadata
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from openapi_ui_bundles import swagger_ui
from quart import Blueprint, Quart
from quart_schema import OpenAPIProvider, QuartSchema, document_response
from quart_schema.conversion import model_schema
from werkzeug.routing import BaseConverter, Rule

from ._body import CheckRequest, InitiateRequest, StartRequest
from ._context import SETTINGS_KEY
from ._schemas import (
    CommonRequestHeaders,
    CommonResponseHeaders,
    NoBody,
    ProblemDocument,
    RawBody,
    RetryAfterHeaders,
)
from ._settings import Settings

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
DOCS_STATIC_PATH = "/docs/static"

JOB_ID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])

_OPERATION_ATTRIBUTE = "_download_jobs_operation"
_DESCRIPTIONS_ATTRIBUTE = "_download_jobs_response_descriptions"

# Example bodies shown by Swagger UI and tried first by Schemathesis.
_REQUEST_EXAMPLES: dict[type, dict[str, Any]] = {
    StartRequest: {"file_id": 70000},
    InitiateRequest: {"file_ids": [70000, 70007]},
    CheckRequest: {"file_id": 70000},
}

# Link names, and the operations that take a new job's id as their job_id path parameter.
_JOB_LINKS = {
    "status": "get_download_status",
    "result": "get_download_result",
    "cancel": "delete_cancel_download",
}

_API_DESCRIPTION = """\
Long-running file downloads behind a polling API.

`POST /v1/download/start` answers `202 Accepted` with a job id at once. Poll
`GET /v1/download/status/{job_id}` as its `Retry-After` header says until
`status` is `done`, `failed` or `cancelled`, then fetch the file from
`GET /v1/download/{job_id}` and compare it with the `sha256` of the status
document.

Every error is `application/problem+json` (RFC 9457) with a stable `code`.
Besides the responses listed for each operation, any path that matches no
route gets a 404 problem, a method that a path does not support gets a 405
problem with an `Allow` header, a request whose body does not arrive whole
within `BODY_TIMEOUT_MS` (30 s by default) gets a 408 problem and the
connection closes, and an `OPTIONS` request with `Origin` and
`Access-Control-Request-Method` (a CORS preflight) gets 204.
"""


def operation(
    summary: str, description: str = "", *, head: bool = False
) -> Callable[[HandlerT], HandlerT]:
    """Document a handler's operation: a one-line summary, a description, and HEAD if it has one.

    quart-schema documents every GET route without HEAD, so ``head=True`` adds
    it for a route whose HEAD is part of its contract.
    """

    def decorator(handler: HandlerT) -> HandlerT:
        setattr(handler, _OPERATION_ATTRIBUTE, (summary, inspect.cleandoc(description), head))
        return handler

    return decorator


def responds(
    status: int, model: type, description: str, headers: type | None = None
) -> Callable[[HandlerT], HandlerT]:
    """Document one response of a handler: quart-schema's ``document_response`` plus a description.

    ``model`` is a response model of ``_schemas.py``, a ``RawBody`` or ``NoBody``.
    """

    def decorator(handler: HandlerT) -> HandlerT:
        handler = document_response(model, status, headers)(handler)
        descriptions: dict[int, str] = getattr(handler, _DESCRIPTIONS_ATTRIBUTE, {})
        descriptions[status] = description
        setattr(handler, _DESCRIPTIONS_ATTRIBUTE, descriptions)
        return handler

    return decorator


class DocumentProvider(OpenAPIProvider):
    """quart-schema's document builder, adjusted as the module docstring lists.

    The document is built once and then kept, because the routes and models
    do not change once the app is built. Building it walks every route and
    model and took about 0.25 s on a 2-core VM. Built per request, it let
    one client stall the server. The server builds it in a worker thread
    before it accepts connections (``build_document``); an app served
    otherwise, as in the tests, builds it on the first request for it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._document: dict[str, Any] | None = None

    def schema(self) -> dict[str, Any]:
        """Return the OpenAPI document, the same object on every call; do not modify it."""
        if self._document is None:
            document = super().schema()
            document["components"]["headers"] = {
                name: header for name, header in self._header_objects(CommonResponseHeaders)
            }
            self._document = document
        return self._document

    def generate_rules(self) -> Iterable[Rule]:
        for rule in super().generate_rules():
            if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
                continue
            yield rule

    def generate_methods(self, rule: Rule) -> Iterable[str]:
        yield from super().generate_methods(rule)
        view = self._app.view_functions[rule.endpoint]
        documented = getattr(view, _OPERATION_ATTRIBUTE, None)
        if documented is not None and documented[2] and "HEAD" in (rule.methods or ()):
            yield "HEAD"

    def build_path_parameter(self, name: str, converter: BaseConverter) -> dict[str, Any]:
        parameter = super().build_path_parameter(name, converter)
        if name == "job_id":
            parameter["description"] = "The job id from the 202 response of a start request"
            # The route also matches upper-case hex digits, and ids are returned in lower case.
            parameter["schema"] = {"type": "string", "format": "uuid", "pattern": JOB_ID_PATTERN}
        return parameter

    def build_headers_parameters(
        self, model: type[Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        parameters = [
            {"name": name, "in": "header", **header} for name, header in self._header_objects(model)
        ]
        return parameters, {}

    def build_request_body(
        self, model: type[Any], source: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        request_body, definitions = super().build_request_body(model, source)
        request_body["required"] = True
        if model in _REQUEST_EXAMPLES:
            media = request_body["content"]["application/json"]
            media["examples"] = {"example": {"value": _REQUEST_EXAMPLES[model]}}
        self._cap_timeout(request_body["content"]["application/json"]["schema"])
        return request_body, definitions

    def build_response_object(
        self, model: type[Any], headers_model: type[Any] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        response: dict[str, Any] = {"description": inspect.getdoc(model) or ""}
        definitions: dict[str, Any] = {}
        if issubclass(model, RawBody):
            response["content"] = {model.response_media_type: {"schema": dict(model.schema)}}
        elif not issubclass(model, NoBody):
            # The model goes to components/schemas with the models it nests,
            # so responses that share it, such as every problem, refer to one copy.
            schema = model_schema(model, schema_mode="serialization")
            definitions = schema.pop("$defs", {})
            definitions[model.__name__] = schema
            reference = {"$ref": f"#/components/schemas/{model.__name__}"}
            response["content"] = {model.response_media_type: {"schema": reference}}

        headers: dict[str, Any] = {
            name: {"$ref": f"#/components/headers/{name}"}
            for name, _ in self._header_objects(CommonResponseHeaders)
        }
        if headers_model is not None:
            headers.update(self._header_objects(headers_model))
        response["headers"] = headers
        return response, definitions

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        view = self._app.view_functions[rule.endpoint]
        common_responses, common_components = self._common_responses()
        components.update(common_components)

        for path_item in paths.values():
            for method, shared in list(path_item.items()):
                # quart-schema shares one operation object between a rule's methods.
                operation_object = copy.deepcopy(shared)
                self._describe(operation_object, view)
                for status, response in common_responses.items():
                    operation_object["responses"].setdefault(status, copy.deepcopy(response))
                operation_object["parameters"].extend(
                    {"name": name, "in": "header", **header}
                    for name, header in self._header_objects(CommonRequestHeaders)
                )
                if method == "head":
                    # HEAD ignores Range (RFC 9110 section 14.2) and sends no body.
                    for status in (206, 416):
                        operation_object["responses"].pop(status, None)
                    operation_object["parameters"] = [
                        parameter
                        for parameter in operation_object["parameters"]
                        if parameter["name"] not in ("Range", "If-Range")
                    ]
                if 202 in operation_object["responses"]:
                    operation_object["responses"][202]["links"] = _job_links()
                operation_object["responses"] = dict(sorted(operation_object["responses"].items()))
                path_item[method] = operation_object
        return paths, components

    def _describe(self, operation_object: dict[str, Any], view: Callable[..., Any]) -> None:
        documented = getattr(view, _OPERATION_ATTRIBUTE, None)
        if documented is not None:
            summary, description, _ = documented
            operation_object["summary"] = summary
            operation_object["description"] = description
        descriptions: dict[int, str] = getattr(view, _DESCRIPTIONS_ATTRIBUTE, {})
        for status, text in descriptions.items():
            operation_object["responses"][status]["description"] = text

    def _common_responses(self) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
        too_many, components = self.build_response_object(ProblemDocument, RetryAfterHeaders)
        too_many["description"] = (
            "Rate limited: the client used up its budget of reads (GET, HEAD) or writes "
            "(everything else) in the current window. Only when RATE_LIMIT_ENABLED is on"
        )
        internal, _ = self.build_response_object(ProblemDocument, None)
        internal["description"] = "Unexpected server error. The server log has the details"
        return {429: too_many, 500: internal}, components

    def _header_objects(self, model: type[Any]) -> list[tuple[str, dict[str, Any]]]:
        """Return (name, header object) for each field of a header model, under its alias."""
        schema = model_schema(model)
        required = set(schema.get("required", ()))
        objects = []
        for name, property_schema in schema["properties"].items():
            header_schema = dict(property_schema)
            header: dict[str, Any] = {"schema": header_schema, "required": name in required}
            description = header_schema.pop("description", None)
            if description is not None:
                header["description"] = description
            examples = header_schema.pop("examples", None)
            if examples:
                header["example"] = examples[0]
            objects.append((name, header))
        return objects

    def _cap_timeout(self, body_schema: dict[str, Any]) -> None:
        timeout = body_schema.get("properties", {}).get("timeout_ms")
        if timeout is None:
            return
        settings: Settings = self._app.extensions[SETTINGS_KEY]
        for option in timeout.get("anyOf", [timeout]):
            if option.get("type") == "integer":
                option["maximum"] = settings.engine.job_timeout_ms


def _job_links() -> dict[str, Any]:
    return {
        name: {
            "operationId": operation_id,
            "parameters": {"job_id": "$response.body#/jobId"},
            "description": f"The new job's {name} operation",
        }
        for name, operation_id in _JOB_LINKS.items()
    }


def build_document(app: Quart) -> None:
    """Build and keep ``app``'s OpenAPI document now, so no request pays for it.

    Blocks for about 0.25 s on a 2-core VM, so the server calls it in a
    worker thread before it accepts connections. The build takes no lock, so
    a request for the document during this call would build it again.
    """
    app.extensions["QUART_SCHEMA"].openapi_provider.schema()


def install_openapi(app: Quart) -> None:
    """Serve the OpenAPI document at ``OPENAPI_PATH`` and Swagger UI at ``DOCS_PATH``.

    quart-schema replaces ``app.json`` with its own provider, so JSON
    settings such as ``sort_keys`` must be applied after this call.
    """
    app.config["QUART_SCHEMA_SWAGGER_JS_URL"] = f"{DOCS_STATIC_PATH}/swagger-ui-bundle.js"
    app.config["QUART_SCHEMA_SWAGGER_CSS_URL"] = f"{DOCS_STATIC_PATH}/swagger-ui.css"
    QuartSchema(
        app,
        openapi_path=OPENAPI_PATH,
        swagger_ui_path=DOCS_PATH,
        # Both pages load their scripts from public CDNs.
        redoc_ui_path=None,
        scalar_ui_path=None,
        info={
            "title": "download-jobs",
            "version": importlib.metadata.version("download-jobs"),
            "description": _API_DESCRIPTION,
        },
        openapi_provider_class=DocumentProvider,
    )
    assets = Blueprint(
        "docs",
        __name__,
        static_folder=str(swagger_ui.static_path),
        static_url_path=DOCS_STATIC_PATH,
    )
    app.register_blueprint(assets)
