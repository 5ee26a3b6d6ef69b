-- The change feed's versions lookup by tenant first (README, "Change feed"). Every feed
-- read looks up the calls of its rows (up to 1,000 ids of one tenant, or of the tenants a
-- poll reads); cdr_versions_by_id (0005) is sorted by id, so those ids lie all over the
-- table and a lookup reads a granule per id: 221 ms for 1,000 ids of a tenant on 10 M
-- calls, where this table, sorted by (tenant_id, id), reads only that tenant's range:
-- 21.7 ms (bench/RESULTS.md, session 13). Granules of 1,024 rows: a lookup of a few ids
-- in a large tenant reads little, one of 1,000 ids reads few marks.
CREATE TABLE IF NOT EXISTS ${db}.cdr_versions ${on_cluster}
(
    tenant_id LowCardinality(String),
    id        UUID,
    first     SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    newest    SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = ${aggregating_engine}
ORDER BY (tenant_id, id)
SETTINGS index_granularity = 1024;

-- The view first, then the backfill from cdr: a row stored in between is copied twice,
-- and min and max of a second copy are the same. (The order in which ClickHouse pushes a
-- block to this view and to cdr_changes_mv does not matter: cdr.store.feed_hub.read_settled.)
CREATE MATERIALIZED VIEW IF NOT EXISTS ${db}.cdr_versions_mv ${on_cluster} TO ${db}.cdr_versions
AS SELECT tenant_id, id, emitted_at AS first, emitted_at AS newest FROM ${db}.cdr WHERE superseded = 0;

INSERT INTO ${db}.cdr_versions
SELECT tenant_id, id, emitted_at, emitted_at FROM ${db}.cdr WHERE superseded = 0;

-- cdr_versions_by_id and its view stay, still filled: migrations are additive, so that a
-- release before this one (during the rollout, or after `helm rollback`) reads what it
-- knows. Dropping them is for a later release, once no such release can run.

-- Feed rows are always read whole: compact parts (one file, all columns) whatever their
-- size, where wide ones (a file per column) cost a file read per column and part: a page
-- of 1,000 rows 22.6 -> 15.1 ms on 1 M changes (bench/RESULTS.md, session 13). New parts
-- and merges follow it; the day partitions of wide parts age out with the retention.
ALTER TABLE ${db}.cdr_changes ${on_cluster} MODIFY SETTING min_bytes_for_wide_part = 1099511627776
