"""One webhook POST: signed, to a checked address, bounded in time and in what is read back."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from cdr.metrics import DeliveryOutcome
from cdr.notify.signing import signature
from cdr.notify.ssrf import Refused, Resolver, target

# What is read of an answer's body: enough for an excerpt, never a large one into memory.
_BODY_LIMIT = 4096
_EXCERPT = 200


@dataclass(frozen=True)
class Attempt:
    """How one POST ended. ``retry_after_s``: what the receiver asked for (429/503)."""

    outcome: DeliveryOutcome
    status: int = 0
    reason: str = ""
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "delivered"


def retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` in seconds: delay-seconds or an HTTP date (None: absent or unreadable)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def backoff_s(attempt: int, *, base_s: float, cap_s: float, asked_s: float | None, rng: random.Random) -> float:
    """The wait before retry number ``attempt`` (0: the first): full jitter over
    base x 2^attempt up to the cap (retries of many endpoints do not fall in step), at
    least what the receiver asked for in Retry-After, never more than the cap."""
    ceiling = min(cap_s, base_s * 2 ** min(attempt, 32))
    wait = rng.uniform(0, ceiling)
    if asked_s is not None:
        wait = max(wait, asked_s)
    return min(wait, cap_s)


def _excerpt(text: str) -> str:
    return " ".join(text.split())[:_EXCERPT]


class Sender:
    """POSTs batches: resolves and checks the host (``cdr.notify.ssrf``) before each
    connection, then sends to the checked IP with the name as ``Host`` and as the TLS SNI
    name (certificates are verified for the name). Redirects are not followed.

    Each endpoint has a client (a connection pool) of its own (``client``): it keeps one
    connection alive, and httpcore's pool scans every connection it holds for each request,
    so one pool for a hundred endpoints spent most of the notifier's time there (measured:
    9 of 21 s of a 100-endpoint run)."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        timeout_s: float,
        max_concurrency: int,
        allow_private: bool,
        resolver: Resolver,
    ) -> None:
        self._timeout_s = timeout_s
        self._allow_private = allow_private
        self._resolve = resolver
        self._slots = asyncio.Semaphore(max_concurrency)
        self._timeouts = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        # One TLS context (the CA bundle) for every client: loading it took 30 ms per client.
        self._tls = httpx.create_ssl_context()

    def client(self) -> httpx.AsyncClient:
        """An endpoint's own client: one request at a time, its connection kept alive."""
        return httpx.AsyncClient(
            follow_redirects=False,
            verify=self._tls,
            timeout=self._timeouts,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            trust_env=False,  # no proxy from the environment: the address checked is the one reached
        )

    async def post(
        self, http: httpx.AsyncClient, url: str, secrets: tuple[str, ...], msg_id: str, body: bytes
    ) -> Attempt:
        try:
            where = await target(url, self._resolve, allow_private=self._allow_private)
        except Refused as exc:
            return Attempt("refused", reason=f"refused: {exc}")
        # A global bound on requests in flight; an endpoint holds at most one slot, and none
        # while it waits to retry, so a dead endpoint holds one slot for one timeout at most.
        async with self._slots:
            stamp = int(time.time())
            headers = {
                "Host": where.host,
                "Content-Type": "application/json",
                "User-Agent": "cdr-notify",
                "webhook-id": msg_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": signature(secrets, msg_id, stamp, body),
            }
            extensions = {} if where.sni is None else {"sni_hostname": where.sni}
            try:
                async with asyncio.timeout(self._timeout_s):
                    request = http.build_request(
                        "POST", where.url, content=body, headers=headers, extensions=extensions
                    )
                    response = await http.send(request, stream=True)
                    try:
                        read = bytearray()
                        async for chunk in response.aiter_raw():
                            read += chunk
                            if len(read) >= _BODY_LIMIT:
                                break
                    finally:
                        await response.aclose()
            except (TimeoutError, httpx.TimeoutException):
                return Attempt("timeout", reason=f"no answer within {self._timeout_s:g} s")
            except httpx.TransportError as exc:
                return Attempt("connection_error", reason=_excerpt(f"{type(exc).__name__}: {exc}"))
        status = response.status_code
        if 200 <= status < 300:
            return Attempt("delivered", status)
        text = _excerpt(bytes(read[:_BODY_LIMIT]).decode("utf-8", "replace"))
        if 300 <= status < 400:
            location = response.headers.get("location", "")[:100]
            return Attempt("redirect", status, f"HTTP {status}: redirect not followed (Location: {location})")
        asked = retry_after(response.headers.get("retry-after"), time.time()) if status in (429, 503) else None
        return Attempt("http_error", status, f"HTTP {status}: {text}" if text else f"HTTP {status}", asked)


def utc_now() -> datetime:
    return datetime.now(UTC)
