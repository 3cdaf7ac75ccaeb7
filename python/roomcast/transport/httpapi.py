"""HTTP/1.1 for the server API: one `ApiConnection` per connection whose request targets
`/api/`, parsed by httptools (llhttp), answered by the API (`roomcast.serving.api.Api`).

picows answers only GET and closes after each answer, so the listener hands these
connections over before picows reads them (`roomcast.transport.upgrade.FirstBytesGuard`).
Here: keep-alive, pipelined requests handled together and answered in order, chunked
bodies, and bounds on everything a client controls: the head (`HEAD_LIMIT`), the body
(`Api.body_limit`: 413 from the Content-Length, or as soon as a chunked body passes it,
then close), the requests queued (`QUEUE_LIMIT`, reading pauses past it), the time to send
a request (`REQUEST_TIMEOUT`) and an idle keep-alive connection (`IDLE_TIMEOUT`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

import httptools
import orjson

logger = logging.getLogger("roomcast")

HEAD_LIMIT = 16 * 1024
QUEUE_LIMIT = 16
REQUEST_TIMEOUT = 30.0
IDLE_TIMEOUT = 60.0
LINGER = 2.0

API_PREFIX = "/api/"
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_JSON = (("Content-Type", "application/json"),)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = _JSON


class ApiError(Exception):
    """An answer other than 200: `{"error": {"code", "message"}}` with `status`."""

    def __init__(self, status: int, code: str, message: str, *, allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.allow = allow

    def response(self) -> Response:
        body = orjson.dumps({"error": {"code": self.code, "message": self.message}})
        headers = _JSON if self.allow is None else (*_JSON, ("Allow", self.allow))
        return Response(self.status, body, headers)


class Api(Protocol):
    """What a connection asks of the API (`roomcast.serving.api.Api`)."""

    body_limit: int

    def head(
        self, method: str, path: str, headers: Mapping[str, str], length: int | None
    ) -> Response | None: ...
    async def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Response: ...
    def too_large(self) -> ApiError: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


def render(response: Response, keep_alive: bool) -> bytes:
    status = response.status
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in response.headers]
    lines.append(f"Content-Length: {len(response.body)}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


class _Request:
    __slots__ = ("answer", "body", "headers", "keep_alive", "method", "path", "size", "task")

    def __init__(self) -> None:
        self.method = ""
        self.path = ""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.answer: Response | None = None  # decided from the head: the body is dropped
        self.task: asyncio.Task[Response] | None = None  # the API answering it
        self.keep_alive = True


class ApiConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to the API (see the module docstring)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self._parser = httptools.HttpRequestParser(self)
        self._transport: Any = None
        self._loop = asyncio.get_running_loop()
        self._current: _Request | None = None
        self._url = b""
        self._head_bytes = 0
        self._queue: deque[_Request] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._closing = False
        self._deadline: asyncio.TimerHandle | None = None
        self._parser_headers_done = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._arm(REQUEST_TIMEOUT)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._current is None or not self._parser_headers_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # (refused at its head already)
            self._fail(400, "upgrade is not supported on /api/")
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ApiError):
                self._fail_with(cause)
            else:
                logger.exception("api: request handling failed")
                self._fail(500, "internal error")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")
        else:
            if self._head_bytes > HEAD_LIMIT and self._current is not None:
                self._fail(431, f"request head larger than {HEAD_LIMIT} bytes")

    def eof_received(self) -> bool | None:
        # Answer what was asked (a half-closed client still reads), then close.
        self._closing = True
        if self._worker is None or self._worker.done():
            return None
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._deadline is not None:
            self._deadline.cancel()
        if self._worker is not None:
            self._worker.cancel()
        for request in self._queue:
            if request.task is not None:
                request.task.cancel()
        self._writable.set()

    def close(self) -> None:
        """Close now (the server is stopping)."""
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._current = _Request()
        self._url = b""
        self._parser_headers_done = False
        self._arm(REQUEST_TIMEOUT)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > HEAD_LIMIT:
            raise ApiError(414, "uri_too_long", f"request target longer than {HEAD_LIMIT} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._current
        assert request is not None
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        request.headers[key] = f"{request.headers[key]}, {text}" if key in request.headers else text

    def on_headers_complete(self) -> None:
        request = self._current
        assert request is not None
        self._parser_headers_done = True
        self._head_bytes = 0
        request.method = self._parser.get_method().decode("latin-1")
        request.path = self._url.decode("latin-1").partition("?")[0]
        request.keep_alive = self._parser.should_keep_alive()
        if self._parser.should_upgrade():
            raise ApiError(400, "bad_request", "upgrade is not supported on /api/")
        length_text = request.headers.get("content-length")
        length = int(length_text) if length_text is not None and length_text.isdigit() else None
        answer = self.api.head(request.method, request.path, request.headers, length)
        if answer is not None and answer.status == 413:
            raise ApiError(413, "too_large", f"body larger than {self.api.body_limit} bytes")
        request.answer = answer

    def on_body(self, body: bytes) -> None:
        request = self._current
        assert request is not None
        if request.answer is not None:
            return  # answered from the head: the body is read and dropped
        request.size += len(body)
        if request.size > self.api.body_limit:
            raise self.api.too_large()
        request.body.append(body)

    def on_message_complete(self) -> None:
        request, self._current = self._current, None
        assert request is not None
        if request.answer is None:
            # Started now, so that pipelined requests reach the broker together (one write);
            # their answers still go out in order (`_work`).
            request.task = self._loop.create_task(
                self.api.handle(
                    request.method, request.path, request.headers, b"".join(request.body)
                )
            )
        self._queue.append(request)
        if len(self._queue) >= QUEUE_LIMIT and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        if self._worker is None or self._worker.done():
            self._worker = self._loop.create_task(self._work())

    # -- answering -----------------------------------------------------------------------

    async def _work(self) -> None:
        queue = self._queue
        while queue:
            request = queue.popleft()
            if request.answer is not None:
                response = request.answer
            else:
                assert request.task is not None
                try:
                    response = await request.task
                except Exception:
                    logger.exception("api: %s %s failed", request.method, request.path)
                    response = ApiError(500, "internal", "internal error").response()
            keep_alive = request.keep_alive and not (self._closing and not queue)
            await self._writable.wait()
            if self._transport.is_closing():
                return
            self._transport.write(render(response, keep_alive))
            if not keep_alive:
                self._linger()
                return
            if self._paused and len(queue) < QUEUE_LIMIT // 2:
                self._paused = False
                self._transport.resume_reading()
        self._arm(IDLE_TIMEOUT)
        if self._closing:
            self._transport.close()

    def _linger(self) -> None:
        """Close after an answer, without losing it: a close with unread bytes (the rest of
        a refused body) would reset the connection, and the client could lose the answer.
        So: end our side, drop what still comes, close at the client's EOF or after
        `LINGER` seconds."""
        self._closing = True
        transport = self._transport
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._loop.call_later(LINGER, transport.close)

    def _arm(self, timeout: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._loop.call_later(timeout, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        if self._worker is not None and not self._worker.done():
            self._arm(REQUEST_TIMEOUT)  # still answering
            return
        self._transport.close()

    def _fail(self, status: int, message: str) -> None:
        code = {400: "bad_request", 431: "head_too_large", 500: "internal"}.get(status, "error")
        self._fail_with(ApiError(status, code, message))

    def _fail_with(self, error: ApiError) -> None:
        """Answer an unreadable request (after those queued before it) and close."""
        self._closing = True
        self._current = None
        self._queue.append(_failed(error))
        if self._worker is None or self._worker.done():
            self._worker = self._loop.create_task(self._work())


def _failed(error: ApiError) -> _Request:
    request = _Request()
    request.answer = error.response()
    request.keep_alive = False
    return request


__all__ = ["API_PREFIX", "Api", "ApiConnection", "ApiError", "Response", "render"]
