-- A narrow key table for the lookup by SIP Call-ID, filled by a materialized view on
-- every insert into cdr (the ingestor's Arrow inserts and INSERT ... SELECT alike). A
-- lookup reads the candidates' (time_started, id) by a seek on its sort key, then the
-- records by a seek on cdr's, instead of scanning a bloom filter over every granule of
-- the tenant's wide rows (measured: p50 65 -> 25 ms on 10 M CDRs, bench/RESULTS.md).
-- The id needs no such table: it is in cdr's sort key, and its bloom filter already
-- prunes to a granule (a key table measured slower).
-- It may hold Call-IDs of superseded versions (a correction that changed it): it only
-- proposes candidates, and the read checks the Call-ID again on the newest version
-- (FINAL), so a stale one finds nothing. One partition, so a lookup is one seek; to
-- drop old months from cdr, delete the same range here (README, "Retention").
CREATE TABLE IF NOT EXISTS ${db}.cdr_key_by_call_id ${on_cluster}
(
    tenant_id    LowCardinality(String),
    sip_call_id  String,
    time_started DateTime64(3, 'UTC'),
    id           UUID
)
ENGINE = ${replacing_engine}()
ORDER BY (tenant_id, sip_call_id, time_started, id);

-- The view first, then the backfill: a row inserted in between reaches the key table
-- twice, and identical rows collapse (the whole row is the sort key); none is missed.
CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.cdr_key_by_call_id_mv ${on_cluster} TO ${db}.cdr_key_by_call_id
AS SELECT tenant_id, sip_call_id, time_started, id FROM ${db}.cdr;

INSERT INTO ${db}.cdr_key_by_call_id SELECT tenant_id, sip_call_id, time_started, id FROM ${db}.cdr
