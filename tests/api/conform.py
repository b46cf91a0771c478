"""Checking a real response against the API's generated OpenAPI document: its status is
one the operation declares, its content type the one declared, its JSON body valid
under the declared schema (required fields, no undeclared field, money and time
patterns); and, anywhere in the body, no amount in exponent notation and one time
format."""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs

from sidecar.api import openapi_document

DOC = openapi_document()
_TIME_LIKE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:")
_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$")
_EXPONENT = re.compile(r"^[+-]?[0-9.]+[eE][+-]?[0-9]+$")
_validators: dict[tuple[str, str, str], Any] = {}


def operation(method: str, template: str) -> dict[str, Any]:
    op: dict[str, Any] = DOC["paths"][template][method.lower()]
    return op


def response_spec(method: str, template: str, status: int) -> dict[str, Any]:
    responses = operation(method, template)["responses"]
    assert str(status) in responses, f"{method} {template} answered {status}, " \
        f"which the document does not declare ({sorted(responses)})"
    spec: dict[str, Any] = responses[str(status)]
    if "$ref" in spec:
        spec = DOC["components"]["responses"][spec["$ref"].rsplit("/", 1)[1]]
    return spec


def check(method: str, template: str, status: int, content_type: str,
          body: Any = None) -> None:
    """Fail unless this response is what the document says ``method template`` answers
    with ``status``; ``body`` is the parsed JSON (for a JSON response)."""
    spec = response_spec(method, template, status)
    assert content_type in spec["content"], (method, template, status, content_type)
    if content_type != "application/json" or template == "/openapi.json":
        return
    key = (method, template, str(status))
    if key not in _validators:
        schema = {**spec["content"][content_type]["schema"], "components": DOC["components"]}
        _validators[key] = jsonschema_rs.Draft202012Validator(schema, validate_formats=True)
    errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}"
              for e in _validators[key].iter_errors(body)]
    assert not errors, (method, template, status, errors[:5])
    plain(body)


def plain(value: Any, where: str = "") -> None:
    """No amount anywhere in exponent notation; every time in the one format."""
    if isinstance(value, dict):
        for k, v in value.items():
            plain(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            plain(v, f"{where}[{i}]")
    elif isinstance(value, str):
        assert not _EXPONENT.match(value), f"{where}: {value!r} in exponent notation"
        if _TIME_LIKE.match(value):
            assert _TIME.match(value), f"{where}: {value!r} is not the API's time format"
