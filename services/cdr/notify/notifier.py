"""The notifier: the change feed, per endpoint, POSTed in batches (README, "Webhooks").

Reads are shared: every endpoint whose position has reached the feed's head takes its
tenant's changes from one ``FeedHub`` poll of all tenants; an endpoint behind (new,
replayed, recovering after failures) reads its tenant's changes past its own position
until it has read everything visible, then takes the polls that started after it
subscribed (the hub's completeness rule), so no change falls between the two.

Each endpoint is one task: it sends a batch only after the previous one was answered 2xx,
so each endpoint receives its changes in feed order. Its position (after its last
delivered batch) is written to ``webhook_state`` about once a second and at each change
of state: a crash re-delivers at most the batches after the last write, with the same
``webhook-id`` (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from cdr.metrics import Metrics
from cdr.notify.delivery import Attempt, Sender, backoff_s, utc_now
from cdr.notify.directory import Endpoint, EndpointDirectory, EndpointKey
from cdr.notify.signing import message_id
from cdr.notify.ssrf import Resolver, system_resolver
from cdr.settings import CommonSettings, NotifySettings
from cdr.store import Store, StoreError
from cdr.store.feed import (
    CHANGES_TABLE,
    VERSIONS_TABLE,
    Change,
    Offsets,
    start_position,
    tenant_read,
    tenant_start,
)
from cdr.store.feed_hub import FeedHub, Overflowed, read_settled
from cdr.store.webhooks import (
    ERROR_EXCERPT,
    REPLAYS_TABLE,
    STATE_TABLE,
    EndpointState,
    replays_of,
    replays_read,
    state_read,
    state_rows,
    states_of,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Rows a catch-up read takes at most, and how many such reads are kept for other endpoints of
# the tenant that reach the same position (each holds its rows; a few MB at most).
_CATCH_UP_ROWS = 1_000
_RECENT_READS = 64
_ReadKey = tuple[str, tuple[tuple[int, int], ...]]

OPERATOR_DISABLED = "disabled in the tenant directory (enabled: false)"
_URL_REFUSED = "url refused: "
_FAILING = "failing for more than "


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# Attempts after which an endpoint's client is replaced (``_Worker._renew_client``).
_RENEW_CLIENT = frozenset({"timeout", "connection_error"})


class _Stopped(Exception):
    """The endpoint is disabled (failing too long): its task ends until it is re-enabled."""


class _Stopping(Exception):
    """The notifier is stopping: a store call that failed is not retried (a store that stays
    down, or a schema of another release, must not keep a stop waiting)."""


@dataclass
class _Batch:
    items: list[dict[str, Any]] = field(default_factory=list)
    versions: list[tuple[str, str]] = field(default_factory=list)
    oldest_ms: int | None = None

    def add(self, change: Change, item: dict[str, Any]) -> None:
        self.items.append(item)
        self.versions.append((change.id, str(item["version"])))
        self.oldest_ms = change.emitted_ms if self.oldest_ms is None else min(self.oldest_ms, change.emitted_ms)


class _Worker:
    """One endpoint's delivery, in order."""

    def __init__(self, notifier: Notifier, endpoint: Endpoint, state: EndpointState) -> None:
        self._n = notifier
        self.endpoint = endpoint
        self.state = state
        self._read_at: Offsets = dict(state.position)  # past every change taken (delivered or not)
        self._batch = _Batch()
        self._in_flight: _Batch | None = None
        self._linger_until: float | None = None
        self._rng = random.Random()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        settings = self._n.settings
        linger_s = settings.webhook_batch_wait_ms / 1000
        size = settings.webhook_batch_size
        hub = self._n.hub
        sub = await hub.subscribe(self.endpoint.tenant)
        self._http = self._n.sender.client()
        try:
            complete = False
            while True:
                if not complete:
                    complete = await self._catch_up()
                    if complete and self._batch.items:
                        await self._send()
                    continue
                wait = None if self._linger_until is None else max(0.0, self._linger_until - time.monotonic())
                try:
                    changes = await sub.next(wait)
                except Overflowed:
                    # Fell too far behind the hub (a slow endpoint): read for itself again.
                    hub.unsubscribe(sub)
                    sub = await hub.subscribe(self.endpoint.tenant)
                    complete = False
                    continue
                if changes is None:
                    if self._batch.items:
                        await self._send()  # the linger is over
                        continue
                    return  # the hub closed: the notifier is stopping
                for change in changes:
                    self._take(change)
                    if len(self._batch.items) >= size:
                        await self._send()
                if not self._batch.items:
                    self._advance()
                elif self._linger_until is None:
                    # At most this long for more changes to join the batch.
                    self._linger_until = time.monotonic() + linger_s
                if self._linger_until is not None and time.monotonic() >= self._linger_until:
                    await self._send()
        except _Stopped:
            return
        finally:
            hub.unsubscribe(sub)
            await self._http.aclose()

    def _take(self, change: Change) -> None:
        if change.offset <= self._read_at.get(change.partition, -1):
            return  # read directly already
        self._read_at[change.partition] = change.offset
        if change.change and self.endpoint.filters.match(change):
            self._batch.add(change, change.render(self.endpoint.zone))

    def _advance(self) -> None:
        """Nothing waits to be sent: the position moves past every change read (those the
        filters leave out included)."""
        if self._read_at != self.state.position:
            self.state.position = dict(self._read_at)
            self._n.touch(self)

    async def _catch_up(self) -> bool:
        """Read the tenant's changes past this endpoint's, sending each full batch; True once
        everything visible is read."""
        changes, complete = await self._n.tenant_changes(self.endpoint.tenant, self._read_at)
        for change in changes:
            self._take(change)
            if len(self._batch.items) >= self._n.settings.webhook_batch_size:
                await self._send()
        if not self._batch.items:
            self._advance()
        return complete

    async def _send(self) -> None:
        """Deliver the batch, retrying until a 2xx; the position then moves past it (and past
        the changes the filters left out among those read before it was cut)."""
        settings = self._n.settings
        batch, self._batch = self._batch, _Batch()
        self._linger_until = None
        position = dict(self._read_at)
        body = orjson.dumps({"data": batch.items})
        msg_id = message_id(f"{self.endpoint.tenant}/{self.endpoint.name}", batch.versions)
        failures = 0
        self._in_flight = batch
        try:
            while True:
                attempt = await self._n.sender.post(self._http, self.endpoint.url, self.endpoint.secrets, msg_id, body)
                self._n.metrics.delivered(attempt.outcome).inc()
                if attempt.ok:
                    self.state.last_success_at = utc_now()
                    self.state.failing_since = None
                    self.state.position = position
                    self._n.touch(self)
                    return
                self._failed(attempt)
                if attempt.outcome in _RENEW_CLIENT:
                    await self._renew_client()
                wait = backoff_s(
                    failures,
                    base_s=settings.webhook_retry_base_s,
                    cap_s=settings.webhook_retry_max_s,
                    asked_s=attempt.retry_after_s,
                    rng=self._rng,
                )
                failures += 1
                await asyncio.sleep(wait)
        finally:
            self._in_flight = None

    async def _renew_client(self) -> None:
        """A new client (and connection pool) for the next attempt. A request cut off by its
        deadline can leave httpcore's pool holding a connection no request owns; with one
        connection per endpoint every later request would then wait for it and time out
        against a healthy endpoint, until a restart (encode/httpcore#1093, open; seen here as
        an endpoint timing out for minutes after a restart mid-delivery)."""
        old, self._http = self._http, self._n.sender.client()
        await old.aclose()

    def pending_oldest_ms(self) -> int | None:
        """When the oldest change read and not yet delivered was emitted (None: none waits)."""
        batch = self._in_flight or self._batch
        return batch.oldest_ms if batch.items else None

    def _failed(self, attempt: Attempt) -> None:
        state = self.state
        now = utc_now()
        state.last_error_at = now
        state.last_error = attempt.reason[:ERROR_EXCERPT]
        state.last_status = attempt.status
        state.failing_since = state.failing_since or now
        failing_s = (now - state.failing_since).total_seconds()
        self._n.touch(self)
        log.info(
            "webhook delivery failed; retrying",
            extra={"tenant": self.endpoint.tenant, "endpoint": self.endpoint.name, "error": state.last_error},
        )
        if failing_s >= self._n.settings.webhook_max_failing_s:
            state.disabled_reason = (
                f"{_FAILING}{self._n.settings.webhook_max_failing_s:g} s (CDR_WEBHOOK_MAX_FAILING_S), since "
                f"{state.failing_since.isoformat(timespec='seconds')}; last error: {state.last_error}"
            )[: ERROR_EXCERPT * 2]
            log.warning(
                "webhook endpoint disabled",
                extra={"tenant": self.endpoint.tenant, "endpoint": self.endpoint.name, "reason": state.disabled_reason},
            )
            raise _Stopped


class Notifier:
    """Every endpoint's worker, the directory, replay requests and the state writes."""

    def __init__(
        self,
        settings: NotifySettings,
        common: CommonSettings,
        store: Store,
        metrics: Metrics,
        *,
        hub: FeedHub,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.hub = hub
        self.changes_table = store.qualified(CHANGES_TABLE)
        self.versions_table = store.qualified(VERSIONS_TABLE)
        self._state_table = STATE_TABLE
        self._replays_table = store.qualified(REPLAYS_TABLE)
        self.directory = EndpointDirectory(
            common.tenants_file, common.zone, allow_private=settings.webhook_allow_private
        )
        self.sender = Sender(
            connect_timeout_s=settings.webhook_connect_timeout_s,
            timeout_s=settings.webhook_timeout_s,
            max_concurrency=settings.webhook_max_concurrency,
            allow_private=settings.webhook_allow_private,
            resolver=resolver,
        )
        self._clock = clock
        self._states: dict[EndpointKey, EndpointState] = {}
        self._dirty: set[EndpointKey] = set()
        self._workers: dict[EndpointKey, _Worker] = {}
        self._reading: dict[_ReadKey, asyncio.Future[tuple[list[Change], bool]]] = {}
        self._recent: OrderedDict[_ReadKey, list[Change]] = OrderedDict()
        self._last_write_ms = 0
        self._observed: set[EndpointKey] = set()  # the endpoints with a lag series
        self.running = False
        self._stopping = asyncio.Event()  # run()'s

    # -- store access -------------------------------------------------------------------

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """A worker's store call, retried (after a pause) while the store fails: an outage
        delays deliveries and loses none."""
        while True:
            try:
                return await call()
            except StoreError as exc:
                if self._stopping.is_set():
                    raise _Stopping from exc
                log.warning("webhooks: store read failed; retrying", extra={"error": str(exc)[:300]})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)

    async def tenant_changes(self, tenant: str, position: Offsets) -> tuple[list[Change], bool]:
        """The tenant's next changes past ``position`` and whether that was everything visible.

        Shared: the endpoints of one tenant that start together (a restart, a new directory, a
        replay of several) move through the same positions, since a read of the same
        position returns the same rows, so each read is made once for all of them: a read in
        progress is joined, and a recent read that was cut at its limit is reused. Only the
        endpoint whose own read found the end is told so (``complete``): it had subscribed to
        the hub before that read began, so nothing falls between; anyone else reads once
        more for itself before it joins the hub."""
        key = (tenant, tuple(sorted(position.items())))
        while (pending := self._reading.get(key)) is not None:
            try:
                changes, _ = await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise  # this endpoint is stopping (perhaps with the reader it joined)
                continue  # only its reader was stopped: join another, or read
            return changes, False
        recent = self._recent.get(key)
        if recent is not None:
            return recent, False
        done: asyncio.Future[tuple[list[Change], bool]] = asyncio.get_running_loop().create_future()
        self._reading[key] = done
        try:
            changes, complete = await self._read_tenant(tenant, position)
        except BaseException:
            done.cancel()  # (retried reads raise nothing but cancellation)
            raise
        finally:
            del self._reading[key]
        done.set_result((changes, complete))
        if not complete:
            self._recent[key] = changes
            while len(self._recent) > _RECENT_READS:
                self._recent.popitem(last=False)
        return changes, complete

    async def _read_tenant(self, tenant: str, position: Offsets) -> tuple[list[Change], bool]:
        limit = max(self.settings.webhook_batch_size, _CATCH_UP_ROWS)
        read = tenant_read(
            self.changes_table,
            self.versions_table,
            tenant,
            position,
            limit=limit,
            now_ms=_now_ms(),
            horizon_s=self.store.max_replica_delay_s,
        )
        changes = await self.retrying(lambda: read_settled(self.store, read))
        return changes, len(changes) < limit

    def touch(self, worker: _Worker) -> None:
        self._dirty.add(worker.endpoint.key)

    async def write_states(self) -> None:
        """Write every changed state in one insert."""
        if not self._dirty:
            return
        keys, self._dirty = self._dirty, set()
        now = max(_now_ms(), self._last_write_ms + 1)  # later than the previous write: it wins
        self._last_write_ms = now
        stamp = datetime.fromtimestamp(now / 1000, tz=UTC)
        rows = []
        for key in sorted(keys):
            state = self._states[key]
            worker = self._workers.get(key)
            oldest = worker.pending_oldest_ms() if worker is not None else None
            state.lag_s = 0.0 if oldest is None else max(0.0, (now - oldest) / 1000)
            state.updated_at = stamp
            rows.append(replace(state, position=dict(state.position)))
        try:
            await self.store.insert_arrow(self._state_table, state_rows(rows))
        except StoreError as exc:
            self._dirty |= keys
            log.warning("webhooks: state write failed; retrying", extra={"error": str(exc)[:300]})

    # -- the loop -------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Until ``stopping``: workers follow the directory, replays are adopted, states written."""
        self._stopping = stopping
        reload_s = self.settings.webhook_reload_ms / 1000
        write_s = self.settings.webhook_state_write_ms / 1000
        last_reload = float("-inf")
        try:
            query = state_read(self.store.qualified(self._state_table))
            self._states = states_of(await self.retrying(lambda: self.store.query(query.sql, query.params)))
            self.running = True
            await self._sync()
            while not stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), write_s)
                if self._clock() - last_reload >= reload_s:
                    last_reload = self._clock()
                    changed = self.directory.refresh()
                    adopted = await self._adopt_replays()
                    if changed or adopted:
                        await self._sync()
                self._reap()
                self._observe()
                await self.write_states()
        except _Stopping:
            pass  # a store call gave up: the stop goes on
        finally:
            self.running = False
            for worker in self._workers.values():
                if worker.task is not None:
                    worker.task.cancel()
            for worker in self._workers.values():
                if worker.task is not None:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await worker.task
            with contextlib.suppress(StoreError):
                await self.write_states()
            await self.hub.close()

    async def _adopt_replays(self) -> bool:
        try:
            query = replays_read(self._replays_table)
            replays = replays_of(await self.store.query(query.sql, query.params))
        except StoreError as exc:
            log.warning("webhooks: replay requests not read; next time", extra={"error": str(exc)[:300]})
            return False
        adopted = False
        for key, replay in replays.items():
            state = self._states.get(key)
            if state is None or replay.generation <= state.replay_generation:
                continue
            log.info("webhook replay", extra={"tenant": key[0], "endpoint": key[1], "generation": replay.generation})
            state.position = dict(replay.position)
            state.replay_generation = replay.generation
            state.failing_since = None
            if not state.disabled_reason.startswith(_URL_REFUSED):
                state.disabled_reason = ""
            self._dirty.add(key)
            self._stop(key)
            adopted = True
        return adopted

    def _stop(self, key: EndpointKey) -> None:
        worker = self._workers.pop(key, None)
        if worker is not None and worker.task is not None:
            worker.task.cancel()

    async def _sync(self) -> None:
        """Workers for the directory's endpoints: started, restarted when the entry changed,
        stopped when it went or was disabled."""
        endpoints = self.directory.endpoints
        for key in [k for k in self._workers if k not in endpoints]:
            self._stop(key)
        for key in self._observed - endpoints.keys():
            self.metrics.webhook_lag.remove(*key)  # an endpoint gone: its series too
        self._observed = set(endpoints)
        for key, endpoint in endpoints.items():
            worker = self._workers.get(key)
            if worker is not None and worker.endpoint == endpoint:
                continue
            self._stop(key)
            state = self._states.get(key)
            if state is None:
                state = await self._new_state(endpoint)
            reason = self._held_back(endpoint, state)
            if reason != state.disabled_reason:
                state.disabled_reason = reason
                self._dirty.add(key)
            if reason:
                continue
            worker = _Worker(self, endpoint, state)
            worker.task = asyncio.create_task(self._guard(worker), name=f"webhook {key[0]}/{key[1]}")
            self._workers[key] = worker

    def _held_back(self, endpoint: Endpoint, state: EndpointState) -> str:
        """Why the endpoint gets nothing now ("" : it is delivered to)."""
        if endpoint.refused is not None:
            return _URL_REFUSED + endpoint.refused
        if not endpoint.enabled:
            return OPERATOR_DISABLED
        if state.disabled_reason.startswith(_FAILING):
            return state.disabled_reason  # until a replay (or enabled: false, then true)
        return ""

    async def _new_state(self, endpoint: Endpoint) -> EndpointState:
        """A new endpoint starts at the feed's end: it gets the changes from now on (a
        replay sends earlier ones)."""
        query = tenant_start(self.changes_table, endpoint.tenant, None)
        position = start_position(await self.retrying(lambda: self.store.query(query.sql, query.params)))
        state = EndpointState(endpoint.tenant, endpoint.name, position)
        self._states[endpoint.key] = state
        self._dirty.add(endpoint.key)
        return state

    async def _guard(self, worker: _Worker) -> None:
        """A worker's task; a failure other than the store's is logged and the worker started again."""
        while True:
            try:
                await worker.run()
                return
            except _Stopping:
                return  # the notifier is stopping
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook worker failed; restarting", extra={"endpoint": worker.endpoint.name})
                await asyncio.sleep(1.0)
                worker = _Worker(self, worker.endpoint, worker.state)

    def _reap(self) -> None:
        """Workers that stopped (disabled while failing) are removed; their state says why."""
        for key, worker in list(self._workers.items()):
            if worker.task is not None and worker.task.done():
                del self._workers[key]
                self._dirty.add(key)

    def _observe(self) -> None:
        now = _now_ms()
        disabled = 0
        for key, endpoint in self.directory.endpoints.items():
            state = self._states.get(key)
            if state is not None and state.disabled_reason:
                disabled += 1
            worker = self._workers.get(key)
            oldest = worker.pending_oldest_ms() if worker is not None else None
            lag = 0.0 if oldest is None else max(0.0, (now - oldest) / 1000)
            self.metrics.webhook_lag.labels(tenant=endpoint.tenant, endpoint=endpoint.name).set(lag)
            if worker is not None and oldest is not None:
                self._dirty.add(key)  # the stored lag follows while a batch waits
        self.metrics.webhook_disabled.set(disabled)
