"""The API's OpenAPI 3.1 document, generated: the route table (:data:`sidecar.api.app.
ENDPOINTS`: method, path, parameters, status codes) and the request and response models
(:mod:`sidecar.api.models`) it names. Nothing about a body is written twice.

``tests/api`` checks that every route the application serves is described, and that
every response it gives validates against the document.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .. import __version__
from .models import Error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: What each error status means, for every endpoint that can answer it.
ERRORS: dict[int, str] = {
    400: "The request does not match this document (a parameter or the body is "
         "malformed); the message names which.",
    401: "Missing or wrong bearer token.",
    403: "A write with a read token, or with no admin token configured.",
    404: "What the path or a parameter names does not exist.",
    405: "The path does not take this method.",
    413: "The body is too large.",
    409: "The request conflicts with what is stored (an account that exists already, "
         "a balance that may not go below zero, a document that fails its hash check).",
    422: "Well formed, but refused by a rule this document cannot state (a deck's "
         "contents, to before from, a time outside 1970..9999 UTC); the message says "
         "which, and nothing was changed.",
}


@dataclass(frozen=True)
class Param:
    """A query, path or header parameter, with the JSON schema the handler enforces."""

    name: str
    where: Literal["query", "path", "header"]
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False

    def to_openapi(self) -> dict[str, Any]:
        return {"name": self.name, "in": self.where, "description": self.description,
                "required": self.required or self.where == "path", "schema": self.schema}


@dataclass(frozen=True, eq=False)  # hashed by identity: the document is cached
class Endpoint:
    """One route: what it takes and what it answers (``response`` a model, or for a
    document that is not JSON its media type)."""

    method: str
    path: str
    handler: Handler
    summary: str
    response: type[BaseModel] | str
    status: int = 200
    also: tuple[tuple[int, str], ...] = ()  # other successes: (status, what it means)
    params: tuple[Param, ...] = ()
    body: type[BaseModel] | dict[str, Any] | None = None  # a model, or a JSON schema
    body_media: str = "application/json"
    body_required: bool = True
    errors: tuple[int, ...] = ()
    public: bool = False  # no token needed

    @property
    def writes(self) -> bool:
        return self.method != "GET"


def _schemas(endpoints: tuple[Endpoint, ...]) -> tuple[dict[Any, Any], dict[str, Any]]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(Error, "serialization")]
    for ep in endpoints:
        if isinstance(ep.response, type):
            wanted.append((ep.response, "serialization"))
        if isinstance(ep.body, type):
            wanted.append((ep.body, "validation"))
    keys, defs = models_json_schema(list(dict.fromkeys(wanted)),
                                    ref_template="#/components/schemas/{model}")
    return keys, defs.get("$defs", {})


def _operation(ep: Endpoint, keys: dict[Any, Any]) -> dict[str, Any]:
    if isinstance(ep.response, str):  # not a model: a document, or this one
        content: dict[str, Any] = {ep.response: {"schema": {
            "type": "object" if ep.response == "application/json" else "string"}}}
    else:
        content = {"application/json": {"schema": keys[(ep.response, "serialization")]}}
    responses: dict[str, Any] = {str(ep.status): {"description": "OK" if ep.status == 200
                                                  else "Created", "content": content}}
    for status, what in ep.also:
        responses[str(status)] = {"description": what, "content": content}
    codes = set(ep.errors) | ({401} if not ep.public else set()) | \
        ({400, 403} if ep.writes else set())
    if any(p.where == "path" for p in ep.params):
        codes.add(404)
    for code in sorted(codes):
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    op: dict[str, Any] = {"summary": ep.summary, "operationId": _operation_id(ep),
                          "responses": responses}
    if ep.handler.__doc__:
        op["description"] = " ".join(ep.handler.__doc__.split())
    if ep.params:
        op["parameters"] = [p.to_openapi() for p in ep.params]
    if ep.body is not None:
        schema = keys[(ep.body, "validation")] if isinstance(ep.body, type) else ep.body
        op["requestBody"] = {"required": ep.body_required,
                             "content": {ep.body_media: {"schema": schema}}}
    if ep.public:
        op["security"] = []
    elif ep.writes:
        op["description"] = op.get("description", "") + " Needs an admin token."
    return op


def _operation_id(ep: Endpoint) -> str:
    words = re.findall(r"[a-z0-9]+", ep.path.replace("{", "by_").lower())
    return ep.method.lower() + "_" + "_".join(words)


@functools.cache
def _document(endpoints: tuple[Endpoint, ...]) -> dict[str, Any]:
    keys, defs = _schemas(endpoints)
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep, keys)
    error = keys[(Error, "serialization")]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Kamailio billing sidecar API",
            "version": __version__,
            "description": "CDRs with their rating, rate decks, balances, live calls, "
                           "invoices, reconciliation, analytics, limits and fraud events; "
                           "with an admin token, accounts, top-ups, adjustments, suspension, "
                           "limits and deck imports. Money is an exact decimal string (no "
                           "exponent, trailing zeros dropped); times are ISO 8601 UTC with "
                           "milliseconds. Errors are JSON: {\"error\": message, \"errors\": "
                           "[every problem, for a refused deck]}.",
        },
        "servers": [{"url": "http://127.0.0.1:8480"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": defs,
            "responses": {f"E{code}": {"description": text, "content": {
                "application/json": {"schema": error}}} for code, text in ERRORS.items()},
        },
    }


def openapi_document(endpoints: tuple[Endpoint, ...] | None = None) -> dict[str, Any]:
    """The OpenAPI document of ``endpoints`` (default: the API's route table), a copy
    the caller may change."""
    if endpoints is None:
        from .app import ENDPOINTS

        endpoints = ENDPOINTS
    return copy.deepcopy(_document(endpoints))
