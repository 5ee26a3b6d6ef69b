"""The one settings object, read from ``CDR_*`` environment variables, in groups by concern.

Built once by the command line (:func:`load_settings`) and passed down; nothing reads the
environment anywhere else. Each group is handed only to the code that needs it: the store
gets ``clickhouse``, the ingestor ``kafka``, ``ingest`` and ``common``, the API ``api`` and
``common``, the notifier ``notify`` and ``common``; only the commands that compose several
parts (``cli``, ``runner``, ``notify.service``, ``importer``) hold the whole object.

The groups (``Settings`` attribute: what it holds), in the order the README, ``cdr --help``
and the chart's values.yaml list them:

- ``common``: log level, the default tenant profile's timezone and phone region, the tenant
  directory (``CDR_TENANTS_FILE``: the API, the ingestor and the notifier all read it), the
  ops port and the start-up timeout (every long-running command).
- ``kafka``: brokers, topics, the consumer group, timeouts, security (TLS, SASL), and the
  partitions and replication factor of ``cdr create-topics``.
- ``clickhouse``: where the store is (``CDR_CLICKHOUSE_URL`` or ``CDR_DATA_DIR``), database,
  cluster and replica delay, credentials and TLS, the store's client pools (the export
  readers, ``CDR_EXPORT_READERS``, are one of them) and the limits every API read runs under
  (``CDR_QUERY_*``: ClickHouse query settings the store applies to each read).
- ``ingest``: batching, insert retries, the event checks (size, clock skew, call length,
  correction grace), the dead-letter limit, and stop and health timing
  (``CDR_SHUTDOWN_TIMEOUT_MS`` bounds the ingestor's stop, which nothing else uses).
- ``notify``: ``cdr notify``'s webhook delivery (``CDR_WEBHOOK_*``).
- ``api``: listen address and port (the ops servers listen on the same address), tokens,
  cursors, page limits, HTTP limits, rate and concurrency limits, exports and the change
  feed (``CDR_FEED_*``: its retention is what ``cdr migrate`` applies to the table and what
  feed cursors are checked against; its poll interval also paces the notifier's reader).

Variable names are unchanged by the grouping: a field's name is its variable's without the
``CDR_`` prefix in every group (``settings.ingest.batch_size`` is ``CDR_BATCH_SIZE``; no
nested delimiter, no group prefix), so a grep for either finds both, and a group's
:meth:`~_Group.env` names a field's variable for error messages."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cdr.model.event import MAX_CALL_S, TENANT_PATTERN
from cdr.startup import masked_url

# Matched with fullmatch: `$` would let a trailing newline through.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# A Kafka topic name as the broker defines it (org.apache.kafka.common.internals.Topic).
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
TENANT_ID = re.compile(TENANT_PATTERN.removeprefix("^").removesuffix("$"), re.ASCII)
_SECRET_NAMES = ("SECRET", "PASSWORD", "TOKENS")


class SettingsError(Exception):
    """Configuration that cannot start the service (exit code 2); names each bad variable.

    ``problems``: one ``{"setting", "value", "error"}`` per bad variable, for the single
    structured log line the command writes (secret values masked)."""

    def __init__(self, message: str, problems: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        if problems is None:
            setting, sep, error = message.partition(": ")
            named = sep and setting.startswith("CDR_") and " " not in setting
            problems = [{"setting": setting, "error": error} if named else {"error": message}]
        self.problems = problems


class _Group(BaseSettings):
    """One group of settings; each field is the variable ``CDR_<NAME>`` (see the module)."""

    model_config = SettingsConfigDict(env_prefix="CDR_", extra="ignore", frozen=True)

    title: ClassVar[str]

    @classmethod
    def env(cls, field: str) -> str:
        """The environment variable of ``field`` (KeyError for a field not in this group)."""
        if field not in cls.model_fields:
            raise KeyError(f"{cls.__name__} has no field {field!r}")
        return "CDR_" + field.upper()


class CommonSettings(_Group):
    """What several processes share: logging, tenant defaults and directory, ops port, start-up."""

    title: ClassVar[str] = "Common"

    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    timezone: str = Field(
        "Asia/Ho_Chi_Minh",
        description="Timezone of naive PBX timestamps and of the API's times (the tenant's timezone).",
    )
    phone_region: str = Field("VN", description="Region for reading national phone numbers.")
    tenants_file: Path | None = Field(
        None,
        description=(
            "The tenant directory (YAML, or JSON by its .json suffix): per tenant its token digests, timezone,"
            " phone region and rate limit; re-read when it changes. Added to CDR_API_TOKENS(_FILE)."
        ),
    )
    ops_port: int = Field(
        9100,
        ge=0,
        le=65535,
        description=(
            "Port of /healthz, /readyz and /metrics of `cdr ingest` and `cdr api` (`cdr run` serves them on"
            " the API port)."
        ),
    )
    startup_timeout_ms: int = Field(
        60_000,
        ge=0,
        le=3_600_000,
        description=(
            "How long start-up retries an unreachable Kafka or ClickHouse (with back-off) before it gives up"
            " with exit code 1."
        ),
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return known_timezone(value)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"must be DEBUG, INFO, WARNING or ERROR, not {value!r}")
        return upper

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class KafkaSettings(_Group):
    """Brokers, topics, consumer group and security; the ingestor, create-topics and simulate read it."""

    title: ClassVar[str] = "Kafka"

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port."
    )
    kafka_topic: str = Field("pbx.call-ended", description="Topic the PBX publishes call-ended events to.")
    kafka_dlq_topic: str = Field("pbx.call-ended.dlq", description="Dead-letter topic for events that fail validation.")
    kafka_group_id: str = Field("cdr-ingest", description="Consumer group of the ingestors.")
    kafka_group_instance_id: str | None = Field(
        None,
        description=(
            "Static group membership id (e.g. a StatefulSet pod name): a restarted ingestor "
            "gets its partitions back at once instead of after a rebalance."
        ),
    )
    kafka_session_timeout_ms: int = Field(
        10_000, ge=1_000, description="Consumer session timeout; a dead ingestor's partitions move after it."
    )
    kafka_auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new consumer group starts: earliest or latest."
    )
    kafka_isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        "read_committed",
        description=(
            "Which events of transactional producers are read: read_committed skips those of aborted"
            " transactions (and waits for open ones); read_uncommitted reads them all, aborted ones too."
        ),
    )
    kafka_request_timeout_ms: int = Field(
        10_000,
        ge=1_000,
        le=300_000,
        description=(
            "Longest wait for one Kafka operation of ours: an offset commit, a dead-letter send, a health probe."
            " A commit that times out is not an error (the batch is re-read, duplicates collapse)."
        ),
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description=(
            "How to reach the brokers: PLAINTEXT, SSL (TLS; mutual TLS with CDR_KAFKA_SSL_CERT_FILE),"
            " SASL_SSL (SASL over TLS, what production clusters ask for) or SASL_PLAINTEXT."
        ),
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism for SASL_SSL / SASL_PLAINTEXT."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (or CDR_KAFKA_SASL_PASSWORD_FILE).")
    kafka_sasl_password_file: Path | None = Field(
        None, description="File holding the SASL password, e.g. a mounted Secret (one trailing newline ignored)."
    )
    kafka_ssl_ca_file: Path | None = Field(
        None, description="PEM bundle of the CAs that sign the brokers' certificates; unset: the system's CAs."
    )
    kafka_ssl_cert_file: Path | None = Field(
        None, description="PEM client certificate for mutual TLS (its key in CDR_KAFKA_SSL_KEY_FILE or the same file)."
    )
    kafka_ssl_key_file: Path | None = Field(None, description="PEM private key of the client certificate.")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="Password of an encrypted client key.")
    kafka_ssl_check_hostname: bool = Field(
        True, description="Check that a broker's certificate names the host we connect to (leave on in production)."
    )
    kafka_partitions: int = Field(
        4, ge=1, description="Partitions of the topics `cdr create-topics` creates (ingestor replicas at most)."
    )
    kafka_replication_factor: int = Field(
        -1,
        ge=-1,
        description=(
            "Replication factor of the topics `cdr create-topics` creates; -1: the brokers'"
            " default.replication.factor. Never below the brokers' min.insync.replicas (acks=all)."
        ),
    )

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        servers = [part.strip() for part in value.split(",")]
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server!r} is not host:port (comma-separated for several brokers)")
        return ",".join(servers)

    @field_validator("kafka_replication_factor")
    @classmethod
    def _replication_factor(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (the brokers' default) or at least 1")
        return value

    @field_validator("kafka_topic", "kafka_dlq_topic")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        # Checked here: the broker refuses a bad name only after a connection, as another error.
        if not _TOPIC.fullmatch(value) or value in (".", ".."):
            raise ValueError(
                f"{value[:60]!r} is not a Kafka topic name (1-249 of ASCII letters, digits, '.', '_', '-';"
                " not '.' or '..')"
            )
        return value

    @model_validator(mode="after")
    def _security(self) -> Self:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not self.kafka_sasl_username:
            raise ValueError(
                f"CDR_KAFKA_SASL_USERNAME is required with CDR_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}"
            )
        if sasl and (self.kafka_sasl_password is None) == (self.kafka_sasl_password_file is None):
            raise ValueError("set exactly one of CDR_KAFKA_SASL_PASSWORD and CDR_KAFKA_SASL_PASSWORD_FILE for SASL")
        tls = self.kafka_security_protocol in ("SSL", "SASL_SSL")
        tls_files = (self.kafka_ssl_ca_file, self.kafka_ssl_cert_file, self.kafka_ssl_key_file)
        if not tls and any(f is not None for f in tls_files):
            # A CA file next to PLAINTEXT means the operator expects TLS and would not get it.
            raise ValueError("CDR_KAFKA_SSL_* files need CDR_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL")
        if self.kafka_ssl_key_file is not None and self.kafka_ssl_cert_file is None:
            raise ValueError("CDR_KAFKA_SSL_KEY_FILE needs CDR_KAFKA_SSL_CERT_FILE")
        return self


class ClickHouseSettings(_Group):
    """Where the store is and how it is reached, its client pools and the limits of API reads."""

    title: ClassVar[str] = "ClickHouse"

    clickhouse_url: str | None = Field(
        None,
        description=(
            "Where ClickHouse runs, one client library either way: http(s)://[user@]host[:port] for a server"
            " or cluster, or chdb:///abs/dir for the embedded engine in this process. Unset: chdb in CDR_DATA_DIR."
        ),
    )
    data_dir: Path = Field(
        Path("./data"), description="Folder of the embedded ClickHouse store when CDR_CLICKHOUSE_URL is unset."
    )
    clickhouse_database: str = Field("cdr", description="Database holding the CDR tables.")
    clickhouse_cluster: str | None = Field(
        None,
        description=(
            "Cluster name: DDL runs ON CLUSTER and tables use ReplicatedReplacingMergeTree. Unset: a single server."
            " One shard, any number of replicas (`cdr migrate` refuses more shards)."
        ),
    )
    clickhouse_max_replica_delay_s: int = Field(
        5,
        ge=1,
        le=3_600,
        description=(
            "Cluster mode: a replica further behind than this (system.replicas absolute_delay) refuses API reads"
            " with a 503 and Retry-After, so a scroll never skips a record stored this long before it started."
        ),
    )
    clickhouse_password: SecretStr | None = Field(
        None, description="ClickHouse password (kept out of the URL and the logs)."
    )
    clickhouse_ca_file: Path | None = Field(
        None, description="PEM bundle of the CAs that sign an https:// server's certificate; unset: the system's CAs."
    )
    clickhouse_verify: bool = Field(
        True, description="Verify an https:// server's certificate and host name (leave on in production)."
    )
    clickhouse_client_cert_file: Path | None = Field(
        None, description="PEM client certificate for an https:// server that asks for one (mutual TLS)."
    )
    clickhouse_client_key_file: Path | None = Field(
        None, description="PEM private key of CDR_CLICKHOUSE_CLIENT_CERT_FILE (unset: in the same file)."
    )
    clickhouse_pool_size: int = Field(
        8,
        ge=1,
        le=64,
        description="ClickHouse clients serving API reads, one per worker thread: reads run this many at once.",
    )
    clickhouse_write_pool_size: int = Field(
        2,
        ge=1,
        le=16,
        description=(
            "ClickHouse clients for inserts, DDL and the ingest parse, apart from the read clients so that"
            " a read never waits behind a write."
        ),
    )
    clickhouse_uncompressed_cache_mb: int = Field(
        1024,
        ge=0,
        le=1024 * 1024,
        description=(
            "Embedded engine only: memory (resident, up to this much, as it fills) for the decompressed"
            " blocks of the API's reads of records (a page, a scroll batch, a lookup, a phone search;"
            " ClickHouse's uncompressed cache), never filled by ingest, totals, stats or exports; 0: off."
            " The first store a process opens sets it. A server keeps its own (its uncompressed_cache_size)."
        ),
    )
    export_readers: int = Field(
        2,
        ge=1,
        le=64,
        description=(
            "Store workers of the replica's export reads, all exports together: at most this many in the"
            " engine at once, each costing the embedded engine ~35-40 MB of working memory while it runs."
            " A worker is held only while a window is read, never while a client takes it."
        ),
    )
    query_timeout_ms: int = Field(
        10_000,
        ge=100,
        le=600_000,
        description=(
            "Longest one API read may run (ClickHouse max_execution_time; the HTTP client waits 1 s more)."
            " Keep it below the readiness probe's timeout x failure threshold."
        ),
    )
    query_max_rows_to_read: int = Field(
        0, ge=0, description="Most rows one API read may scan (ClickHouse max_rows_to_read); 0: no limit."
    )
    query_max_memory_bytes: int = Field(
        2 * 1024**3, ge=0, description="Most memory one API read may use (ClickHouse max_memory_usage); 0: no limit."
    )

    @field_validator("clickhouse_url")
    @classmethod
    def _clickhouse_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme == "chdb":
            if parts.netloc or not parts.path.startswith("/"):
                raise ValueError("an embedded store is chdb:///absolute/folder (three slashes)")
            return value
        if parts.scheme in ("http", "https") and parts.hostname:
            if parts.password is not None:
                # A URL is logged, shown in errors and process listings; a password has its own setting.
                raise ValueError("must not carry a password: put it in CDR_CLICKHOUSE_PASSWORD")
            return value
        raise ValueError("must be http(s)://[user@]host[:port] or chdb:///absolute/folder")

    @field_validator("clickhouse_database", "clickhouse_cluster")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        # Both end up in DDL as identifiers, where parameters cannot be used.
        if value is not None and not _IDENTIFIER.fullmatch(value):
            raise ValueError(f"{value!r} is not a plain identifier (letters, digits, _)")
        return value

    @property
    def clickhouse_dsn(self) -> str:
        """The ClickHouse URL in effect: CDR_CLICKHOUSE_URL, or chdb in CDR_DATA_DIR."""
        if self.clickhouse_url is not None:
            return self.clickhouse_url
        return "chdb://" + str(self.data_dir.resolve())

    @property
    def embedded(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb:")


class IngestSettings(_Group):
    """How the ingestor batches, checks, stores and dead-letters events, and stops."""

    title: ClassVar[str] = "Ingest"

    batch_size: int = Field(20_000, ge=1, le=1_000_000, description="Most events in one ClickHouse insert.")
    batch_time_ms: int = Field(
        500,
        ge=10,
        le=60_000,
        description=(
            "Longest a partly filled batch waits for more events before it is written: an upper bound on"
            " how long a quiet PBX's call waits, and at low traffic about the time between inserts."
        ),
    )
    revoke_wait_ms: int = Field(
        10_000,
        ge=0,
        le=300_000,
        description=(
            "On a rebalance, how long the batch in flight may take to be stored and committed before its"
            " revoked partitions are given up (their new owner then reads it again)."
        ),
    )
    insert_retry_initial_ms: int = Field(
        200, ge=1, description="First back-off after a failed insert; doubles up to the maximum."
    )
    insert_retry_max_ms: int = Field(10_000, ge=1, description="Longest back-off between insert retries.")
    max_event_bytes: int = Field(
        65_536, ge=1_024, description="Larger messages are dead-lettered unread (a CDR is ~0.5 KB)."
    )
    max_future_skew_s: int = Field(
        3_600,
        ge=0,
        le=31 * 86_400,
        description=(
            "An event whose emitted_at is later than now plus this many seconds is dead-lettered: that version"
            " would win over every correction of the call until then (a PBX clock far ahead)."
        ),
    )
    max_call_seconds: int = Field(
        MAX_CALL_S,
        ge=60,
        le=366 * 86_400,
        description=(
            "Longest call stored: an event whose time_ended is more than this many seconds after its"
            " time_started, or whose duration is longer, is dead-lettered. A day by default: a longer"
            " call is a channel the PBX never hung up or a clock jump, not a conversation."
        ),
    )
    correction_grace_s: int = Field(
        10,
        ge=0,
        le=86_400,
        description=(
            "A call's first version is emitted when it ends: an event emitted within this many seconds"
            " after its time_ended is taken for one. Any other is looked up among the stored versions of"
            " its call before it is written, so that a correction that moves time_started leaves one"
            " record (a lookup reads ~one granule of a key table per event). Set it above the PBX's"
            " hang-up-to-emission delay; a correction emitted within it of its own end is not looked up."
        ),
    )
    dlq_max_ratio: float = Field(
        0.5,
        gt=0,
        le=1,
        description=(
            "Stop the consumer when more than this share of a partition's recent messages "
            "are invalid: something is systematically wrong, dead-lettering would hide it."
        ),
    )
    dlq_window: int = Field(
        1_000, ge=10, description="How many recent messages per partition the dead-letter limit looks at."
    )
    dlq_min_messages: int = Field(
        100, ge=1, description="The dead-letter limit applies only once a partition saw this many messages."
    )
    shutdown_timeout_ms: int = Field(
        20_000,
        ge=1_000,
        le=600_000,
        description=(
            "Longest a stop (SIGTERM) may take: the batch in hand is finished, or abandoned uncommitted (it is"
            " re-read after restart), then the process exits 0. Keep it below the pod's grace period."
        ),
    )
    stall_after_ms: int = Field(
        120_000,
        ge=1_000,
        description=(
            "Not ready when messages wait (lag > 0) and no batch was stored for this long, or a dead-letter"
            " send has been failing for this long."
        ),
    )
    health_interval_ms: int = Field(
        5_000, ge=100, le=300_000, description="How often the ingestor probes Kafka and refreshes lag and readiness."
    )

    @model_validator(mode="after")
    def _retry_bounds(self) -> Self:
        if self.insert_retry_initial_ms > self.insert_retry_max_ms:
            raise ValueError("CDR_INSERT_RETRY_INITIAL_MS must not exceed CDR_INSERT_RETRY_MAX_MS")
        return self


class ApiSettings(_Group):
    """The query API: listening, tokens, cursors, limits, exports and the change feed."""

    title: ClassVar[str] = "API"

    api_host: str = Field("127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(8000, ge=0, le=65535, description="Port the API listens on.")
    api_tokens: str = Field(
        "",
        description="Comma-separated tenant_id:sha256hex(token) entries; only digests, never tokens.",
    )
    api_tokens_file: Path | None = Field(
        None, description="File of tenant_id:sha256hex(token) lines, added to CDR_API_TOKENS."
    )
    cursor_secret: SecretStr | None = Field(
        None,
        description=(
            "Key sealing scroll cursors (AES-256-GCM via HKDF); the same on every API replica, at least 32 characters. "
            "Required by the API."
        ),
    )
    cursor_secret_previous: SecretStr | None = Field(
        None,
        description=(
            "The cursor key being rotated out: cursors it sealed are still accepted (new ones are sealed with"
            " CDR_CURSOR_SECRET). Remove it once CDR_CURSOR_TTL_S has passed since the rotation."
        ),
    )
    cursor_ttl_s: int = Field(3_600, ge=1, description="How long a scroll_id stays valid, in seconds.")
    default_limit: int = Field(10, ge=1, description="Records per response when limit is not given.")
    max_limit: int = Field(1_000, ge=1, description="Largest accepted limit.")
    max_offset: int = Field(
        100_000,
        ge=0,
        le=1_000_000_000,
        description=(
            "Deepest pagination: a larger offset (or (page - 1) x limit) is a 400 that points to scroll, whose"
            " batches cost the same at any depth while an offset read costs its depth."
        ),
    )
    api_max_url_bytes: int = Field(
        16_384,
        ge=256,
        le=1_048_576,
        description="Longest request URL (path and query) the API accepts; a longer one is a 414.",
    )
    api_max_header_bytes: int = Field(
        16_384, ge=1_024, le=1_048_576, description="Largest total of request headers the API accepts; larger is a 431."
    )
    api_keep_alive_s: int = Field(
        75,
        ge=1,
        le=3_600,
        description=(
            "Seconds the API keeps an idle HTTP connection open. Above the upstream idle timeout of whatever"
            " proxies it (ingress-nginx and most cloud load balancers: 60 s), so the proxy, never the API,"
            " closes an idle connection: otherwise a request sent as the API closes it gets a 502."
        ),
    )
    rate_limit_per_s: float = Field(
        0, ge=0, description="Requests per second per tenant and API replica; 0 turns the limit off."
    )
    rate_limit_burst: int = Field(20, ge=1, description="Requests a tenant may make at once above its rate.")
    tenant_max_concurrent_requests: int = Field(
        4,
        ge=2,  # a page with its total
        le=1_000,
        description=(
            "ClickHouse reads one tenant's API requests may hold at once (per replica): a page with its total"
            " takes two, an export one while it streams, any other request one. A request that would go past"
            " it gets a 429, so one tenant cannot hold every reader (keep it below CDR_CLICKHOUSE_POOL_SIZE)."
        ),
    )
    tenant_max_concurrent_exports: int = Field(
        1,
        ge=1,
        le=100,
        description=(
            "Exports (GET /v1/cdr/export) one tenant may run at once per replica; more get a 429. An export"
            " reads in batches on the shared readers, so it never holds one for long."
        ),
    )
    max_concurrent_exports: int = Field(
        4,
        ge=1,
        le=100,
        description=(
            "Exports one API replica runs at once, all tenants together; more get a 429 with Retry-After."
            " Each holds at most one window in memory; CDR_EXPORT_READERS bounds the engine's share."
        ),
    )
    export_window_rows: int = Field(
        20_000,
        ge=1,
        le=1_000_000,
        description=(
            "Records per export read (keyset window) for the replica's exports together: each new window"
            " of an export gets this divided by the exports in progress (at least"
            " CDR_EXPORT_MIN_WINDOW_ROWS), so one export alone reads this many at a time."
        ),
    )
    export_min_window_rows: int = Field(
        2_000,
        ge=1,
        le=1_000_000,
        description=(
            "Fewest records per export window however many exports share CDR_EXPORT_WINDOW_ROWS (never"
            " more than CDR_EXPORT_WINDOW_ROWS): each window is a read, so smaller ones cost throughput."
        ),
    )
    feed_retention_days: int = Field(
        7,
        ge=1,
        le=3_650,
        description=(
            "Days the change feed (GET /v1/cdr/changes) keeps a change, and a feed cursor stays valid;"
            " `cdr migrate` applies a changed value to the table."
        ),
    )
    feed_poll_interval_ms: int = Field(
        200,
        ge=10,
        le=10_000,
        description=(
            "How often each API replica reads new changes for all its open streams and long polls at once"
            " (in `cdr run`, also right after each stored batch)."
        ),
    )
    feed_heartbeat_s: float = Field(
        15.0, gt=0, le=300, description="Seconds between heartbeat comments on an idle change stream."
    )
    feed_max_streams_per_tenant: int = Field(
        10, ge=1, description="Open change streams (SSE) a tenant may hold on one API replica; more get a 429."
    )

    @field_validator("api_tokens")
    @classmethod
    def _token_entries(cls, value: str) -> str:
        parse_token_entries(value.replace(",", "\n"))
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> Self:
        if self.default_limit > self.max_limit:
            raise ValueError("CDR_DEFAULT_LIMIT must not exceed CDR_MAX_LIMIT")
        if self.cursor_secret is not None and len(self.cursor_secret.get_secret_value()) < 32:
            raise ValueError("CDR_CURSOR_SECRET must be at least 32 characters")
        if self.cursor_secret_previous is not None and len(self.cursor_secret_previous.get_secret_value()) < 32:
            raise ValueError("CDR_CURSOR_SECRET_PREVIOUS must be at least 32 characters")
        return self

    def token_digests(self) -> dict[str, str]:
        """SHA-256 hex digest -> tenant, from CDR_API_TOKENS and CDR_API_TOKENS_FILE."""
        text = self.api_tokens.replace(",", "\n")
        if self.api_tokens_file is not None:
            try:
                text += "\n" + self.api_tokens_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(f"CDR_API_TOKENS_FILE: cannot read {self.api_tokens_file}: {exc}") from exc
        try:
            return parse_token_entries(text)
        except ValueError as exc:
            raise SettingsError(f"CDR_API_TOKENS_FILE: {exc}") from exc


class NotifySettings(_Group):
    """``cdr notify``: how webhooks are batched, sent, retried and given up on."""

    title: ClassVar[str] = "Notifier (webhooks)"

    webhook_allow_private: bool = Field(
        False,
        description=(
            "cdr notify: let webhook URLs reach loopback, private, link-local (metadata) and other non-public"
            " addresses, and plain http. Off: such URLs are refused at load and after DNS resolution (SSRF)."
        ),
    )
    webhook_batch_size: int = Field(100, ge=1, le=1_000, description="Changes per webhook POST, at most.")
    webhook_batch_wait_ms: int = Field(
        200,
        ge=0,
        le=1_000,
        description="How long a batch waits for more changes after its first one before it is sent (at most 1 s).",
    )
    webhook_connect_timeout_s: float = Field(5.0, gt=0, le=60, description="Webhook POST: connect timeout.")
    webhook_timeout_s: float = Field(
        15.0, gt=0, le=300, description="Webhook POST: the whole request, connect to the end of the answer's head."
    )
    webhook_retry_base_s: float = Field(
        1.0, gt=0, description="First retry's back-off ceiling; doubles per failure (full jitter), up to the cap."
    )
    webhook_retry_max_s: float = Field(
        300.0, gt=0, description="Longest wait between two attempts, a Retry-After included."
    )
    webhook_max_failing_s: float = Field(
        86_400.0,
        gt=0,
        description=(
            "An endpoint failing without a success this long is disabled (shown with the reason by GET /v1/webhooks);"
            " a replay, or enabled: false then true in the tenant directory, enables it again."
        ),
    )
    webhook_max_concurrency: int = Field(
        256, ge=1, le=10_000, description="Webhook POSTs in flight at once, all endpoints together (one per endpoint)."
    )
    webhook_reload_ms: int = Field(
        2_000,
        ge=50,
        le=60_000,
        description="How often cdr notify looks for a changed tenant directory and for replay requests.",
    )
    webhook_state_write_ms: int = Field(
        1_000,
        ge=50,
        le=60_000,
        description=(
            "How often cdr notify writes endpoints' positions (one insert for all): a crash re-delivers at most"
            " the batches of this long."
        ),
    )


class Settings(BaseModel):
    """Every setting of every command, one group per concern (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    common: CommonSettings
    kafka: KafkaSettings
    clickhouse: ClickHouseSettings
    ingest: IngestSettings
    notify: NotifySettings
    api: ApiSettings

    def replaced(self, **flat: object) -> Settings:
        """A copy with some values replaced, named as :func:`load_settings` names them
        (``batch_size=...``); like ``model_copy``, the values are not validated again."""
        updates: dict[str, dict[str, object]] = {}
        for name, value in flat.items():
            updates.setdefault(_group_of(name), {})[name] = value
        return self.model_copy(
            update={group: getattr(self, group).model_copy(update=values) for group, values in updates.items()}
        )


# The groups in the order the README, `cdr --help` and the chart's values.yaml list them.
GROUPS: dict[str, type[_Group]] = {
    "common": CommonSettings,
    "kafka": KafkaSettings,
    "clickhouse": ClickHouseSettings,
    "ingest": IngestSettings,
    "notify": NotifySettings,
    "api": ApiSettings,
}


def _group_of(field: str) -> str:
    for group, cls in GROUPS.items():
        if field in cls.model_fields:
            return group
    raise TypeError(f"no setting {field!r} (CDR_{field.upper()})")


def known_timezone(value: str) -> str:
    """The IANA timezone name, or ValueError saying it is unknown."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {value!r}") from exc
    return value


def parse_token_entries(text: str) -> dict[str, str]:
    """Parse ``tenant:sha256hex`` lines (blank lines and ``#`` comments skipped)."""
    digests: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tenant, sep, digest = line.rpartition(":")
        digest = digest.strip().lower()
        if not sep or not tenant.strip() or not SHA256_HEX.fullmatch(digest):
            raise ValueError(f"entry {number} is not tenant_id:sha256hex(token) (64 hex digits after the last ':')")
        tenant = tenant.strip()
        if not TENANT_ID.fullmatch(tenant):
            raise ValueError(
                f"entry {number}: tenant {tenant[:40]!r} is not a tenant id (ASCII letters, digits, '.', '-', '_')"
            )
        try:
            claim_token(digests, digest, tenant)
        except ValueError as exc:
            raise ValueError(f"entry {number}: {exc}") from None
    return digests


def claim_token(digests: dict[str, str], digest: str, tenant: str) -> None:
    """Record ``digest`` as the tenant's; ValueError naming both tenants if another holds it
    (last-one-wins would silently hand one tenant's token to another)."""
    if digests.get(digest, tenant) != tenant:
        raise ValueError(f"the same token digest is listed for {digests[digest]!r} and {tenant!r}")
    digests[digest] = tenant


def load_settings(**overrides: object) -> Settings:
    """Read and validate every group; a SettingsError names every bad variable of all of them.

    ``overrides`` take the place of variables, named as the variable without ``CDR_`` in
    lower case (``batch_size=500`` for ``CDR_BATCH_SIZE``), whichever group holds them."""
    by_group: dict[str, dict[str, object]] = {group: {} for group in GROUPS}
    for name, value in overrides.items():
        by_group[_group_of(name)][name] = value
    built: dict[str, Any] = {}
    problems: list[dict[str, str]] = []
    for group, cls in GROUPS.items():
        try:
            built[group] = cls(**by_group[group])
        except ValidationError as exc:
            problems += _problems(exc)
    if problems:
        lines = [f"{p.get('setting', 'settings')}: {p['error']} (got {p.get('value', '-')!r})" for p in problems]
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines), problems)
    return Settings(**built)


def _problems(exc: ValidationError) -> list[dict[str, str]]:
    problems: list[dict[str, str]] = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a check across fields: its message names the variables
            problems.append({"error": message})
            continue
        name = "CDR_" + "_".join(str(part) for part in error["loc"]).upper()
        shown = "***" if any(k in name for k in _SECRET_NAMES) else masked_url(str(error.get("input")))
        problems.append({"setting": name, "value": shown, "error": message})
    return problems
