"""The API's app factory."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from cdr.api.auth import TokenAuthority
from cdr.api.console import console_routes
from cdr.api.cursor import CursorCodec
from cdr.api.docs import docs_routes
from cdr.api.errors import ApiError, Internal, InvalidParameter, MethodNotAllowed, NotFound, error_response
from cdr.api.feed import FeedRoutes
from cdr.api.middleware import (
    REQUEST_ID,
    RESPONSE_STATUSES,
    UNMATCHED_ROUTE,
    CancelOnDisconnect,
    ObservedResponses,
    RequestLimits,
)
from cdr.api.openapi import openapi_document
from cdr.api.ratelimit import TenantRateLimiter
from cdr.api.responses import OrjsonResponse
from cdr.api.routes import CdrRoutes
from cdr.api.tenants import load_directory
from cdr.api.webhooks import WebhookRoutes
from cdr.metrics import Metrics
from cdr.ops import ops_routes
from cdr.settings import ApiSettings, CommonSettings, SettingsError
from cdr.store import Store
from cdr.store.feed_hub import FeedHub, feed_hub_for
from cdr.store.migrations import SchemaGate

log = logging.getLogger(__name__)

ExtraReady = Callable[[], Awaitable[tuple[bool, dict[str, str]]]]


# Below the chart's probe timeout (3 s): a stuck ClickHouse reads as "no answer", not as
# a probe that timed out without an answer.
READY_TIMEOUT_S = 2.0


def _readiness(store: Store, metrics: Metrics, extra_ready: ExtraReady | None) -> ExtraReady:
    """Ready means this process can serve: once it has seen the schema current. ClickHouse
    going away later leaves it ready: one blip would otherwise empty the Service of every
    API pod at once and clients would get the ingress's own HTML 503, where each request
    answers our JSON 503 with Retry-After itself. Store health goes to ``cdr_store_up``
    (and its alert), and to the checks here for a person reading them."""
    gate = SchemaGate(store)

    async def check_store() -> tuple[bool, bool, str]:
        reachable = await store.ping()
        current, schema = await gate.check() if reachable else (gate.current, "current" if gate.current else "")
        return reachable, current, schema

    async def ready() -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        try:
            reachable, current, schema = await asyncio.wait_for(check_store(), READY_TIMEOUT_S)
            checks["clickhouse"] = "ok" if reachable else "unreachable"
        except TimeoutError:
            reachable, current, schema = False, gate.current, "current" if gate.current else ""
            checks["clickhouse"] = f"no answer within {READY_TIMEOUT_S:g} s"
        metrics.store_up.set(1 if reachable else 0)
        if not reachable and current:
            checks["clickhouse"] += " (requests answer 503 until it is back)"
        checks["schema"] = schema or "not checked yet: ClickHouse did not answer"
        ok = current
        if extra_ready is not None:
            extra_ok, extra_checks = await extra_ready()
            checks.update(extra_checks)
            ok = ok and extra_ok
        return ok, checks

    return ready


def api_ops_app(store: Store, metrics: Metrics) -> Starlette:
    """/healthz, /readyz and /metrics of `cdr api`, for its ops port."""
    return Starlette(routes=ops_routes(metrics, _readiness(store, metrics, None)))


def create_app(
    api: ApiSettings,
    common: CommonSettings,
    store: Store,
    metrics: Metrics,
    *,
    extra_ready: ExtraReady | None = None,
    close_store: bool = False,
    ops_routes_here: bool = True,
    clock: Callable[[], float] = time.monotonic,
    feed_hub: FeedHub | None = None,
) -> Starlette:
    """The API over an open store. ``close_store``: the app's lifespan closes it.
    ``ops_routes_here``: /healthz, /readyz and /metrics on this app too (``cdr run``, one
    port); ``cdr api`` serves them on ``CDR_OPS_PORT`` instead (``api_ops_app``), so the
    public port and an Ingress in front of it expose the CDR routes only. ``clock``: the one
    the token and tenant files are rechecked by (a test moves it on instead of waiting).
    ``feed_hub``: the change feed's shared reader, when the caller pokes it (`cdr run`'s
    ingestor, after each stored batch); else one of its own."""
    if api.cursor_secret is None:
        raise SettingsError("CDR_CURSOR_SECRET is required by the API (at least 32 characters)")
    watched = [path for path in (api.api_tokens_file, common.tenants_file) if path is not None]
    tokens = TokenAuthority(lambda: load_directory(api, common), watched, clock)
    if not tokens.tenants:
        log.warning("no API tokens configured (CDR_API_TOKENS / CDR_API_TOKENS_FILE): every request gets 401")
    cursors = CursorCodec(
        api.cursor_secret.get_secret_value().encode(),
        api.cursor_ttl_s,
        previous=api.cursor_secret_previous.get_secret_value().encode() if api.cursor_secret_previous else None,
        feed_ttl_s=api.feed_retention_days * 86_400,
    )
    cdr = CdrRoutes(api, store, tokens, cursors, TenantRateLimiter())
    hub = feed_hub or feed_hub_for(api, store, metrics)
    feed = FeedRoutes(api, store, cdr, cursors, hub, metrics)
    document = openapi_document(api)

    ready = _readiness(store, metrics, extra_ready)

    async def openapi(request: Request) -> Response:
        return OrjsonResponse(document)

    routes: list[Route | Mount] = [
        # Before the lookup route, whose {key:path} would take "changes" for a Call-ID.
        *feed.routes(),
        *WebhookRoutes(api, common, store, cdr).routes(),
        *cdr.routes(),
        Route("/openapi.json", openapi, methods=["GET"]),
        *docs_routes(),
        *console_routes(),
        *(ops_routes(metrics, ready) if ops_routes_here else []),
    ]
    metrics.count_routes([*(route.path for route in routes), UNMATCHED_ROUTE], RESPONSE_STATUSES)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info("api ready", extra={"tenants": tokens.tenants, "embedded": store.dsn.startswith("chdb:")})
        try:
            yield
        finally:
            # Streams end (their clients reconnect elsewhere) before the store goes.
            await hub.close()
            await feed.close()
            if close_store:
                await store.close()

    async def on_http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):
            raise exc
        if exc.status_code == 404:
            return error_response(NotFound("no such route"))
        if exc.status_code == 405:
            methods = [m.strip() for m in (exc.headers or {}).get("Allow", "GET, HEAD").split(",")]
            allowed = ", ".join(sorted(methods, key=lambda m: (m != "GET", m)))  # a stable order
            return error_response(MethodNotAllowed(f"only {allowed}", headers={"Allow": allowed}))
        log.warning("unexpected HTTP error", extra={"status": exc.status_code, "detail": exc.detail})
        return error_response(InvalidParameter(exc.detail or "bad request"))

    async def on_api_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, ApiError):
            raise exc
        return error_response(exc)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        request_id = request.scope.get(REQUEST_ID)
        log.exception("unhandled error", extra={"path": request.url.path, "request_id": request_id})
        return error_response(Internal(f"internal error (request id {request_id})"))

    app = Starlette(
        routes=routes,
        middleware=[
            # Outermost first. The request id and no-store reach every response, errors included.
            Middleware(ObservedResponses, metrics=metrics, routes=routes),
            Middleware(RequestLimits, max_url_bytes=api.api_max_url_bytes, max_header_bytes=api.api_max_header_bytes),
            # Level 1 (nginx's default for dynamic content, and the export's): a change-feed
            # page of 1,000 items (~450 KB of JSON) costs ~2.5 ms to compress, against ~4.5 at
            # level 5, for ~13 % more bytes (bench/RESULTS.md, session 15).
            Middleware(GZipMiddleware, minimum_size=1024, compresslevel=1),
            Middleware(CancelOnDisconnect),
        ],
        exception_handlers={HTTPException: on_http_error, ApiError: on_api_error, Exception: on_unexpected},
        lifespan=lifespan,
    )
    # No 307 to the path without its trailing slash: a lookup key ending in a newline
    # and "/" (path routes do not match a newline) was redirected instead of a 404.
    app.router.redirect_slashes = False
    # Run by the HTTP server when it starts to stop, before it waits for open connections
    # (cdr.serve): the feed's streams and long polls end then, not after their clients leave.
    app.state.on_stopping = hub.close
    return app
