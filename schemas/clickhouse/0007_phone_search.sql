-- The phone search (README, "Phone search"). The ingestor (and `cdr import`) store each
-- number's canonical form beside the raw one it keeps returning: E.164 in the tenant's
-- phone region (cdr.phones), a value that is not a phone number (an extension) as it
-- is. A row inserted without them (stored before this migration, or written by hand)
-- takes the raw number: metadata only, existing parts are not rewritten, and such a row
-- is still found by the raw forms the search also looks for (cdr.api.params.phone_variants).
ALTER TABLE ${db}.cdr ${on_cluster}
    ADD COLUMN IF NOT EXISTS from_e164 String DEFAULT from_number,
    ADD COLUMN IF NOT EXISTS to_e164 String DEFAULT to_number;

-- The search reads the key table below, not these (they cost every insert and a filter
-- per granule; phone_prefix matches the start of a number, which a bloom filter cannot).
ALTER TABLE ${db}.cdr ${on_cluster} DROP INDEX IF EXISTS idx_from_number, DROP INDEX IF EXISTS idx_to_number;

-- "The last calls of this number": a seek on (tenant_id, phone) read newest-first with a
-- limit, whatever the number's volume; the records are then read by their keys. Like
-- cdr_key_by_call_id it only proposes candidates: a key whose call a correction moved or
-- renumbered finds no live record with that number, and the read asks for more keys
-- (cdr.api.routes). One partition, so a lookup is one seek; to drop old months from
-- cdr, delete the same range here (README, "Retention").
CREATE TABLE IF NOT EXISTS ${db}.cdr_key_by_phone ${on_cluster}
(
    tenant_id    LowCardinality(String),
    phone        String,
    time_started DateTime64(3, 'UTC'),
    id           UUID
)
ENGINE = ${replacing_engine}()
ORDER BY (tenant_id, phone, time_started, id);

-- The view first, then the backfill (identical rows collapse, none is missed). Both
-- numbers of a call, once when they are equal.
CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.cdr_key_by_phone_mv ${on_cluster} TO ${db}.cdr_key_by_phone
AS SELECT tenant_id, phone, time_started, id FROM ${db}.cdr
ARRAY JOIN arrayDistinct([from_e164, to_e164]) AS phone
WHERE superseded = 0 AND phone != '';

INSERT INTO ${db}.cdr_key_by_phone SELECT tenant_id, phone, time_started, id FROM ${db}.cdr
ARRAY JOIN arrayDistinct([from_e164, to_e164]) AS phone
WHERE superseded = 0 AND phone != ''
