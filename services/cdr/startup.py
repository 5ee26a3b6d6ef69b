"""Start-up against dependencies that may not be there yet: bounded retries, one clear failure."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_BACKOFF_S = 10.0


class StartupFailed(Exception):
    """A dependency stayed unreachable for the whole start-up budget (exit code 1)."""

    def __init__(self, message: str, *, setting: str, value: str) -> None:
        super().__init__(message)
        self.setting = setting
        self.value = value


def masked_url(url: str) -> str:
    """A URL fit for a log line: any password in it replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def with_retries(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    *,
    transient: tuple[type[BaseException], ...],
    timeout_s: float,
    setting: str,
    value: str,
) -> T:
    """``attempt()`` until it succeeds or ``timeout_s`` passed, with exponential back-off.
    One warning when the first attempt fails, one info line when it finally works;
    StartupFailed (naming the setting and its value) when the budget is spent."""
    deadline = time.monotonic() + timeout_s
    backoff = 0.5
    attempts = 0
    while True:
        attempts += 1
        try:
            result = await attempt()
        except transient as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StartupFailed(
                    f"{what} unreachable: gave up after {attempts} attempts in {timeout_s:.0f} s: {exc}",
                    setting=setting,
                    value=value,
                ) from exc
            if attempts == 1:
                log.warning(
                    f"{what} unreachable at start-up, retrying",
                    extra={"setting": setting, "value": value, "error": str(exc)[:300], "retry_for_s": round(left)},
                )
            await asyncio.sleep(min(backoff, left))
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            continue
        if attempts > 1:
            log.info(f"{what} reachable", extra={"attempts": attempts})
        return result
