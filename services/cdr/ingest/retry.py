"""Retrying one step of a batch (an insert, a dead-letter send) until it works or a stop is asked for."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


class Abandoned(Exception):
    """Shutdown was asked for while a batch step was still failing; the batch was not committed."""


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off from ``initial_s`` to ``max_s``, cut short by ``stopping``."""

    initial_s: float
    max_s: float
    stopping: asyncio.Event

    async def retry(
        self,
        attempt: Callable[[], Awaitable[None]],
        *,
        transient: tuple[type[BaseException], ...],
        on_failure: Callable[[int, BaseException, float], None],
        what: str,
    ) -> int:
        """``attempt()`` until it succeeds; returns how many attempts it took. Each
        ``transient`` failure is reported as ``on_failure(attempt, error, retry_in_s)``;
        a stop asked for while waiting raises Abandoned naming ``what``."""
        backoff = self.initial_s
        attempts = 0
        while True:
            attempts += 1
            try:
                await attempt()
            except transient as exc:
                on_failure(attempts, exc, backoff)
                if await stop_requested_within(self.stopping, backoff):
                    raise Abandoned(f"shutdown while retrying {what}") from exc
                backoff = min(backoff * 2, self.max_s)
                continue
            return attempts


async def stop_requested_within(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless a stop is asked for first; True if it was."""
    try:
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
