"""ClickHouse errors, classified once by error code for both transports.

clickhouse-connect raises the same exception types, with the server's numeric error
code, over HTTP and on the embedded engine; this module turns them into the two
errors the service acts on. ``StoreUnavailable``: worth retrying (the server is
unreachable, overloaded, out of disk, replication trouble). ``StoreError`` alone: retrying
cannot help (a bad statement, a schema that does not match the code, a table or database
that is not there: ``SchemaMissing``); ingest halts on it instead of retrying forever.
"""

from __future__ import annotations

from enum import IntEnum

from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError


class Code(IntEnum):
    """The ClickHouse error codes this service reasons about (src/Common/ErrorCodes.cpp;
    checked against the engine with ``errorCodeToName``)."""

    CANNOT_PARSE_TEXT = 6
    CANNOT_WRITE_TO_OSTREAM = 24
    CANNOT_PARSE_ESCAPE_SEQUENCE = 25
    CANNOT_PARSE_QUOTED_STRING = 26
    CANNOT_PARSE_INPUT_ASSERTION_FAILED = 27
    CANNOT_PARSE_DATE = 38
    CANNOT_PARSE_DATETIME = 41
    UNKNOWN_TABLE = 60
    ARGUMENT_OUT_OF_BOUND = 69
    CANNOT_CONVERT_TYPE = 70
    CANNOT_PARSE_NUMBER = 72
    CANNOT_READ_FROM_FILE_DESCRIPTOR = 74
    CANNOT_WRITE_TO_FILE_DESCRIPTOR = 75
    CANNOT_OPEN_FILE = 76
    UNKNOWN_DATABASE = 81
    INCORRECT_DATA = 117
    TOO_LARGE_ARRAY_SIZE = 128
    CANNOT_READ_ARRAY_FROM_TEXT = 130
    TOO_LARGE_STRING_SIZE = 131
    TOO_MANY_ROWS = 158
    TIMEOUT_EXCEEDED = 159
    CANNOT_CREATE_DIRECTORY = 172
    CANNOT_ALLOCATE_MEMORY = 173
    TOO_MANY_SIMULTANEOUS_QUERIES = 202
    CANNOT_FSYNC = 204
    SOCKET_TIMEOUT = 209
    NETWORK_ERROR = 210
    TABLE_IS_DROPPED = 218
    NO_ZOOKEEPER = 225
    ABORTED = 236
    MEMORY_LIMIT_EXCEEDED = 241
    TABLE_IS_READ_ONLY = 242
    NOT_ENOUGH_SPACE = 243
    TOO_MANY_PARTS = 252
    ALL_CONNECTION_TRIES_FAILED = 279
    TOO_FEW_LIVE_REPLICAS = 285
    UNKNOWN_STATUS_OF_INSERT = 319
    VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE = 321
    CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN = 349
    ALL_REPLICAS_ARE_STALE = 369
    CANNOT_PARSE_UUID = 376
    QUERY_WAS_CANCELLED = 394
    # Raised by the service's own throwIf only: a replica too far behind (client.replica_lag_filter).
    FUNCTION_THROW_IF_VALUE_IS_NON_ZERO = 395
    DECIMAL_OVERFLOW = 407
    SYSTEM_ERROR = 425
    CANNOT_SCHEDULE_TASK = 439
    CANNOT_PARSE_BOOL = 467
    VIOLATED_CONSTRAINT = 469
    CANNOT_CREATE_FILE = 586
    CANNOT_PARSE_IPV4 = 675
    CANNOT_PARSE_IPV6 = 676
    UNKNOWN_ELEMENT_OF_ENUM = 691
    SERVER_OVERLOADED = 745
    KEEPER_EXCEPTION = 999


# Conditions that pass by themselves or by an operator's fix outside this service:
# load and resource limits, I/O and disk trouble, replication. Not a missing table or
# database (SCHEMA_MISSING): the processes that query start only once the schema was seen
# current, so one missing later is a server without our tables (typically a replica behind a
# load balancer, migrated without CDR_CLICKHOUSE_CLUSTER) or a table an operator detached:
# retrying would look like an outage forever, on some requests only.
TRANSIENT = frozenset(
    {
        Code.CANNOT_WRITE_TO_OSTREAM,
        Code.CANNOT_READ_FROM_FILE_DESCRIPTOR,
        Code.CANNOT_WRITE_TO_FILE_DESCRIPTOR,
        Code.CANNOT_OPEN_FILE,
        Code.TIMEOUT_EXCEEDED,
        Code.CANNOT_CREATE_DIRECTORY,
        Code.CANNOT_ALLOCATE_MEMORY,
        Code.TOO_MANY_SIMULTANEOUS_QUERIES,
        Code.CANNOT_FSYNC,
        Code.SOCKET_TIMEOUT,
        Code.NETWORK_ERROR,
        Code.TABLE_IS_DROPPED,
        Code.NO_ZOOKEEPER,
        Code.ABORTED,
        Code.MEMORY_LIMIT_EXCEEDED,
        Code.TABLE_IS_READ_ONLY,
        Code.NOT_ENOUGH_SPACE,
        Code.TOO_MANY_PARTS,
        Code.ALL_CONNECTION_TRIES_FAILED,
        Code.TOO_FEW_LIVE_REPLICAS,
        Code.UNKNOWN_STATUS_OF_INSERT,
        Code.ALL_REPLICAS_ARE_STALE,
        Code.QUERY_WAS_CANCELLED,
        Code.FUNCTION_THROW_IF_VALUE_IS_NON_ZERO,
        Code.SYSTEM_ERROR,
        Code.CANNOT_SCHEDULE_TASK,
        Code.CANNOT_CREATE_FILE,
        Code.SERVER_OVERLOADED,
        Code.KEEPER_EXCEPTION,
    }
)


# The server refused a value (a CHECK constraint, a number out of range, a string it
# cannot parse into its column): about some rows, not about the statement, so inserting
# the batch's other rows works. A code not listed here or above halts ingest.
DATA = frozenset(
    {
        Code.CANNOT_PARSE_TEXT,
        Code.CANNOT_PARSE_ESCAPE_SEQUENCE,
        Code.CANNOT_PARSE_QUOTED_STRING,
        Code.CANNOT_PARSE_INPUT_ASSERTION_FAILED,
        Code.CANNOT_PARSE_DATE,
        Code.CANNOT_PARSE_DATETIME,
        Code.ARGUMENT_OUT_OF_BOUND,
        Code.CANNOT_CONVERT_TYPE,
        Code.CANNOT_PARSE_NUMBER,
        Code.INCORRECT_DATA,
        Code.TOO_LARGE_ARRAY_SIZE,
        Code.CANNOT_READ_ARRAY_FROM_TEXT,
        Code.TOO_LARGE_STRING_SIZE,
        Code.VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE,
        Code.CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN,
        Code.CANNOT_PARSE_UUID,
        Code.DECIMAL_OVERFLOW,
        Code.CANNOT_PARSE_BOOL,
        Code.VIOLATED_CONSTRAINT,
        Code.CANNOT_PARSE_IPV4,
        Code.CANNOT_PARSE_IPV6,
        Code.UNKNOWN_ELEMENT_OF_ENUM,
    }
)


SCHEMA_MISSING = frozenset({Code.UNKNOWN_TABLE, Code.UNKNOWN_DATABASE})

_SCHEMA_HINT = (
    " -- the ClickHouse server that answered lacks a table or database of the service. Run `cdr migrate`;"
    " if it ran, this server is not where it created them: with several replicas behind one address, set"
    " CDR_CLICKHOUSE_CLUSTER (Replicated tables on every replica; needs the {shard} and {replica} macros)"
    " and migrate again, or point CDR_CLICKHOUSE_URL at the one server migrated."
)


# A read stopped by its budget (``ReadBudget``): the API says so rather than "unavailable".
BUDGET = frozenset({Code.TOO_MANY_ROWS, Code.TIMEOUT_EXCEEDED, Code.MEMORY_LIMIT_EXCEEDED})


class StoreError(Exception):
    """A query or insert failed, and trying again will not help."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class StoreUnavailable(StoreError):
    """ClickHouse cannot be reached or cannot take the operation now; worth retrying."""


class SchemaMissing(StoreError):
    """A table or database of the service is not on the server that answered: configuration
    (or an operator's detach), not an outage; the message says what to check."""


class StoreDataError(StoreError):
    """ClickHouse refused a value of the data: the same statement with other rows works."""


def classify(exc: ClickHouseError | OSError) -> StoreError:
    """The service's error for an exception raised by clickhouse-connect (or by the
    local file an embedded insert is staged in)."""
    if isinstance(exc, OSError):
        return StoreUnavailable(f"{type(exc).__name__}: {exc}")
    text = str(exc)
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code in SCHEMA_MISSING:
        return SchemaMissing(text + _SCHEMA_HINT, code)
    if isinstance(code, int) and code in TRANSIENT:
        return StoreUnavailable(text, code)
    if isinstance(code, int) and code in DATA:
        return StoreDataError(text, code)
    if isinstance(code, int) and code > 0:
        return StoreError(text, code)
    # No server code: the transport failed (connection refused or reset, an HTTP
    # error without a ClickHouse body, a stream cut off).
    if isinstance(exc, OperationalError):
        return StoreUnavailable(text)
    return StoreError(text)
