-- Merge a month's parts into one once nothing has been written to it for an hour.
-- Every read is FINAL, and FINAL merges the versions of the parts it reads at query time;
-- ClickHouse's own merge policy may leave a closed month in two or more parts for good.
-- Measured on 10 M CDRs (bench/RESULTS.md, session 8): 23 parts -> 13 (one per month)
-- made a page with its total 46 -> 29 ms and the tenant's count 22 -> 9 ms.
-- Cost: a late or corrected event for an old month rewrites that month once, an hour
-- after the last such write (batched). The current month, written every second, is left
-- to the normal merge policy. A table setting: new parts and merges follow it, the data
-- is not rewritten by this migration itself.
ALTER TABLE ${db}.cdr ${on_cluster}
    MODIFY SETTING min_age_to_force_merge_seconds = 3600, min_age_to_force_merge_on_partition_only = 1
