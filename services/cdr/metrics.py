"""Prometheus metrics of both services, on a registry owned by the process (no globals).

Every series the dashboard and the alerts read exists from the start, at 0: a labelled
series is created for each label value known up front (below), since prometheus_client
makes a child only when it is first used. Without that a healthy ingestor had no
dead-letter series at all ("No data" on the panel), and the first dead letter or 5xx of
a process was invisible to ``rate()``, which needs a sample before the increase."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BATCH_BUCKETS = (1, 10, 100, 1_000, 5_000, 10_000, 20_000, 50_000, 100_000)
_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# The label values of the ingest series, as types: the code that records them is held to
# these by mypy, so a value added there cannot be missing from the series set up here.
DeadLetterKind = Literal[
    "empty", "too_large", "not_json", "not_object", "unknown_schema_version", "invalid_event", "refused_by_clickhouse"
]
"""Why a message was dead-lettered: the ``reason`` label, and the DLQ's ``x-dlq-kind`` header."""
IngestStage = Literal["validate", "dead_letter", "write", "commit"]
Parser = Literal["compiled", "pydantic"]
FeedPageSource = Literal["read_ahead", "store"]
"""Where a change-feed pull page began: the run an earlier read of its cursor read ahead
(this replica's memory), or a read of the store."""
Role = Literal["ingest", "api", "notify"]
"""What a process does: `cdr ingest`, `cdr api`, `cdr notify`, or all three (`cdr run`)."""
DeliveryOutcome = Literal["delivered", "http_error", "timeout", "connection_error", "redirect", "refused"]
"""How one webhook POST ended: 2xx; another status; no answer in time; the connection failed
or was reset; a 3xx (never followed); the address refused (SSRF rule)."""

DEAD_LETTER_KINDS: tuple[DeadLetterKind, ...] = get_args(DeadLetterKind)


class Metrics:
    """All metrics; one instance per process, passed to whoever records.

    ``roles``: the metrics of the other role are still made (the code recording them
    stays unconditional) but not registered, so the process does not export them: an API
    pod exporting the ingestor's ``cdr_ingest_healthy 0`` fired CdrIngestUnhealthy for
    every API pod."""

    def __init__(self, registry: CollectorRegistry | None = None, *, roles: tuple[Role, ...] = get_args(Role)) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ingest = r if "ingest" in roles else None
        api = r if "api" in roles else None
        notify = r if "notify" in roles else None
        # Ingest
        self.events_consumed = Counter(
            "cdr_events_consumed_total", "Messages read from the call-ended topic.", registry=ingest
        )
        self.events_parsed = Counter(
            "cdr_events_parsed_total",
            "Messages validated, by parser: compiled (the batch validator, rust/cdr-validate) or pydantic (the rest).",
            ["parser"],
            registry=ingest,
        )
        self.events_stored = Counter("cdr_events_stored_total", "Valid events written to ClickHouse.", registry=ingest)
        self.events_dead_lettered = Counter(
            "cdr_events_dead_lettered_total",
            "Invalid messages published to the dead-letter topic.",
            ["reason"],
            registry=ingest,
        )
        self.batch_size = Histogram(
            "cdr_ingest_batch_size", "Messages per ingested batch.", buckets=_BATCH_BUCKETS, registry=ingest
        )
        self.insert_seconds = Histogram(
            "cdr_insert_duration_seconds",
            "Time of one ClickHouse batch insert.",
            buckets=_SECONDS_BUCKETS,
            registry=ingest,
        )
        self.stage_seconds = Histogram(
            "cdr_ingest_stage_duration_seconds",
            "Time of each step of one batch: validate (both parsers), dead_letter (DLQ send), write"
            " (ClickHouse insert, retries included), commit (Kafka offsets).",
            ["stage"],
            buckets=_SECONDS_BUCKETS,
            registry=ingest,
        )
        self.insert_failures = Counter(
            "cdr_insert_failures_total", "Failed ClickHouse insert attempts (retried).", registry=ingest
        )
        self.consumer_lag = Gauge(
            "cdr_consumer_lag",
            "Messages behind the partition's high watermark (refreshed every health probe).",
            ["topic", "partition"],
            registry=ingest,
        )
        self.ingest_healthy = Gauge(
            "cdr_ingest_healthy",
            "1 while the ingestor is ready (Kafka reachable, inserts and dead-letter sends succeeding, no stall).",
            registry=ingest,
        )
        self.kafka_up = Gauge("cdr_kafka_up", "1 while the last Kafka probe was answered in time.", registry=ingest)
        self.assigned_partitions = Gauge(
            "cdr_consumer_assigned_partitions", "Partitions assigned to this ingestor.", registry=ingest
        )
        self.last_progress = Gauge(
            "cdr_ingest_last_progress_timestamp_seconds",
            "Unix time of the last committed batch, or of the last probe that found nothing waiting.",
            registry=ingest,
        )
        self.dlq_send_failures = Counter(
            "cdr_dlq_send_failures_total", "Failed dead-letter send attempts (retried).", registry=ingest
        )
        for kind in DEAD_LETTER_KINDS:
            self.events_dead_lettered.labels(reason=kind)
        for stage in get_args(IngestStage):
            self.stage_seconds.labels(stage=stage)
        for parser in get_args(Parser):
            self.events_parsed.labels(parser=parser)
        # Both
        self.ready = Gauge(
            "cdr_ready",
            "1 when this process last answered /readyz ready (the kubelet asks every few seconds), else 0.",
            registry=r,
        )
        # API
        self.store_up = Gauge(
            "cdr_store_up",
            "API (and `cdr run`): 1 while ClickHouse answered the last health check (every /readyz), else 0."
            " The API stays ready while it is 0: its requests answer 503 with Retry-After themselves.",
            registry=api,
        )
        self.http_requests = Counter(
            "cdr_http_requests_total", "API requests by route and status.", ["route", "status"], registry=api
        )
        self.http_seconds = Histogram(
            "cdr_http_request_duration_seconds",
            "API request latency.",
            ["route"],
            buckets=_SECONDS_BUCKETS,
            registry=api,
        )
        self.feed_pages = Counter(
            "cdr_feed_pages_total",
            "Change-feed pull pages by where they began: read_ahead (what a read of the page before read"
            " past it, kept by this replica) or store (a read).",
            ["source"],
            registry=api,
        )
        for source in get_args(FeedPageSource):
            self.feed_pages.labels(source=source)
        self.feed_read_ahead_held = Gauge(
            "cdr_feed_read_ahead_changes",
            "Changes this replica holds read ahead of change-feed pull readers (reads in flight counted"
            " at their size); at most 32,000, ~1.9 KB each.",
            registry=api,
        )

        # The change feed's shared reader (the API's streams and long polls, the notifier's
        # endpoints): what its polls cost ClickHouse, which does not grow with listeners.
        hub = r if api is not None or notify is not None else None
        self.feed_hub_polls = Counter(
            "cdr_feed_hub_polls_total",
            "Reads of the change feed's shared reader (one per poll interval or stored batch while"
            " anyone listens, whatever the number of streams, long polls and webhook endpoints).",
            registry=hub,
        )
        self.feed_hub_rows = Counter(
            "cdr_feed_hub_rows_total", "Rows the change feed's shared reader's polls read.", registry=hub
        )

        # Notify
        self.webhook_deliveries = Counter(
            "cdr_webhook_deliveries_total",
            "Webhook POSTs by outcome: delivered (2xx), http_error, timeout, connection_error, redirect, refused.",
            ["outcome"],
            registry=notify,
        )
        self.webhook_lag = Gauge(
            "cdr_webhook_lag_seconds",
            "Per endpoint: age (since it was emitted) of the oldest change read and not yet delivered; 0 when"
            " every change read is delivered. One series per configured endpoint (at most 20 per tenant).",
            ["tenant", "endpoint"],
            registry=notify,
        )
        self.webhook_disabled = Gauge(
            "cdr_webhook_endpoints_disabled",
            "Endpoints not delivered to: failing past CDR_WEBHOOK_MAX_FAILING_S, their URL refused, or"
            " enabled: false in the tenant directory.",
            registry=notify,
        )
        for outcome in get_args(DeliveryOutcome):
            self.webhook_deliveries.labels(outcome=outcome)

    def stage(self, name: IngestStage) -> Histogram:
        """The duration histogram of one step of a batch."""
        return self.stage_seconds.labels(stage=name)

    def parsed(self, parser: Parser) -> Counter:
        """The count of messages one parser validated."""
        return self.events_parsed.labels(parser=parser)

    def feed_page(self, source: FeedPageSource) -> Counter:
        """The count of change-feed pull pages that began one way."""
        return self.feed_pages.labels(source=source)

    def delivered(self, outcome: DeliveryOutcome) -> Counter:
        """The count of webhook POSTs that ended one way."""
        return self.webhook_deliveries.labels(outcome=outcome)

    def dead_lettered(self, kind: DeadLetterKind) -> Counter:
        """The count of messages dead-lettered for one reason."""
        return self.events_dead_lettered.labels(reason=kind)

    def count_routes(self, routes: Iterable[str], statuses: Iterable[int]) -> None:
        """Set up the request series of each route label × response status the API sends
        (the app's routes are known once it is built)."""
        statuses = tuple(statuses)
        for route in routes:
            self.http_seconds.labels(route=route)
            for status in statuses:
                self.http_requests.labels(route=route, status=str(status))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
