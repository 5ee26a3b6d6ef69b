-- The change feed (README, "Change feed"). Every row of cdr records where it came from:
-- the Kafka partition and offset of its event (`cdr import`: partition -1, see
-- cdr.importer). Rows stored before this migration keep -1/-1 and are not in the feed:
-- it starts here (no backfill). Metadata only: the defaults fill existing parts.
ALTER TABLE ${db}.cdr ${on_cluster}
    ADD COLUMN IF NOT EXISTS source_partition Int32 DEFAULT -1,
    ADD COLUMN IF NOT EXISTS source_offset Int64 DEFAULT -1;

-- Every live version stored, in Kafka's order per tenant: a read after a cursor (one
-- offset per partition) is a seek per partition on the sort key. One insert into cdr is
-- one ingested_at, so one part here, visible at once. Day partitions, so that the
-- retention TTL (CDR_FEED_RETENTION_DAYS, applied by `cdr migrate` with MODIFY TTL when
-- it differs) drops whole parts.
CREATE TABLE IF NOT EXISTS ${db}.cdr_changes ${on_cluster}
(
    tenant_id        LowCardinality(String),
    id               UUID,
    sip_call_id      String,
    cause            LowCardinality(String),
    duration         UInt32,
    billsec          UInt32,
    direction        Enum8('inbound' = 1, 'outbound' = 2, 'local' = 3),
    recording_url    String,
    recording_file   String,
    extension        String,
    from_number      String,
    to_number        String,
    receive_dest     String,
    time_started     DateTime64(3, 'UTC'),
    time_answered    Nullable(DateTime64(3, 'UTC')),
    time_ended       DateTime64(3, 'UTC'),
    status           LowCardinality(String),
    emitted_at       DateTime64(3, 'UTC'),
    ingested_at      DateTime64(3, 'UTC'),
    source_partition Int32,
    source_offset    Int64
)
ENGINE = ${plain_engine}
PARTITION BY toYYYYMMDD(ingested_at)
ORDER BY (tenant_id, source_partition, source_offset)
TTL toDateTime(ingested_at) + toIntervalDay(7)
SETTINGS ttl_only_drop_parts = 1;

-- The first and the newest emitted_at of each call's live versions: whether a change
-- is "created" or "corrected", and which delivered candidates are stale (a newer
-- version exists: it is delivered at its own position). cdr_key_by_id (0004) cannot
-- serve: a ReplacingMergeTree keeps only the newest row, and the first is lost on merge.
CREATE TABLE IF NOT EXISTS ${db}.cdr_versions_by_id ${on_cluster}
(
    id        UUID,
    tenant_id LowCardinality(String),
    first     SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    newest    SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = ${aggregating_engine}
ORDER BY (id, tenant_id)
SETTINGS index_granularity = 256;

-- The versions view before the changes view: ClickHouse pushes a block to the views of
-- a table one after another, and a reader must never see a change before its versions.
-- (The feed's read does not rely on that order alone: see cdr.store.feed.)
CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.cdr_versions_by_id_mv ${on_cluster} TO ${db}.cdr_versions_by_id
AS SELECT id, tenant_id, emitted_at AS first, emitted_at AS newest FROM ${db}.cdr WHERE superseded = 0;

-- Within one inserted block, only the newest version of each call reaches the feed: the
-- block is visible at once, so an older one in it is never needed, and a reader that
-- saw the newer one on one page must not find the older one on the next.
CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.cdr_changes_mv ${on_cluster} TO ${db}.cdr_changes
AS SELECT
    tenant_id, id, sip_call_id, cause, duration, billsec, direction, recording_url, recording_file, extension,
    from_number, to_number, receive_dest, time_started, time_answered, time_ended, status, emitted_at,
    ingested_at, source_partition, source_offset
FROM (
    SELECT
        tenant_id, id, sip_call_id, cause, duration, billsec, direction, recording_url, recording_file, extension,
        from_number, to_number, receive_dest, time_started, time_answered, time_ended, status, emitted_at,
        ingested_at, source_partition, source_offset,
        max(emitted_at) OVER (PARTITION BY tenant_id, id) AS newest_in_block
    FROM ${db}.cdr WHERE superseded = 0 AND source_offset >= 0
)
WHERE emitted_at = newest_in_block;

-- Idempotent: min and max of a second copy are the same.
INSERT INTO ${db}.cdr_versions_by_id
SELECT id, tenant_id, min(emitted_at), max(emitted_at) FROM ${db}.cdr WHERE superseded = 0 GROUP BY id, tenant_id
