"""Running ASGI apps inside a process that owns its own signal handling."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator

import h11
import orjson
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from cdr.settings import ApiSettings


class _QuietServer(uvicorn.Server):
    # The process installs its own SIGINT/SIGTERM handlers, which stop the ingestor
    # gracefully before the HTTP server; uvicorn must not take them over.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn waits for open connections to close before the app's lifespan shutdown,
        # which is what would end a long-lived response (the change feed's SSE streams):
        # a stop would wait for every such client to leave. The app's ``state.on_stopping``
        # ends them first. (sse-starlette's own shutdown detection looks for uvicorn's
        # signal handler, which this server does not install.)
        state = getattr(self.config.app, "state", None)
        on_stopping: Callable[[], Awaitable[None]] | None = getattr(state, "on_stopping", None)
        if on_stopping is not None:
            await on_stopping()
        await super().shutdown(sockets)


_LINGER_S = 2.0


class _JsonErrorsProtocol(H11Protocol):
    """A request the HTTP parser refuses (a head beyond its buffer, broken framing) gets
    the API's JSON error model instead of uvicorn's plain text. The app's own limits
    (``RequestLimits``) are lower, so this is only met past them."""

    _discarding = False

    def send_400_response(self, msg: str) -> None:
        limit = self.config.h11_max_incomplete_event_size or 0
        too_big = len(self.conn.trailing_data[0]) >= limit
        status, code, message = (
            (431, "headers_too_large", "the request line and headers are larger than the server accepts")
            if too_big
            else (400, "invalid_parameter", "malformed HTTP request")
        )
        body = orjson.dumps({"error": {"code": code, "message": message}})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (h11.Response(status_code=status, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        # A lingering close: closing a socket with unread request bytes resets the
        # connection, and the client may lose the answer. Send FIN, read and drop the
        # rest for a moment, then close.
        self._discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if not self._discarding:
            super().data_received(data)


def http_server(app: ASGIApp, host: str, port: int, api: ApiSettings) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=_JsonErrorsProtocol,
        h11_max_incomplete_event_size=api.api_max_url_bytes + api.api_max_header_bytes + 4096,
        timeout_keep_alive=api.api_keep_alive_s,
    )
    return _QuietServer(config)
