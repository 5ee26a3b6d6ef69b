"""Names the dead-code finder (vulture) cannot see being used, each with who uses it.

`make lint` runs `vulture services/cdr tests bench .ci/vulture_allow.py`; anything it
reports beyond these is dead code to delete or a use to test."""

# ruff: noqa: B018, F821
# aiokafka calls the rebalance listener's methods.
_.on_partitions_revoked
_.on_partitions_assigned
assigned
# FastStream calls the subscriber function it decorates.
on_call_ended
# logging.Formatter reads `converter`; uvicorn reads `should_exit` and calls `capture_signals`.
_.converter
_.should_exit
_.capture_signals
# pydantic reads `model_config` and calls decorated validators.
model_config
schema_version
_._lower_direction
_._upper_status
_._aware
_._consistent
_._known_timezone
_._clickhouse_url
_._identifier
_._log_level
_._token_entries
_._cross_field
# Enum members read by value (Direction(code)), dataclass fields set by keyword.
INBOUND
OUTBOUND
LOCAL
min_duration
recordingfile
# chdb's Python() table function finds this local by name in the calling frame.
arrow_input
# clickhouse-connect reads the server timezone attribute a test sets.
_.server_tz
