"""The change feed's promise as a property, over a real broker, two real ingestors of one
group and the embedded engine (issue 27): while new calls, corrections (some moving the
call), stale re-deliveries and exact re-deliveries are published in batches, and the group
rebalances in the middle, a reader follows the feed from a random start (a cursor taken, or
a ``since`` time, before a random batch) with random page sizes, a random filter and a random
way of reading (pages, long polls, the SSE stream). At the end its state (the newest version
per call it was given) equals plain Python's over what was published after its start:
nothing missing, and no version of a call delivered after a newer one.

Hypothesis drives Kafka per example: the two ingestors, the API and the topic live for the
whole test; each example publishes its own calls and makes the group rebalance halfway
through its batches (the second ingestor joins, or the next example's leaves). Few examples
(a rebalance takes seconds), no shrinking (an example's timing does not replay).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from cdr.api.app import create_app
from cdr.api.auth import token_digest
from cdr.api.cursor import CursorCodec
from cdr.ingest.app import Ingestor, build_ingestor
from cdr.metrics import Metrics
from cdr.settings import Settings
from cdr.simulate import make_event
from cdr.store import Store, open_store
from cdr.store.migrations import migrate
from tests.api.conftest import SECRET, TOKENS, serve
from tests.api.expect import as_record
from tests.helpers import committed_offsets, create_topics, encoded, produce, wait_for
from tests.integration.conftest import make_settings

READER = "t1.example"
OTHER = "t2.example"
_examples = itertools.count()
_versions = itertools.count(1)  # every correction is newer than everything before it


@dataclass
class Group:
    """The system the examples share: ingestor ``a`` always runs, ``b`` joins and leaves."""

    settings: Settings
    store: Store
    url: str
    a: Ingestor
    b: Ingestor | None = None
    published: int = 0
    rebalances: int = 0

    async def rebalance(self) -> None:
        """The second ingestor joins (and gets partitions) or leaves: the group rebalances."""
        if self.b is None:
            self.b = build_ingestor(
                self.settings.kafka, self.settings.ingest, self.settings.common, self.store, Metrics()
            )
            await self.b.start()
            joined = self.b

            async def assigned() -> bool:
                return bool(joined.subscriber.consumer and joined.subscriber.consumer.assignment())

            await wait_for(assigned, 60, "the joining ingestor to be assigned partitions")
        else:
            await self.b.stop()
            self.b = None
        self.rebalances += 1

    async def publish(self, evs: list[dict[str, Any]]) -> None:
        self.published += await produce(
            self.settings.kafka.kafka_bootstrap_servers, self.settings.kafka.kafka_topic, encoded(evs)
        )

    async def all_stored(self) -> None:
        """Every published event stored and committed (by whichever ingestor owns it now)."""
        s = self.settings

        async def committed() -> bool:
            offsets = await committed_offsets(
                s.kafka.kafka_bootstrap_servers, s.kafka.kafka_group_id, s.kafka.kafka_topic
            )
            return sum(offsets.values()) >= self.published

        await wait_for(committed, 90, f"{self.published} events stored and committed")


@pytest.fixture
async def group(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Group]:
    s = make_settings(
        kafka_bootstrap,
        tmp_path / "store",
        {},
        api_tokens=",".join(f"{tenant}:{token_digest(token)}" for tenant, token in TOKENS.items()),
        cursor_secret=SECRET,
        tenant_max_concurrent_requests=1_000,
        feed_poll_interval_ms=50,
        feed_max_streams_per_tenant=100,
        kafka_session_timeout_ms=6_000,
    )
    await create_topics(kafka_bootstrap, s.kafka.kafka_topic, s.kafka.kafka_dlq_topic)
    store = open_store(s.clickhouse)
    await migrate(store, feed_retention_days=s.api.feed_retention_days)
    a = build_ingestor(s.kafka, s.ingest, s.common, store, Metrics())
    await a.start()
    server, task, url = await serve(create_app(s.api, s.common, store, Metrics()), s)
    shared = Group(s, store, url, a)
    try:
        yield shared
    finally:
        server.should_exit = True
        await task
        if shared.b is not None:
            await shared.b.stop()
        await a.stop()
        await store.close()


# One operation of a batch: a new call, or (on a call of this example) a correction, a
# correction that moves the call 30 s earlier, a stale re-delivery of an older version, or
# an exact re-delivery of its newest version.
KINDS = ("new", "correct", "move", "stale", "again")
ops = st.tuples(st.sampled_from(KINDS), st.integers(0, 10_000), st.sampled_from(["BUSY", "FAILED", "NO ANSWER"]))
plans = st.lists(st.lists(ops, min_size=1, max_size=10), min_size=2, max_size=5)
filters = st.sampled_from([{}, {"status": "ANSWERED"}, {"status": "BUSY"}, {"direction": "inbound"}])


def _shift(value: str | None, seconds: float) -> str | None:
    return None if value is None else (datetime.fromisoformat(value) + timedelta(seconds=seconds)).isoformat()


def _corrected(event: dict[str, Any], status: str, *, moved: bool) -> dict[str, Any]:
    """A newer version of the call, unanswered with ``status`` (still a valid event),
    ``moved`` 30 s earlier."""
    by = -30 if moved else 0
    return {
        **event,
        "status": status,
        "cause": f"CORRECTED_{status.replace(' ', '_')}",
        "billsec": 0,
        "time_answered": None,
        "recording_url": None,
        "time_started": _shift(event["time_started"], by),
        "time_ended": _shift(event["time_ended"], by),
        "emitted_at": _shift(event["emitted_at"], 60 + next(_versions) / 1000),
    }


def _batches(plan: list[list[tuple[str, int, str]]], seed: int) -> list[list[dict[str, Any]]]:
    """The events of each batch, in publishing order."""
    example = next(_examples)
    rng = random.Random(f"{example}/{seed}")  # calls of their own, whatever seed hypothesis repeats
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2) + timedelta(minutes=example)
    versions: dict[str, list[dict[str, Any]]] = {}
    out: list[list[dict[str, Any]]] = []
    for batch in plan:
        evs: list[dict[str, Any]] = []
        for kind, pick, status in batch:
            ids = sorted(versions)
            if kind == "new" or not ids:
                tenant = READER if rng.random() < 0.7 else OTHER
                event = make_event(rng, tenant, base + timedelta(seconds=len(versions) * 1_000))
                versions[event["id"]] = [event]
            else:
                known = versions[ids[pick % len(ids)]]
                newest = max(known, key=_emitted)
                if kind in ("correct", "move"):
                    event = _corrected(newest, status, moved=kind == "move")
                    known.append(event)
                elif kind == "stale":
                    event = min(known, key=_emitted)
                else:
                    event = newest
            evs.append(event)
        out.append(evs)
    return out


def _version(event: dict[str, Any]) -> str:
    return datetime.fromisoformat(event["emitted_at"]).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _matches(record: dict[str, Any], wanted: dict[str, str]) -> bool:
    """Whether an API record passes the reader's filter (status, or direction inbound = 1)."""
    if "status" in wanted:
        return bool(record["status"] == wanted["status"])
    return "direction" not in wanted or record["direction"] == 1


def moved(event: dict[str, Any], first: dict[str, Any]) -> bool:
    return bool(event["time_started"] != first["time_started"])


def _emitted(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["emitted_at"])


def _expected(batches: list[list[dict[str, Any]]], start: int, wanted: dict[str, str]) -> dict[str, str]:
    """The version a reader from batch ``start`` must end with, per call: the newest, for
    each call of its tenant published from then on whose newest version passes the filter."""
    versions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for batch in batches:
        for e in batch:
            versions[e["id"]].append(e)
    after = {e["id"] for batch in batches[start:] for e in batch if e["tenant_id"] == READER}
    newest = {id_: max(versions[id_], key=_emitted) for id_ in after}
    return {id_: _version(e) for id_, e in newest.items() if _matches(as_record(e), wanted)}


def _live(task: asyncio.Task[None]) -> bool:
    """True while ``task`` runs; its failure, if it failed."""
    if task.done():
        task.result()
    return True


@dataclass
class Reader:
    """A client following the feed: what it was given, in order, and where its cursor is."""

    http: httpx.AsyncClient
    codec: CursorCodec
    cursor: str
    position: dict[int, int] = field(default_factory=dict)
    delivered: list[dict[str, Any]] = field(default_factory=list)

    @property
    def newest(self) -> dict[str, str]:
        return {item["id"]: item["version"] for item in self.delivered}

    def moved_to(self, cursor: str) -> None:
        self.cursor = cursor
        self.position = self.codec.decode_feed(cursor, tenant=READER, now=int(time.time())).offsets

    async def pages(self, limits: list[int], wait: bool) -> None:
        for limit in itertools.cycle(limits):
            params = {"cursor": self.cursor, "limit": str(limit)} | ({"wait": "1"} if wait else {})
            answer = await self.http.get("/v1/cdr/changes", params=params)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            self.delivered.extend(body["data"])
            self.moved_to(body["cursor"])
            if not wait:
                await asyncio.sleep(0.02)  # a polling client's pace; not a synchronisation

    async def stream(self) -> None:
        async with aconnect_sse(self.http, "GET", "/v1/cdr/changes/stream", params={"cursor": self.cursor}) as source:
            assert source.response.status_code == 200
            async for event in source.aiter_sse():
                if not event.data:
                    continue  # a heartbeat: httpx_sse dispatches one as an empty event (browsers do not)
                self.delivered.append(orjson.loads(event.data))
                self.moved_to(event.id)

    def reached(self, end: dict[int, int]) -> bool:
        return all(self.position.get(p, -1) >= o for p, o in end.items())


@settings(
    max_examples=5,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plan=plans,
    seed=st.integers(0, 2**32),
    data=st.data(),
    limits=st.lists(st.integers(1, 25), min_size=1, max_size=4),
    wanted=filters,
    how=st.sampled_from(["pages", "long polls", "stream"]),
    by_since=st.booleans(),
)
async def test_a_reader_ends_with_the_newest_version_of_everything_published_after_its_start(
    group: Group,
    plan: list[list[tuple[str, int, str]]],
    seed: int,
    data: st.DataObject,
    limits: list[int],
    wanted: dict[str, str],
    how: str,
    by_since: bool,
) -> None:
    batches = _batches(plan, seed)
    start = data.draw(st.integers(0, len(batches) - 1), label="start batch")
    middle = len(batches) // 2
    note(f"{how}, filter {wanted}, limits {limits}, by since {by_since}, rebalance {group.rebalances}")
    codec = CursorCodec(SECRET.encode(), ttl_s=3600)
    headers = {"Authorization": f"Bearer {TOKENS[READER]}"}
    async with httpx.AsyncClient(base_url=group.url, headers=headers, timeout=60) as http:
        rebalancing: asyncio.Task[None] | None = None
        follower: asyncio.Task[None] | None = None
        reader: Reader | None = None
        try:
            for index, batch in enumerate(batches):
                if index == start:
                    if by_since:
                        since = (datetime.now(UTC) - timedelta(milliseconds=1)).isoformat()
                        opened = await http.get("/v1/cdr/changes", params={"since": since, "limit": "1"} | wanted)
                    else:
                        opened = await http.get("/v1/cdr/changes", params=wanted)
                    assert opened.status_code == 200, opened.text
                    reader = Reader(http, codec, opened.json()["cursor"], delivered=list(opened.json()["data"]))
                    reader.moved_to(reader.cursor)
                    work = reader.stream() if how == "stream" else reader.pages(limits, how == "long polls")
                    follower = asyncio.create_task(work)
                if index == middle:
                    rebalancing = asyncio.create_task(group.rebalance())
                await group.publish(batch)
            assert rebalancing is not None and reader is not None and follower is not None
            await rebalancing
            await group.all_stored()
            # Where the reader's tenant's feed ends now (a fresh cursor from now), which the
            # reader must reach: then it has been given everything stored.
            end_cursor = (await http.get("/v1/cdr/changes", params=wanted)).json()["cursor"]
            end = codec.decode_feed(end_cursor, tenant=READER, now=int(time.time())).offsets

            if how == "stream":
                # A stream sends an id only with a delivered item, so its last id stops at the
                # last match: once it has given what it must, the client goes on from that id
                # with pages, to the end (anything it is given there is checked too).
                must = _expected(batches, start, wanted)

                streaming = follower

                async def given_all() -> bool:
                    return _live(streaming) and all(reader.newest.get(id_) == version for id_, version in must.items())

                await wait_for(given_all, 60, "the stream to give the newest of every matching call")
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
                follower = asyncio.create_task(reader.pages([1000], wait=False))

            paging = follower

            async def caught_up() -> bool:
                return _live(paging) and reader.reached(end)

            await wait_for(caught_up, 60, f"the reader to reach {end}")
        finally:
            if follower is not None:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)

    published = [e for batch in batches for e in batch if e["tenant_id"] == READER]
    after_start = {e["id"] for batch in batches[start:] for e in batch if e["tenant_id"] == READER}
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in published:
        by_id[e["id"]].append(e)

    # No version of a call after a newer one (re-deliveries of the same version may repeat).
    given: dict[str, list[str]] = defaultdict(list)
    for item in reader.delivered:
        given[item["id"]].append(item["version"])
    for id_, versions in given.items():
        assert versions == sorted(versions), (id_, versions)

    state = {item["id"]: item for item in reader.delivered}
    assert set(state) <= set(by_id), "only this tenant's calls of this example"
    for id_, versions_of_call in by_id.items():
        newest = max(versions_of_call, key=_emitted)
        first = min(versions_of_call, key=_emitted)
        expected = as_record(newest) | {
            "version": _version(newest),
            "change": "created" if newest is first else "corrected",
        }
        if id_ in state:
            item = state[id_]
            assert _matches(item, wanted), item
            if _matches(expected, wanted):
                if item["change"] != expected["change"] and any(moved(e, first) for e in versions_of_call):
                    # A call and its move stored by one insert: the first version is kept only
                    # as a tombstone, so the store's first version is the moved one ("created").
                    expected["change"] = item["change"]
                assert item == expected
            else:  # an older version that matched, given before the newest was stored
                assert item["version"] < expected["version"], (item, expected)
        elif id_ in after_start:
            assert not _matches(expected, wanted), f"missing {expected}"
