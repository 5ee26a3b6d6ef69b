-- The call detail records. One row per (tenant_id, time_started, id) after merges;
-- re-sent events collapse to the newest emitted_at. Reads deduplicate with FINAL,
-- because merges happen whenever ClickHouse likes.
-- Sort key = tenant's time range = scroll order: one index range per tenant query.
CREATE TABLE IF NOT EXISTS ${db}.cdr ${on_cluster}
(
    tenant_id      LowCardinality(String),
    id             UUID,
    sip_call_id    String,
    cause          LowCardinality(String),
    duration       UInt32,
    billsec        UInt32,
    direction      Enum8('inbound' = 1, 'outbound' = 2, 'local' = 3),
    recording_url  String,
    recording_file String,
    extension      String,
    from_number    String,
    to_number      String,
    receive_dest   String,
    time_started   DateTime64(3, 'UTC'),
    time_answered  Nullable(DateTime64(3, 'UTC')),
    time_ended     DateTime64(3, 'UTC'),
    status         LowCardinality(String),
    emitted_at     DateTime64(3, 'UTC'),
    ingested_at    DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_id id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_sip_call_id sip_call_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_from_number from_number TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_to_number to_number TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_time_ended time_ended TYPE minmax GRANULARITY 1
)
ENGINE = ${replacing_engine}(emitted_at)
PARTITION BY toYYYYMM(time_started)
ORDER BY (tenant_id, time_started, id)
