-- One record per (tenant_id, id) also when a correction moves time_started (EVENTS.md).
-- cdr's sort key holds time_started, so a version at another time is another key that
-- FINAL never collapses. The ingestor resolves such versions before it writes a batch
-- (cdr.ingest.corrections): the loser is stored, or shadowed by a tombstone at its key,
-- with superseded = 1, and every read keeps superseded = 0 after FINAL. Metadata only:
-- the column's default fills existing parts without rewriting them.
ALTER TABLE ${db}.cdr ${on_cluster} ADD COLUMN IF NOT EXISTS superseded UInt8 DEFAULT 0;

-- Where each call's live versions are, by id: the ingestor's lookup for the events that
-- may be corrections. Sorted by id first (a batch's ids are a set over the whole key
-- range, and the tenant is checked on the answer); small granules, because each id
-- reads one (measured: bench/RESULTS.md, "Corrections that move a call").
CREATE TABLE IF NOT EXISTS ${db}.cdr_key_by_id ${on_cluster}
(
    id           UUID,
    tenant_id    LowCardinality(String),
    time_started DateTime64(3, 'UTC'),
    emitted_at   DateTime64(3, 'UTC')
)
ENGINE = ${replacing_engine}(emitted_at)
ORDER BY (id, tenant_id)
SETTINGS index_granularity = 256;

-- The view first, then the backfill: a row inserted in between reaches the key table
-- twice, and the copies collapse (same key, same version); none is missed.
CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.cdr_key_by_id_mv ${on_cluster} TO ${db}.cdr_key_by_id
AS SELECT id, tenant_id, time_started, emitted_at FROM ${db}.cdr WHERE superseded = 0;

INSERT INTO ${db}.cdr_key_by_id SELECT id, tenant_id, time_started, emitted_at FROM ${db}.cdr WHERE superseded = 0
