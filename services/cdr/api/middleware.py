"""Pure ASGI middleware: request limits; the headers, log line and metrics of every response."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from contextlib import suppress

from starlette.datastructures import MutableHeaders
from starlette.routing import Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cdr.api.errors import ApiError, HeadersTooLarge, InvalidParameter, UriTooLong, error_response, error_statuses
from cdr.metrics import Metrics

log = logging.getLogger("cdr.api.access")

REQUEST_ID = "cdr.request_id"
EXTRA_HEADERS = "cdr.response_headers"
CLIENT_LEFT = "cdr.client_left"
# nginx's code for a request whose client closed the connection before the answer.
_CLIENT_CLOSED = 499
# The route label of a request no route matches (never its raw path: unbounded).
UNMATCHED_ROUTE = "other"
# The statuses ObservedResponses counts that are known up front (their series start at 0).
RESPONSE_STATUSES = (200, *error_statuses(), _CLIENT_CLOSED)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}", re.ASCII)


async def _send_error(send: Send, error: ApiError) -> None:
    response = error_response(error)
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class RequestLimits:
    """Oversized URLs and headers, and a second Authorization header, get the API's JSON
    error before any route runs. The HTTP server's own limit sits above these (see
    ``cdr.serve``), so these are the ones a client meets."""

    def __init__(self, app: ASGIApp, max_url_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_url = max_url_bytes
        self.max_headers = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            error = self._problem(scope)
            if error is not None:
                await _send_error(send, error)
                return
        await self.app(scope, receive, send)

    def _problem(self, scope: Scope) -> ApiError | None:
        url = len(scope.get("raw_path") or scope["path"].encode()) + 1 + len(scope["query_string"])
        if url > self.max_url:
            return UriTooLong(f"the request URL is {url} bytes; the limit is {self.max_url}")
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        size = sum(len(name) + len(value) + 4 for name, value in headers)
        if size > self.max_headers:
            return HeadersTooLarge(f"the request headers are {size} bytes; the limit is {self.max_headers}")
        if sum(1 for name, _ in headers if name == b"authorization") > 1:
            return InvalidParameter("give exactly one Authorization header", param="Authorization")
        return None


class ObservedResponses:
    """``X-Request-Id`` (the client's if sane, else a new one) on every response and in the
    request's log line; ``Cache-Control: no-store`` on tenant data; headers a route
    left in the scope (rate-limit state); request count and latency by route template
    (never by raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[Route | Mount]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope[REQUEST_ID] = request_id
        extra: list[tuple[str, str]] = []
        scope[EXTRA_HEADERS] = extra
        tenant_data = scope["path"].startswith("/v1/")
        status = 500
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-Id"] = request_id
                if tenant_data:
                    headers["Cache-Control"] = "no-store"
                for name, value in extra:
                    headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if scope.get(CLIENT_LEFT):
                status = _CLIENT_CLOSED
            elapsed = time.perf_counter() - started
            route = next((r.path for r in self.routes if r.matches(scope)[0] == Match.FULL), UNMATCHED_ROUTE)
            self.metrics.http_requests.labels(route=route, status=str(status)).inc()
            self.metrics.http_seconds.labels(route=route).observe(elapsed)
            log.log(
                logging.INFO if tenant_data else logging.DEBUG,  # probes and scrapes stay out of INFO
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"][:200],  # never the query string: it may hold phone numbers
                    "status": status,
                    "ms": round(elapsed * 1000, 1),
                },
            )


class CancelOnDisconnect:
    """A client that goes away stops its request: the handler is cancelled, so a read
    still waiting for a ClickHouse worker never runs, a running one is killed on a server
    (``Store.query``), and the tenant's slot is free again. Without this the handler ran
    to its end for nobody (the HTTP server only tells the app through ``receive``).

    Messages from the client go to the app unchanged, through a queue this middleware
    fills while it listens for the disconnect."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        answered = False

        async def sending(message: Message) -> None:
            nonlocal answered
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True

        async def listen() -> None:
            while True:
                message = await receive()
                inbox.put_nowait(message)
                if message["type"] == "http.disconnect":
                    return

        async def handle() -> None:
            await self.app(scope, inbox.get, sending)

        handling = asyncio.create_task(handle())
        listening = asyncio.create_task(listen())
        try:
            await asyncio.wait((handling, listening), return_when=asyncio.FIRST_COMPLETED)
            # After the last byte the server reports a disconnect too; that one is no news.
            if not handling.done() and not answered:
                scope[CLIENT_LEFT] = True
                handling.cancel()
                with suppress(asyncio.CancelledError):
                    await handling
                return
            await handling
        finally:
            listening.cancel()
            handling.cancel()  # our own caller was cancelled (server shutdown)
