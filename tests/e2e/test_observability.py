"""The dashboard and the alerts the chart ships, checked against what the services export:
every expression parses as PromQL, and every metric and label it reads exists on the
/metrics of a real `cdr ingest`, `cdr api` and `cdr notify` (the processes run on real Kafka and an
embedded store, and are given work so that labelled series appear). Each alert links to
a section of deploy/RUNBOOK.md that exists."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from cdr.api.auth import token_digest
from tests.api.conftest import free_port
from tests.conftest import ROOT
from tests.deploy.test_chart import CHART, by_kind, render, scenario
from tests.e2e.own_broker import metrics_show
from tests.helpers import cdr_process, encoded, events, produce, service_env, wait_for

# Labels Prometheus adds to every scraped series (PodMonitor targets), not the process;
# and the series it makes itself for each target.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "container", "endpoint", "service"}
PROMETHEUS_SERIES = {"up"}
# Samples that count (counters, and a histogram's buckets, count and sum): 0 until work is done.
COUNTED = ("_total", "_bucket", "_count", "_sum")
TENANT, TOKEN = "observed.example", "observability-token"


def monitoring_objects() -> list[dict[str, Any]]:
    values = scenario(CHART / "ci" / "production-values.yaml")
    assert values["grafanaDashboard"]["enabled"] and values["prometheusRule"]["enabled"]
    return render(values)


def alert_rules() -> list[dict[str, Any]]:
    (rule,) = by_kind(monitoring_objects(), "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard() -> dict[str, Any]:
    config = next(o for o in by_kind(monitoring_objects(), "ConfigMap") if o["metadata"]["name"].endswith("-dashboard"))
    loaded: dict[str, Any] = json.loads(config["data"]["cdr-service.json"])
    return loaded


def dashboard_expressions() -> list[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    # Grafana's variables, as Grafana substitutes them before Prometheus sees the query.
    return [e.replace("$__rate_interval", "5m").replace("$namespace", ".*") for e in exprs]


def used_series(expr: str) -> dict[str, set[str]]:
    """metric name -> labels the expression needs on it (matchers, and the grouping
    labels of every aggregation or vector matching above it)."""
    needs: dict[str, set[str]] = {}
    grouping: list[set[str]] = []

    def labels_of(node: Any) -> set[str]:
        modifier = getattr(node, "modifier", None)
        labels = getattr(modifier, "labels", None) or getattr(getattr(modifier, "matching", None), "labels", None)
        return set(labels or ())

    def enter(node: Any) -> None:
        if isinstance(node, promql_parser.AggregateExpr | promql_parser.BinaryExpr):
            grouping.append(labels_of(node))
        if isinstance(node, promql_parser.VectorSelector):
            wanted = {m.name for m in node.matchers.matchers} | set().union(*grouping)
            needs.setdefault(node.name, set()).update(wanted)

    def leave(node: Any) -> None:
        if isinstance(node, promql_parser.AggregateExpr | promql_parser.BinaryExpr):
            grouping.pop()

    promql_parser.walk(promql_parser.parse(expr), enter, leave)
    return needs


def exported(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, from an exposition."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def rule_groups() -> dict[str, list[str]]:
    """Rule group name -> the expressions of its rules."""
    (rule,) = by_kind(monitoring_objects(), "PrometheusRule")
    return {group["name"]: [r["expr"] for r in group["rules"]] for group in rule["spec"]["groups"]}


# Which process each rule group watches: its series must come from that process only,
# or every pod of the other would feed the alert too (unless the rule selects a job).
GROUP_PROCESSES = {
    "cdr-ingest": {"ingest"},
    "cdr-api": {"api"},
    "cdr-notify": {"notify"},
    "cdr-pods": {"ingest", "api", "notify"},
}


@dataclass(frozen=True)
class Selector:
    """One series selector of an expression: the metric and its matchers (name, op, value)."""

    name: str
    matchers: tuple[tuple[str, str, str], ...]

    def matches(self, sample: Sample) -> bool:
        if sample.name != self.name:
            return False
        for label, op, value in self.matchers:
            if label in TARGET_LABELS:
                continue  # set by Prometheus, not the process
            have = sample.labels.get(label, "")
            hit = have == value if op in ("Equal", "NotEqual") else re.fullmatch(value, have) is not None
            if hit != (op in ("Equal", "Re")):
                return False
        return True

    @property
    def selects_job(self) -> bool:
        return any(label == "job" for label, _, _ in self.matchers)


def selectors(expr: str) -> list[Selector]:
    found: list[Selector] = []

    def enter(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name not in PROMETHEUS_SERIES:
            matchers = tuple((m.name, str(m.op).removeprefix("MatchOp."), m.value) for m in node.matchers.matchers)
            found.append(Selector(node.name, matchers))

    promql_parser.walk(promql_parser.parse(expr), enter, lambda node: None)
    return found


def samples(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def test_every_expression_is_promql() -> None:
    exprs = [r["expr"] for r in alert_rules()] + dashboard_expressions()
    assert len(exprs) >= 25
    for expr in exprs:
        promql_parser.parse(expr)  # raises ValueError naming the problem


def test_every_alert_is_documented_and_links_to_its_runbook_section() -> None:
    runbook = (ROOT / "deploy" / "RUNBOOK.md").read_text(encoding="utf-8")
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "CdrConsumerLagGrowing",
        "CdrIngestNoProgress",
        "CdrDeadLetterRatioHigh",
        "CdrIngestUnhealthy",
        "CdrApiErrorRatioHigh",
        "CdrApiLatencyHigh",
        "CdrStoreUnreachable",
        "CdrPodNotReady",
        "CdrScrapeDown",
        "CdrWebhookEndpointDisabled",
        "CdrWebhookLagging",
    }
    for rule in rules:
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], rule["alert"]
        assert notes["runbook_url"].split("#")[1] in anchors, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
    for procedure in ("replaying-the-dead-letter-topic", "rewinding-the-consumer-group", "clickhouse-outage"):
        assert procedure in anchors


async def test_what_the_dashboard_and_alerts_read_is_exported(kafka_bootstrap: str, tmp_path: Path) -> None:
    ingest_port, api_port, api_ops = free_port(), free_port(), free_port()
    env, topic = await service_env(kafka_bootstrap, tmp_path / "ingest-store", ops_port=ingest_port, batch_time_ms=200)
    await produce(kafka_bootstrap, topic, [*encoded(events(50, seed=95, tenants=(TENANT,))), (b"k", b"not json")])
    api_env = {
        **env,
        "CDR_DATA_DIR": str(tmp_path / "api-store"),
        "CDR_API_PORT": str(api_port),
        "CDR_OPS_PORT": str(api_ops),
        "CDR_API_TOKENS": f"{TENANT}:{token_digest(TOKEN)}",
        "CDR_CURSOR_SECRET": "observability-cursor-secret-0123456789",
    }
    with (
        cdr_process("ingest", env, tmp_path / "ingest.log"),
        cdr_process("migrate", api_env, tmp_path / "migrate.log") as migrate,
    ):
        assert migrate.wait(120) == 0, (tmp_path / "migrate.log").read_text()[-2000:]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ingest_port}", timeout=5) as ops:
            await wait_for(lambda: metrics_show(ops, "cdr_events_stored_total 50.0"), 90, "the events stored")
            await wait_for(lambda: metrics_show(ops, "cdr_consumer_lag{"), 30, "the lag of each partition")
            assert (await ops.get("/readyz")).status_code == 200
            ingest_metrics = (await ops.get("/metrics")).text
    with cdr_process("api", api_env, tmp_path / "api.log"):
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", headers=headers, timeout=5) as client,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_ops}", timeout=5) as ops,
        ):
            await wait_for(lambda: answers_ready(ops), 60, "the API ready")
            assert (await client.get("/v1/cdr")).status_code == 200
            assert (await client.get("/v1/cdr", params={"limit": "0"})).status_code == 400
            assert (await client.get("/v1/cdr/no-such-call")).status_code == 404
            api_metrics = (await ops.get("/metrics")).text
    notified = await notify_metrics(env, tmp_path, free_port())

    available = exported(ingest_metrics)
    for name, labels in [*exported(api_metrics).items(), *exported(notified).items()]:
        available.setdefault(name, set()).update(labels)
    exprs = [r["expr"] for r in alert_rules()] + dashboard_expressions()
    missing = []
    for expr in exprs:
        for name, labels in used_series(expr).items():
            if name in PROMETHEUS_SERIES:
                continue
            if name not in available:
                missing.append(f"{name} (in {expr!r})")
                continue
            absent = labels - TARGET_LABELS - available[name]
            if absent:
                missing.append(f"{name} has no label {sorted(absent)} (in {expr!r})")
    assert not missing, "\n".join(missing)


async def test_every_series_read_exists_at_zero_from_the_start(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A fresh `cdr ingest` (nothing on its topic), `cdr api` (no request yet) and `cdr notify` export
    every series the dashboard and the alerts select, counters at 0: a panel of a healthy
    service shows 0 rather than "No data", and ``rate()`` sees the first dead letter or
    5xx. The series an alert group reads come only from the process it watches."""
    ingest_port, api_port, api_ops = free_port(), free_port(), free_port()
    env, _ = await service_env(kafka_bootstrap, tmp_path / "ingest-store", ops_port=ingest_port)
    api_env = {
        **env,
        "CDR_DATA_DIR": str(tmp_path / "api-store"),
        "CDR_API_PORT": str(api_port),
        "CDR_OPS_PORT": str(api_ops),
        "CDR_API_TOKENS": f"{TENANT}:{token_digest(TOKEN)}",
        "CDR_CURSOR_SECRET": "observability-cursor-secret-0123456789",
    }
    exposed: dict[str, list[Sample]] = {}
    with (
        cdr_process("ingest", env, tmp_path / "ingest.log"),
        cdr_process("migrate", api_env, tmp_path / "migrate.log") as migrate,
    ):
        assert migrate.wait(120) == 0, (tmp_path / "migrate.log").read_text()[-2000:]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ingest_port}", timeout=5) as ops:
            await wait_for(lambda: answers_ready(ops), 90, "the ingestor ready")
            # The lag series are per assigned partition, refreshed by each readiness probe.
            await wait_for(lambda: metrics_show(ops, "cdr_consumer_lag{"), 30, "the lag of each partition")
            exposed["ingest"] = samples((await ops.get("/metrics")).text)
    with cdr_process("api", api_env, tmp_path / "api.log"):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_ops}", timeout=5) as ops:
            await wait_for(lambda: answers_ready(ops), 60, "the API ready")
            exposed["api"] = samples((await ops.get("/metrics")).text)
    exposed["notify"] = samples(await notify_metrics(env, tmp_path, free_port()))

    reads = [(GROUP_PROCESSES[group], expr) for group, exprs in rule_groups().items() for expr in exprs]
    reads += [(set(exposed), expr) for expr in dashboard_expressions()]
    problems = []
    for processes, expr in reads:
        for selector in selectors(expr):
            matched = {process: [s for s in exposed[process] if selector.matches(s)] for process in exposed}
            if not any(matched[process] for process in processes):
                problems.append(f"no {selector} (in {expr!r})")
            if processes != set(exposed) and not selector.selects_job:
                problems += [
                    f"{p} exports {selector.name}, read by {expr!r}" for p in set(exposed) - processes if matched[p]
                ]
            problems += [
                f"{s.name}{s.labels} = {s.value} at start"
                for found in matched.values()
                for s in found
                if s.name.endswith(COUNTED) and s.value != 0
            ]
    assert not problems, "\n".join(sorted(set(problems)))


def notify_env(env: dict[str, str], tmp_path: Path, ops_port: int) -> dict[str, str]:
    """`cdr notify` on a store of its own, with one webhook configured (its lag series is per
    endpoint); nothing is ever delivered (nothing is stored there)."""
    directory = tmp_path / "tenants.json"
    hook = {"name": "crm", "url": "https://hooks.example/cdr", "secrets": ["whsec_" + "a" * 32]}
    directory.write_text(json.dumps({"tenants": {TENANT: {"tokens": [token_digest(TOKEN)], "webhooks": [hook]}}}))
    return {
        **env,
        "CDR_DATA_DIR": str(tmp_path / "notify-store"),
        "CDR_OPS_PORT": str(ops_port),
        "CDR_TENANTS_FILE": str(directory),
    }


async def notify_metrics(env: dict[str, str], tmp_path: Path, ops_port: int) -> str:
    with cdr_process("notify", notify_env(env, tmp_path, ops_port), tmp_path / "notify.log"):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ops_port}", timeout=5) as ops:
            await wait_for(lambda: answers_ready(ops), 90, "the notifier ready")
            await wait_for(lambda: metrics_show(ops, "cdr_webhook_lag_seconds{"), 30, "the endpoint's lag")
            return (await ops.get("/metrics")).text


async def answers_ready(ops: httpx.AsyncClient) -> bool:
    try:
        return (await ops.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("expr", ["sum(rate(x[5m])", "rate(x[5minutes])"])
def test_the_parser_refuses_broken_promql(expr: str) -> None:
    with pytest.raises(ValueError):
        promql_parser.parse(expr)
