"""Prometheus metrics of both services, on a registry owned by the process (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BATCH_BUCKETS = (1, 10, 100, 1_000, 5_000, 10_000, 20_000, 50_000, 100_000)
_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """All metrics; one instance per process, passed to whoever records."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # Ingest
        self.events_consumed = Counter(
            "cdr_events_consumed_total", "Messages read from the call-ended topic.", registry=r
        )
        self.events_parsed = Counter(
            "cdr_events_parsed_total",
            "Messages validated, by parser: lean (the batch fast path) or pydantic (the rest).",
            ["parser"],
            registry=r,
        )
        self.events_stored = Counter("cdr_events_stored_total", "Valid events written to ClickHouse.", registry=r)
        self.events_dead_lettered = Counter(
            "cdr_events_dead_lettered_total",
            "Invalid messages published to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "cdr_ingest_batch_size", "Messages per ingested batch.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.insert_seconds = Histogram(
            "cdr_insert_duration_seconds", "Time of one ClickHouse batch insert.", buckets=_SECONDS_BUCKETS, registry=r
        )
        self.stage_seconds = Histogram(
            "cdr_ingest_stage_duration_seconds",
            "Time of each step of one batch: validate (both parsers), dead_letter (DLQ send), write"
            " (ClickHouse insert, retries included), commit (Kafka offsets).",
            ["stage"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(
            "cdr_ready",
            "1 when this process last answered /readyz ready (the kubelet asks every few seconds), else 0.",
            registry=r,
        )
        self.insert_failures = Counter(
            "cdr_insert_failures_total", "Failed ClickHouse insert attempts (retried).", registry=r
        )
        self.consumer_lag = Gauge(
            "cdr_consumer_lag",
            "Messages behind the partition's high watermark (refreshed every health probe).",
            ["topic", "partition"],
            registry=r,
        )
        self.ingest_healthy = Gauge(
            "cdr_ingest_healthy",
            "1 while the ingestor is ready (Kafka reachable, inserts and dead-letter sends succeeding, no stall).",
            registry=r,
        )
        self.kafka_up = Gauge("cdr_kafka_up", "1 while the last Kafka probe was answered in time.", registry=r)
        self.assigned_partitions = Gauge(
            "cdr_consumer_assigned_partitions", "Partitions assigned to this ingestor.", registry=r
        )
        self.last_progress = Gauge(
            "cdr_ingest_last_progress_timestamp_seconds",
            "Unix time of the last committed batch, or of the last probe that found nothing waiting.",
            registry=r,
        )
        self.dlq_send_failures = Counter(
            "cdr_dlq_send_failures_total", "Failed dead-letter send attempts (retried).", registry=r
        )
        self.store_up = Gauge(
            "cdr_store_up",
            "API (and `cdr run`): 1 while ClickHouse answered the last health check (every /readyz), else 0."
            " The API stays ready while it is 0: its requests answer 503 with Retry-After themselves.",
            registry=r,
        )
        # API
        self.http_requests = Counter(
            "cdr_http_requests_total", "API requests by route and status.", ["route", "status"], registry=r
        )
        self.http_seconds = Histogram(
            "cdr_http_request_duration_seconds", "API request latency.", ["route"], buckets=_SECONDS_BUCKETS, registry=r
        )

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
