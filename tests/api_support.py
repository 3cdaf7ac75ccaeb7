"""Tools for tests of the server HTTP API: a keep-alive HTTP client (http.client, in a
thread) and every answer checked against the OpenAPI description shipped in the package,
with maintained validators (openapi-spec-validator for the document, openapi-schema-validator
for each answer)."""

from __future__ import annotations

import asyncio
import http.client
import json
from importlib import resources
from typing import Any

from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

KEY = "api-tests-key-3f9c0b7e"
SPEC_URI = "urn:roomcast:openapi"
SPEC: dict[str, Any] = json.loads(
    resources.files("roomcast.serving").joinpath("openapi.json").read_text()
)
validate_spec(SPEC)
_REGISTRY = Registry().with_resource(
    SPEC_URI, Resource.from_contents(SPEC, default_specification=DRAFT202012)
)


def _schema_ref(ref: str) -> dict[str, Any]:
    return {"$ref": SPEC_URI + ref}


def response_schema(path: str, method: str, status: int) -> dict[str, Any]:
    """The schema the description gives for this answer (KeyError: it gives none)."""
    answer = SPEC["paths"][path][method.lower()]["responses"][str(status)]
    if "$ref" in answer:
        answer = SPEC["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    return _schema_ref(answer["content"]["application/json"]["schema"]["$ref"])


def check_answer(path: str, method: str, status: int, body: Any) -> None:
    """Raise unless `body` is what the description promises for `status` on `path`."""
    OAS31Validator(response_schema(path, method, status), registry=_REGISTRY).validate(body)


def request_valid(path: str, body: Any, method: str = "POST") -> bool:
    """Whether the description accepts `body` as this endpoint's request."""
    content = SPEC["paths"][path][method.lower()]["requestBody"]["content"]
    schema = _schema_ref(content["application/json"]["schema"]["$ref"])
    return OAS31Validator(schema, registry=_REGISTRY).is_valid(body)


class ApiClient:
    """One keep-alive connection to a node's API. Every answer is checked against the
    description (`check`), for the path asked (unknown paths aside)."""

    def __init__(self, port: int, key: str | None = KEY, timeout: float = 10.0) -> None:
        self.port = port
        self.key = key
        self.timeout = timeout
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def _call(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(2):
            try:
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                return response.status, dict(response.getheaders()), response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed the kept-alive connection (after an error answer).
                self._conn.close()
                self._conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=self.timeout
                )
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def raw(
        self,
        path: str,
        body: bytes | None,
        method: str = "POST",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        sent = {"Content-Type": "application/json"}
        if self.key is not None:
            sent["X-API-Key"] = self.key
        sent.update(headers or {})
        status, got, data = await asyncio.to_thread(self._call, method, path, body, sent)
        assert got.get("Content-Type") == "application/json", (status, got, data)
        parsed = json.loads(data)
        if path in SPEC["paths"] and method.lower() in SPEC["paths"][path]:
            check_answer(path, method, status, parsed)
        else:  # a path or method the description has not: 404 or 405, as an Error
            assert status in (404, 405), (path, method, status, parsed)
            error = _schema_ref("#/components/schemas/Error")
            OAS31Validator(error, registry=_REGISTRY).validate(parsed)
        return status, got, parsed

    async def call(
        self, path: str, body: Any = None, method: str = "POST", **headers: str
    ) -> tuple[int, Any]:
        raw = None if body is None else json.dumps(body).encode()
        status, _, parsed = await self.raw(path, raw, method, headers)
        return status, parsed

    async def ok(self, path: str, body: Any = None, method: str = "POST") -> Any:
        status, parsed = await self.call(path, body, method)
        assert status == 200, (path, body, status, parsed)
        return parsed

    def close(self) -> None:
        self._conn.close()
