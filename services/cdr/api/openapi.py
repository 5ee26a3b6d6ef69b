"""The API contract as OpenAPI 3.1, served at /openapi.json and checked in under schemas/."""

from __future__ import annotations

from typing import Any

from cdr import __version__
from cdr.api.errors import error_codes
from cdr.api.params import Limits, Param, export_params, feed_params, list_params, stats_params
from cdr.settings import ApiSettings
from cdr.store.queries import GROUP_BY, STAT_QUANTILE_FIELDS, STAT_QUANTILES

OPENAPI_FILE = "openapi.json"

_CLOCK_TIME = "[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}"
_TIME = {"type": "string", "pattern": f"^{_CLOCK_TIME}$", "example": "2021-02-17 17:30:35"}
# A plain string whose pattern admits "", not anyOf [time, const ""]: generated clients
# (openapi-python-client) try the const branch of such a union first and raise on a time
# instead of falling back, so their list call failed on the first answered call.
_TIME_OR_EMPTY = {
    "type": "string",
    "pattern": f"^({_CLOCK_TIME})?$",
    "example": "2021-02-17 17:30:40",
    "description": "Empty if unanswered.",
}


def _query_param(param: Param) -> dict[str, Any]:
    # The parser's own bookkeeping stays out: x-rule is the error text, and a pattern
    # on an integer only says how the parser reads the query string.
    schema = {k: v for k, v in param.schema.items() if k != "x-rule"}
    if schema["type"] == "integer":
        schema.pop("pattern")
    return {
        "name": param.name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": param.description + " Give it at most once, never empty.",
    }


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_FEED_GUARANTEES = (
    "Guarantees: at-least-once (a change may come again, with the same id and version: de-duplicate on"
    " them); a version is never delivered after a newer version of the same call (a stale one is left"
    " out); a cursor stays valid for the feed's retention (CDR_FEED_RETENTION_DAYS); any replica continues"
    " any cursor. Filters are sealed in the cursor."
)
_FEED_START = (
    " Without a cursor, `since` starts at the first change stored at or after it (within the retention),"
    " else the feed starts now."
)
_FEED_400 = (
    "A parameter is invalid, repeated or empty; `param` names it. Also: a cursor that is not a feed cursor, is"
    " another tenant's or older than the retention; a since older than the retention; a filter beside a"
    " cursor that differs from the one it was issued for; two Authorization headers."
)


def openapi_document(settings: ApiSettings) -> dict[str, Any]:
    record_properties: dict[str, Any] = {
        "id": {"type": "string", "format": "uuid"},
        "sip_call_id": {"type": "string"},
        "cause": {"type": "string", "example": "NORMAL_CLEARING"},
        "duration": {"type": "integer", "minimum": 0, "description": "Whole call, seconds."},
        "billsec": {"type": "integer", "minimum": 0, "description": "Talk time, seconds."},
        "direction": {"type": "integer", "enum": [1, 2, 3], "description": "1 inbound, 2 outbound, 3 local."},
        "recording_url": {"type": "string", "description": "Empty when there is no recording."},
        "extension": {"type": "string"},
        "from_number": {"type": "string"},
        "to_number": {"type": "string"},
        "receive_dest": {"type": "string", "description": "Ring group or queue; empty when none."},
        "time_started": _TIME,
        "time_answered": _TIME_OR_EMPTY,
        "time_ended": _TIME,
        "status": {"type": "string", "example": "ANSWERED"},
    }
    stat_properties: dict[str, Any] = {
        "group": {
            "type": ["string", "integer"],
            "description": "YYYY-MM-DD HH:00:00, YYYY-MM-DD or YYYY-MM in the tenant's"
            " timezone; the extension, status or cause; the direction code 1-3.",
        },
        "calls": {"type": "integer", "minimum": 1},
        "answered": {"type": "integer", "minimum": 0},
        "asr": {"type": "number", "description": "answered / calls, 4 decimals."},
        "acd": {
            "type": ["number", "null"],
            "description": "Mean billsec of the answered calls, 2 decimals; null if none.",
        },
        "total_billsec": {"type": "integer", "minimum": 0},
        **{
            name: {
                "type": "integer",
                "description": f"Duration at index floor({q} x calls) of the sorted durations (exact).",
            }
            for q, name in zip(STAT_QUANTILES, STAT_QUANTILE_FIELDS, strict=True)
        },
    }
    limits = Limits(settings.default_limit, settings.max_limit, settings.max_offset)
    query_params = [_query_param(p) for p in list_params(limits)]
    common_errors = {
        "400": _error(
            "A parameter or scroll_id is invalid, repeated or empty; `param` names it. Also: end before"
            " start, max_duration not above min_duration, a date outside 1900-2299, pagination deeper than"
            " the offset limit, a filter beside a"
            " scroll_id that differs from the one it was issued for, two Authorization headers."
        ),
        "401": _error("Missing, malformed or unknown bearer token."),
        "429": _error("Too many requests."),
        "405": _error("Only GET and HEAD; the Allow header says so."),
        "414": _error("The request line is longer than the API accepts."),
        "431": _error("The request headers are larger than the API accepts."),
        "503": _error("ClickHouse is unavailable; retry after Retry-After seconds."),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CDR API",
            "version": __version__,
            "description": (
                "Call detail records of a cloud PBX tenant. Every request is confined to the token's tenant."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/v1/cdr": {
                "get": {
                    "operationId": "listCdrs",
                    "summary": "List CDRs: scroll (default) or pagination (page/limit/offset).",
                    "parameters": query_params,
                    "responses": {
                        "200": {
                            "description": "A page or a scroll batch.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "oneOf": [
                                            {"$ref": "#/components/schemas/Page"},
                                            {"$ref": "#/components/schemas/Scroll"},
                                        ]
                                    }
                                }
                            },
                        },
                        **common_errors,
                    },
                }
            },
            "/v1/cdr/export": {
                "get": {
                    "operationId": "exportCdrs",
                    "summary": "Every CDR the filters select, in list order, streamed as CSV or NDJSON.",
                    "description": (
                        "Streams as it reads (constant memory at any size); fields in the document's order and"
                        " formats. The first batch is read before the response starts; a failure after that cuts"
                        " the stream, which the client sees as an incomplete chunked body. One export per tenant"
                        " at a time (CDR_TENANT_MAX_CONCURRENT_EXPORTS), else 429. A CDR whose SIP Call-ID is"
                        " the word export is reached by its id."
                    ),
                    "parameters": [_query_param(p) for p in export_params(limits)],
                    "responses": {
                        "200": {
                            "description": "The file, with Content-Disposition: attachment and a file name.",
                            "headers": {"Content-Disposition": {"schema": {"type": "string"}}},
                            "content": {
                                "text/csv": {"schema": {"type": "string"}},
                                "application/x-ndjson": {"schema": {"type": "string"}},
                            },
                        },
                        **common_errors,
                    },
                }
            },
            "/v1/cdr/stats": {
                "get": {
                    "operationId": "cdrStats",
                    "summary": "Call statistics per hour, day, month, extension, status, direction or cause.",
                    "description": (
                        "Every list filter applies. Each call counts once, as its newest version. Groups come"
                        " in ascending order of their key; at most 10,000 (more: 400 naming group_by)."
                    ),
                    "parameters": [_query_param(p) for p in stats_params(limits)],
                    "responses": {
                        "200": {
                            "description": "One entry per group.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Stats"}}},
                        },
                        **common_errors,
                    },
                }
            },
            "/v1/cdr/changes": {
                "get": {
                    "operationId": "cdrChanges",
                    "summary": "The change feed: every new or corrected CDR after a cursor, in order.",
                    "description": (
                        "A page of changes after the cursor and the next cursor (always given, also with no"
                        " changes). A page may hold fewer than `limit` changes, or none, while more follow (a"
                        " filter skips changes, as does a version with a newer one): continue with the"
                        " cursor. With `wait`, an empty answer comes only at the end of the wait; a change that"
                        " arrives meanwhile is answered at once." + _FEED_START + " " + _FEED_GUARANTEES
                    ),
                    "parameters": [_query_param(p) for p in feed_params(limits)],
                    "responses": {
                        "200": {
                            "description": "The changes after the cursor (possibly none) and the next cursor.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Changes"}}},
                        },
                        **common_errors,
                        "400": _error(_FEED_400),
                    },
                }
            },
            "/v1/cdr/changes/stream": {
                "get": {
                    "operationId": "cdrChangesStream",
                    "summary": "The change feed as Server-Sent Events, live.",
                    "description": (
                        "Each event: `id:` the cursor after its change, `data:` one change (schema Change). Resume"
                        " with the Last-Event-ID header (or cursor). A comment line is sent every"
                        f" {settings.feed_heartbeat_s:g} s so proxies keep the connection. At most"
                        f" {settings.feed_max_streams_per_tenant} open streams per tenant and replica, else 429"
                        " with Retry-After. The stream ends when the replica stops: reconnect with the last"
                        " event id." + _FEED_START + " " + _FEED_GUARANTEES
                    ),
                    "parameters": [
                        *(_query_param(p) for p in feed_params(limits, stream=True)),
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "The id of the last event received: where to continue.",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": (
                                "An endless text/event-stream of changes: each event is `id: <the cursor after"
                                " it>` and `data: <one Change as JSON, on one line>`; a line starting with `:` is"
                                " a heartbeat. The data's schema is Change (`x-itemSchema`, as OpenAPI 3.2's"
                                " `itemSchema` would say)."
                            ),
                            "content": {
                                "text/event-stream": {
                                    "schema": {"type": "string"},
                                    "x-itemSchema": {"$ref": "#/components/schemas/Change"},
                                    "example": (
                                        'id: AZ3x...\ndata: {"id":"01b7d166-...","status":"ANSWERED",...,'
                                        '"version":"2026-12-07T10:00:00.123Z","change":"created"}\n\n'
                                        ": ping\n\n"
                                    ),
                                }
                            },
                        },
                        **common_errors,
                        "400": _error(_FEED_400),
                    },
                }
            },
            "/v1/cdr/{id}": {
                "get": {
                    "operationId": "getCdr",
                    "summary": "One CDR by id or SIP Call-ID.",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 1024},
                            "description": "CDR id or sip_call_id.",
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The CDR.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Cdr"}}},
                        },
                        "404": _error("No such CDR for this tenant."),
                        **common_errors,
                    },
                }
            },
            "/v1/webhooks": {
                "get": {
                    "operationId": "listWebhooks",
                    "summary": "This tenant's webhook endpoints and their delivery state (README, Webhooks).",
                    "description": (
                        "Endpoints are configured in the tenant directory; `cdr notify` POSTs each change of the"
                        " feed to them, signed as Standard Webhooks define, in order, at least once. Shown here as"
                        " the notifier last recorded them (about once a second while delivering). Secrets never."
                    ),
                    "responses": {
                        "200": {
                            "description": "Every endpoint of the tenant.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Webhooks"}}},
                        },
                        **common_errors,
                    },
                }
            },
            "/v1/webhooks/{name}/replay": {
                "post": {
                    "operationId": "replayWebhook",
                    "summary": "Deliver the endpoint's changes again from a point in time.",
                    "description": (
                        "The notifier adopts the request within CDR_WEBHOOK_RELOAD_MS and sends every change stored"
                        " since `since` again (and re-enables an endpoint disabled for failing)."
                    ),
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
                            "description": "The endpoint's name in the tenant directory.",
                        },
                        {
                            "name": "since",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "format": "date-time"},
                            "description": "RFC 3339 with offset; within the feed's retention.",
                        },
                    ],
                    "responses": {
                        "202": {
                            "description": "The replay is requested.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookReplay"}}},
                        },
                        "404": _error("No endpoint of that name for this tenant."),
                        **common_errors,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "security": [],
                    "summary": "Process alive. `cdr api` serves it on CDR_OPS_PORT, not on the API port.",
                    "responses": {"200": {"description": "Alive."}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "security": [],
                    "summary": "ClickHouse reachable, schema current. `cdr api`: on CDR_OPS_PORT.",
                    "responses": {"200": {"description": "Ready."}, "503": {"description": "Not ready."}},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "security": [],
                    "summary": "Prometheus metrics. `cdr api`: on CDR_OPS_PORT.",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "security": [],
                    "summary": "This document.",
                    "responses": {"200": {"description": "OpenAPI 3.1."}},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Cdr": {
                    "type": "object",
                    "properties": record_properties,
                    "required": list(record_properties),
                    "additionalProperties": False,
                },
                "Change": {
                    "type": "object",
                    "description": (
                        "One stored version of a CDR: the record as GET /v1/cdr/{id} shows it, with its version"
                        " and whether it is the call's first. (id, version) identifies it: a re-delivery"
                        " carries the same pair."
                    ),
                    "properties": {
                        **record_properties,
                        "version": {
                            "type": "string",
                            "description": "The version's emitted_at, RFC 3339 UTC: 2026-12-07T10:00:00.123Z.",
                            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$",
                        },
                        "change": {
                            "type": "string",
                            "enum": ["created", "corrected"],
                            "description": "created: the call's first stored version; corrected: a later one.",
                        },
                    },
                    "required": [*record_properties, "version", "change"],
                    "additionalProperties": False,
                },
                "Changes": {
                    "type": "object",
                    "properties": {
                        "data": {"type": "array", "items": {"$ref": "#/components/schemas/Change"}},
                        "cursor": {"type": "string", "description": "Where to continue; always given."},
                    },
                    "required": ["data", "cursor"],
                },
                "Webhook": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "url": {"type": "string"},
                        "enabled": {"type": "boolean"},
                        "filters": {"type": "object", "description": "The feed's filters it delivers."},
                        "state": {
                            "type": "string",
                            "enum": ["pending", "delivering", "failing", "disabled"],
                            "description": "pending: the notifier has not picked the endpoint up yet.",
                        },
                        "position": {
                            "type": ["object", "null"],
                            "description": "Feed offset per partition after the last delivered batch.",
                        },
                        "lag_seconds": {
                            "type": ["number", "null"],
                            "description": "Age of the oldest change read and not yet delivered; 0: caught up.",
                        },
                        "last_success_at": {"type": ["string", "null"], "format": "date-time"},
                        "last_error": {
                            "type": ["object", "null"],
                            "properties": {
                                "at": {"type": "string", "format": "date-time"},
                                "status": {"type": ["integer", "null"], "description": "HTTP status, if any."},
                                "message": {"type": "string", "description": "A short excerpt."},
                            },
                        },
                        "failing_since": {"type": ["string", "null"], "format": "date-time"},
                        "disabled_reason": {"type": ["string", "null"]},
                        "replay_generation": {"type": "integer"},
                        "updated_at": {"type": ["string", "null"], "format": "date-time"},
                    },
                    "required": ["name", "url", "enabled", "filters", "state", "disabled_reason"],
                },
                "Webhooks": {
                    "type": "object",
                    "properties": {"data": {"type": "array", "items": {"$ref": "#/components/schemas/Webhook"}}},
                    "required": ["data"],
                },
                "WebhookReplay": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "since": {"type": "string", "format": "date-time"},
                        "replay_generation": {"type": "integer"},
                        "position": {"type": "string", "description": "The feed position delivery restarts from."},
                    },
                    "required": ["name", "since", "replay_generation"],
                },
                "Page": {
                    "type": "object",
                    "properties": {
                        "data": {"type": "array", "items": {"$ref": "#/components/schemas/Cdr"}},
                        "limit": {"type": "integer"},
                        "page": {"type": "integer"},
                        "total": {"type": "integer"},
                    },
                    "required": ["data", "limit", "page", "total"],
                },
                "Scroll": {
                    "type": "object",
                    "properties": {
                        "data": {"type": "array", "items": {"$ref": "#/components/schemas/Cdr"}},
                        "scroll_id": {"type": ["string", "null"], "description": "Null when nothing more to read."},
                    },
                    "required": ["data", "scroll_id"],
                },
                "Stats": {
                    "type": "object",
                    "properties": {
                        "group_by": {"type": "string", "enum": list(GROUP_BY)},
                        "data": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": stat_properties,
                                "required": list(stat_properties),
                            },
                        },
                    },
                    "required": ["group_by", "data"],
                },
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {
                                    "type": "string",
                                    "enum": error_codes(),
                                },
                                "message": {"type": "string"},
                                "param": {"type": "string"},
                            },
                            "required": ["code", "message"],
                        }
                    },
                    "required": ["error"],
                },
            },
        },
    }
