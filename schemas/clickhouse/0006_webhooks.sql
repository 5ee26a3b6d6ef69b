-- Webhooks (README, "Webhooks"). Each endpoint's delivery state, written by `cdr notify`
-- alone: its feed position (JSON {partition: offset}) after the last batch delivered,
-- the last success and failure, and why it is disabled. A row per write, the newest
-- wins (read with FINAL); written at most about once a second per endpoint while it
-- delivers, and at each change of state.
CREATE TABLE IF NOT EXISTS ${db}.webhook_state ${on_cluster}
(
    tenant_id         LowCardinality(String),
    endpoint          String,
    position          String,
    replay_generation UInt64,
    last_success_at   Nullable(DateTime64(3, 'UTC')),
    last_error_at     Nullable(DateTime64(3, 'UTC')),
    last_error        String,
    last_status       UInt16,
    failing_since     Nullable(DateTime64(3, 'UTC')),
    disabled_reason   String,
    lag_s             Float64,
    updated_at        DateTime64(3, 'UTC')
)
ENGINE = ${replacing_engine}(updated_at)
ORDER BY (tenant_id, endpoint);

-- Replay requests (POST /v1/webhooks/{name}/replay), written by the API alone: a table of
-- their own, so that the notifier's next state write cannot overwrite a request it has
-- not read yet. The notifier adopts a generation above the one its state follows.
CREATE TABLE IF NOT EXISTS ${db}.webhook_replays ${on_cluster}
(
    tenant_id    LowCardinality(String),
    endpoint     String,
    generation   UInt64,
    position     String,
    since        DateTime64(3, 'UTC'),
    requested_at DateTime64(3, 'UTC')
)
ENGINE = ${replacing_engine}(generation)
ORDER BY (tenant_id, endpoint)
