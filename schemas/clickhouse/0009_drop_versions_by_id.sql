-- The contract step of 0008. Every feed read of this release and of the release that
-- brought 0008 looks its versions up in cdr_versions; only releases before 0008 read
-- cdr_versions_by_id, and 0008 kept it filled for them (a rollout, a rollback). Filling
-- it is a materialized view on every insert: dropping it made an insert of 20,000
-- events into the embedded engine ~25 % shorter (bench/RESULTS.md, "Session 14").
-- After this migration a release before 0008 cannot serve the change feed (README,
-- "Install / upgrade / roll back"). The view first, so that no insert writes into a
-- table that is gone.
DROP VIEW IF EXISTS ${db}.cdr_versions_by_id_mv ${on_cluster};

DROP TABLE IF EXISTS ${db}.cdr_versions_by_id ${on_cluster}
