"""Webhooks end to end: events through a real broker and the ingestor into the embedded
engine, delivered by the notifier to a real HTTP receiver in the test (README, "Webhooks")."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from cdr.api.auth import token_digest
from cdr.metrics import Metrics
from cdr.notify.notifier import Notifier
from cdr.notify.ssrf import Resolver, system_resolver
from cdr.settings import Settings
from cdr.store import Store, open_store
from cdr.store.errors import StoreUnavailable
from cdr.store.feed import CHANGES_TABLE, VERSIONS_TABLE
from cdr.store.feed_hub import feed_hub_for
from cdr.store.migrations import migrate
from cdr.store.webhooks import EndpointState, state_rows
from tests.api.conftest import SECRET, TOKENS, free_port, replace_file, running_api
from tests.helpers import create_topics, encoded, events, produce, read_all, service_env, wait_for
from tests.integration.conftest import IngestEnv, make_settings
from tests.webhook_receiver import Behaviour, Received, Receiver

HOOK_SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
# Short back-off and timeouts: failures are retried within the test's time.
FAST = {
    "webhook_allow_private": True,
    "webhook_retry_base_s": 0.05,
    "webhook_retry_max_s": 0.5,
    "webhook_timeout_s": 1.0,
    "webhook_connect_timeout_s": 0.5,
    "webhook_batch_size": 20,
    "webhook_batch_wait_ms": 50,
    "webhook_reload_ms": 100,
    "webhook_state_write_ms": 100,
    "feed_poll_interval_ms": 50,
}


def directory(path: Path, hooks: dict[str, list[dict[str, Any]]]) -> Path:
    """A tenant directory with the test tokens and these webhooks per tenant."""
    tenants = {
        tenant: {"tokens": [token_digest(token)], "webhooks": hooks.get(tenant, [])} for tenant, token in TOKENS.items()
    }
    path.write_bytes(orjson.dumps({"tenants": tenants}))
    return path


def hook(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "secrets": [HOOK_SECRET], **extra}


def verify(requests: list[Received]) -> None:
    """Every request, answered or not, carries a signature the reference library accepts."""
    for request in requests:
        Webhook(HOOK_SECRET).verify(request.body, request.headers)


def versions(requests: list[Received]) -> list[tuple[str, str]]:
    """(id, version) of every item delivered (answered 200), in arrival order."""
    return [(str(i["id"]), str(i["version"])) for r in requests if r.answered == "ok" for i in r.items]


def version_of(event: dict[str, Any]) -> str:
    emitted = datetime.fromisoformat(event["emitted_at"]).astimezone(UTC)
    return emitted.strftime("%Y-%m-%dT%H:%M:%S.") + f"{emitted.microsecond // 1000:03d}Z"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver()
    await got.start()
    try:
        yield got
    finally:
        await got.close()


async def api_states(url: str, tenant: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKENS[tenant]}"}) as http:
        answer = await http.get("/v1/webhooks")
        assert answer.status_code == 200, answer.text
        data: list[dict[str, Any]] = answer.json()["data"]
        return data


async def test_every_change_arrives_signed_and_in_order_through_failures_and_a_sigkill(
    kafka_bootstrap: str, tmp_path: Path, receiver: Receiver
) -> None:
    rng = random.Random(2026)

    behaviours: list[Behaviour] = ["ok", "error", "throttle", "hang", "reset"]

    def chaos(path: str) -> Behaviour:
        return rng.choices(behaviours, weights=[55, 12, 8, 10, 15])[0]

    receiver.behave = chaos
    base = f"http://127.0.0.1:{receiver.port}"
    tenants_file = directory(
        tmp_path / "tenants.json",
        {
            "t1.example": [
                hook("all", base + "/t1/all"),
                hook("answered", base + "/t1/answered", filters={"status": "answered"}),
            ],
            "t2.example": [hook("all", base + "/t2/all")],
        },
    )
    port = free_port()
    env, topic = await service_env(
        kafka_bootstrap,
        tmp_path / "data",
        tenants_file=tenants_file,
        cursor_secret=SECRET,
        api_port=port,
        batch_time_ms=100,
        **FAST,
    )
    url = f"http://127.0.0.1:{port}"
    start = datetime.now(UTC) - timedelta(hours=2)
    first = events(120, seed=31, start=start, spacing_s=5)
    second = events(120, seed=32, start=start + timedelta(minutes=30), spacing_s=5)
    log = (tmp_path / "run.log").open("ab")

    def run() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "cdr.cli", "run"], env=env, stdout=log, stderr=log)

    async def started() -> bool:
        """Every endpoint has its state (its start position) recorded by the notifier."""
        try:
            shown = await api_states(url, "t1.example") + await api_states(url, "t2.example")
        except (httpx.HTTPError, AssertionError):
            return False
        return len(shown) == 3 and all(s["state"] != "pending" for s in shown)

    process = run()
    try:
        await wait_for(started, 90, "the notifier to record every endpoint")
        await produce(kafka_bootstrap, topic, encoded(first))

        async def some_delivered() -> bool:
            return all(receiver.delivered(p) for p in ("/t1/all", "/t2/all"))

        await wait_for(some_delivered, 60, "deliveries under way")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        killed_at = time.time()
        # Killed mid-stream: some of the first wave was still to be delivered.
        before_kill = {i for path in ("/t1/all", "/t2/all") for i, _ in versions(receiver.got[path])}
        assert not {e["id"] for e in first} <= before_kill
        process = run()
        await produce(kafka_bootstrap, topic, encoded(second))
        everything = first + second
        wanted = {
            "/t1/all": [e for e in everything if e["tenant_id"] == "t1.example"],
            "/t1/answered": [
                e for e in everything if e["tenant_id"] == "t1.example" and e["status"].upper() == "ANSWERED"
            ],
            "/t2/all": [e for e in everything if e["tenant_id"] == "t2.example"],
        }
        assert wanted["/t1/answered"] and len(wanted["/t1/answered"]) < len(wanted["/t1/all"])

        async def all_delivered() -> bool:
            return all(
                {(e["id"], version_of(e)) for e in evs} <= set(versions(receiver.got[path]))
                for path, evs in wanted.items()
            )

        await wait_for(all_delivered, 180, "every change delivered to every endpoint")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        log.close()

    records = await read_all(kafka_bootstrap, topic, len(first) + len(second))
    where = {orjson.loads(r.value)["id"]: (r.partition, r.offset) for r in records}
    answered = {r.answered for requests in receiver.got.values() for r in requests}
    assert answered == {"ok", "error", "throttle", "hang", "reset"}
    for path, evs in wanted.items():
        requests = receiver.got[path]
        verify(requests)
        delivered = versions(requests)
        # Nothing the filters leave out; each change at least once.
        assert {d for d, _ in delivered} == {e["id"] for e in evs}, path
        # In feed order: per Kafka partition, each change first arrives after those before it.
        seen: set[str] = set()
        last: dict[int, int] = defaultdict(lambda: -1)
        for id_, _ in delivered:
            if id_ in seen:
                continue  # a re-delivery (a batch sent again after the SIGKILL)
            seen.add(id_)
            partition, offset = where[id_]
            assert offset > last[partition], (path, id_)
            last[partition] = offset
        # A retried batch has the webhook-id of its first attempt.
        by_body: dict[bytes, set[str]] = defaultdict(set)
        for request in requests:
            by_body[request.body].add(request.headers["webhook-id"])
        assert all(len(ids) == 1 for ids in by_body.values())
    retried = [r for requests in receiver.got.values() for r in requests if r.answered != "ok"]
    assert retried
    # A batch one process failed to send is sent again unchanged by that process. One the
    # killed process left unsent is batched anew after the restart (its position was not
    # written): its changes arrive all the same, as checked above.
    after_restart = [r for r in retried if r.at > killed_at]
    assert after_restart and all(any(o.body == r.body for o in receiver.delivered(r.path)) for r in after_restart)


@asynccontextmanager
async def notifying(settings: Settings, store: Store, resolver: Resolver = system_resolver) -> AsyncIterator[Notifier]:
    metrics = Metrics()
    hub = feed_hub_for(settings.api, store, metrics)
    notifier = Notifier(settings.notify, settings.common, store, metrics, hub=hub, resolver=resolver)
    stopping = asyncio.Event()
    task = asyncio.create_task(notifier.run(stopping))
    try:
        yield notifier
    finally:
        stopping.set()
        await task


async def webhook_env(
    kafka_bootstrap: str, tmp_path: Path, hooks: dict[str, list[dict[str, Any]]], **extra: Any
) -> IngestEnv:
    settings = make_settings(
        kafka_bootstrap,
        tmp_path / "store",
        {},
        tenants_file=directory(tmp_path / "tenants.json", hooks),
        cursor_secret=SECRET,
        **(FAST | extra),
    )
    await create_topics(kafka_bootstrap, settings.kafka.kafka_topic, settings.kafka.kafka_dlq_topic)
    store = open_store(settings.clickhouse)
    await migrate(store, feed_retention_days=settings.api.feed_retention_days)
    return IngestEnv(settings, store, Metrics())


async def recorded(store: Store, count: int) -> None:
    async def enough() -> bool:
        rows = await store.query(f"SELECT count() FROM {store.qualified('webhook_state')} FINAL")
        return int(rows[0][0]) >= count

    await wait_for(enough, 30, f"{count} endpoint states recorded")


async def test_a_dead_endpoint_never_delays_the_healthy_ones(
    kafka_bootstrap: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.behave = lambda path: "hang" if path == "/dead" else "ok"
    base = f"http://127.0.0.1:{receiver.port}"
    hooks = {
        "t1.example": [hook("dead", base + "/dead")] + [hook(f"h{i}", f"{base}/t1/h{i}") for i in range(10)],
        "t2.example": [hook(f"h{i}", f"{base}/t2/h{i}") for i in range(10)],
    }
    # The dead endpoint's request is never answered within the test; 4 requests in flight at
    # most, of which it holds one.
    env = await webhook_env(kafka_bootstrap, tmp_path, hooks, webhook_timeout_s=300.0, webhook_max_concurrency=4)
    settings, store = env.settings, env.store
    healthy = [f"/t1/h{i}" for i in range(10)] + [f"/t2/h{i}" for i in range(10)]
    start = datetime.now(UTC) - timedelta(hours=1)
    try:
        async with env.running(), notifying(settings, store):
            await recorded(store, 21)
            for wave, seed in enumerate((41, 42)):
                evs = events(60, seed=seed, start=start + timedelta(minutes=10 * wave), spacing_s=3)
                await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(evs))

                async def healthy_have_all(evs: list[dict[str, Any]] = evs) -> bool:
                    for path in healthy:
                        tenant = "t1.example" if path.startswith("/t1") else "t2.example"
                        ids = {i for i, _ in versions(receiver.got[path])}
                        if not {e["id"] for e in evs if e["tenant_id"] == tenant} <= ids:
                            return False
                    return True

                await wait_for(healthy_have_all, 60, f"wave {wave} at every healthy endpoint")
                # Meanwhile the dead endpoint holds its first request, unanswered.
                assert [r.answered for r in receiver.got["/dead"]] == ["hang"]
            for path in healthy:
                verify(receiver.got[path])
    finally:
        await store.close()


async def test_the_api_shows_each_endpoints_state_to_its_tenant_only_and_replays_from_a_time(
    kafka_bootstrap: str, tmp_path: Path, receiver: Receiver
) -> None:
    base = f"http://127.0.0.1:{receiver.port}"
    hooks = {
        "t1.example": [hook("crm", base + "/t1/crm"), hook("off", base + "/t1/off", enabled=False)],
        "t2.example": [hook("theirs", base + "/t2/theirs")],
    }
    env = await webhook_env(kafka_bootstrap, tmp_path, hooks)
    settings, store = env.settings, env.store
    evs = events(20, seed=51, start=datetime.now(UTC) - timedelta(hours=1), spacing_s=3)
    mine = {e["id"] for e in evs if e["tenant_id"] == "t1.example"}
    try:
        async with env.running(), notifying(settings, store), running_api(settings, store) as url:
            await recorded(store, 3)
            since = datetime.now(UTC) - timedelta(seconds=1)
            await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(evs))

            async def delivered() -> bool:
                return {i for i, _ in versions(receiver.got["/t1/crm"])} == mine

            await wait_for(delivered, 60, "t1's changes at crm")

            async def shown_delivered() -> bool:
                (crm, _) = await api_states(url, "t1.example")
                return crm["last_success_at"] is not None and crm["lag_seconds"] == 0

            await wait_for(shown_delivered, 30, "crm's success recorded")
            crm, off = await api_states(url, "t1.example")
            assert (crm["name"], crm["state"], crm["enabled"], crm["last_error"]) == ("crm", "delivering", True, None)
            assert crm["position"] and "secrets" not in crm
            assert HOOK_SECRET not in orjson.dumps(crm).decode()
            assert (off["state"], off["disabled_reason"]) == (
                "disabled",
                "disabled in the tenant directory (enabled: false)",
            )
            assert "/t1/off" not in receiver.got
            # Another tenant sees its own endpoint only, and cannot replay t1's.
            assert [s["name"] for s in await api_states(url, "t2.example")] == ["theirs"]
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {TOKENS['t2.example']}"}
            ) as two:
                refused = await two.post("/v1/webhooks/crm/replay", params={"since": since.isoformat()})
                assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {TOKENS['t1.example']}"}
            ) as one:
                bad = await one.post("/v1/webhooks/crm/replay", params={"since": "yesterday"})
                assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
                before = len(versions(receiver.got["/t1/crm"]))
                accepted = await one.post("/v1/webhooks/crm/replay", params={"since": since.isoformat()})
                assert accepted.status_code == 202, accepted.text

            async def replayed() -> bool:
                again = versions(receiver.got["/t1/crm"])[before:]
                return {i for i, _ in again} == mine

            await wait_for(replayed, 60, "t1's changes sent again from the replay's time")
            async with httpx.AsyncClient(base_url=url) as anyone:
                document = (await anyone.get("/openapi.json")).json()
            for name, answer in (
                ("Webhooks", {"data": await api_states(url, "t1.example")}),
                ("WebhookReplay", accepted.json()),
            ):
                schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
                jsonschema.Draft202012Validator(schema).validate(answer)
            (crm, _) = await api_states(url, "t1.example")
            assert crm["replay_generation"] == accepted.json()["replay_generation"]
            assert {i for i, _ in versions(receiver.got["/t2/theirs"])} == {e["id"] for e in evs} - mine
            # A directory that no longer parses: the previous endpoints are still shown.
            replace_file(tmp_path / "tenants.json", '{"tenants": {"t1.example": {"webhooks": "broken"}}}')
            assert [s["name"] for s in await api_states(url, "t1.example")] == ["crm", "off"]
    finally:
        await store.close()


async def test_urls_reaching_private_addresses_are_refused_with_the_reason_shown(
    kafka_bootstrap: str, tmp_path: Path, receiver: Receiver
) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return {"internal.example": ["10.0.0.5"]}.get(host) or await system_resolver(host, port)

    hooks = {
        "t1.example": [
            hook("literal", "https://127.0.0.1/hook"),
            hook("metadata", "https://169.254.169.254/latest/meta-data/"),
            hook("v6", "https://[::1]/hook"),
            hook("ten", "https://10.1.2.3/hook"),
            hook("named", "https://internal.example/hook"),
            hook("local", "https://localhost/hook"),
        ],
    }
    env = await webhook_env(kafka_bootstrap, tmp_path, hooks, webhook_allow_private=False)
    settings, store = env.settings, env.store
    try:
        async with env.running(), notifying(settings, store, resolve), running_api(settings, store) as url:
            await recorded(store, 6)
            evs = events(4, seed=61, tenants=("t1.example",), start=datetime.now(UTC) - timedelta(hours=1))
            await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(evs))

            async def named_refused() -> bool:
                shown = {s["name"]: s for s in await api_states(url, "t1.example")}
                return all(shown[n]["last_error"] is not None for n in ("named", "local"))

            await wait_for(named_refused, 60, "the names' refusals recorded")
            shown = {s["name"]: s for s in await api_states(url, "t1.example")}
    finally:
        await store.close()
    for name, why in (
        ("literal", "127.0.0.1 is a loopback address"),
        ("metadata", "169.254.169.254 is a link-local"),
        ("v6", "::1 is a loopback address"),
        ("ten", "10.1.2.3 is a private address"),
    ):
        assert shown[name]["state"] == "disabled"
        assert shown[name]["disabled_reason"].startswith("url refused: " + why), shown[name]
    assert "internal.example resolves to 10.0.0.5 is a private address" in shown["named"]["last_error"]["message"]
    assert "localhost resolves to" in shown["local"]["last_error"]["message"]
    assert shown["named"]["state"] == "failing"
    assert not receiver.got  # nothing reached anything
    assert os.environ.get("CDR_WEBHOOK_ALLOW_PRIVATE", "") in ("", "false")


async def test_endpoints_of_a_tenant_catching_up_together_share_their_reads(
    kafka_bootstrap: str, tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = f"http://127.0.0.1:{receiver.port}"
    paths = [f"/t1/c{i}" for i in range(5)]
    env = await webhook_env(
        kafka_bootstrap,
        tmp_path,
        {"t1.example": [hook(f"c{i}", base + p) for i, p in enumerate(paths)]},
        webhook_batch_size=100,
    )
    settings, store = env.settings, env.store
    evs = events(2_500, seed=71, tenants=("t1.example",), start=datetime.now(UTC) - timedelta(hours=3), spacing_s=1)
    try:
        async with env.running():
            await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(evs))

            async def stored() -> bool:
                rows = await store.query(f"SELECT count() FROM {store.qualified('cdr_changes')}")
                return int(rows[0][0]) == len(evs)

            await wait_for(stored, 90, "every change stored")
        # Every endpoint behind, at the feed's beginning (as after a replay of all five).
        behind = [EndpointState("t1.example", f"c{i}", {}, updated_at=datetime.now(UTC)) for i in range(5)]
        await store.insert_arrow("webhook_state", state_rows(behind))
        reads: Counter[tuple[tuple[str, Any], ...]] = Counter()
        query = store.query

        async def counted(sql: str, params: Any = None, **kwargs: Any) -> list[Any]:
            if (
                "FROM " + store.qualified(CHANGES_TABLE) in sql
                and "tenant_id = {tenant:String}" in sql
                and " BY " in sql
                and store.qualified(VERSIONS_TABLE) not in sql  # the versions lookup beside a read
            ):
                # The position read from (the visibility bound moves with the clock).
                reads[tuple(sorted((k, str(v)) for k, v in params.items() if k != "import_through"))] += 1
            return await query(sql, params, **kwargs)

        monkeypatch.setattr(store, "query", counted)
        async with notifying(settings, store):

            async def caught_up() -> bool:
                return all(len({i for i, _ in versions(receiver.got[p])}) == len(evs) for p in paths)

            await wait_for(caught_up, 120, "every endpoint caught up")
    finally:
        await store.close()
    for path in paths:
        # Nothing failed or restarted: each change exactly once.
        assert sorted(i for i, _ in versions(receiver.got[path])) == sorted(e["id"] for e in evs)
    # Each position is read once for all five endpoints, but the last: the read that finds
    # the end is made again by each endpoint that did not make it (it then joins the hub).
    assert len(reads) >= 3
    again = [n for n in reads.values() if n > 1]
    assert len(again) <= 1 and all(n <= len(paths) for n in again), reads.values()


async def test_an_endpoint_failing_too_long_is_disabled_with_the_reason_until_a_replay(
    kafka_bootstrap: str, tmp_path: Path, receiver: Receiver
) -> None:
    answer: list[Behaviour] = ["redirect"]
    receiver.behave = lambda path: answer[0]
    base = f"http://127.0.0.1:{receiver.port}"
    env = await webhook_env(
        kafka_bootstrap, tmp_path, {"t1.example": [hook("crm", base + "/crm")]}, webhook_max_failing_s=1.0
    )
    settings, store = env.settings, env.store
    evs = events(6, seed=81, tenants=("t1.example",), start=datetime.now(UTC) - timedelta(hours=1))
    try:
        async with env.running(), notifying(settings, store) as notifier, running_api(settings, store) as url:
            await recorded(store, 1)
            since = datetime.now(UTC) - timedelta(seconds=1)
            await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(evs))

            async def disabled() -> bool:
                (crm,) = await api_states(url, "t1.example")
                return bool(crm["state"] == "disabled")

            await wait_for(disabled, 60, "the endpoint disabled")
            (crm,) = await api_states(url, "t1.example")
            # A redirect is a failure, never followed.
            assert crm["last_error"]["status"] == 302
            assert "redirect not followed" in crm["last_error"]["message"]
            assert crm["disabled_reason"].startswith("failing for more than 1 s (CDR_WEBHOOK_MAX_FAILING_S), since ")
            assert "redirect not followed" in crm["disabled_reason"]
            tries = len(receiver.got["/crm"])
            assert notifier.metrics.registry.get_sample_value("cdr_webhook_endpoints_disabled") == 1
            assert notifier.metrics.registry.get_sample_value("cdr_webhook_deliveries_total", {"outcome": "redirect"})
            answer[0] = "ok"
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {TOKENS['t1.example']}"}
            ) as one:
                replay = await one.post("/v1/webhooks/crm/replay", params={"since": since.isoformat()})
                assert replay.status_code == 202

            async def delivered() -> bool:
                return {i for i, _ in versions(receiver.got["/crm"])} == {e["id"] for e in evs}

            await wait_for(delivered, 60, "the changes delivered after the replay")
            (crm,) = await api_states(url, "t1.example")
            assert crm["state"] == "delivering" and crm["disabled_reason"] is None
            assert len([r for r in receiver.got["/crm"] if r.answered == "redirect"]) == tries
            await wait_for(
                lambda: asyncio.sleep(
                    0, notifier.metrics.registry.get_sample_value("cdr_webhook_endpoints_disabled") == 0
                ),
                10,
                "the disabled count back to 0",
            )
            # The endpoint removed from the directory: its lag series goes too.
            lag = {"tenant": "t1.example", "endpoint": "crm"}
            assert notifier.metrics.registry.get_sample_value("cdr_webhook_lag_seconds", lag) is not None
            directory(tmp_path / "tenants.json", {})
            await wait_for(
                lambda: asyncio.sleep(
                    0, notifier.metrics.registry.get_sample_value("cdr_webhook_lag_seconds", lag) is None
                ),
                10,
                "the removed endpoint's lag series gone",
            )
    finally:
        await store.close()


async def test_cdr_notify_killed_mid_stream_resumes_from_its_written_position(
    kafka_bootstrap: str, tmp_path: Path, receiver: Receiver
) -> None:
    """`cdr notify` as its own process (the embedded store is one process's at a time, so
    `cdr run` stores the changes first, while the receiver refuses them all), SIGKILLed while
    it delivers through failures, then started again: every change arrives."""
    refusing = [True]
    rng = random.Random(28)
    behaviours: list[Behaviour] = ["ok", "error", "throttle", "reset"]

    def behave(path: str) -> Behaviour:
        return "error" if refusing[0] else rng.choices(behaviours, weights=[70, 10, 5, 15])[0]

    receiver.behave = behave
    tenants_file = directory(
        tmp_path / "tenants.json", {"t1.example": [hook("all", f"http://127.0.0.1:{receiver.port}/all")]}
    )
    port = free_port()
    env, topic = await service_env(
        kafka_bootstrap,
        tmp_path / "data",
        tenants_file=tenants_file,
        cursor_secret=SECRET,
        api_port=port,
        ops_port=free_port(),  # cdr notify's
        **FAST,
    )
    url = f"http://127.0.0.1:{port}"
    evs = events(300, seed=91, tenants=("t1.example",), start=datetime.now(UTC) - timedelta(hours=2), spacing_s=2)
    log = (tmp_path / "processes.log").open("ab")

    def command(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "cdr.cli", name], env=env, stdout=log, stderr=log)

    async def all_stored() -> bool:
        try:
            async with httpx.AsyncClient(base_url=url) as http:
                text = (await http.get("/metrics")).text
        except httpx.HTTPError:
            return False
        return f"cdr_events_stored_total {float(len(evs))}" in text

    async def recorded_start() -> bool:
        try:
            (state,) = await api_states(url, "t1.example")
        except (httpx.HTTPError, AssertionError, ValueError):
            return False
        return bool(state["state"] != "pending")

    process = command("run")
    try:
        await wait_for(recorded_start, 90, "the endpoint's start recorded")
        await produce(kafka_bootstrap, topic, encoded(evs))
        await wait_for(all_stored, 90, "every event stored")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert not receiver.delivered("/all")
        refusing[0] = False
        process = command("notify")
        await wait_for(lambda: asyncio.sleep(0, len(versions(receiver.got["/all"])) >= 60), 60, "deliveries under way")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        before = {i for i, _ in versions(receiver.got["/all"])}
        assert before < {e["id"] for e in evs}  # killed mid-stream
        process = command("notify")

        async def all_delivered() -> bool:
            return {i for i, _ in versions(receiver.got["/all"])} == {e["id"] for e in evs}

        await wait_for(all_delivered, 120, "every change delivered after the restart")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        log.close()
    requests = receiver.got["/all"]
    verify(requests)
    records = await read_all(kafka_bootstrap, topic, len(evs))
    where = {orjson.loads(r.value)["id"]: (r.partition, r.offset) for r in records}
    seen: set[str] = set()
    last: dict[int, int] = defaultdict(lambda: -1)
    for id_, _ in versions(requests):
        if id_ not in seen:
            seen.add(id_)
            partition, offset = where[id_]
            assert offset > last[partition], id_
            last[partition] = offset


async def test_cdr_notify_stops_at_once_when_asked_while_clickhouse_is_unreachable(tmp_path: Path) -> None:
    ops = free_port()
    env = {
        **os.environ,
        "CDR_CLICKHOUSE_URL": "http://127.0.0.1:1",  # nothing listens: start-up retries
        "CDR_STARTUP_TIMEOUT_MS": "300000",
        "CDR_OPS_PORT": str(ops),
    }
    with (tmp_path / "notify.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "cdr.cli", "notify"], env=env, stdout=log, stderr=log)
        try:

            async def serving() -> bool:
                try:
                    async with httpx.AsyncClient() as http:
                        ready = await http.get(f"http://127.0.0.1:{ops}/readyz")
                except httpx.TransportError:
                    return False
                return ready.status_code == 503 and ready.json()["checks"]["notifier"] == "starting"

            await wait_for(serving, 60, "cdr notify serving /readyz while it starts")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0  # not after the 300 s start-up budget
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("failing_reads", ["GROUP BY", "ORDER BY"], ids=["start-up", "shared-read"])
async def test_the_notifier_stops_while_its_endpoints_wait_on_a_failing_store(
    kafka_bootstrap: str, tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, failing_reads: str
) -> None:
    """Two endpoints of one tenant whose start positions (``GROUP BY``) or shared feed read
    (``ORDER BY``) the store keeps failing (it is down, or of another release's schema): a
    stop ends the notifier at once. (Its start-up, and an endpoint that had joined the other's
    read, once retried for ever.)"""
    base = f"http://127.0.0.1:{receiver.port}"
    env = await webhook_env(kafka_bootstrap, tmp_path, {"t1.example": [hook("a", base + "/a"), hook("b", base + "/b")]})
    settings, store = env.settings, env.store
    query = store.query
    failed = [0]

    async def failing(sql: str, params: Any = None, **kwargs: Any) -> list[Any]:
        if "FROM " + store.qualified(CHANGES_TABLE) in sql and failing_reads in sql:
            failed[0] += 1
            raise StoreUnavailable("the store is down")
        return await query(sql, params, **kwargs)

    monkeypatch.setattr(store, "query", failing)
    try:
        stopping = asyncio.Event()
        metrics = Metrics()
        notifier = Notifier(
            settings.notify, settings.common, store, metrics, hub=feed_hub_for(settings.api, store, metrics)
        )
        task = asyncio.create_task(notifier.run(stopping))

        async def reading() -> bool:
            return failed[0] >= 2

        await wait_for(reading, 30, "the shared read failing")
        stopping.set()
        await asyncio.wait_for(task, 10)
    finally:
        await store.close()


async def test_an_endpoint_delivers_again_after_a_request_cut_off_while_connecting(
    kafka_bootstrap: str, tmp_path: Path, receiver: Receiver
) -> None:
    """The first connection attempt goes to an address that never accepts and the request's
    deadline cuts it off while it connects; the endpoint's name then resolves to the
    receiver. Every change arrives. (The notifier renews an endpoint's client after such an
    attempt: httpcore can leave a cut-off request's connection holding the endpoint's only
    pool slot, encode/httpcore#1093; this httpcore recovers from this case by itself.)"""
    # A listener that never accepts, its backlog full: a connect to it hangs until cut off.
    full = socket.create_server(("127.0.0.2", receiver.port), backlog=0)
    queued = [socket.socket() for _ in range(3)]
    for sock in queued:
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.2", receiver.port))
    answers = [["127.0.0.2"]]

    async def resolve(host: str, port: int) -> list[str]:
        if host == "hooks.example":
            return answers.pop(0) if answers else ["127.0.0.1"]
        return await system_resolver(host, port)

    hooks = {"t1.example": [hook("crm", f"http://hooks.example:{receiver.port}/crm")]}
    # The connect timeout past the request's deadline: the deadline cancels the connect.
    env = await webhook_env(kafka_bootstrap, tmp_path, hooks, webhook_timeout_s=0.5, webhook_connect_timeout_s=5.0)
    settings, store = env.settings, env.store
    evs = events(30, seed=83, tenants=("t1.example",), start=datetime.now(UTC) - timedelta(hours=1))
    try:
        async with env.running(), notifying(settings, store, resolve):
            await recorded(store, 1)
            await produce(settings.kafka.kafka_bootstrap_servers, settings.kafka.kafka_topic, encoded(evs))

            async def all_delivered() -> bool:
                return {i for i, _ in versions(receiver.delivered("/crm"))} == {e["id"] for e in evs}

            await wait_for(all_delivered, 60, "every change delivered after the cut-off connect")
        assert not answers  # the hanging address was tried
    finally:
        for sock in [*queued, full]:
            sock.close()
        await store.close()
